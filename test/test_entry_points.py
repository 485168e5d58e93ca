"""The installed command-line entry points start."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ros_helpers.ros_session import child_environment

import pam_ros


def _console_script(name: str) -> str:
    # Console scripts are installed beside the interpreter (the venv's bin/); fall back to PATH.
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    assert found, f"console script {name!r} is not installed (run `make setup`)"
    return found


def test_pam_ros_version_runs():
    result = subprocess.run([_console_script("pam-ros"), "--version"], capture_output=True, text=True,
                            timeout=60, env=child_environment())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pam-ros {pam_ros.__version__}"



def test_pam_ros_node_help_lists_the_parameters():
    from pam_ros.ros.parameters import PARAMETER_NAMES

    result = subprocess.run([_console_script("pam_ros_node"), "--help"], capture_output=True, text=True,
                            timeout=60, env=child_environment())
    assert result.returncode == 0, result.stderr
    assert "usage: pam_ros_node" in result.stdout and "--ros-args" in result.stdout
    for name in PARAMETER_NAMES:
        assert f"  {name} (default" in result.stdout, name
