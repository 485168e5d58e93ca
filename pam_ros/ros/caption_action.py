"""The `caption` action: one object's text streamed token by token, on the semantics worker.

Goals are checked when they arrive (rejected while the node is not active, for an unknown object or task)
and then run on the worker one at a time with every other generation, in arrival order. While a goal waits
its feedback is "queued" with queue_position: the work running or waiting before it, as the worker counts
it (PerceptionPipeline.queue_position); then "running" with the text so far. Cancel works queued (the goal
never runs) or running (the generation stops at its next token); deactivating the node stops both.
"""
from __future__ import annotations

import concurrent.futures
import traceback

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup

from pam_ros.action import Caption
from pam_ros.errors import PamError
from pam_ros.model.tasks import canonical_task
from pam_ros.ros import convert
from pam_ros.ros.lease import NodeInactiveError, PipelineHolder
from pam_ros.ros.reporting import Reporter, error_text

DEFAULT_CAPTION_TASK = "caption"
POLL_S = 0.1  # how often a queued goal checks for cancellation and its queue position


class CaptionAction:
    """One camera's action server on `node`, named `prefix` + "caption" ("" or "front/"); `holder` gives that
    camera's pipeline (CameraHolder)."""

    def __init__(self, node, holder: PipelineHolder, reporter: Reporter, prefix: str = "") -> None:
        self._node = node
        self._holder = holder
        self._reporter = reporter
        # Reentrant: a goal's acceptance and cancel are answered while another goal runs.
        self._server = ActionServer(node, Caption, prefix + "caption", execute_callback=self._execute,
                                    goal_callback=self._accept,
                                    cancel_callback=lambda goal_handle: CancelResponse.ACCEPT,
                                    callback_group=ReentrantCallbackGroup())

    def destroy(self) -> None:
        self._server.destroy()

    def _accept(self, goal: Caption.Goal) -> GoalResponse:
        """Reject at once what cannot run: node not active, unknown object, unknown task."""
        pipeline = self._holder.pipeline
        reason = ""
        if not self._holder.active:
            reason = self._holder.inactive_message()
        else:
            try:
                canonical_task(goal.task.strip() or DEFAULT_CAPTION_TASK)
                object_id = goal.object_id.strip()
                if object_id and object_id not in pipeline.object_ids():
                    known = ", ".join(pipeline.object_ids()) or "none"
                    reason = f"unknown object id {object_id!r} (tracked: {known})"
            except PamError as error:
                reason = str(error)
        if reason:
            self._reporter.bad_input(f"caption goal rejected: {reason}")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _execute(self, goal_handle) -> Caption.Result:
        try:
            with self._holder.pipeline_lease() as pipeline:
                return self._run(pipeline, goal_handle)
        except NodeInactiveError as error:
            goal_handle.abort()
            return Caption.Result(success=False, message=str(error))

    def _run(self, pipeline, goal_handle) -> Caption.Result:
        goal = goal_handle.request
        task = goal.task.strip() or DEFAULT_CAPTION_TASK
        stopping = self._holder.stopping

        def publish_text(text: str, num_tokens: int) -> None:
            goal_handle.publish_feedback(Caption.Feedback(status="running", text=text, num_tokens=int(num_tokens)))

        def should_stop() -> bool:
            return goal_handle.is_cancel_requested or stopping.is_set()

        try:
            if goal.object_id.strip():
                future = pipeline.caption_async(goal.object_id.strip(), task, int(goal.max_new_tokens),
                                                on_text=publish_text, should_stop=should_stop)
            else:
                # A prompt on the latest frame: one-shot describe, the whole text as one feedback.
                prompt = convert.describe_prompt_from_msg(goal.prompt, has_image=False)
                future = pipeline.describe_async(None, prompt, [task], int(goal.max_new_tokens),
                                                 should_stop=should_stop)
            generation = self._wait(pipeline, goal_handle, future)
            if generation is None:  # cancelled or stopped while queued
                if goal_handle.is_cancel_requested:
                    goal_handle.canceled()
                    return Caption.Result(success=False, message="cancelled by the client while queued")
                goal_handle.abort()
                return Caption.Result(success=False, message="stopped while queued: the node was deactivated")
            if not goal.object_id.strip():
                generation = generation[1][0]
                publish_text(generation.text, len(generation.token_ids))
        except PamError as error:
            self._reporter.bad_input(f"caption refused: {error_text(error)}")
            goal_handle.abort()
            return Caption.Result(success=False, message=f"caption refused: {error_text(error)}")
        except Exception as error:  # noqa: BLE001 - a bug: the goal ends, and it is logged with its traceback
            self._node.get_logger().error(f"caption failed:\n{traceback.format_exc()}")
            goal_handle.abort()
            return Caption.Result(success=False, message=f"caption failed: {error}")
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
            return convert.generation_to_caption_result(generation, "cancelled by the client")
        if generation.stopped:  # the node was deactivated under it
            goal_handle.abort()
            return convert.generation_to_caption_result(generation, "stopped: the node was deactivated")
        goal_handle.succeed()
        return convert.generation_to_caption_result(generation)

    def _wait(self, pipeline, goal_handle, future):
        """The future's result; "queued" feedback while it waits. None when cancelled while queued."""
        stopping = self._holder.stopping
        last_position = None
        while True:
            try:
                return future.result(timeout=POLL_S)
            except concurrent.futures.TimeoutError:
                pass
            except concurrent.futures.CancelledError:
                return None
            if future.running():
                continue  # "running" feedback comes with the text
            if goal_handle.is_cancel_requested or stopping.is_set():
                if future.cancel():
                    return None
                continue  # it just started: should_stop ends it
            position = pipeline.queue_position(future)
            if position is not None and position != last_position:
                last_position = position
                goal_handle.publish_feedback(Caption.Feedback(status="queued", queue_position=position))
