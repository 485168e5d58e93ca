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
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from pam_ros.engine.affordance import RankedObject, check_query, rank
from pam_ros.engine.depth_sync import DepthMatcher
from pam_ros.engine.describe import segment_object
from pam_ros.engine.discovery import DiscoverFuture, DiscoverOutcome, DiscoverQueue, DiscoverRequest, select_new_regions
from pam_ros.engine.geometry import DepthImage, DepthSettings, check_depth_size, object_geometry
from pam_ros.engine.prompts import PromptFuture, PromptQueue
from pam_ros.engine.scheduler import ScheduledWork, SemanticsScheduler
from pam_ros.engine.semantics import (
    SemanticsJob,
    SemanticsStore,
    SemanticsWorker,
    check_max_batch,
    fill_named_fields,
)
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
from pam_ros.errors import (
    ConfigError,
    DepthError,
    EngineClosedError,
    ImageError,
    PamError,
    PromptError,
    TaskError,
    UnknownObjectError,
)
from pam_ros.model.decoding import is_out_of_memory, release_cached_memory
from pam_ros.model.masks import mask_centroid
from pam_ros.model.pam import DescribeJob
from pam_ros.model.regions import RegionSettings, automatic_mask_generator, find_regions
from pam_ros.model.selection import ModelSpec
from pam_ros.model.tasks import (
    AFFORDANCE_QUESTION,
    VIDEO_FRAMES,
    canonical_task,
    check_affordance_template,
    is_streaming_task,
    is_video_task,
)

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
    # semantics jobs (objects, each with its tasks) that share one batched generation; 1 = no batching
    max_batch: int = 8
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
    # find_objects: the question asked per object ({query} = the need; README "For manipulation planners")
    affordance_question: str = AFFORDANCE_QUESTION
    # 3-D geometry from aligned depth (engine/geometry.py); None = off. depth_slop_ms: how far a depth
    # image's stamp may be from the colour frame's (0 = the exact stamp).
    depth: DepthSettings | None = None
    depth_slop_ms: float = 0.0

    def validate(self) -> None:
        for task in self.new_object_tasks:
            canonical_task(task)
        if self.max_objects < 1:
            raise ConfigError("max_objects must be >= 1")
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be >= 1")
        if self.semantics_mode not in ("async", "sync"):
            raise ConfigError("semantics_mode must be 'async' or 'sync'")
        check_max_batch(self.max_batch)
        for name in ("keep_feature_frames", "stream_window_frames"):
            if getattr(self, name) < VIDEO_FRAMES:
                raise ConfigError(f"{name} must be >= {VIDEO_FRAMES} (PAM's video mode reads {VIDEO_FRAMES} frames)")
        if self.refresh_period_s < 0 or self.prompt_hold_s < 0:
            raise ConfigError("refresh_period_s and prompt_hold_s must be >= 0")
        if self.discover_period_s < 0 or self.discover_every_frames < 0:
            raise ConfigError("discover_period_s and discover_every_frames must be >= 0 (0 = off)")
        self.discover_settings.resolved()
        if not self.depth_slop_ms >= 0:
            raise ConfigError(f"depth_slop_ms must be >= 0, got {self.depth_slop_ms}")
        check_affordance_template(self.affordance_question)


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


def check_tasks(tasks: Sequence[str]) -> None:
    """Every task known (TaskError names the bad one); no tasks is allowed: a describe then only segments."""
    if isinstance(tasks, str):
        raise TaskError(f"tasks must be a list of task names, not the string {tasks!r}")
    for task in tasks:
        canonical_task(task)


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
        self._worker = SemanticsWorker(self._run_batch, self._store, mode=self.config.semantics_mode,
                                       is_tracked=self._is_tracked, max_batch=self.config.max_batch)
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
        # depth images fed by add_depth (live front ends), matched to frames by stamp
        self._depth_matcher: DepthMatcher = DepthMatcher(int(self.config.depth_slop_ms * 1e6))
        self.frames_with_depth = 0
        self.frames_without_depth = 0

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
    def add_depth(self, depth: DepthImage) -> None:
        """A depth image aligned to the colour stream, for the frame with its stamp (any thread, any
        order: process() looks it up once the frame is tracked, so it has the tracking time to come)."""
        self._depth_matcher.add_depth(depth.stamp_ns, depth)

    def process(self, image: np.ndarray, stamp_ns: int, depth: DepthImage | None | object = ...) -> FrameResult:
        """Track every object on one frame (HxWx3 uint8 RGB); apply the prompts due on it.

        With config.depth set, each object gets its geometry from `depth` (a DepthImage, or None for a
        frame without depth) or, when depth is not given, from the image add_depth() matched to stamp_ns.
        """
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
        geometries, has_depth, depth_error = self._geometry(track.objects, stamp_ns, (w, h), depth)
        objects = []
        with self._state_lock:
            for obj in track.objects:
                result = ObjectResult(obj.object_id, float(obj.score), float(obj.object_score_logit),
                                      TrackingState(int(obj.state)), int(obj.frames_lost), obj.mask,
                                      tuple(obj.roi), int(obj.mask_area), mask_centroid(obj.mask),
                                      self._store.get(obj.object_id), geometries.get(obj.object_id))
                self._last_objects[obj.object_id] = result
                objects.append(result)
        return FrameResult(frame_index, stamp_ns, w, h, objects, self._tracking_s, resolved,
                           has_depth=has_depth, depth_error=depth_error)

    def _geometry(self, objects, stamp_ns: int, size_wh: tuple[int, int], depth) -> tuple[dict, bool, str]:
        """({object id: ObjectGeometry or None}, depth used, why the depth image was refused)."""
        settings = self.config.depth
        if settings is None:
            return {}, False, ""
        if depth is ...:
            depth = self._depth_matcher.take(stamp_ns)
        if depth is None:
            self.frames_without_depth += 1
            return {}, False, ""
        try:
            check_depth_size(depth, size_wh)
            geometries = {obj.object_id: object_geometry(depth, obj.mask, settings)
                          for obj in objects if obj.mask_area > 0}
        except DepthError as exc:
            self.frames_without_depth += 1
            return {}, False, str(exc)
        self.frames_with_depth += 1
        return geometries, True, ""

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
        if work:  # together, so that the worker batches them
            self._worker.submit_many([self._job_for(item) for item in work])

    def _job_for(self, item: ScheduledWork) -> SemanticsJob:
        frames = list(item.window) if item.is_window else self.tracker.features(item.object_id)
        latest = frames[-1]
        return SemanticsJob(item.object_id, item.tasks, frames, latest.stamp_ns, latest.frame_index,
                            self.config.max_new_tokens, kind="window" if item.is_window else "image")

    def _stream_history(self, object_id: str, task: str) -> str | None:
        """PAM's streaming caption: the previous window's caption of this object is the history."""
        if not is_streaming_task(task):
            return None
        return self._store.get(object_id).texts.get(canonical_task(task))

    # ----------------------------------------------------------------- semantics
    def _run_batch(self, sequences: list[tuple[SemanticsJob, str]]) -> list[GenerationResult]:
        """The worker's batches: each (job, task) on the job's frames, in one generation."""
        return self._generate([(job.snapshot, task, job.max_new_tokens, self._stream_history(job.object_id, task))
                               for job, task in sequences])

    def _generate(self, specs, *, on_text=None, should_stop=None) -> list[GenerationResult]:
        """Tasks on objects' kept frames, in one batched generation: specs are (frames, task,
        max_new_tokens or 0 for the configured, streaming history or None). Image tasks read the
        latest frame, video tasks the track; tasks on the same frames share their visual prefix."""
        cfg = self.config
        with self._llm_lock:
            model = self.model
            if model is None:
                raise EngineClosedError("the pipeline was closed")
            settings = {}  # one GenerationSettings per token limit
            jobs = []
            for frames, task, max_new_tokens, history in specs:
                canonical = canonical_task(task)
                limit = max_new_tokens or cfg.max_new_tokens
                if limit not in settings:
                    settings[limit] = model.generation_settings(max_new_tokens=limit, do_sample=not cfg.greedy,
                                                                temperature=cfg.temperature, top_p=cfg.top_p)
                regions = list(frames) if is_video_task(canonical) else frames[-1]
                jobs.append(DescribeJob(regions, canonical, history=history, on_text=on_text,
                                        should_stop=should_stop, settings=settings[limit]))
            try:
                generations = model.describe_batch(jobs)
            except Exception as exc:
                if is_out_of_memory(exc):
                    release_cached_memory(model.device)  # so that the worker's smaller retry can fit
                raise
        # seconds: from the start of the batch's decoding until this sequence ended
        return [GenerationResult(spec[1], gen.text, list(gen.token_ids), gen.seconds, stopped=bool(gen.stopped))
                for spec, gen in zip(specs, generations)]

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
        (res,) = self._generate([(frames, task, max_new_tokens, self._stream_history(object_id, task))],
                                on_text=on_text, should_stop=should_stop)
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

    def describe_async(self, image: np.ndarray | None, prompt: PromptRequest, tasks: Sequence[str],
                       max_new_tokens: int = 0, should_stop: Callable[[], bool] | None = None) -> Future:
        """describe() on the semantics worker (one request at a time with the other generations).

        The request is checked here (a PamError at once for a bad task, image or prompt); the
        future resolves to (ObjectResult, [GenerationResult]) or the error found while running.
        """
        self._ensure_open()
        check_tasks(tasks)
        if prompt.object_id and not prompt.points and prompt.box is None:
            self._tracked_frames(prompt.object_id)
        elif image is not None:
            image = check_image(image)
            visual_prompt(prompt).validate((image.shape[1], image.shape[0]))
        elif self._latest is None:
            raise ImageError("no image given and no frame has been received yet")
        return self._worker.run_request(
            lambda: self.describe(image, prompt, tasks, max_new_tokens, should_stop=should_stop), name="describe")

    def caption_async(self, object_id: str, task: str, max_new_tokens: int = 0,
                      on_text: Callable[[str, int], None] | None = None,
                      should_stop: Callable[[], bool] | None = None) -> Future:
        """caption() on the semantics worker, after the generations queued before it."""
        self._ensure_open()
        canonical_task(task)
        self._tracked_frames(object_id)
        return self._worker.run_request(
            lambda: self.caption(object_id, task, max_new_tokens, on_text=on_text, should_stop=should_stop),
            name="caption")

    def update_settings(self, **values) -> None:
        """Change settings that apply live (refresh_period_s, max_new_tokens, greedy, temperature,
        top_p, discover_period_s, max_batch); ConfigError and no change when a value is invalid."""
        live = {"refresh_period_s", "max_new_tokens", "greedy", "temperature", "top_p", "discover_period_s",
                "max_batch"}
        unknown = set(values) - live
        if unknown:
            raise ConfigError(f"not a live setting: {', '.join(sorted(unknown))} (needs a new pipeline)")
        candidate = replace(self.config, **values)
        candidate.validate()
        self.config = candidate
        with self._state_lock:
            self._scheduler.refresh_period_s = candidate.refresh_period_s
        self._discoveries.period_s = float(candidate.discover_period_s)
        self._worker.max_batch = candidate.max_batch

    def describe(self, image: np.ndarray | None, prompt: PromptRequest, tasks: Sequence[str],
                 max_new_tokens: int = 0, should_stop: Callable[[], bool] | None = None,
                 ) -> tuple[ObjectResult, list[GenerationResult]]:
        """One-shot: segment (or look up) one object and run `tasks` on it, in one batched generation
        (no tasks: segment only). Not added to tracking.

        image None = the latest processed frame. A prompt with only an object_id describes that
        tracked object from its kept features (no image encoding at all). Runs in the caller's
        thread; describe_async() runs it on the semantics worker.
        """
        self._ensure_open()
        check_tasks(tasks)
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
        results = self._generate([(frames, task, max_new_tokens, None) for task in tasks],
                                 should_stop=should_stop) if tasks else []
        for res in results:
            res.stamp_ns, res.frame_index = stamp, frame_index
        state = SemanticsState.READY if results else SemanticsState.NONE  # no tasks: segmented only
        sem = ObjectSemantics(state, stamp, frame_index, {r.task: r.text for r in results})
        fill_named_fields(sem)
        obj.semantics = sem
        return obj, results

    # ----------------------------------------------------------------- queries
    def find_objects(self, query: str, object_ids: Sequence[str] = (), *, max_results: int = 0,
                     min_score: float = 0.0) -> Future:
        """Rank tracked objects for a need: a Future of [RankedObject], best first.

        Every object in object_ids (empty = every tracked object seen on a frame) is asked
        config.affordance_question on its latest kept features, in one batched prefill on the
        semantics worker (never the tracking thread). QueryError / UnknownObjectError at once for an
        empty query, bad limits or an unknown id.
        """
        self._ensure_open()
        query = check_query(query, max_results, min_score)
        candidates = self._query_candidates(object_ids)
        template = self.config.affordance_question

        def ask() -> list[RankedObject]:
            if not candidates:
                return []
            with self._llm_lock:
                if self.model is None:
                    raise EngineClosedError("the pipeline was closed")
                answers = self.model.ask([features for _, features, _ in candidates], query, template=template)
            return rank(candidates, answers, max_results=max_results, min_score=min_score)

        return self._worker.run_request(ask, name="find_objects", first=True)

    def rank_objects(self, query: str, object_ids: Sequence[str] = (), *, max_results: int = 0,
                     min_score: float = 0.0, timeout_s: float | None = None) -> list[RankedObject]:
        """find_objects, waited for (TimeoutError after timeout_s)."""
        return self.find_objects(query, object_ids, max_results=max_results, min_score=min_score).result(timeout_s)

    def _query_candidates(self, object_ids: Sequence[str]) -> list[tuple[str, object, ObjectResult]]:
        wanted = [oid.strip() for oid in object_ids if oid.strip()]
        tracked = self.tracker.object_ids if self.tracker is not None else []
        unknown = [oid for oid in wanted if oid not in tracked]
        if unknown:
            raise UnknownObjectError(f"unknown object id(s) {', '.join(map(repr, unknown))} "
                                     f"(tracked: {', '.join(tracked) or 'none'})")
        candidates = []
        with self._state_lock:
            for oid in dict.fromkeys(wanted or tracked):
                frames = self.tracker.features(oid)
                obj = self._last_objects.get(oid)
                if not frames or obj is None:
                    if wanted:
                        raise UnknownObjectError(f"object {oid!r} has not been seen on a frame yet")
                    continue
                candidates.append((oid, frames[-1], ObjectResult(**vars(obj))))
        return candidates

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
            "semantics_seconds": self._worker.last_batch_seconds,
            "semantics_batches": self._worker.batches,
            "semantics_last_batch_jobs": self._worker.last_batch_jobs,
            "semantics_max_batch": self._worker.max_batch,
            "semantics_memory_splits": self._worker.memory_splits,
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
        if self.config.depth is not None:
            out["frames_with_depth"] = self.frames_with_depth
            out["frames_without_depth"] = self.frames_without_depth
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
