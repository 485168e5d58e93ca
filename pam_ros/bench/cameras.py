"""`pam-ros bench cameras`: N cameras in one process (one model, engine/host.py) against N single-camera
processes (a model each), measured side by side: resident memory and total frames per second.

Every row runs in fresh processes (`python -m pam_ros.bench.cameras RUN ...` prints one JSON line), so
each process's peak resident memory (VmHWM) is its own. The N single-camera processes run at the same
time, as N nodes on a robot would, and their peaks are summed: measured, not computed. A row whose
processes would not fit in this machine's available memory (estimated from the one-camera process
measured first) is skipped and said so, rather than swapping.

Model: "tiny" is the test fixture (SAM 2 at 256 px); "1.5B" / "3B" are random weights at the official
shapes (SAM 2.1 hiera-large at 1024 px + Qwen2.5), no download: memory and time depend on shapes only.
Semantics are off (new objects get no tasks): the rows compare the weights held and the tracking done.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

WIDTH, HEIGHT = 160, 120


@dataclass
class CamerasRow:
    cameras: int
    layout: str  # "one process" or "N processes"
    resident_mib: float  # peak resident memory, summed over the processes
    frames_per_s: float  # every camera's frames / wall time
    skipped: str = ""  # why the row was not run


def frame(index: int, camera: int) -> np.ndarray:
    """A square moving over a gradient, shifted per camera (cameras see the scene from different places)."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.stack([(xx * 2) % 256, (yy * 3) % 256, ((xx + yy) * 5) % 256], axis=-1).astype(np.uint8)
    x0 = 20 + 3 * index + 10 * camera
    image[40:80, x0:x0 + 40] = (230, 30, 30)
    return image


def build_model(size: str):
    """The model a row runs: the tiny fixture, or random weights at the official shapes."""
    import torch

    if size == "tiny":
        from pam_ros.model.selection import ModelSpec

        return ModelSpec(name="tiny", image_size=256).load()
    from pam_ros.bench.shapes import SAM2_SHAPES, random_pam
    from pam_ros.model.pam import configure_backbone
    from pam_ros.model.sam2_backbone import Sam2Backbone

    torch.manual_seed(0)
    model = random_pam(size)
    config, image_size = SAM2_SHAPES["real"]
    model.backbone = Sam2Backbone.from_config(config, None, overrides={"image_size": image_size})
    configure_backbone(model.backbone)
    return model


def _proc_mib(path: str, key: str) -> float:
    """A "Key: N kB" line of a Linux /proc file, in MiB."""
    with open(path, encoding="ascii") as lines:
        for line in lines:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in {path}")


def peak_resident_mib() -> float:
    """This process's peak resident memory (VmHWM)."""
    return _proc_mib("/proc/self/status", "VmHWM")


def run_in_process(size: str, cameras: int, frames: int) -> dict:
    """One process: `cameras` cameras over one model (a single pipeline when cameras is 0: one camera
    the single-camera way), each with one object, `frames` frames each, round robin through
    PerceptionHost.process_frames (the cameras' frames of a round share one image-encoder call)."""
    from pam_ros.engine.host import PerceptionHost
    from pam_ros.engine.pipeline import PerceptionPipeline, PipelineConfig
    from pam_ros.engine.types import PromptRequest

    model = build_model(size)
    config = PipelineConfig(new_object_tasks=(), semantics_mode="sync")
    if cameras == 0:
        pipelines = [PerceptionPipeline(model, config)]
    else:
        host = PerceptionHost(model, [f"cam{i}" for i in range(cameras)], config)
        pipelines = [host[name] for name in host.cameras]
    for number, pipeline in enumerate(pipelines):
        pipeline.submit_prompt(PromptRequest(box=(20.0 + 10 * number, 40.0, 60.0 + 10 * number, 80.0)))
    started = time.perf_counter()
    for index in range(frames):
        if cameras == 0:
            pipelines[0].process(frame(index, 0), index + 1)
        else:  # as the node's tracking thread: one call per round, the cameras' frames in one encoder batch
            for result in host.process_frames([(name, frame(index, number), index + 1)
                                               for number, name in enumerate(host.cameras)]):
                if not hasattr(result, "objects"):
                    raise result
    seconds = time.perf_counter() - started
    return {"resident_mib": peak_resident_mib(), "seconds": seconds, "frames": frames * len(pipelines)}


def _launch(size: str, cameras: int, frames: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pam_ros.bench.cameras", "RUN", size, str(cameras), str(frames)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def _result(process: subprocess.Popen) -> dict:
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"a bench process failed (exit {process.returncode}):\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _processes(count: int) -> str:
    return "1 process" if count == 1 else f"{count} processes"


def available_mib() -> float:
    return _proc_mib("/proc/meminfo", "MemAvailable")


def run_cameras_bench(size: str, counts: Sequence[int], frames: int,
                      printer: Callable[[str], None] = print) -> list[CamerasRow]:
    """The rows for each camera count: one process with N cameras, then N single-camera processes."""
    printer(f"# bench cameras: {size} model, {frames} frames per camera, one object each, semantics off")
    printer(f"{'cameras':>7} {'layout':>14} {'resident MiB':>13} {'frames/s':>9}")
    single = _result(_launch(size, 0, frames))
    budget = 0.9 * available_mib()
    rows = []
    for count in counts:
        together = _result(_launch(size, count, frames))
        rows.append(CamerasRow(count, "one process", together["resident_mib"],
                               together["frames"] / together["seconds"]))
        needed = count * single["resident_mib"]
        if count > 1 and needed > budget:
            rows.append(CamerasRow(count, _processes(count), 0.0, 0.0,
                                   skipped=f"needs about {needed:.0f} MiB, {budget:.0f} MiB available: not run"))
        else:
            started = time.perf_counter()
            # one camera alone is the single-camera process measured first; more run side by side
            results = [single] if count == 1 else [_result(p) for p in [_launch(size, 0, frames) for _ in range(count)]]
            wall = time.perf_counter() - started
            rows.append(CamerasRow(count, _processes(count), sum(r["resident_mib"] for r in results),
                                   sum(r["frames"] for r in results) / max(wall, 1e-9) if count > 1
                                   else results[0]["frames"] / results[0]["seconds"]))
        for row in rows[-2:]:
            printer(f"{row.cameras:>7} {row.layout:>14} " + (f"{row.resident_mib:>13.0f} {row.frames_per_s:>9.2f}"
                                                                if not row.skipped else f"  skipped: {row.skipped}"))
    return rows


def summary_line(rows: Sequence[CamerasRow], cameras: int = 2) -> str:
    """The last line: N cameras in one process against N processes (measured both)."""
    one = next(r for r in rows if r.cameras == cameras and r.layout == "one process")
    many = next(r for r in rows if r.cameras == cameras and r.layout != "one process")
    if many.skipped:
        return f"cameras: {cameras} in one process {one.resident_mib:.0f} MiB, {cameras} processes not run ({many.skipped})"
    return (f"cameras: {cameras} in one process {one.resident_mib:.0f} MiB, {cameras} processes "
            f"{many.resident_mib:.0f} MiB, ratio X/Y = {one.resident_mib / many.resident_mib:.2f}")


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "RUN":
    print(json.dumps(run_in_process(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
