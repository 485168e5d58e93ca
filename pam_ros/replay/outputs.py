"""What a replay writes into OUT/: an MCAP bag, frames.jsonl, optional overlay PNGs, the summary.

OUT/bag/          rosbag2 MCAP: the input images (and prompt messages) as they were, `/objects`
                  (pam_ros/msg/PerceivedObjectArray) and `/overlay` (sensor_msgs/Image rgb8)
OUT/frames.jsonl  one JSON line per input image, in bag order (also for skipped images); a processed
                  image's line ends with "process_ms", the wall-clock time the engine took for it
OUT/overlays/     frame_00000.png ... (only when asked for)
OUT/summary.json, OUT/summary.txt
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from PIL import Image

from pam_ros.engine.types import FrameResult, PromptOutcome, TrackingState
from pam_ros.errors import OutputExistsError, ReplayError
from pam_ros.messages.fields import header_fields, perceived_object_array_fields
from pam_ros.model.masks import mask_to_rle
from pam_ros.replay.bag import BagInput, BagRecord, DecodedImage
from pam_ros.replay.bag_writer import BagWriter
from pam_ros.replay.interfaces import IMAGE_TYPE, OBJECTS_TYPE, PROMPT_TYPE
from pam_ros.viz.overlay import draw_overlay

OBJECTS_TOPIC = "/objects"
OVERLAY_TOPIC = "/overlay"
BAG_DIR = "bag"
FRAMES_FILE = "frames.jsonl"
OVERLAY_DIR = "overlays"
SUMMARY_JSON = "summary.json"
SUMMARY_TEXT = "summary.txt"
OUTPUT_NAMES = (BAG_DIR, FRAMES_FILE, OVERLAY_DIR, SUMMARY_JSON, SUMMARY_TEXT)
# Per-frame processing time (ms) in frames.jsonl: read by `pam-ros compare`. The only key whose value
# differs between two replays of a bag with the same settings.
TIMING_KEY = "process_ms"


def check_out_dir(out_dir: Path, overwrite: bool) -> list[str]:
    """The replay outputs already in out_dir (to be replaced); OutputExistsError unless overwrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"--out {out_dir} exists and is not a directory")
    existing = [name for name in OUTPUT_NAMES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{out_dir} already holds replay outputs ({', '.join(existing)}); "
            f"pass --overwrite or choose another --out"
        )
    return existing


def frame_line(index: int, stamp_ns: int, result: FrameResult | None, *, skipped: str = "",
               prompt_outcomes: list[PromptOutcome] = (), process_ms: float | None = None) -> str:
    """The frames.jsonl line of one input image (no trailing newline); process_ms: the engine's time for
    it (processed images only), written last."""
    line: dict = {"frame": int(index), "stamp_ns": int(stamp_ns), "objects": []}
    if result is not None:
        line["objects"] = [
            {
                "object_id": obj.object_id,
                "score": _json_float(obj.score),
                "roi": [int(v) for v in obj.roi],
                "mask_rle": mask_to_rle(obj.mask),
                "semantics": dict(obj.semantics.texts),
                "tracking_state": TrackingState(obj.tracking_state).name.lower(),
                "geometry": obj.geometry.to_json() if obj.geometry is not None else None,
            }
            for obj in result.objects
        ]
    if skipped:
        line["skipped"] = skipped
    if prompt_outcomes:
        line["prompt_outcomes"] = [
            {"object_id": o.object_id, "accepted": bool(o.accepted), "error": o.error} for o in prompt_outcomes
        ]
    if process_ms is not None:
        line[TIMING_KEY] = round(float(process_ms), 3)
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def without_timing(frames_jsonl: bytes) -> bytes:
    """frames.jsonl content with the per-frame processing time taken out of every line: what two replays
    of a bag with the same settings write byte for byte alike (a line that is not JSON stays as it is)."""
    kept = []
    for raw in frames_jsonl.splitlines(keepends=True):
        try:
            line = json.loads(raw)
        except ValueError:
            kept.append(raw)
            continue
        if not isinstance(line, dict) or TIMING_KEY not in line:
            kept.append(raw)
            continue
        del line[TIMING_KEY]
        ending = raw[len(raw.rstrip(b"\r\n")):]
        kept.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + ending)
    return b"".join(kept)


def _json_float(value: float) -> float | None:
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


class ReplayOutputs:
    """Opened at the start of a replay, closed at the end, also when the replay fails part-way:
    everything written so far stays readable (the bag gets its index and metadata.yaml)."""

    def __init__(self, out_dir: str | Path, *, overwrite: bool = False, overlay_pngs: bool = False,
                 mask_encoding: str = "roi") -> None:
        self.out_dir = Path(out_dir)
        self.overlay_pngs = overlay_pngs
        self.mask_encoding = mask_encoding
        existing = check_out_dir(self.out_dir, overwrite)
        for name in existing:
            path = self.out_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.bag_path = self.out_dir / BAG_DIR
        self.frames_path = self.out_dir / FRAMES_FILE
        self.overlay_dir = self.out_dir / OVERLAY_DIR
        self.lines_written = 0
        self._writer: BagWriter | None = None
        self._frames = None

    def open(self, bag: BagInput) -> None:
        if bag.image_topic in (OBJECTS_TOPIC, OVERLAY_TOPIC):
            raise ReplayError(f"the image topic {bag.image_topic} has the name of an output topic; "
                              f"rename it when recording (outputs: {OBJECTS_TOPIC}, {OVERLAY_TOPIC})")
        writer = BagWriter(self.bag_path, "mcap")
        writer.open()
        self._writer = writer
        for topic, msgtype in [(bag.image_topic, bag.image_type)] + [(t, PROMPT_TYPE) for t in bag.prompt_topics]:
            definition = bag.definition_of(topic)
            if definition is not None and definition.format == "msg" and definition.digest:
                # keep the recorder's definition: the raw bytes are copied unchanged
                writer.add_topic(topic, msgtype, msgdef=definition.text, rihs01=definition.digest)
            else:
                writer.add_topic(topic, msgtype)
        writer.add_topic(OBJECTS_TOPIC, OBJECTS_TYPE)
        writer.add_topic(OVERLAY_TOPIC, IMAGE_TYPE)
        # line-buffered: every frame's line is on disk at once (tail -f, a crash or Ctrl-C loses none)
        self._frames = self.frames_path.open("w", encoding="utf-8", newline="\n", buffering=1)
        if self.overlay_pngs:
            self.overlay_dir.mkdir(exist_ok=True)

    def copy_input(self, record: BagRecord) -> None:
        """The input message, byte for byte, at its original log time."""
        self._writer.write_raw(record.topic, record.log_time_ns, record.raw)

    def write_processed(self, record: BagRecord, image: DecodedImage, result: FrameResult, *,
                        frames_received: int, prompt_outcomes: list[PromptOutcome],
                        process_ms: float | None = None) -> None:
        fields = perceived_object_array_fields(result, image.frame_id, frames_received=frames_received,
                                               frames_dropped=0, mask_encoding=self.mask_encoding)
        self._writer.write_fields(OBJECTS_TOPIC, record.log_time_ns, fields)
        overlay = draw_overlay(image.rgb, result)
        height, width = overlay.shape[:2]
        self._writer.write_fields(OVERLAY_TOPIC, record.log_time_ns, {
            "header": header_fields(image.stamp_ns, image.frame_id), "height": height, "width": width,
            "encoding": "rgb8", "is_bigendian": 0, "step": width * 3, "data": overlay.tobytes(),
        })
        if self.overlay_pngs:
            Image.fromarray(overlay).save(self.overlay_png(record.image_index), optimize=False)
        self._write_line(frame_line(record.image_index, image.stamp_ns, result, prompt_outcomes=prompt_outcomes,
                                    process_ms=process_ms))

    def write_skipped(self, record: BagRecord, stamp_ns: int, reason: str,
                      prompt_outcomes: list[PromptOutcome] = ()) -> None:
        self._write_line(frame_line(record.image_index, stamp_ns, None, skipped=reason,
                                    prompt_outcomes=list(prompt_outcomes)))

    def overlay_png(self, image_index: int) -> Path:
        return self.overlay_dir / f"frame_{image_index:05d}.png"

    def _write_line(self, line: str) -> None:
        self._frames.write(line + "\n")
        self.lines_written += 1

    @property
    def topic_counts(self) -> dict[str, int]:
        return dict(self._writer.counts) if self._writer else {}

    def close(self) -> None:
        """Finish the bag and the jsonl file (safe after errors and when called twice)."""
        errors = []
        if self._frames is not None:
            frames, self._frames = self._frames, None
            frames.close()
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as err:  # noqa: BLE001 - report, never lose the jsonl because of it
                errors.append(f"closing {self.bag_path} failed: {err}")
        if errors:
            raise ReplayError("; ".join(errors))

    def write_summary(self, summary: dict, text: str) -> None:
        (self.out_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
        (self.out_dir / SUMMARY_TEXT).write_text(text + "\n", encoding="utf-8")

