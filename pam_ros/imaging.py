"""Image message payloads -> HxWx3 uint8 RGB numpy arrays, without ROS or OpenCV.

Shared by the node (ros/convert.py, from rclpy messages) and the bag replay (from rosbags
messages): both hand over the plain fields, so a frame decodes to the same pixels in both.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from pam_ros.errors import ImageDecodeError

# encoding -> (channels, bytes per channel, channel order). Order names the colour of each
# channel; "mono" is grey; cv-style types (8UC3 ...) follow cv_bridge (3 channels = bgr).
_RAW_LAYOUTS: dict[str, tuple[int, int, str]] = {
    "rgb8": (3, 1, "rgb"), "bgr8": (3, 1, "bgr"), "rgba8": (4, 1, "rgba"), "bgra8": (4, 1, "bgra"),
    "mono8": (1, 1, "mono"), "8uc1": (1, 1, "mono"), "8uc3": (3, 1, "bgr"), "8uc4": (4, 1, "bgra"),
    "rgb16": (3, 2, "rgb"), "bgr16": (3, 2, "bgr"), "rgba16": (4, 2, "rgba"), "bgra16": (4, 2, "bgra"),
    "mono16": (1, 2, "mono"), "16uc1": (1, 2, "mono"), "16uc3": (3, 2, "bgr"), "16uc4": (4, 2, "bgra"),
}
# Packed 4:2:2 (2 bytes per pixel): ROS "yuv422" is UYVY, "yuv422_yuy2" is YUYV.
_YUV422_LAYOUTS = {"yuv422": "uyvy", "uyvy": "uyvy", "yuv422_yuy2": "yuyv", "yuyv": "yuyv"}

SUPPORTED_ENCODINGS = tuple(sorted(set(_RAW_LAYOUTS) | set(_YUV422_LAYOUTS)))


def decode_image(encoding: str, width: int, height: int, step: int, data: bytes | bytearray | memoryview | np.ndarray,
                 *, is_bigendian: bool = False) -> np.ndarray:
    """sensor_msgs/Image fields -> HxWx3 uint8 RGB (a new array, never a view of `data`).

    16-bit images keep their 8 most significant bits. Raises ImageDecodeError for an unknown
    encoding, a zero size, a row step too short for the width, or too little data.
    """
    key = encoding.strip().lower()
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image has zero size ({width}x{height})")
    if key in _YUV422_LAYOUTS:
        if width % 2:
            raise ImageDecodeError(f"{encoding!r} images need an even width, got {width}")
        rows = _rows(data, width, height, step, 2, encoding)
        return _yuv422_to_rgb(rows, _YUV422_LAYOUTS[key])
    if key not in _RAW_LAYOUTS:
        raise ImageDecodeError(
            f"unsupported image encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})"
        )
    channels, depth, order = _RAW_LAYOUTS[key]
    rows = _rows(data, width, height, step, channels * depth, encoding)
    if depth == 2:
        dtype = np.dtype(">u2" if is_bigendian else "<u2")
        pixels = (rows.copy().view(dtype).reshape(height, width, channels) >> 8).astype(np.uint8)
    else:
        pixels = rows.reshape(height, width, channels)
    if order == "mono":
        return np.repeat(pixels, 3, axis=2)
    if order.startswith("bgr"):
        pixels = pixels[:, :, 2::-1]
    return np.ascontiguousarray(pixels[:, :, :3])


def decode_compressed(format: str, data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:  # noqa: A002
    """sensor_msgs/CompressedImage (format, data) -> HxWx3 uint8 RGB.

    Any format PIL reads (jpeg, png, ...; image_transport's "bgr8; jpeg compressed bgr8" style
    strings included: the codec is found from the data itself). compressedDepth is refused.
    """
    if "compresseddepth" in format.replace(" ", "").lower():
        raise ImageDecodeError(f"compressed depth images ({format!r}) are not colour images")
    payload = _as_bytes(data)
    if not payload:
        raise ImageDecodeError("compressed image has no data")
    try:
        with Image.open(io.BytesIO(payload)) as picture:
            picture.load()
            rgb = picture.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(f"cannot decode {format or 'compressed'!r} image data ({len(payload)} bytes): {err}") from None
    return np.asarray(rgb, dtype=np.uint8).copy()


def _as_bytes(data) -> bytes:
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False).tobytes()
    return bytes(data)


def _rows(data, width: int, height: int, step: int, pixel_bytes: int, encoding: str) -> np.ndarray:
    """The pixel bytes of each row (padding at row ends dropped) as a [height, width * pixel_bytes] array."""
    row_bytes = width * pixel_bytes
    if step < row_bytes:
        raise ImageDecodeError(
            f"row step {step} is shorter than {width} pixels of {encoding!r} ({row_bytes} bytes)"
        )
    buffer = np.frombuffer(_as_bytes(data), dtype=np.uint8)
    # The last row may omit its padding; everything before it must be there.
    needed = step * (height - 1) + row_bytes
    if buffer.size < needed:
        raise ImageDecodeError(
            f"image data is truncated: {buffer.size} bytes for {width}x{height} {encoding!r} "
            f"with step {step} (need {needed})"
        )
    if buffer.size < step * height:
        buffer = np.concatenate([buffer, np.zeros(step * height - buffer.size, np.uint8)])
    return buffer[: step * height].reshape(height, step)[:, :row_bytes]


def _yuv422_to_rgb(rows: np.ndarray, layout: str) -> np.ndarray:
    """Packed 4:2:2 -> RGB with the BT.601 full-range equations of image_proc/cv_bridge."""
    height = rows.shape[0]
    quads = rows.reshape(height, -1, 4).astype(np.float32)
    if layout == "uyvy":
        u, y0, v, y1 = (quads[..., i] for i in range(4))
    else:
        y0, u, y1, v = (quads[..., i] for i in range(4))
    luma = np.stack([y0, y1], axis=-1).reshape(height, -1)
    u = np.repeat(u, 2, axis=1) - 128.0
    v = np.repeat(v, 2, axis=1) - 128.0
    rgb = np.stack([luma + 1.402 * v, luma - 0.344136 * u - 0.714136 * v, luma + 1.772 * u], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
