"""Orientation, oriented size and the grasp pose (engine/grasp.py, issue #25's definition).

Two kinds of tests:
- one per step of the definition on small hand-computed point sets;
- known answers: RGB-D scenes rendered here analytically (ray-box, ray-cylinder, ray-plane
  intersection; the mask is the object's exact silhouette, no model involved) of a flat box on a table
  turned 30 degrees about the vertical and tilted 15 degrees, a cylinder lying at 45 degrees, a plate
  seen at a grazing angle. The depth goes through 16UC1 millimetres as from a camera. The truth comes
  from the scene: the object's own axes and the surface normal at the grasp point. Sizes and widths are
  the definition's 2-98 percentile extents, so their truth is that extent of the exact (unquantised)
  surface points along the true axes (for a flat face seen evenly that is 0.96 times its length).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pam_ros.engine.geometry import CameraIntrinsics, DepthImage, DepthSettings, back_project, object_geometry
from pam_ros.engine.grasp import (
    approach_direction,
    closing_axis,
    grasp_of,
    grasp_width,
    oriented_size,
    principal_axes,
    quaternion_of,
)

S = math.sqrt(0.5)

# ------------------------------------------------------------------------------- step by step


def six_points():
    """c = (0, 0, 1); +-2 along d1 = (0.6, -0.8, 0), +-1 along d2 = (0.8, 0.6, 0), +-0.1 along z."""
    c = np.array([0.0, 0.0, 1.0])
    d1, d2, d3 = np.array([0.6, -0.8, 0.0]), np.array([0.8, 0.6, 0.0]), np.array([0.0, 0.0, 1.0])
    return c, np.array([c + 2 * d1, c - 2 * d1, c + d2, c - d2, c + 0.1 * d3, c - 0.1 * d3])


def test_step1_axes_are_sorted_by_variance_and_signed_by_the_rules():
    c, points = six_points()
    axes = principal_axes(points, np.median(points, axis=0))
    # e3 towards the camera (e3 . c < 0); e1 flipped so that its largest component (-0.8) is positive
    assert np.allclose(axes[:, 2], [0, 0, -1])
    assert np.allclose(axes[:, 0], [-0.6, 0.8, 0])
    assert np.allclose(axes[:, 1], [0.8, 0.6, 0])  # e3 x e1
    assert np.allclose(np.cross(axes[:, 0], axes[:, 1]), axes[:, 2])  # right-handed


def test_step2_orientation_is_the_quaternion_of_the_axes_with_w_not_negative():
    quarter_turn = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # 90 degrees about z
    assert quaternion_of(quarter_turn) == pytest.approx((0, 0, S, S))
    minus_quarter = quarter_turn.T  # -90 degrees about z: (0, 0, -S, S), never (0, 0, S, -S)
    assert quaternion_of(minus_quarter) == pytest.approx((0, 0, -S, S))
    for angle in np.linspace(-3.0, 3.0, 13):
        assert quaternion_of(Rotation.from_rotvec([0.3 * angle, 0.2, angle]).as_matrix())[3] >= 0


def test_step3_oriented_size_is_the_percentile_extent_along_each_axis():
    c, points = six_points()
    axes = principal_axes(points, c)
    # along e1 the values are -2, 0, 0, 0, 0, 2: linear interpolation gives 1.8 - (-1.8)
    assert oriented_size(points, c, axes) == pytest.approx((3.6, 1.8, 0.18))


def grid(centre, step, n, axis_u, axis_v):
    offsets = (np.arange(n) - (n - 1) / 2) * step
    return np.array([np.asarray(centre) + a * np.asarray(axis_u) + b * np.asarray(axis_v)
                     for a in offsets for b in offsets])


def test_step4_approach_is_into_the_surface_near_the_grasp_point():
    g = np.array([0.0, 0.0, 1.0])
    near = grid(g, 0.005, 4, [1, 0, 0], [0, 1, 0])  # 16 points on z = 1 within 2 cm of g
    far = grid([0.2, 0.0, 1.2], 0.02, 5, [S, 0, S], [0, 1, 0])  # a 45-degree wall farther away
    points = np.vstack([near, far])
    assert np.allclose(approach_direction(points, g, 0.02), [0, 0, 1])  # n = (0, 0, -1) faces the camera
    # fewer than 10 points near g: the normal is fitted to all the points
    few = np.vstack([grid(g, 0.005, 3, [1, 0, 0], [0, 1, 0]), far])
    _, vectors = np.linalg.eigh(np.cov(few, rowvar=False))
    normal = vectors[:, 0] if vectors[:, 0] @ g < 0 else -vectors[:, 0]
    assert np.allclose(approach_direction(few, g, 0.02), -normal)
    assert not np.allclose(-normal, [0, 0, 1], atol=0.05)


def test_step5_closing_axis_is_e2_made_perpendicular_to_the_approach():
    axes = np.stack([[-0.6, 0.8, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, -1.0]], axis=1)
    assert np.allclose(closing_axis(axes, np.array([0.0, 0.0, 1.0])), [0.8, 0.6, 0])
    oblique = np.array([0.0, 0.6, 0.8])  # e2 . a = 0.36: x = (0.8, 0.384, -0.288) / 0.932952
    assert np.allclose(closing_axis(axes, oblique), np.array([0.8, 0.384, -0.288]) / math.sqrt(0.8704))
    along_e2 = np.array([0.8, 0.6, 0.0])  # e2 is the approach: close along e1
    assert np.allclose(closing_axis(axes, along_e2), [-0.6, 0.8, 0])


def test_step6_width_is_measured_in_the_slab_across_the_long_axis():
    axes = np.eye(3)  # e1 = x, e2 = y
    g = np.array([0.0, 0.0, 1.0])
    slab = np.array([[0.0, y, 1.0] for y in np.arange(-3, 4) * 0.01])  # 7 points, y = -0.03 .. 0.03
    outside = np.array([[0.05, y, 1.0] for y in (-0.1, 0.1)])  # wider, but 5 cm along e1
    points = np.vstack([slab, outside])
    # y values -0.03 .. 0.03 in 7 steps: the 98th percentile is 0.02 + 0.88 * 0.01
    assert grasp_width(points, g, axes, np.array([0.0, 1, 0]), 0.01, (9, 8, 7)) == pytest.approx(0.0576)
    # fewer than 5 points in the slab: oriented_size along e2
    assert grasp_width(np.vstack([slab[:4], outside]), g, axes, np.array([0.0, 1, 0]), 0.01, (9, 8, 7)) == 8


def test_step7_grasp_orientation_has_closing_x_and_approach_z():
    points = grid([0.0, 0.0, 1.0], 0.005, 9, [1, 0, 0], [0, 1, 0]) * np.array([1.0, 0.5, 1.0])  # long along x
    grasp = grasp_of(points, np.median(points, axis=0), [0.0, 0.0, 1.0], 0.02, 0.01)
    # e1 = x, e3 = -z, e2 = e3 x e1 = -y; a = +z; x_g = -y; y axis = a x x_g = (1, 0, 0)
    assert np.allclose(grasp.approach, [0, 0, 1]) and np.allclose(grasp.closing_axis, [0, -1, 0])
    rotation = Rotation.from_quat(grasp.grasp_orientation).as_matrix()
    assert np.allclose(rotation, np.stack([[0, -1, 0], [1, 0, 0], [0, 0, 1]], axis=1))
    assert grasp.grasp_orientation == pytest.approx((0, 0, -S, S))


def test_a_single_point_still_gives_a_pose():
    grasp = grasp_of(np.array([[0.1, 0.0, 1.0]]), [0.1, 0.0, 1.0], [0.1, 0.0, 1.0], 0.02, 0.01)
    assert all(math.isfinite(v) for v in grasp.orientation + grasp.grasp_orientation) and grasp.grasp_width == 0


# ------------------------------------------------------------------------------- known answers

W, H = 480, 360
K = CameraIntrinsics(450.0, 450.0, (W - 1) / 2, (H - 1) / 2, W, H)
LOOK_DOWN = np.diag([1.0, -1.0, -1.0])  # object frame (x long, z up) -> camera frame, seen from straight above


def rays() -> np.ndarray:
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u)], axis=-1)  # z = 1: t is the depth


def pose(yaw_deg: float, tilt_deg: float) -> np.ndarray:
    """Object axes in the camera frame: turned about its vertical, then the whole table tilted about x."""
    return (Rotation.from_euler("x", tilt_deg, degrees=True).as_matrix() @ LOOK_DOWN
            @ Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix())


def table_depth(point_on_table, normal) -> np.ndarray:
    return (np.asarray(point_on_table) @ normal) / (rays() @ normal)


def box_scene(size=(0.20, 0.12, 0.025), yaw=30.0, tilt=15.0, centre=(0.0, 0.0, 0.6)):
    """Ray-box (slab) intersection; the box lies on the table (its bottom face)."""
    rotation, centre = pose(yaw, tilt), np.asarray(centre)
    half = np.asarray(size) / 2
    direction, origin = rays() @ rotation, rotation.T @ -centre  # rays in box coordinates
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - origin) / direction, (half - origin) / direction
    near, far = np.nanmax(np.minimum(t1, t2), axis=-1), np.nanmin(np.maximum(t1, t2), axis=-1)
    mask = (near <= far) & (near > 0)
    up = rotation[:, 2]
    depth = np.where(mask, near, table_depth(centre - half[2] * up, up))
    return depth, mask, rotation


def cylinder_scene(radius=0.03, length=0.2, yaw=45.0, centre=(0.0, 0.0, 0.6)):
    """Ray-cylinder (side and end caps) intersection; the cylinder lies on the table, axis at 45 degrees."""
    rotation, centre = pose(yaw, 0.0), np.asarray(centre)
    d, o = rays() @ rotation, rotation.T @ -centre
    a = d[..., 1] ** 2 + d[..., 2] ** 2
    b = 2 * (o[1] * d[..., 1] + o[2] * d[..., 2])
    disc = b * b - 4 * a * (o[1] ** 2 + o[2] ** 2 - radius ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / (2 * a)
        side = (disc >= 0) & (np.abs(o[0] + t * d[..., 0]) <= length / 2) & (t > 0)
        best = np.where(side, t, np.inf)
        for end in (-length / 2, length / 2):
            tc = (end - o[0]) / d[..., 0]
            cap = ((o[1] + tc * d[..., 1]) ** 2 + (o[2] + tc * d[..., 2]) ** 2 <= radius ** 2) & (tc > 0)
            best = np.where(cap & (tc < best), tc, best)
    mask = np.isfinite(best)
    up = rotation[:, 2]
    return np.where(mask, best, table_depth(centre - radius * up, up)), mask, rotation


def plate_scene(radius=0.1, grazing=70.0, centre=(0.0, 0.0, 0.7)):
    """Ray-plane intersection inside a disc, its normal 70 degrees from the camera's axis."""
    rotation, centre = pose(20.0, grazing), np.asarray(centre)
    up = rotation[:, 2]
    depth = table_depth(centre, up)
    points = rays() * depth[..., None]
    mask = np.linalg.norm(points - centre, axis=-1) <= radius
    return np.where(mask, depth, table_depth(centre - 0.01 * up, up)), mask, rotation


def as_camera_depth(metres: np.ndarray) -> np.ndarray:
    """What a 16UC1 camera reports: whole millimetres."""
    return (np.round(metres * 1000) / 1000).astype(np.float32)


def signed_axes(e1, e3) -> np.ndarray:
    """The definition's sign rules applied to true axes."""
    e1 = e1 if e1[np.argmax(np.abs(e1))] > 0 else -e1
    e3 = e3 if e3[2] < 0 else -e3  # every scene is in front of the camera: towards it = negative z here
    return np.stack([e1, np.cross(e3, e1), e3], axis=1)


def degrees_between(u, v) -> float:
    return math.degrees(math.acos(min(1.0, abs(float(np.dot(u, v)) / np.linalg.norm(u) / np.linalg.norm(v)))))


def rotation_error_deg(quaternion, truth: np.ndarray) -> float:
    return math.degrees((Rotation.from_quat(quaternion) * Rotation.from_matrix(truth).inv()).magnitude())


def exact_points(depth, mask):
    v, u = np.nonzero(mask)
    return back_project(u, v, depth[v, u], K)


def extent(values) -> float:
    return float(np.percentile(values, 98) - np.percentile(values, 2))


def true_extents(depth, mask, truth: np.ndarray, geometry, normal_at_g):
    """The definition's sizes and width on the exact surface points along the true axes."""
    points = exact_points(depth, mask)
    sizes = [extent(points @ truth[:, i]) for i in range(3)]
    g = np.asarray(geometry.grasp_point)
    approach = -normal_at_g
    closing = truth[:, 1] - (truth[:, 1] @ approach) * approach
    closing /= np.linalg.norm(closing)
    slab = points[np.abs((points - g) @ truth[:, 0]) <= DepthSettings().grasp_slab_m]
    return sizes, extent((slab - g) @ closing)


def measure(scene, settings=DepthSettings()):
    depth, mask, rotation = scene
    geometry = object_geometry(DepthImage(as_camera_depth(depth), K, "camera", 0), mask, settings)
    assert geometry is not None
    return depth, mask, rotation, geometry


def check(name, geometry, truth, sizes, width, normal_at_g, *, axes=(0, 1, 2)):
    estimated = Rotation.from_quat(geometry.orientation).as_matrix()
    errors = {"orientation_deg": (rotation_error_deg(geometry.orientation, truth) if axes == (0, 1, 2)
                                  else max(degrees_between(estimated[:, i], truth[:, i]) for i in axes)),
              "size_mm": 1000 * max(abs(geometry.oriented_size[i] - sizes[i]) for i in range(3)),
              "width_mm": 1000 * abs(geometry.grasp_width - width),
              "approach_deg": degrees_between(geometry.approach, -normal_at_g)}
    print(name, {key: round(value, 3) for key, value in errors.items()})
    assert errors["orientation_deg"] <= 2.0, errors
    assert errors["size_mm"] <= 3.0, (geometry.oriented_size, sizes)
    assert errors["width_mm"] <= 3.0, (geometry.grasp_width, width)
    assert errors["approach_deg"] <= 3.0, (geometry.approach, normal_at_g)
    # the approach points into the object (away from the camera) and the pose is right-handed
    assert np.dot(geometry.approach, geometry.grasp_point) > 0
    hand = Rotation.from_quat(geometry.grasp_orientation).as_matrix()
    assert np.allclose(hand[:, 2], geometry.approach, atol=1e-9) and np.allclose(hand[:, 0], geometry.closing_axis)


def test_known_answer_flat_box_on_a_table_turned_30_and_tilted_15():
    depth, mask, rotation, geometry = measure(box_scene())
    truth = signed_axes(rotation[:, 0], rotation[:, 2])
    normal = rotation[:, 2] if rotation[2, 2] < 0 else -rotation[:, 2]  # the top face, towards the camera
    sizes, width = true_extents(depth, mask, truth, geometry, normal)
    check("box", geometry, truth, sizes, width, normal)
    # and in the box's own terms: 0.96 of its 20 x 12 cm top, the width across its 12 cm
    assert geometry.oriented_size[0] == pytest.approx(0.96 * 0.20, abs=0.003)
    assert geometry.oriented_size[1] == pytest.approx(0.96 * 0.12, abs=0.003)
    assert geometry.grasp_width == pytest.approx(0.96 * 0.12, abs=0.003)


def test_known_answer_cylinder_lying_at_45_degrees():
    radius = 0.03
    depth, mask, rotation, geometry = measure(cylinder_scene(radius=radius))
    truth = signed_axes(rotation[:, 0], rotation[:, 2])
    g = np.asarray(geometry.grasp_point)
    axis_point = np.array([0.0, 0.0, 0.6]) + ((g - [0.0, 0.0, 0.6]) @ rotation[:, 0]) * rotation[:, 0]
    normal = (g - axis_point) / np.linalg.norm(g - axis_point)  # the true surface normal at g
    sizes, width = true_extents(depth, mask, truth, geometry, normal)
    check("cylinder", geometry, truth, sizes, width, normal)
    assert degrees_between(Rotation.from_quat(geometry.orientation).as_matrix()[:, 0], [S, -S, 0]) < 1  # 45 deg in the image
    assert geometry.grasp_width == pytest.approx(0.96 * 2 * radius, abs=0.003)  # across the diameter


def test_known_answer_plate_seen_at_a_grazing_angle():
    # the band around the median depth must cover the plate's 19 cm of depth at this angle
    depth, mask, rotation, geometry = measure(plate_scene(), DepthSettings(depth_band_m=0.15))
    normal = rotation[:, 2] if rotation[2, 2] < 0 else -rotation[:, 2]
    # a disc has no long axis: its e1 may lie anywhere in its plane; the truth takes the measured one's
    # direction within the true plane
    e1 = Rotation.from_quat(geometry.orientation).as_matrix()[:, 0]
    e1 = e1 - (e1 @ normal) * normal
    truth = signed_axes(e1 / np.linalg.norm(e1), normal)
    sizes, width = true_extents(depth, mask, truth, geometry, normal)
    check("plate", geometry, truth, sizes, width, normal, axes=(2,))
    assert geometry.oriented_size[2] < 0.003  # flat


def test_a_taller_box_shows_its_side_faces_and_pca_follows_them():
    """Not a requirement, a limit of the definition worth knowing: the visible side faces of a tall box
    pull e3 off the top face's normal (about 10 degrees for 16 x 6 x 4 cm here), while the approach,
    fitted near the grasp point only, stays on the normal."""
    depth, mask, rotation, geometry = measure(box_scene(size=(0.16, 0.06, 0.04)))
    normal = rotation[:, 2] if rotation[2, 2] < 0 else -rotation[:, 2]
    e3 = Rotation.from_quat(geometry.orientation).as_matrix()[:, 2]
    assert degrees_between(e3, normal) > 5
    assert degrees_between(geometry.approach, -normal) < 1
