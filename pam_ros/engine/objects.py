"""Who is tracked: one place adds, changes and forgets objects across the tracker, the semantics store,
the scheduler and the latest results, so the four never disagree.

The tracking thread changes membership (prompts applied on a frame); any thread reads snapshots (ids,
latest results, kept features). The scheduler and the latest results are guarded by one lock here.
"""
from __future__ import annotations

import threading
from typing import Sequence

from pam_ros.engine.scheduler import SemanticsScheduler
from pam_ros.engine.semantics import SemanticsJob, SemanticsStore
from pam_ros.engine.types import ObjectResult
from pam_ros.errors import UnknownObjectError


class ObjectRegistry:
    """Membership of one stream's objects (tracker, semantics store, scheduler, latest results)."""

    def __init__(self, tracker, store: SemanticsStore, scheduler: SemanticsScheduler) -> None:
        self.tracker = tracker
        self._store = store
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._last: dict[str, ObjectResult] = {}
        self._ids: frozenset[str] = frozenset()  # the tracked ids after the last change (any thread)
        self._order: tuple[str, ...] = ()  # the same, in the order they were added

    # ---- membership (tracking thread) --------------------------------------------------------------
    def add(self, object_id: str, visual, tasks: Sequence[str]) -> None:
        self.tracker.add_object(object_id, visual)
        with self._lock:
            self._scheduler.object_added(object_id, tuple(tasks))
        self._snapshot()

    def refine(self, object_id: str, visual, tasks: Sequence[str]) -> None:
        """A new prompt for a tracked object (SAM 2's correction: its memory is kept); its semantics
        are scheduled again, with these tasks or the ones it had."""
        self.require(object_id)
        self.tracker.refine_object(object_id, visual)
        with self._lock:
            self._scheduler.object_added(object_id, tuple(tasks))

    def remove(self, object_id: str) -> None:
        self.require(object_id)
        self.tracker.remove_object(object_id)
        with self._lock:
            self._forget(object_id)
        self._snapshot()

    def reset(self) -> None:
        self.tracker.reset()
        with self._lock:
            for object_id in list(self._last):
                self._forget(object_id)
            self._scheduler.clear()
        self._store.clear()
        self._snapshot()

    def _forget(self, object_id: str) -> None:
        self._store.remove(object_id)
        self._last.pop(object_id, None)
        self._scheduler.forget(object_id)

    def _snapshot(self) -> None:
        self._order = tuple(self.tracker.object_ids) if self.tracker is not None else ()
        self._ids = frozenset(self._order)

    def close(self) -> None:
        """The stream is closing: nothing counts as tracked any more."""
        self._order, self._ids = (), frozenset()

    # ---- after each frame (tracking thread) ----------------------------------------------------------
    def record(self, results: Sequence[ObjectResult]) -> None:
        """The frame's results: the latest of each object, for describe-by-id and queries."""
        with self._lock:
            for result in results:
                self._last[result.object_id] = result
        self._snapshot()

    def schedule(self, track, now_s: float) -> list[SemanticsJob]:
        """The semantics jobs due after this frame (scheduler.due on its objects)."""
        observations = [(obj.object_id, obj.state, obj.features) for obj in track.objects]
        with self._lock:
            return self._scheduler.due(observations, now_s, self.tracker.features)

    def request(self, object_id: str, tasks: Sequence[str]) -> None:
        self.require(object_id)
        with self._lock:
            self._scheduler.request(object_id, tuple(tasks))

    def set_refresh_period(self, seconds: float) -> None:
        with self._lock:
            self._scheduler.refresh_period_s = seconds

    # ---- reads (any thread) --------------------------------------------------------------------------
    def ids(self) -> frozenset[str]:
        return self._ids

    def ordered_ids(self) -> tuple[str, ...]:
        return self._order

    def is_tracked(self, object_id: str) -> bool:
        return object_id in self._ids

    def require(self, object_id: str) -> None:
        if not object_id:
            raise UnknownObjectError("this action needs an object_id")
        if object_id not in self._ids:
            raise UnknownObjectError(f"unknown object id {object_id!r} (tracked: {', '.join(sorted(self._ids)) or 'none'})")

    def frames(self, object_id: str) -> list:
        """The object's kept per-frame features, oldest first (UnknownObjectError before its first frame)."""
        self.require(object_id)
        frames = self.tracker.features(object_id) if self.tracker is not None else []
        if not frames:
            raise UnknownObjectError(f"object {object_id!r} has not been seen on a frame yet; "
                                     "its prompt is applied on the next frame")
        return frames

    def last(self, object_id: str) -> ObjectResult | None:
        """A copy of the object's latest result (None before its first frame)."""
        with self._lock:
            result = self._last.get(object_id)
        return ObjectResult(**vars(result)) if result is not None else None

    def latest_masks(self) -> list:
        with self._lock:
            return [self._last[oid].mask for oid in self._ids if oid in self._last]

    def candidates(self, object_ids: Sequence[str]) -> list[tuple[str, object, ObjectResult]]:
        """(id, latest features, latest result) of these objects (empty: every object seen on a frame)."""
        wanted = [oid.strip() for oid in object_ids if oid.strip()]
        unknown = [oid for oid in wanted if oid not in self._ids]
        if unknown:
            raise UnknownObjectError(f"unknown object id(s) {', '.join(map(repr, unknown))} "
                                     f"(tracked: {', '.join(sorted(self._ids)) or 'none'})")
        found = []
        for object_id in dict.fromkeys(wanted or self._order):
            frames = self.tracker.features(object_id) if object_id in self._ids else []
            last = self.last(object_id)
            if not frames or last is None:
                if wanted:
                    raise UnknownObjectError(f"object {object_id!r} has not been seen on a frame yet")
                continue
            found.append((object_id, frames[-1], last))
        return found
