"""How an object lies and how to pick it up: orientation, oriented size and a grasp pose (no ROS).

The one implementation of issue #25's definition ("For manipulation planners, part two"), on the
kept points P (N x 3, metres, camera optical frame) of engine/geometry.py, its position c (per-axis
median) and grasp point g:

1. axes: unit eigenvectors e1, e2, e3 of numpy.cov(P, rowvar=False) for eigenvalues l1 >= l2 >= l3;
   e3 . c < 0 (towards the camera), e1's component of largest magnitude positive, e2 = e3 x e1;
2. orientation = the quaternion of the rotation with columns (e1, e2, e3), w >= 0;
3. oriented_size_i = 98th - 2nd percentile (numpy's linear interpolation) of (P - c) . e_i;
4. approach: Q = points of P within grasp_radius_m of g (all of P when fewer than 10); n = unit
   eigenvector of the smallest eigenvalue of cov(Q) with n . g < 0; a = -n (into the object);
5. closing axis x_g = e2 - (e2 . a) a, normalised (e1 the same way when that norm is below 1e-6);
6. grasp_width = 98th - 2nd percentile of (p - g) . x_g over the p of P with |(p - g) . e1| <=
   grasp_slab_m; oriented_size_2 when fewer than 5 such points;
7. grasp orientation = the quaternion of the rotation with columns (x_g, a x x_g, a), w >= 0.

Quaternions are (x, y, z, w) as in geometry_msgs/Quaternion.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_APPROACH_POINTS = 10  # fewer points near g than this: the approach is fitted on all of P
MIN_SLAB_POINTS = 5  # fewer points in the slab than this: the width falls back to oriented_size along e2
MIN_CLOSING_NORM = 1e-6  # e2 (nearly) parallel to the approach: close along e1 instead
LOW, HIGH = 2, 98  # the percentiles of every extent (as the axis-aligned size of part one)

Vector = tuple[float, float, float]
Quaternion = tuple[float, float, float, float]


@dataclass(frozen=True)
class Grasp:
    """Steps 1-7 for one object's points."""

    axes: np.ndarray  # 3 x 3, columns e1, e2, e3
    orientation: Quaternion
    oriented_size: Vector
    approach: Vector  # a, unit, pointing into the object
    closing_axis: Vector  # x_g, unit, perpendicular to a
    grasp_width: float
    grasp_orientation: Quaternion  # columns (x_g, a x x_g, a)


def _covariance(points: np.ndarray) -> np.ndarray:
    # numpy.cov of a single point divides by N - 1 = 0 (NaN): a single point has no spread at all.
    if len(points) < 2:
        return np.zeros((3, 3))
    return np.cov(points, rowvar=False)


def _extent(values: np.ndarray) -> float:
    return float(np.percentile(values, HIGH) - np.percentile(values, LOW))


def principal_axes(points: np.ndarray, position) -> np.ndarray:
    """Step 1: 3 x 3 matrix whose columns are e1, e2, e3 (largest to smallest variance), signed."""
    _, vectors = np.linalg.eigh(_covariance(points))  # ascending eigenvalues, orthonormal columns
    e1, e3 = vectors[:, 2], vectors[:, 0]
    if float(e3 @ np.asarray(position, dtype=np.float64)) >= 0:
        e3 = -e3  # towards the camera
    if e1[int(np.argmax(np.abs(e1)))] < 0:
        e1 = -e1
    e2 = np.cross(e3, e1)
    return np.stack([e1, e2, e3], axis=1)


def quaternion_of(rotation: np.ndarray) -> Quaternion:
    """Step 2 / 7: (x, y, z, w) of a rotation matrix given by its columns, with w >= 0."""
    from scipy.spatial.transform import Rotation  # here, not at the top: only depth geometry needs scipy

    quaternion = Rotation.from_matrix(rotation).as_quat()
    if quaternion[3] < 0:
        quaternion = -quaternion
    return tuple(float(v) for v in quaternion)


def oriented_size(points: np.ndarray, position, axes: np.ndarray) -> Vector:
    """Step 3: the 2-98 percentile extent of the points along each of e1, e2, e3."""
    along = (points - np.asarray(position, dtype=np.float64)) @ axes
    return tuple(_extent(along[:, i]) for i in range(3))


def approach_direction(points: np.ndarray, grasp_point, radius_m: float) -> np.ndarray:
    """Step 4: a = -n, n the normal of the points near g (all points when fewer than 10), facing the camera."""
    g = np.asarray(grasp_point, dtype=np.float64)
    near = points[np.linalg.norm(points - g, axis=1) <= radius_m]
    if len(near) < MIN_APPROACH_POINTS:
        near = points
    _, vectors = np.linalg.eigh(_covariance(near))
    normal = vectors[:, 0]
    if float(normal @ g) >= 0:
        normal = -normal
    return -normal


def closing_axis(axes: np.ndarray, approach: np.ndarray) -> np.ndarray:
    """Step 5: e2 made perpendicular to a (e1 when e2 is along a)."""
    for axis in (axes[:, 1], axes[:, 0]):
        closing = axis - float(axis @ approach) * approach
        norm = float(np.linalg.norm(closing))
        if norm >= MIN_CLOSING_NORM:
            return closing / norm
    # e1 and e2 cannot both be parallel to a unit a (they are orthonormal); kept for safety
    return axes[:, 0]


def grasp_width(points: np.ndarray, grasp_point, axes: np.ndarray, closing: np.ndarray, slab_m: float,
                size: Vector) -> float:
    """Step 6: the extent along x_g of the slab |(p - g) . e1| <= slab_m, else oriented_size along e2."""
    offsets = points - np.asarray(grasp_point, dtype=np.float64)
    slab = offsets[np.abs(offsets @ axes[:, 0]) <= slab_m]
    if len(slab) < MIN_SLAB_POINTS:
        return float(size[1])
    return _extent(slab @ closing)


def grasp_of(points: np.ndarray, position, grasp_point, radius_m: float, slab_m: float) -> Grasp:
    """Steps 1-7 on the kept points (N x 3), the position c and the grasp point g."""
    points = np.asarray(points, dtype=np.float64)
    axes = principal_axes(points, position)
    size = oriented_size(points, position, axes)
    approach = approach_direction(points, grasp_point, radius_m)
    closing = closing_axis(axes, approach)
    width = grasp_width(points, grasp_point, axes, closing, slab_m, size)
    hand = np.stack([closing, np.cross(approach, closing), approach], axis=1)
    return Grasp(axes=axes, orientation=quaternion_of(axes), oriented_size=size,
                 approach=tuple(float(v) for v in approach), closing_axis=tuple(float(v) for v in closing),
                 grasp_width=width, grasp_orientation=quaternion_of(hand))
