"""PerceptionPipeline: the facade every front end (ROS node, bag replay, CLI) drives.

It wires the pieces and holds none of their logic: the prompt queue (engine.prompts: prompts are
futures, applied on their frame), the StreamingTracker (masks, frame by frame), the semantics
scheduler (engine.scheduler: which object needs which task when) and worker (engine.semantics: words,
asynchronously, bounded backlog), and one-shot describes (engine.describe). Front ends only translate
its inputs and outputs.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from pam_ros.engine.describe import segment_object
from pam_ros.engine.discovery import DiscoverFuture, DiscoverOutcome, DiscoverQueue, DiscoverRequest, select_new_regions
from pam_ros.engine.prompts import PromptFuture, PromptQueue
from pam_ros.engine.scheduler import ScheduledWork, SemanticsScheduler
from pam_ros.engine.semantics import SemanticsJob, SemanticsStore, SemanticsWorker, fill_named_fields
from pam_ros.engine.tracker import StreamingTracker
from pam_ros.engine.types import (
    FrameResult,
    GenerationResult,
    ObjectResult,
    ObjectSemantics,
    PromptAction,
    PromptOutcome,
    PromptRequest,
    SemanticsState,
    TrackingState,
)
from pam_ros.errors import ConfigError, EngineClosedError, ImageError, PamError, PromptError, UnknownObjectError
from pam_ros.masks import mask_centroid
from pam_ros.model.regions import RegionSettings, automatic_mask_generator, find_regions
from pam_ros.model.selection import ModelSpec
from pam_ros.model.tasks import VIDEO_FRAMES, canonical_task, is_streaming_task, is_video_task

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    new_object_tasks: tuple[str, ...] = ("explain", "caption")
    refresh_period_s: float = 0.0
    max_objects: int = 16
    max_conditioning_frames: int = 4
    max_new_tokens: int = 48
    greedy: bool = True
    temperature: float = 0.7
    top_p: float = 0.8
    semantics_mode: str = "async"
    prompt_hold_s: float = 2.0
    keep_feature_frames: int = 16  # per object, spread over its track (PAM's video mode reads 16)
    # video_stream_caption: every `stream_window_frames` frames of a track are captioned (16 of them,
    # evenly spread) with the previous window's caption as history -> a running narrative.
    stream_window_frames: int = 32
    # discover (engine.discovery): segment everything every discover_period_s seconds or every
    # discover_every_frames frames (0 = only on request), with these generator settings.
    discover_period_s: float = 0.0
    discover_every_frames: int = 0
    discover_settings: RegionSettings = RegionSettings()

    def validate(self) -> None:
        for task in self.new_object_tasks:
            canonical_task(task)
        if self.max_objects < 1:
            raise ConfigError("max_objects must be >= 1")
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be >= 1")
        if self.semantics_mode not in ("async", "sync"):
            raise ConfigError("semantics_mode must be 'async' or 'sync'")
        for name in ("keep_feature_frames", "stream_window_frames"):
            if getattr(self, name) < VIDEO_FRAMES:
                raise ConfigError(f"{name} must be >= {VIDEO_FRAMES} (PAM's video mode reads {VIDEO_FRAMES} frames)")
        if self.refresh_period_s < 0 or self.prompt_hold_s < 0:
            raise ConfigError("refresh_period_s and prompt_hold_s must be >= 0")
        if self.discover_period_s < 0 or self.discover_every_frames < 0:
            raise ConfigError("discover_period_s and discover_every_frames must be >= 0 (0 = off)")
        self.discover_settings.resolved()


def check_image(image: np.ndarray) -> np.ndarray:
    """The engine takes HxWx3 uint8 RGB; anything else is refused with a message saying what it got."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"image must be HxWx3 RGB, got shape {tuple(image.shape)}")
    if image.dtype != np.uint8:
        raise ImageError(f"image must be uint8, got {image.dtype}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ImageError(f"image is empty or degenerate: {image.shape[1]}x{image.shape[0]}")
    return np.ascontiguousarray(image)


def visual_prompt(prompt: PromptRequest):
    """The model's VisualPrompt for the points/box of a PromptRequest (not yet validated)."""
    from pam_ros.model.sam2_backbone import VisualPrompt

    points = np.asarray(prompt.points, dtype=np.float64).reshape(-1, 2) if prompt.points else None
    labels = np.asarray(prompt.labels) if prompt.labels or prompt.points else None
    box = np.asarray(prompt.box, dtype=np.float64) if prompt.box is not None else None
    return VisualPrompt(points=points, labels=labels, box=box)


class PerceptionPipeline:
    """Tracking + semantics for one camera stream.

    Threading: `process` is called by one tracking thread. `submit_prompt`, `describe`, `caption`
    and `request_refresh` may be called from any thread. The SAM 2 side is shared by the tracking
    thread and one-shot describes (one lock); the LLM by the semantics worker and callers of
    describe/caption (another lock), so tracking never waits for text.
    """

    def __init__(self, model, config: PipelineConfig | None = None) -> None:
        self.config = config or PipelineConfig()
        self.config.validate()
        self.model = model
        self.tracker = StreamingTracker(
            model.backbone,
            max_objects=self.config.max_objects,
            max_conditioning_frames=self.config.max_conditioning_frames,
            keep_feature_frames=self.config.keep_feature_frames,
        )
        self._store = SemanticsStore()
        self._worker = SemanticsWorker(self._run_task, self._store, mode=self.config.semantics_mode,
                                       is_tracked=self._is_tracked)
        self._tracked_ids: frozenset[str] = frozenset()  # snapshot for other threads (set by process)
        self._prompts = PromptQueue(lambda: self._tracked_ids)
        self._discoveries = DiscoverQueue(period_s=self.config.discover_period_s,
                                          every_frames=self.config.discover_every_frames)
        self._discover_s = 0.0
        self._region_generator = None  # built on the first discover, then reused
        self._discover_runs = 0
        self._scheduler = SemanticsScheduler(self.config.new_object_tasks, self.config.refresh_period_s,
                                             self.config.stream_window_frames)
        self._sam_lock = threading.RLock()
        self._llm_lock = threading.Lock()
        self._state_lock = threading.Lock()  # guards _last_objects and the scheduler
        self._latest: tuple[np.ndarray, int] | None = None
        self._last_objects: dict[str, ObjectResult] = {}
        self._frame_index = 0
        self._closed = False
        self._tracking_s = 0.0

    @classmethod
    def load(cls, spec: ModelSpec, config: PipelineConfig | None = None) -> "PerceptionPipeline":
        """Load the weights of `spec` (offline), then build the pipeline."""
        if config is not None:
            config.validate()
        return cls(spec.load(), config)

    # ----------------------------------------------------------------- prompts
    def submit_prompt(self, prompt: PromptRequest) -> PromptFuture:
        """Queue a prompt for the first processed frame with stamp >= prompt.stamp_ns (0: the next).

        Safe from any thread. Returns a future resolving to the PromptOutcome; `future.object_id` is
        known at once: an ADD without an id is named here (obj_1, obj_2, ... skipping ids tracked or
        queued), so every front end names the same objects alike. After close() the future comes
        back already refused.
        """
        return self._prompts.submit(prompt)

    def expire_held_prompts(self, now_s: float | None = None) -> list[PromptOutcome]:
        """Refuse prompts for a future stamp that waited longer than prompt_hold_s."""
        return self._prompts.expire(self.config.prompt_hold_s, now_s)

    def pending_prompts(self) -> list[PromptFuture]:
        """Prompts submitted and not yet applied (their frame has not come)."""
        return self._prompts.pending()

    def _apply_prompt(self, prompt: PromptRequest, size_wh: tuple[int, int]) -> PromptOutcome:
        frame = self._frame_index
        try:
            if prompt.action == PromptAction.RESET_ALL:
                self.tracker.reset()
                with self._state_lock:
                    for oid in list(self._last_objects):
                        self._forget(oid)
                    self._scheduler.clear()
                return PromptOutcome("", True, frame_index=frame)
            if prompt.action == PromptAction.REMOVE:
                self._require_tracked(prompt.object_id)
                self.tracker.remove_object(prompt.object_id)
                with self._state_lock:
                    self._forget(prompt.object_id)
                return PromptOutcome(prompt.object_id, True, frame_index=frame)
            visual = visual_prompt(prompt).validate(size_wh)
            if prompt.action == PromptAction.REFINE:
                self._require_tracked(prompt.object_id)
                self.tracker.refine_object(prompt.object_id, visual)
                oid = prompt.object_id
            elif prompt.action == PromptAction.ADD:
                oid = self.tracker.add_object(visual, object_id=prompt.object_id or None)
            else:
                raise PromptError(f"unknown prompt action {int(prompt.action)}")
            with self._state_lock:
                self._scheduler.object_added(oid, tuple(prompt.tasks))
            return PromptOutcome(oid, True, frame_index=frame)
        except PamError as exc:
            return PromptOutcome(prompt.object_id, False, str(exc))

    def _require_tracked(self, object_id: str) -> None:
        if not object_id:
            raise PromptError("this action needs an object_id")
        if object_id not in self.tracker.object_ids:
            known = ", ".join(self.tracker.object_ids) or "none"
            raise UnknownObjectError(f"unknown object id {object_id!r} (tracked: {known})")

    def _forget(self, object_id: str) -> None:
        self._store.remove(object_id)
        self._last_objects.pop(object_id, None)
        self._scheduler.forget(object_id)

    def _is_tracked(self, object_id: str) -> bool:
        tracker = self.tracker
        return tracker is not None and object_id in tracker.object_ids

    # ----------------------------------------------------------------- tracking
    def process(self, image: np.ndarray, stamp_ns: int) -> FrameResult:
        """Track every object on one frame (HxWx3 uint8 RGB); apply the prompts due on it."""
        self._ensure_open()
        image = check_image(image)
        h, w = image.shape[:2]
        t0 = time.perf_counter()
        with self._sam_lock:
            due = self._prompts.take_due(stamp_ns)
            outcomes = [self._apply_prompt(f.request, (w, h)) for f in due]
            discovered, discover_s = self._discover_regions(image, stamp_ns)
            if discovered:  # the regions' ADD prompts, due on this very frame
                found = self._prompts.take_due(stamp_ns)
                due += found
                outcomes += [self._apply_prompt(f.request, (w, h)) for f in found]
            track = self.tracker.step(image, stamp_ns=stamp_ns)
            self._tracked_ids = frozenset(self.tracker.object_ids)
        self._tracking_s = time.perf_counter() - t0 - discover_s
        self._latest = (image, stamp_ns)
        frame_index = self._frame_index
        self._frame_index += 1
        # Prompts that only failed against this frame (the tracker dropped them) are refused.
        rejected = dict(track.rejected_prompts)
        if rejected:
            outcomes = [PromptOutcome(o.object_id, False, rejected[o.object_id])
                        if o.accepted and o.object_id in rejected else o for o in outcomes]
            with self._state_lock:
                for oid in rejected:
                    if oid not in self.tracker.object_ids:
                        self._forget(oid)
        resolved = []
        for future, outcome in zip(due, outcomes):
            future.resolve(PromptOutcome(outcome.object_id, outcome.accepted, outcome.error,
                                         frame_index if outcome.accepted else -1,
                                         stamp_ns=stamp_ns if outcome.accepted else 0))
            resolved.append(future.result())
        for future, outcome, added in discovered:
            outcome.frame_index, outcome.stamp_ns = frame_index, stamp_ns
            outcome.object_ids = [f.result().object_id for f in added if f.done() and f.result().accepted]
            log.info("discover (%s): %s", future.request.source, outcome.message)
            future.resolve(outcome)
        self._schedule_semantics(track)
        objects = []
        with self._state_lock:
            for obj in track.objects:
                result = ObjectResult(obj.object_id, float(obj.score), float(obj.object_score_logit),
                                      TrackingState(int(obj.state)), int(obj.frames_lost), obj.mask,
                                      tuple(obj.roi), int(obj.mask_area), mask_centroid(obj.mask),
                                      self._store.get(obj.object_id))
                self._last_objects[obj.object_id] = result
                objects.append(result)
        return FrameResult(frame_index, stamp_ns, w, h, objects, self._tracking_s, resolved)

    # ----------------------------------------------------------------- discover
    def discover(self, request: DiscoverRequest = DiscoverRequest()) -> DiscoverFuture:
        """Segment everything on the next processed frame and track what is new (engine.discovery).

        Safe from any thread; the future resolves to a DiscoverOutcome once that frame is processed.
        """
        self._ensure_open()
        for task in request.tasks:
            canonical_task(task)
        return self._discoveries.submit(request)

    def _discover_regions(self, image: np.ndarray, stamp_ns: int) -> tuple[list, float]:
        """Run the discover requests due on this frame: [(future, outcome, the ADD prompt futures)], seconds.

        Called with the SAM lock held, before the tracker steps: the new objects start on this frame.
        """
        futures = self._discoveries.take_due(self._frame_index, time.monotonic())
        if not futures:
            return [], 0.0
        tracked = len(self.tracker.object_ids)
        if tracked + len(self._prompts) >= self.config.max_objects:  # no slot: do not run the generator
            for future in futures:
                future.resolve(DiscoverOutcome(False, error=f"max_objects ({self.config.max_objects}) reached: "
                                                            f"{tracked} objects tracked; nothing discovered"))
            log.info("discover: max_objects (%d) reached; not run", self.config.max_objects)
            return [], 0.0
        t0 = time.perf_counter()
        try:
            settings = self.config.discover_settings.resolved()
            if self._region_generator is None:
                self._region_generator = automatic_mask_generator(self.model.backbone.sam, settings)
            found = find_regions(self.model.backbone, image, settings, max_regions=None,
                                 generator=self._region_generator)
        except PamError as exc:
            for future in futures:
                future.resolve(DiscoverOutcome(False, error=f"discover failed: {exc}"))
            return [], time.perf_counter() - t0
        seconds = time.perf_counter() - t0
        self._discover_s, self._discover_runs = seconds, self._discover_runs + 1
        with self._state_lock:
            taken = [self._last_objects[oid].mask for oid in self.tracker.object_ids if oid in self._last_objects]
        discovered = []
        for future in futures:
            request = future.request
            free = self.config.max_objects - len(self.tracker.object_ids) - len(self._prompts)
            if free <= 0:
                future.resolve(DiscoverOutcome(
                    False, error=f"max_objects ({self.config.max_objects}) reached: "
                                 f"{len(self.tracker.object_ids)} objects tracked; nothing discovered",
                    regions_found=len(found.regions), seconds=seconds))
                continue
            selection = select_new_regions(found.regions, taken, free_slots=free,
                                           max_new=request.max_new_objects, min_area=request.min_area)
            added = [self._prompts.submit(PromptRequest(PromptAction.ADD, box=region.box_xyxy(),
                                                        tasks=tuple(request.tasks), stamp_ns=stamp_ns))
                     for region in selection.chosen]
            taken += [region.mask for region in selection.chosen]
            outcome = DiscoverOutcome(True, regions_found=len(found.regions),
                                      skipped_overlap=selection.skipped_overlap,
                                      skipped_small=selection.skipped_small,
                                      skipped_full=selection.skipped_full, seconds=seconds,
                                      regions=list(selection.chosen))
            discovered.append((future, outcome, added))
        return discovered, seconds

    def _schedule_semantics(self, track) -> None:
        observations = [(obj.object_id, obj.state, obj.features) for obj in track.objects]
        with self._state_lock:
            work = self._scheduler.due(observations, time.monotonic())
        for item in work:
            self._submit_work(item)

    def _submit_work(self, item: ScheduledWork):
        frames = list(item.window) if item.is_window else self.tracker.features(item.object_id)
        latest = frames[-1]
        job = SemanticsJob(item.object_id, item.tasks, frames, latest.stamp_ns, latest.frame_index,
                           self.config.max_new_tokens, kind="window" if item.is_window else "image")
        return self._worker.submit(job)

    def _stream_history(self, object_id: str, task: str) -> str | None:
        """PAM's streaming caption: the previous window's caption of this object is the history."""
        if not is_streaming_task(task):
            return None
        return self._store.get(object_id).texts.get(canonical_task(task))

    # ----------------------------------------------------------------- semantics
    def _run_task(self, frames, task: str, max_new_tokens: int, *, on_text=None, should_stop=None,
                  history=None, object_id: str = "") -> GenerationResult:
        """One task on an object's kept frames: image tasks read the latest, video tasks the track."""
        cfg = self.config
        canonical = canonical_task(task)
        if history is None and object_id:
            history = self._stream_history(object_id, canonical)
        regions = list(frames) if is_video_task(canonical) else frames[-1]
        t0 = time.perf_counter()
        with self._llm_lock:
            if self.model is None:
                raise EngineClosedError("the pipeline was closed")
            gen = self.model.describe(regions, canonical, history=history,
                                      max_new_tokens=max_new_tokens or cfg.max_new_tokens,
                                      do_sample=not cfg.greedy, temperature=cfg.temperature, top_p=cfg.top_p,
                                      on_text=on_text, should_stop=should_stop)
        return GenerationResult(task, gen.text, list(gen.token_ids), time.perf_counter() - t0,
                                stopped=bool(getattr(gen, "stopped", False)))

    def request_refresh(self, object_id: str, tasks: Sequence[str] = ()) -> None:
        """Describe an object again on its next visible frame (tasks: default = the ones it had)."""
        self._ensure_open()
        for task in tasks:
            canonical_task(task)
        if object_id not in self.tracker.object_ids:
            raise UnknownObjectError(f"unknown object id {object_id!r}")
        with self._state_lock:
            self._scheduler.request(object_id, tuple(tasks))

    def caption(self, object_id: str, task: str, max_new_tokens: int = 0,
                on_text: Callable[[str, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> GenerationResult:
        """One task's text for a tracked object, streamed through on_text(text_so_far, num_tokens)."""
        self._ensure_open()
        canonical_task(task)
        frames = self._tracked_frames(object_id)
        res = self._run_task(frames, task, max_new_tokens, on_text=on_text, should_stop=should_stop,
                             history=self._stream_history(object_id, task))
        res.stamp_ns, res.frame_index = frames[-1].stamp_ns, frames[-1].frame_index
        if not res.stopped:
            self._store.set_texts(object_id, [res])
        return res

    def _tracked_frames(self, object_id: str):
        if object_id not in self.tracker.object_ids:
            known = ", ".join(self.tracker.object_ids) or "none"
            raise UnknownObjectError(f"unknown object id {object_id!r} (tracked: {known})")
        frames = self.tracker.features(object_id)
        if not frames:
            raise UnknownObjectError(f"object {object_id!r} has not been seen on a frame yet; "
                                     "its prompt is applied on the next frame")
        return frames

    def describe(self, image: np.ndarray | None, prompt: PromptRequest, tasks: Sequence[str],
                 max_new_tokens: int = 0) -> tuple[ObjectResult, list[GenerationResult]]:
        """One-shot: segment (or look up) one object and run `tasks` on it. Not added to tracking.

        image None = the latest processed frame. A prompt with only an object_id describes that
        tracked object from its kept features (no image encoding at all).
        """
        self._ensure_open()
        for task in tasks:
            canonical_task(task)
        if prompt.object_id and not prompt.points and prompt.box is None:
            if image is not None:
                raise PromptError("describe by object_id uses the tracked object's latest frame; "
                                  "send no image with it")
            frames = self._tracked_frames(prompt.object_id)
            with self._state_lock:
                obj = self._last_objects.get(prompt.object_id)
            if obj is None:
                raise UnknownObjectError(f"object {prompt.object_id!r} has no result yet")
            obj = ObjectResult(**{**vars(obj)})
            stamp, frame_index = frames[-1].stamp_ns, frames[-1].frame_index
        else:
            if image is None:
                if self._latest is None:
                    raise ImageError("no image given and no frame has been received yet")
                image, stamp = self._latest
                frame_index = self._frame_index - 1
            else:
                image, stamp, frame_index = check_image(image), 0, -1
            h, w = image.shape[:2]
            visual = visual_prompt(prompt).validate((w, h))
            with self._sam_lock:
                if self.model is None:
                    raise EngineClosedError("the pipeline was closed")
                segmented = segment_object(self.model, image, visual, frame_index=frame_index, stamp_ns=stamp)
            frames = [segmented.features]
            obj = segmented.as_result(prompt.object_id)
        results = []
        for task in tasks:
            res = self._run_task(frames, task, max_new_tokens)
            res.stamp_ns, res.frame_index = stamp, frame_index
            results.append(res)
        sem = ObjectSemantics(SemanticsState.READY, stamp, frame_index, {r.task: r.text for r in results})
        fill_named_fields(sem)
        obj.semantics = sem
        return obj, results

    # ----------------------------------------------------------------- status
    def wait_semantics_idle(self, timeout_s: float | None = None) -> bool:
        return self._worker.wait_idle(timeout_s)

    @property
    def frames_processed(self) -> int:
        return self._frame_index

    def object_ids(self) -> list[str]:
        """Objects tracked after the last processed frame (safe from any thread)."""
        return sorted(self._tracked_ids)

    def semantics(self, object_id: str) -> ObjectSemantics:
        return self._store.get(object_id)

    def stats(self) -> dict:
        """Numbers for diagnostics (no host-device sync except the CUDA memory counters)."""
        out = {
            "frames_processed": self._frame_index,
            "objects": len(self.object_ids()),
            "tracking_seconds": self._tracking_s,
            "semantics_seconds": self._worker.last_job_seconds,
            "semantics_queue": self._worker.pending(),
            "semantics_queue_bound": 2 * self.config.max_objects,
            "semantics_done": self._worker.jobs_done,
            "semantics_failed": self._worker.jobs_failed,
            "semantics_merged": self._worker.jobs_merged,
            "held_prompts": len(self._prompts),
            "discover_seconds": self._discover_s,
            "discover_runs": self._discover_runs,
            "discover_queue": len(self._discoveries),
        }
        device = getattr(self.model, "device", None)
        if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
            import torch

            out["gpu_memory_allocated_bytes"] = torch.cuda.memory_allocated(device)
            out["gpu_memory_reserved_bytes"] = torch.cuda.memory_reserved(device)
        return out

    def _ensure_open(self) -> None:
        if self._closed:
            raise EngineClosedError("the pipeline is closed")

    def close(self, reason: str = "the pipeline was closed") -> None:
        """Refuse queued prompts (with `reason`), stop the worker and drop the model, freeing GPU memory."""
        if self._closed:
            return
        self._closed = True
        self._prompts.close(f"not applied: {reason}")
        self._discoveries.close(f"not run: {reason}")
        self._worker.close()
        self._store.clear()
        device = getattr(self.model, "device", None)
        with self._sam_lock, self._llm_lock:
            self.model = None
            self.tracker = None
            self._region_generator = None  # it holds the SAM 2 model too
        gc.collect()
        if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
