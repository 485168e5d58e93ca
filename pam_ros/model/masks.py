"""Binary masks: COCO uncompressed RLE, bounding boxes and object scores, as every front end reports them.

The RLE and box computations are sam2's own (`sam2.utils.amg`, the same COCO uncompressed RLE:
column-major, counts start with background). Only input checks are added here.
"""
from __future__ import annotations

import math

import numpy as np


def _as_tensor(mask: np.ndarray):
    import torch

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {list(mask.shape)}")
    return torch.from_numpy(np.ascontiguousarray(mask.astype(bool)))


def mask_to_rle(mask: np.ndarray) -> dict:
    """bool/0-1 mask [H, W] -> {"size": [h, w], "counts": [run lengths, background first]}."""
    from sam2.utils.amg import mask_to_rle_pytorch

    tensor = _as_tensor(mask)
    h, w = tensor.shape
    if tensor.numel() == 0:
        return {"size": [int(h), int(w)], "counts": []}
    rle = mask_to_rle_pytorch(tensor[None])[0]
    return {"size": [int(h), int(w)], "counts": [int(c) for c in rle["counts"]]}


def rle_to_mask(rle: dict) -> np.ndarray:
    """Inverse of mask_to_rle: bool [H, W]."""
    from sam2.utils.amg import rle_to_mask as amg_rle_to_mask

    h, w = (int(v) for v in rle["size"])
    counts = [int(c) for c in rle["counts"]]
    # amg trusts its own encoder; RLE read back from files is checked so a damaged one says so
    if sum(counts) != h * w or any(c < 0 for c in counts):
        raise ValueError(f"RLE counts sum to {sum(counts)}, expected {h * w} pixels")
    return np.ascontiguousarray(amg_rle_to_mask({"size": [h, w], "counts": counts}))


def mask_bbox_xywh(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box [x, y, w, h] of the foreground pixels (zeros for an empty mask)."""
    from sam2.utils.amg import batched_mask_to_box

    tensor = _as_tensor(mask)
    if tensor.numel() == 0 or not bool(tensor.any()):
        return (0, 0, 0, 0)
    x0, y0, x1, y1 = (int(v) for v in batched_mask_to_box(tensor[None])[0])
    return (x0, y0, x1 - x0 + 1, y1 - y0 + 1)


def score_from_logit(logit: float) -> float:
    """The object score reported everywhere: sigmoid(object_score_logit), without overflow."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    z = math.exp(logit)  # underflows to 0.0 quietly for very negative logits
    return z / (1.0 + z)


def mask_centroid(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) mean of the foreground pixels; (0, 0) for an empty mask."""
    ys, xs = np.nonzero(mask)
    return (float(xs.mean()), float(ys.mean())) if xs.size else (0.0, 0.0)
