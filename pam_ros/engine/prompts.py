"""The prompt queue: prompts wait here until their frame, and every submission is a future.

`PromptQueue.submit` is safe from any thread. It names an ADD without an id at once (obj_N), refuses
an ADD whose id is already tracked or queued (a retry never duplicates an object), and returns a
`PromptFuture` that resolves to the prompt's `PromptOutcome`: applied on which frame with which id,
or refused and why (also when it expired or the pipeline closed). The tracking thread takes the
prompts due on each frame and resolves them.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from typing import Callable, Iterable

from pam_ros.engine.ids import ObjectIdNamer
from pam_ros.engine.types import PromptAction, PromptOutcome, PromptRequest


class PromptFuture(Future):
    """A submitted prompt: `request` is the prompt as queued (with its object id); result() is its outcome."""

    def __init__(self, request: PromptRequest) -> None:
        super().__init__()
        self.request = request
        self.submitted_s = time.monotonic()

    @property
    def object_id(self) -> str:
        return self.request.object_id

    def resolve(self, outcome: PromptOutcome) -> None:
        if not self.done():
            self.set_result(replace(outcome, request=self.request))

    def refuse(self, error: str) -> None:
        self.resolve(PromptOutcome(self.request.object_id, False, error))


class PromptQueue:
    """Prompts held until the first processed frame whose stamp is >= theirs (0: the next frame)."""

    def __init__(self, tracked_ids: Callable[[], Iterable[str]]) -> None:
        self._tracked_ids = tracked_ids
        self._namer = ObjectIdNamer()
        self._lock = threading.Lock()
        self._held: list[PromptFuture] = []
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
            elif prompt.action == PromptAction.ADD and prompt.object_id in tracked | queued:
                where = "tracked" if prompt.object_id in tracked else "queued"
                future.refuse(f"object id {prompt.object_id!r} is already {where}; use REFINE to change it "
                              "or REMOVE it first")
            else:
                self._held.append(future)
        return future

    def take_due(self, stamp_ns: int) -> list[PromptFuture]:
        """The prompts to apply on a frame with this stamp, in submission order (removed from the queue)."""
        with self._lock:
            due = [f for f in self._held if f.request.stamp_ns <= stamp_ns]
            self._held = [f for f in self._held if f.request.stamp_ns > stamp_ns]
        return [f for f in due if not f.cancelled()]

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
