"""The package as colcon builds it on a ROS 2 machine: CMake with the Python sources installed.

`make setup` builds only the interfaces (PAM_ROS_INSTALL_PYTHON=OFF, sources stay editable). Here the
full ament_cmake install runs into a temporary prefix, the way `colcon build` runs it, and the result
must be a working package: generated interfaces and our modules side by side, the node executable for
`ros2 run`, the launch file, parameters and model manifests in share/.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
PACKAGE_FILES = ("CMakeLists.txt", "package.xml", "msg", "srv", "action", "pam_ros", "scripts", "launch",
                 "config", "models", "cmake")


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    if not (VENV / "share" / "rosidl_default_generators").is_dir():
        pytest.skip("the ROS 2 build tools are not in this environment (run make setup)")
    # A colcon workspace: the package sources under src/ (not beside this venv: CMake refuses to export
    # include paths, such as numpy's in the venv, that lie in the source tree of the package).
    src = tmp_path_factory.mktemp("ws") / "src" / "pam_ros"
    src.mkdir(parents=True)
    for name in PACKAGE_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    build = tmp_path_factory.mktemp("build")
    install = tmp_path_factory.mktemp("install")
    env = {**os.environ, "AMENT_PREFIX_PATH": str(VENV)}
    configure = [
        "cmake", "-S", str(src), "-B", str(build),
        f"-DCMAKE_PROJECT_INCLUDE={ROOT / 'cmake' / 'ros_wheels_fix.cmake'}",
        f"-DCMAKE_PREFIX_PATH={VENV}", f"-DCMAKE_INSTALL_PREFIX={install}",
        f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF",
    ]
    for cmd in (configure, ["cmake", "--build", str(build), "-j2"], ["cmake", "--install", str(build)]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{' '.join(cmd[:3])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return install


def test_install_layout(prefix):
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = prefix / "lib" / pyver / "site-packages" / "pam_ros"
    for rel in ("__init__.py", "msg/__init__.py", "srv/__init__.py", "action/__init__.py",
                "ros/node.py", "engine/pipeline.py", "model/pam.py", "cli/__init__.py"):
        assert (site / rel).is_file(), f"{rel} not installed"
    node = prefix / "lib" / "pam_ros" / "pam_ros_node"
    assert node.is_file() and os.access(node, os.X_OK)
    share = prefix / "share" / "pam_ros"
    for rel in ("package.xml", "launch/pam.launch.py", "config/pam_ros.yaml", "models/PAM-1.5B.json",
                "msg/Prompt.msg", "srv/Describe.srv", "action/Caption.action"):
        assert (share / rel).is_file(), f"share/pam_ros/{rel} not installed"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "pam_ros").is_file()


def test_installed_package_imports_outside_the_checkout(prefix, tmp_path):
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = prefix / "lib" / pyver / "site-packages"
    # As `source install/setup.bash` would: the prefix first, and neither the checkout nor the
    # interfaces that `make setup` built on the path.
    dev_paths = [str(ROOT), str(VENV / "lib" / "pam_ros_interfaces")]
    # (the wheels' bootstrap hook already put the rclpy libraries on LD_LIBRARY_PATH of this process)
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(
        [str(prefix / "lib"), os.environ.get("LD_LIBRARY_PATH", ""), str(VENV / "lib")]),
        "AMENT_PREFIX_PATH": os.pathsep.join([str(prefix), str(VENV)])}
    env.pop("PAM_ROS_MODELS_DIR", None)
    code = (f"import sys; sys.path[:] = [{str(site)!r}] + [p for p in sys.path if p not in {dev_paths!r}]; "
            "import pam_ros, pam_ros.ros.node as n; from pam_ros.msg import PerceivedObjectArray; "
            "from pam_ros.action import Caption; import pam_ros.msg as m; "
            "from pam_ros.model.registry import models_dir, known_models; "
            "print(pam_ros.__file__); print(n.__file__); print(m.__file__); print(models_dir()); "
            "print(','.join(known_models()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split()
    assert len(lines) == 5 and all(line.startswith(str(site)) for line in lines[:3]), lines
    # `pam-ros download NAME` / `--model NAME` find the installed manifests
    assert lines[3] == str(prefix / "share" / "pam_ros" / "models")
    assert "PAM-1.5B" in lines[4].split(",")
