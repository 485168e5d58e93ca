"""Overlay drawing on hand-built frame results (no model needed)."""
from __future__ import annotations

import colorsys

import numpy as np
import pytest

from pam_ros.engine.types import (
    FrameResult,
    ObjectResult,
    ObjectSemantics,
    SemanticsState,
    TrackingState,
)
from pam_ros.viz.colours import object_colour
from pam_ros.viz.overlay import draw_overlay, mask_outline, object_label

H, W = 60, 80


def make_object(object_id: str, box: tuple[int, int, int, int] | None, *, state=TrackingState.TRACKED,
                category: str = "", score: float = 0.9, frames_lost: int = 0) -> ObjectResult:
    mask = np.zeros((H, W), bool)
    roi = (0, 0, 0, 0)
    if box is not None:
        x, y, w, h = box
        mask[y:y + h, x:x + w] = True
        roi = box
    semantics = ObjectSemantics(state=SemanticsState.READY if category else SemanticsState.PENDING,
                                category=category)
    return ObjectResult(object_id=object_id, score=score, object_score_logit=2.0, tracking_state=state,
                        frames_lost=frames_lost, mask=mask, roi=roi, mask_area=int(mask.sum()),
                        centroid=(0.0, 0.0), semantics=semantics)


def frame_with(*objects: ObjectResult) -> FrameResult:
    return FrameResult(frame_index=0, stamp_ns=1, width=W, height=H, objects=list(objects),
                       tracking_seconds=0.0)


@pytest.fixture()
def grey_image() -> np.ndarray:
    return np.full((H, W, 3), 100, np.uint8)


def test_mask_is_tinted_with_the_objects_colour_and_background_untouched(grey_image):
    obj = make_object("cup", (30, 20, 20, 16), category="cup")
    out = draw_overlay(grey_image, frame_with(obj))
    assert out.shape == grey_image.shape and out.dtype == np.uint8
    assert out is not grey_image and np.all(grey_image == 100), "input must not be modified"
    colour = np.asarray(object_colour("cup"), float)
    inside = out[28, 40].astype(float)  # well inside the mask, away from the label and outline
    expected = 100 * 0.55 + colour * 0.45
    assert np.all(np.abs(inside - expected) <= 1.0)
    assert np.all(out[H - 1, 0] == 100) and np.all(out[H - 1, W - 1] == 100) and np.all(out[0, 0] == 100)
    # the outline is drawn in the solid colour on the mask border
    assert tuple(out[35, 40]) == object_colour("cup")


def test_each_id_keeps_its_colour_across_runs_and_ids_differ():
    # Fixed values: the same id gets the same colour in every process and release (overlays of two
    # replays, or of the node and a replay, compare by eye).
    assert object_colour("obj_1") == (255, 98, 38)
    assert object_colour("cup") == (38, 254, 255)
    assert object_colour("mug7") == (38, 162, 255)
    assert [object_colour(f"obj_{i}") for i in range(4)] == [(38, 255, 161), (255, 98, 38), (38, 42, 255),
                                                             (105, 255, 38)]


def test_numbered_objects_of_one_scene_get_clearly_different_hues():
    # obj_0, obj_5 and obj_7 used to be three near-identical pinks.
    hues = [colorsys.rgb_to_hsv(*(c / 255 for c in object_colour(f"obj_{i}")))[0] for i in range(8)]
    gaps = [min(abs(a - b), 1 - abs(a - b)) for k, a in enumerate(hues) for b in hues[k + 1:]]
    assert min(gaps) > 0.08, "any two of eight objects are at least ~30 degrees of hue apart"


def test_label_names_id_category_and_score(grey_image):
    obj = make_object("mug7", (10, 30, 20, 20), category="mug", score=0.876)
    assert object_label(obj) == "mug7 mug 0.88"
    pending = make_object("a", (10, 30, 20, 20))
    assert object_label(pending) == "a ... 0.90"
    out = draw_overlay(grey_image, frame_with(obj))
    # a label tag of the object's colour sits just above the box
    tag = out[18:30, 10:40].reshape(-1, 3)
    assert (tag == np.asarray(object_colour("mug7"), np.uint8)).all(axis=1).sum() > 50


def test_lost_object_is_grey_and_marked(grey_image):
    lost = make_object("box", None, state=TrackingState.LOST, score=0.1, frames_lost=3)
    assert "LOST" in object_label(lost)
    out = draw_overlay(grey_image, frame_with(lost))
    assert not np.array_equal(out, grey_image), "a LOST marker must be drawn even without a mask"
    # the marker is a grey tag in the top-left corner
    assert (out[0:10, 0:30].reshape(-1, 3) == (160, 160, 160)).all(axis=1).sum() > 30


def test_outline_is_the_mask_border():
    mask = np.zeros((10, 10), bool)
    mask[2:8, 3:9] = True
    outline = mask_outline(mask)
    assert outline[2, 5] and outline[7, 5] and outline[5, 3] and outline[5, 8]
    assert not outline[4, 5] and not outline[0, 0]
    assert outline.sum() == 2 * 6 + 2 * 4


def test_mask_of_wrong_size_is_a_clear_error(grey_image):
    obj = make_object("x", (1, 1, 3, 3))
    obj.mask = np.zeros((H + 1, W), bool)
    with pytest.raises(ValueError, match="the image is 80x60"):
        draw_overlay(grey_image, frame_with(obj))


def test_non_rgb_image_is_a_clear_error():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        draw_overlay(np.zeros((H, W), np.uint8), frame_with())


def test_labels_are_short_printable_and_do_not_cover_each_other(grey_image):
    noisy = make_object("a", (0, 0, W, H), category="\x02chair\x1a\nwith a very long generated description")
    assert object_label(noisy) == "a chair with a very lon... 0.90"
    other = make_object("b", (0, 0, W, H), category="cup")
    out = draw_overlay(grey_image, frame_with(noisy, other))
    # both tags are visible: rows near the top carry colour a, the rows below colour b
    column = out[:, 2]
    assert (column == object_colour("a")).all(axis=1).any() and (column == object_colour("b")).all(axis=1).any()


def test_rviz_markers_take_the_overlay_colour_of_each_object():
    """One colour per object: the MarkerArray's colour is the overlay's (they used to differ)."""
    from pam_ros.ros.planning import _colour

    for object_id in ("obj_0", "obj_5", "cup", "front/obj_1"):
        marker = _colour(object_id, 0.4)
        assert (round(marker.r * 255), round(marker.g * 255), round(marker.b * 255)) == object_colour(object_id)
        assert abs(marker.a - 0.4) < 1e-6
