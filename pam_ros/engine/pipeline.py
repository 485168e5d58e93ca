"""PerceptionPipeline: one camera stream's facade, the one every front end (ROS node, bag replay, CLI) drives.

It wires the pieces and delegates; each piece owns its logic:
  engine.prompts     the prompt path: submit -> PromptFuture, naming, the one check, due on a frame
  engine.objects     who is tracked (tracker, semantics store, scheduler, latest results agree)
  engine.tracker     masks, frame by frame, with bounded memory
  engine.scheduler   which object needs which task when
  engine.semantics   the worker: owns the language model, batches, streams, out-of-memory splits
  engine.discovery   segment everything and track what is new, on request or periodically
  engine.describe    one-shot segmentation
  engine.geometry    3-D geometry from aligned depth (engine.depth pairs depth and CameraInfo with frames)
Front ends only translate its inputs and outputs.
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
from pam_ros.engine.depth import DepthPairing, FrameDepth, with_intrinsics
from pam_ros.engine.describe import segment_object
from pam_ros.engine.discovery import Discoverer, DiscoverFuture, DiscoverRequest
from pam_ros.engine.geometry import (
    CameraIntrinsics,
    DepthImage,
    DepthSettings,
    check_depth_size,
    object_geometry,
)
from pam_ros.engine.objects import ObjectRegistry
from pam_ros.engine.prompts import PromptFuture, PromptQueue, visual_prompt
from pam_ros.engine.scheduler import SemanticsScheduler
from pam_ros.engine.semantics import (
    GenerationConfig,
    SemanticsJob,
    SemanticsStore,
    SemanticsWorker,
    Stream,
    check_max_batch,
    fill_named_fields,
)
from pam_ros.engine.tracker import StreamingTracker
from pam_ros.engine.types import (
    LIVE_SETTINGS,
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
from pam_ros.model.image_input import check_rgb_array
from pam_ros.model.masks import mask_centroid
from pam_ros.model.region_settings import RegionSettings
from pam_ros.model.sam2_backbone import ImageEncoding
from pam_ros.model.selection import ModelSpec
from pam_ros.model.tasks import AFFORDANCE_QUESTION, VIDEO_FRAMES, canonical_task, check_affordance_template

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


def check_tasks(tasks: Sequence[str]) -> None:
    """Every task known (TaskError names the bad one); no tasks is allowed: a describe then only segments."""
    if isinstance(tasks, str):
        raise TaskError(f"tasks must be a list of task names, not the string {tasks!r}")
    for task in tasks:
        canonical_task(task)


@dataclass(frozen=True)
class PipelineSetup:
    """What a front end shows about the loaded model (log lines, diagnostics)."""

    device: str
    dtype: str
    image_encoder: str  # e.g. "torch on cpu", "onnxruntime on TensorrtExecutionProvider"


class PerceptionPipeline:
    """Tracking + semantics for one camera stream.

    Threading: `process` is called by one tracking thread. `submit_prompt`, `describe(_async)`,
    `caption(_async)`, `find_objects`, `discover` and `request_refresh` may be called from any thread.
    SAM 2 is shared by the tracking thread and one-shot segmentation (one lock); the language model
    belongs to the semantics worker, so tracking never waits for text.
    """

    def __init__(self, model, config: PipelineConfig | None = None, *, worker: SemanticsWorker | None = None,
                 name: str = "") -> None:
        """worker: a semantics worker shared with other streams over the same model (engine/host.py: several
        cameras); None = this stream's own. name: the stream's name (a camera's), "" for a single stream."""
        self.config = config or PipelineConfig()
        self.config.validate()
        cfg = self.config
        self.model = model
        tracker = StreamingTracker(model.backbone, max_objects=cfg.max_objects,
                                   max_conditioning_frames=cfg.max_conditioning_frames,
                                   keep_feature_frames=cfg.keep_feature_frames)
        self._store = SemanticsStore()
        self._objects = ObjectRegistry(tracker, self._store, SemanticsScheduler(
            cfg.new_object_tasks, cfg.refresh_period_s, cfg.stream_window_frames))
        self.name = name
        self._stream = Stream(name, self._store, self._objects.is_tracked)
        self._owns_worker = worker is None
        self._worker = worker or SemanticsWorker(model, self._store, generation=generation_config(cfg),
                                                 mode=cfg.semantics_mode, is_tracked=self._objects.is_tracked,
                                                 max_batch=cfg.max_batch)
        self._frame_size: tuple[int, int] | None = None  # of the latest frame: prompts are checked against it
        self._prompts = PromptQueue(self._objects.ids, lambda: self._frame_size)
        self._discoverer = Discoverer(cfg.discover_settings, period_s=cfg.discover_period_s,
                                      every_frames=cfg.discover_every_frames)
        self._sam_lock = threading.RLock()
        self._latest: tuple[np.ndarray, int, int] | None = None  # image, stamp, frame index
        self._frame_index = 0
        self._closed = False
        self._tracking_s = 0.0
        # depth images and CameraInfos fed by add_depth / add_camera_info (node and replay alike),
        # paired with frames by stamp (engine/depth.py); frames counted per outcome
        self._depth_pairing: DepthPairing = DepthPairing(int(cfg.depth_slop_ms * 1e6))
        self._depth_outcomes = dict.fromkeys(("depth", "no_depth", "no_camera_info", "bad_intrinsics"), 0)

    @classmethod
    def load(cls, spec: ModelSpec, config: PipelineConfig | None = None) -> "PerceptionPipeline":
        """Load the weights of `spec` (offline), then build the pipeline."""
        if config is not None:
            config.validate()
        return cls(spec.load(), config)

    @property
    def tracker(self) -> StreamingTracker | None:
        return self._objects.tracker

    def describe_setup(self) -> PipelineSetup | None:
        """Device, dtype and image encoder of the loaded model (None once closed)."""
        model = self.model
        if model is None:
            return None
        encoder = model.backbone.image_encoder
        return PipelineSetup(str(model.device), str(model.dtype).replace("torch.", ""),
                             f"{encoder.kind} on {encoder.provider}")

    # ----------------------------------------------------------------- prompts
    def submit_prompt(self, prompt: PromptRequest) -> PromptFuture:
        """Queue a prompt for the first processed frame with stamp >= prompt.stamp_ns (0: the next).

        Safe from any thread. Returns a future resolving to the PromptOutcome; `future.object_id` is
        known at once: an ADD without an id is named here (obj_1, obj_2, ... skipping ids tracked or
        queued), so every front end names the same objects alike. A prompt that cannot apply (bad
        numbers, outside the frames coming in, a duplicate ADD) comes back already refused, with why;
        so does every prompt after close().
        """
        return self._prompts.submit(prompt)

    def expire_held_prompts(self, now_s: float | None = None) -> list[PromptOutcome]:
        """Refuse prompts for a future stamp that waited longer than prompt_hold_s."""
        return self._prompts.expire(self.config.prompt_hold_s, now_s)

    def pending_prompts(self) -> list[PromptFuture]:
        """Prompts submitted and not yet applied (their frame has not come)."""
        return self._prompts.pending()

    def _apply_prompt(self, future: PromptFuture) -> PromptOutcome:
        request = future.request
        if future.done():  # refused at submission
            return future.result()
        if future.problem:
            return PromptOutcome(request.object_id, False, future.problem)
        try:
            if request.action == PromptAction.RESET_ALL:
                self._objects.reset()
            elif request.action == PromptAction.REMOVE:
                self._objects.remove(request.object_id)
            elif request.action == PromptAction.REFINE:
                self._objects.refine(request.object_id, future.visual, request.tasks)
            elif request.action == PromptAction.ADD:
                self._objects.add(request.object_id, future.visual, request.tasks)
            else:
                raise PromptError(f"unknown prompt action {int(request.action)}")
        except PamError as exc:
            return PromptOutcome(request.object_id, False, str(exc))
        return PromptOutcome(request.object_id, True)

    # ----------------------------------------------------------------- tracking
    def add_depth(self, depth: DepthImage) -> list:
        """A depth image aligned to the colour stream, for the frame with its stamp (any thread, any
        order: process() pairs it once the frame is tracked, so it has the tracking time to come).
        intrinsics None: the CameraInfo given to add_camera_info with its stamp (or the latest before).
        Returns the frames held by hold_frame that it settles (in order)."""
        return self._depth_pairing.add_depth(depth)

    def add_camera_info(self, stamp_ns: int, intrinsics: CameraIntrinsics) -> list:
        """A CameraInfo of the depth stream (unchecked here: a frame paired with an unusable one gets no
        geometry and says why). Returns the frames held by hold_frame that it settles (in order)."""
        return self._depth_pairing.add_camera_info(stamp_ns, intrinsics)

    def hold_frame(self, stamp_ns: int, item) -> list:
        """In-order input (bag replay): hold `item` (a colour frame of stamp_ns) until its depth and
        CameraInfo are settled; returns the items now settled, in order, each to be process()ed next."""
        return self._depth_pairing.hold(stamp_ns, item)

    def release_held_frames(self) -> list:
        """Every item still held by hold_frame (end of the input), in order."""
        return self._depth_pairing.flush()

    @property
    def frames_with_depth(self) -> int:
        return self._depth_outcomes["depth"]

    @property
    def frames_without_depth(self) -> int:
        """Frames that got no geometry for any reason (no depth image, no or unusable CameraInfo, wrong size)."""
        return sum(self._depth_outcomes.values()) - self._depth_outcomes["depth"]

    def process(self, image: np.ndarray, stamp_ns: int, depth: DepthImage | None | object = ...,
                encoding: ImageEncoding | None = None) -> FrameResult:
        """Track every object on one frame (HxWx3 uint8 RGB); apply the prompts due on it.

        With config.depth set, each object gets its geometry from `depth` (a DepthImage, or None for a
        frame without depth) or, when depth is not given, from the image add_depth() matched to stamp_ns.
        `encoding`: the frame's image-encoder output when the caller encoded it already (PerceptionHost
        batches several cameras' frames).
        """
        self._ensure_open()
        image = check_rgb_array(image)
        h, w = image.shape[:2]
        frame_index = self._frame_index
        t0 = time.perf_counter()
        with self._sam_lock:
            due = self._prompts.take_due(stamp_ns, (w, h))
            outcomes = [self._apply_prompt(f) for f in due]
            d0 = time.perf_counter()
            discovered = self._discoverer.run_due(
                self.model.backbone, image, frame_index, tracked=len(self._objects.ids()), queued=len(self._prompts),
                max_objects=self.config.max_objects, taken_masks=self._objects.latest_masks,
                submit_add=lambda box, tasks: self._prompts.submit(
                    PromptRequest(PromptAction.ADD, box=box, tasks=tasks, stamp_ns=stamp_ns)))
            discover_s = time.perf_counter() - d0
            if discovered:  # the regions' ADD prompts, due on this very frame
                found = self._prompts.take_due(stamp_ns, (w, h))
                due += found
                outcomes += [self._apply_prompt(f) for f in found]
            track = self._objects.tracker.step(image, stamp_ns=stamp_ns, encoding=encoding)
        self._tracking_s = time.perf_counter() - t0 - discover_s
        self._frame_size = (w, h)
        self._latest = (image, stamp_ns, frame_index)
        self._frame_index += 1
        resolved = []
        for future, outcome in zip(due, outcomes):
            if outcome.accepted:
                outcome = replace(outcome, frame_index=frame_index, stamp_ns=stamp_ns)
            future.resolve(outcome)
            resolved.append(future.result())
        Discoverer.finish(discovered, frame_index, stamp_ns)
        jobs = self._objects.schedule(track, time.monotonic())
        if jobs:  # together, so that the worker batches them
            for job in jobs:
                job.stream = self._stream
            self._worker.submit_many(jobs)
        geometries, has_depth, depth_error = self._geometry(track.objects, stamp_ns, (w, h), depth)
        objects = [ObjectResult(obj.object_id, float(obj.score), float(obj.object_score_logit),
                                TrackingState(int(obj.state)), int(obj.frames_lost), obj.mask,
                                tuple(obj.roi), int(obj.mask_area), mask_centroid(obj.mask),
                                self._store.get(obj.object_id), geometries.get(obj.object_id))
                   for obj in track.objects]
        self._objects.record(objects)
        return FrameResult(frame_index, stamp_ns, w, h, objects, self._tracking_s, resolved,
                           has_depth=has_depth, depth_error=depth_error)

    def _geometry(self, objects, stamp_ns: int, size_wh: tuple[int, int], depth) -> tuple[dict, bool, str]:
        """({object id: ObjectGeometry or None}, depth used, why the frame's depth was refused)."""
        settings = self.config.depth
        if settings is None:
            return {}, False, ""
        if depth is ...:
            paired = self._depth_pairing.take(stamp_ns)
        else:
            paired = with_intrinsics(depth, None) if depth is not None else FrameDepth(None)
        if paired.depth is None:
            self._depth_outcomes[paired.outcome] += 1
            return {}, False, paired.problem
        try:
            check_depth_size(paired.depth, size_wh)
            geometries = {obj.object_id: object_geometry(paired.depth, obj.mask, settings)
                          for obj in objects if obj.mask_area > 0}
        except DepthError as exc:
            self._depth_outcomes["no_depth"] += 1
            return {}, False, str(exc)
        self._depth_outcomes["depth"] += 1
        return geometries, True, ""

    # ----------------------------------------------------------------- discover
    def discover(self, request: DiscoverRequest = DiscoverRequest()) -> DiscoverFuture:
        """Segment everything on the next processed frame and track what is new (engine.discovery).

        Safe from any thread; the future resolves to a DiscoverOutcome once that frame is processed.
        """
        self._ensure_open()
        for task in request.tasks:
            canonical_task(task)
        return self._discoverer.queue.submit(request)

    # ----------------------------------------------------------------- semantics
    def request_refresh(self, object_id: str, tasks: Sequence[str] = ()) -> None:
        """Describe an object again on its next visible frame (tasks: default = the ones it had)."""
        self._ensure_open()
        for task in tasks:
            canonical_task(task)
        self._objects.request(object_id, tasks)

    def caption_async(self, object_id: str, task: str, max_new_tokens: int = 0,
                      on_text: Callable[[str, int], None] | None = None,
                      should_stop: Callable[[], bool] | None = None) -> Future:
        """One task's text for a tracked object on the semantics worker, after the work queued before
        it, streamed through on_text(text_so_far, num_tokens): a future of its GenerationResult (kept
        as the object's semantics unless stopped)."""
        self._ensure_open()
        canonical_task(task)
        frames = self._objects.frames(object_id)
        job = SemanticsJob(object_id, (task,), tuple(frames), kind="request", max_new_tokens=max_new_tokens,
                           on_text=on_text, should_stop=should_stop, stream=self._stream,
                           answer=lambda results: results[0])
        return self._worker.request(job)

    def caption(self, object_id: str, task: str, max_new_tokens: int = 0,
                on_text: Callable[[str, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> GenerationResult:
        """caption_async, waited for."""
        return self.caption_async(object_id, task, max_new_tokens, on_text, should_stop).result()

    def describe_async(self, image: np.ndarray | None, prompt: PromptRequest, tasks: Sequence[str],
                       max_new_tokens: int = 0, should_stop: Callable[[], bool] | None = None) -> Future:
        """One-shot: segment (or look up) one object and run `tasks` on it in one batched generation on
        the semantics worker (no tasks: segment only). Not added to tracking.

        image None = the latest processed frame. A prompt with only an object_id describes that
        tracked object from its kept features (no image encoding at all). The request is checked here
        (a PamError at once for a bad task, image or prompt); the future resolves to
        (ObjectResult, [GenerationResult]) or the error found while running.
        """
        self._ensure_open()
        check_tasks(tasks)
        frames, obj = self._describe_target(image, prompt)
        if not tasks:
            return _done(self._described(obj, frames[-1], []))
        job = SemanticsJob("", tuple(tasks), tuple(frames), kind="request", max_new_tokens=max_new_tokens,
                           should_stop=should_stop, store=False, stream=self._stream)
        job.answer = lambda results: self._described(obj, frames[-1], results)
        return self._worker.request(job)

    def describe(self, image: np.ndarray | None, prompt: PromptRequest, tasks: Sequence[str],
                 max_new_tokens: int = 0, should_stop: Callable[[], bool] | None = None,
                 ) -> tuple[ObjectResult, list[GenerationResult]]:
        """describe_async, waited for."""
        return self.describe_async(image, prompt, tasks, max_new_tokens, should_stop).result()

    def _describe_target(self, image: np.ndarray | None, prompt: PromptRequest) -> tuple[list, ObjectResult]:
        """The frames to describe and the object's result: a tracked object's, or a new segmentation."""
        if prompt.object_id and not prompt.points and prompt.box is None:
            if image is not None:
                raise PromptError("describe by object_id uses the tracked object's latest frame; "
                                  "send no image with it")
            frames = self._objects.frames(prompt.object_id)
            obj = self._objects.last(prompt.object_id)
            if obj is None:
                raise UnknownObjectError(f"object {prompt.object_id!r} has no result yet")
            return frames, obj
        if image is None:
            if self._latest is None:
                raise ImageError("no image given and no frame has been received yet")
            image, stamp, frame_index = self._latest
        else:
            image, stamp, frame_index = check_rgb_array(image), 0, -1
        visual = visual_prompt(prompt, (image.shape[1], image.shape[0]))
        with self._sam_lock:
            if self.model is None:
                raise EngineClosedError("the pipeline was closed")
            segmented = segment_object(self.model, image, visual, frame_index=frame_index, stamp_ns=stamp)
        return [segmented.features], segmented.as_result(prompt.object_id)

    @staticmethod
    def _described(obj: ObjectResult, latest, results: list[GenerationResult]) -> tuple:
        state = SemanticsState.READY if results else SemanticsState.NONE  # no tasks: segmented only
        sem = ObjectSemantics(state, latest.stamp_ns, latest.frame_index, {r.task: r.text for r in results})
        fill_named_fields(sem)
        obj.semantics = sem
        return obj, results

    # ----------------------------------------------------------------- queries
    def query_candidates(self, object_ids: Sequence[str] = ()) -> list[tuple[str, object, ObjectResult]]:
        """(id, latest features, latest result) of these tracked objects (empty: every object seen on a frame)."""
        self._ensure_open()
        return self._objects.candidates(object_ids)

    def find_objects(self, query: str, object_ids: Sequence[str] = (), *, max_results: int = 0,
                     min_score: float = 0.0) -> Future:
        """Rank tracked objects for a need: a Future of [RankedObject], best first.

        Every object in object_ids (empty = every tracked object seen on a frame) is asked
        config.affordance_question on its latest kept features, in one batched prefill on the
        semantics worker (never the tracking thread), ahead of queued semantics. QueryError /
        UnknownObjectError at once for an empty query, bad limits or an unknown id.
        """
        self._ensure_open()
        query = check_query(query, max_results, min_score)
        candidates = self._objects.candidates(object_ids)
        if not candidates:
            return _done([])
        template = self.config.affordance_question

        def ask(model) -> list[RankedObject]:
            answers = model.ask([features for _, features, _ in candidates], query, template=template)
            return rank(candidates, answers, max_results=max_results, min_score=min_score)

        return self._worker.call_first(ask)

    def rank_objects(self, query: str, object_ids: Sequence[str] = (), *, max_results: int = 0,
                     min_score: float = 0.0, timeout_s: float | None = None) -> list[RankedObject]:
        """find_objects, waited for (TimeoutError after timeout_s)."""
        return self.find_objects(query, object_ids, max_results=max_results, min_score=min_score).result(timeout_s)

    # ----------------------------------------------------------------- settings and status
    def update_settings(self, **values) -> None:
        """Change settings that apply live (LIVE_SETTINGS); ConfigError and no change when a value is invalid."""
        unknown = set(values) - set(LIVE_SETTINGS)
        if unknown:
            raise ConfigError(f"not a live setting: {', '.join(sorted(unknown))} (needs a new pipeline)")
        candidate = replace(self.config, **values)
        candidate.validate()
        self.config = candidate
        self._objects.set_refresh_period(candidate.refresh_period_s)
        self._discoverer.queue.period_s = float(candidate.discover_period_s)
        self._worker.max_batch = candidate.max_batch
        self._worker.generation = generation_config(candidate)

    def wait_semantics_idle(self, timeout_s: float | None = None) -> bool:
        return self._worker.wait_idle(timeout_s)

    def queue_position(self, future: Future) -> int | None:
        """Semantics work running or waiting before a request's future (describe_async, caption_async,
        find_objects); None once it runs or is done."""
        return self._worker.position(future)

    @property
    def frames_processed(self) -> int:
        return self._frame_index

    def object_ids(self) -> list[str]:
        """Objects tracked after the last processed frame (safe from any thread)."""
        return sorted(self._objects.ids())

    def semantics(self, object_id: str) -> ObjectSemantics:
        return self._store.get(object_id)

    def stats(self) -> dict:
        """Numbers for diagnostics (no host-device sync except the CUDA memory counters)."""
        worker = self._worker
        out = {
            "frames_processed": self._frame_index,
            "objects": len(self._objects.ids()),
            "tracking_seconds": self._tracking_s,
            "semantics_seconds": worker.last_batch_seconds,
            "semantics_batches": worker.batches,
            "semantics_last_batch_jobs": worker.last_batch_jobs,
            "semantics_max_batch": worker.max_batch,
            "semantics_memory_splits": worker.memory_splits,
            "semantics_queue": worker.pending(),
            "semantics_queue_bound": 2 * self.config.max_objects,
            "semantics_done": worker.jobs_done,
            "semantics_failed": worker.jobs_failed,
            "semantics_merged": worker.jobs_merged,
            "held_prompts": len(self._prompts),
            "discover_seconds": self._discoverer.last_seconds,
            "discover_runs": self._discoverer.runs,
            "discover_queue": len(self._discoverer.queue),
        }
        if self.config.depth is not None:
            out["frames_with_depth"] = self.frames_with_depth
            out["frames_without_depth"] = self.frames_without_depth
            out["frames_without_camera_info"] = self._depth_outcomes["no_camera_info"]
            out["frames_bad_intrinsics"] = self._depth_outcomes["bad_intrinsics"]
            out["depth_images_received"] = self._depth_pairing.depth_received
            out["camera_infos_received"] = self._depth_pairing.infos_received
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
        self._discoverer.close(f"not run: {reason}")
        self._objects.close()  # a shared worker drops this stream's queued jobs as no longer tracked
        if self._owns_worker:
            self._worker.close()
        self._store.clear()
        device = getattr(self.model, "device", None)
        with self._sam_lock:
            self.model = None
            self._objects.tracker = None
        gc.collect()
        if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def generation_config(config: PipelineConfig) -> GenerationConfig:
    """How the semantics worker decodes, from a pipeline's settings."""
    return GenerationConfig(config.max_new_tokens, config.greedy, config.temperature, config.top_p)


def _done(result) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future
