#!/usr/bin/env python3
"""Generate the demo bag shipped in demo/: a synthetic 320x240 scene of simple moving objects.

    python scripts/make_demo_bag.py [--out demo/demo_bag] [--frames 24]

The bag (rosbag2, MCAP storage) holds:
  /camera/image_raw/compressed  sensor_msgs/CompressedImage, PNG (lossless: decodes identically
                                everywhere, so the demo is reproducible), 10 Hz
  /prompts                      pam_ros/Prompt: one prompt recorded in the bag (the "ring", added
                                when it has come into view), to show prompts arriving on a topic
demo/prompts.yaml (written by hand, kept in git) adds the ball and the box from frame 0.

The output is deterministic: the same script writes the same images and messages every time.
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pam_ros.messages.fields import header_fields  # noqa: E402
from pam_ros.replay.bag_writer import BagWriter  # noqa: E402

WIDTH, HEIGHT = 320, 240
START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000  # 10 Hz
FRAME_ID = "camera"
IMAGE_TOPIC = "/camera/image_raw/compressed"
PROMPT_TOPIC = "/prompts"
RING_PROMPT_FRAME = 10


def ball_centre(t: int) -> tuple[float, float]:
    return 40 + 6.5 * t, 60 + 2.5 * t


def box_corner(t: int) -> tuple[float, float]:
    return 230 - 3.0 * t, 150


def ring_centre(t: int) -> tuple[float, float]:
    return 110 + 1.0 * t, -30 + 6.0 * t


def background() -> np.ndarray:
    """A table-like backdrop: a vertical gradient with a faint checker pattern."""
    y = np.linspace(0, 1, HEIGHT)[:, None]
    base = np.stack([200 - 40 * y, 190 - 30 * y, 170 - 20 * y], axis=-1) * np.ones((1, WIDTH, 1))
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    checker = ((xx // 20 + yy // 20) % 2)[..., None] * 10.0
    return np.clip(base - checker, 0, 255).astype(np.uint8)


def render_frame(t: int, backdrop: np.ndarray) -> Image.Image:
    picture = Image.fromarray(backdrop.copy())
    draw = ImageDraw.Draw(picture)
    bx, by = box_corner(t)
    draw.rectangle((bx, by, bx + 60, by + 45), fill=(40, 80, 200), outline=(20, 40, 120), width=2)
    rx, ry = ring_centre(t)
    draw.ellipse((rx - 22, ry - 22, rx + 22, ry + 22), outline=(230, 190, 20), width=8)
    cx, cy = ball_centre(t)
    draw.ellipse((cx - 18, cy - 18, cx + 18, cy + 18), fill=(210, 40, 40))
    draw.ellipse((cx - 9, cy - 11, cx - 3, cy - 5), fill=(245, 160, 160))  # a highlight
    return picture


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_demo_bag(out: Path, frames: int) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    backdrop = background()
    with BagWriter(out, "mcap") as bag:
        bag.add_topic(IMAGE_TOPIC, "sensor_msgs/msg/CompressedImage")
        bag.add_topic(PROMPT_TOPIC, "pam_ros/msg/Prompt")
        for t in range(frames):
            stamp = START_NS + t * PERIOD_NS
            bag.write_fields(IMAGE_TOPIC, stamp, {
                "header": header_fields(stamp, FRAME_ID), "format": "png",
                "data": png_bytes(render_frame(t, backdrop)),
            })
            if t == RING_PROMPT_FRAME:
                # Recorded just after the frame it refers to, as a click on a displayed frame would be.
                rx, ry = ring_centre(t)
                bag.write_fields(PROMPT_TOPIC, stamp + PERIOD_NS // 2, {
                    "header": header_fields(stamp, FRAME_ID), "action": 0, "object_id": "ring",
                    "box": [rx - 26, ry - 26, rx + 26, ry + 26], "has_box": True,
                    "tasks": ["recognize", "caption"],
                })


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--out", type=Path, default=REPO / "demo" / "demo_bag")
    parser.add_argument("--frames", type=int, default=24)
    args = parser.parse_args()
    write_demo_bag(args.out, args.frames)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({args.frames} frames, {size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
