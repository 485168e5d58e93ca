"""One camera's ROS side: its subscriptions, publishers, latest-frame slot, services, caption action and
depth input, all named under the camera's prefix.

Single-camera mode is the same code with an empty prefix (`image`, `objects`, `describe`, ...); with the
node parameter `cameras: [front, wrist]` each camera gets `front/image`, `front/objects`,
`front/manage_objects`, ... (relative names, so namespaces and remaps work). Every request of a camera
uses its own pipeline (CameraHolder: the host's pipeline of that camera, or the one pipeline), so object
ids are per camera and a prompt to `front` never touches `wrist`.
"""
from __future__ import annotations

import time
from typing import Callable

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from pam_ros.errors import PamError
from pam_ros.msg import Prompt
from pam_ros.ros import convert
from pam_ros.ros.caption_action import CaptionAction
from pam_ros.ros.clicks import ClickInput
from pam_ros.ros.diagnostics import ImageWatchdog
from pam_ros.ros.lease import CameraHolder, NodeInactiveError, PipelineHolder
from pam_ros.ros.planning import DepthInput
from pam_ros.ros.reporting import Reporter
from pam_ros.ros.services import NodeServices, submit_prompt
from pam_ros.ros.tracking import FrameOutputs, TrackingLoop


def camera_prefix(camera: str) -> str:
    """"front/" for camera front; "" in single-camera mode (camera "")."""
    return f"{camera}/" if camera else ""


def image_qos(settings) -> QoSProfile:
    if settings.image_qos == "sensor_data":
        return qos_profile_sensor_data
    return QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)


class CameraIO:
    """Services and action from creation (they answer "not active" until the node is), publishers from
    configure to cleanup (create_outputs / destroy_outputs), subscriptions while active (subscribe /
    unsubscribe). `feed` is the camera's side of the one tracking thread."""

    def __init__(self, node, camera: str, holder: PipelineHolder, settings: Callable, reporter: Reporter,
                 tracking: TrackingLoop) -> None:
        self._node = node
        self.name = camera
        self.prefix = camera_prefix(camera)
        self._settings = settings
        self._reporter = reporter
        self.holder = CameraHolder(holder, camera)
        self.feed = tracking.new_feed()
        self.outputs: FrameOutputs | None = None
        self._image_sub = None
        self._prompt_sub = None
        self._depth_input: DepthInput | None = None
        self._clicks: ClickInput | None = None
        # own groups per camera: one camera's callbacks never wait for another's
        self._image_group = MutuallyExclusiveCallbackGroup()
        self._prompt_group = MutuallyExclusiveCallbackGroup()
        self._depth_group = MutuallyExclusiveCallbackGroup()
        self.watchdog = ImageWatchdog(node, settings, self.input_topic, lambda: self.feed.slot.received,
                                      lambda: self.prefix + "image")
        self._services = NodeServices(node, self.holder, settings, self.feed, reporter,
                                      lambda: node.resolve_topic_name(self.image_topic_name()), self.prefix)
        self._caption = CaptionAction(node, self.holder, reporter, self.prefix)

    # ------------------------------------------------------------------ what diagnostics and the node read
    def pipeline(self):
        """This camera's pipeline for a look without a lease; None while the node is not active."""
        return self.holder.pipeline

    def input_topic(self) -> str | None:
        """The subscribed image topic (resolved); None while not subscribed."""
        return self._image_sub.topic_name if self._image_sub is not None else None

    def image_topic_name(self) -> str:
        settings = self._settings()
        compressed = settings is not None and settings.image_transport == "compressed"
        return self.prefix + ("image/compressed" if compressed else "image")

    # ------------------------------------------------------------------ lifetime
    def create_outputs(self) -> None:
        self.outputs = FrameOutputs(self._node, self.prefix)

    def destroy_outputs(self) -> None:
        outputs, self.outputs = self.outputs, None
        if outputs is not None:
            outputs.destroy()

    def destroy(self) -> None:
        """Everything of this camera (its `cameras` entry is gone at a new configure, or the node ends)."""
        self.unsubscribe()
        self.destroy_outputs()
        self._services.destroy()
        self._caption.destroy()

    def subscribe(self, pipeline) -> None:
        """The inputs, on activate: image, prompts, clicks and (use_depth) depth; `pipeline` is this camera's."""
        settings = self._settings()
        qos = image_qos(settings)
        msg_type = CompressedImage if settings.image_transport == "compressed" else Image
        self.watchdog.start(time.monotonic())
        self._image_sub = self._node.create_subscription(msg_type, self.image_topic_name(), self._on_image, qos,
                                                         callback_group=self._image_group)
        self._prompt_sub = self._node.create_subscription(Prompt, self.prefix + "prompts", self._on_prompt, 10,
                                                          callback_group=self._prompt_group)
        if settings.use_depth:
            self._depth_input = DepthInput(self._node, qos, self._depth_group, pipeline,
                                           float(settings.depth_scale), self._reporter.bad_input, self.prefix)
            self._node.get_logger().info("depth on: geometry from " + " + ".join(
                self._node.resolve_topic_name(t) for t in self._depth_input.topic_names))
        self._clicks = ClickInput(
            self._node, qos, self._prompt_group, tasks=lambda: self._settings().click_task_tuple, frames=self.feed,
            submit=self._submit, reporter=self._reporter,
            fallback_intrinsics=lambda: self._depth_input.intrinsics if self._depth_input is not None else None,
            prefix=self.prefix)

    def unsubscribe(self) -> None:
        for name in ("_depth_input", "_clicks"):
            inputs = getattr(self, name)
            if inputs is not None:
                setattr(self, name, None)
                inputs.destroy()
        for name in ("_image_sub", "_prompt_sub"):
            subscription = getattr(self, name)
            if subscription is not None:
                self._node.destroy_subscription(subscription)
                setattr(self, name, None)

    # ------------------------------------------------------------------ callbacks
    def _on_image(self, msg) -> None:
        now = time.monotonic()
        self.watchdog.image_arrived(now)
        self.feed.offer(msg, now)  # latest frame wins; a replaced frame is counted as dropped

    def _on_prompt(self, msg: Prompt) -> None:
        try:
            request = convert.prompt_msg_to_request(msg)
        except PamError as error:
            self._reporter.bad_input(f"{self.prefix}prompt refused: {error}")
            return
        if self._submit(request, source=self.prefix + "topic") is None:
            self._node.get_logger().warn("prompt ignored: the node is not active")

    def _submit(self, request, source: str):
        """Hand a prompt to this camera's queue; its future, or None when the node is not active."""
        try:
            with self.holder.pipeline_lease() as pipeline:
                return submit_prompt(pipeline, request, source, self._reporter)
        except NodeInactiveError:
            return None
