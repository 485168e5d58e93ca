"""The demo's extra output: an animated GIF of the overlay frames (PIL only)."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from pam_ros.replay.outputs import OVERLAY_DIR

GIF_NAME = "demo.gif"


def write_gif(out_dir: str | Path, frame_ms: int = 100) -> Path:
    """OUT/demo.gif from OUT/overlays/frame_*.png, looping. Returns its path."""
    out_dir = Path(out_dir)
    pngs = sorted((out_dir / OVERLAY_DIR).glob("frame_*.png"))
    if not pngs:
        raise FileNotFoundError(f"no overlay PNGs in {out_dir / OVERLAY_DIR}")
    # An adaptive palette per frame keeps the masks' colours; frames are small, so this is cheap.
    frames = [Image.open(p).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT) for p in pngs]
    gif = out_dir / GIF_NAME
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0, optimize=False)
    return gif
