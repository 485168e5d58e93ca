"""ROS 2 (rclpy) messages <-> the engine's plain types: numpy images, PromptRequest, results.

What the messages say is decided in the ROS-free modules shared with the bag replay, so the node
and the replay cannot drift: pam_ros.messages.images decodes image payloads, pam_ros.messages.fields turns
results into message field values and Prompt messages into PromptRequests. This module only moves
values between those and rclpy message objects (no cv_bridge: it is not available from pip).
Every malformed input raises a PamError subclass (pam_ros.errors) with a message a user can act on.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from pam_ros.action import Caption
from pam_ros.engine.geometry import depth_to_metres
from pam_ros.engine.types import FrameResult, GenerationResult, ObjectResult, PromptAction, PromptRequest
from pam_ros.messages.fields import (
    MASK_ENCODINGS,
    PromptMessageError,
    header_fields,
    perceived_object_array_fields,
    perceived_object_fields,
    prompt_request_from_message,
    stamp_ns_of,
)
from pam_ros.messages.images import SUPPORTED_ENCODINGS, ImageDecodeError, decode_compressed, decode_image
from pam_ros.msg import PerceivedObject, PerceivedObjectArray, Prompt

__all__ = ["MASK_ENCODINGS", "SUPPORTED_ENCODINGS", "ImageConversionError", "PromptConversionError"]

# The shared modules' errors, under the names the node uses (both are ValueErrors).
ImageConversionError = ImageDecodeError
PromptConversionError = PromptMessageError


# --- time ---------------------------------------------------------------------------------------

def stamp_to_ns(stamp: Time) -> int:
    return stamp_ns_of(stamp.sec, stamp.nanosec)


def ns_to_stamp(stamp_ns: int) -> Time:
    stamp_ns = max(0, int(stamp_ns))
    return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


# --- images -------------------------------------------------------------------------------------

def image_msg_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8, 16-bit, yuv422; any row padding) -> HxWx3 uint8 RGB."""
    return decode_image(msg.encoding, msg.width, msg.height, msg.step, msg.data, is_bigendian=bool(msg.is_bigendian))


def compressed_msg_to_rgb(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg, png: image_transport's compressed plugin) -> HxWx3 uint8 RGB."""
    return decode_compressed(msg.format, msg.data)


def depth_msg_to_metres(msg: Image, depth_scale: float = 0.001) -> np.ndarray:
    """Aligned depth (16UC1 in depth_scale units, or 32FC1 metres; any row padding) -> float32 HxW metres."""
    return depth_to_metres(msg.encoding, msg.width, msg.height, msg.step, msg.data,
                           is_bigendian=bool(msg.is_bigendian), depth_scale=depth_scale)


def rgb_to_image_msg(image: np.ndarray, header: Header | None = None) -> Image:
    """HxWx3 uint8 RGB -> rgb8 Image, or HxW uint8 -> mono8 Image (no row padding)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ImageConversionError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 3:
        encoding = "rgb8"
    elif image.ndim == 2:
        encoding = "mono8"
    else:
        raise ImageConversionError(f"expected an HxWx3 RGB or HxW mono image, got shape {image.shape}")
    height, width = image.shape[:2]
    msg = Image(header=header or Header(), height=height, width=width, encoding=encoding, is_bigendian=0,
                step=width * (3 if encoding == "rgb8" else 1))
    msg.data = np.ascontiguousarray(image).tobytes()
    return msg


def is_empty_image(msg: Image) -> bool:
    """Describe's "no image: use the latest frame" convention."""
    return msg.width == 0 or msg.height == 0


# --- prompts ------------------------------------------------------------------------------------

def prompt_msg_to_request(msg: Prompt) -> PromptRequest:
    """Turn a Prompt message into the engine's PromptRequest (PromptConversionError for a malformed
    message). Whether its points and box fit the image is the engine's check (engine/prompts.py): it
    knows the frame the prompt is applied to."""
    return prompt_request_from_message(msg)


def describe_prompt_from_msg(msg: Prompt, has_image: bool) -> PromptRequest:
    """Describe / Caption prompt: points and/or a box (action ignored), or a tracked object's id alone.

    A bare object_id refers to a tracked object's latest mask and features, so it cannot be combined
    with an explicit image.
    """
    if not msg.points and not msg.has_box:
        object_id = msg.object_id.strip()
        if not object_id:
            raise PromptConversionError("the prompt needs points, a box (has_box=true) or a tracked object_id")
        if has_image:
            raise PromptConversionError(
                f"object_id {object_id!r} refers to a tracked object on the latest frame: leave image empty, "
                "or give points / a box on the image")
        return PromptRequest(action=PromptAction.ADD, object_id=object_id, stamp_ns=stamp_to_ns(msg.header.stamp))
    as_add = Prompt(header=msg.header, action=Prompt.ADD, object_id=msg.object_id, points=msg.points,
                    point_labels=msg.point_labels, box=msg.box, has_box=msg.has_box, tasks=msg.tasks)
    return prompt_msg_to_request(as_add)


# --- results ------------------------------------------------------------------------------------

def fill_message(msg, fields: Mapping):
    """Set an rclpy message from a message_fields dict (nested dicts = nested messages); returns msg."""
    types = msg.get_fields_and_field_types()
    for name, value in fields.items():
        if name not in types:
            raise KeyError(f"{type(msg).__name__} has no field {name!r}")
        if isinstance(value, Mapping):
            fill_message(getattr(msg, name), value)
        elif isinstance(value, list) and value and isinstance(value[0], Mapping):
            element_type = _message_class(types[name])
            setattr(msg, name, [fill_message(element_type(), item) for item in value])
        else:
            setattr(msg, name, value)
    return msg


def _message_class(type_name: str):
    """'sequence<pam_ros/PerceivedObject>' (or 'pkg/Name[3]') -> the rclpy message class."""
    base = type_name.removeprefix("sequence<").split(",")[0].rstrip(">").split("[")[0]
    package, name = base.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def _header_fields(header: Header) -> dict:
    return header_fields(stamp_to_ns(header.stamp), header.frame_id)


def object_result_to_msg(obj: ObjectResult, header: Header, mask_encoding: str = "roi") -> PerceivedObject:
    """One engine ObjectResult -> PerceivedObject; mask per mask_encoding ("roi", "full", "none")."""
    return fill_message(PerceivedObject(), perceived_object_fields(obj, _header_fields(header), mask_encoding))


def frame_result_to_msg(result: FrameResult, header: Header, mask_encoding: str = "roi",
                        frames_received: int = 0, frames_dropped: int = 0) -> PerceivedObjectArray:
    """One processed frame -> PerceivedObjectArray with the source image's header, unchanged.

    (The engine may have been given a substitute stamp for an unstamped camera; messages keep the
    camera's own header, masks included.)
    """
    fields = perceived_object_array_fields(result, header.frame_id, frames_received=frames_received,
                                           frames_dropped=frames_dropped, mask_encoding=mask_encoding)
    source = _header_fields(header)
    fields["header"] = source
    for obj in fields["objects"]:
        obj["mask"]["header"] = source
    return fill_message(PerceivedObjectArray(), fields)




def generation_to_caption_result(generation: GenerationResult, message: str = "") -> Caption.Result:
    return Caption.Result(
        success=not generation.stopped,
        message=message or ("cancelled" if generation.stopped else "finished"),
        text=generation.text,
        num_tokens=len(generation.token_ids),
        seconds=float(generation.seconds),
        tokens_per_second=float(generation.tokens_per_second),
        semantics_stamp=ns_to_stamp(generation.stamp_ns),
    )
