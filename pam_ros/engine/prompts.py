"""THE prompt path: prompts wait here until their frame, every submission is a future, and each prompt
is named and checked here, once.

`PromptQueue.submit` is safe from any thread. It names an ADD without an id at once (obj_1, obj_2, ...),
refuses an ADD whose id is already tracked or queued (a retry never duplicates an object), checks the
prompt's points and box against the size of the frames coming in (the latest frame's; the check is
repeated only for a prompt that meets a frame of another size), and returns a `PromptFuture` that
resolves to the prompt's `PromptOutcome`: applied on which frame with which id, or refused and why
(also when it expired or the pipeline closed). The tracking thread takes the prompts due on each frame
(`take_due`) with their checked VisualPrompt and applies them; nothing else queues or checks them.
"""
from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from typing import Callable, Iterable

import numpy as np

from pam_ros.engine.types import PromptAction, PromptOutcome, PromptRequest
from pam_ros.errors import PamError, PromptError
from pam_ros.model.visual_prompt import VisualPrompt

AUTO_ID_PREFIX = "obj_"
_SUBMISSIONS = itertools.count()
SizeWH = tuple[int, int]


class ObjectIdNamer:
    """Hands out obj_N ids in increasing order, skipping ids already in use; numbers are never reused."""

    def __init__(self) -> None:
        self._numbers = itertools.count(1)

    def next_id(self, taken: Iterable[str] = ()) -> str:
        taken = set(taken)
        while True:
            candidate = f"{AUTO_ID_PREFIX}{next(self._numbers)}"
            if candidate not in taken:
                return candidate


def visual_prompt(prompt: PromptRequest, size_wh: SizeWH | None) -> VisualPrompt:
    """The checked VisualPrompt of a PromptRequest's points and box (PromptError: what is wrong), against
    a frame of this size when known: points outside it are refused, a box partly outside is clipped."""
    points = np.asarray(prompt.points, dtype=np.float64).reshape(-1, 2) if prompt.points else None
    labels = np.asarray(prompt.labels) if prompt.labels or prompt.points else None
    box = np.asarray(prompt.box, dtype=np.float64) if prompt.box is not None else None
    return VisualPrompt(points=points, labels=labels, box=box).validate(size_wh)


class PromptFuture(Future):
    """A submitted prompt: `request` is the prompt as queued (with its object id); result() is its outcome.

    `visual` is its checked VisualPrompt (ADD / REFINE), `checked_for` the frame size it was checked against.
    """

    def __init__(self, request: PromptRequest) -> None:
        super().__init__()
        self.request = request
        self.submitted_s = time.monotonic()
        self.sequence = next(_SUBMISSIONS)  # submission order, kept in every frame's outcomes
        self.visual: VisualPrompt | None = None
        self.checked_for: SizeWH | None = None
        self.problem = ""  # why it does not fit the frame it is due on (refused when applied)

    @property
    def object_id(self) -> str:
        return self.request.object_id

    def resolve(self, outcome: PromptOutcome) -> None:
        if not self.done():
            self.set_result(replace(outcome, request=self.request))

    def refuse(self, error: str) -> None:
        self.resolve(PromptOutcome(self.request.object_id, False, error))

    def check(self, size_wh: SizeWH | None) -> None:
        """Check the points and box against frames of this size (PamError when they do not fit it)."""
        if self.request.action in (PromptAction.ADD, PromptAction.REFINE):
            self.visual = visual_prompt(self.request, size_wh)
        self.checked_for = size_wh


class PromptQueue:
    """Prompts held until the first processed frame whose stamp is >= theirs (0: the next frame)."""

    def __init__(self, tracked_ids: Callable[[], Iterable[str]],
                 frame_size: Callable[[], SizeWH | None] = lambda: None) -> None:
        self._tracked_ids = tracked_ids
        self._frame_size = frame_size
        self._namer = ObjectIdNamer()
        self._lock = threading.Lock()
        self._held: list[PromptFuture] = []
        # refused at submission by the prompt check: listed with the next frame's outcomes too, so a
        # frame's record names every prompt that met it (as frames.jsonl and the node's log show)
        self._refused: list[PromptFuture] = []
        self._closed_reason = ""

    def submit(self, prompt: PromptRequest) -> PromptFuture:
        tracked = set(self._tracked_ids())
        with self._lock:
            queued = {f.request.object_id for f in self._held if f.request.action == PromptAction.ADD}
            if prompt.action == PromptAction.ADD and not prompt.object_id:
                prompt = replace(prompt, object_id=self._namer.next_id(tracked | queued))
            future = PromptFuture(prompt)
            if self._closed_reason:
                future.refuse(self._closed_reason)
                return future
            if prompt.action == PromptAction.ADD and prompt.object_id in tracked | queued:
                where = "tracked" if prompt.object_id in tracked else "queued"
                future.refuse(f"object id {prompt.object_id!r} is already {where}; use REFINE to change it "
                              "or REMOVE it first")
                return future
            try:
                if prompt.action in (PromptAction.REFINE, PromptAction.REMOVE) and not prompt.object_id:
                    raise PromptError("this action needs an object_id")
                future.check(self._frame_size())
            except PamError as exc:
                future.refuse(str(exc))
                self._refused.append(future)
                return future
            self._held.append(future)
        return future

    def take_due(self, stamp_ns: int, size_wh: SizeWH) -> list[PromptFuture]:
        """The prompts to apply on a frame with this stamp and size, in submission order (removed from
        the queue), after those refused at submission since the last frame (already resolved). A prompt checked against another size (or none) is checked again for this frame;
        one that does not fit it carries the reason in `problem` (the frame's outcomes list it refused)."""
        with self._lock:
            due = [f for f in self._held if f.request.stamp_ns <= stamp_ns]
            self._held = [f for f in self._held if f.request.stamp_ns > stamp_ns]
            refused, self._refused = self._refused, []
        due = sorted(refused + [f for f in due if not f.cancelled()], key=lambda f: f.sequence)
        for future in due:
            if future.done():
                continue  # refused at submission: its outcome is already known
            if future.checked_for != size_wh:
                try:
                    future.check(size_wh)
                except PamError as exc:
                    future.problem = str(exc)
        return due

    def expire(self, hold_s: float, now_s: float | None = None) -> list[PromptOutcome]:
        """Refuse prompts for a future stamp that waited longer than hold_s; their outcomes."""
        now_s = time.monotonic() if now_s is None else now_s
        with self._lock:
            expired = [f for f in self._held if f.request.stamp_ns and now_s - f.submitted_s > hold_s]
            self._held = [f for f in self._held if f not in expired]
        for future in expired:
            future.refuse(f"no frame with stamp >= {future.request.stamp_ns} ns arrived within {hold_s:.1f} s; "
                          "prompt dropped")
        return [f.result() for f in expired]

    def pending(self) -> list[PromptFuture]:
        with self._lock:
            return list(self._held)

    def queued_ids(self) -> set[str]:
        with self._lock:
            return {f.request.object_id for f in self._held}

    def close(self, reason: str) -> None:
        """Refuse everything still queued, and every later submission, with `reason`."""
        with self._lock:
            self._closed_reason = reason
            held, self._held = self._held, []
        for future in held:
            future.refuse(reason)

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

