"""Replaying many bags, the parts every executor shares: the plan (names, output folders, prompts per
bag), the settings, one bag's replay (BagReplayer), the per-bag results and the progress bar.

`pam-ros replay A B C --out OUT` writes each bag's usual outputs to OUT/<bag name>/ (the very files
a single replay writes, produced by the same run_replay) and OUT/summary.txt + summary.json over all
bags. The local executor (replay/fleet.py) and the Ray executor (replay/fleet_ray.py) run the same
BagReplayer. A bag that fails is recorded in its BagResult and the others go on.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from pam_ros.errors import BagReadError, InputError, OutputExistsError, PamError, ReplayError
from pam_ros.replay.bag import BagInput
from pam_ros.replay.cameras import CameraTopics
from pam_ros.replay.outputs import SUMMARY_JSON, SUMMARY_TEXT, check_out_dir
from pam_ros.replay.prompts import load_prompt_file, prompts_for_camera

COMPLETE, INCOMPLETE, FAILED, NOT_STARTED = "complete", "incomplete", "failed", "not started"
PROMPT_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class FleetBag:
    """One bag of a fleet replay: where it is, its unique name, its outputs and prompts file."""

    name: str
    path: str  # absolute
    out_dir: str  # absolute: OUT/<name>
    prompt_file: str | None = None
    frames_expected: int | None = None  # image messages in the bag (None: unknown, damaged index)


@dataclass(frozen=True)
class FleetSettings:
    """Everything a worker needs to replay any bag of the fleet (picklable: sent to Ray workers)."""

    spec: object  # pam_ros.model.selection.ModelSpec
    config: object  # engine PipelineConfig (semantics_mode="sync")
    image_topic: str | None = None
    overwrite: bool = False
    overlay_pngs: bool = False
    mask_encoding: str = "roi"
    model_name: str = ""
    # several cameras per bag (replay/cameras.py CameraTopics): each bag's outputs in OUT/<bag>/<camera>/
    cameras: tuple = ()


@dataclass
class BagResult:
    """What became of one bag (a row of OUT/summary.*)."""

    name: str
    bag: str
    out_dir: str
    status: str = NOT_STARTED  # complete | incomplete | failed | not started
    reason: str = ""  # why not complete
    frames_read: int = 0
    frames_processed: int = 0
    frames_skipped: int = 0
    prompts: dict = field(default_factory=lambda: {"submitted": 0, "accepted": 0, "refused": 0,
                                                   "never_applied": 0})
    objects: int = 0
    seconds: float = 0.0
    worker_pid: int | None = None
    attempts: int = 0
    prompts_file: str | None = None
    traceback: str = ""  # only for a bug (an unexpected exception) in the replay


@dataclass
class FleetReport:
    """The whole run: one BagResult per bag, in the order given, and the throughput."""

    executor: str  # "ray" | "local"
    workers: int
    bags: list[BagResult]
    out_dir: str
    model: str = ""
    ray_address: str = ""  # "" = a local Ray instance started by the command
    startup_seconds: float = 0.0  # Ray start + model loads, before the first bag was handed out
    replay_seconds: float = 0.0  # from the first bag handed out to the last one finished
    worker_restarts: int = 0
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(result.status == COMPLETE for result in self.bags)

    @property
    def bags_finished(self) -> int:
        """Bags replayed: complete, or incomplete after some frames (damage, Ctrl-C); not failed ones."""
        return sum(result.status == COMPLETE or (result.status == INCOMPLETE and result.frames_read > 0)
                   for result in self.bags)

    @property
    def bags_per_hour(self) -> float:
        return 3600.0 * self.bags_finished / self.replay_seconds if self.replay_seconds > 0 else 0.0

    def count(self, status: str) -> int:
        return sum(result.status == status for result in self.bags)

    def to_dict(self) -> dict:
        data = asdict(self)
        frames = sum(result.frames_processed for result in self.bags)
        data.update(complete=self.complete, bags_total=len(self.bags), bags_complete=self.count(COMPLETE),
                    bags_incomplete=self.count(INCOMPLETE), bags_failed=self.count(FAILED),
                    bags_not_started=self.count(NOT_STARTED), bags_per_hour=round(self.bags_per_hour, 2),
                    frames_processed=frames,
                    frames_per_second=round(frames / self.replay_seconds, 3) if self.replay_seconds else 0.0)
        return data


# ----- planning ----------------------------------------------------------------------------------------
def bag_name(path: str | Path) -> str:
    """A bag folder's name, or a single storage file's name without its extension."""
    path = Path(os.path.abspath(path))  # "." and "run/" have names; a link keeps its own name
    return path.stem if path.is_file() else path.name


def unique_names(paths: list[Path]) -> list[str]:
    """bag_name of each path; a name met again gets -2, -3, ... (first come, first named)."""
    taken: set[str] = set()
    names = []
    for path in paths:
        base = bag_name(path) or "bag"
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}-{k}"
        taken.add(name)
        names.append(name)
    return names


def prompt_file_for(prompts: Path | None, name: str) -> Path | None:
    """--prompts FILE applies to every bag; --prompts DIR holds <bag name>.yaml (or .yml) per bag."""
    if prompts is None or not prompts.is_dir():
        return prompts
    return next((prompts / f"{name}{suffix}" for suffix in PROMPT_SUFFIXES
                 if (prompts / f"{name}{suffix}").is_file()), None)


def plan_fleet(bags: list[Path], out: Path, prompts: Path | None, *, overwrite: bool,
               image_topic: str | None = None,
               cameras: Sequence[CameraTopics] = ()) -> tuple[list[FleetBag], list[BagResult], list[str]]:
    """Name every bag, choose its outputs and prompts, and check what can be checked in a second.

    Returns (bags to replay, results of bags that already failed their check, warnings). A bag that
    cannot be opened, lacks the image topic or has an unusable prompts file in DIR is a failed bag
    (the others go on). Raises InputError / OutputExistsError / PromptFileError for what concerns
    the whole run: OUT is not a folder or holds earlier outputs, a --prompts FILE that is unusable.
    """
    if prompts is not None and not prompts.exists():
        raise InputError(f"--prompts {prompts} does not exist (give a prompts YAML file for every bag, "
                         f"or a folder of <bag name>.yaml files)")
    names_of_cameras = tuple(camera.name for camera in cameras)
    if prompts is not None and prompts.is_file():  # one file for all bags: an error in it concerns every bag
        prompts_for_camera(load_prompt_file(prompts), names_of_cameras[0] if cameras else "", names_of_cameras)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a directory")
    existing = [name for name in (SUMMARY_TEXT, SUMMARY_JSON) if (out / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{out} already holds the summary of an earlier replay ({', '.join(existing)}); "
                                f"pass --overwrite or choose another --out")
    paths = [Path(bag) for bag in bags]
    names = unique_names(paths)
    for name in names:
        check_out_dir(out / name, overwrite)
        for camera in names_of_cameras:
            check_out_dir(out / name / camera, overwrite)

    planned: list[FleetBag] = []
    failed: list[BagResult] = []
    warnings: list[str] = []
    for path, name in zip(paths, names):
        prompt_file = prompt_file_for(prompts, name)
        if prompts is not None and prompts.is_dir() and prompt_file is None:
            warnings.append(f"no {name}.yaml in {prompts}: bag {name} is replayed with the prompts it recorded only")
        job = FleetBag(name=name, path=str(path.resolve()), out_dir=str((out / name).resolve()),
                       prompt_file=str(prompt_file.resolve()) if prompt_file else None)
        try:
            expected = 0
            for topic in [camera.image_topic for camera in cameras] or [image_topic]:
                with BagInput(path, topic) as bag:
                    expected = None if expected is None or bag.image_count is None else expected + bag.image_count
            if prompt_file is not None and prompts.is_dir():
                prompts_for_camera(load_prompt_file(prompt_file), names_of_cameras[0] if cameras else "",
                                   names_of_cameras)
        except ReplayError as err:
            failed.append(BagResult(name=name, bag=job.path, out_dir=job.out_dir, status=FAILED, reason=str(err),
                                    prompts_file=job.prompt_file))
            continue
        planned.append(FleetBag(**{**asdict(job), "frames_expected": expected}))
    if prompts is not None and prompts.is_dir():
        unused = sorted(p.name for p in prompts.iterdir()
                        if p.suffix in PROMPT_SUFFIXES and p.stem not in names)
        if unused:
            warnings.append(f"prompts files in {prompts} that name no bag (unused): {', '.join(unused)}")
    return planned, failed, warnings


# ----- one worker: the model loaded once, bags replayed one after another ------------------------------
class BagReplayer:
    """Loads the model once; each bag gets a fresh pipeline (its own tracking state) on that model,
    so a bag's outputs do not depend on the bags replayed before it on the same worker."""

    def __init__(self, settings: FleetSettings) -> None:
        self.settings = settings
        settings.config.validate()
        self._model = settings.spec.load()  # "auto" device/dtype resolved on this worker's machine
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._current: tuple[str, int] | None = None  # (bag name, frames read)

    def replay(self, job: FleetBag, attempt: int = 1,
               on_frame: Callable[[str, int], None] | None = None) -> BagResult:
        """Replay one bag into job.out_dir; every outcome (also errors) is in the BagResult."""
        from pam_ros.engine.host import PerceptionHost
        from pam_ros.engine.pipeline import PerceptionPipeline
        from pam_ros.replay.cameras import run_cameras_replay
        from pam_ros.replay.runner import run_replay

        result = BagResult(name=job.name, bag=job.path, out_dir=job.out_dir, worker_pid=os.getpid(),
                           attempts=attempt, prompts_file=job.prompt_file)

        def frame_done(frames_read: int) -> None:
            with self._lock:
                self._current = (job.name, frames_read)
            if on_frame is not None:
                on_frame(job.name, frames_read)
            if self._stop.is_set():
                raise KeyboardInterrupt  # run_replay closes the outputs and reports "interrupted"

        with self._lock:
            self._current = (job.name, 0)
        started = time.perf_counter()
        options = dict(prompt_file=job.prompt_file, overwrite=self.settings.overwrite or attempt > 1,
                       overlay_pngs=self.settings.overlay_pngs, mask_encoding=self.settings.mask_encoding,
                       progress=False, model_name=self.settings.model_name)
        if self.settings.cameras:
            pipeline = PerceptionHost(self._model, [camera.name for camera in self.settings.cameras],
                                      self.settings.config)
        else:
            pipeline = PerceptionPipeline(self._model, self.settings.config)
        try:
            if self.settings.cameras:
                report = _CamerasReport(run_cameras_replay(job.path, job.out_dir, pipeline, self.settings.cameras,
                                                           on_frame=_counting_across_cameras(frame_done),
                                                           **options))
            else:
                report = run_replay(job.path, job.out_dir, pipeline, image_topic=self.settings.image_topic,
                                    on_frame=frame_done, **options)
        except (BagReadError, KeyboardInterrupt) as err:
            # damage part-way, or stopped: the outputs hold the frames before it (run_replay closed them)
            report = getattr(err, "report", None)
            if self.settings.cameras:  # every camera's outputs so far, as written
                report = _CamerasReport.from_written(job.out_dir, self.settings.cameras).to_dict()
            else:
                report = report.to_dict() if report is not None else _written_report(job.out_dir)
            result.status, result.reason = INCOMPLETE, str(err) or "interrupted (Ctrl-C)"
        except PamError as err:
            result.status, result.reason, report = FAILED, str(err), None
        except Exception as err:  # noqa: BLE001 - a bug: reported with its traceback, the fleet goes on
            result.status, result.reason, report = FAILED, f"{type(err).__name__}: {err}", None
            result.traceback = traceback.format_exc()
        else:
            result.status = COMPLETE if report.complete else INCOMPLETE
            result.reason = "" if report.complete else report.error
            report = report.to_dict()
        finally:
            pipeline.close()
            with self._lock:
                self._current = None
        if report is not None:
            _copy_counts(report, result)
        result.seconds = round(time.perf_counter() - started, 3)
        return result

    def progress(self) -> tuple[str, int] | None:
        """(bag name, frames read so far) of the bag being replayed, or None when idle."""
        with self._lock:
            return self._current

    def stop(self) -> None:
        """Stop the running bag after its current frame (its outputs are closed and kept)."""
        self._stop.set()


def _written_report(out_dir: str) -> dict | None:
    try:
        return json.loads((Path(out_dir) / SUMMARY_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _counting_across_cameras(frame_done: Callable[[int], None]) -> Callable[[int], None]:
    """on_frame for a bag's cameras replayed one after another: the frames read of all cameras so far."""
    done_before, last = 0, 0

    def on_frame(frames_read: int) -> None:
        nonlocal done_before, last
        if frames_read < last:  # the next camera started
            done_before += last
        last = frames_read
        frame_done(done_before + frames_read)

    return on_frame


class _CamerasReport:
    """One bag's cameras as one row of the fleet's summary: counts summed, objects named camera/id."""

    def __init__(self, reports: dict[str, dict | object]) -> None:
        self._reports = {name: r if isinstance(r, dict) else r.to_dict() for name, r in reports.items()}

    @classmethod
    def from_written(cls, out_dir: str, cameras: Sequence[CameraTopics]) -> "_CamerasReport":
        written = {camera.name: _written_report(str(Path(out_dir) / camera.name)) for camera in cameras}
        return cls({name: report for name, report in written.items() if report is not None})

    @property
    def complete(self) -> bool:
        return bool(self._reports) and all(r.get("complete") for r in self._reports.values())

    @property
    def error(self) -> str:
        return "; ".join(f"{name}: {r.get('error') or 'incomplete'}" for name, r in self._reports.items()
                         if not r.get("complete"))

    def to_dict(self) -> dict:
        total = {"frames_read": 0, "frames_processed": 0, "frames_skipped": 0, "prompts_submitted": 0,
                 "prompts_accepted": 0, "prompts_refused": [], "prompts_never_applied": [], "objects": {}}
        for name, report in self._reports.items():
            for key in total.keys() - {"objects"}:  # counts add up, lists of refused prompts join
                total[key] += report.get(key, type(total[key])())
            total["objects"].update({f"{name}/{oid}": obj for oid, obj in report.get("objects", {}).items()})
        return total


def _copy_counts(report: dict, result: BagResult) -> None:
    result.frames_read = report.get("frames_read", 0)
    result.frames_processed = report.get("frames_processed", 0)
    result.frames_skipped = report.get("frames_skipped", 0)
    result.prompts = {"submitted": report.get("prompts_submitted", 0),
                      "accepted": report.get("prompts_accepted", 0),
                      "refused": len(report.get("prompts_refused", [])),
                      "never_applied": len(report.get("prompts_never_applied", []))}
    result.objects = len(report.get("objects", {}))


# ----- the local executor ------------------------------------------------------------------------------
class FleetProgress:
    """The progress bar over bags, with the frames of the bags being replayed as its postfix."""

    def __init__(self, jobs: list[FleetBag], total: int, done: int, enabled: bool) -> None:
        self._expected = {job.name: job.frames_expected for job in jobs}
        self._bar = tqdm(total=total, initial=done, unit="bag", desc="replay", disable=not enabled,
                         file=sys.stderr, dynamic_ncols=True)
        self.not_complete = 0

    def frames(self, running: dict[str, int]) -> None:
        text = ", ".join(f"{name} {n}/{self._expected.get(name) or '?'}" for name, n in sorted(running.items()))
        self._bar.set_postfix_str(text + (f" | {self.not_complete} not complete" if self.not_complete else ""))

    def finished(self, result: BagResult) -> None:
        self.not_complete += result.status != COMPLETE
        if result.status != COMPLETE:
            self._bar.write(f"{result.name}: {result.status.upper()}: {result.reason}", file=sys.stderr)
        if result.traceback:  # a bug, not a bad bag: its traceback, as a single replay would show it
            self._bar.write(result.traceback.rstrip(), file=sys.stderr)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
