"""pam_ros_node: discover (segment everything, track what is new), periodic discover and click to track.

One node process (tiny random-weight model, CPU, 256-pixel SAM 2 input) driven over DDS. Its random SAM 2
predicts IoUs near 0.5 and stability near 0, so the generator's thresholds are lowered (4 x 4 points).
Tests run in file order: request discover, clicks (image_click in pixels; clicked_point in the camera frame,
projected with camera_info, or refused in another frame), max_objects, then periodic discover after a reconfigure.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from geometry_msgs.msg import Point, PointStamped
from lifecycle_msgs.msg import Transition
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers.messages import mask_from_msg
from ros_helpers.node_client import node_client, start_node
from ros_helpers.ros_session import wait_until
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header
from test_entry_points import _console_script

from pam_ros.msg import PerceivedObject, Prompt
from pam_ros.srv import Discover

pytestmark = pytest.mark.slow

GRAY = np.full((72, 96, 3), 128, np.uint8)
MAX_OBJECTS = 6
K = [100.0, 0.0, 48.0, 0.0, 100.0, 36.0, 0.0, 0.0, 1.0]  # pinhole intrinsics of the 96x72 test camera


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    process = start_node(
        _console_script("pam_ros_node"),
        "model:=tiny", "device:=cpu", "dtype:=float32", "image_size:=256", "autostart:=true", "max_new_tokens:=2",
        "new_object_tasks:=[recognize]", "click_tasks:=[caption]", f"max_objects:={MAX_OBJECTS}",
        "discover_points_per_side:=4", "discover_pred_iou_thresh:=0.5", "discover_stability_score_thresh:=0.0",
        "discover_box_nms_thresh:=1.0", "request_timeout_s:=20.0", "diagnostics_period_s:=0.3",
        HF_HOME=str(tmp_path_factory.mktemp("empty_hf_home")))
    with node_client(process, wait_connected=True) as client:
        client.discover_client = client.node.create_client(Discover, "discover")
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        client.click_pub = client.node.create_publisher(PointStamped, "clicked_point", reliable)
        client.image_click_pub = client.node.create_publisher(Point, "image_click", reliable)
        client.info_pub = client.node.create_publisher(CameraInfo, "camera_info", reliable)
        client.wait_state("active", timeout_s=180)
        client.wait_subscribed()
        wait_until(lambda: all(p.get_subscription_count() > 0 for p in (client.click_pub, client.image_click_pub,
                                                                          client.info_pub)),
                   30.0, "the node to subscribe to the click topics", process.output)
        yield client


def discover(node, **fields) -> Discover.Response:
    """Call discover while publishing frames (one at a time, each processed) until it answers (it runs on a
    frame processed after the request arrived)."""
    wait_until(node.discover_client.service_is_ready, 30.0, "the discover service", node.process.output)
    future = node.discover_client.call_async(Discover.Request(**fields))

    def answered() -> bool:
        if not future.done():
            node.wait_objects_for(node.publish_frame(GRAY), timeout_s=60)
        return future.done()

    wait_until(answered, 120.0, "the discover answer", node.process.output, period_s=0.0)
    return future.result()


def tracked_ids(node) -> list[str]:
    header = node.publish_frame(GRAY)
    return sorted(o.object_id for o in node.wait_objects_for(header, timeout_s=60).objects)


def test_discover_adds_new_objects_and_returns_their_ids(node):
    first = discover(node, max_new_objects=1)
    assert first.success, first.message
    assert list(first.object_ids) == ["obj_1"] and "1 new object(s)" in first.message
    assert tracked_ids(node) == ["obj_1"]
    second = discover(node, max_new_objects=2, tasks=["caption"])
    assert second.success and list(second.object_ids) == ["obj_2", "obj_3"], second.message
    assert "already tracked" in second.message  # regions overlapping tracked objects are skipped
    assert tracked_ids(node) == ["obj_1", "obj_2", "obj_3"]
    values = node.wait_diagnostics(lambda v: any(k.endswith("discover_runs") and v[k] == "2" for k in v),
                                   "discover runs in diagnostics")
    seconds = next(float(v) for k, v in values.items() if k.endswith("discover_seconds"))
    assert seconds > 0


def test_a_click_on_image_click_tracks_an_object_at_that_pixel(node):
    node.image_click_pub.publish(Point(x=40.0, y=30.0))  # column, row: what rqt_image_view publishes
    node.process.wait_for_line("click at (40, 30) -> obj_4", timeout_s=10)  # queued for the next frame
    objects = node.wait_objects_for(node.publish_frame(GRAY), timeout_s=60).objects
    new = [o for o in objects if o.object_id == "obj_4"]
    assert len(new) == 1 and new[0].tracking_state == PerceivedObject.TRACKING_PROMPTED
    node.process.wait_for_line("ADD obj_4 applied on frame", timeout_s=10)

    node.image_click_pub.publish(Point(x=500.0, y=30.0))
    node.process.wait_for_line("click refused: clicked point (500, 30) lies outside the 96x72 image", timeout_s=10)
    node.image_click_pub.publish(Point(x=math.nan, y=3.0))
    node.process.wait_for_line("is not finite", timeout_s=10)
    assert "obj_5" not in tracked_ids(node)  # refused clicks add nothing; tracking goes on


def _click_ids(node, pixel: str) -> dict[str, str]:
    """{source: object id} from the node's "click at (x, y) -> id" lines for that pixel."""
    ids = {}
    for line in list(node.process.lines):
        found = re.search(r"click at \(" + re.escape(pixel) + r"\) -> (obj_\d+)( \(clicked_point)?", line)
        if found:
            ids["clicked_point" if found.group(2) else "image_click"] = found.group(1)
    return ids


def test_a_clicked_point_in_the_camera_frame_is_projected_with_camera_info(node):
    before = tracked_ids(node)
    node.info_pub.publish(CameraInfo(header=Header(frame_id="camera"), width=96, height=72, k=K))
    node.wait_objects_for(node.publish_frame(GRAY), timeout_s=60)  # a round trip: the CameraInfo is in
    # (0.2, -0.1, 1.0) m projects to column 100 * 0.2 + 48 = 68, row 100 * -0.1 + 36 = 26. The same pixel
    # clicked in the image is the reference: both are prompted on the next frame and must get the same mask.
    node.click_pub.publish(PointStamped(header=Header(frame_id="camera"), point=Point(x=0.2, y=-0.1, z=1.0)))
    node.image_click_pub.publish(Point(x=68.0, y=26.0))
    wait_until(lambda: len(_click_ids(node, "68, 26")) == 2, 10.0, "both clicks at (68, 26)", node.process.output)
    assert not node.process.has_line("no CameraInfo received"), node.process.output()
    ids = _click_ids(node, "68, 26")
    node.process.wait_for_line(f"-> {ids['clicked_point']} (clicked_point (0.2, -0.1, 1) m in 'camera')", 10)
    header = node.publish_frame(GRAY)
    objects = {o.object_id: o for o in node.wait_objects_for(header, timeout_s=60).objects}
    projected, reference = objects[ids["clicked_point"]], objects[ids["image_click"]]
    assert projected.tracking_state == reference.tracking_state == PerceivedObject.TRACKING_PROMPTED
    projected_mask = mask_from_msg(projected, 96, 72)
    np.testing.assert_array_equal(projected_mask, mask_from_msg(reference, 96, 72))
    assert projected.mask_area > 0 and (projected_mask != mask_from_msg(objects["obj_4"], 96, 72)).any()
    for object_id in ids.values():  # back to the objects the later tests expect
        node.prompt_pub.publish(Prompt(action=Prompt.REMOVE, object_id=object_id))
    wait_until(lambda: tracked_ids(node) == before, 60.0, "the clicked objects to be removed", node.process.output,
               period_s=0.1)


def test_a_clicked_point_in_another_frame_is_refused_naming_both_frames(node):
    before = tracked_ids(node)
    node.click_pub.publish(PointStamped(header=Header(frame_id="map"), point=Point(x=1.0, y=2.0, z=0.5)))
    node.process.wait_for_line("click refused: clicked_point is in frame 'map' but the camera image is in frame "
                               "'camera'", timeout_s=10)
    node.click_pub.publish(PointStamped(header=Header(frame_id="camera"), point=Point(x=0.1, y=0.1, z=-1.0)))
    node.process.wait_for_line("is not in front of the camera", timeout_s=10)
    assert tracked_ids(node) == before  # nothing added; tracking goes on
    assert node.process.count_lines("clicked_point is in frame 'map'") == 1


def test_discover_fills_up_to_max_objects_then_refuses(node):
    filled = discover(node)
    assert filled.success and len(filled.object_ids) == MAX_OBJECTS - 4, filled.message
    assert len(tracked_ids(node)) == MAX_OBJECTS
    refused = discover(node)
    assert not refused.success and f"max_objects ({MAX_OBJECTS}) reached" in refused.message
    assert list(refused.object_ids) == []
    bad = discover(node, tasks=["dance"])
    assert not bad.success and "dance" in bad.message
    assert len(tracked_ids(node)) == MAX_OBJECTS and node.process.alive()


def test_periodic_discover_needs_no_request(node):
    assert node.transition(Transition.TRANSITION_DEACTIVATE, timeout_s=60)
    assert node.transition(Transition.TRANSITION_CLEANUP, timeout_s=60)
    results = node.set_parameters(discover_period_s=2.0, max_objects=2)
    assert all(r.successful for r in results)
    assert not node.set_parameters(discover_period_s=-1.0)[0].successful
    assert node.transition(Transition.TRANSITION_CONFIGURE, timeout_s=60)
    assert node.transition(Transition.TRANSITION_ACTIVATE, timeout_s=180)
    node.wait_subscribed()  # a fresh activation: no objects, and nobody calls discover
    ids: list[str] = []

    def discovered() -> bool:
        nonlocal ids
        ids = tracked_ids(node)
        return len(ids) >= 2

    wait_until(discovered, 90.0, "objects from periodic discover", node.process.output, period_s=0.0)
    assert ids == ["obj_1", "obj_2"], node.process.output()
    # later periods find max_objects reached and add nothing; tracking goes on. Three more periods by the
    # node's own clock (the stamps of its diagnostics), a frame processed all along.
    found_at = node_clock_s(node)

    def three_periods_later() -> bool:
        assert tracked_ids(node) == ["obj_1", "obj_2"]
        return node_clock_s(node) >= found_at + 3 * 2.0

    wait_until(three_periods_later, 90.0, "three discover periods", node.process.output, period_s=0.0)


def node_clock_s(node) -> float:
    """The node's clock at its latest diagnostics message (published every 0.3 s)."""
    wait_until(lambda: bool(node.diagnostics), 30.0, "diagnostics", node.process.output)
    stamp = node.diagnostics[-1].header.stamp
    return stamp.sec + stamp.nanosec * 1e-9
