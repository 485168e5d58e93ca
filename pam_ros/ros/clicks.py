"""Click to track: a click becomes an ADD prompt (one positive point) at the pixel the sender means.

Two senders, two topics:
- `image_click` (geometry_msgs/Point): pixels of the image, x = column, y = row, z ignored; what
  rqt_image_view publishes on `<image topic>_mouse_left`. Applied to the next frame (a Point has no stamp).
- `clicked_point` (geometry_msgs/PointStamped): a 3-D point in metres, what RViz's "Publish Point" tool
  publishes on /clicked_point. Used only when its header.frame_id is the camera image's frame (the latest
  processed image's header.frame_id, an optical frame: x right, y down, z forward): it is projected with the
  latest CameraInfo (`camera_info`, or with use_depth `depth/camera_info`, whose aligned depth shares the
  colour camera's intrinsics). A point in any other frame is refused with a warning naming both frames: no
  tf2 lookup is made, so a click can never land where a guessed transform puts it. Its stamp is not used
  (RViz stamps a click with its own clock, not with a camera frame's stamp): applied to the next frame.
"""
from __future__ import annotations

import math
from typing import Callable

from geometry_msgs.msg import Point, PointStamped
from sensor_msgs.msg import CameraInfo

from pam_ros.engine.geometry import CameraIntrinsics
from pam_ros.engine.types import PromptAction, PromptRequest
from pam_ros.errors import PamError, PromptMessageError

IMAGE_CLICK_TOPIC = "image_click"
CLICKED_POINT_TOPIC = "clicked_point"
CAMERA_INFO_TOPIC = "camera_info"


def pixel_click_to_request(x: float, y: float, tasks: tuple[str, ...] = (),
                           image_size: tuple[int, int] | None = None) -> PromptRequest:
    """One positive point prompt for a new object, on the next frame (PromptMessageError for NaN or a point
    outside the image)."""
    x, y = float(x), float(y)
    if not (math.isfinite(x) and math.isfinite(y)):
        raise PromptMessageError(f"clicked point ({x}, {y}) is not finite")
    if image_size is not None:
        width, height = image_size
        if not (0 <= x <= width and 0 <= y <= height):
            raise PromptMessageError(f"clicked point ({x:g}, {y:g}) lies outside the {width}x{height} image "
                                     "(x = column, y = row, in pixels)")
    return PromptRequest(action=PromptAction.ADD, points=((x, y),), labels=(1,), tasks=tuple(tasks))


def project_to_pixel(point: tuple[float, float, float], intrinsics: CameraIntrinsics) -> tuple[float, float]:
    """A point in the camera's optical frame (metres) -> its pixel (column, row), pinhole model."""
    x, y, z = (float(v) for v in point)
    if not all(math.isfinite(v) for v in (x, y, z)):
        raise PromptMessageError(f"clicked point ({x}, {y}, {z}) is not finite")
    if z <= 0:
        raise PromptMessageError(f"clicked point ({x:g}, {y:g}, {z:g}) m is not in front of the camera (z <= 0)")
    return intrinsics.fx * x / z + intrinsics.cx, intrinsics.fy * y / z + intrinsics.cy


def clicked_point_pixel(msg: PointStamped, image_frame: str, intrinsics: CameraIntrinsics | None,
                        image_size: tuple[int, int] | None) -> tuple[float, float]:
    """The pixel a PointStamped in the camera frame projects to; PromptMessageError saying why it cannot be used."""
    frame = msg.header.frame_id
    if image_size is None:
        raise PromptMessageError(f"clicked_point in frame {frame!r}: no image processed yet, so the camera frame "
                                 "is not known")
    if frame != image_frame:
        raise PromptMessageError(
            f"clicked_point is in frame {frame!r} but the camera image is in frame {image_frame!r}; only points in "
            f"the image's frame are used (no tf2 lookup): set RViz's fixed frame to {image_frame!r}, or click in "
            "rqt_image_view (image_click)")
    if intrinsics is None:
        raise PromptMessageError(f"clicked_point in frame {frame!r} needs the camera's intrinsics: no CameraInfo "
                                 f"received yet on {CAMERA_INFO_TOPIC} (or depth/camera_info with use_depth)")
    if intrinsics.width and intrinsics.height and (intrinsics.width, intrinsics.height) != tuple(image_size):
        raise PromptMessageError(f"the CameraInfo is for {intrinsics.width}x{intrinsics.height} images but the "
                                 f"image is {image_size[0]}x{image_size[1]}: the click cannot be projected")
    return project_to_pixel((msg.point.x, msg.point.y, msg.point.z), intrinsics)


class ClickInput:
    """The click subscriptions (created on activate, destroyed on deactivate).

    `submit(request, source)` hands a prompt to the engine (its future, or None when the node is not active);
    `frames` is the camera's CameraFeed (the latest image's header and size); `fallback_intrinsics()` the depth
    input's intrinsics (None without use_depth); `prefix` "" or the camera's "front/"."""

    def __init__(self, node, qos, callback_group, *, tasks: Callable[[], tuple[str, ...]], frames,
                 submit: Callable, reporter, fallback_intrinsics: Callable[[], CameraIntrinsics | None],
                 prefix: str = "") -> None:
        self._node = node
        self._tasks = tasks
        self._frames = frames
        self._submit = submit
        self._reporter = reporter
        self._fallback_intrinsics = fallback_intrinsics
        self._prefix = prefix  # names the camera in log lines and prompt outcomes
        self._intrinsics: CameraIntrinsics | None = None
        self._subscriptions = [
            node.create_subscription(Point, prefix + IMAGE_CLICK_TOPIC, self._on_image_click, 10,
                                     callback_group=callback_group),
            node.create_subscription(PointStamped, prefix + CLICKED_POINT_TOPIC, self._on_clicked_point, 10,
                                     callback_group=callback_group),
            node.create_subscription(CameraInfo, prefix + CAMERA_INFO_TOPIC, self._on_camera_info, qos,
                                     callback_group=callback_group),
        ]

    @property
    def intrinsics(self) -> CameraIntrinsics | None:
        return self._intrinsics or self._fallback_intrinsics()

    def destroy(self) -> None:
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions = []

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self._intrinsics = CameraIntrinsics.from_camera_info(msg.k, msg.width, msg.height)
        except PamError as error:
            self._reporter.bad_input(f"{CAMERA_INFO_TOPIC} unusable: {error}")

    def _on_image_click(self, msg: Point) -> None:
        self._click(msg.x, msg.y, IMAGE_CLICK_TOPIC, "")

    def _on_clicked_point(self, msg: PointStamped) -> None:
        try:
            x, y = clicked_point_pixel(msg, self._frames.latest_header.frame_id, self.intrinsics,
                                       self._frames.latest_size)
        except PamError as error:
            self._reporter.bad_input(f"click refused: {error}")
            return
        point = msg.point
        self._click(x, y, CLICKED_POINT_TOPIC,
                    f" ({CLICKED_POINT_TOPIC} ({point.x:g}, {point.y:g}, {point.z:g}) m in {msg.header.frame_id!r})")

    def _click(self, x: float, y: float, source: str, origin: str) -> None:
        try:
            request = pixel_click_to_request(x, y, self._tasks(), self._frames.latest_size)
        except PamError as error:
            self._reporter.bad_input(f"click refused: {error}")
            return
        future = self._submit(request, self._prefix + source)
        if future is None:
            self._node.get_logger().warn("click ignored: the node is not active")
        else:
            self._node.get_logger().info(f"click at ({x:g}, {y:g}) -> {future.object_id}{origin}")
