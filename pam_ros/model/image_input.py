"""The one check of an input image: an HxWx3 uint8 RGB numpy array of at least 2x2 pixels (numpy only).

The engine (every frame), SAM 2's preprocessing and one-shot describes all call it, so an image is
refused with the same words wherever it enters.
"""
from __future__ import annotations

import numpy as np

from pam_ros.errors import ImageError


def check_rgb_array(image) -> np.ndarray:
    """The image as a C-contiguous HxWx3 uint8 array; ImageError saying what it got otherwise."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image must be a numpy array (HxWx3 uint8 RGB), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"image must be HxWx3 RGB, got shape {list(image.shape)}")
    if image.dtype != np.uint8:
        raise ImageError(f"image must be uint8, got {image.dtype}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ImageError(f"image is empty or degenerate: {image.shape[1]}x{image.shape[0]}")
    return np.ascontiguousarray(image)
