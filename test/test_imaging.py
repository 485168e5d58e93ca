"""Image message payload decoding (shared by the node and the replay)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pam_ros.messages.images import ImageDecodeError, decode_compressed, decode_image

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)


def test_rgb8_and_bgr8_give_the_same_rgb_pixels():
    assert np.array_equal(decode_image("rgb8", 6, 5, 18, RGB.tobytes()), RGB)
    assert np.array_equal(decode_image("bgr8", 6, 5, 18, RGB[:, :, ::-1].tobytes()), RGB)


def test_row_padding_is_dropped():
    padded = np.zeros((5, 20), np.uint8)
    padded[:, :18] = RGB.reshape(5, 18)
    assert np.array_equal(decode_image("rgb8", 6, 5, 20, padded.tobytes()), RGB)


def test_alpha_and_mono_encodings():
    rgba = np.concatenate([RGB, np.full((5, 6, 1), 9, np.uint8)], axis=2)
    assert np.array_equal(decode_image("rgba8", 6, 5, 24, rgba.tobytes()), RGB)
    bgra = np.concatenate([RGB[:, :, ::-1], np.full((5, 6, 1), 9, np.uint8)], axis=2)
    assert np.array_equal(decode_image("bgra8", 6, 5, 24, bgra.tobytes()), RGB)
    grey = RGB[:, :, 0]
    out = decode_image("mono8", 6, 5, 6, grey.tobytes())
    assert np.array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


def test_sixteen_bit_keeps_the_high_byte_in_either_byte_order():
    values = (RGB[:, :, 0].astype(np.uint16) << 8) | 0x7F
    little = decode_image("mono16", 6, 5, 12, values.astype("<u2").tobytes())
    big = decode_image("mono16", 6, 5, 12, values.astype(">u2").tobytes(), is_bigendian=True)
    assert np.array_equal(little[:, :, 0], RGB[:, :, 0]) and np.array_equal(big, little)


def test_yuv422_grey_decodes_to_grey():
    uyvy = np.tile(np.array([128, 90, 128, 90], np.uint8), (4, 2))  # 4 rows, 4 pixels: U Y V Y
    out = decode_image("yuv422", 4, 4, 8, uyvy.tobytes())
    # OpenCV's (and so cv_bridge's) BT.601 video-range conversion: Y=90 -> (90 - 16) * 1.164 = 86, grey
    assert out.shape == (4, 4, 3) and np.all(out == 86)


@pytest.mark.parametrize("args, message", [
    (("rgb8", 6, 5, 18, RGB.tobytes()[:-20]), "truncated"),
    (("rgb8", 6, 5, 10, RGB.tobytes()), "row step 10"),
    (("rgb8", 0, 5, 0, b""), "zero size"),
    (("32FC1", 6, 5, 24, bytes(120)), "unsupported image encoding '32FC1'"),
    (("yuv422", 5, 2, 10, bytes(20)), "even width"),
])
def test_bad_images_are_clear_errors(args, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(*args)


def test_compressed_png_and_jpeg():
    buffer = io.BytesIO()
    Image.fromarray(RGB).save(buffer, format="PNG")
    assert np.array_equal(decode_compressed("rgb8; png compressed rgb8", buffer.getvalue()), RGB)
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(buffer, format="JPEG", quality=95)
    out = decode_compressed("jpeg", np.frombuffer(buffer.getvalue(), np.uint8))
    assert out.shape == (16, 16, 3) and np.abs(out.astype(int) - 200).max() <= 3


def test_bad_compressed_data_is_a_clear_error():
    with pytest.raises(ImageDecodeError, match="cannot decode 'jpeg'"):
        decode_compressed("jpeg", b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageDecodeError, match="no data"):
        decode_compressed("png", b"")
    with pytest.raises(ImageDecodeError, match="depth"):
        decode_compressed("16UC1; compressedDepth", b"abc")


@pytest.mark.parametrize("encoding, red_at", [("bayer_rggb8", (0, 0)), ("bayer_bggr8", (1, 1)),
                                              ("bayer_grbg8", (0, 1)), ("bayer_gbrg8", (1, 0))])
def test_bayer_mosaics_demosaic_to_the_right_colour(encoding, red_at):
    """A red scene seen through each Bayer pattern (industrial cameras publish these) comes out red."""
    mosaic = np.zeros((8, 8), np.uint8)
    mosaic[red_at[0]::2, red_at[1]::2] = 200  # only the red-filtered photosites see light
    out = decode_image(encoding, 8, 8, 8, mosaic.tobytes())
    assert out.shape == (8, 8, 3)
    centre = out[2:6, 2:6].reshape(-1, 3).astype(int)
    assert np.all(centre[:, 0] >= 150) and np.all(centre[:, 1] <= 30) and np.all(centre[:, 2] <= 30), centre[:4]


def test_bayer16_keeps_the_high_byte():
    mosaic = np.zeros((4, 4), np.uint16)
    mosaic[0::2, 0::2] = 0xC800  # red photosites, 16-bit
    out = decode_image("bayer_rggb16", 4, 4, 8, mosaic.tobytes())
    assert out.dtype == np.uint8 and out[1:3, 1:3, 0].min() >= 150 and out[1:3, 1:3, 1:].max() <= 30
