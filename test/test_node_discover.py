"""pam_ros_node: discover (segment everything, track what is new), periodic discover and click to track.

One node process (tiny random-weight model, CPU, 256-pixel SAM 2 input) driven over DDS. Its random SAM 2
predicts IoUs near 0.5 and stability near 0, so the generator's thresholds are lowered (4 x 4 points).
Tests run in file order: request discover, clicks, max_objects, then periodic discover after a reconfigure.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
from geometry_msgs.msg import PointStamped
from lifecycle_msgs.msg import Transition
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers.node_client import node_client, stamp, start_node
from ros_helpers.ros_session import wait_until
from std_msgs.msg import Header
from test_entry_points import _console_script

from pam_ros.msg import PerceivedObject
from pam_ros.srv import Discover

pytestmark = pytest.mark.slow

GRAY = np.full((72, 96, 3), 128, np.uint8)
MAX_OBJECTS = 6


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
        client.click_pub = client.node.create_publisher(PointStamped, "clicked_point",
                                                        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        client.wait_state("active", timeout_s=180)
        client.wait_subscribed()
        yield client


def discover(node, **fields) -> Discover.Response:
    """Call discover while publishing frames until it answers (it runs on the next frame)."""
    wait_until(node.discover_client.service_is_ready, 30.0, "the discover service", node.process.output)
    future = node.discover_client.call_async(Discover.Request(**fields))
    deadline = time.monotonic() + 120
    while not future.done() and time.monotonic() < deadline:
        node.publish_frame(GRAY)
        time.sleep(0.5)
    assert future.done(), node.process.output()
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


def test_a_click_on_clicked_point_tracks_an_object_from_that_frame(node):
    header = Header(stamp=stamp(10_000), frame_id="camera")  # a frame still to come
    click = PointStamped(header=header)
    click.point.x, click.point.y = 40.0, 30.0  # column, row
    node.click_pub.publish(click)
    time.sleep(1.0)
    node.publish_image(GRAY, 10_000)
    objects = node.wait_objects_for(header, timeout_s=60).objects
    new = [o for o in objects if o.object_id == "obj_4"]
    assert len(new) == 1 and new[0].tracking_state == PerceivedObject.TRACKING_PROMPTED
    node.process.wait_for_line("click at (40, 30) -> obj_4", timeout_s=10)

    outside = PointStamped()
    outside.point.x, outside.point.y = 500.0, 30.0
    node.click_pub.publish(outside)
    node.process.wait_for_line("click refused: clicked point (500, 30) lies outside the 96x72 image", timeout_s=10)
    nan = PointStamped()
    nan.point.x = math.nan
    node.click_pub.publish(nan)
    node.process.wait_for_line("is not finite", timeout_s=10)
    assert "obj_5" not in tracked_ids(node)  # refused clicks add nothing; tracking goes on


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
    deadline = time.monotonic() + 90
    ids: list[str] = []
    while time.monotonic() < deadline and len(ids) < 2:
        ids = tracked_ids(node)
        time.sleep(0.3)
    assert ids == ["obj_1", "obj_2"], node.process.output()
    # later periods find max_objects reached and add nothing; tracking goes on
    for _ in range(6):
        time.sleep(0.5)
        assert tracked_ids(node) == ["obj_1", "obj_2"]
