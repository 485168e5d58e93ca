"""Comparing two replays of the same bags (`pam-ros compare BASELINE CANDIDATE`): the figures per bag
and object, the verdict with its reasons, and the JSON of both (the text is compare_summary's).

Frames are matched by stamp and objects by id. Per object: mask IoU in every frame where either run
has it, frames one run tracks (score > 0.5) and the other has lost, per-task semantics text, and the
3-D position difference when both have geometry; per run: per-frame processing time and prompts
refused / never applied. Both frames.jsonl files are streamed; every figure is kept in memory that
does not grow with the number of frames (compare_stats). No ROS, and no model is loaded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pam_ros.errors import CompareInputError, InputError
from pam_ros.model.masks import rle_to_mask
from pam_ros.replay.compare_runs import (
    SINGLE,
    FrameReader,
    ReplayRun,
    find_replay_output,
    paired_by_stamp,
)
from pam_ros.replay.compare_stats import (
    FrameRanges,
    LowestSeries,
    WorstFrames,
    counted,
    iou_histogram,
    log_histogram,
)
from pam_ros.replay.outputs import TIMING_KEY
from pam_ros.viz.overlay import printable

TRACKED_SCORE = 0.5  # above: the object is tracked in that frame; at or below (or absent): lost
SEMANTICS_MODES = ("report", "exact")
BASELINE, CANDIDATE = "baseline", "candidate"
ROLES = (BASELINE, CANDIDATE)


@dataclass(frozen=True)
class CompareSettings:
    """What counts as a regression (the command's options)."""

    min_iou: float = 0.9
    max_lost_frames: int = 0
    semantics: str = "report"  # "exact": a changed text is a regression
    max_slowdown: float | None = None  # candidate / baseline processing time per frame; None: never fails
    worst_frames: int = 4  # frames kept per bag for the report's side-by-side overlays

    def validate(self) -> "CompareSettings":
        if not 0.0 <= self.min_iou <= 1.0:
            raise InputError(f"--min-iou must be between 0 and 1, got {self.min_iou:g}")
        if self.max_lost_frames < 0:
            raise InputError(f"--max-lost-frames must be >= 0, got {self.max_lost_frames}")
        if self.semantics not in SEMANTICS_MODES:
            raise InputError(f"--semantics must be one of {', '.join(SEMANTICS_MODES)}, got {self.semantics!r}")
        if self.max_slowdown is not None and not self.max_slowdown > 0:
            raise InputError(f"--max-slowdown must be > 0 (1.5 = at most 50 % slower), got {self.max_slowdown:g}")
        return self

    def to_json(self) -> dict:
        return {"min_iou": self.min_iou, "max_lost_frames": self.max_lost_frames, "semantics": self.semantics,
                "max_slowdown": self.max_slowdown}


# ------------------------------------------------------------------------------------------ figures
class TaskComparison:
    """One semantic task of one object over the frames both runs have the object."""

    def __init__(self) -> None:
        self.frames_compared = 0
        self.differing = FrameRanges()
        self.first_difference: dict | None = None

    def add(self, frame: int, baseline_text: str, candidate_text: str) -> None:
        self.frames_compared += 1
        if baseline_text != candidate_text:
            self.differing.add(frame)
            if self.first_difference is None:
                self.first_difference = {"frame": frame, BASELINE: baseline_text, CANDIDATE: candidate_text}

    @property
    def identical_share(self) -> float | None:
        if not self.frames_compared:
            return None
        return 1.0 - self.differing.count / self.frames_compared

    def to_json(self) -> dict:
        return {"frames_compared": self.frames_compared, "frames_differing": self.differing.to_json(),
                "identical_share": self.identical_share, "first_difference": self.first_difference}


class ObjectComparison:
    """One object id of one bag in both runs."""

    def __init__(self, object_id: str) -> None:
        self.object_id = object_id
        self.frames_in = {BASELINE: 0, CANDIDATE: 0}
        self.iou = iou_histogram()
        self.iou_series = LowestSeries()
        self.lowest_iou_frame: int | None = None
        self.below_min_iou = FrameRanges()
        self.lost_in = {BASELINE: FrameRanges(), CANDIDATE: FrameRanges()}  # lost there, tracked in the other
        self.semantics: dict[str, TaskComparison] = {}
        self.position_mm = log_histogram(1e-3, 1e7)
        self.reasons: list[str] = []  # why this object is a regression (set by the verdict)

    @property
    def presence(self) -> str:
        """'both', 'baseline only' or 'candidate only' (over the frames compared)."""
        if self.frames_in[BASELINE] and self.frames_in[CANDIDATE]:
            return "both"
        return "baseline only" if self.frames_in[BASELINE] else "candidate only"

    def add_iou(self, frame: int, iou: float, min_iou: float) -> None:
        if iou < self.iou.min:
            self.lowest_iou_frame = frame
        self.iou.add(iou)
        self.iou_series.add(frame, iou)
        if iou < min_iou:
            self.below_min_iou.add(frame)

    def semantics_identical_share(self) -> float | None:
        compared = sum(task.frames_compared for task in self.semantics.values())
        differing = sum(task.differing.count for task in self.semantics.values())
        return 1.0 - differing / compared if compared else None

    def is_perfect(self) -> bool:
        """Same masks everywhere, never lost in one run only, the same texts and positions, in both runs."""
        return (self.presence == "both" and (not self.iou.count or self.iou.min >= 1.0)
                and not any(r.count for r in self.lost_in.values())
                and all(not task.differing.count for task in self.semantics.values())
                and (not self.position_mm.count or self.position_mm.max == 0.0))

    def to_json(self) -> dict:
        return {
            "object_id": self.object_id,
            "presence": self.presence,
            "regression": bool(self.reasons),
            "reasons": list(self.reasons),
            "frames_in_baseline": self.frames_in[BASELINE],
            "frames_in_candidate": self.frames_in[CANDIDATE],
            "iou": {"frames": self.iou.count, "mean": _rounded(self.iou.mean), "p5": _rounded(self.iou.quantile(0.05)),
                    "min": _rounded(self.iou.min if self.iou.count else None), "min_frame": self.lowest_iou_frame,
                    "below_min_iou": self.below_min_iou.to_json()},
            "lost": {"in_candidate": self.lost_in[CANDIDATE].to_json(),
                     "in_baseline": self.lost_in[BASELINE].to_json()},
            "semantics": {task: comparison.to_json() for task, comparison in sorted(self.semantics.items())},
            "geometry": None if not self.position_mm.count else {
                "frames": self.position_mm.count,
                "position_difference_mm": {"median": _rounded(self.position_mm.quantile(0.5), 3),
                                           "max": _rounded(self.position_mm.max, 3)}},
        }


class RunTiming:
    """Per-frame processing time of one run (frames.jsonl's process_ms), with summary.json as fallback."""

    def __init__(self) -> None:
        self.process_ms = log_histogram(1e-3, 1e7)

    def add(self, line: dict) -> None:
        value = line.get(TIMING_KEY)
        if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
            self.process_ms.add(float(value))

    def figures(self, summary: dict | None) -> dict | None:
        summary = summary or {}
        replay_fps = summary.get("frames_per_second")
        if self.process_ms.count:
            mean = self.process_ms.mean
            return {"source": f"frames.jsonl {TIMING_KEY}", "frames": self.process_ms.count,
                    "mean_ms": _rounded(mean, 3), "median_ms": _rounded(self.process_ms.quantile(0.5), 3),
                    "p95_ms": _rounded(self.process_ms.quantile(0.95), 3),
                    "frames_per_second": _rounded(1000.0 / mean if mean > 0 else None, 3),
                    "replay_frames_per_second": replay_fps}
        seconds, frames = summary.get("seconds"), summary.get("frames_processed")
        if isinstance(seconds, (int, float)) and isinstance(frames, int) and frames > 0:
            # an older replay without per-frame times: its whole run (bag reading and writing included)
            return {"source": "summary.json (whole replay)", "frames": frames,
                    "mean_ms": _rounded(1000.0 * seconds / frames, 3), "median_ms": None, "p95_ms": None,
                    "frames_per_second": replay_fps, "replay_frames_per_second": replay_fps}
        return None


@dataclass
class WorstFrame:
    """A frame whose masks differ most, kept whole for the report's side-by-side overlays."""

    frame: int
    stamp_ns: int
    object_id: str
    iou: float
    objects: dict  # role -> that run's frames.jsonl objects of this frame


@dataclass
class BagComparison:
    """Everything compared for one bag; `status` is 'compared', 'missing in the candidate' or
    'only in the candidate' (the last two: a fleet bag only one run has)."""

    name: str
    runs: dict  # role -> ReplayRun | None
    status: str = "compared"
    frames: dict = field(default_factory=lambda: {BASELINE: 0, CANDIDATE: 0, "matched": 0})
    unmatched: dict = field(default_factory=lambda: {BASELINE: FrameRanges(), CANDIDATE: FrameRanges()})
    image_size: tuple[int, int] | None = None  # (width, height)
    objects: dict[str, ObjectComparison] = field(default_factory=dict)
    timing: dict = field(default_factory=lambda: {BASELINE: RunTiming(), CANDIDATE: RunTiming()})
    refused_in_frames: dict = field(default_factory=lambda: {BASELINE: 0, CANDIDATE: 0})
    worst: WorstFrames = field(default_factory=WorstFrames)
    warnings: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    # ----- figures over objects and runs
    def iou_overall(self) -> tuple[float | None, float | None]:
        """(mean, min) IoU over every frame of the objects both runs have (the others are listed apart)."""
        both = [obj for obj in self.objects.values() if obj.presence == "both" and obj.iou.count]
        if not both:
            return None, None
        return (sum(obj.iou.total for obj in both) / sum(obj.iou.count for obj in both),
                min(obj.iou.min for obj in both))

    def semantics_by_task(self) -> dict[str, dict]:
        tasks: dict[str, list[int]] = {}
        for obj in self.objects.values():
            for task, comparison in obj.semantics.items():
                counts = tasks.setdefault(task, [0, 0])
                counts[0] += comparison.frames_compared
                counts[1] += comparison.differing.count
        return {task: {"frames_compared": compared, "frames_differing": differing,
                       "identical_share": 1.0 - differing / compared if compared else None}
                for task, (compared, differing) in sorted(tasks.items())}

    def semantics_identical_share(self) -> float | None:
        compared = sum(t["frames_compared"] for t in self.semantics_by_task().values())
        differing = sum(t["frames_differing"] for t in self.semantics_by_task().values())
        return 1.0 - differing / compared if compared else None

    def timing_figures(self) -> dict:
        figures = {role: self.timing[role].figures(self._summary(role)) for role in ROLES}
        base, cand = figures[BASELINE], figures[CANDIDATE]
        slowdown = None
        if base and cand and base["mean_ms"] and cand["mean_ms"] is not None and base["source"] == cand["source"]:
            slowdown = cand["mean_ms"] / base["mean_ms"]
        figures["slowdown"] = _rounded(slowdown, 3)
        return figures

    def prompt_figures(self) -> dict:
        figures = {}
        for role in ROLES:
            summary = self._summary(role)
            if summary is not None and isinstance(summary.get("prompts_refused"), list):
                figures[role] = {"refused": len(summary["prompts_refused"]),
                                 "never_applied": len(summary.get("prompts_never_applied") or [])}
            elif self.runs.get(role) is not None:  # no summary.json: what frames.jsonl says
                figures[role] = {"refused": self.refused_in_frames[role], "never_applied": None}
            else:
                figures[role] = None
        return figures

    def lost_frames_in_candidate(self) -> int:
        return sum(obj.lost_in[CANDIDATE].count for obj in self.objects.values())

    def _summary(self, role: str) -> dict | None:
        run = self.runs.get(role)
        return run.summary if run is not None else None

    def to_json(self) -> dict:
        mean, lowest = self.iou_overall()
        return {
            "name": self.name,
            "status": self.status,
            "regression": bool(self.reasons),
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "outputs": {role: str(run.out_dir) if run is not None else None for role, run in self.runs.items()},
            "frames": {**self.frames, "only_in_baseline": self.unmatched[BASELINE].to_json(),
                       "only_in_candidate": self.unmatched[CANDIDATE].to_json()},
            "image_size": list(self.image_size) if self.image_size else None,
            "iou": {"mean": _rounded(mean), "min": _rounded(lowest)},
            "lost_frames_in_candidate": self.lost_frames_in_candidate(),
            "objects": [obj.to_json() for obj in self.objects.values()],
            "semantics": self.semantics_by_task(),
            "timing": self.timing_figures(),
            "prompts": self.prompt_figures(),
            "worst_frames": [{"frame": w.frame, "stamp_ns": w.stamp_ns, "object_id": w.object_id,
                              "iou": _rounded(w.iou)} for w in self.worst.items()],
        }


@dataclass
class Comparison:
    """The whole comparison: every bag, the settings, and the verdict."""

    baseline: Path
    candidate: Path
    layout: str
    settings: CompareSettings
    bags: list[BagComparison]

    @property
    def reasons(self) -> list[str]:
        return [reason for bag in self.bags for reason in bag.reasons]

    @property
    def warnings(self) -> list[str]:
        return [warning for bag in self.bags for warning in bag.warnings]

    @property
    def regression(self) -> bool:
        return bool(self.reasons)

    @property
    def exit_code(self) -> int:
        return 1 if self.regression else 0

    def to_json(self) -> dict:
        return {"baseline": str(self.baseline), "candidate": str(self.candidate), "layout": self.layout,
                "settings": self.settings.to_json(), "regression": self.regression, "reasons": self.reasons,
                "warnings": self.warnings, "bags": [bag.to_json() for bag in self.bags]}


# ------------------------------------------------------------------------------------------ comparing
def compare_outputs(baseline: str | Path, candidate: str | Path,
                    settings: CompareSettings = CompareSettings()) -> Comparison:
    """Compare two replay outputs (one bag each, or two fleet outputs matched by bag name).
    Raises CompareInputError for inputs that cannot be compared."""
    settings.validate()
    base, cand = find_replay_output(baseline, BASELINE), find_replay_output(candidate, CANDIDATE)
    if base.layout != cand.layout:
        raise CompareInputError(f"the baseline {base.path} holds the replay of {base.layout} and the candidate "
                                f"{cand.path} of {cand.layout} (OUT/<bag>/): compare outputs of the same kind")
    if base.layout == SINGLE:
        (base_name, base_run), (cand_name, cand_run) = next(iter(base.runs.items())), next(iter(cand.runs.items()))
        if base_name != cand_name:
            raise CompareInputError(f"the baseline {base.path} and the candidate {cand.path} are replays of "
                                    f"different bags: {base_name} and {cand_name}")
        bags = [compare_bag(base_name, base_run, cand_run, settings)]
    else:
        bags = []
        for name, run in base.runs.items():
            if name in cand.runs:
                bags.append(compare_bag(name, run, cand.runs[name], settings))
            else:
                bag = BagComparison(name, {BASELINE: run, CANDIDATE: None}, status="missing in the candidate")
                bag.reasons.append(f"bag {name}: missing in the candidate {cand.path} (no {name}/frames.jsonl)")
                bags.append(bag)
        bags += [BagComparison(name, {BASELINE: None, CANDIDATE: run}, status="only in the candidate")
                 for name, run in cand.runs.items() if name not in base.runs]
    return Comparison(base.path, cand.path, base.layout, settings, bags)


def compare_bag(name: str, baseline: ReplayRun, candidate: ReplayRun, settings: CompareSettings) -> BagComparison:
    """Stream both runs' frames.jsonl of one bag and gather every figure, then the verdict."""
    bag = BagComparison(name, {BASELINE: baseline, CANDIDATE: candidate}, worst=WorstFrames(settings.worst_frames))
    readers = {BASELINE: FrameReader(baseline.frames_path, BASELINE),
               CANDIDATE: FrameReader(candidate.frames_path, CANDIDATE)}
    streams = {role: iter(reader) for role, reader in readers.items()}
    firsts = {role: next(stream, None) for role, stream in streams.items()}
    _check_same_bag(name, readers, firsts)
    sizes = _ImageSizes(readers)
    for base_line, cand_line in paired_by_stamp(_chain(firsts[BASELINE], streams[BASELINE]),
                                                _chain(firsts[CANDIDATE], streams[CANDIDATE])):
        for role, line in ((BASELINE, base_line), (CANDIDATE, cand_line)):
            if line is not None:
                bag.frames[role] += 1
                bag.timing[role].add(line)
                outcomes = line.get("prompt_outcomes")
                if outcomes:
                    bag.refused_in_frames[role] += sum(1 for o in outcomes if not o.get("accepted", True))
        if base_line is None or cand_line is None:
            role, line = (CANDIDATE, cand_line) if base_line is None else (BASELINE, base_line)
            bag.unmatched[role].add(line["frame"])
            continue
        bag.frames["matched"] += 1
        sizes.check(base_line, cand_line)
        _compare_frame(bag, base_line, cand_line, settings, readers)
    bag.image_size = sizes.size
    bag.warnings += [reader.warning for reader in readers.values() if reader.warning]
    for role in ROLES:
        if bag.unmatched[role].count:
            other = CANDIDATE if role == BASELINE else BASELINE
            unmatched = bag.unmatched[role]
            bag.warnings.append(f"warning: bag {name}: {counted(unmatched.count, 'frame')} of the {role} without a "
                                f"frame of the same stamp in the {other} ({unmatched.phrase()}): not compared")
    bag.reasons += _verdict(bag, settings)
    return bag


def _chain(first: dict | None, rest):
    if first is not None:
        yield first
        yield from rest


def _check_same_bag(name: str, readers: dict, firsts: dict) -> None:
    stamps = {role: line["stamp_ns"] if line is not None else None for role, line in firsts.items()}
    if None not in stamps.values() and stamps[BASELINE] != stamps[CANDIDATE]:
        raise CompareInputError(
            f"{readers[BASELINE].path} and {readers[CANDIDATE].path} are replays of different bags: {name} first "
            f"stamped {stamps[BASELINE]} ns and {name} first stamped {stamps[CANDIDATE]} ns")


class _ImageSizes:
    """Both runs' mask size (the image size): compared as they are, never resized, so they must agree."""

    def __init__(self, readers: dict) -> None:
        self.readers = readers
        self.first: dict[str, list | None] = {BASELINE: None, CANDIDATE: None}

    @property
    def size(self) -> tuple[int, int] | None:
        known = self.first[BASELINE] or self.first[CANDIDATE]
        return (int(known[1]), int(known[0])) if known else None

    def check(self, base_line: dict, cand_line: dict) -> None:
        base, cand = _mask_size(base_line), _mask_size(cand_line)
        if self.first[BASELINE] is None:
            self.first[BASELINE] = base
        if self.first[CANDIDATE] is None:
            self.first[CANDIDATE] = cand
        base, cand = base or self.first[BASELINE], cand or self.first[CANDIDATE]
        if base is not None and cand is not None and list(base) != list(cand):
            (bh, bw), (ch, cw) = base, cand
            raise CompareInputError(
                f"the baseline's masks are {bw}x{bh} pixels ({self.readers[BASELINE].path}) and the candidate's "
                f"{cw}x{ch} ({self.readers[CANDIDATE].path}) at frame {base_line['frame']}: masks are compared as "
                f"they are, never resized, so replay both at the same image size")


def _mask_size(line: dict) -> list | None:
    """[height, width] of the frame's first mask (every mask of a frame has the image's size)."""
    for obj in line["objects"]:
        rle = obj.get("mask_rle")
        if isinstance(rle, dict):
            return rle.get("size")
    return None


def _compare_frame(bag: BagComparison, base_line: dict, cand_line: dict, settings: CompareSettings,
                   readers: dict) -> None:
    frame = base_line["frame"]
    by_role = {BASELINE: {o["object_id"]: o for o in base_line["objects"]},
               CANDIDATE: {o["object_id"]: o for o in cand_line["objects"]}}
    lowest: tuple[float, str] | None = None
    for object_id in list(by_role[BASELINE]) + [i for i in by_role[CANDIDATE] if i not in by_role[BASELINE]]:
        base, cand = by_role[BASELINE].get(object_id), by_role[CANDIDATE].get(object_id)
        obj = bag.objects.get(object_id)
        if obj is None:
            obj = bag.objects[object_id] = ObjectComparison(object_id)
        obj.frames_in[BASELINE] += base is not None
        obj.frames_in[CANDIDATE] += cand is not None
        iou = _mask_iou(base, cand, frame, readers)
        obj.add_iou(frame, iou, settings.min_iou)
        if lowest is None or iou < lowest[0]:
            lowest = (iou, object_id)
        base_tracked, cand_tracked = _tracked(base), _tracked(cand)
        if base_tracked and not cand_tracked:
            obj.lost_in[CANDIDATE].add(frame)
        elif cand_tracked and not base_tracked:
            obj.lost_in[BASELINE].add(frame)
        if base is not None and cand is not None:
            _compare_semantics(obj, frame, base.get("semantics") or {}, cand.get("semantics") or {})
            difference = _position_difference_mm(base.get("geometry"), cand.get("geometry"))
            if difference is not None:
                obj.position_mm.add(difference)
    if lowest is not None and lowest[0] < 1.0 and bag.worst.would_keep(lowest[0]):
        bag.worst.add(lowest[0], frame, WorstFrame(frame, base_line["stamp_ns"], lowest[1], lowest[0],
                                                   {BASELINE: base_line["objects"], CANDIDATE: cand_line["objects"]}))


def _tracked(obj: dict | None) -> bool:
    score = obj.get("score") if obj is not None else None
    return isinstance(score, (int, float)) and score > TRACKED_SCORE


def _mask_iou(base: dict | None, cand: dict | None, frame: int, readers: dict) -> float:
    """IoU of the object's masks in one frame; a run without the object has an empty mask there."""
    base_rle = base.get("mask_rle") if base is not None else None
    cand_rle = cand.get("mask_rle") if cand is not None else None
    if base_rle == cand_rle:  # the usual case when nothing changed: no decoding at all
        return 1.0
    masks = {}
    for role, rle in ((BASELINE, base_rle), (CANDIDATE, cand_rle)):
        if rle is None:
            continue
        try:
            masks[role] = rle_to_mask(rle)
        except (ValueError, KeyError, TypeError) as err:
            raise CompareInputError(f"the {role}'s {readers[role].path} is damaged at frame {frame} (a mask_rle "
                                    f"that cannot be decoded: {err}): replay the bag again") from None
    if len(masks) == 1:
        return 0.0 if next(iter(masks.values())).any() else 1.0
    union = int((masks[BASELINE] | masks[CANDIDATE]).sum())
    return 1.0 if union == 0 else int((masks[BASELINE] & masks[CANDIDATE]).sum()) / union


def _compare_semantics(obj: ObjectComparison, frame: int, base: dict, cand: dict) -> None:
    for task in sorted(set(base) | set(cand)):
        comparison = obj.semantics.get(task)
        if comparison is None:
            comparison = obj.semantics[task] = TaskComparison()
        comparison.add(frame, str(base.get(task, "")), str(cand.get(task, "")))


def _position_difference_mm(base: dict | None, cand: dict | None) -> float | None:
    try:
        a, b = base["position"], cand["position"]
        distance = math.dist([float(v) for v in a], [float(v) for v in b])
    except (TypeError, KeyError, ValueError):
        return None  # one run has no geometry in this frame
    return 1000.0 * distance if math.isfinite(distance) else None


def _object_reasons(bag_name: str, obj: ObjectComparison, settings: CompareSettings) -> list[str]:
    where = f"bag {bag_name}, object {obj.object_id}"
    if obj.presence == "baseline only":
        return [f"{where}: missing in the candidate (the baseline has it in {obj.frames_in[BASELINE]} frames)"]
    if obj.presence == "candidate only":
        return []  # new objects are listed, not a regression
    reasons = []
    if obj.below_min_iou.count:
        reasons.append(f"{where}: {counted(obj.below_min_iou.count, 'frame')} below IoU {settings.min_iou:g}: "
                       f"{obj.below_min_iou.phrase()} (lowest {obj.iou.min:.3f} at frame {obj.lowest_iou_frame})")
    lost = obj.lost_in[CANDIDATE]
    if lost.count > settings.max_lost_frames:
        reasons.append(f"{where}: lost in {counted(lost.count, 'frame')} the baseline tracks: {lost.phrase()} "
                       f"(--max-lost-frames {settings.max_lost_frames})")
    if settings.semantics == "exact":
        for task, comparison in sorted(obj.semantics.items()):
            if comparison.differing.count:
                first = comparison.first_difference
                reasons.append(f"{where}: {task} text differs in {counted(comparison.differing.count, 'frame')}: "
                               f"{comparison.differing.phrase()} (first at frame {first['frame']}: "
                               f"{quoted(first[BASELINE])} vs {quoted(first[CANDIDATE])})")
    return reasons


def _verdict(bag: BagComparison, settings: CompareSettings) -> list[str]:
    """The reasons this bag is a regression (empty: it is not); each object keeps its own as well."""
    reasons = []
    for obj in bag.objects.values():
        obj.reasons = _object_reasons(bag.name, obj, settings)
        reasons += obj.reasons
    if settings.max_slowdown is not None:
        timing = bag.timing_figures()
        if timing["slowdown"] is None:
            missing = [str(bag.runs[role].out_dir) for role in ROLES if timing[role] is None] or [
                f"{bag.runs[BASELINE].out_dir} vs {bag.runs[CANDIDATE].out_dir} (timed differently)"]
            raise CompareInputError(f"--max-slowdown needs the processing time of both runs of bag {bag.name}, "
                                    f"and {', '.join(missing)} has none (frames.jsonl {TIMING_KEY} or "
                                    f"summary.json): replay it again")
        if timing["slowdown"] > settings.max_slowdown:
            reasons.append(f"bag {bag.name}: processing is {timing['slowdown']:.2f}x the baseline's time per frame "
                           f"({timing[BASELINE]['mean_ms']:.1f} -> {timing[CANDIDATE]['mean_ms']:.1f} ms), more "
                           f"than --max-slowdown {settings.max_slowdown:g}")
    return reasons


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def quoted(text: str, limit: int = 60) -> str:
    """The text in quotes, printable and cut to `limit` characters."""
    return f'"{printable(text, limit)}"'
