"""Package metadata: one version everywhere, and the CLI answers --version / --help."""
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pam_ros

ROOT = Path(__file__).resolve().parents[1]


def test_versions_agree():
    pkg = ET.parse(ROOT / "package.xml").getroot()
    setup_py = (ROOT / "setup.py").read_text()
    setup_version = re.search(r'version="([^"]+)"', setup_py).group(1)
    assert pkg.findtext("version") == setup_version == pam_ros.__version__


def test_cli_version_and_help():
    out = subprocess.run([sys.executable, "-m", "pam_ros.cli", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"pam-ros {pam_ros.__version__}"
    helped = subprocess.run([sys.executable, "-m", "pam_ros.cli", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "usage: pam-ros" in helped.stdout


def test_interfaces_are_declared_in_cmake():
    """Every .msg/.srv/.action file is generated (a file missing from CMakeLists would silently not exist)."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    files = sorted(p.relative_to(ROOT).as_posix() for d in ("msg", "srv", "action") for p in (ROOT / d).iterdir())
    assert files, "no interface files"
    for f in files:
        assert f'"{f}"' in cmake, f"{f} is not listed in rosidl_generate_interfaces"


def test_generated_interfaces_import():
    from pam_ros.action import Caption
    from pam_ros.msg import PerceivedObject, PerceivedObjectArray, Prompt
    from pam_ros.srv import Describe, ManageObjects

    assert Prompt.RESET_ALL == 3 and PerceivedObject.SEMANTICS_STALE == 3
    assert PerceivedObjectArray().objects == []
    assert Describe.Request().prompt.action == Prompt.ADD
    assert ManageObjects.Response().object_ids == []
    assert Caption.Feedback().num_tokens == 0


HEAVY_MODULES = ("torch", "transformers", "sam2")
IMPORTED_HEAVY = (
    "import sys\n"
    "from pam_ros import cli\n"
    "try:\n"
    "    cli.main(sys.argv[1:])\n"
    "except SystemExit:\n"
    "    pass\n"
    f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
)


def test_help_and_download_list_start_without_torch():
    """`pam-ros --help` and `pam-ros download --list` answer at once: no torch, transformers or sam2."""
    for args in (["--help"], ["describe", "--help"], ["replay", "--help"], ["bench", "--help"], ["download", "--list"]):
        out = subprocess.run([sys.executable, "-c", IMPORTED_HEAVY, *args], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "[]", (args, out.stdout[-300:])


def _imported_top_level_names(paths) -> set[str]:
    import ast

    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def test_package_xml_lists_every_imported_ros_package():
    """rosdep installs what package.xml names: a ROS package imported by the node, CLI, launch file or
    scripts but missing there is an ImportError on a fresh robot."""
    index = Path(sys.prefix) / "share" / "ament_index" / "resource_index" / "packages"
    ros_packages = {p.name for p in index.iterdir()} if index.is_dir() else set()
    ros_packages |= {"launch", "launch_ros", "ament_index_python", "rclpy"}  # no pip wheel or not indexed
    sources = [*(ROOT / "pam_ros").rglob("*.py"), *(ROOT / "launch").glob("*.py"), *(ROOT / "scripts").glob("*.py"),
               ROOT / "scripts" / "pam_ros_node", ROOT / "scripts" / "pam-ros"]
    imported = (_imported_top_level_names(sources) & ros_packages) - {"pam_ros"}
    declared = {e.text for e in ET.parse(ROOT / "package.xml").getroot()
                if e.tag in ("depend", "exec_depend", "build_depend")}
    assert imported, "no ROS imports found: the check is broken"
    assert not imported - declared, f"imported but not in package.xml: {sorted(imported - declared)}"
