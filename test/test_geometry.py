"""3-D geometry from aligned depth (engine/geometry.py): part one's definition and the intrinsics checks.

The scenes are rendered here from known geometry: a box's front face seen by a pinhole camera in
front of a wall, so every expected number follows from the scene, not from the code under test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from pam_ros.engine.geometry import (
    CameraIntrinsics,
    DepthImage,
    DepthSettings,
    back_project,
    check_depth_size,
    depth_to_metres,
    frame_geometry,
    grasp_pixel_of,
    intrinsics_problem,
    kept_pixels,
    object_geometry,
    valid_depth,
)
from pam_ros.errors import DepthError, DepthSizeError

WIDTH, HEIGHT = 160, 120
INTRINSICS = CameraIntrinsics(fx=150.0, fy=150.0, cx=79.5, cy=59.5, width=WIDTH, height=HEIGHT)
# A box whose front face is 0.10 m wide, 0.08 m tall, centred at (0.03, -0.02) at 0.60 m; a wall at 1.5 m.
BOX_CENTRE = (0.03, -0.02, 0.60)
BOX_SIZE = (0.10, 0.08)
WALL_M = 1.5


def render_scene(centre=BOX_CENTRE, size=BOX_SIZE, wall=WALL_M) -> tuple[np.ndarray, np.ndarray]:
    """(depth in metres HxW float32, the box's perfect mask HxW bool)."""
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    z = centre[2]
    x = (u - INTRINSICS.cx) * z / INTRINSICS.fx
    y = (v - INTRINSICS.cy) * z / INTRINSICS.fy
    mask = (np.abs(x - centre[0]) <= size[0] / 2) & (np.abs(y - centre[1]) <= size[1] / 2)
    depth = np.where(mask, z, wall).astype(np.float32)
    return depth, mask


def as_16uc1(depth_m: np.ndarray, scale: float = 0.001) -> dict:
    units = np.round(np.nan_to_num(depth_m, nan=0.0, posinf=0.0) / scale).astype("<u2")
    return {"encoding": "16UC1", "width": WIDTH, "height": HEIGHT, "step": WIDTH * 2, "data": units.tobytes()}


def as_32fc1(depth_m: np.ndarray) -> dict:
    return {"encoding": "32FC1", "width": WIDTH, "height": HEIGHT, "step": WIDTH * 4,
            "data": depth_m.astype("<f4").tobytes()}


def depth_image(metres: np.ndarray, frame_id: str = "camera_color_optical_frame") -> DepthImage:
    return DepthImage(metres=metres, intrinsics=INTRINSICS, frame_id=frame_id, stamp_ns=5)


def decode(fields: dict, **kwargs) -> np.ndarray:
    return depth_to_metres(fields["encoding"], fields["width"], fields["height"], fields["step"], fields["data"],
                           **kwargs)


# ------------------------------------------------------------------------------- the whole definition

@pytest.mark.parametrize("encode", [as_16uc1, as_32fc1], ids=["16UC1", "32FC1"])
def test_perfect_mask_gives_the_box_centre_within_5_mm(encode):
    depth, mask = render_scene()
    geometry = object_geometry(depth_image(decode(encode(depth))), mask)
    assert geometry is not None
    # x, y of the box's centre; z of its front face (what depth sees)
    assert np.allclose(geometry.position, BOX_CENTRE, atol=0.005), geometry.position
    # 98th - 2nd percentile of a uniform spread covers 96 % of it (one pixel = 4 mm at 0.6 m)
    assert geometry.size[0] == pytest.approx(0.96 * BOX_SIZE[0], abs=0.005)
    assert geometry.size[1] == pytest.approx(0.96 * BOX_SIZE[1], abs=0.005)
    assert geometry.size[2] == pytest.approx(0.0, abs=1e-6)
    assert geometry.valid_fraction == 1.0 and geometry.points == int(mask.sum())
    assert np.allclose(geometry.grasp_point, BOX_CENTRE, atol=0.005)
    assert geometry.frame_id == "camera_color_optical_frame"


def test_16uc1_units_follow_depth_scale():
    depth, _ = render_scene()
    tenth_mm = decode(as_16uc1(depth, scale=0.0001), depth_scale=0.0001)
    assert np.allclose(tenth_mm, depth, atol=1e-4)
    millimetres = decode(as_16uc1(depth))
    assert millimetres[0, 0] == pytest.approx(WALL_M) and millimetres.dtype == np.float32


def test_decoding_honours_row_padding_and_byte_order():
    depth, _ = render_scene()
    units = np.round(depth / 0.001).astype(">u2")
    padded = np.zeros((HEIGHT, WIDTH * 2 + 6), np.uint8)
    padded[:, :WIDTH * 2] = units.view(np.uint8).reshape(HEIGHT, WIDTH * 2)
    decoded = depth_to_metres("16UC1", WIDTH, HEIGHT, WIDTH * 2 + 6, padded.tobytes(), is_bigendian=True)
    assert np.allclose(decoded, depth, atol=1e-6)


@pytest.mark.parametrize("encoding, problem", [("rgb8", "unsupported depth encoding 'rgb8'"),
                                               ("32FC1", "needs")])
def test_unusable_depth_payloads_are_refused(encoding, problem):
    with pytest.raises(DepthError, match=problem):
        depth_to_metres(encoding, WIDTH, HEIGHT, WIDTH * 4, b"\x00" * 10)


@pytest.mark.parametrize("encode, hole", [(as_16uc1, 0.0), (as_32fc1, math.nan)], ids=["16UC1-zero", "32FC1-nan"])
def test_holes_are_skipped_and_lower_the_valid_fraction(encode, hole):
    depth, mask = render_scene()
    holes = np.random.default_rng(0).random(depth.shape) < 0.3
    depth[holes] = hole
    geometry = object_geometry(depth_image(decode(encode(depth))), mask)
    assert np.allclose(geometry.position, BOX_CENTRE, atol=0.005)
    assert geometry.valid_fraction == pytest.approx((mask & ~holes).sum() / mask.sum())
    assert geometry.points == int((mask & ~holes).sum())


def test_wrong_size_depth_is_refused_naming_both_sizes():
    depth, mask = render_scene()
    small = depth_image(depth[:60, :80])
    with pytest.raises(DepthSizeError, match="depth image is 80x60 but the colour image is 160x120"):
        check_depth_size(small, (WIDTH, HEIGHT))
    with pytest.raises(DepthSizeError, match="80x60.*160x120"):
        frame_geometry(small, {"cup": mask})


def test_uncalibrated_camera_info_is_refused():
    with pytest.raises(DepthError, match="all zeros.*calibrated"):
        CameraIntrinsics.from_camera_info([0.0] * 9)
    k = CameraIntrinsics.from_camera_info([150, 0, 79.5, 0, 151, 59.5, 0, 0, 1], WIDTH, HEIGHT)
    assert (k.fx, k.fy, k.cx, k.cy) == (150, 151, 79.5, 59.5)


K_GOOD = [150, 0, 79.5, 0, 150, 59.5, 0, 0, 1]


@pytest.mark.parametrize("k, size, problem", [
    (K_GOOD, (640, 480), "CameraInfo is 640x480 but the depth image is 160x120"),
    ([-150, 0, 79.5, 0, 150, 59.5, 0, 0, 1], (WIDTH, HEIGHT), "no positive focal length"),
    ([150, 0, float("nan"), 0, 150, 59.5, 0, 0, 1], (WIDTH, HEIGHT), "non-finite"),
    ([150, 0, 79.5, 0, float("inf"), 59.5, 0, 0, 1], (WIDTH, HEIGHT), "non-finite"),
    ([0.0] * 9, (WIDTH, HEIGHT), "all zeros"),
], ids=["other-resolution", "negative-fx", "nan-in-k", "inf-fy", "all-zero"])
def test_intrinsics_that_cannot_give_metres_are_named(k, size, problem):
    intrinsics = CameraIntrinsics.from_camera_info(k, *size, check=False)
    assert problem in intrinsics_problem(intrinsics, (WIDTH, HEIGHT))
    if size == (WIDTH, HEIGHT):  # a bad K itself is refused at once where it is read checked (one-shot describe)
        with pytest.raises(DepthError, match=problem):
            CameraIntrinsics.from_camera_info(k, *size)
    assert intrinsics_problem(CameraIntrinsics.from_camera_info(K_GOOD, WIDTH, HEIGHT), (WIDTH, HEIGHT)) == ""


def test_bad_settings_are_refused_by_name():
    with pytest.raises(DepthError, match="min_depth_m < max_depth_m"):
        DepthSettings(min_depth_m=2.0, max_depth_m=1.0)
    with pytest.raises(DepthError, match="depth_band_m"):
        DepthSettings(depth_band_m=0)


# ------------------------------------------------------------------------------- step by step

def test_step1_valid_depth_is_finite_and_within_range():
    metres = np.array([[0.0, 0.05, 0.1, 1.0, 10.0, 10.5, np.nan, np.inf, -1.0]], np.float32)
    assert valid_depth(metres, DepthSettings()).tolist() == [[False, False, True, True, True, False, False,
                                                              False, False]]
    assert valid_depth(metres, DepthSettings(min_depth_m=0.01, max_depth_m=20)).tolist()[0][:6] == [
        False, True, True, True, True, True]


def test_step2_too_few_valid_pixels_give_no_geometry():
    depth, _ = render_scene()
    mask = np.zeros_like(depth, bool)
    mask[60, 80:100] = True  # 20 pixels on the box
    settings = DepthSettings(min_depth_points=20)
    assert object_geometry(depth_image(depth), mask, settings) is not None
    depth[60, 80] = np.nan  # 19 valid
    assert object_geometry(depth_image(depth), mask, settings) is None
    assert object_geometry(depth_image(depth), np.zeros_like(mask), settings) is None


def test_step3_the_band_around_the_median_drops_background_the_mask_bleeds_onto():
    depth, box = render_scene()
    bled = box.copy()
    rows, cols = np.nonzero(box)
    bled[rows.min() - 3:rows.max() + 4, cols.min() - 3:cols.max() + 4] = True  # a 3-pixel halo on the wall
    kept, median = kept_pixels(depth, bled, DepthSettings())
    assert median == pytest.approx(BOX_CENTRE[2])
    assert np.array_equal(kept, box)
    geometry = object_geometry(depth_image(depth), bled)
    assert np.allclose(geometry.position, BOX_CENTRE, atol=0.005)
    assert geometry.valid_fraction == pytest.approx(box.sum() / bled.sum())
    # a band wide enough to reach the wall keeps it, and the position moves towards it
    wide = object_geometry(depth_image(depth), bled, DepthSettings(depth_band_m=1.0))
    assert wide.valid_fraction == 1.0 and wide.size[2] > 0.8


def test_step4_back_projection_uses_the_intrinsics():
    point = back_project(79.5 + 150.0, 59.5 - 75.0, 2.0, INTRINSICS)
    assert np.allclose(point, [2.0, -1.0, 2.0])
    points = back_project([79.5, 0.0], [59.5, 0.0], [1.0, 3.0], INTRINSICS)
    assert np.allclose(points, [[0.0, 0.0, 1.0], [-79.5 * 3 / 150, -59.5 * 3 / 150, 3.0]])


def test_step5_median_and_percentile_extent_of_a_tilted_surface():
    # a plane whose depth grows with the column: z = 0.5 + 0.002 u over the mask
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH]
    depth = (0.5 + 0.0004 * u).astype(np.float32)
    mask = (u >= 40) & (u < 120) & (v >= 30) & (v < 90)
    geometry = object_geometry(depth_image(depth), mask)
    vv, uu = np.nonzero(mask)
    d = depth[vv, uu].astype(np.float64)
    expected = np.stack([(uu - 79.5) * d / 150, (vv - 59.5) * d / 150, d], axis=1)
    assert np.allclose(geometry.position, np.median(expected, axis=0))
    assert np.allclose(geometry.size, np.percentile(expected, 98, axis=0) - np.percentile(expected, 2, axis=0))
    assert geometry.points == int(mask.sum())


def test_step6_grasp_pixel_is_the_centre_of_the_widest_part_not_the_centroid():
    # a "C": its centroid lies in the gap, outside the mask; its widest part is the thick back
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[20:100, 30:60] = True  # thick back, 30 wide
    mask[20:34, 60:130] = True  # thin arms
    mask[86:100, 60:130] = True
    rows, cols = np.nonzero(mask)
    centroid = (int(round(cols.mean())), int(round(rows.mean())))
    assert not mask[centroid[1], centroid[0]]
    u, v = grasp_pixel_of(mask)
    assert mask[v, u] and 30 + 13 <= u <= 30 + 16 and 45 <= v <= 75


def test_step6_grasp_point_uses_its_own_depth_when_kept_else_the_median():
    depth, box = render_scene()
    depth[box] = np.linspace(0.58, 0.62, int(box.sum())).astype(np.float32)
    geometry = object_geometry(depth_image(depth), box)
    u, v = geometry.grasp_pixel
    assert np.allclose(geometry.grasp_point, back_project(u, v, depth[v, u], INTRINSICS))
    depth[v, u] = np.nan  # a hole under the grasp pixel: back-projected at the median depth
    holed = object_geometry(depth_image(depth), box)
    assert holed.grasp_pixel == (u, v)
    median = float(np.median(depth[box & np.isfinite(depth)]))
    assert np.allclose(holed.grasp_point, back_project(u, v, median, INTRINSICS))


def test_step6_an_object_cut_by_the_image_border_is_grasped_inside_it():
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[:, :40] = True  # fills the left edge
    u, v = grasp_pixel_of(mask)
    assert 18 <= u <= 21 and 18 <= v <= HEIGHT - 19


def test_step7_frame_id_is_the_depth_images():
    depth, mask = render_scene()
    assert object_geometry(depth_image(depth, frame_id="depth_optical"), mask).frame_id == "depth_optical"
    assert object_geometry(depth_image(depth), mask).to_json()["frame_id"] == "camera_color_optical_frame"


def test_geometry_json_has_the_documented_keys():
    depth, mask = render_scene()
    data = object_geometry(depth_image(depth), mask).to_json()
    assert set(data) == {"frame_id", "position", "size", "valid_fraction", "points", "grasp_pixel", "grasp_point",
                         "orientation", "oriented_size", "grasp_pose", "grasp_width"}
    assert len(data["position"]) == 3 and len(data["grasp_pixel"]) == 2
    assert len(data["orientation"]) == 4 and len(data["oriented_size"]) == 3
    assert data["grasp_pose"]["position"] == data["grasp_point"] and len(data["grasp_pose"]["orientation"]) == 4
    assert isinstance(data["grasp_width"], float)
