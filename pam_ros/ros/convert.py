"""Conversions between ROS messages and the engine's plain types (numpy images, PromptRequest, results).

No cv_bridge (not available from pip): raw images are read with numpy, compressed ones with PIL.
Every malformed input raises a ValueError subclass with a message a user can act on; the node turns
those into a log line and a refusal, never a crash.
"""
from __future__ import annotations

import io
import math
from typing import Iterable, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header

from pam_ros.action import Caption
from pam_ros.engine.types import (
    FrameResult,
    GenerationResult,
    ObjectResult,
    PromptAction,
    PromptRequest,
)
from pam_ros.msg import PerceivedObject, PerceivedObjectArray, Prompt

# Raw encodings accepted on the image topic: name -> (channels, order of R, G, B within a pixel).
RAW_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
# How PerceivedObject.mask is filled (node parameter mask_encoding); see msg/PerceivedObject.msg.
MASK_ENCODINGS = ("roi", "full", "none")


class ImageConversionError(ValueError):
    """An image message that cannot be turned into an RGB array (encoding, size, data)."""


class PromptConversionError(ValueError):
    """A Prompt message that is malformed (NaN, label count, label values, box, action, id)."""


# --- time ---------------------------------------------------------------------------------------

def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(stamp_ns: int) -> Time:
    stamp_ns = max(0, int(stamp_ns))
    return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


# --- images -------------------------------------------------------------------------------------

def image_msg_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8; any row padding) -> HxWx3 uint8 RGB (a copy)."""
    encoding = msg.encoding.strip().lower()
    if encoding not in RAW_ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(RAW_ENCODINGS)} "
            "(or sensor_msgs/CompressedImage jpeg/png on <image topic>/compressed)")
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    if width == 0 or height == 0:
        raise ImageConversionError(f"image has zero size ({width}x{height})")
    channels, rgb_order = RAW_ENCODINGS[encoding]
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageConversionError(
            f"image step {step} is smaller than width x bytes per pixel = {width} x {channels} = {row_bytes}")
    expected = step * height
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size < expected:
        raise ImageConversionError(
            f"image data truncated: {data.size} bytes for {width}x{height} {encoding} with step {step} "
            f"(expected step x height = {expected})")
    pixels = data[:expected].reshape(height, step)[:, :row_bytes].reshape(height, width, channels)
    if channels == 1:
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
    return np.ascontiguousarray(pixels[:, :, list(rgb_order)])


def compressed_msg_to_rgb(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png, as image_transport's compressed plugin sends) -> HxWx3 RGB."""
    from PIL import Image as PilImage, UnidentifiedImageError

    fmt = msg.format.strip().lower()
    if "compresseddepth" in fmt:
        raise ImageConversionError(f"compressed depth images are not supported (format {msg.format!r})")
    if fmt and not any(name in fmt for name in ("jpeg", "jpg", "png")):
        raise ImageConversionError(f"unsupported compressed image format {msg.format!r}; supported: jpeg, png")
    if len(msg.data) == 0:
        raise ImageConversionError("compressed image has no data")
    try:
        with PilImage.open(io.BytesIO(bytes(msg.data))) as decoded:
            rgb = np.asarray(decoded.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageConversionError(f"cannot decode compressed image (format {msg.format!r}): {error}") from error
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageConversionError(f"compressed image has zero size ({rgb.shape[1]}x{rgb.shape[0]})")
    return np.ascontiguousarray(rgb)


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

def _finite(values: Iterable[float]) -> bool:
    return all(math.isfinite(float(v)) for v in values)


def prompt_msg_to_request(msg: Prompt, image_size: tuple[int, int] | None = None) -> PromptRequest:
    """Validate a Prompt message and turn it into the engine's PromptRequest.

    image_size (width, height), when known, also rejects points and boxes outside the image; otherwise
    that check is the engine's (it knows the frame the prompt is applied to).
    """
    try:
        action = PromptAction(int(msg.action))
    except ValueError:
        raise PromptConversionError(
            f"unknown prompt action {msg.action}; use ADD=0, REFINE=1, REMOVE=2 or RESET_ALL=3") from None
    stamp_ns = stamp_to_ns(msg.header.stamp)
    object_id = msg.object_id.strip()
    if action == PromptAction.RESET_ALL:
        return PromptRequest(action=action, stamp_ns=stamp_ns)
    if action in (PromptAction.REFINE, PromptAction.REMOVE) and not object_id:
        raise PromptConversionError(f"{action.name} needs the object_id of a tracked object")
    if action == PromptAction.REMOVE:
        return PromptRequest(action=action, object_id=object_id, stamp_ns=stamp_ns)

    points = tuple((float(p.x), float(p.y)) for p in msg.points)
    labels = tuple(int(label) for label in msg.point_labels)
    if len(labels) != len(points):
        raise PromptConversionError(f"{len(points)} points but {len(labels)} point_labels (one label per point)")
    if not all(_finite(p) for p in points):
        raise PromptConversionError(f"point coordinates must be finite numbers, got {list(points)}")
    bad_labels = sorted({label for label in labels if label not in (0, 1)})
    if bad_labels:
        raise PromptConversionError(f"point labels must be 1 (object) or 0 (background), got {bad_labels}")
    box = None
    if msg.has_box:
        box = tuple(float(v) for v in msg.box)
        if not _finite(box):
            raise PromptConversionError(f"box must be finite numbers, got {list(box)}")
        if not (box[0] < box[2] and box[1] < box[3]):
            raise PromptConversionError(f"box must be x1 < x2 and y1 < y2 (pixels), got {list(box)}")
    if not points and box is None:
        raise PromptConversionError(f"{action.name} needs points or a box (has_box=true)")
    if image_size is not None:
        _check_inside(points, box, image_size)
    tasks = tuple(task.strip() for task in msg.tasks if task.strip())
    return PromptRequest(action=action, object_id=object_id, points=points, labels=labels, box=box,
                         tasks=tasks, stamp_ns=stamp_ns)


def describe_prompt_from_msg(msg: Prompt, has_image: bool,
                             image_size: tuple[int, int] | None = None) -> PromptRequest:
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
    return prompt_msg_to_request(as_add, image_size)


def _check_inside(points: Sequence[tuple[float, float]], box, image_size: tuple[int, int]) -> None:
    width, height = image_size
    for x, y in points:
        if not (0 <= x <= width and 0 <= y <= height):
            raise PromptConversionError(f"point ({x:g}, {y:g}) is outside the {width}x{height} image")
    if box is not None and (box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height):
        raise PromptConversionError(f"box {list(box)} does not overlap the {width}x{height} image")


def request_to_prompt_msg(request: PromptRequest, frame_id: str = "") -> Prompt:
    """The reverse of prompt_msg_to_request (for clients and tests)."""
    msg = Prompt(action=int(request.action), object_id=request.object_id, tasks=list(request.tasks))
    msg.header = Header(stamp=ns_to_stamp(request.stamp_ns), frame_id=frame_id)
    msg.points = [Point(x=float(x), y=float(y), z=0.0) for x, y in request.points]
    msg.point_labels = [int(label) for label in request.labels]
    if request.box is not None:
        msg.box = [float(v) for v in request.box]
        msg.has_box = True
    return msg


# --- results ------------------------------------------------------------------------------------

def _mono8(mask: np.ndarray, header: Header) -> Image:
    return rgb_to_image_msg(np.where(mask, np.uint8(255), np.uint8(0)), header)


def object_result_to_msg(obj: ObjectResult, header: Header, mask_encoding: str = "roi") -> PerceivedObject:
    """One engine ObjectResult -> PerceivedObject; mask per mask_encoding ("roi", "full", "none")."""
    if mask_encoding not in MASK_ENCODINGS:
        raise ValueError(f"unknown mask_encoding {mask_encoding!r}; use one of {', '.join(MASK_ENCODINGS)}")
    x, y, w, h = (int(v) for v in obj.roi)
    msg = PerceivedObject(
        object_id=obj.object_id,
        score=float(obj.score),
        object_score_logit=float(obj.object_score_logit),
        tracking_state=int(obj.tracking_state),
        frames_lost=int(obj.frames_lost),
        roi=RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h, do_rectify=False),
        mask_area=int(obj.mask_area),
        centroid=Point(x=float(obj.centroid[0]), y=float(obj.centroid[1]), z=0.0),
    )
    msg.mask.header = header
    has_pixels = obj.mask_area > 0 and w > 0 and h > 0
    if has_pixels and mask_encoding == "roi":
        msg.mask = _mono8(obj.mask[y:y + h, x:x + w], header)
    elif has_pixels and mask_encoding == "full":
        msg.mask = _mono8(obj.mask, header)
        msg.mask_full_frame = True
    semantics = obj.semantics
    msg.semantics_state = int(semantics.state)
    msg.semantics_stamp = ns_to_stamp(semantics.stamp_ns)
    msg.semantics_error = semantics.error
    msg.category = semantics.category
    msg.definition = semantics.definition
    msg.explanation = semantics.explanation
    msg.caption = semantics.caption
    msg.task_names = list(semantics.texts.keys())
    msg.task_texts = list(semantics.texts.values())
    return msg


def frame_result_to_msg(result: FrameResult, header: Header, mask_encoding: str = "roi",
                        frames_received: int = 0, frames_dropped: int = 0) -> PerceivedObjectArray:
    """One processed frame -> PerceivedObjectArray (header = the source image's header)."""
    return PerceivedObjectArray(
        header=header,
        frame_index=int(result.frame_index),
        frames_received=int(frames_received),
        frames_dropped=int(frames_dropped),
        image_width=int(result.width),
        image_height=int(result.height),
        tracking_seconds=float(result.tracking_seconds),
        objects=[object_result_to_msg(obj, header, mask_encoding) for obj in result.objects],
    )


def mask_from_msg(obj: PerceivedObject, image_width: int, image_height: int) -> np.ndarray:
    """PerceivedObject.mask (either encoding) -> full-frame bool HxW (for clients and tests)."""
    full = np.zeros((image_height, image_width), dtype=bool)
    if obj.mask.width == 0 or obj.mask.height == 0:
        return full
    pixels = np.frombuffer(obj.mask.data, np.uint8).reshape(obj.mask.height, obj.mask.step)[:, :obj.mask.width] > 0
    if obj.mask_full_frame:
        return pixels.copy()
    x, y = obj.roi.x_offset, obj.roi.y_offset
    full[y:y + obj.mask.height, x:x + obj.mask.width] = pixels
    return full


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
