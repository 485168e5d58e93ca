"""Replaying many bags in one command: run the plan (replay/fleet_plan.py) on the local executor (bags one
after another here) or on Ray (replay/fleet_ray.py), then write the summary over all bags."""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pam_ros.errors import InputError, PamError
from pam_ros.replay.fleet_plan import (
    COMPLETE,
    INCOMPLETE,
    NOT_STARTED,
    BagReplayer,
    BagResult,
    FleetBag,
    FleetProgress,
    FleetReport,
    FleetSettings,
    plan_fleet,
    unique_names,
)
from pam_ros.replay.outputs import SUMMARY_JSON, SUMMARY_TEXT


def run_local(jobs: list[FleetBag], settings: FleetSettings, progress: FleetProgress,
              report: FleetReport, on_progress=None) -> dict[str, BagResult]:
    """Bags one after another in this process (--workers 1). Ctrl-C stops the running bag (its
    outputs closed and kept) and leaves the rest not started."""
    started = time.perf_counter()
    replayer = BagReplayer(settings)
    report.startup_seconds = time.perf_counter() - started
    results: dict[str, BagResult] = {}

    def frame_done(name: str, frames: int) -> None:
        progress.frames({name: frames})
        if on_progress is not None:
            on_progress({name: (os.getpid(), frames)})

    started = time.perf_counter()
    try:
        for job in jobs:
            result = replayer.replay(job, on_frame=frame_done)
            results[job.name] = result
            progress.frames({})
            progress.finished(result)
            if result.status == INCOMPLETE and result.reason.startswith("interrupted"):
                report.interrupted = True
                break
    except KeyboardInterrupt:  # between two bags
        report.interrupted = True
    report.replay_seconds = time.perf_counter() - started
    return results


# ----- the whole run -----------------------------------------------------------------------------------
def run_fleet(bags: list[Path], out: Path, settings: FleetSettings, *, prompts: Path | None = None,
              workers: int = 1, ray_address: str | None = None, gpus_per_worker: float | None = None,
              progress: bool = True,
              on_progress: Callable[[dict[str, tuple[int, int]]], None] | None = None) -> FleetReport:
    """Replay every bag into OUT/<bag name>/ and write OUT/summary.txt + summary.json.

    workers == 1: here, one bag after another; workers > 1: on Ray (a local instance started and
    stopped here, or the cluster at ray_address). on_progress({bag name: (worker pid, frames read)})
    is called with the bags being replayed: after each frame here, about once a second on Ray; a
    KeyboardInterrupt raised by it acts as Ctrl-C.
    Raises InputError / OutputExistsError / PromptFileError (nothing written) for the run's inputs.
    """
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    jobs, failed, warnings = plan_fleet(bags, out, prompts, overwrite=settings.overwrite,
                                        image_topic=settings.image_topic, cameras=settings.cameras)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for result in failed:
        print(f"{result.name}: FAILED before it started: {result.reason}", file=sys.stderr)
    executor = "ray" if workers > 1 else "local"
    report = FleetReport(executor=executor, workers=workers, bags=[], out_dir=str(out.resolve()),
                         model=settings.model_name, ray_address=ray_address or "", warnings=warnings)
    bar = FleetProgress(jobs, total=len(bags), done=len(failed), enabled=progress)
    results: dict[str, BagResult] = {}
    unusable_inputs = False
    try:
        if jobs and executor == "ray":
            from pam_ros.replay.fleet_ray import run_on_ray

            results = run_on_ray(jobs, settings, bar, report, workers=workers, address=ray_address,
                                 gpus_per_worker=gpus_per_worker, on_progress=on_progress)
        elif jobs:
            results = run_local(jobs, settings, bar, report, on_progress)
    except PamError:
        unusable_inputs = True  # no Ray cluster, no model: nothing was replayed, no summary written
        raise
    finally:
        bar.close()
        planned = {job.name: job for job in jobs}
        by_name = {result.name: result for result in failed} | results
        report.bags = [by_name.get(name) or _not_started(planned[name])
                       for name in unique_names([Path(bag) for bag in bags])]
        if not unusable_inputs:
            write_fleet_summary(out, report)
    return report


def _not_started(job: FleetBag) -> BagResult:
    return BagResult(name=job.name, bag=job.path, out_dir=job.out_dir, status=NOT_STARTED,
                     reason="not started: the run stopped before it", prompts_file=job.prompt_file)


def write_fleet_summary(out: Path, report: FleetReport) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_JSON).write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n",
                                    encoding="utf-8")
    (out / SUMMARY_TEXT).write_text(format_fleet_summary(report) + "\n", encoding="utf-8")


def format_fleet_summary(report: FleetReport) -> str:
    """The table printed at the end and saved as OUT/summary.txt."""
    header = ("bag", "status", "read", "processed", "skipped", "prompts", "objects", "seconds", "worker_pid")
    rows = [header]
    for r in report.bags:
        prompts = f"{r.prompts['accepted']}/{r.prompts['submitted']}"
        rows.append((r.name, r.status + (f" (try {r.attempts})" if r.attempts > 1 else ""), str(r.frames_read),
                     str(r.frames_processed), str(r.frames_skipped), prompts, str(r.objects), f"{r.seconds:.1f}",
                     str(r.worker_pid or "-")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["pam-ros replay summary (several bags)"]
    where = "Ray, " + (f"cluster {report.ray_address}" if report.ray_address else "local instance") \
        if report.executor == "ray" else "this process"
    lines.append(f"  executor  {report.executor} ({where}), {report.workers} worker(s)"
                 + (f", {report.worker_restarts} replaced" if report.worker_restarts else ""))
    if report.model:
        lines.append(f"  model     {report.model}")
    lines.append(f"  outputs   {report.out_dir}/<bag>/ (bag/, frames.jsonl, summary.*)")
    lines.append("")
    for row in rows:
        lines.append("  " + "  ".join(value.ljust(width) if i == 0 else value.rjust(width) if i >= 2 else
                                      value.ljust(width) for i, (value, width) in enumerate(zip(row, widths))))
    lines.append("")
    for r in report.bags:
        if r.status != COMPLETE:
            lines.append(f"  {r.name}: {r.status}: {r.reason}")
    for warning in report.warnings:
        lines.append(f"  warning: {warning}")
    frames = sum(r.frames_processed for r in report.bags)
    loads = "Ray start, model loads" if report.executor == "ray" else "model load"
    lines.append(f"  time      startup {report.startup_seconds:.1f} s ({loads}), replay "
                 f"{report.replay_seconds:.1f} s, {frames} frames processed")
    lines.append(f"  speed     {report.bags_per_hour:.1f} bags/hour ({report.bags_finished} bags replayed)")
    state = "complete" if report.complete else (
        f"INCOMPLETE: {report.count(COMPLETE)} of {len(report.bags)} bags complete"
        + (" (interrupted)" if report.interrupted else ""))
    lines.append(f"  status    {state}")
    return "\n".join(lines)
