"""The node's services: per camera describe, manage_objects and discover (NodeServices); find_objects once
per node (FindObjectsService: the objects of every camera).

Each handler uses the pipeline under one pipeline_lease() (ros/lease.py): while the node is not active the
request is answered "not active (lifecycle state: ...)" at once; a PamError is the user's ("<service>
refused: why", also logged, throttled); anything else is a bug, answered "<service> failed" and logged with
its traceback. Services exist in every lifecycle state, each in its own callback group (a long describe never
holds up manage_objects).
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
import traceback
from dataclasses import replace
from typing import Callable

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

from pam_ros.engine.discovery import DiscoverRequest
from pam_ros.errors import EngineClosedError, PamError
from pam_ros.ros import convert
from pam_ros.ros.lease import NodeInactiveError, PipelineHolder
from pam_ros.ros.planning import answer_find_objects
from pam_ros.ros.reporting import Reporter, error_text
from pam_ros.srv import Describe, Discover, FindObjects, ManageObjects

DEFAULT_DESCRIBE_TASKS = ("explain", "caption")
DISCOVER_EXTRA_S = 60.0  # discover waits request_timeout_s for a frame plus this for the generator itself
STOP_POLL_S = 0.1  # how often a waiting request checks whether the node is deactivating


def submit_prompt(pipeline, request, source: str, reporter: Reporter):
    """Hand a prompt to the engine's queue; its future. One refused at once (duplicate id) is logged now."""
    future = pipeline.submit_prompt(replace(request, source=source))
    if future.done():
        reporter.outcome(future.result())
    return future


def result_within(future, timeout_s: float, stopping: threading.Event):
    """future.result() within timeout_s (TimeoutError after), cut short when the node deactivates."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return future.result(timeout=min(STOP_POLL_S, max(deadline - time.monotonic(), 0.0)))
        except concurrent.futures.TimeoutError:
            if time.monotonic() >= deadline:
                raise
        if stopping.is_set() and future.cancel():
            raise EngineClosedError("the node was deactivated before the request ran")


def leased(what: str, response, work: Callable, holder, reporter: Reporter, logger):
    """work(pipeline) under a pipeline lease; its result, or None once `response` says why it failed."""
    try:
        with holder.pipeline_lease() as pipeline:
            return work(pipeline)
    except NodeInactiveError as error:
        response.success, response.message = False, str(error)
    except PamError as error:
        response.success, response.message = False, f"{what} refused: {error_text(error)}"
        reporter.bad_input(response.message)
    except Exception as error:  # noqa: BLE001 - a bug: answered, and logged with its traceback
        response.success, response.message = False, f"{what} failed: {error}"
        logger.error(f"{what} failed:\n{traceback.format_exc()}")
    return None


class NodeServices:
    """Creates one camera's three services on `node`, named `prefix` + name ("" or "front/"); `holder` gives
    that camera's pipeline (CameraHolder), `frames` is its CameraFeed (the latest frame's header and size)."""

    def __init__(self, node, holder: PipelineHolder, settings: Callable, frames, reporter: Reporter,
                 image_topic: Callable[[], str], prefix: str = "") -> None:
        self._node = node
        self._holder = holder
        self._settings = settings
        self._frames = frames
        self._reporter = reporter
        self._image_topic = image_topic  # the resolved input topic, for "is anything publishing on ...?"
        self._prefix = prefix  # names the camera in prompt outcomes ("front/manage_objects")
        self._services = [node.create_service(srv_type, prefix + name, handler,
                                              callback_group=MutuallyExclusiveCallbackGroup())
                          for srv_type, name, handler in ((Describe, "describe", self.describe),
                                                          (ManageObjects, "manage_objects", self.manage_objects),
                                                          (Discover, "discover", self.discover))]

    def destroy(self) -> None:
        for service in self._services:
            self._node.destroy_service(service)
        self._services = []

    def _leased(self, what: str, response, work: Callable):
        return leased(what, response, work, self._holder, self._reporter, self._node.get_logger())

    # ------------------------------------------------------------------ describe
    def describe(self, request: Describe.Request, response: Describe.Response) -> Describe.Response:
        """One-shot describe on the semantics worker; answered within request_timeout_s."""
        self._leased("describe", response, lambda pipeline: self._describe(pipeline, request, response))
        return response

    def _describe(self, pipeline, request: Describe.Request, response: Describe.Response) -> Describe.Response:
        settings = self._settings()
        timeout_s = float(settings.request_timeout_s)
        gave_up = threading.Event()
        stopping = self._holder.stopping
        has_image = not convert.is_empty_image(request.image)
        image = convert.image_msg_to_rgb(request.image) if has_image else None
        prompt = convert.describe_prompt_from_msg(request.prompt, has_image)
        tasks = [t.strip() for t in request.tasks if t.strip()] or list(DEFAULT_DESCRIBE_TASKS)
        header = request.image.header if has_image else self._frames.latest_header
        future = pipeline.describe_async(image, prompt, tasks, int(request.max_new_tokens),
                                         should_stop=lambda: gave_up.is_set() or stopping.is_set())
        try:
            obj, generations = result_within(future, timeout_s, stopping)
        except concurrent.futures.TimeoutError:
            gave_up.set()  # a running generation stops at its next token; a queued one never starts
            future.cancel()
            response.success = False
            response.message = (f"describe timed out after {timeout_s:g} s (request_timeout_s): the language "
                                f"model is busy with {max(pipeline.stats()['semantics_queue'] - 1, 0)} other "
                                "job(s); try again or raise request_timeout_s")
            self._reporter.bad_input(response.message)
            return response
        response.object = convert.object_result_to_msg(obj, header, settings.mask_encoding)
        response.texts = [g.text for g in generations]
        response.success = True
        response.message = f"described {obj.object_id or 'the prompted object'}: {', '.join(tasks)}"
        return response

    # ------------------------------------------------------------------ manage_objects
    def manage_objects(self, request: ManageObjects.Request,
                       response: ManageObjects.Response) -> ManageObjects.Response:
        """Queue the prompts at once (each gets its id and a status); with wait, wait for them to apply."""
        count = len(request.prompts)
        futures: list = []
        errors: list[str] = []
        try:
            # Leased while submitting only: the wait below must not hold up a deactivation.
            with self._holder.pipeline_lease() as pipeline:
                if not request.prompts:
                    response.success, response.message = False, "no prompts given"
                    return response
                for msg in request.prompts:
                    try:
                        futures.append(submit_prompt(pipeline, convert.prompt_msg_to_request(msg),
                                                     self._prefix + "manage_objects", self._reporter))
                        errors.append("")
                    except PamError as error:
                        futures.append(None)
                        errors.append(str(error))
        except NodeInactiveError as error:
            response.success, response.message = False, str(error)
            response.object_ids, response.errors = [""] * count, [response.message] * count
            response.status = [ManageObjects.Response.REFUSED] * count
            return response
        timeout_s = float(self._settings().request_timeout_s)
        if request.wait:
            concurrent.futures.wait([f for f in futures if f is not None], timeout=timeout_s)
        object_ids, status = [], []
        for index, future in enumerate(futures):
            if future is None or (future.done() and not future.result().accepted):
                errors[index] = errors[index] or future.result().error or "refused"
                object_ids.append("")
                status.append(ManageObjects.Response.REFUSED)
            elif future.done():
                object_ids.append(future.result().object_id or future.object_id)
                status.append(ManageObjects.Response.APPLIED)
            else:
                object_ids.append(future.object_id)
                status.append(ManageObjects.Response.QUEUED)
        refused = [f"prompt {i}: {e}" for i, e in enumerate(errors) if e]
        response.object_ids, response.errors, response.status = object_ids, errors, status
        response.success = not refused
        queued = status.count(ManageObjects.Response.QUEUED)
        applied = status.count(ManageObjects.Response.APPLIED)
        summary = f"{applied} applied, {queued} queued"
        if queued and request.wait:
            summary += (f" (not applied within {timeout_s:g} s: no image was processed; is anything publishing on "
                        f"{self._image_topic()}? They stay queued for their frame)")
        response.message = summary if not refused else (
            f"{summary}, {len(refused)} of {count} refused: " + "; ".join(refused))
        if refused:
            self._reporter.bad_input(f"manage_objects: {response.message}")
        return response

    # ------------------------------------------------------------------ discover
    def discover(self, request: Discover.Request, response: Discover.Response) -> Discover.Response:
        tasks = tuple(t.strip() for t in request.tasks if t.strip())
        discover = DiscoverRequest(int(request.max_new_objects), int(request.min_area), tasks)
        # Leased while submitting only: the request runs on the tracking thread's next frame.
        future = self._leased("discover", response, lambda pipeline: pipeline.discover(discover))
        if future is None:
            return response
        timeout_s = float(self._settings().request_timeout_s) + DISCOVER_EXTRA_S
        try:
            outcome = future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            response.success = False
            response.message = (f"no frame was processed within {timeout_s:g} s (is anything publishing on "
                                f"{self._image_topic()}?); the request stays queued")
            return response
        response.success, response.message = outcome.accepted, outcome.message
        response.object_ids = list(outcome.object_ids)
        if not outcome.accepted:
            self._reporter.bad_input(f"discover: {outcome.message}")
        return response


class FindObjectsService:
    """`find_objects` on `node`: ranks the objects of the node's engine, a PerceptionPipeline (object ids as
    given) or a PerceptionHost (ids "camera/id"; each match names its camera). `frame_id(camera)` is the
    frame of that camera's latest image."""

    def __init__(self, node, holder: PipelineHolder, settings: Callable, frame_id: Callable[[str], str],
                 reporter: Reporter) -> None:
        self._node = node
        self._holder = holder
        self._settings = settings
        self._frame_id = frame_id
        self._reporter = reporter
        node.create_service(FindObjects, "find_objects", self.find_objects,
                            callback_group=MutuallyExclusiveCallbackGroup())

    def find_objects(self, request: FindObjects.Request, response: FindObjects.Response) -> FindObjects.Response:
        settings = self._settings()
        leased("find_objects", response, lambda engine: answer_find_objects(
            engine, request, response, timeout_s=float(settings.request_timeout_s),
            frame_id=self._frame_id, mask_encoding=settings.mask_encoding),
            self._holder, self._reporter, self._node.get_logger())
        return response
