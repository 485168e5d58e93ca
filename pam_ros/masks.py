"""Binary masks <-> COCO uncompressed RLE (what `pam-ros describe --json` and the replay output use).

COCO's uncompressed RLE runs over the mask in column-major (Fortran) order and always starts with a
run of background (0) pixels, which is 0 long when the first pixel is foreground.
"""
from __future__ import annotations

import numpy as np


def mask_to_rle(mask: np.ndarray) -> dict:
    """bool/0-1 mask [H, W] -> {"size": [h, w], "counts": [run lengths, background first]}."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {list(mask.shape)}")
    h, w = mask.shape
    flat = mask.astype(bool).ravel(order="F")
    if flat.size == 0:
        return {"size": [int(h), int(w)], "counts": []}
    # positions where the value changes, plus both ends
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": [int(h), int(w)], "counts": [int(c) for c in counts]}


def rle_to_mask(rle: dict) -> np.ndarray:
    """Inverse of mask_to_rle: bool [H, W]."""
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {h * w} pixels")
    values = np.arange(counts.size) % 2 == 1  # background runs at even positions
    flat = np.repeat(values, counts)
    return flat.reshape((h, w), order="F")


def mask_bbox_xywh(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box [x, y, w, h] of the foreground pixels (zeros for an empty mask)."""
    ys, xs = np.nonzero(np.asarray(mask))
    if xs.size == 0:
        return (0, 0, 0, 0)
    x0, y0 = int(xs.min()), int(ys.min())
    return (x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1)
