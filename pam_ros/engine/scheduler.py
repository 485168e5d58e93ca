"""The semantics scheduler: which object needs which PAM task, and when.

Four reasons to describe an object: it is new (its prompt's tasks, or the configured ones), its
refresh period elapsed, a caller asked (request), or a window of its track filled up (video tasks:
a plain video caption once, the streaming caption on every window, with the previous window's caption
as history). Image tasks wait while the object is LOST and run on its next visible frame.

Plain bookkeeping, no model and no threads: the pipeline feeds it each frame's objects and hands the
SemanticsJobs it returns to the semantics worker.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from pam_ros.engine.history import FeatureHistory
from pam_ros.engine.semantics import SemanticsJob
from pam_ros.engine.types import TrackingState
from pam_ros.model.tasks import VIDEO_FRAMES, canonical_task, is_streaming_task, is_video_task

if TYPE_CHECKING:  # type hints only: the scheduler never touches a tensor
    from pam_ros.model.pam import RegionFeatures


class StreamWindow:
    """Frames of one object's track since its last video caption, evenly thinned (16 to 31 kept, the
    window's first and last included); PAM's video mode then reads 16 of them."""

    def __init__(self, tasks: tuple[str, ...], window_frames: int) -> None:
        self.tasks = tasks
        self.window_frames = window_frames
        self._frames = FeatureHistory(VIDEO_FRAMES)
        self._count = 0

    def add(self, features: RegionFeatures) -> tuple[tuple[str, ...], tuple[RegionFeatures, ...]] | None:
        """Add a frame; when the window is full, return (tasks, its frames) and start a new one.

        A plain video_caption runs once, on the first full window; the streaming caption on every one.
        """
        self._frames.add(features)
        self._count += 1
        if self._count < self.window_frames or len(self._frames) < VIDEO_FRAMES:
            return None
        frames = tuple(self._frames.frames())
        tasks = self.tasks
        self.tasks = tuple(t for t in tasks if is_streaming_task(t))
        self._frames = FeatureHistory(VIDEO_FRAMES)
        self._count = 0
        return (tasks, frames) if tasks else None

    @property
    def done(self) -> bool:
        return not self.tasks


class SemanticsScheduler:
    """Per-object semantic needs; `due()` turns one frame's observations into work."""

    def __init__(self, default_tasks: tuple[str, ...], refresh_period_s: float = 0.0,
                 window_frames: int = 32) -> None:
        self.default_tasks = tuple(canonical_task(t) for t in default_tasks)
        self.refresh_period_s = refresh_period_s
        self.window_frames = window_frames
        self._wanted: dict[str, tuple[str, ...]] = {}  # object id -> image tasks for its next visible frame
        self._windows: dict[str, StreamWindow] = {}
        self._last_run_s: dict[str, float] = {}
        self._tasks_of: dict[str, tuple[str, ...]] = {}  # the image tasks an object was given

    def object_added(self, object_id: str, tasks: tuple[str, ...] = ()) -> None:
        """A new (or restarted) object: its tasks, or the defaults, run on its first visible frame."""
        tasks = tuple(canonical_task(t) for t in (tasks or self.default_tasks))
        image_tasks = tuple(t for t in tasks if not is_video_task(t))
        video_tasks = tuple(t for t in tasks if is_video_task(t))
        self._tasks_of[object_id] = image_tasks
        if image_tasks:
            self._wanted[object_id] = image_tasks
        self._windows.pop(object_id, None)
        if video_tasks:
            self._windows[object_id] = StreamWindow(video_tasks, self.window_frames)

    def request(self, object_id: str, tasks: tuple[str, ...] = ()) -> None:
        """Describe an object again on its next visible frame (default: the tasks it had)."""
        tasks = tuple(canonical_task(t) for t in tasks) or self._tasks_of.get(object_id) or self.default_tasks
        self._wanted[object_id] = tasks

    def forget(self, object_id: str) -> None:
        for table in (self._wanted, self._windows, self._last_run_s, self._tasks_of):
            table.pop(object_id, None)

    def clear(self) -> None:
        for table in (self._wanted, self._windows, self._last_run_s, self._tasks_of):
            table.clear()

    def due(self, observations, now_s: float, kept_frames: Callable[[str], Sequence[RegionFeatures]]
            ) -> list[SemanticsJob]:
        """Jobs for this frame. observations: (object_id, TrackingState, RegionFeatures) per object;
        kept_frames(object_id): the object's kept frames, which its image tasks are run on."""
        work: list[SemanticsJob] = []
        for object_id, state, features in observations:
            window = self._windows.get(object_id)
            if window is not None:
                full = window.add(features)
                if window.done:
                    del self._windows[object_id]
                if full is not None:
                    work.append(SemanticsJob(object_id, full[0], full[1], kind="window"))
            tasks = self._wanted.get(object_id)
            if tasks is None and self.refresh_period_s > 0:
                last = self._last_run_s.setdefault(object_id, now_s)
                if now_s - last >= self.refresh_period_s:
                    tasks = self._tasks_of.get(object_id) or self.default_tasks
            if not tasks or TrackingState(int(state)) == TrackingState.LOST:
                if tasks:
                    self._wanted[object_id] = tasks  # describe it when it is visible again
                continue
            self._wanted.pop(object_id, None)
            self._last_run_s[object_id] = now_s
            work.append(SemanticsJob(object_id, tasks, tuple(kept_frames(object_id))))
        return work
