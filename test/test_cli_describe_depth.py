"""`pam-ros describe IMAGE --depth DEPTH --camera-info K`: one-shot geometry for a still, and its input checks.

The depth is a plane tilted about the vertical (so the geometry is not trivial), written as a 16-bit PNG in
millimetres and as a .npy in metres; the intrinsics as camera_calibration's YAML and as JSON. The geometry
printed is checked against the definition applied to the mask the command printed.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_cli_describe import C0, IMG0, MODEL_ARGS

from pam_ros.cli import main
from pam_ros.engine.geometry import CameraIntrinsics, DepthImage, DepthSettings, object_geometry
from pam_ros.model.masks import rle_to_mask

W, H = 640, 480
K = [500.0, 0.0, 319.5, 0.0, 500.0, 239.5, 0.0, 0.0, 1.0]
CALIBRATION_YAML = """image_width: {w}
image_height: {h}
camera_name: test_camera
camera_matrix:
  rows: 3
  cols: 3
  data: [{k}]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [0, 0, 0, 0, 0]
"""


def millimetres() -> np.ndarray:
    u = np.arange(W)[None, :].repeat(H, axis=0)
    return np.round(700 + 0.5 * (u - W / 2)).astype(np.uint16)  # 0.7 m, 0.5 mm deeper per column


def write_inputs(tmp_path, size=(W, H), k=K):
    png = tmp_path / "depth.png"
    Image.fromarray(millimetres() if size == (W, H) else np.full((size[1], size[0]), 700, np.uint16)).save(png)
    npy = tmp_path / "depth.npy"
    np.save(npy, millimetres().astype(np.float32) / 1000)
    yaml_file = tmp_path / "camera.yaml"
    yaml_file.write_text(CALIBRATION_YAML.format(w=W, h=H, k=", ".join(str(v) for v in k)))
    json_file = tmp_path / "camera.json"
    json_file.write_text(json.dumps({"k": k, "width": 2 * W, "height": 2 * H}))
    return png, npy, yaml_file, json_file


def describe_json(capsys, *extra) -> dict:
    box = [str(v) for v in C0["visual_prompt"]]
    code = main(["describe", IMG0, "--box", *box, "--ask", "holding", *MODEL_ARGS, "--json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_geometry_of_a_still_follows_the_definition(capsys, tmp_path):
    png, npy, yaml_file, _ = write_inputs(tmp_path)
    overlay = tmp_path / "overlay.png"
    result = describe_json(capsys, "--depth", str(png), "--camera-info", str(yaml_file), "--save-overlay", str(overlay))
    mask = rle_to_mask(result["mask_rle"])
    depth = DepthImage(millimetres().astype(np.float32) / 1000, CameraIntrinsics.from_camera_info(K, W, H),
                       "camera", 0)
    expected = object_geometry(depth, mask, DepthSettings())
    assert expected is not None
    geometry = result["geometry"]
    assert geometry["position"] == pytest.approx(list(expected.position), abs=1e-6)
    assert geometry["orientation"] == pytest.approx(list(expected.orientation), abs=1e-6)
    assert geometry["oriented_size"] == pytest.approx(list(expected.oriented_size), abs=1e-6)
    assert geometry["grasp_pose"]["orientation"] == pytest.approx(list(expected.grasp_orientation), abs=1e-6)
    assert geometry["grasp_width"] == pytest.approx(expected.grasp_width, abs=1e-6)
    assert overlay.is_file()
    # a .npy in metres gives the same
    again = describe_json(capsys, "--depth", str(npy), "--camera-info", str(yaml_file))
    assert again["geometry"]["position"] == pytest.approx(geometry["position"], abs=1e-6)


def test_text_output_prints_the_grasp(capsys, tmp_path):
    png, _, yaml_file, _ = write_inputs(tmp_path)
    box = [str(v) for v in C0["visual_prompt"]]
    code = main(["describe", IMG0, "--box", *box, "--ask", "holding", *MODEL_ARGS,
                 "--depth", str(png), "--camera-info", str(yaml_file)])
    out = capsys.readouterr().out
    assert code == 0 and "grasp: point (" in out and " mm, pixel (" in out and "oriented size (" in out


@pytest.mark.parametrize("case, message", [
    ("other-resolution", "CameraInfo is 1280x960 but the depth image is 640x480"),
    ("depth-size", "is 320x240 but the image is 640x480"),
    ("negative-fx", "no positive focal length"),
    ("alone", "--depth and --camera-info go together"),
])
def test_unusable_depth_or_intrinsics_are_refused_before_loading_a_model(capsys, tmp_path, case, message):
    png, _, yaml_file, json_file = write_inputs(tmp_path, size=(320, 240) if case == "depth-size" else (W, H),
                                                k=[-500.0] + K[1:] if case == "negative-fx" else K)
    extra = {"other-resolution": ["--depth", str(png), "--camera-info", str(json_file)],
             "depth-size": ["--depth", str(png), "--camera-info", str(yaml_file)],
             "negative-fx": ["--depth", str(png), "--camera-info", str(yaml_file)],
             "alone": ["--depth", str(png)]}[case]
    # no model arguments: an input error must come before the model would be looked for
    code = main(["describe", IMG0, "--box", "1", "2", "30", "40", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
