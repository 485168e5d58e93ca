"""The text summary of a comparison, printed on stdout by `pam-ros compare` and `replay --baseline`:
one line per bag, then the worst objects, then the verdict, whose reasons are the last lines.
"""
from __future__ import annotations

from pam_ros.replay.compare import (
    BASELINE,
    CANDIDATE,
    BagComparison,
    CompareSettings,
    Comparison,
    ObjectComparison,
    quoted,
)
from pam_ros.replay.compare_stats import counted


def format_comparison(comparison: Comparison, max_objects: int = 8) -> str:
    """The summary printed on stdout: one line per bag, the worst objects, then the verdict; when there is
    a regression its reasons are the last lines."""
    settings = comparison.settings
    lines = [f"pam-ros compare: baseline {comparison.baseline} vs candidate {comparison.candidate} "
             f"(--min-iou {settings.min_iou:g}, --max-lost-frames {settings.max_lost_frames}, "
             f"--semantics {settings.semantics}"
             + (f", --max-slowdown {settings.max_slowdown:g}" if settings.max_slowdown is not None else "") + ")"]
    lines += [_bag_line(bag, settings) for bag in comparison.bags]
    imperfect = [(bag, obj) for bag in comparison.bags for obj in bag.objects.values() if not obj.is_perfect()]
    imperfect.sort(key=lambda pair: (pair[1].presence == "candidate only",
                                     pair[1].iou.min if pair[1].iou.count else 1.0,
                                     pair[1].iou.mean if pair[1].iou.count else 1.0))
    if imperfect:
        lines.append("worst objects:")
        lines += [f"  {_object_line(bag, obj, settings)}" for bag, obj in imperfect[:max_objects]]
        if len(imperfect) > max_objects:
            lines.append(f"  ... {len(imperfect) - max_objects} more objects changed (all in --json / --report)")
    elif any(bag.objects for bag in comparison.bags):
        lines.append("worst objects: none (the same masks, tracking and texts in every frame)")
    frames = sum(bag.frames["matched"] for bag in comparison.bags)
    objects = sum(len(bag.objects) for bag in comparison.bags)
    if comparison.regression:
        lines.append(f"REGRESSION: {counted(len(comparison.reasons), 'reason')}")
        lines += [f"regression: {reason}" for reason in comparison.reasons]
    else:
        lines.append(f"no regression ({counted(len(comparison.bags), 'bag')}, {counted(objects, 'object')}, "
                     f"{counted(frames, 'frame')} compared)")
    return "\n".join(lines)


def _bag_line(bag: BagComparison, settings: CompareSettings) -> str:
    if bag.status != "compared":
        return f"bag {bag.name}: {'REGRESSION: ' if bag.reasons else ''}{bag.status} (not compared)"
    parts = [f"{bag.frames['matched']} frames", f"{len(bag.objects)} objects"]
    mean, lowest = bag.iou_overall()
    if mean is not None:
        below = sum(obj.below_min_iou.count for obj in bag.objects.values() if obj.presence == "both")
        parts.append(f"IoU mean {mean:.3f} min {lowest:.3f}, {counted(below, 'frame')} below {settings.min_iou:g}")
    parts.append(counted(bag.lost_frames_in_candidate(), "lost frame"))
    share = bag.semantics_identical_share()
    if share is not None:
        parts.append(f"semantics {100 * share:.1f}% identical")
    timing = bag.timing_figures()
    if timing[BASELINE] and timing[CANDIDATE]:
        parts.append(f"{timing[BASELINE]['mean_ms']:.1f} -> {timing[CANDIDATE]['mean_ms']:.1f} ms/frame"
                     + (f" ({timing['slowdown']:.2f}x)" if timing["slowdown"] is not None else ""))
    prompts = bag.prompt_figures()
    if prompts[BASELINE] and prompts[CANDIDATE]:
        parts.append("prompts refused {} -> {}, never applied {} -> {}".format(
            prompts[BASELINE]["refused"], prompts[CANDIDATE]["refused"],
            _count(prompts[BASELINE]["never_applied"]), _count(prompts[CANDIDATE]["never_applied"])))
    return f"bag {bag.name}: {'REGRESSION' if bag.reasons else 'ok'}: " + ", ".join(parts)


def _object_line(bag: BagComparison, obj: ObjectComparison, settings: CompareSettings) -> str:
    name = f"{bag.name}/{obj.object_id}"
    if obj.presence != "both":
        return f"{name}: only in the {obj.presence.split()[0]} ({max(obj.frames_in.values())} frames)"
    parts = [f"IoU mean {obj.iou.mean:.3f}, 5th pct {obj.iou.quantile(0.05):.3f}, min {obj.iou.min:.3f} "
             f"at frame {obj.lowest_iou_frame}"]
    if obj.below_min_iou.count:
        parts.append(f"{counted(obj.below_min_iou.count, 'frame')} below {settings.min_iou:g} "
                     f"({obj.below_min_iou.phrase()})")
    for role in (CANDIDATE, BASELINE):
        lost = obj.lost_in[role]
        if lost.count:
            parts.append(f"lost in the {role} only: {counted(lost.count, 'frame')} ({lost.phrase()})")
    for task, comparison in sorted(obj.semantics.items()):
        if comparison.differing.count:
            first = comparison.first_difference
            parts.append(f"{task} {100 * comparison.identical_share:.0f}% identical (first differs at frame "
                         f"{first['frame']}: {quoted(first[BASELINE])} vs {quoted(first[CANDIDATE])})")
    if obj.position_mm.count:
        parts.append(f"position moved {obj.position_mm.quantile(0.5):.1f} mm median, {obj.position_mm.max:.1f} mm max")
    return f"{name}: " + "; ".join(parts)


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)
