"""Binary masks <-> COCO uncompressed RLE (the `mask_rle` of `pam-ros describe` and frames.jsonl).

{"size": [h, w], "counts": [...]}: run lengths over the pixels in column-major (Fortran) order,
alternating background/foreground and starting with background (a leading 0 when the first
pixel is foreground), as pycocotools' uncompressed RLE.
"""
from __future__ import annotations

import numpy as np


def mask_to_rle(mask: np.ndarray) -> dict:
    """HxW boolean (or 0/non-zero) mask -> {"size": [h, w], "counts": [int, ...]}."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (HxW), got shape {mask.shape}")
    height, width = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return {"size": [int(height), int(width)], "counts": []}
    # Positions where the value changes, plus both ends, give the run lengths.
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return {"size": [int(height), int(width)], "counts": [int(c) for c in counts]}


def rle_to_mask(rle: dict) -> np.ndarray:
    """{"size": [h, w], "counts": [...]} -> HxW bool mask. ValueError when counts do not fill the size."""
    height, width = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.size and (counts < 0).any():
        raise ValueError("RLE counts must not be negative")
    if int(counts.sum()) != height * width:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {height * width} for size {height}x{width}")
    values = np.arange(counts.size) % 2 == 1  # odd runs are foreground
    flat = np.repeat(values, counts)
    return flat.reshape((height, width), order="F")
