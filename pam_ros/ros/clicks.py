"""Click to track: a geometry_msgs/PointStamped in pixels (as rqt_image_view publishes mouse clicks) -> an ADD prompt.

x is the column and y the row of the image; z is ignored. A non-zero header stamp applies the click to the
frame with that stamp (the first processed frame at or after it); a zero stamp to the next frame.
"""
from __future__ import annotations

import math

from pam_ros.engine.types import PromptAction, PromptRequest
from pam_ros.errors import PromptMessageError
from pam_ros.ros.convert import stamp_to_ns


def clicked_point_to_request(msg, tasks: tuple[str, ...] = (),
                             image_size: tuple[int, int] | None = None) -> PromptRequest:
    """One positive point prompt for a new object (PromptMessageError for NaN or a point outside the image)."""
    x, y = float(msg.point.x), float(msg.point.y)
    if not (math.isfinite(x) and math.isfinite(y)):
        raise PromptMessageError(f"clicked point ({x}, {y}) is not finite")
    if image_size is not None:
        width, height = image_size
        if not (0 <= x <= width and 0 <= y <= height):
            raise PromptMessageError(f"clicked point ({x:g}, {y:g}) lies outside the {width}x{height} image "
                                     "(x = column, y = row, in pixels)")
    return PromptRequest(action=PromptAction.ADD, points=((x, y),), labels=(1,), tasks=tuple(tasks),
                         stamp_ns=stamp_to_ns(msg.header.stamp))
