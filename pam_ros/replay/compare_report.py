"""The report of a comparison (`pam-ros compare --report DIR`): DIR/index.html for people to look at.

Self-contained: inline CSS, no script, nothing fetched from the network; the plots (matplotlib) and
the worst frames' side-by-side overlays are PNG files in DIR beside it. Per bag: the verdict and its
reasons, the IoU of every object over the frames (the --min-iou threshold drawn), a table of objects,
the changed texts, timing and prompts, and the worst frames drawn as each run saw them (viz.overlay's
overlay on the input image from the replay's output bag) with the changed pixels highlighted.
matplotlib is imported here only, and only when a report is written.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
from PIL import Image

from pam_ros.replay.compare import BASELINE, CANDIDATE, ROLES, BagComparison, Comparison, ObjectComparison
from pam_ros.replay.outputs import BAG_DIR

INDEX = "index.html"
CHANGED_COLOUR = (255, 0, 255)  # magenta: not an object colour's saturation/value (viz.colours.object_colour)
PANEL_MIN_WIDTH = 480  # small camera images are enlarged (nearest neighbour: every changed pixel stays visible)
NO_IMAGE_GREY = 96

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1300px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; border-top: 2px solid #ccc; padding-top: .8em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { display: inline-block; padding: .15em .6em; border-radius: .3em; color: #fff; font-weight: bold; }
.bad { background: #c0392b; } .good { background: #27ae60; } .neutral { background: #7f8c8d; }
ul.reasons li { color: #a93226; } ul.warnings li { color: #9a6700; }
tr.regressed td { background: #fdecea; }
figure { margin: 1em 0; } figcaption { font-size: .9em; color: #444; }
img { max-width: 100%; border: 1px solid #ddd; image-rendering: pixelated; }
.texts td { max-width: 36em; white-space: pre-wrap; }
"""


def write_report(comparison: Comparison, out_dir: str | Path) -> Path:
    """Write out_dir/index.html and its PNG files; returns the index.html path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = comparison.settings
    verdict = _badge("REGRESSION", "bad") if comparison.regression else _badge("no regression", "good")
    parts = [
        f"<h1>pam-ros compare {verdict}</h1>",
        "<table>",
        _row("baseline", _e(comparison.baseline)), _row("candidate", _e(comparison.candidate)),
        _row("layout", _e(comparison.layout)),
        _row("settings", _e(f"--min-iou {settings.min_iou:g}, --max-lost-frames {settings.max_lost_frames}, "
                            f"--semantics {settings.semantics}"
                            + (f", --max-slowdown {settings.max_slowdown:g}" if settings.max_slowdown else ""))),
        "</table>",
        _list(comparison.reasons, "reasons"),
        _list(comparison.warnings, "warnings"),
        "<p>Bags: " + ", ".join(f'<a href="#bag-{i}">{_e(bag.name)}</a>' + (" (regression)" if bag.reasons else "")
                                for i, bag in enumerate(comparison.bags)) + "</p>",
    ]
    for index, bag in enumerate(comparison.bags):
        parts.append(_bag_section(bag, index, comparison, out_dir))
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>pam-ros compare</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(p for p in parts if p) + "\n</body></html>\n")
    index_path = out_dir / INDEX
    index_path.write_text(page, encoding="utf-8")
    return index_path


# ------------------------------------------------------------------------------------------ one bag
def _bag_section(bag: BagComparison, index: int, comparison: Comparison, out_dir: Path) -> str:
    settings = comparison.settings
    status = (_badge("REGRESSION", "bad") if bag.reasons else
              _badge("ok", "good") if bag.status == "compared" else _badge(bag.status, "neutral"))
    parts = [f'<h2 id="bag-{index}">bag {_e(bag.name)} {status}</h2>', _list(bag.reasons, "reasons"),
             _list(bag.warnings, "warnings")]
    if bag.status != "compared":
        run = bag.runs[BASELINE] or bag.runs[CANDIDATE]
        parts.append(f"<p>{_e(bag.status)}: {_e(run.out_dir)} (not compared)</p>")
        return "\n".join(p for p in parts if p)
    parts.append(_bag_table(bag))
    stem = f"bag{index}_{_slug(bag.name)}"
    plotted = [obj for obj in bag.objects.values() if obj.iou.count]
    if plotted:
        plot = f"{stem}_iou.png"
        _plot_iou(plotted, bag, settings.min_iou, out_dir / plot)
        parts.append(f'<figure><img src="{plot}" alt="mask IoU over frames, bag {_e(bag.name)}">'
                     f"<figcaption>Mask IoU with the baseline per object over the frames (dashed: --min-iou "
                     f"{settings.min_iou:g}; an object missing from one run counts 0 there)</figcaption></figure>")
    parts.append(_objects_table(bag, settings.min_iou))
    parts.append(_semantics_table(bag))
    parts.append(_worst_frames(bag, stem, out_dir))
    return "\n".join(p for p in parts if p)


def _bag_table(bag: BagComparison) -> str:
    timing, prompts = bag.timing_figures(), bag.prompt_figures()
    mean, lowest = bag.iou_overall()
    rows = [_row("frames compared", f"{bag.frames['matched']} (baseline {bag.frames[BASELINE]}, candidate "
                                    f"{bag.frames[CANDIDATE]})"),
            _row("image size", "x".join(str(v) for v in bag.image_size) if bag.image_size else "(no masks)"),
            _row("mask IoU", f"mean {_num(mean)}, min {_num(lowest)}"),
            _row("lost frames in the candidate", str(bag.lost_frames_in_candidate()))]
    share = bag.semantics_identical_share()
    rows.append(_row("semantics identical", "-" if share is None else f"{100 * share:.1f} % of object-frame texts"))
    for role in ROLES:
        figures = timing[role]
        text = "no timing" if figures is None else (
            f"{_num(figures['mean_ms'], 1)} ms/frame mean, {_num(figures['median_ms'], 1)} median, "
            f"{_num(figures['p95_ms'], 1)} p95; {_num(figures['frames_per_second'], 2)} frames/s "
            f"({_e(figures['source'])})")
        rows.append(_row(f"timing, {role}", text))
    if timing["slowdown"] is not None:
        rows.append(_row("slowdown (candidate / baseline)", f"{timing['slowdown']:.2f}x"))
    for role in ROLES:
        figures = prompts[role]
        if figures is not None:
            never = "?" if figures["never_applied"] is None else figures["never_applied"]
            rows.append(_row(f"prompts, {role}", f"{figures['refused']} refused, {never} never applied"))
    return "<table>" + "".join(rows) + "</table>"


def _objects_table(bag: BagComparison, min_iou: float) -> str:
    tasks = sorted({task for obj in bag.objects.values() for task in obj.semantics})
    head = ["object", "in", "frames (baseline / candidate)", "IoU mean", "IoU 5th pct", "IoU min (frame)",
            f"frames below {min_iou:g}", "lost in candidate only", "lost in baseline only"]
    head += [f"{task} identical" for task in tasks] + ["position diff mm (median / max)"]
    rows = []
    for obj in bag.objects.values():
        cells = [_e(obj.object_id), _e(obj.presence), f"{obj.frames_in[BASELINE]} / {obj.frames_in[CANDIDATE]}",
                 _num(obj.iou.mean), _num(obj.iou.quantile(0.05)),
                 f"{_num(obj.iou.min if obj.iou.count else None)} ({obj.lowest_iou_frame})",
                 _frames_cell(obj.below_min_iou), _frames_cell(obj.lost_in[CANDIDATE]),
                 _frames_cell(obj.lost_in[BASELINE])]
        for task in tasks:
            share = obj.semantics[task].identical_share if task in obj.semantics else None
            cells.append("-" if share is None else f"{100 * share:.0f} %")
        cells.append(f"{_num(obj.position_mm.quantile(0.5), 1)} / {_num(obj.position_mm.max, 1)}"
                     if obj.position_mm.count else "-")
        row_class = ' class="regressed"' if obj.reasons else ""
        rows.append(f"<tr{row_class}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return "<p>No objects in either run.</p>"
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


def _semantics_table(bag: BagComparison) -> str:
    rows = []
    for obj in bag.objects.values():
        for task, comparison in sorted(obj.semantics.items()):
            first = comparison.first_difference
            if first is None:
                continue
            rows.append(f"<tr><td>{_e(obj.object_id)}</td><td>{_e(task)}</td><td>{comparison.differing.count} "
                        f"({_e(comparison.differing.text())})</td><td>{first['frame']}</td>"
                        f"<td>{_e(first[BASELINE])}</td><td>{_e(first[CANDIDATE])}</td></tr>")
    if not rows:
        return "<p>Semantics: every text identical in the frames compared.</p>" if bag.objects else ""
    return ('<h3>Changed texts</h3><table class="texts"><tr><th>object</th><th>task</th><th>frames differing</th>'
            "<th>first at frame</th><th>baseline</th><th>candidate</th></tr>" + "".join(rows) + "</table>")


def _frames_cell(ranges) -> str:
    return str(ranges.count) + (f" ({_e(ranges.text())})" if ranges.count else "")


# ------------------------------------------------------------------------------------------ plots
def _plot_iou(objects: list[ObjectComparison], bag: BagComparison, min_iou: float, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    from matplotlib.ticker import MaxNLocator

    from pam_ros.viz.colours import object_colour_unit

    figure = Figure(figsize=(10, 3.4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    coarsest = 1
    for obj in objects:
        points = obj.iou_series.values()
        coarsest = max(coarsest, obj.iou_series.frames_per_point)
        frames, ious = [p[0] for p in points], [p[1] for p in points]
        colour = object_colour_unit(obj.object_id)  # the overlay's colour of the object
        axes.plot(frames, ious, color=colour, linewidth=1.6, marker="o" if len(points) <= 60 else None,
                  markersize=3.5, label=f"{obj.object_id} ({obj.presence})" if obj.presence != "both" else obj.object_id)
    axes.axhline(min_iou, color="#c0392b", linestyle="--", linewidth=1.2, label=f"--min-iou {min_iou:g}")
    axes.set_ylim(-0.03, 1.05)
    axes.set_xlabel("frame" + (f" (each point: the lowest of up to {coarsest} frames)" if coarsest > 1 else ""))
    axes.set_ylabel("mask IoU with baseline")
    axes.set_title(f"bag {bag.name}")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # frames are whole numbers
    axes.grid(alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)  # beside the plot, never over a line
    figure.savefig(path)


# ------------------------------------------------------------------------------------------ worst frames
def _worst_frames(bag: BagComparison, stem: str, out_dir: Path) -> str:
    worst = bag.worst.items()
    if not worst:
        return "<p>Worst frames: none (every mask is identical).</p>" if bag.objects else ""
    images, image_note = _input_images(bag, {w.frame for w in worst})
    parts = ["<h3>Worst frames</h3>",
             "<p>Left: baseline, right: candidate, each drawn as its replay draws its overlay. "
             "<b style=\"color:#c0c\">Magenta</b>: pixels of that run's masks that the other run's masks of the same "
             f"object do not have.{_e(image_note)}</p>"]
    for rank, item in enumerate(worst):
        name = f"{stem}_frame{item.frame}.png"
        _side_by_side(item, images.get(item.frame), bag.image_size).save(out_dir / name)
        parts.append(f'<figure><img src="{name}" alt="frame {item.frame}, baseline and candidate">'
                     f"<figcaption>#{rank + 1}: frame {item.frame} (stamp {item.stamp_ns} ns), object "
                     f"{_e(item.object_id)}: IoU {item.iou:.3f}</figcaption></figure>")
    return "\n".join(parts)


def _input_images(bag: BagComparison, frames: set[int]) -> tuple[dict[int, np.ndarray], str]:
    """The input images of these frames from a run's output bag (its copy of the input topic), by image
    index: frames.jsonl's "frame". ({}, why) when no output bag can give them."""
    from pam_ros.errors import PamError
    from pam_ros.replay.bag import BagInput

    problems = []
    for role in ROLES:
        run = bag.runs[role]
        topic = (run.summary or {}).get("image_topic")
        if not topic:
            problems.append(f"{role}: no image topic in summary.json")
            continue
        found: dict[int, np.ndarray] = {}
        try:
            with BagInput(run.out_dir / BAG_DIR, topic) as replayed:
                for record in replayed.records():
                    if record.kind == "image" and record.image_index in frames:
                        found[record.image_index] = replayed.decode_image(record).rgb
                        if len(found) == len(frames):
                            break
        except (PamError, OSError) as err:
            problems.append(f"{role}: {err}")
            continue
        return found, ""
    return {}, " The input images could not be read (" + "; ".join(problems) + "): masks drawn on grey."


def _side_by_side(item, image: np.ndarray | None, size: tuple[int, int] | None) -> Image.Image:
    from pam_ros.viz.overlay import draw_overlay

    results = {role: _frame_result(item, role) for role in ROLES}
    height, width = next((m.mask.shape for r in results.values() for m in r.objects), (size[1], size[0]))
    if image is None or image.shape[:2] != (height, width):
        image = np.full((height, width, 3), NO_IMAGE_GREY, np.uint8)
    masks = {role: {o.object_id: o.mask for o in results[role].objects} for role in ROLES}
    panels = []
    for role in ROLES:
        other = CANDIDATE if role == BASELINE else BASELINE
        overlay = draw_overlay(image, results[role])
        for object_id, mask in masks[role].items():
            theirs = masks[other].get(object_id)
            only_here = mask if theirs is None else mask & ~theirs
            overlay[only_here] = CHANGED_COLOUR
        panels.append(overlay)
    scale = max(1, -(-PANEL_MIN_WIDTH // width))
    gap = np.full((height, max(1, 8 // scale), 3), 255, np.uint8)
    joined = Image.fromarray(np.concatenate([panels[0], gap, panels[1]], axis=1))
    return joined.resize((joined.width * scale, joined.height * scale), Image.NEAREST) if scale > 1 else joined


def _frame_result(item, role: str):
    """A FrameResult of one run's frames.jsonl objects, for viz.overlay.draw_overlay."""
    from pam_ros.engine.types import FrameResult, ObjectResult, ObjectSemantics, TrackingState
    from pam_ros.model.masks import mask_centroid, rle_to_mask

    objects = []
    for data in item.objects[role]:
        mask = rle_to_mask(data["mask_rle"])
        state = TrackingState.__members__.get(str(data.get("tracking_state", "")).upper(), TrackingState.UNKNOWN)
        objects.append(ObjectResult(
            object_id=data["object_id"], score=float(data.get("score") or 0.0), object_score_logit=0.0,
            tracking_state=state, frames_lost=0, mask=mask, roi=tuple(int(v) for v in data.get("roi") or (0, 0, 0, 0)),
            mask_area=int(mask.sum()), centroid=mask_centroid(mask),
            semantics=ObjectSemantics(texts=dict(data.get("semantics") or {}))))
    height, width = objects[0].mask.shape if objects else (0, 0)
    return FrameResult(frame_index=item.frame, stamp_ns=item.stamp_ns, width=width, height=height, objects=objects,
                       tracking_seconds=0.0)


# ------------------------------------------------------------------------------------------ html bits
def _e(value) -> str:
    return html.escape(str(value))


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(label: str, value_html: str) -> str:
    return f"<tr><th>{_e(label)}</th><td>{value_html}</td></tr>"


def _badge(text: str, kind: str) -> str:
    return f'<span class="verdict {kind}">{_e(text)}</span>'


def _list(items: list[str], kind: str) -> str:
    return f'<ul class="{kind}">' + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>" if items else ""


def _slug(name: str) -> str:
    """A file-name-safe form of a bag name (the bag's index keeps two similar names apart)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "bag"
