"""Prompts for a replay: the YAML prompts file, and when each prompt is handed to the engine.

File format (README "Prompts file"):

    prompts:
      - frame: 0                 # index of the image message in the bag, from 0 ...
        object_id: ball          # ... or stamp_ns: 1700000000123456789 (the image header stamp)
        box: [40, 60, 120, 140]  # x1, y1, x2, y2 pixels
        tasks: [explain, caption]
      - frame: 12
        object_id: ball
        action: refine           # add (default) | refine | remove | reset_all
        points: [[80, 100], [30, 20]]
        labels: [1, 0]           # 1 = on the object, 0 = background; default: all 1
      - frame: 3
        camera: wrist            # several cameras (replay --camera): this entry is for one of them;
        box: [10, 10, 50, 50]    # an entry without camera applies to every camera

Scheduling is by bag position only (never by wall-clock time), so a replay is deterministic: a
`frame:` entry is submitted just before that image; a `stamp_ns:` entry (and every prompt message in
the bag) goes to the engine's prompt queue, which applies it to the first image with that stamp or later.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from pam_ros.engine.types import PromptAction, PromptRequest
from pam_ros.errors import PromptFileError

_KEYS = {"frame", "stamp_ns", "object_id", "box", "points", "labels", "tasks", "action", "camera"}


@dataclass(frozen=True)
class ScheduledPrompt:
    """A prompt and where in the bag it applies: image index `frame`, or the first image whose
    header stamp is >= `stamp_ns` (0: the next image)."""

    request: PromptRequest
    source: str  # "file entry 3" / "topic /prompts message 0" (for reports)
    frame: int | None = None
    stamp_ns: int | None = None
    camera: str = ""  # the camera it is for (several cameras); "" = every camera

    def describe_target(self) -> str:
        return f"frame {self.frame}" if self.frame is not None else f"stamp_ns {self.stamp_ns}"


def load_prompt_file(path: str | Path) -> list[ScheduledPrompt]:
    """Parse and check a prompts YAML file. Raises PromptFileError naming the entry and field."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise PromptFileError(f"cannot read prompts file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise PromptFileError(f"prompts file {path} is not valid YAML: {err}") from None
    if not isinstance(document, dict) or not isinstance(document.get("prompts"), list):
        raise PromptFileError(f"prompts file {path} must be a mapping with a 'prompts:' list")
    return [_parse_entry(entry, index, path) for index, entry in enumerate(document["prompts"])]


def _parse_entry(entry: object, index: int, path: Path) -> ScheduledPrompt:
    where = f"{path}: prompts[{index}]"
    if not isinstance(entry, dict):
        raise PromptFileError(f"{where} must be a mapping, got {type(entry).__name__}")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise PromptFileError(f"{where} has unknown field(s) {unknown}; known: {sorted(_KEYS)}")
    has_frame, has_stamp = "frame" in entry, "stamp_ns" in entry
    if has_frame == has_stamp:
        raise PromptFileError(f"{where} needs exactly one of 'frame' (image index) or 'stamp_ns'")
    frame = _non_negative_int(entry, "frame", where) if has_frame else None
    stamp_ns = _non_negative_int(entry, "stamp_ns", where) if has_stamp else None

    action_name = str(entry.get("action", "add")).strip().upper()
    if action_name not in PromptAction.__members__:
        names = ", ".join(a.name.lower() for a in PromptAction)
        raise PromptFileError(f"{where}: action {entry['action']!r} is not one of {names}")
    action = PromptAction[action_name]

    object_id = entry.get("object_id", "")
    if object_id is None or not isinstance(object_id, (str, int)):
        raise PromptFileError(f"{where}: object_id must be a string")
    object_id = str(object_id)
    if action in (PromptAction.REFINE, PromptAction.REMOVE) and not object_id:
        raise PromptFileError(f"{where}: action {action.name.lower()} needs an object_id")

    box = None
    if entry.get("box") is not None:
        box = tuple(_numbers(entry["box"], where, "box"))
        if len(box) != 4:
            raise PromptFileError(f"{where}: box must be [x1, y1, x2, y2], got {entry['box']!r}")
    points: tuple[tuple[float, float], ...] = ()
    if entry.get("points") is not None:
        if not isinstance(entry["points"], list):
            raise PromptFileError(f"{where}: points must be a list of [x, y]")
        parsed = []
        for k, point in enumerate(entry["points"]):
            xy = _numbers(point, where, f"points[{k}]")
            if len(xy) != 2:
                raise PromptFileError(f"{where}: points[{k}] must be [x, y], got {point!r}")
            parsed.append((xy[0], xy[1]))
        points = tuple(parsed)
    if entry.get("labels") is not None:
        labels = entry["labels"]
        if not isinstance(labels, list) or any(label not in (0, 1) or isinstance(label, bool) for label in labels):
            raise PromptFileError(f"{where}: labels must be a list of 1 (object) / 0 (background)")
        if len(labels) != len(points):
            raise PromptFileError(f"{where}: {len(labels)} labels for {len(points)} points")
        labels = tuple(int(label) for label in labels)
    else:
        labels = tuple(1 for _ in points)
    if action in (PromptAction.ADD, PromptAction.REFINE) and box is None and not points:
        raise PromptFileError(f"{where}: action {action.name.lower()} needs a box and/or points")

    camera = entry.get("camera", "")
    if not isinstance(camera, str):
        raise PromptFileError(f"{where}: camera must be a camera name")

    tasks = entry.get("tasks") or []
    if not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
        raise PromptFileError(f"{where}: tasks must be a list of task names")

    request = PromptRequest(action=action, object_id=object_id, points=points, labels=labels, box=box,
                            tasks=tuple(tasks), stamp_ns=0)
    return ScheduledPrompt(request=request, source=f"prompts file entry {index}", frame=frame, stamp_ns=stamp_ns,
                           camera=camera.strip())


def prompts_for_camera(prompts: list[ScheduledPrompt], camera: str, cameras: tuple[str, ...] = ()) -> list:
    """The entries for one camera: its own and those naming none. PromptFileError for an entry naming a
    camera that is not replayed (cameras: every camera of the replay; none for a single-camera replay)."""
    for prompt in prompts:
        if prompt.camera and prompt.camera not in cameras:
            listed = ", ".join(cameras) if cameras else "none: name them with --camera NAME=TOPIC"
            raise PromptFileError(f"{prompt.source} is for camera {prompt.camera!r}; cameras: {listed}")
    return [prompt for prompt in prompts if prompt.camera in ("", camera)]


def _non_negative_int(entry: dict, key: str, where: str) -> int:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PromptFileError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    return value


def _numbers(value: object, where: str, name: str) -> list[float]:
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise PromptFileError(f"{where}: {name} must be a list of numbers, got {value!r}")
    numbers = [float(v) for v in value]
    if not all(math.isfinite(v) for v in numbers):
        raise PromptFileError(f"{where}: {name} must hold finite numbers, got {value!r}")
    return numbers


class FramePromptSchedule:
    """File prompts addressed by image index (`frame:`), released in file order just before their
    image. Prompts addressed by stamp go straight to the engine's prompt queue instead."""

    def __init__(self) -> None:
        self._pending: list[ScheduledPrompt] = []

    def add(self, prompt: ScheduledPrompt) -> None:
        self._pending.append(prompt)

    def due(self, image_index: int) -> list[ScheduledPrompt]:
        """Remove and return the prompts for this image (or an earlier index that was skipped)."""
        ready = [p for p in self._pending if p.frame is not None and image_index >= p.frame]
        self._pending = [p for p in self._pending if p not in ready]
        return ready

    def remaining(self) -> list[ScheduledPrompt]:
        """Prompts whose image never came (index past the end of the bag)."""
        return list(self._pending)
