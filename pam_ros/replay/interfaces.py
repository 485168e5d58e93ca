"""pam_ros message types for rosbags: a typestore that knows ROS 2 Jazzy's types plus ours.

The definitions come from the package's own .msg text (never copied into Python), so bags written
by the replay embed exactly the definitions the node is built from, and any MCAP tool can decode them.
"""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from pam_ros.errors import InterfaceNotFoundError

PACKAGE = "pam_ros"
MESSAGE_NAMES = ("Prompt", "PerceivedObject", "PerceivedObjectArray")
PROMPT_TYPE = "pam_ros/msg/Prompt"
OBJECTS_TYPE = "pam_ros/msg/PerceivedObjectArray"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"


def candidate_msg_dirs() -> list[Path]:
    """Where msg/ may be, best first: beside the sources (a checkout), then share/pam_ros/msg of
    every install prefix we can see (AMENT_PREFIX_PATH, the prefixes above the package's
    directories, the interpreter's prefix)."""
    import pam_ros

    candidates = [Path(pam_ros.__file__).resolve().parent.parent / "msg"]
    prefixes: list[Path] = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    for package_dir in getattr(pam_ros, "__path__", []):
        # an installed package sits in <prefix>/lib/.../pam_ros: try each ancestor as the prefix
        prefixes.extend(Path(package_dir).resolve().parents)
    prefixes.extend([Path(sys.prefix), Path(sys.base_prefix)])
    candidates.extend(prefix / "share" / PACKAGE / "msg" for prefix in prefixes)
    unique: list[Path] = []
    for path in candidates:
        if path not in unique:
            unique.append(path)
    return unique


def find_msg_dir(candidates: Iterable[Path] | None = None) -> Path:
    """The first candidate directory holding all of pam_ros's .msg files."""
    searched = list(candidate_msg_dirs() if candidates is None else candidates)
    for path in searched:
        if all((path / f"{name}.msg").is_file() for name in MESSAGE_NAMES):
            return path
    listing = "\n  ".join(str(p) for p in searched)
    raise InterfaceNotFoundError(
        f"cannot find the pam_ros message definitions ({', '.join(n + '.msg' for n in MESSAGE_NAMES)}); "
        f"looked in:\n  {listing}\nRun from a pam_ros checkout or install the package (make setup)."
    )


@functools.lru_cache(maxsize=None)
def _typestore_for(msg_dir: Path) -> Typestore:
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name in MESSAGE_NAMES:
        text = (msg_dir / f"{name}.msg").read_text(encoding="utf-8")
        types.update(get_types_from_msg(text, f"{PACKAGE}/msg/{name}"))
    store.register(types)
    return store


def pam_ros_typestore(msg_dir: Path | None = None) -> Typestore:
    """ROS 2 Jazzy types + pam_ros's messages (cached per msg directory; do not register more into it)."""
    return _typestore_for((msg_dir or find_msg_dir()).resolve())


def build_message(store: Typestore, msgtype: str, fields: dict):
    """A rosbags message object of `msgtype` from a plain dict (pam_ros.messages.fields layout).

    Missing fields get the type's zero value, so dicts may omit what they do not set.
    """
    _consts, field_defs = store.fielddefs[msgtype]
    cls = store.types[msgtype]
    values = {}
    for name, (node_type, details) in field_defs:
        values[name] = _build_value(store, node_type, details, fields.get(name))
    return cls(**values)


def _build_value(store: Typestore, node_type, details, value):
    kind = int(node_type)
    if kind == 1:  # base type
        base = details[0]
        if base == "string":
            return "" if value is None else str(value)
        if base == "bool":
            return bool(value)
        if base in ("float32", "float64"):
            return 0.0 if value is None else float(value)
        return 0 if value is None else int(value)
    if kind == 2:  # nested message
        return build_message(store, details, value or {})
    # array (3) or sequence (4): details = ((element node type, element details), length)
    (element_type, element_details), length = details
    items = [] if value is None else value
    if int(element_type) == 1 and element_details[0] not in ("string",):
        dtype = _NUMPY_TYPES[element_details[0]]
        if isinstance(items, (bytes, bytearray, memoryview)):
            array = np.frombuffer(bytes(items), dtype=dtype).copy()
        else:
            array = np.asarray(items, dtype=dtype).reshape(-1)
        if int(node_type) == 3 and array.size != length:
            if array.size:
                raise ValueError(f"a fixed array of {length} values got {array.size}")
            array = np.zeros(length, dtype)
        return array
    return [_build_value(store, element_type, element_details, item) for item in items]


_NUMPY_TYPES = {
    "bool": np.bool_, "byte": np.uint8, "char": np.uint8, "int8": np.int8, "uint8": np.uint8,
    "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32,
    "int64": np.int64, "uint64": np.uint64, "float32": np.float32, "float64": np.float64,
}
