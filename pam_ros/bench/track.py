"""Measurements behind `pam-ros bench track` (the CLI is pam_ros/cli_bench.py): per-frame time and memory of the streaming tracker vs SAM 2's video predictor.

For 1, 4 and 16 objects (configurable) the same frames are tracked in this process, twice by each
tracker in the order streaming, upstream, upstream, streaming (times are the means):
by `StreamingTracker` and by the upstream `sam2` `SAM2VideoPredictor` code path
(`init_state` + `add_new_points_or_box` + `propagate_in_video`) on the same model object and
weights. Then the streaming tracker alone runs a long stream and reports its state after 100 and
10,000 frames (configurable), which shows that memory stays bounded.

Memory: on CUDA the peak allocated memory of each run; everywhere the bytes of tensors each
tracker keeps as state (for the upstream predictor: everything reachable from its inference
state, the preloaded frames included, since loading the whole clip is part of its design).

Numbers are printed, never asserted. The frames are synthetic (moving squares) and small; the model
input size can be reduced with --image-size for quick CPU runs (PAM itself uses 1024).
"""
from __future__ import annotations

import contextlib
import gc
import io
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pam_ros.engine.tracker import StreamingTracker
from pam_ros.model.sam2_backbone import Sam2Backbone, VisualPrompt


@dataclass
class TrackBenchRow:
    """One tracker on one clip."""

    tracker: str  # "streaming" or "sam2-video-predictor"
    objects: int
    frames: int
    seconds_per_frame: float
    state_bytes: int
    peak_bytes: int | None  # CUDA peak allocated during the run; None on CPU


@dataclass
class LongRunPoint:
    frames: int
    seconds_per_frame: float
    state: dict[str, int]
    peak_bytes: int | None


# ---- inputs -------------------------------------------------------------------------------------
def synthetic_frame(index: int, width: int, height: int, num_squares: int = 4) -> np.ndarray:
    """A gray frame with a few coloured squares moving across it."""
    frame = np.full((height, width, 3), 60, dtype=np.uint8)
    side = max(4, min(width, height) // 5)
    for k in range(num_squares):
        x = (index * (k + 1) + k * width // num_squares) % max(1, width - side)
        y = (k * height // num_squares + side // 2) % max(1, height - side)
        frame[y : y + side, x : x + side] = ((60 * k + 180) % 256, (90 * k + 40) % 256, (150 * k + 90) % 256)
    return frame


def object_prompts(num_objects: int, width: int, height: int) -> list[VisualPrompt]:
    """One box per object on a grid covering the frame."""
    columns = int(np.ceil(np.sqrt(num_objects)))
    rows = int(np.ceil(num_objects / columns))
    cell_w, cell_h = width / columns, height / rows
    prompts = []
    for k in range(num_objects):
        col, row = k % columns, k // columns
        x0, y0 = col * cell_w, row * cell_h
        prompts.append(
            VisualPrompt(box=np.array([x0 + 0.1 * cell_w, y0 + 0.1 * cell_h, x0 + 0.9 * cell_w, y0 + 0.9 * cell_h]))
        )
    return prompts


# ---- measuring -----------------------------------------------------------------------------------
def tensor_bytes(obj: object) -> int:
    """Bytes of the distinct tensor storages reachable from nested dicts/lists/tuples."""
    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def _cuda_peak_start(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _cuda_peak_end(device: torch.device, baseline: int | None) -> int | None:
    if baseline is None:
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - baseline


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_streaming(backbone: Sam2Backbone, frames: Sequence[np.ndarray], prompts: Sequence[VisualPrompt]) -> TrackBenchRow:
    device = backbone.device
    tracker = StreamingTracker(backbone, max_objects=max(1, len(prompts)))
    for number, prompt in enumerate(prompts):
        tracker.add_object(f"obj_{number}", prompt)
    baseline = _cuda_peak_start(device)
    started = time.perf_counter()
    bar = tqdm(frames, desc=f"streaming, {len(prompts)} object(s)", unit="frame", leave=False, file=sys.stderr)
    for index, frame in enumerate(bar):
        tracker.step(frame, stamp_ns=index)
    _sync(device)
    seconds = time.perf_counter() - started
    size = tracker.state_size()
    return TrackBenchRow(
        tracker="streaming",
        objects=len(prompts),
        frames=len(frames),
        seconds_per_frame=seconds / max(1, len(frames)),
        state_bytes=size["memory_bytes"] + size["feature_bytes"],
        peak_bytes=_cuda_peak_end(device, baseline),
    )


def run_upstream(
    backbone: Sam2Backbone, frame_dir: Path, num_frames: int, prompts: Sequence[VisualPrompt]
) -> TrackBenchRow:
    """The official SAM2VideoPredictor flow on a folder of JPEG frames (its only frame source)."""
    predictor = backbone.sam  # built as sam2.sam2_video_predictor.SAM2VideoPredictor
    device = backbone.device
    baseline = _cuda_peak_start(device)
    bar = tqdm(total=num_frames, desc=f"sam2 video predictor, {len(prompts)} object(s)", unit="frame", leave=False,
               file=sys.stderr)
    started = time.perf_counter()
    # the predictor's own progress bars (frame loading, propagation) would land in the table: ours replaces them
    with torch.inference_mode(), backbone.autocast(), contextlib.redirect_stderr(io.StringIO()):
        state = predictor.init_state(str(frame_dir))
        for obj_id, prompt in enumerate(prompts):
            predictor.add_new_points_or_box(
                state,
                frame_idx=0,
                obj_id=obj_id,
                points=prompt.points,
                labels=prompt.labels,
                box=prompt.box,
            )
        for _ in predictor.propagate_in_video(state):
            bar.update()
    bar.close()
    _sync(device)
    seconds = time.perf_counter() - started
    state_bytes = tensor_bytes(state)
    del state
    return TrackBenchRow(
        tracker="sam2-video-predictor",
        objects=len(prompts),
        frames=num_frames,
        seconds_per_frame=seconds / max(1, num_frames),
        state_bytes=state_bytes,
        peak_bytes=_cuda_peak_end(device, baseline),
    )


def run_track_bench(
    backbone: Sam2Backbone,
    *,
    num_frames: int = 20,
    num_objects: Iterable[int] = (1, 4, 16),
    width: int = 64,
    height: int = 48,
    long_frames: Sequence[int] = (100, 10_000),
    compare_upstream: bool = True,
    printer: Callable[[str], None] = print,
) -> tuple[list[TrackBenchRow], list[LongRunPoint]]:
    """Print (and return) per-frame time and memory for each object count, and the long-run state."""
    printer(
        f"# bench track: {num_frames} frames {width}x{height}, model input {backbone.image_size}, "
        f"device {backbone.device}, dtype {str(backbone.dtype).replace('torch.', '')}"
    )
    rows: list[TrackBenchRow] = []
    with tempfile.TemporaryDirectory(prefix="pam-ros-bench-") as tmp:
        frame_dir = Path(tmp)
        frames = []
        for index in range(num_frames):
            path = frame_dir / f"{index:05d}.jpg"
            Image.fromarray(synthetic_frame(index, width, height)).save(path, quality=95)
            # both trackers see the same (decoded JPEG) pixels
            frames.append(np.array(Image.open(path).convert("RGB")))
        # warm-up: the first forward passes of a process allocate and pick kernels; neither tracker pays it
        warm = StreamingTracker(backbone, max_objects=1)
        warm.add_object("obj_0", object_prompts(1, width, height)[0])
        warm.step(frames[0])
        del warm
        printer(f"{'objects':>7} {'tracker':>22} {'ms/frame':>10} {'state MiB':>10} {'peak MiB':>9} {'time x':>7} {'state x':>8}")
        for count in num_objects:
            prompts = object_prompts(count, width, height)
            if not compare_upstream:
                streaming = run_streaming(backbone, frames, prompts)
                rows.append(streaming)
                printer(_format_row(streaming))
                continue
            # streaming, upstream, upstream, streaming: a machine whose load drifts during the runs
            # (a shared CI box) slows both trackers alike, instead of whichever runs second
            runs: dict[str, list[TrackBenchRow]] = {"streaming": [], "upstream": []}
            for kind in ("streaming", "upstream", "upstream", "streaming"):
                gc.collect()
                if kind == "streaming":
                    runs[kind].append(run_streaming(backbone, frames, prompts))
                else:
                    runs[kind].append(run_upstream(backbone, frame_dir, num_frames, prompts))
            streaming, upstream = _mean_row(runs["streaming"]), _mean_row(runs["upstream"])
            rows += [streaming, upstream]
            printer(_format_row(streaming))
            printer(_format_row(upstream, reference=streaming))
            gc.collect()
    points = run_long_stream(backbone, long_frames, width=width, height=height, printer=printer)
    return rows, points


def run_long_stream(
    backbone: Sam2Backbone,
    checkpoints: Sequence[int],
    *,
    width: int = 64,
    height: int = 48,
    num_objects: int = 1,
    printer: Callable[[str], None] = print,
) -> list[LongRunPoint]:
    """Track one stream and report the tracker's state after each checkpoint frame count."""
    if not checkpoints:
        return []
    device = backbone.device
    tracker = StreamingTracker(backbone, max_objects=max(1, num_objects))
    for number, prompt in enumerate(object_prompts(num_objects, width, height)):
        tracker.add_object(f"obj_{number}", prompt)
    wanted = sorted(set(int(c) for c in checkpoints if c > 0))
    points: list[LongRunPoint] = []
    baseline = _cuda_peak_start(device)
    started = time.perf_counter()
    printer(f"# streaming tracker, {num_objects} object(s), long stream")
    for index in range(wanted[-1]):
        tracker.step(synthetic_frame(index, width, height), stamp_ns=index)
        if index + 1 in wanted:
            _sync(device)
            point = LongRunPoint(
                frames=index + 1,
                seconds_per_frame=(time.perf_counter() - started) / (index + 1),
                state=tracker.state_size(),
                peak_bytes=_cuda_peak_end(device, baseline),
            )
            points.append(point)
            state = point.state
            peak = "" if point.peak_bytes is None else f", CUDA peak {point.peak_bytes / 2**20:.1f} MiB"
            printer(
                f"after {point.frames:>6} frames: memory {state['memory_bytes'] / 2**20:.2f} MiB "
                f"({state['conditioning_frames']} cond + {state['tracked_frames']} tracked frames), "
                f"features {state['feature_bytes'] / 2**20:.2f} MiB ({state['feature_frames']} frames), "
                f"{1000 * point.seconds_per_frame:.1f} ms/frame{peak}"
            )
    return points


def _mean_row(runs: Sequence[TrackBenchRow]) -> TrackBenchRow:
    """Mean time of repeated runs of one tracker (state and peak are the same in each)."""
    seconds = sum(r.seconds_per_frame for r in runs) / len(runs)
    peaks = [r.peak_bytes for r in runs if r.peak_bytes is not None]
    return TrackBenchRow(runs[0].tracker, runs[0].objects, runs[0].frames, seconds, max(r.state_bytes for r in runs),
                         max(peaks) if peaks else None)


def _format_row(row: TrackBenchRow, reference: TrackBenchRow | None = None) -> str:
    peak = "-" if row.peak_bytes is None else f"{row.peak_bytes / 2**20:.1f}"
    ratios = ""
    if reference is not None:
        time_ratio = row.seconds_per_frame / reference.seconds_per_frame if reference.seconds_per_frame else float("nan")
        state_ratio = row.state_bytes / reference.state_bytes if reference.state_bytes else float("nan")
        ratios = f" {time_ratio:>7.2f} {state_ratio:>8.2f}"
    return (
        f"{row.objects:>7} {row.tracker:>22} {1000 * row.seconds_per_frame:>10.1f} "
        f"{row.state_bytes / 2**20:>10.2f} {peak:>9}{ratios}"
    )


def warm_up(backbone: Sam2Backbone, num_frames: int, *, width: int = 64, height: int = 48) -> float:
    """Track one object over `num_frames` frames untimed, so one-off work (torch.compile's compilation for
    each memory size up to SAM 2's full memory, TensorRT's engine build) stays out of the timed runs.
    Returns the seconds it took."""
    started = time.perf_counter()
    tracker = StreamingTracker(backbone, max_objects=1)
    tracker.add_object("obj_0", object_prompts(1, width, height)[0])
    for index in range(num_frames):
        tracker.step(synthetic_frame(index, width, height), stamp_ns=index)
    _sync(backbone.device)
    return time.perf_counter() - started
