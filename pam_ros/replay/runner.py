"""The replay loop: every image of a bag, in order, through the perception pipeline.

Deterministic by construction: one thread, bag order, prompts handed to the engine's queue at their
bag position (by image index for the file's `frame` entries; never by wall-clock time), and a
pipeline in semantics_mode="sync" (the caller builds it). No frame is
dropped: each image is processed or counted as skipped with its reason, and frames.jsonl gets a
line for every one.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from pam_ros.engine.geometry import DepthImage
from pam_ros.engine.types import PromptOutcome, TrackingState
from pam_ros.errors import BagReadError, ConfigError, ImageError
from pam_ros.messages.images import ImageDecodeError
from pam_ros.replay.bag import BagInput, BagRecord
from pam_ros.replay.outputs import ReplayOutputs
from pam_ros.replay.prompts import FramePromptSchedule, load_prompt_file, prompts_for_camera
from pam_ros.viz.overlay import printable

if TYPE_CHECKING:
    from pam_ros.engine.pipeline import PerceptionPipeline


@dataclass
class ReplayReport:
    """What a replay did. frames_read == frames_processed + sum(skipped.values()), always."""

    bag: str
    out_dir: str
    image_topic: str = ""
    image_type: str = ""
    prompt_topics: list[str] = field(default_factory=list)
    frames_read: int = 0
    frames_processed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason class -> count
    skipped_frames: list[dict] = field(default_factory=list)  # {"frame", "reason"}
    prompts_submitted: int = 0
    prompts_accepted: int = 0
    prompts_refused: list[dict] = field(default_factory=list)  # {"frame", "object_id", "error"}
    prompts_never_applied: list[dict] = field(default_factory=list)  # {"source", "target"}
    prompt_messages_unusable: list[dict] = field(default_factory=list)  # {"source", "error"}
    objects: dict[str, dict] = field(default_factory=dict)  # id -> {"frames", "lost_frames", "category"}
    seconds: float = 0.0
    complete: bool = False
    error: str = ""
    warning: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    topic_counts: dict[str, int] = field(default_factory=dict)
    model: str = ""
    # aligned depth (--depth-topic): frames given geometry, frames without a depth image of their stamp
    depth_topic: str = ""
    camera_info_topic: str = ""
    frames_with_depth: int = 0
    frames_without_depth: int = 0
    depth_problems: dict[str, int] = field(default_factory=dict)  # message -> count (refused / unusable depth)

    @property
    def frames_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def frames_per_second(self) -> float:
        return self.frames_processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["frames_skipped"] = self.frames_skipped
        data["frames_per_second"] = round(self.frames_per_second, 3)
        return data


def run_replay(bag_path: str | Path, out_dir: str | Path, pipeline: "PerceptionPipeline", *,
               image_topic: str | None = None, prompt_file: str | Path | None = None,
               overwrite: bool = False, overlay_pngs: bool = False, mask_encoding: str = "roi",
               progress: bool = True, model_name: str = "",
               on_frame: Callable[[int], None] | None = None, depth_topic: str | None = None,
               camera_info_topic: str | None = None, camera: str = "", cameras: tuple[str, ...] = (),
               prompt_topics: Sequence[str] | None = None) -> ReplayReport:
    """Replay one bag into out_dir and return the report (also written to OUT/summary.*).

    Errors found before anything is written (bag unreadable, topic missing, bad prompts file,
    outputs already there) raise BagOpenError / TopicNotFoundError / PromptFileError /
    OutputExistsError. Damage found part-way raises BagReadError after every output has been
    closed; its `.report` holds the partial report (complete=False).

    on_frame(frames_read) is called after each image (the progress of a fleet replay); raising
    KeyboardInterrupt from it stops the replay as Ctrl-C does, outputs closed and kept.

    depth_topic: aligned depth images (16UC1 / 32FC1) whose geometry goes into /objects and
    frames.jsonl (the pipeline must be built with PipelineConfig.depth; ConfigError otherwise);
    camera_info_topic defaults to the bag's only CameraInfo topic. Each image takes the depth image and
    CameraInfo of its stamp (pipeline.config.depth_slop_ms), whichever is stored first (engine/depth.py).

    camera / cameras: the camera this replay is for, among every camera replayed from the bag (several
    cameras over one model, replay/cameras.py): prompts-file entries for another camera are left out, and
    prompt_topics (None: every Prompt topic of the bag) names the recorded prompts that are this camera's.
    """
    file_prompts = prompts_for_camera(load_prompt_file(prompt_file) if prompt_file else [], camera, cameras)
    if depth_topic and pipeline.config.depth is None:
        raise ConfigError("a depth topic needs a pipeline built for geometry: PipelineConfig(depth=DepthSettings(...))")
    with BagInput(bag_path, image_topic, depth_topic=depth_topic, camera_info_topic=camera_info_topic,
                  prompt_topics=prompt_topics) as bag:
        outputs = ReplayOutputs(out_dir, overwrite=overwrite, overlay_pngs=overlay_pngs,
                                mask_encoding=mask_encoding)
        report = ReplayReport(bag=str(bag_path), out_dir=str(out_dir), image_topic=bag.image_topic,
                              image_type=bag.image_type, prompt_topics=list(bag.prompt_topics),
                              warning=bag.warning, model=model_name, depth_topic=bag.depth_topic,
                              camera_info_topic=bag.camera_info_topic)
        try:
            outputs.open(bag)
        except BaseException:
            outputs.close()
            raise
        schedule = FramePromptSchedule()
        for prompt in file_prompts:
            if prompt.frame is not None:
                schedule.add(prompt)
            else:  # a stamp: the engine's queue holds it until that frame
                _submit(pipeline, replace(prompt.request, stamp_ns=prompt.stamp_ns or 0, source=prompt.source),
                        report)
        started = time.perf_counter()
        bar = tqdm(total=bag.image_count, unit="frame", desc="replay", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True, leave=True)
        failure: BaseException | None = None
        try:
            _replay_records(bag, pipeline, schedule, outputs, report, bar, on_frame)
            report.complete = True
        except BagReadError as err:
            report.error = str(err)
            failure = err
        except KeyboardInterrupt as err:
            report.error = "interrupted (Ctrl-C): the outputs hold the frames replayed so far"
            failure = err
        except BaseException as err:
            report.error = f"replay stopped by an unexpected error: {type(err).__name__}: {err}"
            failure = err
        finally:
            bar.close()
            report.seconds = time.perf_counter() - started
            report.prompts_never_applied = [
                {"source": p.source, "target": p.describe_target()} for p in schedule.remaining()
            ] + [
                {"source": f.request.source, "target": f"stamp_ns {f.request.stamp_ns}" if f.request.stamp_ns
                 else "the next image"} for f in pipeline.pending_prompts()
            ]
            try:
                outputs.close()
            except Exception as err:  # noqa: BLE001
                report.complete = False
                report.error = "; ".join(filter(None, [report.error, str(err)]))
            report.topic_counts = outputs.topic_counts
            report.outputs = {
                "bag": str(outputs.bag_path), "frames": str(outputs.frames_path),
                "summary": str(outputs.out_dir / "summary.txt"),
            }
            if overlay_pngs:
                report.outputs["overlays"] = str(outputs.overlay_dir)
            outputs.write_summary(report.to_dict(), format_summary(report))
    if failure is not None:
        if isinstance(failure, BagReadError):
            failure.report = report
        raise failure
    return report


def _submit(pipeline, request, report: ReplayReport) -> None:
    """Hand a prompt to the engine's queue; refusals come back on the frame it is applied to (or at once)."""
    report.prompts_submitted += 1
    future = pipeline.submit_prompt(request)
    if future.done() and not future.result().accepted:
        report.prompts_refused.append({"frame": None, "object_id": future.object_id,
                                       "error": f"{request.source}: {future.result().error}"})


def _submit_prompt_record(record: BagRecord, index: int, bag: BagInput, pipeline, outputs: ReplayOutputs,
                          report: ReplayReport) -> None:
    """A prompt message of the bag: copied to the output, then to the engine's queue (or reported unusable)."""
    source = f"topic {record.topic} message {index}"
    outputs.copy_input(record)
    try:
        request = bag.decode_prompt(record)
    except ValueError as err:
        report.prompt_messages_unusable.append({"source": source, "error": str(err)})
        return
    _submit(pipeline, replace(request, source=source), report)


def _replay_records(bag: BagInput, pipeline, schedule: FramePromptSchedule, outputs: ReplayOutputs,
                    report: ReplayReport, bar, on_frame: Callable[[int], None] | None = None) -> None:
    if bag.depth_topic:
        _replay_records_with_depth(bag, pipeline, schedule, outputs, report, bar, on_frame)
        return
    prompt_index = 0
    for record in bag.records():
        if record.kind == "prompt":
            _submit_prompt_record(record, prompt_index, bag, pipeline, outputs, report)
            prompt_index += 1
            continue
        _replay_image(record, bag, pipeline, schedule, outputs, report)
        bar.update(1)
        bar.set_postfix(objects=len(report.objects), skipped=report.frames_skipped, refresh=False)
        if on_frame is not None:
            on_frame(report.frames_read)


def _replay_records_with_depth(bag: BagInput, pipeline, schedule: FramePromptSchedule, outputs: ReplayOutputs,
                               report: ReplayReport, bar, on_frame: Callable[[int], None] | None = None) -> None:
    """As _replay_records, with depth images and CameraInfos handed to the pipeline's one depth pairing
    (engine/depth.py, as the node does). Images are held there, in order, until the depth image and
    CameraInfo of their stamp have been read (either may be stored before or after the image; memory
    stays bounded), then tracked: the pipeline pairs each exactly as it does live."""
    from pam_ros.errors import DepthError

    depth_scale = pipeline.config.depth.depth_scale
    prompt_index = 0

    def problem(text: str) -> None:
        report.depth_problems[text] = report.depth_problems.get(text, 0) + 1

    def run(settled) -> None:
        for record, image in settled:
            _replay_image(record, bag, pipeline, schedule, outputs, report, image=image, with_depth=True)
            bar.update(1)
            bar.set_postfix(objects=len(report.objects), skipped=report.frames_skipped, refresh=False)
            if on_frame is not None:
                on_frame(report.frames_read)

    for record in bag.records():
        if record.kind == "prompt":
            _submit_prompt_record(record, prompt_index, bag, pipeline, outputs, report)
            prompt_index += 1
        elif record.kind == "camera_info":
            try:
                stamp_ns, intrinsics = bag.decode_camera_info(record)
            except DepthError as err:
                problem(f"{bag.camera_info_topic}: {err}")
                continue
            run(pipeline.add_camera_info(stamp_ns, intrinsics))
        elif record.kind == "depth":
            try:
                metres, stamp_ns, frame_id = bag.decode_depth(record, depth_scale)
            except DepthError as err:
                problem(f"{bag.depth_topic}: {err}")
                continue
            run(pipeline.add_depth(DepthImage(metres, None, frame_id, stamp_ns)))
        else:
            image = _read_image(record, bag, outputs, report)
            run(pipeline.hold_frame(image.stamp_ns if not isinstance(image, Exception) else 0, (record, image)))
    run(pipeline.release_held_frames())


def _read_image(record: BagRecord, bag: BagInput, outputs: ReplayOutputs, report: ReplayReport):
    """Count and copy an image record, then decode it: the DecodedImage, or its ImageDecodeError."""
    report.frames_read += 1
    outputs.copy_input(record)
    try:
        return bag.decode_image(record)
    except ImageDecodeError as err:
        return err


def _replay_image(record: BagRecord, bag: BagInput, pipeline, schedule: FramePromptSchedule,
                  outputs: ReplayOutputs, report: ReplayReport, *, image=None, with_depth: bool = False) -> None:
    """One image through the engine; `image` (decoded, or its ImageDecodeError) when the caller read it
    already; with_depth: the pipeline pairs it with the depth it was given (counted in the report)."""
    if image is None:
        image = _read_image(record, bag, outputs, report)
    if isinstance(image, ImageDecodeError):
        # The stamp is unknown when the message itself is unreadable; its prompts wait for the next image.
        _skip(record, 0, "undecodable", str(image), outputs, report)
        return
    submitted_outcomes: list[PromptOutcome] = []
    for prompt in schedule.due(record.image_index):
        report.prompts_submitted += 1
        # the image's own stamp, so the engine applies it to this very frame
        future = pipeline.submit_prompt(replace(prompt.request, stamp_ns=image.stamp_ns, source=prompt.source))
        if future.done() and not future.result().accepted:
            submitted_outcomes.append(PromptOutcome(future.object_id, False,
                                                    f"{prompt.source}: {future.result().error}"))
    started = time.perf_counter()
    try:
        result = pipeline.process(image.rgb, image.stamp_ns)
    except ImageError as err:
        _skip(record, image.stamp_ns, "rejected by the engine", str(err), outputs, report, submitted_outcomes)
        return
    except KeyboardInterrupt:  # Ctrl-C while the engine ran on it: read, so it has its line (skipped)
        _skip(record, image.stamp_ns, "interrupted", "Ctrl-C while the engine ran on this frame", outputs, report,
              submitted_outcomes)
        raise
    # the engine's work on this frame only (not bag reading or output writing): what `compare` reports
    process_ms = 1000.0 * (time.perf_counter() - started)
    outcomes = submitted_outcomes + list(result.prompt_outcomes)
    for outcome in outcomes:
        if outcome.accepted:
            report.prompts_accepted += 1
        else:
            report.prompts_refused.append({"frame": record.image_index, "object_id": outcome.object_id,
                                           "error": outcome.error})
    for obj in result.objects:
        seen = report.objects.setdefault(obj.object_id, {"frames": 0, "lost_frames": 0, "category": ""})
        seen["frames"] += 1
        seen["lost_frames"] += int(obj.tracking_state == TrackingState.LOST)
        seen["category"] = obj.semantics.category or seen["category"]
    report.frames_processed += 1
    if with_depth:
        if result.has_depth:
            report.frames_with_depth += 1
        else:
            report.frames_without_depth += 1
        if result.depth_error:
            report.depth_problems[result.depth_error] = report.depth_problems.get(result.depth_error, 0) + 1
    outputs.write_processed(record, image, result, frames_received=report.frames_read, prompt_outcomes=outcomes,
                            process_ms=process_ms)


def _skip(record: BagRecord, stamp_ns: int, reason: str, detail: str, outputs: ReplayOutputs,
          report: ReplayReport, outcomes: list[PromptOutcome] = ()) -> None:
    report.skipped[reason] = report.skipped.get(reason, 0) + 1
    report.skipped_frames.append({"frame": record.image_index, "reason": f"{reason}: {detail}"})
    for outcome in outcomes:
        report.prompts_refused.append({"frame": record.image_index, "object_id": outcome.object_id,
                                       "error": outcome.error})
    outputs.write_skipped(record, stamp_ns, f"{reason}: {detail}", outcomes)


def format_summary(report: ReplayReport, max_listed: int = 10) -> str:
    """The human-readable summary table (printed at the end and saved as summary.txt)."""
    rows: list[tuple[str, str]] = [
        ("bag", report.bag),
        ("image topic", f"{report.image_topic} [{report.image_type}]"),
    ]
    if report.model:
        rows.append(("model", report.model))
    rows += [
        ("frames read", str(report.frames_read)),
        ("frames processed", str(report.frames_processed)),
        ("frames skipped", str(report.frames_skipped) + (
            " (" + ", ".join(f"{reason}: {n}" for reason, n in sorted(report.skipped.items())) + ")"
            if report.skipped else "")),
    ]
    for item in report.skipped_frames[:max_listed]:
        rows.append(("", f"frame {item['frame']}: {item['reason']}"))
    if len(report.skipped_frames) > max_listed:
        rows.append(("", f"... {len(report.skipped_frames) - max_listed} more in summary.json"))
    rows.append(("prompts", f"{report.prompts_submitted} submitted, {report.prompts_accepted} accepted, "
                            f"{len(report.prompts_refused)} refused, {len(report.prompts_never_applied)} never applied"
                            + (f", {len(report.prompt_messages_unusable)} unusable messages"
                               if report.prompt_messages_unusable else "")))
    for item in report.prompts_refused[:max_listed]:
        rows.append(("", f"refused at frame {item['frame']} ({item['object_id'] or 'new object'}): {item['error']}"))
    for item in report.prompts_never_applied[:max_listed]:
        rows.append(("", f"never applied: {item['source']} ({item['target']} is past the end of the bag)"))
    for item in report.prompt_messages_unusable[:max_listed]:
        rows.append(("", f"unusable: {item['source']}: {item['error']}"))
    if report.depth_topic:
        rows.append(("depth", f"{report.depth_topic} + {report.camera_info_topic}: {report.frames_with_depth} "
                              f"frames with geometry, {report.frames_without_depth} without depth"))
        for text, count in list(report.depth_problems.items())[:max_listed]:
            rows.append(("", f"{count} x {text}"))
    rows.append(("objects", str(len(report.objects))))
    for object_id, seen in list(report.objects.items())[:max_listed]:
        category = f", category \"{printable(seen['category'], 40)}\"" if seen["category"] else ""
        rows.append(("", f"{object_id}: in {seen['frames']} frames, lost in {seen['lost_frames']}{category}"))
    rows.append(("time", f"{report.seconds:.1f} s ({report.frames_per_second:.2f} frames/s)"))
    for name, path in report.outputs.items():
        rows.append((f"output {name}", path))
    if report.topic_counts:
        rows.append(("bag topics", ", ".join(f"{t}: {n}" for t, n in report.topic_counts.items())))
    if report.warning:
        rows.append(("warning", report.warning))
    rows.append(("status", "complete" if report.complete else f"INCOMPLETE: {report.error}"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(["pam-ros replay summary"] + [f"  {label:<{width}}  {value}" for label, value in rows])
