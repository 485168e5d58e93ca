"""`pam-ros describe IMAGE --depth DEPTH --camera-info K`: one-shot geometry for a still.

Reads an aligned depth image (a 16-bit PNG in millimetres, or a .npy in metres) and the camera's
intrinsics (the YAML that ROS camera_calibration writes, or JSON with the same keys or CameraInfo's
`k`, `width`, `height`), checks both against the image before any model is loaded (InputError /
DepthError: exit 2), and gives the object's geometry by the same definition as the node and the
replay (engine/geometry.py, engine/grasp.py): the "geometry" object of frames.jsonl.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pam_ros.errors import DepthError, InputError

PNG_DEPTH_SCALE = 0.001  # a 16-bit depth PNG counts millimetres


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("geometry from depth (one image, one object)")
    group.add_argument("--depth", metavar="DEPTH", help="depth aligned to IMAGE: a 16-bit PNG in millimetres "
                                                        "(0 = no reading) or a .npy in metres; adds \"geometry\"")
    group.add_argument("--camera-info", metavar="K", help="the camera's intrinsics: camera_calibration's YAML "
                                                          "(camera_matrix, image_width, image_height) or JSON")
    group.add_argument("--grasp-radius-m", type=float, default=0.02, metavar="M",
                       help="the approach is the normal of the points within M of the grasp point (default 0.02)")
    group.add_argument("--grasp-slab-m", type=float, default=0.01, metavar="M",
                       help="the grasp width is measured within M of the grasp point along the long axis "
                            "(default 0.01)")


def wants_depth(args) -> bool:
    return bool(getattr(args, "depth", None) or getattr(args, "camera_info", None))


def load_still_depth(args, image_wh: tuple[int, int]):
    """The DepthImage (with checked intrinsics) and DepthSettings of --depth / --camera-info; None without them."""
    from pam_ros.engine.geometry import CameraIntrinsics, DepthImage, DepthSettings, intrinsics_problem

    if not wants_depth(args):
        return None
    if not (args.depth and args.camera_info):
        raise InputError("--depth and --camera-info go together (metres need the camera's intrinsics)")
    settings = DepthSettings(grasp_radius_m=args.grasp_radius_m, grasp_slab_m=args.grasp_slab_m)
    metres = read_depth_file(args.depth)
    size = (int(metres.shape[1]), int(metres.shape[0]))
    if size != tuple(image_wh):
        raise DepthError(f"depth image {args.depth} is {size[0]}x{size[1]} but the image is "
                         f"{image_wh[0]}x{image_wh[1]}: give depth aligned to the image")
    k, width, height = read_camera_info(args.camera_info)
    intrinsics = CameraIntrinsics.from_camera_info(k, width, height)
    problem = intrinsics_problem(intrinsics, size)
    if problem:
        raise DepthError(f"{args.camera_info}: {problem}")
    return DepthImage(metres, intrinsics, "camera", 0), settings


def read_depth_file(path: str) -> np.ndarray:
    """float32 HxW metres from a 16-bit PNG (millimetres) or a .npy (metres)."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"depth file not found: {file}")
    if file.suffix.lower() == ".npy":
        try:
            array = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{file} is not a readable .npy file ({exc})") from None
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
            raise InputError(f"{file} must hold an HxW array of metres, got shape {array.shape} {array.dtype}")
        return array.astype(np.float32)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            image.load()
            if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise InputError(f"{file} is a {image.mode} image; a depth PNG must be 16-bit (millimetres)")
            units = np.asarray(image, dtype=np.float64)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{file} is not a readable image ({exc})") from None
    return (units * PNG_DEPTH_SCALE).astype(np.float32)


def read_camera_info(path: str) -> tuple[list[float], int | None, int | None]:
    """(K as 9 values, width, height) from camera_calibration's YAML or a JSON of the same keys / CameraInfo's."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"camera info file not found: {file}")
    text = file.read_text(encoding="utf-8", errors="replace")
    try:
        if file.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the file's
        raise InputError(f"{file} is not readable camera info ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{file} must hold a mapping with camera_matrix (or k), image_width, image_height")
    matrix = data.get("camera_matrix")
    k = matrix.get("data") if isinstance(matrix, dict) else data.get("k", data.get("K"))
    if not isinstance(k, list) or len(k) != 9:
        raise InputError(f"{file}: camera_matrix.data (or k) must be 9 numbers (row-major 3x3)")
    try:
        k = [float(v) for v in k]
    except (TypeError, ValueError):
        raise InputError(f"{file}: camera_matrix.data holds something that is not a number") from None
    width, height = data.get("image_width", data.get("width")), data.get("image_height", data.get("height"))
    if width is None or height is None:
        return k, None, None
    return k, int(width), int(height)


def geometry_json(depth_and_settings, mask: np.ndarray):
    """The "geometry" object for the object's mask, or None when too few of its pixels have valid depth."""
    from pam_ros.engine.geometry import object_geometry

    depth, settings = depth_and_settings
    geometry = object_geometry(depth, mask, settings)
    return (geometry.to_json(), geometry) if geometry is not None else (None, None)


def print_geometry(geometry: dict | None) -> None:
    if geometry is None:
        print("geometry: none (too few mask pixels with valid depth)")
        return

    def numbers(values, scale=1.0):
        return "(" + ", ".join(f"{v * scale:.3f}" for v in values) + ")"

    print(f"position: {numbers(geometry['position'])} m, oriented size {numbers(geometry['oriented_size'])} m, "
          f"orientation (x, y, z, w) {numbers(geometry['orientation'])}")
    print(f"grasp: point {numbers(geometry['grasp_pose']['position'])} m, orientation "
          f"{numbers(geometry['grasp_pose']['orientation'])}, width {geometry['grasp_width'] * 1000:.1f} mm, "
          f"pixel {tuple(geometry['grasp_pixel'])}")
