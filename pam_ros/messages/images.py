"""Image message payloads -> HxWx3 uint8 RGB numpy arrays, through `rosbags-image` (cv_bridge's
conversions without a ROS install; OpenCV headless underneath).

Shared by the node (ros/convert.py, from rclpy messages) and the bag replay (from rosbags messages):
both hand over the plain fields, so a frame decodes to the same pixels in both. What the library
does not cover is kept here: checks that turn a malformed message into a clear ImageDecodeError
(its raw conversion trusts width/height/data and ignores the row step), row padding, cv_bridge's
numeric types (8UC3 = bgr8 ...), greyscale/alpha compressed images, and 16-bit to 8-bit output.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from pam_ros.errors import ImageDecodeError

# cv_bridge reads the numeric OpenCV types with these channel orders; rosbags-image treats them as
# "generic" data it will not colour-convert.
_CV_TYPES = {"8uc1": "mono8", "8uc3": "bgr8", "8uc4": "bgra8", "16uc1": "mono16", "16uc3": "bgr16",
             "16uc4": "bgra16"}


def _encodings() -> dict:
    from rosbags.image.image import ENCODINGMAP

    return ENCODINGMAP



SUPPORTED_ENCODINGS = (
    "bayer_bggr16", "bayer_bggr8", "bayer_gbrg16", "bayer_gbrg8", "bayer_grbg16", "bayer_grbg8", "bayer_rggb16",
    "bayer_rggb8", "bgr16", "bgr8", "bgra16", "bgra8", "mono16", "mono8", "nv12", "nv21", "rgb16", "rgb8", "rgba16",
    "rgba8", "uyvy", "yuv422", "yuv422_yuy2", "yuyv", "8uc1", "8uc3", "8uc4", "16uc1", "16uc3", "16uc4",
)


def decode_image(encoding: str, width: int, height: int, step: int, data: bytes | bytearray | memoryview | np.ndarray,
                 *, is_bigendian: bool = False) -> np.ndarray:
    """sensor_msgs/Image fields -> HxWx3 uint8 RGB (a new array, never a view of `data`).

    Raises ImageDecodeError for an unknown encoding, a zero size, a row step too short for the width,
    or too little data.
    """
    from rosbags.image import ImageError, image_to_cvimage

    key = encoding.strip().lower()
    key = _CV_TYPES.get(key, key)
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image has zero size ({width}x{height})")
    table = _encodings()
    if key not in table:
        raise ImageDecodeError(f"unsupported image encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    depth, _, _, channels = table[key]
    pixel_bytes = depth // 8 * channels
    planar = key in ("nv12", "nv21")  # 4:2:0: a full-size luma plane and a half-height chroma plane
    rows = height * 3 // 2 if planar else height
    if planar and (width % 2 or height % 2):
        raise ImageDecodeError(f"{encoding!r} images need an even width and height, got {width}x{height}")
    if table[key][3] == 2 and width % 2:
        raise ImageDecodeError(f"{encoding!r} images need an even width, got {width}")
    packed = _rows(data, width, rows, step, pixel_bytes, encoding)
    message = SimpleNamespace(encoding=key, width=width, height=rows if planar else height, step=width * pixel_bytes,
                              is_bigendian=bool(is_bigendian), data=packed)
    try:
        if planar:
            import cv2

            code = cv2.COLOR_YUV2RGB_NV12 if key == "nv12" else cv2.COLOR_YUV2RGB_NV21
            rgb = cv2.cvtColor(packed.reshape(rows, width), code)
        else:
            rgb = image_to_cvimage(message, "rgb16" if depth == 16 else "rgb8")
    except (ImageError, ValueError, TypeError) as err:
        raise ImageDecodeError(f"cannot convert {encoding!r} image to RGB: {err}") from None
    if rgb.dtype == np.uint16:
        rgb = (rgb >> 8).astype(np.uint8)  # keep the 8 most significant bits
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def decode_compressed(format: str, data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:  # noqa: A002
    """sensor_msgs/CompressedImage (format, data) -> HxWx3 uint8 RGB.

    Any format OpenCV decodes (jpeg, png, ...; image_transport's "bgr8; jpeg compressed bgr8" style
    strings included: the codec is found from the data itself). compressedDepth is refused.
    """
    from rosbags.image import compressed_image_to_cvimage
    from rosbags.image.image import convert_color

    if "compresseddepth" in format.replace(" ", "").lower():
        raise ImageDecodeError(f"compressed depth images ({format!r}) are not colour images")
    payload = np.frombuffer(_as_bytes(data), np.uint8)
    if not payload.size:
        raise ImageDecodeError("compressed image has no data")
    try:
        pixels = compressed_image_to_cvimage(SimpleNamespace(format=format, data=payload))
    except AssertionError:  # the library asserts on what OpenCV cannot decode
        pixels = None
    if pixels is None:
        raise ImageDecodeError(f"cannot decode {format or 'compressed'!r} image data ({payload.size} bytes)")
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    source = "bgra8" if pixels.shape[2] == 4 else "bgr8"
    return np.ascontiguousarray(convert_color(pixels, source, "rgb8"))


def _as_bytes(data) -> bytes:
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False).tobytes()
    return bytes(data)


def _rows(data, width: int, height: int, step: int, pixel_bytes: int, encoding: str) -> np.ndarray:
    """The pixel bytes of each row (padding at row ends dropped), contiguous, as a flat uint8 array."""
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
    return np.ascontiguousarray(buffer[: step * height].reshape(height, step)[:, :row_bytes]).reshape(-1)
