"""3-D geometry of tracked objects from a depth image aligned to the colour image (no ROS).

The one implementation of the definition in the README ("For manipulation planners"), used by the
node, the replay and the tests alike:

1. depth d in metres at pixel (u, v) = (column, row); valid: finite and min_depth_m <= d <= max_depth_m;
2. M = the mask at image resolution, V = pixels of M with valid depth; |V| < min_depth_points: no geometry;
3. m = median of d over V; kept K = pixels of V with |d - m| <= depth_band_m (drops the background the
   mask bleeds onto);
4. X = (u - cx) d / fx, Y = (v - cy) d / fy, Z = d (camera optical frame; aligned depth is rectified,
   so distortion is ignored);
5. position = per-axis median of the kept points, size = per-axis 98th - 2nd percentile (numpy's linear
   interpolation), valid_fraction = |K| / |M|, points = |K|;
6. grasp_pixel = the mask pixel farthest (Euclidean) from the nearest non-mask pixel, grasp_point = it
   back-projected at its own depth when that pixel is in K, else at m;
7. frame_id = the depth image's header frame_id.

Orientation, oriented size and the grasp pose (issue #25, part two) are computed from the same kept
points by engine/grasp.py. The intrinsics are checked against the depth image before any of it
(`intrinsics_problem`): a CameraInfo of another size or without positive finite fx, fy gives no geometry.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from pam_ros.engine.grasp import grasp_of
from pam_ros.errors import DepthError, DepthSizeError

# Depth encodings of aligned depth: 16UC1 counts depth_scale metres per unit (0 = no reading),
# 32FC1 is metres (NaN / inf = no reading).
DEPTH_ENCODINGS = ("16UC1", "32FC1")


@dataclass(frozen=True)
class DepthSettings:
    """The definition's parameters (node parameters / replay options of the same names)."""

    depth_scale: float = 0.001  # metres per unit of a 16UC1 image
    min_depth_m: float = 0.1
    max_depth_m: float = 10.0
    min_depth_points: int = 20
    depth_band_m: float = 0.05
    grasp_radius_m: float = 0.02  # the approach is the normal of the points this close to the grasp point
    grasp_slab_m: float = 0.01  # the width is measured over the points this close to g along e1

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.depth_scale) and self.depth_scale > 0):
            problems.append(f"depth_scale must be > 0 (metres per 16UC1 unit), got {self.depth_scale}")
        if not (0 <= self.min_depth_m < self.max_depth_m and math.isfinite(self.max_depth_m)):
            problems.append(f"need 0 <= min_depth_m < max_depth_m, got {self.min_depth_m} and {self.max_depth_m}")
        if self.min_depth_points < 1:
            problems.append(f"min_depth_points must be >= 1, got {self.min_depth_points}")
        if not (math.isfinite(self.depth_band_m) and self.depth_band_m > 0):
            problems.append(f"depth_band_m must be > 0 metres, got {self.depth_band_m}")
        for name in ("grasp_radius_m", "grasp_slab_m"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be > 0 metres, got {value}")
        if problems:
            raise DepthError("; ".join(problems))


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of the (rectified, aligned) depth image: sensor_msgs/CameraInfo's K and size."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int | None = None  # CameraInfo's size (None = not given, not checked against the depth image)
    height: int | None = None

    @classmethod
    def from_camera_info(cls, k, width: int | None = None, height: int | None = None, *,
                         check: bool = True) -> "CameraIntrinsics":
        """From CameraInfo.k (row-major 3x3: fx 0 cx / 0 fy cy / 0 0 1).

        check=True refuses a K that cannot give metres (DepthError: zeros, non-positive or non-finite
        fx, fy); streams pass check=False and let `intrinsics_problem` refuse the frames it pairs with.
        """
        k = [float(v) for v in k]
        if len(k) != 9:
            raise DepthError(f"CameraInfo.k must have 9 values, got {len(k)}")
        intrinsics = cls(k[0], k[4], k[2], k[5], None if width is None else int(width),
                         None if height is None else int(height))
        problem = intrinsics.k_problem()
        if check and problem:
            raise DepthError(problem)
        return intrinsics

    def k_problem(self) -> str:
        """Why K cannot back-project ("" when it can)."""
        values = (self.fx, self.fy, self.cx, self.cy)
        shown = f"fx={self.fx:g}, fy={self.fy:g}, cx={self.cx:g}, cy={self.cy:g}"
        if not all(math.isfinite(v) for v in values):
            return f"CameraInfo K has a non-finite value ({shown})"
        if not any(values):
            return "CameraInfo K is all zeros: is the camera calibrated?"
        if self.fx <= 0 or self.fy <= 0:
            return f"CameraInfo K has no positive focal length ({shown})"
        return ""


def intrinsics_problem(intrinsics: CameraIntrinsics, depth_size: tuple[int, int]) -> str:
    """Why these intrinsics cannot give metres for a depth image of depth_size (width, height); "" when they can.

    A K calibrated at another resolution silently scales every point, so the sizes must agree.
    """
    problem = intrinsics.k_problem()
    if problem:
        return problem
    if intrinsics.width is not None and (intrinsics.width, intrinsics.height) != tuple(depth_size):
        return (f"CameraInfo is {intrinsics.width}x{intrinsics.height} but the depth image is "
                f"{depth_size[0]}x{depth_size[1]}: its K is for another resolution")
    return ""


@dataclass(frozen=True)
class DepthImage:
    """One depth image in metres (float32 HxW, invalid readings as NaN or out of range), ready for geometry.

    intrinsics None: a depth image from a stream whose CameraInfo the pipeline pairs by stamp
    (engine/depth.py); geometry itself needs them set.
    """

    metres: np.ndarray
    intrinsics: CameraIntrinsics | None
    frame_id: str
    stamp_ns: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.metres.shape[1]), int(self.metres.shape[0])


@dataclass(frozen=True)
class ObjectGeometry:
    """Where an object is, how it lies and how to grasp it, in metres in the depth image's frame
    (camera optical frame). Quaternions are (x, y, z, w)."""

    frame_id: str
    position: tuple[float, float, float]
    size: tuple[float, float, float]
    valid_fraction: float
    points: int
    grasp_pixel: tuple[int, int]  # (u, v) = (column, row)
    grasp_point: tuple[float, float, float]
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)  # columns e1, e2, e3
    oriented_size: tuple[float, float, float] = (0.0, 0.0, 0.0)  # along e1, e2, e3
    approach: tuple[float, float, float] = (0.0, 0.0, 1.0)  # a: unit, from the gripper into the object
    closing_axis: tuple[float, float, float] = (1.0, 0.0, 0.0)  # x_g: unit, the fingers close along it
    grasp_width: float = 0.0
    grasp_orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)  # columns x_g, a x x_g, a
    # the camera the points were back-projected with (projects the grasp back into the image); context,
    # not a value: not in JSON, not compared
    intrinsics: CameraIntrinsics | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict:
        """The frames.jsonl "geometry" object."""
        return {"frame_id": self.frame_id, "position": list(self.position), "size": list(self.size),
                "valid_fraction": self.valid_fraction, "points": self.points,
                "grasp_pixel": list(self.grasp_pixel), "grasp_point": list(self.grasp_point),
                "orientation": list(self.orientation), "oriented_size": list(self.oriented_size),
                "grasp_pose": {"position": list(self.grasp_point), "orientation": list(self.grasp_orientation)},
                "grasp_width": self.grasp_width}


# ------------------------------------------------------------------------------------- decoding

def depth_to_metres(encoding: str, width: int, height: int, step: int, data, *, is_bigendian: bool = False,
                    depth_scale: float = 0.001) -> np.ndarray:
    """sensor_msgs/Image fields of a depth image (16UC1 or 32FC1, any row padding) -> float32 HxW metres.

    16UC1 units are multiplied by depth_scale (0 stays 0: no reading, invalid by min_depth_m).
    Raises DepthError for another encoding, a zero size or too little data.
    """
    key = encoding.strip().upper()
    if key not in DEPTH_ENCODINGS:
        raise DepthError(f"unsupported depth encoding {encoding!r} (aligned depth must be "
                         f"{' or '.join(DEPTH_ENCODINGS)})")
    if width <= 0 or height <= 0:
        raise DepthError(f"depth image has zero size ({width}x{height})")
    item = 2 if key == "16UC1" else 4
    buffer = np.frombuffer(memoryview(data), dtype=np.uint8)
    if step < width * item:
        raise DepthError(f"depth row step {step} is shorter than {width} pixels x {item} bytes")
    if buffer.size < step * (height - 1) + width * item:
        raise DepthError(f"depth image {width}x{height} ({encoding}) needs {step * height} bytes, got {buffer.size}")
    rows = np.lib.stride_tricks.as_strided(buffer, shape=(height, width * item), strides=(step, 1))
    order = ">" if is_bigendian else "<"
    if key == "16UC1":
        units = np.ascontiguousarray(rows).view(f"{order}u2").reshape(height, width)
        return units.astype(np.float32) * np.float32(depth_scale)
    return np.ascontiguousarray(rows).view(f"{order}f4").reshape(height, width).astype(np.float32)


def check_depth_size(depth: DepthImage | np.ndarray, colour_size: tuple[int, int]) -> None:
    """Refuse a depth image whose size differs from the colour image's (width, height)."""
    metres = depth.metres if isinstance(depth, DepthImage) else depth
    depth_size = (int(metres.shape[1]), int(metres.shape[0]))
    if depth_size != tuple(int(v) for v in colour_size):
        raise DepthSizeError(f"depth image is {depth_size[0]}x{depth_size[1]} but the colour image is "
                             f"{colour_size[0]}x{colour_size[1]}: give depth aligned to the colour image")


# ------------------------------------------------------------------------------------- definition

def valid_depth(metres: np.ndarray, settings: DepthSettings) -> np.ndarray:
    """Step 1: bool HxW, finite and within [min_depth_m, max_depth_m]."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(metres) & (metres >= settings.min_depth_m) & (metres <= settings.max_depth_m)


def kept_pixels(metres: np.ndarray, mask: np.ndarray, settings: DepthSettings) -> tuple[np.ndarray, float] | None:
    """Steps 2-3: (bool HxW of the kept pixels K, median m), or None when |V| < min_depth_points."""
    valid = mask & valid_depth(metres, settings)
    if int(valid.sum()) < settings.min_depth_points:
        return None
    median = float(np.median(metres[valid]))
    with np.errstate(invalid="ignore"):
        kept = valid & (np.abs(metres - np.float32(median)) <= settings.depth_band_m)
    return kept, median


def back_project(u, v, d, intrinsics: CameraIntrinsics) -> np.ndarray:
    """Step 4: pixels (u = column, v = row) at depth d metres -> N x 3 points (X right, Y down, Z forward)."""
    u, v, d = (np.asarray(a, dtype=np.float64) for a in (u, v, d))
    return np.stack([(u - intrinsics.cx) * d / intrinsics.fx, (v - intrinsics.cy) * d / intrinsics.fy, d], axis=-1)


def grasp_pixel_of(mask: np.ndarray) -> tuple[int, int]:
    """Step 6: (u, v) of the mask pixel farthest from the nearest non-mask pixel.

    Pixels outside the image count as non-mask (an object cut by the border is grasped in its
    visible part). Among several farthest pixels (the ridge of a rectangle) the one nearest their
    mean is taken, first in row-major order. Only the mask's bounding box (plus a one-pixel frame)
    is transformed.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("grasp_pixel_of needs a non-empty mask")
    top, left = int(rows[0]), int(cols[0])
    crop = np.pad(mask[top:rows[-1] + 1, left:cols[-1] + 1], 1, constant_values=False)
    from scipy.ndimage import distance_transform_edt  # here, not at the top: describe without depth skips scipy

    distance = distance_transform_edt(crop)
    # A rectangle or a bar has a whole ridge of farthest pixels: take the one nearest their mean.
    rows_max, cols_max = np.nonzero(distance == distance.max())
    nearest = int(np.argmin((rows_max - rows_max.mean()) ** 2 + (cols_max - cols_max.mean()) ** 2))
    return left + int(cols_max[nearest]) - 1, top + int(rows_max[nearest]) - 1


def object_geometry(depth: DepthImage, mask: np.ndarray, settings: DepthSettings = DepthSettings()
                    ) -> ObjectGeometry | None:
    """Steps 1-7 (and engine/grasp.py's) for one object's mask (bool HxW at the depth image's size);
    None = no geometry."""
    if mask.shape != depth.metres.shape:
        raise DepthSizeError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the depth image is "
                             f"{depth.metres.shape[1]}x{depth.metres.shape[0]}")
    if depth.intrinsics is None:
        raise DepthError("the depth image has no intrinsics (pair it with its CameraInfo first)")
    mask = np.asarray(mask, dtype=bool)
    mask_pixels = int(mask.sum())
    if mask_pixels == 0:
        return None
    found = kept_pixels(depth.metres, mask, settings)
    if found is None:
        return None
    kept, median = found
    v, u = np.nonzero(kept)
    points = back_project(u, v, depth.metres[v, u], depth.intrinsics)
    position = np.median(points, axis=0)
    size = np.percentile(points, 98, axis=0) - np.percentile(points, 2, axis=0)
    grasp_u, grasp_v = grasp_pixel_of(mask)
    grasp_depth = float(depth.metres[grasp_v, grasp_u]) if kept[grasp_v, grasp_u] else median
    grasp_point = back_project(grasp_u, grasp_v, grasp_depth, depth.intrinsics)
    grasp = grasp_of(points, position, grasp_point, settings.grasp_radius_m, settings.grasp_slab_m)
    return ObjectGeometry(
        frame_id=depth.frame_id,
        position=tuple(float(x) for x in position),
        size=tuple(float(x) for x in size),
        valid_fraction=int(kept.sum()) / mask_pixels,
        points=int(kept.sum()),
        grasp_pixel=(grasp_u, grasp_v),
        grasp_point=tuple(float(x) for x in grasp_point),
        orientation=grasp.orientation,
        oriented_size=grasp.oriented_size,
        approach=grasp.approach,
        closing_axis=grasp.closing_axis,
        grasp_width=grasp.grasp_width,
        grasp_orientation=grasp.grasp_orientation,
        intrinsics=depth.intrinsics,
    )


def frame_geometry(depth: DepthImage, masks: Mapping[str, np.ndarray],
                   settings: DepthSettings = DepthSettings()) -> dict[str, ObjectGeometry | None]:
    """Every object of one frame: {object id: geometry or None}. DepthSizeError when sizes differ."""
    geometries: dict[str, ObjectGeometry | None] = {}
    for object_id, mask in masks.items():
        check_depth_size(depth, (mask.shape[1], mask.shape[0]))
        geometries[object_id] = object_geometry(depth, mask, settings)
    return geometries
