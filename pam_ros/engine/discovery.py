"""Discover: segment everything on a frame and start tracking what is not tracked yet.

A discover request (from a service, a timer or every N replayed frames) waits here until the
tracking thread's next frame. There SAM 2's automatic mask generator (pam_ros.model.regions) runs
once; each region, best predicted IoU first, that is at least `min_area` pixels and does not overlap
a tracked object (mask IoU > 0.5 with its latest mask, or with a region taken before it) becomes a
new object, prompted with the region's box on that same frame, up to the free object slots. The
pipeline turns the chosen regions into ordinary ADD prompts (ids obj_N, semantics as for any new
object), so they get the same futures, outcomes and schedule as every other prompt.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from pam_ros.errors import PamError, RegionSettingsError
from pam_ros.model.region_settings import RegionSettings
from pam_ros.model.regions import Region, automatic_mask_generator, find_regions, mask_iou

log = logging.getLogger(__name__)

OVERLAP_IOU = 0.5  # a region whose mask IoU with a tracked object is above this is that object


@dataclass(frozen=True)
class DiscoverRequest:
    max_new_objects: int = 0  # 0 = as many as free object slots allow
    min_area: int = 0  # regions smaller than this many pixels are skipped
    tasks: tuple[str, ...] = ()  # for the new objects; () = the pipeline's new_object_tasks
    source: str = "request"  # "request", "period" or "every_frames" (for logs)

    def validate(self) -> "DiscoverRequest":
        for name in ("max_new_objects", "min_area"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise RegionSettingsError(f"{name} must be an integer >= 0, got {value!r}")
        return self


@dataclass
class DiscoverOutcome:
    """What one discover request did on its frame."""

    accepted: bool
    object_ids: list[str] = field(default_factory=list)  # added, best predicted IoU first
    error: str = ""
    regions_found: int = 0  # regions the generator returned
    skipped_overlap: int = 0  # overlapping a tracked object (or a region taken before it)
    skipped_small: int = 0  # smaller than min_area
    skipped_full: int = 0  # no free object slot (max_objects) or over max_new_objects
    frame_index: int = -1
    stamp_ns: int = 0
    seconds: float = 0.0  # the generator's time on this frame
    regions: list[Region] = field(default_factory=list)  # the regions the new objects started from

    @property
    def message(self) -> str:
        if not self.accepted:
            return self.error
        parts = [f"{len(self.object_ids)} new object(s) from {self.regions_found} region(s) on frame "
                 f"{self.frame_index} ({self.seconds:.2f} s)"]
        for count, why in ((self.skipped_overlap, "already tracked"), (self.skipped_small, "smaller than min_area"),
                           (self.skipped_full, "over max_objects / max_new_objects")):
            if count:
                parts.append(f"{count} {why}")
        return "; ".join(parts)


class DiscoverFuture(Future):
    """A queued discover request; result() is its DiscoverOutcome."""

    def __init__(self, request: DiscoverRequest) -> None:
        super().__init__()
        self.request = request

    def resolve(self, outcome: DiscoverOutcome) -> None:
        if not self.done():
            self.set_result(outcome)


class DiscoverQueue:
    """Discover requests waiting for the next frame, plus the periodic ones (every N frames or seconds)."""

    def __init__(self, *, period_s: float = 0.0, every_frames: int = 0) -> None:
        if period_s < 0 or every_frames < 0:
            raise RegionSettingsError("discover period and frame interval must be >= 0 (0 = off)")
        self.period_s = float(period_s)
        self.every_frames = int(every_frames)
        self._lock = threading.Lock()
        self._held: list[DiscoverFuture] = []
        self._last_periodic_s: float | None = None
        self._closed_reason = ""

    def submit(self, request: DiscoverRequest) -> DiscoverFuture:
        future = DiscoverFuture(request)
        try:
            request.validate()
        except RegionSettingsError as exc:
            future.resolve(DiscoverOutcome(False, error=str(exc)))
            return future
        with self._lock:
            if self._closed_reason:
                future.resolve(DiscoverOutcome(False, error=self._closed_reason))
            else:
                self._held.append(future)
        return future

    def take_due(self, frame_index: int, now_s: float) -> list[DiscoverFuture]:
        """Requests for this frame: every queued one, and a periodic one when its time has come."""
        with self._lock:
            due, self._held = self._held, []
        if self.every_frames and frame_index % self.every_frames == 0:
            due.append(DiscoverFuture(DiscoverRequest(source="every_frames")))
        elif self.period_s and (self._last_periodic_s is None or now_s - self._last_periodic_s >= self.period_s):
            self._last_periodic_s = now_s
            due.append(DiscoverFuture(DiscoverRequest(source="period")))
        return due

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def close(self, reason: str) -> None:
        with self._lock:
            self._closed_reason = reason
            held, self._held = self._held, []
        for future in held:
            future.resolve(DiscoverOutcome(False, error=reason))


@dataclass
class Selection:
    chosen: list[Region]
    skipped_overlap: int = 0
    skipped_small: int = 0
    skipped_full: int = 0


def select_new_regions(regions: Sequence[Region], tracked_masks: Sequence[np.ndarray], *, free_slots: int,
                       max_new: int = 0, min_area: int = 0, overlap_iou: float = OVERLAP_IOU) -> Selection:
    """The regions (in their order) to track: big enough, not overlapping a tracked mask or a region
    taken before them (IoU > overlap_iou), at most min(free_slots, max_new or free_slots)."""
    limit = max(0, free_slots) if not max_new else max(0, min(free_slots, max_new))
    taken: list[np.ndarray] = [np.asarray(m, dtype=bool) for m in tracked_masks if m is not None and m.any()]
    result = Selection(chosen=[])
    for region in regions:
        if region.area < min_area:
            result.skipped_small += 1
        elif any(m.shape == region.mask.shape and mask_iou(m, region.mask) > overlap_iou for m in taken):
            result.skipped_overlap += 1
        elif len(result.chosen) >= limit:
            result.skipped_full += 1
        else:
            result.chosen.append(region)
            taken.append(region.mask)
    return result


class Discoverer:
    """The discover loop of one stream: on each frame, run the due requests (one generator run serves
    them all) and turn the chosen regions into ADD prompts due on that very frame.

    Called by the tracking thread, before the tracker steps, so the new objects start on this frame.
    The generator is built on the first run and reused (building one compiles SAM 2's transforms).
    """

    def __init__(self, settings: RegionSettings, *, period_s: float = 0.0, every_frames: int = 0) -> None:
        self.settings = settings
        self.queue = DiscoverQueue(period_s=period_s, every_frames=every_frames)
        self._generator = None
        self.last_seconds = 0.0
        self.runs = 0

    def run_due(self, backbone, image: np.ndarray, frame_index: int, *, tracked: int, queued: int,
                max_objects: int, taken_masks: Callable[[], list], submit_add: Callable[..., object]) -> list:
        """The requests due on this frame: [(future, outcome, the ADD prompt futures)] for those that ran.

        tracked / queued: objects tracked / prompts waiting; taken_masks(): the tracked objects' latest masks;
        submit_add(box, tasks): queue an ADD prompt for this frame, returning its future.
        """
        futures = self.queue.take_due(frame_index, time.monotonic())
        if not futures:
            return []
        if tracked + queued >= max_objects:  # no slot: do not run the generator
            for future in futures:
                future.resolve(_full(max_objects, tracked))
            log.info("discover: max_objects (%d) reached; not run", max_objects)
            return []
        t0 = time.perf_counter()
        try:
            settings = self.settings.resolved()
            if self._generator is None:
                self._generator = automatic_mask_generator(backbone.sam, settings)
            found = find_regions(backbone, image, settings, max_regions=None, generator=self._generator)
        except PamError as exc:
            for future in futures:
                future.resolve(DiscoverOutcome(False, error=f"discover failed: {exc}"))
            return []
        seconds = self.last_seconds = time.perf_counter() - t0
        self.runs += 1
        taken = taken_masks()
        discovered = []
        for future in futures:
            request = future.request
            free = max_objects - tracked - queued
            if free <= 0:
                outcome = _full(max_objects, tracked)
                outcome.regions_found, outcome.seconds = len(found.regions), seconds
                future.resolve(outcome)
                continue
            selection = select_new_regions(found.regions, taken, free_slots=free,
                                           max_new=request.max_new_objects, min_area=request.min_area)
            added = [submit_add(region.box_xyxy(), tuple(request.tasks)) for region in selection.chosen]
            queued += len(added)
            taken += [region.mask for region in selection.chosen]
            discovered.append((future, DiscoverOutcome(
                True, regions_found=len(found.regions), skipped_overlap=selection.skipped_overlap,
                skipped_small=selection.skipped_small, skipped_full=selection.skipped_full, seconds=seconds,
                regions=list(selection.chosen)), added))
        return discovered

    @staticmethod
    def finish(discovered: list, frame_index: int, stamp_ns: int) -> None:
        """Resolve the discover futures once their ADD prompts were applied on this frame."""
        for future, outcome, added in discovered:
            outcome.frame_index, outcome.stamp_ns = frame_index, stamp_ns
            outcome.object_ids = [f.result().object_id for f in added if f.done() and f.result().accepted]
            log.info("discover (%s): %s", future.request.source, outcome.message)
            future.resolve(outcome)

    def close(self, reason: str) -> None:
        self.queue.close(reason)
        self._generator = None  # it holds the SAM 2 model too


def _full(max_objects: int, tracked: int) -> DiscoverOutcome:
    return DiscoverOutcome(False, error=f"max_objects ({max_objects}) reached: {tracked} objects tracked; "
                                        "nothing discovered")
