"""COCO uncompressed RLE of binary masks (column-major, background first)."""
import numpy as np
import pytest

from pam_ros.model.masks import mask_bbox_xywh, mask_to_rle, rle_to_mask


def test_rle_is_column_major_and_starts_with_background():
    mask = np.array([[0, 1, 1],
                     [0, 1, 0]], dtype=bool)
    # columns: [0,0], [1,1], [1,0] -> 0 0 1 1 1 0
    assert mask_to_rle(mask) == {"size": [2, 3], "counts": [2, 3, 1]}
    starts_with_object = np.array([[1, 0], [0, 0]], dtype=bool)
    assert mask_to_rle(starts_with_object)["counts"] == [0, 1, 3]
    assert mask_to_rle(np.zeros((4, 5), bool))["counts"] == [20]
    assert mask_to_rle(np.ones((4, 5), bool))["counts"] == [0, 20]


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6
    rle = mask_to_rle(mask)
    assert sum(rle["counts"]) == 37 * 53
    assert np.array_equal(rle_to_mask(rle), mask)
    with pytest.raises(ValueError, match=r"mask must be 2-D \[H, W\], got shape \[2, 2, 2\]"):
        mask_to_rle(np.zeros((2, 2, 2)))


def test_bbox():
    mask = np.zeros((10, 20), bool)
    mask[2:5, 7:11] = True
    assert mask_bbox_xywh(mask) == (7, 2, 4, 3)
    assert mask_bbox_xywh(np.zeros((3, 3), bool)) == (0, 0, 0, 0)
