"""Several cameras over one model: one PamModel in memory, one semantics worker, a pipeline per camera.

A robot's head and wrist cameras each get their own PerceptionPipeline (tracker, prompt queue, scheduler,
latest frame; object ids are per camera, so `front`'s obj_1 and `wrist`'s obj_1 are two objects), but all
of them share the model's weights and the worker that owns the language model, so the objects of every
camera share its batches and a planner's query ranks them together. A single camera keeps using
PerceptionPipeline alone, as before.

    host = PerceptionHost.load(ModelSpec(name="PAM-1.5B"), ["front", "wrist"], config)
    host["front"].submit_prompt(PromptRequest(box=(...)))
    result = host["front"].process(rgb, stamp_ns)            # each camera from its own tracking loop
    matches = host.find_objects("cutting paper").result()     # RankedObject.camera names the camera
"""
from __future__ import annotations

import re
from concurrent.futures import Future
from dataclasses import replace
from typing import Sequence

import numpy as np

from pam_ros.engine.affordance import RankedObject, check_query, rank
from pam_ros.engine.pipeline import PerceptionPipeline, PipelineConfig, generation_config
from pam_ros.engine.semantics import SemanticsStore, SemanticsWorker
from pam_ros.engine.types import FrameResult
from pam_ros.errors import ConfigError, PamError, UnknownCameraError, UnknownObjectError
from pam_ros.model.image_input import check_rgb_array
from pam_ros.model.selection import ModelSpec

# a camera name becomes a ROS name part (N/image, N/objects): letters, digits and underscores
CAMERA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def check_camera_names(cameras: Sequence[str]) -> tuple[str, ...]:
    """The camera names, checked: at least one, none empty or duplicate, each a valid ROS name part."""
    names = tuple(cameras)
    if not names:
        raise ConfigError("cameras: give at least one camera name")
    for name in names:
        if not isinstance(name, str) or not CAMERA_NAME.fullmatch(name):
            raise ConfigError(f"cameras: {name!r} is not a camera name (a letter, then letters, digits or _)")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"cameras: {', '.join(duplicates)} named more than once")
    return names


class PerceptionHost:
    """Per-camera pipelines over one model and one semantics worker (see the module docstring)."""

    def __init__(self, model, cameras: Sequence[str], config: PipelineConfig | None = None) -> None:
        names = check_camera_names(cameras)
        config = config or PipelineConfig()
        config.validate()
        self.model = model
        self._worker = SemanticsWorker(model, SemanticsStore(), generation=generation_config(config),
                                       mode=config.semantics_mode, max_batch=config.max_batch)
        self._pipelines = {name: PerceptionPipeline(model, replace(config), worker=self._worker, name=name)
                           for name in names}

    @classmethod
    def load(cls, spec: ModelSpec, cameras: Sequence[str], config: PipelineConfig | None = None) -> "PerceptionHost":
        """Check the camera names and settings, then load the weights of `spec` once (offline)."""
        check_camera_names(cameras)
        if config is not None:
            config.validate()
        return cls(spec.load(), cameras, config)

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self._pipelines)

    def camera(self, name: str) -> PerceptionPipeline:
        """The pipeline of one camera (UnknownCameraError lists the cameras)."""
        try:
            return self._pipelines[name]
        except KeyError:
            raise UnknownCameraError(f"unknown camera {name!r} (cameras: {', '.join(self._pipelines)})") from None

    __getitem__ = camera

    def find_objects(self, query: str, object_ids: Sequence[str] = (), *, max_results: int = 0,
                     min_score: float = 0.0) -> Future:
        """Rank the objects of every camera for a need, in one batched prefill ahead of queued semantics:
        a Future of [RankedObject], best first, each naming its camera. object_ids: "camera/id" names
        (empty = every object seen on a frame)."""
        query = check_query(query, max_results, min_score)
        wanted: dict[str, list[str]] = {}
        for qualified in (oid.strip() for oid in object_ids if oid.strip()):
            camera, _, object_id = qualified.partition("/")
            if not object_id:
                raise UnknownObjectError(f"{qualified!r}: name an object of a camera as camera/id "
                                         f"(cameras: {', '.join(self._pipelines)})")
            self.camera(camera)
            wanted.setdefault(camera, []).append(object_id)
        candidates, cameras = [], []
        for name, pipeline in self._pipelines.items():
            if wanted and name not in wanted:
                continue
            found = pipeline.query_candidates(wanted.get(name, ()))
            candidates += found
            cameras += [name] * len(found)
        if not candidates:
            done: Future = Future()
            done.set_result([])
            return done
        template = next(iter(self._pipelines.values())).config.affordance_question

        def ask(model) -> list[RankedObject]:
            answers = model.ask([features for _, features, _ in candidates], query, template=template)
            return rank(candidates, answers, max_results=max_results, min_score=min_score, cameras=cameras)

        return self._worker.call_first(ask)

    def process_frames(self, frames: Sequence[tuple[str, np.ndarray, int]]) -> list[FrameResult | PamError]:
        """Track one frame of each of several cameras: [(camera, HxWx3 RGB, stamp_ns)] in, one entry per
        frame out, in order: its FrameResult, or the PamError that refused it (one camera's bad frame never
        costs another its result). The frames share image-encoder calls (Sam2Backbone.encode_images): every
        frame is resized to the same square input, so frames of any sizes batch together."""
        for camera, _, _ in frames:
            self.camera(camera)
        results: list[FrameResult | PamError | None] = [None] * len(frames)
        usable = []
        for index, (_, image, _) in enumerate(frames):
            try:
                check_rgb_array(image)
                usable.append(index)
            except PamError as error:
                results[index] = error
        encodings = [None] * len(usable)
        if len(usable) > 1 and self.model is not None:
            encodings = self.model.backbone.encode_images([frames[index][1] for index in usable])
        for index, encoding in zip(usable, encodings):
            camera, image, stamp_ns = frames[index]
            try:
                results[index] = self._pipelines[camera].process(image, stamp_ns, encoding=encoding)
            except PamError as error:
                results[index] = error
        return results

    def wait_semantics_idle(self, timeout_s: float | None = None) -> bool:
        return self._worker.wait_idle(timeout_s)

    def stats(self) -> dict:
        """{"cameras": {name: that pipeline's stats}, "model": the shared worker's and device's numbers}."""
        per_camera = {name: pipeline.stats() for name, pipeline in self._pipelines.items()}
        shared_keys = [key for key in next(iter(per_camera.values())) if key.startswith(("semantics_", "gpu_"))]
        shared = {key: next(iter(per_camera.values()))[key] for key in shared_keys}
        setup = next(iter(self._pipelines.values())).describe_setup()
        if setup is not None:
            shared.update(device=setup.device, dtype=setup.dtype, image_encoder=setup.image_encoder)
        return {"cameras": per_camera, "model": shared}

    def close(self, reason: str = "the host was closed") -> None:
        """Close every camera's pipeline, then the shared worker; the model's memory is freed."""
        for pipeline in self._pipelines.values():
            pipeline.close(reason)
        self._worker.close()
        self.model = None
