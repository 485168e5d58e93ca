"""pam_ros_node for planners, in its own process: geometry from aligned depth, `markers`, `find_objects`.

The node runs the tiny random-weight model with use_depth on; the test publishes the fixture clip,
an aligned depth image per frame (the red disk at 0.5 m before a wall at 1.2 m) and its CameraInfo.
Geometry is checked against the definition (engine/geometry.py) applied to the very mask the node
published; the ranking against the order of the scores the node returns.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from PIL import Image as PilImage
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers.messages import mask_from_msg
from ros_helpers.node_client import node_client, point_prompt, stamp, start_node
from ros_helpers.ros_session import wait_until
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from test_entry_points import _console_script
from visualization_msgs.msg import Marker, MarkerArray

from pam_ros.engine.geometry import CameraIntrinsics, DepthImage, DepthSettings, object_geometry
from pam_ros.engine.types import FrameResult, ObjectResult, TrackingState
from pam_ros.msg import Prompt
from pam_ros.ros.planning import frame_markers
from pam_ros.srv import FindObjects

pytestmark = pytest.mark.slow

VIDEO = Path(__file__).resolve().parent / "fixtures" / "pam_tiny" / "inputs" / "video"
DISK = (60.0, 80.0)  # the red disk's centre in frame 0
BACKGROUND = (250.0, 190.0)
W, H = 320, 240
K = [200.0, 0.0, 159.5, 0.0, 200.0, 119.5, 0.0, 0.0, 1.0]
DEPTH_FRAME = "camera_depth_optical_frame"
SETTINGS = DepthSettings(min_depth_points=5)


def frame(index: int) -> np.ndarray:
    with PilImage.open(VIDEO / f"{index % 16:05d}.png") as image:
        return np.asarray(image.convert("RGB"))


def depth_metres(index: int) -> np.ndarray:
    """The wall at 1.2 m, the disk region (where the fixture clip draws it, roughly) at 0.5 m."""
    rgb = frame(index).astype(int)
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)
    return np.where(red, 0.5, 1.2).astype(np.float32)


def depth_msg(index: int) -> Image:
    millimetres = np.round(depth_metres(index) * 1000).astype("<u2")
    return Image(header=Header(stamp=stamp(index), frame_id=DEPTH_FRAME), height=H, width=W, encoding="16UC1",
                 step=W * 2, data=millimetres.tobytes())


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    process = start_node(
        _console_script("pam_ros_node"),
        "model:=tiny", "device:=cpu", "dtype:=float32", "image_size:=256", "image_qos:=reliable",
        "use_depth:=true", f"min_depth_points:={SETTINGS.min_depth_points}", "new_object_tasks:=[none]",
        "max_new_tokens:=4", "request_timeout_s:=60.0", "diagnostics_period_s:=0.3",
        HF_HOME=str(tmp_path_factory.mktemp("empty_hf_home")))
    with node_client(process, wait_connected=True) as client:
        reliable = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        client.depth_pub = client.node.create_publisher(Image, "depth/image", reliable)
        client.info_pub = client.node.create_publisher(CameraInfo, "depth/camera_info", reliable)
        client.markers = []
        client.node.create_subscription(MarkerArray, "markers", client.markers.append, reliable)
        client.find_client = client.node.create_client(FindObjects, "find_objects")
        client.wait_state("active", timeout_s=180)
        client.wait_subscribed()
        wait_until(lambda: client.depth_pub.get_subscription_count() > 0 and client.info_pub.get_subscription_count() > 0,
                   30.0, "the node to subscribe to depth", process.output)
        yield client


def send_camera_info(node) -> None:
    node.info_pub.publish(CameraInfo(header=Header(frame_id=DEPTH_FRAME), width=W, height=H, k=K))


def find(node, query: str, object_ids=(), max_results: int = 0, min_score: float = 0.0) -> FindObjects.Response:
    request = FindObjects.Request(query=query, object_ids=list(object_ids), max_results=max_results, min_score=min_score)
    return node.call(node.find_client, request, "find_objects response", timeout_s=120.0)


def check_geometry(obj, index: int) -> None:
    mask = mask_from_msg(obj, W, H)
    depth = DepthImage(depth_metres(index), CameraIntrinsics.from_camera_info(K), DEPTH_FRAME, 0)
    expected = object_geometry(depth, mask, SETTINGS)
    assert expected is not None, f"{obj.object_id}: the test scene gives no geometry for this mask"
    assert obj.has_geometry and obj.geometry_frame_id == DEPTH_FRAME
    assert (obj.position.x, obj.position.y, obj.position.z) == pytest.approx(expected.position, abs=1e-6)
    assert (obj.size.x, obj.size.y, obj.size.z) == pytest.approx(expected.size, abs=1e-6)
    assert obj.depth_valid_fraction == pytest.approx(expected.valid_fraction, abs=1e-6)
    assert (obj.grasp_pixel.x, obj.grasp_pixel.y, obj.grasp_pixel.z) == (*map(float, expected.grasp_pixel), 0.0)
    assert (obj.grasp_point.x, obj.grasp_point.y, obj.grasp_point.z) == pytest.approx(expected.grasp_point, abs=1e-6)
    q = obj.orientation
    assert (q.x, q.y, q.z, q.w) == pytest.approx(expected.orientation, abs=1e-6)
    assert (obj.oriented_size.x, obj.oriented_size.y, obj.oriented_size.z) == pytest.approx(expected.oriented_size,
                                                                                            abs=1e-6)
    pose = obj.grasp_pose
    assert (pose.position.x, pose.position.y, pose.position.z) == pytest.approx(expected.grasp_point, abs=1e-6)
    assert (pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w) == pytest.approx(
        expected.grasp_orientation, abs=1e-6)
    assert obj.grasp_width == pytest.approx(expected.grasp_width, abs=1e-6)


def test_geometry_from_depth_sent_before_or_after_colour_and_none_without_it(node):
    send_camera_info(node)
    node.prompt_pub.publish(point_prompt("disk", *DISK, stamp_msg=stamp(0)))
    node.prompt_pub.publish(point_prompt("wall", *BACKGROUND, stamp_msg=stamp(0)))
    node.depth_pub.publish(depth_msg(0))  # depth first: in the node before its colour frame is sent
    node.wait_diagnostics(lambda v: v.get("prompts_pending") == "2" and v.get("engine.camera_infos_received") == "1"
                          and v.get("engine.depth_images_received") == "1",
                          "the prompts, the CameraInfo and the first depth image in the node")
    first = node.wait_objects_for(node.publish_image(frame(0), 0))
    second_header = node.publish_image(frame(1), 1)
    node.depth_pub.publish(depth_msg(1))  # colour first: the depth comes while the frame is tracked
    second = node.wait_objects_for(second_header)
    third = node.wait_objects_for(node.publish_image(frame(2), 2))  # no depth for this one
    for index, msg in ((0, first), (1, second)):
        disk = next(o for o in msg.objects if o.object_id == "disk")
        check_geometry(disk, index)
    assert [o.object_id for o in third.objects] == ["disk", "wall"]
    assert not any(o.has_geometry for o in third.objects)
    values = node.wait_diagnostics(lambda v: v.get("engine.frames_without_depth") == "1", "depth counts")
    assert values["engine.frames_with_depth"] == "2"


def test_markers_box_and_label_each_object_with_geometry(node):
    index = 3
    published = {}

    def disk_markers():
        """The disk's markers for a frame this test published (frames of the previous test may still come)."""
        for array in reversed(node.markers):
            found = {m.id: m for m in array.markers if m.ns == "disk" and m.action == Marker.ADD
                     and (m.header.stamp.sec, m.header.stamp.nanosec) in published}
            if found:
                return found
        return None

    def arrived() -> bool:
        nonlocal index
        node.depth_pub.publish(depth_msg(index))
        msg = node.wait_objects_for(node.publish_image(frame(index), index))
        published[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
        index += 1
        return disk_markers() is not None

    wait_until(arrived, 60.0, "markers for the disk", node.process.output, period_s=0.1)
    markers = disk_markers()
    assert markers[0].type == Marker.CUBE and markers[1].type == Marker.TEXT_VIEW_FACING
    assert markers[1].text.startswith("disk")
    assert markers[0].header.frame_id == DEPTH_FRAME
    objects = published[(markers[0].header.stamp.sec, markers[0].header.stamp.nanosec)]
    disk = next(o for o in objects.objects if o.object_id == "disk")
    assert (markers[0].pose.position.x, markers[0].pose.position.y, markers[0].pose.position.z) == (
        disk.position.x, disk.position.y, disk.position.z)
    q = markers[0].pose.orientation
    assert (q.x, q.y, q.z, q.w) == (disk.orientation.x, disk.orientation.y, disk.orientation.z, disk.orientation.w)
    assert markers[0].scale.x == pytest.approx(max(disk.oriented_size.x, 1e-3))
    # the ARROW: from 0.1 m before the grasp point, along the approach (the grasp pose's z axis), to it
    arrow = markers[2]
    assert arrow.type == Marker.ARROW and len(arrow.points) == 2
    g = disk.grasp_pose.position
    tail, head = arrow.points
    assert (head.x, head.y, head.z) == pytest.approx((g.x, g.y, g.z))
    pq = disk.grasp_pose.orientation
    approach = Rotation.from_quat([pq.x, pq.y, pq.z, pq.w]).as_matrix()[:, 2]
    assert (tail.x, tail.y, tail.z) == pytest.approx(tuple(np.array([g.x, g.y, g.z]) - 0.1 * approach), abs=1e-5)
    node.index = index


def test_find_objects_ranks_every_tracked_object_best_first(node):
    response = find(node, "cutting paper")
    assert response.success, response.message
    ids = [m.object_id for m in response.matches]
    assert sorted(ids) == ["disk", "wall"]
    scores = [m.score for m in response.matches]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    for match in response.matches:
        assert match.score == pytest.approx(1 / (1 + math.exp(-match.log_odds)), abs=1e-5)
        assert match.object.object_id == match.object_id and match.stamp.sec >= 1_000
    disk = next(m for m in response.matches if m.object_id == "disk")
    assert disk.object.has_geometry  # the object as last published, geometry included
    best = find(node, "cutting paper", max_results=1)
    assert [m.object_id for m in best.matches] == ids[:1]
    only_wall = find(node, "cutting paper", object_ids=["wall"])
    assert [m.object_id for m in only_wall.matches] == ["wall"]
    assert only_wall.matches[0].score == pytest.approx(next(m for m in response.matches if m.object_id == "wall").score,
                                                       abs=1e-4)


@pytest.mark.parametrize("query, object_ids, text", [
    ("   ", [], "the query is empty"),
    ("cutting paper", ["ghost"], "unknown object id(s) 'ghost'"),
])
def test_find_objects_bad_requests_are_answered(node, query, object_ids, text):
    response = find(node, query, object_ids)
    assert not response.success and text in response.message and not response.matches
    assert node.process.alive()


def test_markers_are_deleted_when_the_object_is_removed(node):
    node.markers.clear()
    node.prompt_pub.publish(Prompt(action=Prompt.REMOVE, object_id="disk"))
    node.wait_diagnostics(lambda v: v.get("prompts_pending") == "1", "the REMOVE waiting for the next frame")
    index = getattr(node, "index", 20)
    node.depth_pub.publish(depth_msg(index))
    msg = node.wait_objects_for(node.publish_image(frame(index), index))
    assert "disk" not in [o.object_id for o in msg.objects]
    wait_until(lambda: any(m.ns == "disk" and m.action == Marker.DELETE for a in node.markers for m in a.markers),
               10.0, "DELETE markers for the removed disk", node.process.output)
    deleted = {m.id for a in node.markers for m in a.markers if m.ns == "disk" and m.action == Marker.DELETE}
    assert deleted == {0, 1, 2}


def test_camera_info_of_another_resolution_gives_no_geometry_and_one_warning(node):
    index = getattr(node, "index", 20) + 1
    wrong = [400.0, 0.0, 319.5, 0.0, 400.0, 239.5, 0.0, 0.0, 1.0]
    node.info_pub.publish(CameraInfo(header=Header(frame_id=DEPTH_FRAME), width=2 * W, height=2 * H, k=wrong))

    def without_geometry() -> bool:
        nonlocal index
        node.depth_pub.publish(depth_msg(index))
        msg = node.wait_objects_for(node.publish_image(frame(index), index))
        index += 1
        return bool(msg.objects) and not any(o.has_geometry for o in msg.objects)

    wait_until(without_geometry, 60.0, "frames refused for a K of another resolution", node.process.output,
               period_s=0.1)
    values = node.wait_diagnostics(lambda v: int(v.get("engine.frames_bad_intrinsics", "0")) >= 1, "the counter")
    assert int(values["engine.frames_bad_intrinsics"]) >= 1
    node.process.wait_for_line("CameraInfo is 640x480 but the depth image is 320x240", 10.0)
    assert node.process.count_lines("CameraInfo is 640x480") == 1  # one warning, not one per frame
    send_camera_info(node)  # the right one again: geometry comes back

    def with_geometry() -> bool:
        nonlocal index
        node.depth_pub.publish(depth_msg(index))
        msg = node.wait_objects_for(node.publish_image(frame(index), index))
        index += 1
        return any(o.has_geometry for o in msg.objects)

    wait_until(with_geometry, 60.0, "geometry with the right CameraInfo", node.process.output, period_s=0.1)
    node.index = index


# --- markers as a function (lost objects cannot be forced on the random-weight model) ---------------

def _object(object_id: str, state: TrackingState, with_geometry: bool) -> ObjectResult:
    from pam_ros.engine.geometry import ObjectGeometry

    geometry = ObjectGeometry(DEPTH_FRAME, (0.1, 0.0, 0.5), (0.05, 0.05, 0.02), 1.0, 30, (5, 5), (0.1, 0.0, 0.5))
    return ObjectResult(object_id, 0.9, 2.0, state, 0, np.zeros((4, 4), bool), (0, 0, 0, 0), 0, (0.0, 0.0),
                        geometry=geometry if with_geometry else None)


def test_markers_follow_lost_and_depthless_frames():
    header = Header(stamp=Time(sec=3), frame_id="camera")
    shown: dict[str, str] = {}
    added = frame_markers(FrameResult(0, 0, 4, 4, [_object("cup", TrackingState.TRACKED, True)], 0.0), header, shown)
    assert [(m.ns, m.id, m.action) for m in added.markers] == [("cup", i, Marker.ADD) for i in (0, 1, 2)]
    kept = frame_markers(FrameResult(1, 0, 4, 4, [_object("cup", TrackingState.TRACKED, False)], 0.0), header, shown)
    assert kept.markers == [] and shown == {"cup": DEPTH_FRAME}  # no depth this frame: the markers stay
    lost = frame_markers(FrameResult(2, 0, 4, 4, [_object("cup", TrackingState.LOST, False)], 0.0), header, shown)
    assert [(m.ns, m.id, m.action, m.header.frame_id) for m in lost.markers] == [
        ("cup", i, Marker.DELETE, DEPTH_FRAME) for i in (0, 1, 2)]
    assert shown == {}
