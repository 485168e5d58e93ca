"""Who may use the pipeline now: the node hands it in on activate and takes it back on deactivate; every
request (service, action goal, topic prompt) holds a lease while it uses it.

Leases are counted so that taking the pipeline back waits for the requests still using it before the model
is freed. While the node is not active (or is stopping) a lease is refused with NodeInactiveError, whose
message says the lifecycle state and how to activate the node.

What is held is the node's engine: a PerceptionPipeline (one camera) or a PerceptionHost (parameter
`cameras`). A camera's services and action use it through a CameraHolder, whose leases give that camera's
pipeline, so they are the same code in both modes.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

from pam_ros.errors import PamError


class NodeInactiveError(PamError):
    """A request arrived while the node was not active."""


class PipelineHolder:
    def __init__(self, inactive_message: Callable[[], str]) -> None:
        self._inactive_message = inactive_message
        self._condition = threading.Condition()
        self._pipeline = None
        self._users = 0
        self.stopping = threading.Event()  # set while deactivating: running requests stop, new ones are refused

    @property
    def pipeline(self):
        """The pipeline for a look without a lease (diagnostics, goal checks); None while inactive."""
        return self._pipeline

    @property
    def active(self) -> bool:
        return self._pipeline is not None and not self.stopping.is_set()

    def inactive_message(self) -> str:
        return self._inactive_message()

    def hand_in(self, pipeline) -> None:
        with self._condition:
            self.stopping.clear()
            self._pipeline = pipeline

    def take_back(self, timeout_s: float) -> tuple[object, bool]:
        """(the pipeline or None, whether its users finished within timeout_s). No new lease from here on."""
        with self._condition:
            pipeline, self._pipeline = self._pipeline, None
            finished = self._condition.wait_for(lambda: self._users == 0, timeout=timeout_s)
        return pipeline, finished

    @contextlib.contextmanager
    def pipeline_lease(self) -> Iterator:
        """The pipeline, held until the block ends; NodeInactiveError while the node is not active."""
        with self._condition:
            if self._pipeline is None or self.stopping.is_set():
                raise NodeInactiveError(self._inactive_message())
            self._users += 1
            pipeline = self._pipeline
        try:
            yield pipeline
        finally:
            with self._condition:
                self._users -= 1
                self._condition.notify_all()


def camera_pipeline(engine, camera: str):
    """The pipeline of `camera` in the node's engine: the PerceptionPipeline itself in single-camera mode
    (camera ""), else the host's pipeline of that camera."""
    return engine if camera == "" else engine.camera(camera)


class CameraHolder:
    """One camera's view of the PipelineHolder: the same leases and state, giving that camera's pipeline."""

    def __init__(self, holder: PipelineHolder, camera: str) -> None:
        self._holder = holder
        self._camera = camera
        self.stopping = holder.stopping

    @property
    def pipeline(self):
        engine = self._holder.pipeline
        return None if engine is None else camera_pipeline(engine, self._camera)

    @property
    def active(self) -> bool:
        return self._holder.active

    def inactive_message(self) -> str:
        return self._holder.inactive_message()

    @contextlib.contextmanager
    def pipeline_lease(self) -> Iterator:
        with self._holder.pipeline_lease() as engine:
            yield camera_pipeline(engine, self._camera)
