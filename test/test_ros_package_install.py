"""The package as colcon builds it on a ROS 2 machine: CMake with the Python sources installed.

`make setup` builds only the interfaces (PAM_ROS_INSTALL_PYTHON=OFF, sources stay editable). Here the
full ament_cmake install runs into a temporary prefix, the way `colcon build` runs it, and the result
must be a working package: generated interfaces and our modules side by side, the node executable for
`ros2 run`, the `pam-ros` command, the launch file, parameters, RViz config, model manifests and the
built-in tiny model in share/. From the prefix alone (as after `source install/setup.bash`, with neither
the checkout nor the venv's own pam_ros on the path) `pam-ros describe ... --model tiny` answers and the
node with `model:=tiny` activates and publishes objects.
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
                 "config", "models", "cmake", "rviz", "demo", "test/fixtures/pam_tiny/pam_tiny_model",
                 "test/fixtures/pam_tiny/sam2")
IMAGE = ROOT / "test" / "fixtures" / "pam_tiny" / "inputs" / "img0.png"


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    if not (VENV / "share" / "rosidl_default_generators").is_dir():
        pytest.skip("the ROS 2 build tools are not in this environment (run make setup)")
    # A colcon workspace: the package sources under src/ (not beside this venv: CMake refuses to export
    # include paths, such as numpy's in the venv, that lie in the source tree of the package).
    src = tmp_path_factory.mktemp("ws") / "src" / "pam_ros"
    src.mkdir(parents=True)
    for name in PACKAGE_FILES:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
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
    for program in ("lib/pam_ros/pam_ros_node", "lib/pam_ros/pam-ros", "bin/pam-ros"):
        assert (prefix / program).is_file() and os.access(prefix / program, os.X_OK), f"{program} not installed"
    share = prefix / "share" / "pam_ros"
    for rel in ("package.xml", "launch/pam.launch.py", "config/pam_ros.yaml", "models/PAM-1.5B.json",
                "models/tiny.json", "rviz/pam_ros.rviz", "demo/prompts.yaml", "demo/demo_bag/metadata.yaml",
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
            "from pam_ros.model.registry import resolve_model; "
            "print(pam_ros.__file__); print(n.__file__); print(m.__file__); print(models_dir()); "
            "print(','.join(known_models())); print(resolve_model('tiny').pam_dir)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split()
    assert len(lines) == 6 and all(line.startswith(str(site)) for line in lines[:3]), lines
    # `pam-ros download NAME` / `--model NAME` find the installed manifests, and `tiny` its installed files
    assert lines[3] == str(prefix / "share" / "pam_ros" / "models")
    assert {"PAM-1.5B", "tiny"} <= set(lines[4].split(","))
    assert lines[5].startswith(str(prefix / "share" / "pam_ros")), lines[5]


def prefix_environment(prefix: Path) -> dict[str, str]:
    """What `source install/setup.bash` gives a shell: the prefix's bin/, site-packages and libraries first.
    The checkout is not on the path; the venv's editable pam_ros comes after PYTHONPATH, so the installed
    package is the one imported (test_installed_package_imports_outside_the_checkout checks that order)."""
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    env = {key: value for key, value in os.environ.items() if key not in ("PAM_ROS_MODELS_DIR", "PYTHONPATH")}
    env.update(
        PATH=os.pathsep.join([str(prefix / "bin"), str(VENV / "bin"), os.environ.get("PATH", "")]),
        PYTHONPATH=str(prefix / "lib" / pyver / "site-packages"),
        LD_LIBRARY_PATH=os.pathsep.join([str(prefix / "lib"), os.environ.get("LD_LIBRARY_PATH", ""),
                                         str(VENV / "lib")]),
        AMENT_PREFIX_PATH=os.pathsep.join([str(prefix), str(VENV)]),
        HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def test_installed_pam_ros_describes_with_the_tiny_model(prefix, tmp_path):
    """The README's first command after a colcon build: `pam-ros describe IMAGE --box ... --model tiny --json`."""
    import json

    from PIL import Image

    env = prefix_environment(prefix)
    assert shutil.which("pam-ros", path=env["PATH"]) == str(prefix / "bin" / "pam-ros")
    done = subprocess.run(["pam-ros", "describe", str(IMAGE), "--box", "110", "90", "340", "320", "--model", "tiny",
                           "--image-size", "256", "--task", "recognize", "--max-new-tokens", "4", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    with Image.open(IMAGE) as image:
        assert result["size"] == list(image.size) and len(result["roi"]) == 4
    assert result["tasks"]["recognize"]["token_ids"], result["tasks"]


def test_installed_node_runs_with_the_tiny_model(prefix, tmp_path):
    """`ros2 run pam_ros pam_ros_node --ros-args -p model:=tiny`: activates from share/ and answers a frame."""
    sys.path.insert(0, str(ROOT / "test"))
    import numpy as np
    from rclpy.qos import qos_profile_sensor_data
    from ros_helpers.ros_session import HelperProcess, RosClientSession, isolate_ros_environment, wait_until
    from sensor_msgs.msg import Image

    from pam_ros.msg import PerceivedObjectArray

    isolate_ros_environment()
    env = prefix_environment(prefix)
    env.update(ROS_DOMAIN_ID=os.environ["ROS_DOMAIN_ID"],
               ROS_AUTOMATIC_DISCOVERY_RANGE=os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"])
    node = HelperProcess([str(prefix / "lib" / "pam_ros" / "pam_ros_node"), "--ros-args", "-p", "model:=tiny",
                          "-p", "device:=cpu", "-p", "image_size:=128", "-p", "new_object_tasks:=['']"],
                         env=env, name="installed pam_ros_node")
    session = RosClientSession("install_test_client")
    try:
        node.wait_for_line("active: model loaded", timeout_s=300)
        received = []
        session.node.create_subscription(PerceivedObjectArray, "/objects", received.append, 10)
        publisher = session.node.create_publisher(Image, "/image", qos_profile_sensor_data)
        rgb = np.zeros((96, 128, 3), np.uint8)
        frame = Image(height=96, width=128, encoding="rgb8", step=128 * 3, data=rgb.tobytes())
        frame.header.frame_id = "camera_color_optical_frame"

        def answered() -> bool:
            publisher.publish(frame)
            return bool(received)
        wait_until(answered, 120, "objects from the installed node", node.output, period_s=0.5)
        assert received[0].header.frame_id == "camera_color_optical_frame"
    finally:
        session.close()
        assert node.stop(timeout_s=20) == 0, node.output()
