"""pam_ros_node with several cameras (parameter `cameras`), in its own process, driven over DDS.

One node process serves the module (tiny random-weight model, CPU, 256-pixel SAM 2 input) and walks it
through: configure refused for duplicate names -> cameras [front, wrist] -> configure (changing cameras now
refused) -> active. Both cameras get the same clip and the same box prompt; each camera's masks must be
those of a lone PerceptionPipeline fed that clip (the single-camera node's engine: test/test_node.py holds
the node to it exactly), each gets its semantics, a prompt to front stays on front, and the node-level
find_objects ranks the objects of both cameras.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest
from conftest import NODE_IMAGE_SIZE
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from PIL import Image as PilImage
from rclpy.action import ActionClient
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers.messages import mask_from_msg
from ros_helpers.node_client import node_client, point_prompt, stamp, start_node
from ros_helpers.ros_session import wait_until
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from test_entry_points import _console_script

from pam_ros.action import Caption
from pam_ros.engine.types import PromptAction, PromptRequest
from pam_ros.msg import PerceivedObject, PerceivedObjectArray, Prompt
from pam_ros.ros import convert
from pam_ros.srv import FindObjects, ManageObjects

pytestmark = pytest.mark.slow

VIDEO = Path(__file__).resolve().parent / "fixtures" / "pam_tiny" / "inputs" / "video"
CAMERAS = ("front", "wrist")
BOX = (40.0, 60.0, 80.0, 100.0)  # around the red disk of frame 0 (centre (60, 80))
BACKGROUND = (250.0, 190.0)
IMAGE_SIZE = NODE_IMAGE_SIZE  # the reference engine's (conftest.engine)
FRAMES_COMPARED = 4
W, H = 320, 240


def frame(index: int) -> np.ndarray:
    """The fixture's 16-frame clip (320x240, a red disk moving), looped."""
    with PilImage.open(VIDEO / f"{index % 16:05d}.png") as image:
        return np.asarray(image.convert("RGB"))


def box_prompt(object_id: str, stamp_msg) -> Prompt:
    msg = Prompt(action=Prompt.ADD, object_id=object_id, box=list(BOX), has_box=True, tasks=["caption"])
    msg.header.stamp = stamp_msg
    return msg


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


class Camera:
    """The test's side of one camera: image and prompt publishers, its objects."""

    def __init__(self, client, name: str) -> None:
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        node = client.node
        self.name = name
        self.image_pub = node.create_publisher(Image, f"{name}/image", reliable)
        self.prompt_pub = node.create_publisher(Prompt, f"{name}/prompts", reliable)
        self.objects: deque[PerceivedObjectArray] = deque(maxlen=1000)
        node.create_subscription(PerceivedObjectArray, f"{name}/objects", lambda m: self.objects.append(m), reliable)
        self.manage_client = node.create_client(ManageObjects, f"{name}/manage_objects")

    def objects_for(self, header: Header) -> PerceivedObjectArray | None:
        return next((msg for msg in list(self.objects) if msg.header.stamp == header.stamp), None)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    process = start_node(
        _console_script("pam_ros_node"),
        "model:=tiny", "device:=cpu", "dtype:=float32", f"image_size:={IMAGE_SIZE}", "autostart:=false",
        "image_qos:=reliable", "cameras:=[front, front]",  # test_duplicate_camera_names_fail_configure fixes it
        "max_new_tokens:=8", "new_object_tasks:=[caption]", "diagnostics_period_s:=0.3", "request_timeout_s:=60.0",
        HF_HOME=str(tmp_path_factory.mktemp("empty_hf_home")))
    with node_client(process, wait_connected=True) as client:
        client.cameras = {name: Camera(client, name) for name in CAMERAS}
        client.find_client = client.node.create_client(FindObjects, "find_objects")
        client.all_diagnostics = deque(maxlen=200)
        client.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: client.all_diagnostics.append(m), 10)
        yield client


def statuses(node) -> dict[str, dict[str, str]]:
    """The latest DiagnosticStatus of each name (values, with _message and _level)."""
    latest: dict[str, dict[str, str]] = {}
    for array in list(node.all_diagnostics):
        for status in array.status:
            latest[status.name] = ({kv.key: kv.value for kv in status.values}
                                   | {"_message": status.message, "_level": int.from_bytes(status.level, "little")})
    return latest


def publish_both(node, index: int) -> Header:
    header = Header(stamp=stamp(index), frame_id="camera")
    for name in CAMERAS:  # the same frame on both cameras, with the camera's own frame id
        node.cameras[name].image_pub.publish(convert.rgb_to_image_msg(frame(index), Header(
            stamp=header.stamp, frame_id=f"{name}_optical_frame")))
    return header


def wait_both(node, header: Header) -> dict[str, PerceivedObjectArray]:
    wait_until(lambda: all(node.cameras[name].objects_for(header) is not None for name in CAMERAS), 60.0,
               f"objects of both cameras for stamp {header.stamp.sec}", node.process.output)
    return {name: node.cameras[name].objects_for(header) for name in CAMERAS}


# --- configure ---------------------------------------------------------------------------------------

def test_duplicate_camera_names_fail_configure(node):
    assert node.transition(Transition.TRANSITION_CONFIGURE) is False
    assert node.state() == "unconfigured"
    reason = "configure failed: parameter cameras: front named more than once"
    node.process.wait_for_line(reason, timeout_s=10)
    node.wait_diagnostics(lambda v: v["_level"] == 2 and reason in v["_message"], "ERROR diagnostics with the reason")
    # set at run time, a bad list is refused at once, with the same reason
    result = node.set_parameters(cameras=["wrist", ""])[0]
    assert not result.successful and "'' is not a camera name" in result.reason, result.reason
    assert all(r.successful for r in node.set_parameters(cameras=list(CAMERAS)))


def test_configure_wires_each_camera_and_cameras_is_then_read_only(node):
    assert node.transition(Transition.TRANSITION_CONFIGURE) is True
    assert node.state() == "inactive"
    node.process.wait_for_line("input front/image, wrist/image", timeout_s=10)
    result = node.set_parameters(cameras=["front"])[0]
    assert not result.successful and "cameras is read at configure" in result.reason, result.reason
    # every camera's services answer (not active yet), under its name
    for name in CAMERAS:
        camera = node.cameras[name]
        response = node.call(camera.manage_client, ManageObjects.Request(prompts=[point_prompt("", *BACKGROUND)]),
                             f"{name}/manage_objects")
        assert not response.success and "not active (lifecycle state: inactive)" in response.message


def test_activate_loads_one_model_for_both_cameras(node):
    assert node.transition(Transition.TRANSITION_ACTIVATE, timeout_s=180) is True
    node.process.wait_for_line("active: model loaded", timeout_s=10)
    wait_until(lambda: all(c.image_pub.get_subscription_count() and c.prompt_pub.get_subscription_count()
                           for c in node.cameras.values()), 30.0, "subscriptions of both cameras", node.process.output)


# --- tracking ----------------------------------------------------------------------------------------

def test_each_camera_reproduces_a_lone_pipeline(node, engine):
    for name in CAMERAS:  # the same box on both cameras, stamped frame 0 (held until it arrives)
        node.cameras[name].prompt_pub.publish(box_prompt("disk", stamp(0)))
    wait_until(lambda: all(statuses(node).get(f"/pam_ros_node: camera {name}", {}).get("prompts_pending") == "1"
                           for name in CAMERAS), 30.0, "the prompt held on both cameras", node.process.output)
    engine.submit_prompt(PromptRequest(action=PromptAction.ADD, object_id="disk", box=BOX,
                                       stamp_ns=convert.stamp_to_ns(stamp(0))))
    for index in range(FRAMES_COMPARED):  # lock-step: nothing is dropped
        header = publish_both(node, index)
        got = wait_both(node, header)
        expected = engine.process(frame(index), convert.stamp_to_ns(header.stamp))
        assert expected.objects[0].mask.sum() > 100  # the disk: an empty mask would match anything
        for name, msg in got.items():
            assert msg.header.frame_id == f"{name}_optical_frame" and msg.frame_index == index
            assert [o.object_id for o in msg.objects] == ["disk"], (name, index)
            overlap = iou(mask_from_msg(msg.objects[0], W, H), expected.objects[0].mask)
            assert overlap >= 0.99, f"{name}, frame {index}: IoU {overlap:.4f} with the lone pipeline's mask"


def test_both_cameras_get_semantics(node):
    index = FRAMES_COMPARED

    def captions_ready() -> bool:
        nonlocal index
        got = wait_both(node, publish_both(node, index))
        index += 1
        return all(msg.objects and msg.objects[0].semantics_state == PerceivedObject.SEMANTICS_READY
                   for msg in got.values())

    wait_until(captions_ready, 120.0, "the disk's caption READY on both cameras", node.process.output, period_s=0.1)
    for name in CAMERAS:
        disk = node.cameras[name].objects[-1].objects[0]
        assert "caption" in list(disk.task_names) and disk.semantics_stamp == stamp(0), name
    node.wait_diagnostics(lambda v: int(v.get("model.semantics_batches", "0")) >= 1, "semantics batches")


def test_a_prompt_to_front_stays_on_front(node):
    front = node.cameras["front"]
    response = node.call(front.manage_client, ManageObjects.Request(
        prompts=[point_prompt("wall", *BACKGROUND)], wait=False), "front/manage_objects")
    assert response.success and list(response.object_ids) == ["wall"], response.message
    index = 100
    got = wait_both(node, publish_both(node, index))
    assert sorted(o.object_id for o in got["front"].objects) == ["disk", "wall"]
    assert [o.object_id for o in got["wrist"].objects] == ["disk"]
    node.process.wait_for_line("(front/manage_objects)", timeout_s=10)  # the log names the camera
    # object ids are per camera: wrist may have its own "wall"
    response = node.call(node.cameras["wrist"].manage_client, ManageObjects.Request(
        prompts=[point_prompt("wall", *BACKGROUND)], wait=False), "wrist/manage_objects")
    assert response.success and list(response.object_ids) == ["wall"], response.message
    got = wait_both(node, publish_both(node, index + 1))
    assert sorted(o.object_id for o in got["wrist"].objects) == ["disk", "wall"]


def test_a_silent_camera_never_stalls_another(node):
    front = node.cameras["front"]
    for index in (110, 111, 112):  # wrist sends nothing
        header = Header(stamp=stamp(index), frame_id="front_optical_frame")
        front.image_pub.publish(convert.rgb_to_image_msg(frame(index), header))
        wait_until(lambda: front.objects_for(header) is not None, 60.0, f"front's objects for frame {index}",
                   node.process.output)
    assert node.cameras["wrist"].objects_for(Header(stamp=stamp(110))) is None


def test_caption_action_per_camera(node):
    feedback: list = []
    wrist = ActionClient(node.node, Caption, "wrist/caption")
    try:
        wait_until(wrist.server_is_ready, 30.0, "wrist/caption", node.process.output)
        goal = node.wait_future(wrist.send_goal_async(Caption.Goal(object_id="wall", task="caption"),
                                                      feedback_callback=lambda m: feedback.append(m.feedback)),
                                60.0, "the goal response", node.process.output)
        assert goal.accepted
        result = node.wait_future(goal.get_result_async(), 120.0, "the caption result", node.process.output).result
        assert result.success and result.num_tokens > 0, result.message
        rejected = node.wait_future(wrist.send_goal_async(Caption.Goal(object_id="nothing", task="caption")),
                                    60.0, "the goal response", node.process.output)
        assert not rejected.accepted
        node.process.wait_for_line("unknown object id 'nothing' (tracked: disk, wall)", timeout_s=10)
    finally:
        wrist.destroy()


def test_diagnostics_per_camera_and_for_the_shared_model(node):
    def complete(latest) -> bool:  # both walls (the last test) counted
        return "/pam_ros_node: perception" in latest and all(
            latest.get(f"/pam_ros_node: camera {name}", {}).get("engine.objects") == "2" for name in CAMERAS)

    wait_until(lambda: complete(statuses(node)), 10.0, "a status per camera (2 objects each) and one for the model",
               lambda: str(statuses(node)))
    latest = statuses(node)
    for name in CAMERAS:
        camera = latest[f"/pam_ros_node: camera {name}"]
        assert camera["input_topic"] == f"/{name}/image" and int(camera["frames_processed"]) >= FRAMES_COMPARED
        assert "latency_ms.image_age.mean" in camera and camera["frames_dropped"] == "0", camera
        assert not any(key.startswith("engine.semantics_") for key in camera), camera
    model = latest["/pam_ros_node: perception"]
    assert model["cameras"] == "front, wrist" and model["lifecycle_state"] == "active"
    assert model["model.device"] == "cpu" and "model.semantics_queue" in model, model


# --- find_objects ------------------------------------------------------------------------------------

def find(node, query: str, object_ids=()) -> FindObjects.Response:
    request = FindObjects.Request(query=query, object_ids=list(object_ids))
    return node.call(node.find_client, request, "find_objects response", timeout_s=120.0)


def test_find_objects_ranks_the_objects_of_every_camera(node):
    response = find(node, "cutting paper")
    assert response.success, response.message
    found = sorted((m.camera, m.object_id) for m in response.matches)
    assert found == [(c, o) for c in CAMERAS for o in ("disk", "wall")], found
    scores = [m.score for m in response.matches]
    assert scores == sorted(scores, reverse=True)
    for match in response.matches:
        assert match.object.mask.header.frame_id == f"{match.camera}_optical_frame"
    only = find(node, "cutting paper", ["wrist/disk"])
    assert only.success and [(m.camera, m.object_id) for m in only.matches] == [("wrist", "disk")], only.message


def test_find_objects_refuses_an_unknown_camera_with_the_list(node):
    response = find(node, "cutting paper", ["cam/disk"])
    assert not response.success
    assert "unknown camera 'cam'" in response.message and "front, wrist" in response.message, response.message
