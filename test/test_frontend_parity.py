"""Front-end parity: `pam-ros replay` writes the same `objects` for a bag as the live node publishes
for the same frames and prompts (issue 6).

One small bag (8 rgb8 frames, a /prompts topic) goes through both front ends:
  replay  `pam-ros replay` in this process (the CLI's own engine settings: semantics_mode="sync");
  node    pam_ros_node in its own process, fed the bag's images and prompts over real topics, one frame
          at a time (a frame is published only after `objects` for the previous one arrived, so the
          latest-frame-wins slot never drops one) and the prompts stamped with the frame they name.
Both use the tiny random-weight model at SAM 2 input 256 on CPU in float32, the same tasks and
max_new_tokens, greedy decoding.

Every field of every PerceivedObjectArray is compared, frame by frame, except:
  tracking_seconds  wall-clock time of the tracking step;
  semantics         the node runs PAM's language side asynchronously (tracking never waits for text), the
                    replay synchronously (deterministic), so on a given frame the node may still say
                    PENDING where the replay already says READY. What must agree is the text PAM produced
                    for the same snapshot of an object: wherever the node reports READY, its
                    semantics_stamp, texts and parsed fields equal the replay's on that frame. The test
                    waits for the node's semantics to finish before one frame late in the bag, so that
                    comparison happens for every object (never vacuously).
"""
from __future__ import annotations

import array
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from ros_helpers.node_client import NodeClient, node_client, start_node
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import Image
from test_entry_points import _console_script

from pam_ros.messages.fields import header_fields
from pam_ros.msg import PerceivedObject, Prompt
from pam_ros.replay.bag_writer import BagWriter
from pam_ros.ros.convert import fill_message

pytestmark = pytest.mark.slow

IMAGE_SIZE = 256  # SAM 2 input: fast on CPU, the same code path as the official 1024
TASKS = ("caption",)  # default tasks of objects whose prompt names none
MAX_NEW_TOKENS = 6
W, H = 96, 72
FRAMES = 8
STAMP0 = 1_700_000_000_123_000_000  # distinct, non-zero header stamps, 100 ms apart
PERIOD = 100_000_000
SEMANTICS_SETTLED_BEFORE = 4  # the node's semantics are waited for before this frame is sent
REPLY_TIMEOUT_S = 60.0
TIMEOUT_S = 60.0

CUBE_BOX = (6.0, 10.0, 30.0, 34.0)  # around the red square of scene(0)


def stamp_of(frame: int) -> int:
    return STAMP0 + frame * PERIOD


def scene(t: int) -> np.ndarray:
    """A red square moving right and a blue disk moving down, on grey."""
    rgb = np.full((H, W, 3), 70, np.uint8)
    rgb[12:32, 8 + 3 * t:28 + 3 * t] = (220, 50, 40)
    yy, xx = np.mgrid[:H, :W]
    rgb[(xx - 66) ** 2 + (yy - 24 - 2 * t) ** 2 <= 9 ** 2] = (40, 70, 230)
    return rgb


def image_fields(t: int) -> dict:
    rgb = scene(t)
    return {"header": header_fields(stamp_of(t), "parity_cam"), "height": H, "width": W, "encoding": "rgb8",
            "is_bigendian": 0, "step": W * 3, "data": rgb.tobytes()}


def prompt_fields(frame: int, action: int, object_id: str = "", box=None, points=(), tasks=()) -> dict:
    return {"header": header_fields(stamp_of(frame), "parity_cam"), "action": action, "object_id": object_id,
            "points": [{"x": float(x), "y": float(y), "z": 0.0} for x, y in points],
            "point_labels": [1] * len(points), "box": list(box) if box else [0.0] * 4, "has_box": box is not None,
            "tasks": list(tasks)}


# (frame the prompt names, Prompt fields). The disk is added without an id: each front end names it.
PROMPTS = [
    (0, prompt_fields(0, Prompt.ADD, "cube", box=CUBE_BOX, tasks=("recognize", "caption"))),
    (2, prompt_fields(2, Prompt.ADD, points=[(66.0, 28.0)])),
    (6, prompt_fields(6, Prompt.REMOVE, "cube")),
]


def write_parity_bag(path: Path) -> Path:
    """Images on /camera/image_raw; each prompt on /prompts recorded just before the frame it names."""
    with BagWriter(path, "mcap") as bag:
        bag.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
        bag.add_topic("/prompts", "pam_ros/msg/Prompt")
        for t in range(FRAMES):
            for frame, fields in PROMPTS:
                if frame == t:
                    bag.write_fields("/prompts", stamp_of(t) - 1_000, fields)
            bag.write_fields("/camera/image_raw", stamp_of(t), image_fields(t))
    return path


# --- both messages as plain data ------------------------------------------------------------------

def plain(value):
    """An rclpy or a rosbags message (nested) -> dicts, lists, bytes (uint8[]) and Python numbers."""
    if hasattr(type(value), "get_fields_and_field_types"):  # rclpy
        return {name: plain(getattr(value, name)) for name in type(value).get_fields_and_field_types()}
    if dataclasses.is_dataclass(value):  # rosbags
        # Skipped: __msgtype__ (the type's name) and the constants (UPPER_CASE; ROS field names are lower case).
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not f.name.startswith("__") and not f.name.isupper()}
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, array.array):
        return value.tobytes() if value.typecode == "B" else value.tolist()
    if isinstance(value, np.ndarray):
        return value.tobytes() if value.dtype == np.uint8 else value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


SCORE_FIELDS = {"score", "object_score_logit"}
SCORE_TOLERANCE = 1e-5
SEMANTICS_FIELDS = ("semantics_stamp", "semantics_error", "category", "definition", "explanation", "caption",
                    "task_names", "task_texts")
NOT_COMPARED = {"tracking_seconds", "semantics_state", *SEMANTICS_FIELDS}


def differences(expected, actual, path: str) -> list[str]:
    """Where actual differs from expected (the paths of the fields), skipping NOT_COMPARED."""
    if isinstance(expected, dict):
        if set(expected) != set(actual):
            return [f"{path}: fields {sorted(actual)} != {sorted(expected)}"]
        return [d for name in expected if name not in NOT_COMPARED
                for d in differences(expected[name], actual[name], f"{path}.{name}")]
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return [f"{path}: {len(actual)} items != {len(expected)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{path}[{i}]")]
    if isinstance(expected, bytes):
        if expected != actual:
            return [f"{path}: {len(actual)} bytes differ from the expected {len(expected)}"]
        return []
    if path.rsplit(".", 1)[-1] in SCORE_FIELDS:
        if not math.isclose(expected, actual, rel_tol=0.0, abs_tol=SCORE_TOLERANCE):
            return [f"{path}: {actual!r} != {expected!r} (+-{SCORE_TOLERANCE})"]
        return []
    if expected != actual:
        return [f"{path}: {actual!r} != {expected!r}"]
    return []


# --- the two runs ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def parity_bag(tmp_path_factory) -> Path:
    return write_parity_bag(tmp_path_factory.mktemp("parity") / "in")


@pytest.fixture(scope="module")
def node_process(tmp_path_factory):
    """Started first: it loads its model while the replay runs."""
    process = start_node(
        _console_script("pam_ros_node"),
        "model:=tiny", "device:=cpu", "dtype:=float32", f"image_size:={IMAGE_SIZE}", "image_qos:=reliable",
        f"new_object_tasks:=[{', '.join(TASKS)}]", f"max_new_tokens:={MAX_NEW_TOKENS}",
        "prompt_hold_s:=120.0",  # prompts sent ahead wait for their frame, however slow this machine is
        "diagnostics_period_s:=0.2", "publish_overlay:=false",
        HF_HOME=str(tmp_path_factory.mktemp("empty_hf_home")))
    with node_client(process) as client:
        yield client


@pytest.fixture(scope="module")
def replayed(node_process, parity_bag, tmp_path_factory) -> list[dict]:
    """The /objects messages `pam-ros replay` wrote, in bag order, as plain data."""
    from pam_ros.cli import main

    out = tmp_path_factory.mktemp("parity") / "replay_out"
    code = main(["replay", str(parity_bag), "--out", str(out), "--model", "tiny", "--image-size", str(IMAGE_SIZE),
                 "--device", "cpu", "--dtype", "float32", "--tasks", *TASKS,
                 "--max-new-tokens", str(MAX_NEW_TOKENS), "--no-progress"])
    assert code == 0, (out / "summary.txt").read_text() if (out / "summary.txt").exists() else f"exit {code}"
    with AnyReader([out / "bag"], default_typestore=get_typestore(Stores.EMPTY)) as reader:
        return [plain(reader.deserialize(raw, connection.msgtype))
                for connection, _, raw in reader.messages() if connection.topic == "/objects"]


def _engine_stat(node: NodeClient, name: str, timeout_s: float, condition, what: str) -> None:
    node.wait_diagnostics(lambda v: f"engine.{name}" in v and condition(float(v[f"engine.{name}"])),
                          f"{what} (diagnostics engine.{name})", timeout_s=timeout_s)


@pytest.fixture(scope="module")
def published(node_process, replayed) -> list[dict]:
    """The node's objects for the bag's frames, in order, as plain data."""
    node = node_process
    node.process.wait_for_line("active: model loaded", timeout_s=180.0)
    node.wait_subscribed()
    # All prompts first, each stamped with its frame: the engine holds them until that frame comes,
    # exactly where the replay applies them. Wait until the engine holds all of them, so none can
    # arrive after the frame it names.
    for _, fields in PROMPTS:
        node.prompt_pub.publish(fill_message(Prompt(), fields))
    _engine_stat(node, "held_prompts", TIMEOUT_S, lambda held: held == len(PROMPTS),
                 f"the node's engine to hold all {len(PROMPTS)} prompts")
    messages = []
    for t in range(FRAMES):
        if t == SEMANTICS_SETTLED_BEFORE:
            # Let the language worker finish (two objects described so far), so the next frame
            # carries READY semantics for both.
            _engine_stat(node, "semantics_done", TIMEOUT_S, lambda done: done >= 2, "two semantics jobs done")
            _engine_stat(node, "semantics_queue", TIMEOUT_S, lambda queued: queued == 0, "no semantics job left")
        image = fill_message(Image(), image_fields(t))
        node.publish_raw(image)
        messages.append(node.wait_objects_for(image.header, timeout_s=REPLY_TIMEOUT_S))
    return [plain(m) for m in messages]


# --- the comparison -------------------------------------------------------------------------------

def stamp_to_ns_of(message: dict) -> int:
    return message["header"]["stamp"]["sec"] * 1_000_000_000 + message["header"]["stamp"]["nanosec"]


def test_every_frame_of_the_bag_is_in_both_outputs(replayed, published):
    assert len(replayed) == len(published) == FRAMES
    assert [stamp_to_ns_of(m) for m in replayed] == [stamp_to_ns_of(m) for m in published] == \
        [stamp_of(t) for t in range(FRAMES)]


def test_objects_are_equal_frame_by_frame(replayed, published):
    """Ids, scores, tracking state, roi, area, centroid, mask pixels and headers, image size, counters."""
    diffs = [d for t, (r, p) in enumerate(zip(replayed, published)) for d in differences(r, p, f"frame {t}")]
    assert not diffs, (f"the node's objects differ from the replay's in {len(diffs)} field(s) (expected = replay):"
                       "\n  " + "\n  ".join(diffs[:30]))


def test_the_prompts_took_effect_where_they_name(replayed):
    """Guards the comparison against a vacuous pass (e.g. no object ever tracked)."""
    ids = [[o["object_id"] for o in message["objects"]] for message in replayed]
    assert ids[0] == ids[1] == ["cube"]
    assert ids[2] == ids[5] == ["cube", "obj_1"], "the id-less ADD is named obj_1 (as manage_objects documents)"
    assert ids[6] == ids[7] == ["obj_1"], "REMOVE cube on frame 6"
    assert replayed[0]["objects"][0]["tracking_state"] == PerceivedObject.TRACKING_PROMPTED
    assert replayed[0]["objects"][0]["mask"]["encoding"] == "mono8"


def test_semantics_agree_wherever_the_node_has_them(replayed, published):
    compared = {}
    for t, (r, p) in enumerate(zip(replayed, published)):
        for mine, theirs in zip(p["objects"], r["objects"]):
            name = f"frame {t} {mine['object_id']}"
            assert mine["object_id"] == theirs["object_id"], f"{name}: the replay has {theirs['object_id']!r} here"
            # Synchronous: words on every frame, from the frame the object was added on.
            assert theirs["semantics_state"] == PerceivedObject.SEMANTICS_READY, name
            assert mine["semantics_state"] in (PerceivedObject.SEMANTICS_PENDING, PerceivedObject.SEMANTICS_READY), \
                f"{name}: node semantics state {mine['semantics_state']}, error {mine['semantics_error']!r}"
            if mine["semantics_state"] == PerceivedObject.SEMANTICS_PENDING:
                assert mine["task_texts"] == [], f"{name}: words while PENDING"
                continue
            for field in SEMANTICS_FIELDS:
                assert mine[field] == theirs[field], f"{name}: {field} {mine[field]!r} != replay {theirs[field]!r}"
            compared.setdefault(mine["object_id"], []).append(t)
    assert set(compared) == {"cube", "obj_1"}, f"READY semantics compared only for {compared}"
    cube_words = published[SEMANTICS_SETTLED_BEFORE]["objects"][0]
    assert cube_words["task_names"] == ["recognize", "caption"] and all(cube_words["task_texts"])
    assert cube_words["semantics_stamp"] == header_fields(stamp_of(0), "")["stamp"], "described on its ADD frame"
