"""PerceptionPipeline: the one engine that every front end (ROS node, bag replay, CLI) drives.

It owns a StreamingTracker (masks, frame by frame) and a SemanticsWorker (words, asynchronously),
applies prompts on the frame they refer to, and turns the tracker's output into FrameResults that
carry each object's latest semantics. Front ends only translate its inputs and outputs.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pam_ros.engine.semantics import SemanticsJob, SemanticsStore, SemanticsWorker, fill_named_fields
from pam_ros.engine.tracker import FeatureHistory, FrameFeatures, StreamingTracker
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
from pam_ros.masks import mask_bbox_xywh
from pam_ros.model.tasks import canonical_task, is_video_task

log = logging.getLogger(__name__)

AUTO_ID_PREFIX = "obj_"  # ADD prompts without an object_id get obj_1, obj_2, ... (submit_prompt)


@dataclass
class ModelSpec:
    """Which weights to load and where: a model name, or explicit checkpoint paths."""

    name: str = ""  # a downloaded model ("PAM-1.5B", "PAM-3B") or "tiny" (built-in, random weights)
    sam2_config: str = ""  # packaged SAM 2.1 config name or YAML path
    sam2_checkpoint: str = ""  # official SAM 2.1 .pt
    pam_checkpoint: str = ""  # PAM Hugging Face folder
    device: str = "cpu"
    dtype: str = "float32"
    # SAM 2 input size; 0 = the config's (1024, what PAM was trained with). Smaller is faster
    # (e.g. 512 on small GPUs, 256 in CPU tests) but no longer the official PAM computation.
    image_size: int = 0
    # SAM 2's image encoder: "torch" or "onnxruntime" (an exported .onnx at image_encoder_onnx; empty =
    # exported once into the cache); compile: torch.compile encoder + memory attention (CUDA, off by default)
    image_encoder: str = "torch"
    image_encoder_onnx: str = ""
    compile: bool = False

    def resolve(self) -> tuple[str, str, str]:
        """(sam2_config, sam2_checkpoint, pam_dir) of this spec; ConfigError when unusable. Offline."""
        from pam_ros.model.pam import _check_device, parse_dtype
        from pam_ros.model.registry import resolve_model

        try:
            _check_device(self.device)
            parse_dtype(self.dtype)
        except PamError as exc:
            raise ConfigError(str(exc)) from None
        explicit = {"sam2_config": self.sam2_config, "sam2_checkpoint": self.sam2_checkpoint,
                    "pam_checkpoint": self.pam_checkpoint}
        if self.name:
            if any(explicit.values()):
                raise ConfigError("give either a model name or the three checkpoint paths "
                                  "(sam2_config, sam2_checkpoint, pam_checkpoint), not both")
            try:
                paths = resolve_model(self.name)
            except PamError as exc:
                raise ConfigError(str(exc)) from None
            return str(paths.sam2_config), str(paths.sam2_checkpoint), str(paths.pam_dir)
        missing = [k for k, v in explicit.items() if not v]
        if missing:
            raise ConfigError("no model selected: set `model` to a downloaded model name (e.g. PAM-1.5B after "
                              "`pam-ros download PAM-1.5B`, or `tiny` for the built-in test model) or give "
                              + ", ".join(missing))
        for key in ("sam2_checkpoint", "pam_checkpoint"):
            if not Path(explicit[key]).exists():
                raise ConfigError(f"{key} {explicit[key]!r} does not exist")
        if self.sam2_config.endswith((".yaml", ".yml")) and not Path(self.sam2_config).exists():
            raise ConfigError(f"sam2_config {self.sam2_config!r} does not exist")
        return self.sam2_config, self.sam2_checkpoint, self.pam_checkpoint

    def validate(self) -> None:
        if self.image_size and (self.image_size < 64 or self.image_size % 64):
            raise ConfigError(f"image_size must be 0 (the config's) or a multiple of 64, got {self.image_size}")
        from pam_ros.model.image_encoder import check_encoder_choice

        check_encoder_choice(self.image_encoder, self.image_encoder_onnx)
        self.resolve()


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

    def validate(self) -> None:
        for task in self.new_object_tasks:
            canonical_task(task)
        if self.max_objects < 1:
            raise ConfigError("max_objects must be >= 1")
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be >= 1")
        if self.semantics_mode not in ("async", "sync"):
            raise ConfigError("semantics_mode must be 'async' or 'sync'")
        if self.keep_feature_frames < 16:
            raise ConfigError("keep_feature_frames must be >= 16 (PAM's video mode reads 16 frames)")
        if self.stream_window_frames < 16:
            raise ConfigError("stream_window_frames must be >= 16 (PAM's video mode reads 16 frames)")
        if self.refresh_period_s < 0 or self.prompt_hold_s < 0:
            raise ConfigError("refresh_period_s and prompt_hold_s must be >= 0")


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


def _region(features):
    """tracker FrameFeatures -> the model's RegionFeatures."""
    from pam_ros.model.pam import RegionFeatures

    return RegionFeatures(features.mid_mask_tokens, features.mid_image_embed, features.frame_index)


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.mean()), float(ys.mean())) if xs.size else (0.0, 0.0)


@dataclass
class _HeldPrompt:
    prompt: PromptRequest
    received_s: float


class PerceptionPipeline:
    """Tracking + semantics for one camera stream.

    Threading: `process` (and prompt application) is called by one tracking thread. `describe`,
    `caption` and `request_refresh` may be called from any thread. The SAM 2 side is shared by the
    tracking thread and one-shot describes (one lock); the LLM by the semantics worker and callers of
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
        self._held: list[_HeldPrompt] = []
        self._held_lock = threading.Lock()
        self._auto_ids = itertools.count(1)  # numbers for ADDs without an id (never reused)
        self._sam_lock = threading.RLock()
        self._llm_lock = threading.Lock()
        self._state_lock = threading.Lock()  # guards the small dicts below
        self._latest: tuple[np.ndarray, int] | None = None
        self._last_objects: dict[str, ObjectResult] = {}
        self._last_refresh_s: dict[str, float] = {}
        self._wanted: dict[str, tuple[str, ...]] = {}  # object id -> tasks to run on its next visible frame
        self._windows: dict[str, _StreamWindow] = {}  # objects with a streaming video caption
        self._frame_index = 0
        self._closed = False
        self._tracking_s = 0.0

    @classmethod
    def load(cls, spec: ModelSpec, config: PipelineConfig | None = None) -> "PerceptionPipeline":
        """Resolve and load the weights of `spec` (offline), then build the pipeline."""
        from pam_ros.model.pam import PamModel

        if config is not None:
            config.validate()
        spec.validate()
        sam2_config, sam2_checkpoint, pam_dir = spec.resolve()
        overrides = {"image_size": spec.image_size} if spec.image_size else None
        model = PamModel.from_pretrained(pam_dir, sam2_config, sam2_checkpoint, device=spec.device,
                                         dtype=spec.dtype, sam2_overrides=overrides,
                                         image_encoder=spec.image_encoder,
                                         image_encoder_onnx=spec.image_encoder_onnx, compile=spec.compile)
        return cls(model, config)

    # ----------------------------------------------------------------- prompts
    def submit_prompt(self, prompt: PromptRequest) -> PromptRequest:
        """Queue a prompt for the first processed frame with stamp >= prompt.stamp_ns (0: the next).

        Returns the request as queued: an ADD without an object_id is named here, on submission
        (obj_1, obj_2, ... skipping ids tracked or queued), so a caller knows the id before the
        prompt is applied, and every front end (node, bag replay) names the same objects alike.
        """
        self._ensure_open()
        with self._state_lock:
            tracked = set(self._last_objects)
        with self._held_lock:
            if prompt.action == PromptAction.ADD and not prompt.object_id:
                taken = tracked | {held.prompt.object_id for held in self._held}
                prompt = replace(prompt, object_id=self._new_object_id(taken))
            self._held.append(_HeldPrompt(prompt, time.monotonic()))
        return prompt

    def _new_object_id(self, taken: set[str]) -> str:
        while True:
            candidate = f"{AUTO_ID_PREFIX}{next(self._auto_ids)}"
            if candidate not in taken:
                return candidate

    def expire_held_prompts(self, now_s: float | None = None) -> list[PromptOutcome]:
        """Refuse prompts for a future stamp that waited longer than prompt_hold_s."""
        now_s = time.monotonic() if now_s is None else now_s
        expired: list[PromptOutcome] = []
        with self._held_lock:
            keep = []
            for held in self._held:
                if held.prompt.stamp_ns and now_s - held.received_s > self.config.prompt_hold_s:
                    expired.append(PromptOutcome(
                        held.prompt.object_id, False,
                        f"no frame with stamp >= {held.prompt.stamp_ns} ns arrived within "
                        f"{self.config.prompt_hold_s:.1f} s; prompt dropped"))
                else:
                    keep.append(held)
            self._held = keep
        return expired

    def _take_due_prompts(self, stamp_ns: int) -> list[PromptRequest]:
        with self._held_lock:
            due = [h.prompt for h in self._held if h.prompt.stamp_ns <= stamp_ns]
            self._held = [h for h in self._held if h.prompt.stamp_ns > stamp_ns]
        return due

    def _apply_prompt(self, prompt: PromptRequest, size_wh: tuple[int, int]) -> PromptOutcome:
        frame = self._frame_index
        try:
            if prompt.action == PromptAction.RESET_ALL:
                self.tracker.reset()
                with self._state_lock:
                    for oid in list(self._last_objects):
                        self._forget(oid)
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
            tasks = tuple(canonical_task(t) for t in (prompt.tasks or self.config.new_object_tasks))
            streamed = tuple(t for t in tasks if t.startswith("video_stream_caption"))
            with self._state_lock:
                # Video tasks need a track, not one frame: the streaming caption runs per window,
                # a plain video caption once the track holds enough frames.
                self._wanted[oid] = tuple(t for t in tasks if not is_video_task(t))
                self._windows.pop(oid, None)
                if streamed or any(is_video_task(t) for t in tasks):
                    self._windows[oid] = _StreamWindow(tuple(t for t in tasks if is_video_task(t)),
                                                       self.config.stream_window_frames)
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
        for table in (self._last_objects, self._last_refresh_s, self._wanted, self._windows):
            table.pop(object_id, None)

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
            outcomes = [self._apply_prompt(p, (w, h)) for p in self._take_due_prompts(stamp_ns)]
            track = self.tracker.step(image, stamp_ns=stamp_ns)
        self._tracking_s = time.perf_counter() - t0
        self._latest = (image, stamp_ns)
        frame_index = self._frame_index
        self._frame_index += 1
        # Prompts that only failed against this frame (the tracker dropped them): report them.
        rejected = dict(track.rejected_prompts)
        if rejected:
            outcomes = [PromptOutcome(o.object_id, False, rejected[o.object_id])
                        if o.accepted and o.object_id in rejected else o for o in outcomes]
            with self._state_lock:
                for oid in rejected:
                    if oid not in self.tracker.object_ids:
                        self._forget(oid)
        self._queue_semantics(track, stamp_ns, frame_index)
        objects = []
        with self._state_lock:
            for obj in track.objects:
                result = ObjectResult(obj.object_id, float(obj.score), float(obj.object_score_logit),
                                      TrackingState(int(obj.state)), int(obj.frames_lost), obj.mask,
                                      tuple(obj.roi), int(obj.mask_area), _centroid(obj.mask),
                                      self._store.get(obj.object_id))
                self._last_objects[obj.object_id] = result
                objects.append(result)
        return FrameResult(frame_index, stamp_ns, w, h, objects, self._tracking_s, outcomes)

    def _queue_semantics(self, track, stamp_ns: int, frame_index: int) -> None:
        now = time.monotonic()
        period = self.config.refresh_period_s
        for obj in track.objects:
            oid = obj.object_id
            with self._state_lock:
                window = self._windows.get(oid)
                due = window.add(obj.features) if window is not None else None
                if window is not None and window.done:
                    del self._windows[oid]
            if due is not None:
                tasks, frames = due
                self._worker.submit(SemanticsJob(oid, tasks, frames, frames[-1].stamp_ns,
                                                 frames[-1].frame_index, self.config.max_new_tokens))
            with self._state_lock:
                tasks = self._wanted.pop(oid, None)
                if tasks is None and period > 0 and now - self._last_refresh_s.get(oid, now) >= period:
                    tasks = tuple(self._store.get(oid).texts) or self.config.new_object_tasks
                if tasks and TrackingState(int(obj.state)) == TrackingState.LOST:
                    self._wanted[oid] = tasks  # describe it when it is visible again
                    continue
                if not tasks:
                    continue
                self._last_refresh_s[oid] = now
            self._submit(oid, tasks, self.config.max_new_tokens)

    def _submit(self, object_id: str, tasks: Sequence[str], max_new_tokens: int):
        frames = self.tracker.features(object_id)
        latest = frames[-1]
        job = SemanticsJob(object_id, tuple(tasks), frames, latest.stamp_ns, latest.frame_index,
                           max_new_tokens)
        return self._worker.submit(job)

    def _stream_history(self, object_id: str, task: str) -> str | None:
        """PAM's streaming caption: the previous window's caption of this object is the history."""
        canonical = canonical_task(task)
        if not canonical.startswith("video_stream_caption"):
            return None
        return self._store.get(object_id).texts.get(canonical)

    # ----------------------------------------------------------------- semantics
    def _run_task(self, frames, task: str, max_new_tokens: int, *, on_text=None, should_stop=None,
                  history=None, object_id: str = "") -> GenerationResult:
        """One task on an object's kept frames: image tasks read the latest, video tasks the track."""
        cfg = self.config
        canonical = canonical_task(task)
        if history is None and object_id:
            history = self._stream_history(object_id, canonical)
        video = is_video_task(canonical)
        regions = [_region(f) for f in frames] if video else _region(frames[-1])
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
            self._wanted[object_id] = tuple(tasks) or tuple(self._store.get(object_id).texts) \
                or self.config.new_object_tasks

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
                dec = self.model.segment(self.model.encode_image(image), [visual])
            mask = (dec.mask_logits[0, 0] > 0).cpu().numpy()
            logit = float(dec.object_score_logits[0, 0])
            # shaped like the tracker's per-frame features, so _run_task reads both alike
            frames = [FrameFeatures(frame_index, stamp, dec.mid_mask_tokens[0], dec.mid_image_embed[0], logit)]
            area = int(mask.sum())
            present = logit > 0 and area > 0
            obj = ObjectResult(prompt.object_id, float(1 / (1 + np.exp(-logit))), logit,
                               TrackingState.PROMPTED if present else TrackingState.LOST, 0, mask,
                               mask_bbox_xywh(mask), area, _centroid(mask))
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
    def latest_frame(self) -> tuple[np.ndarray, int] | None:
        return self._latest

    @property
    def frames_processed(self) -> int:
        return self._frame_index

    def object_ids(self) -> list[str]:
        return list(self.tracker.object_ids) if self.tracker is not None else []

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
            "semantics_done": self._worker.jobs_done,
            "semantics_failed": self._worker.jobs_failed,
            "held_prompts": len(self._held),
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

    def close(self) -> None:
        """Stop the worker and drop the model, freeing GPU memory."""
        if self._closed:
            return
        self._closed = True
        self._worker.close()
        self._store.clear()
        device = getattr(self.model, "device", None)
        with self._sam_lock, self._llm_lock:
            self.model = None
            self.tracker = None
        import gc

        gc.collect()
        if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


class _StreamWindow:
    """Frames of one object's track since its last video caption, thinned to at most 16 kept."""

    def __init__(self, tasks: tuple[str, ...], window_frames: int) -> None:
        self.tasks = tasks
        self.window_frames = window_frames
        self._frames = FeatureHistory(16)
        self._count = 0

    def add(self, features) -> tuple[tuple[str, ...], list] | None:
        """Add a frame; when the window is full, return (tasks, its 16 frames) and start a new one.

        A plain video_caption runs once, on the first full window; the streaming caption on every one.
        """
        self._frames.add(features)
        self._count += 1
        if self._count < self.window_frames or len(self._frames) < 16:
            return None
        frames = self._frames.frames()
        tasks = self.tasks
        self.tasks = tuple(t for t in tasks if t.startswith("video_stream_caption"))
        self._frames = FeatureHistory(16)
        self._count = 0
        return (tasks, frames) if tasks else None

    @property
    def done(self) -> bool:
        return not self.tasks
