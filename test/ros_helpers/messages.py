"""Message helpers that only tests need: a PromptRequest as a Prompt message, a PerceivedObject's mask."""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Point
from std_msgs.msg import Header

from pam_ros.engine.types import PromptRequest
from pam_ros.msg import PerceivedObject, Prompt
from pam_ros.ros.convert import ns_to_stamp


def request_to_prompt_msg(request: PromptRequest, frame_id: str = "") -> Prompt:
    """The reverse of convert.prompt_msg_to_request."""
    msg = Prompt(action=int(request.action), object_id=request.object_id, tasks=list(request.tasks))
    msg.header = Header(stamp=ns_to_stamp(request.stamp_ns), frame_id=frame_id)
    msg.points = [Point(x=float(x), y=float(y), z=0.0) for x, y in request.points]
    msg.point_labels = [int(label) for label in request.labels]
    if request.box is not None:
        msg.box = [float(v) for v in request.box]
        msg.has_box = True
    return msg


def mask_from_msg(obj: PerceivedObject, image_width: int, image_height: int) -> np.ndarray:
    """PerceivedObject.mask (either encoding) -> full-frame bool HxW ."""
    full = np.zeros((image_height, image_width), dtype=bool)
    if obj.mask.width == 0 or obj.mask.height == 0:
        return full
    pixels = np.frombuffer(obj.mask.data, np.uint8).reshape(obj.mask.height, obj.mask.step)[:, :obj.mask.width] > 0
    if obj.mask_full_frame:
        return pixels.copy()
    x, y = obj.roi.x_offset, obj.roi.y_offset
    full[y:y + obj.mask.height, x:x + obj.mask.width] = pixels
    return full
