#!/usr/bin/env python3
"""Write a small synthetic RGB-D bag for trying the planner outputs (docs/planners.md).

    python scripts/make_rgbd_bag.py OUT_DIR [--frames 6]

A camera 0.6 m above a table tilted 15 degrees looks at a flat box (20 x 12 x 2.5 cm, turned 30 degrees)
and a can lying on its side (radius 3 cm, 20 cm long, at 45 degrees), both sliding slowly. Rendered
analytically (ray-box, ray-cylinder, ray-plane), so every depth value is known:
  /camera/color/image_raw                sensor_msgs/Image rgb8 320x240
  /camera/aligned_depth/image_raw        sensor_msgs/Image 16UC1 (millimetres), same stamps
  /camera/aligned_depth/camera_info      sensor_msgs/CameraInfo, same stamps, stored after its images
It also writes OUT_DIR.prompts.yaml with a box prompt per object. Deterministic.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pam_ros.messages.fields import header_fields  # noqa: E402
from pam_ros.replay.bag_writer import BagWriter  # noqa: E402

W, H = 320, 240
FX = FY = 300.0
CX, CY = (W - 1) / 2, (H - 1) / 2
STAMP0, PERIOD = 1_700_000_000_000_000_000, 100_000_000
TILT = Rotation.from_euler("x", 15, degrees=True).as_matrix() @ np.diag([1.0, -1.0, -1.0])  # table -> camera
TABLE_CENTRE = np.array([0.0, 0.0, 0.62])
UP = TILT[:, 2]  # the table's normal, towards the camera


def rays() -> np.ndarray:
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.stack([(u - CX) / FX, (v - CY) / FY, np.ones_like(u)], axis=-1)


def on_table(x: float, y: float, height: float) -> np.ndarray:
    return TABLE_CENTRE + TILT @ np.array([x, y, height])


def box(rotation, centre, half):
    d, o = rays() @ rotation, rotation.T @ -centre
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - o) / d, (half - o) / d
    near, far = np.nanmax(np.minimum(t1, t2), -1), np.nanmin(np.maximum(t1, t2), -1)
    hit = (near <= far) & (near > 0)
    points = rays() * near[..., None]
    local = (points - centre) @ rotation
    normal = np.zeros_like(points)
    face = np.argmax(np.abs(local) / half, axis=-1)
    for axis in range(3):
        normal[face == axis] = rotation[:, axis] * np.sign(local[face == axis][:, axis])[:, None]
    return np.where(hit, near, np.inf), normal


def cylinder(rotation, centre, radius, length):
    d, o = rays() @ rotation, rotation.T @ -centre
    a = d[..., 1] ** 2 + d[..., 2] ** 2
    b = 2 * (o[1] * d[..., 1] + o[2] * d[..., 2])
    disc = b * b - 4 * a * (o[1] ** 2 + o[2] ** 2 - radius ** 2)
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / (2 * a)
    hit = (disc >= 0) & (np.abs(o[0] + t * d[..., 0]) <= length / 2) & (t > 0)
    local = (rays() * t[..., None] - centre) @ rotation
    local[..., 0] = 0
    normal = (local / radius) @ rotation.T
    return np.where(hit, t, np.inf), normal


def render(t: int):
    """(rgb uint8, depth metres, [box mask, can mask]) of frame t."""
    yaw_box = Rotation.from_euler("z", 30, degrees=True).as_matrix()
    yaw_can = Rotation.from_euler("z", 45, degrees=True).as_matrix()
    box_depth, box_normal = box(TILT @ yaw_box, on_table(-0.09 + 0.003 * t, 0.02, 0.0125),
                                np.array([0.10, 0.06, 0.0125]))
    can_depth, can_normal = cylinder(TILT @ yaw_can, on_table(0.12 - 0.002 * t, -0.03, 0.03), 0.03, 0.2)
    table = (TABLE_CENTRE @ UP) / (rays() @ UP)
    depth = np.minimum(np.minimum(box_depth, can_depth), table)
    light = np.array([0.3, -0.5, -0.8]) / np.linalg.norm([0.3, -0.5, -0.8])
    points = rays() * table[..., None]
    local = (points - TABLE_CENTRE) @ TILT
    checker = ((np.floor(local[..., 0] / 0.05) + np.floor(local[..., 1] / 0.05)) % 2)[..., None]
    rgb = np.where(checker > 0, [150, 130, 110], [170, 150, 128]).astype(np.float64)
    is_box, is_can = box_depth <= depth, (can_depth <= depth) & ~(box_depth <= depth)
    for mask, normal, colour in ((is_box, box_normal, (40, 90, 200)), (is_can, can_normal, (200, 60, 40))):
        shade = 0.35 + 0.65 * np.clip(normal @ light, 0, 1)
        rgb[mask] = np.asarray(colour)[None, :] * shade[mask][:, None]
    return np.clip(rgb, 0, 255).astype(np.uint8), depth, [is_box, is_can]


def box_of(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--frames", type=int, default=6)
    args = parser.parse_args()
    k = [FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0]
    with BagWriter(args.out, "mcap") as bag:
        bag.add_topic("/camera/color/image_raw", "sensor_msgs/msg/Image")
        bag.add_topic("/camera/aligned_depth/image_raw", "sensor_msgs/msg/Image")
        bag.add_topic("/camera/aligned_depth/camera_info", "sensor_msgs/msg/CameraInfo")
        for t in range(args.frames):
            stamp = STAMP0 + t * PERIOD
            rgb, depth, masks = render(t)
            millimetres = np.round(depth * 1000).astype("<u2")
            bag.write_fields("/camera/color/image_raw", stamp, {
                "header": header_fields(stamp, "camera_color_optical_frame"), "height": H, "width": W,
                "encoding": "rgb8", "is_bigendian": 0, "step": W * 3, "data": rgb.tobytes()})
            bag.write_fields("/camera/aligned_depth/image_raw", stamp + 1, {
                "header": header_fields(stamp, "camera_color_optical_frame"), "height": H, "width": W,
                "encoding": "16UC1", "is_bigendian": 0, "step": W * 2, "data": millimetres.tobytes()})
            bag.write_fields("/camera/aligned_depth/camera_info", stamp + 2, {
                "header": header_fields(stamp, "camera_color_optical_frame"), "width": W, "height": H, "k": k})
            if t == 0:
                boxes = [box_of(mask) for mask in masks]
    prompts = args.out.with_name(args.out.name + ".prompts.yaml")
    prompts.write_text("prompts:\n" + "".join(
        f"  - frame: 0\n    object_id: {name}\n    box: [{', '.join(f'{v:.0f}' for v in b)}]\n"
        for name, b in zip(("box", "can"), boxes)))
    print(f"wrote {args.out} and {prompts}")


if __name__ == "__main__":
    main()
