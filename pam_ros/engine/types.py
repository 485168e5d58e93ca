"""Small value types passed between the engine and its front ends (node, replay, CLI).

Plain Python / numpy only: front ends translate these to ROS messages or JSON, the engine fills them.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from pam_ros.engine.geometry import ObjectGeometry

# the PipelineConfig fields update_settings() changes while a pipeline runs; every other one needs a new pipeline
LIVE_SETTINGS = ("refresh_period_s", "max_new_tokens", "max_batch", "greedy", "temperature", "top_p",
                 "discover_period_s")


class PromptAction(enum.IntEnum):
    """What a prompt does (same values as pam_ros/msg/Prompt)."""

    ADD = 0
    REFINE = 1
    REMOVE = 2
    RESET_ALL = 3


class TrackingState(enum.IntEnum):
    """Per-object tracking state in one frame (same values as PerceivedObject.TRACKING_*)."""

    UNKNOWN = 0
    PROMPTED = 1  # a prompt was applied on this frame
    TRACKED = 2  # propagated from memory, present
    LOST = 3  # propagated from memory, absent (object score <= 0) or empty mask


class SemanticsState(enum.IntEnum):
    """Per-object semantics state (same values as PerceivedObject.SEMANTICS_*)."""

    NONE = 0
    PENDING = 1
    READY = 2
    STALE = 3
    FAILED = 4


@dataclass(frozen=True)
class PromptRequest:
    """A visual prompt in pixels of the frame it refers to.

    stamp_ns = 0 means "the next frame processed"; otherwise the prompt is applied to the first
    processed frame whose stamp is >= stamp_ns (the exact frame when it is processed).
    """

    action: PromptAction = PromptAction.ADD
    object_id: str = ""
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    tasks: tuple[str, ...] = ()
    stamp_ns: int = 0
    source: str = ""  # where it came from, for log lines and reports ("topic", "file entry 3", ...)


@dataclass(frozen=True)
class PromptOutcome:
    """What became of one PromptRequest: the object id it created/affected, or why it was refused."""

    object_id: str
    accepted: bool
    error: str = ""
    frame_index: int = -1  # the processed frame it was applied on (-1: not applied)
    request: PromptRequest | None = None  # the prompt as queued (an id-less ADD carries its given id)
    stamp_ns: int = 0  # stamp of the frame it was applied on (0: not applied)


@dataclass
class ObjectSemantics:
    """What PAM said about an object, and for which frame."""

    state: SemanticsState = SemanticsState.NONE
    stamp_ns: int = 0  # stamp of the frame described
    frame_index: int = -1
    texts: dict[str, str] = field(default_factory=dict)  # task name -> raw generated text
    category: str = ""
    definition: str = ""
    explanation: str = ""
    caption: str = ""
    error: str = ""


@dataclass
class ObjectResult:
    """One tracked object in one processed frame."""

    object_id: str
    score: float  # sigmoid(object_score_logit)
    object_score_logit: float
    tracking_state: TrackingState
    frames_lost: int
    mask: np.ndarray  # bool [H, W] at the source image resolution
    roi: tuple[int, int, int, int]  # x, y, w, h of the mask's bounding box (zeros if empty)
    mask_area: int
    centroid: tuple[float, float]  # x, y in pixels (0, 0 if empty)
    semantics: ObjectSemantics = field(default_factory=ObjectSemantics)
    geometry: ObjectGeometry | None = None  # 3-D geometry from aligned depth (None: no depth or too few points)


@dataclass
class FrameResult:
    """Everything the engine produced for one processed frame."""

    frame_index: int
    stamp_ns: int
    width: int
    height: int
    objects: list[ObjectResult]
    tracking_seconds: float
    prompt_outcomes: list[PromptOutcome] = field(default_factory=list)
    has_depth: bool = False  # a depth image was matched and used for this frame's geometry
    depth_error: str = ""  # why the matched depth image was refused (e.g. its size), "" if none


@dataclass
class GenerationResult:
    """One finished (or stopped) text generation."""

    task: str
    text: str
    token_ids: list[int]
    seconds: float
    stopped: bool = False  # True when cancelled before finishing
    stamp_ns: int = 0
    frame_index: int = -1

    @property
    def tokens_per_second(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds > 0 else 0.0
