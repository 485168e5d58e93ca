"""The defaults a new user meets first: `make demo` finds its bag, `describe` without --model, and
`pam-ros download` in a shell that ran `source scripts/env.sh`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "test" / "fixtures" / "pam_tiny" / "inputs" / "img0.png"


def test_demo_defaults_name_the_shipped_bag_and_prompts():
    """`make demo` runs `pam-ros demo` with no arguments: its bag and prompts must be the shipped ones."""
    from pam_ros.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert args.bag == ROOT / "demo" / "demo_bag" and (args.bag / "metadata.yaml").is_file()
    assert args.prompts == ROOT / "demo" / "prompts.yaml" and args.prompts.is_file()


def test_describe_without_a_model_says_how_to_get_one(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty_cache"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    env.pop("PAM_ROS_MODELS_DIR", None)
    done = subprocess.run([sys.executable, "-m", "pam_ros.cli", "describe", str(IMAGE), "--box", "110", "90", "340",
                           "320"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "pam-ros download PAM-1.5B" in lines[0] and "--model tiny" in lines[0]


def test_describe_without_a_model_uses_a_downloaded_pam_1_5b(monkeypatch):
    from pam_ros.cli import describe_inputs
    from pam_ros.model import registry

    asked = []
    monkeypatch.setattr(registry, "resolve_model", lambda name: asked.append(name))
    assert describe_inputs.default_model() == "PAM-1.5B" and asked == ["PAM-1.5B"]


def test_env_script_leaves_downloads_online():
    """`source scripts/env.sh` then `pam-ros download PAM-1.5B` (README): the shell must not be offline."""
    if not (ROOT / ".venv" / "bin" / "activate").is_file():
        pytest.skip("no .venv in this checkout (make setup)")
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    done = subprocess.run(["bash", "-c", 'source scripts/env.sh && echo "${HF_HUB_OFFLINE-unset} '
                           '${TRANSFORMERS_OFFLINE-unset}" && command -v pam-ros'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    offline, command = done.stdout.splitlines()
    assert offline == "unset unset" and command.endswith("/bin/pam-ros")


def test_rviz_config_shows_the_node_outputs_in_the_camera_frame():
    """rviz/pam_ros.rviz (README "See results", `rviz:=true`): overlay and markers of the node, clicks as
    clicked_point, the camera's optical frame fixed, so a click means a point in the camera frame."""
    import yaml

    from pam_ros.ros.planning import MARKERS_TOPIC

    config = yaml.safe_load((ROOT / "rviz" / "pam_ros.rviz").read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "camera_color_optical_frame"
    displays = {d["Class"]: d for d in manager["Displays"]}
    assert displays["rviz_default_plugins/Image"]["Topic"]["Value"] == "/overlay"
    assert displays["rviz_default_plugins/MarkerArray"]["Topic"]["Value"] == "/" + MARKERS_TOPIC
    tools = {t["Class"]: t for t in manager["Tools"]}
    assert tools["rviz_default_plugins/PublishPoint"]["Topic"]["Value"] == "/clicked_point"
    launch = (ROOT / "launch" / "pam.launch.py").read_text()
    assert 'DeclareLaunchArgument("rviz"' in launch and '_share_file("rviz", "pam_ros.rviz")' in launch
