"""Engine results <-> the field values of pam_ros messages, as plain Python data (no ROS imports).

The ONE place that decides what a PerceivedObjectArray says about a FrameResult, and how a
pam_ros/Prompt becomes a PromptRequest. The node (rclpy messages) and the bag replay (rosbags
messages) both fill their messages from these dicts, so the two front ends publish the same
values for the same frames (see msg/PerceivedObject.msg for the meaning of each field).

Dict layout: keys are the .msg field names; nested messages are nested dicts; uint8[] is `bytes`;
other arrays are lists; builtin_interfaces/Time is {"sec", "nanosec"}.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pam_ros.engine.geometry import ObjectGeometry
from pam_ros.engine.types import FrameResult, ObjectResult, PromptAction, PromptRequest
from pam_ros.errors import PromptMessageError
from pam_ros.messages import MASK_ENCODINGS


def time_fields(stamp_ns: int) -> dict:
    """builtin_interfaces/Time of a stamp in nanoseconds."""
    sec, nanosec = divmod(max(0, int(stamp_ns)), 1_000_000_000)
    return {"sec": sec, "nanosec": nanosec}


def stamp_ns_of(sec: int, nanosec: int) -> int:
    return int(sec) * 1_000_000_000 + int(nanosec)


def header_fields(stamp_ns: int, frame_id: str) -> dict:
    return {"stamp": time_fields(stamp_ns), "frame_id": frame_id}


def mask_image_fields(mask: np.ndarray, roi: Sequence[int], header: dict, mask_encoding: str = "roi") -> dict:
    """sensor_msgs/Image (mono8, 0/255) of an object's mask, and whether it is full-frame.

    Returns {"image": Image fields, "full_frame": bool}. "roi": only the roi's pixels; "full":
    the whole frame; "none" (or an empty mask): a 0x0 image with no encoding.
    """
    if mask_encoding not in MASK_ENCODINGS:
        raise ValueError(f"mask_encoding must be one of {MASK_ENCODINGS}, got {mask_encoding!r}")
    x, y, w, h = (int(v) for v in roi)
    empty = {"header": header, "height": 0, "width": 0, "encoding": "", "is_bigendian": 0,
             "step": 0, "data": b""}
    if mask_encoding == "none" or w <= 0 or h <= 0 or not mask[y:y + h, x:x + w].any():
        return {"image": empty, "full_frame": False}
    pixels = mask if mask_encoding == "full" else mask[y:y + h, x:x + w]
    mono8 = np.where(pixels, np.uint8(255), np.uint8(0)).astype(np.uint8)
    height, width = mono8.shape
    image = {"header": header, "height": height, "width": width, "encoding": "mono8", "is_bigendian": 0,
             "step": width, "data": mono8.tobytes()}
    return {"image": image, "full_frame": mask_encoding == "full"}


def perceived_object_fields(obj: ObjectResult, header: dict, mask_encoding: str = "roi") -> dict:
    """pam_ros/msg/PerceivedObject fields of one tracked object."""
    semantics = obj.semantics
    x, y, w, h = (int(v) for v in obj.roi)
    mask = mask_image_fields(obj.mask, obj.roi, header, mask_encoding)
    return {
        "object_id": obj.object_id,
        "score": float(obj.score),
        "object_score_logit": float(obj.object_score_logit),
        "tracking_state": int(obj.tracking_state),
        "frames_lost": int(obj.frames_lost),
        "roi": {"x_offset": x, "y_offset": y, "height": h, "width": w, "do_rectify": False},
        "mask_area": int(obj.mask_area),
        "centroid": {"x": float(obj.centroid[0]), "y": float(obj.centroid[1]), "z": 0.0},
        "mask": mask["image"],
        "mask_full_frame": mask["full_frame"],
        "semantics_state": int(semantics.state),
        "semantics_stamp": time_fields(semantics.stamp_ns),
        "semantics_error": semantics.error,
        "category": semantics.category,
        "definition": semantics.definition,
        "explanation": semantics.explanation,
        "caption": semantics.caption,
        "task_names": list(semantics.texts.keys()),
        "task_texts": list(semantics.texts.values()),
        **geometry_fields(obj.geometry),
    }


def _point(xyz: Sequence[float]) -> dict:
    return {"x": float(xyz[0]), "y": float(xyz[1]), "z": float(xyz[2])}


def _quaternion(xyzw: Sequence[float]) -> dict:
    return {"x": float(xyzw[0]), "y": float(xyzw[1]), "z": float(xyzw[2]), "w": float(xyzw[3])}


def geometry_fields(geometry: ObjectGeometry | None) -> dict:
    """PerceivedObject's geometry fields (has_geometry false and zeros, identity rotations, when there is none)."""
    if geometry is None:
        zero = _point((0.0, 0.0, 0.0))
        identity = _quaternion((0.0, 0.0, 0.0, 1.0))
        return {"has_geometry": False, "geometry_frame_id": "", "position": zero, "size": dict(zero),
                "depth_valid_fraction": 0.0, "grasp_point": dict(zero), "grasp_pixel": dict(zero),
                "orientation": identity, "oriented_size": dict(zero),
                "grasp_pose": {"position": dict(zero), "orientation": dict(identity)}, "grasp_width": 0.0}
    return {
        "has_geometry": True,
        "geometry_frame_id": geometry.frame_id,
        "position": _point(geometry.position),
        "size": _point(geometry.size),
        "depth_valid_fraction": float(geometry.valid_fraction),
        "grasp_point": _point(geometry.grasp_point),
        "grasp_pixel": _point((geometry.grasp_pixel[0], geometry.grasp_pixel[1], 0.0)),
        "orientation": _quaternion(geometry.orientation),
        "oriented_size": _point(geometry.oriented_size),
        "grasp_pose": {"position": _point(geometry.grasp_point),
                       "orientation": _quaternion(geometry.grasp_orientation)},
        "grasp_width": float(geometry.grasp_width),
    }


def perceived_object_array_fields(result: FrameResult, frame_id: str, *, frames_received: int,
                                  frames_dropped: int, mask_encoding: str = "roi") -> dict:
    """pam_ros/msg/PerceivedObjectArray fields of one processed frame.

    The header is the source image's (its stamp is result.stamp_ns, frame_id as given); the mask
    images carry the same header.
    """
    header = header_fields(result.stamp_ns, frame_id)
    return {
        "header": header,
        "frame_index": int(result.frame_index),
        "frames_received": int(frames_received),
        "frames_dropped": int(frames_dropped),
        "image_width": int(result.width),
        "image_height": int(result.height),
        "tracking_seconds": float(result.tracking_seconds),
        "objects": [perceived_object_fields(obj, header, mask_encoding) for obj in result.objects],
    }



def prompt_request_from_message(msg) -> PromptRequest:
    """A pam_ros/msg/Prompt (rclpy or rosbags object: only its field names are used) -> PromptRequest.

    Checks what a message alone can tell (action, ids, finite numbers, one label 0/1 per point, box
    order, something to segment); whether points lie inside the image is the engine's check. RESET_ALL
    reads no other field, REMOVE only object_id. Raises PromptMessageError.
    """
    try:
        action = PromptAction(int(msg.action))
    except ValueError:
        raise PromptMessageError(
            f"unknown prompt action {msg.action}; use ADD=0, REFINE=1, REMOVE=2 or RESET_ALL=3") from None
    stamp_ns = stamp_ns_of(msg.header.stamp.sec, msg.header.stamp.nanosec)
    object_id = str(msg.object_id).strip()
    if action == PromptAction.RESET_ALL:
        return PromptRequest(action=action, stamp_ns=stamp_ns)
    if action in (PromptAction.REFINE, PromptAction.REMOVE) and not object_id:
        raise PromptMessageError(f"{action.name} needs the object_id of a tracked object")
    if action == PromptAction.REMOVE:
        return PromptRequest(action=action, object_id=object_id, stamp_ns=stamp_ns)
    points = tuple((float(p.x), float(p.y)) for p in msg.points)
    labels = tuple(int(label) for label in msg.point_labels)
    if len(labels) != len(points):
        raise PromptMessageError(f"{len(points)} points but {len(labels)} point_labels (one label per point)")
    if not all(math.isfinite(v) for point in points for v in point):
        raise PromptMessageError(f"point coordinates must be finite numbers, got {list(points)}")
    bad_labels = sorted({label for label in labels if label not in (0, 1)})
    if bad_labels:
        raise PromptMessageError(f"point labels must be 1 (object) or 0 (background), got {bad_labels}")
    box = None
    if msg.has_box:
        box = tuple(float(v) for v in msg.box)
        if not all(math.isfinite(v) for v in box):
            raise PromptMessageError(f"box must be finite numbers, got {list(box)}")
        if not (box[0] < box[2] and box[1] < box[3]):
            raise PromptMessageError(f"box must be x1 < x2 and y1 < y2 (pixels), got {list(box)}")
    if not points and box is None:
        raise PromptMessageError(f"{action.name} needs points or a box (has_box=true)")
    tasks = tuple(str(task).strip() for task in msg.tasks if str(task).strip())
    return PromptRequest(action=action, object_id=object_id, points=points, labels=labels, box=box,
                         tasks=tasks, stamp_ns=stamp_ns)
