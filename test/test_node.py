"""pam_ros_node end to end: the node in its own process (tiny random-weight model, CPU), driven over DDS.

One node process serves the whole module; tests run in file order and walk it through its lifecycle:
unconfigured -> (configure refused) -> inactive -> active -> ... -> inactive -> active -> finalized.
The masks it publishes are compared with an in-process PerceptionPipeline fed the same frames.
"""
from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np
import pytest
from action_msgs.msg import GoalStatus
from builtin_interfaces.msg import Time
from conftest import NODE_IMAGE_SIZE
from geometry_msgs.msg import Point
from lifecycle_msgs.msg import Transition
from PIL import Image as PilImage
from rclpy.qos import QoSProfile
from ros_helpers.messages import mask_from_msg
from ros_helpers.node_client import node_client, point_prompt, stamp, start_node
from ros_helpers.ros_session import wait_until
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from test_entry_points import _console_script

from pam_ros.action import Caption
from pam_ros.engine.types import PromptAction, PromptRequest
from pam_ros.msg import PerceivedObject, Prompt
from pam_ros.ros import convert
from pam_ros.srv import Describe, ManageObjects

pytestmark = pytest.mark.slow

VIDEO = Path(__file__).resolve().parent / "fixtures" / "pam_tiny" / "inputs" / "video"
DISK_START = (60.0, 80.0)  # centre of the red disk in frame 0 (fixture.json video_cases)
NO_IMAGE_WARN_S = 2.0
PROMPT_HOLD_S = 4.0
MAX_NEW_TOKENS = 8
IMAGE_SIZE = NODE_IMAGE_SIZE  # SAM 2 input size: fast on CPU; node and reference engine (conftest) use the same


def frame(index: int) -> np.ndarray:
    """The fixture's 16-frame clip (320x240, a red disk moving), looped."""
    with PilImage.open(VIDEO / f"{index % 16:05d}.png") as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    process = start_node(
        _console_script("pam_ros_node"),
        "model:=tiny", "device:=cpu", "dtype:=float32", f"image_size:={IMAGE_SIZE}", "autostart:=false",
        "image_qos:=bogus",  # test_configure_refuses_a_bad_parameter fixes it through set_parameters
        f"max_new_tokens:={MAX_NEW_TOKENS}", "new_object_tasks:=[caption]", f"no_image_warn_s:={NO_IMAGE_WARN_S}",
        "diagnostics_period_s:=0.3", "request_timeout_s:=20.0", f"prompt_hold_s:={PROMPT_HOLD_S}",
        # An empty model cache: no downloaded model is found, whatever this machine has downloaded.
        HF_HOME=str(tmp_path_factory.mktemp("empty_hf_home")))
    with node_client(process, wait_connected=True) as client:
        yield client


def _assert_alive(node) -> None:
    assert node.process.alive(), node.process.output()


# --- inactive --------------------------------------------------------------------------------------

def _assert_refused_as_inactive(node, state: str) -> None:
    describe = node.describe(Describe.Request(prompt=point_prompt("", *DISK_START)))
    assert not describe.success and f"not active (lifecycle state: {state})" in describe.message
    manage = node.manage(point_prompt("", *DISK_START))
    assert not manage.success and f"lifecycle state: {state}" in manage.message
    assert list(manage.object_ids) == [""] and list(manage.status) == [ManageObjects.Response.REFUSED]
    # a caption goal is rejected (never accepted and then aborted), and the node says why
    node.send_caption(Caption.Goal(object_id="disk", task="caption"), [], accepted=False)
    node.process.wait_for_line(f"caption goal rejected: pam_ros_node is not active (lifecycle state: {state})",
                               timeout_s=10)


def test_requests_while_unconfigured_are_refused_clearly(node):
    assert node.state() == "unconfigured"
    _assert_refused_as_inactive(node, "unconfigured")
    _assert_alive(node)


def test_configure_refuses_a_bad_parameter(node):
    assert node.transition(Transition.TRANSITION_CONFIGURE) is False
    assert node.state() == "unconfigured"
    node.process.wait_for_line("configure failed: parameter image_qos='bogus' is not one of sensor_data, reliable",
                               timeout_s=10)
    # /diagnostics says ERROR, with the reason, until a configure succeeds
    values = node.wait_diagnostics(lambda v: v["_level"] == 2, "ERROR diagnostics after the failed configure")
    assert "configure failed: parameter image_qos='bogus'" in values["_message"], values["_message"]
    # A bad value is refused when set at run time, too.
    assert not node.set_parameters(mask_encoding="rle")[0].successful
    assert all(r.successful for r in node.set_parameters(image_qos="reliable"))


def test_configure_says_how_to_get_a_missing_model(node):
    assert all(r.successful for r in node.set_parameters(model="PAM-1.5B"))
    try:
        assert node.transition(Transition.TRANSITION_CONFIGURE) is False
        node.process.wait_for_line("configure failed: model PAM-1.5B is not downloaded; run: pam-ros download PAM-1.5B",
                                   timeout_s=10)
        assert node.state() == "unconfigured"
    finally:
        assert all(r.successful for r in node.set_parameters(model="tiny"))


def test_configure_then_requests_while_inactive_are_refused(node):
    assert node.transition(Transition.TRANSITION_CONFIGURE) is True
    assert node.state() == "inactive"
    node.wait_diagnostics(lambda v: v["lifecycle_state"] == "inactive" and v["_level"] == 0,
                          "OK diagnostics once configured")
    _assert_refused_as_inactive(node, "inactive")


def test_activate_loads_the_model(node):
    assert node.transition(Transition.TRANSITION_ACTIVATE, timeout_s=180) is True
    assert node.state() == "active"
    node.process.wait_for_line("active: model loaded", timeout_s=10)
    node.wait_subscribed()


def test_warns_once_when_no_image_arrives(node):
    node.process.wait_for_line("no image ever received", timeout_s=NO_IMAGE_WARN_S + 10)
    line = next(l for l in node.process.lines if "no image ever received" in l)
    # A publisher exists (this test's) but sends nothing: the hint is about QoS / type, naming the topic.
    assert "/image" in line and "image_qos" in line and "was ever received" in line, line
    values = node.wait_diagnostics(lambda v: v["_level"] == 1, "WARN diagnostics without images")
    assert "no image ever received" in values["_message"] and float(values["seconds_since_last_image"]) < 0

    def waited_in_s(values) -> float:
        return float(values["_message"].split("no image ever received in ")[1].split(" s")[0])

    # the node's own clock says the watchdog has had time to warn again (twice the period, plus one)
    node.wait_diagnostics(lambda v: "no image ever received" in v["_message"]
                          and waited_in_s(v) >= 2 * NO_IMAGE_WARN_S + 1, "diagnostics well past a second warning")
    assert node.process.count_lines("no image ever received") == 1


# --- tracking --------------------------------------------------------------------------------------

FRAMES_COMPARED = 5


def test_objects_match_the_engine_frame_by_frame(node, engine):
    prompt = point_prompt("disk", *DISK_START, stamp_msg=stamp(0), tasks=("caption",))
    node.prompt_pub.publish(prompt)  # stamped frame 0, before frame 0 exists: held until it arrives
    node.wait_diagnostics(lambda v: v.get("prompts_pending") == "1", "the prompt held in the node")
    published = []
    for index in range(FRAMES_COMPARED):  # lock-step: nothing is dropped
        published.append(node.publish_frame(frame(index)))
        node.wait_objects_for(published[-1])
    node.process.wait_for_line("images are arriving", timeout_s=10)
    node.process.wait_for_line("ADD disk applied on frame 0", timeout_s=10)

    engine.submit_prompt(PromptRequest(action=PromptAction.ADD, object_id="disk", points=(DISK_START,),
                                       labels=(1,), stamp_ns=convert.stamp_to_ns(stamp(0))))
    for index, header in enumerate(published):
        expected = engine.process(frame(index), convert.stamp_to_ns(header.stamp))
        got = node.objects_for(header)
        assert got.header.frame_id == "camera" and got.header.stamp == header.stamp
        assert (got.image_width, got.image_height, got.frame_index) == (320, 240, index)
        assert [o.object_id for o in got.objects] == [o.object_id for o in expected.objects] == ["disk"]
        for mine, theirs in zip(got.objects, expected.objects):
            np.testing.assert_array_equal(mask_from_msg(mine, 320, 240), theirs.mask,
                                          err_msg=f"mask of {mine.object_id} differs on frame {index}")
            assert (mine.roi.x_offset, mine.roi.y_offset, mine.roi.width, mine.roi.height) == tuple(theirs.roi)
            assert mine.mask_area == theirs.mask_area
            assert mine.score == pytest.approx(theirs.score, abs=1e-5)
            assert mine.tracking_state == int(theirs.tracking_state)
        if index == 0:  # the held prompt was applied on exactly the frame it named
            assert got.objects[0].tracking_state == PerceivedObject.TRACKING_PROMPTED


def test_semantics_ride_on_later_objects(node):
    index = FRAMES_COMPARED

    def caption_ready() -> bool:
        nonlocal index
        header = node.publish_frame(frame(index))
        index += 1
        msg = node.wait_objects_for(header)
        disk = [o for o in msg.objects if o.object_id == "disk"]
        return bool(disk) and disk[0].semantics_state == PerceivedObject.SEMANTICS_READY

    wait_until(caption_ready, 90.0, "the disk's caption to be READY on objects", node.process.output, period_s=0.1)
    disk = [o for o in node.objects[-1].objects if o.object_id == "disk"][0]
    assert "caption" in list(disk.task_names)
    # the words describe the frame the disk was added on (frame 0), and carry that frame's stamp
    assert disk.semantics_stamp == stamp(0)


def test_warns_when_images_stop_arriving(node):
    before = node.process.count_lines("images stopped arriving")
    published_at = time.time()
    header = node.publish_frame(frame(0))
    node.wait_objects_for(header)
    wait_until(lambda: node.process.count_lines("images stopped arriving") > before, NO_IMAGE_WARN_S + 10,
               "the 'images stopped arriving' warning", node.process.output)
    values = node.wait_diagnostics(lambda v: "stopped arriving" in v["_message"], "WARN diagnostics after images stop")
    assert values["_level"] == 1 and float(values["seconds_since_last_image"]) >= NO_IMAGE_WARN_S
    # image age: the node's clock at receipt minus the header stamp. These stamps are 1970 + 1000 s, so the
    # age is about 56 years; diagnostics print 4 significant digits (0.05 %), far finer than any mistake in it
    stamp_s = header.stamp.sec + header.stamp.nanosec * 1e-9
    age_ms = float(values["latency_ms.image_age.last"])
    assert age_ms == pytest.approx((published_at - stamp_s) * 1e3, rel=1e-3), values["latency_ms.image_age.last"]
    # no image in the rate window (5 s): the input rate falls to 0
    values = node.wait_diagnostics(lambda v: float(v["input_rate_hz"]) == 0.0, "input rate 0 once images stopped")


# --- services and action --------------------------------------------------------------------------

def test_describe_a_prompt_on_the_latest_frame(node):
    response = node.describe(Describe.Request(prompt=point_prompt("", 100.0, 100.0), tasks=["recognize", "caption"],
                                              max_new_tokens=4))
    assert response.success, response.message
    assert len(response.texts) == 2
    full = mask_from_msg(response.object, 320, 240)
    assert int(full.sum()) == response.object.mask_area


def test_describe_a_tracked_object_and_an_explicit_image(node, engine):
    by_id = node.describe(Describe.Request(prompt=Prompt(object_id="disk"), tasks=["caption"], max_new_tokens=4))
    assert by_id.success, by_id.message
    assert by_id.object.object_id == "disk" and len(by_id.texts) == 1
    image = convert.rgb_to_image_msg(frame(3), Header(stamp=stamp(999), frame_id="snapshot"))
    prompt = Prompt(box=[40.0, 60.0, 110.0, 130.0], has_box=True)
    explicit = node.describe(Describe.Request(image=image, prompt=prompt, tasks=["recognize"], max_new_tokens=4))
    assert explicit.success, explicit.message
    expected, _ = engine.describe(frame(3), PromptRequest(box=(40.0, 60.0, 110.0, 130.0)), [])
    np.testing.assert_array_equal(mask_from_msg(explicit.object, 320, 240), expected.mask)
    assert explicit.object.mask_area == expected.mask_area
    if expected.mask_area:  # a mask image carries the request image's header
        assert explicit.object.mask.header.frame_id == "snapshot"


@pytest.mark.parametrize("mutate,expected", [
    (lambda r: setattr(r.prompt, "object_id", "ghost"), "ghost"),
    (lambda r: setattr(r, "image", Image(width=4, height=2, encoding="32FC1", step=8, data=bytes(16))),
     "unsupported image encoding '32FC1'"),
    (lambda r: setattr(r, "image", Image(width=4, height=2, encoding="rgb8", step=12, data=bytes(10))), "truncated"),
    (lambda r: setattr(r, "prompt", point_prompt("", math.nan, 3.0)), "finite"),
    (lambda r: setattr(r, "prompt", Prompt()), "needs points, a box"),
    (lambda r: (setattr(r.prompt, "object_id", "disk"),
                setattr(r, "image", convert.rgb_to_image_msg(frame(0)))), "leave image empty"),
])
def test_describe_bad_requests_are_answered_clearly(node, mutate, expected):
    request = Describe.Request(prompt=Prompt(object_id="disk"), tasks=["caption"], max_new_tokens=2)
    mutate(request)
    response = node.describe(request)
    assert not response.success and expected in response.message, response.message
    _assert_alive(node)


def test_caption_action_streams_text_so_far(node):
    feedback = []
    goal = Caption.Goal(object_id="disk", task="caption", max_new_tokens=12)
    outcome = node.caption_result(node.send_caption(goal, feedback))
    assert outcome.status == GoalStatus.STATUS_SUCCEEDED, outcome.result.message
    result = outcome.result
    assert result.success and 0 < result.num_tokens <= 12 and result.seconds > 0
    running = [f for f in feedback if f.status == "running"]
    assert running, "no feedback while generating"
    counts = [f.num_tokens for f in running]
    assert counts == sorted(counts) and counts[-1] == result.num_tokens
    assert running[-1].text == result.text


LONG_TOKENS = 1000  # the tiny model ends a detailed caption after 130 to 340 tokens


def test_cancel_stops_a_running_caption_and_frees_the_model(node):
    full = node.caption_result(node.send_caption(
        Caption.Goal(object_id="disk", task="detailed_caption", max_new_tokens=LONG_TOKENS), []), timeout_s=300)
    assert full.status == GoalStatus.STATUS_SUCCEEDED and full.result.num_tokens > 40, full.result.message
    feedback = []
    goal_handle = node.send_caption(Caption.Goal(object_id="disk", task="detailed_caption",
                                                 max_new_tokens=LONG_TOKENS), feedback)
    wait_until(lambda: any(f.status == "running" and f.num_tokens >= 3 for f in feedback), 60.0,
               "caption feedback", node.process.output)
    result_future = goal_handle.get_result_async()
    for index in range(2):  # masks keep coming while the caption is being generated
        node.wait_objects_for(node.publish_frame(frame(index)), timeout_s=20.0)
    node.wait_future(goal_handle.cancel_goal_async(), 30.0, "the cancel response", node.process.output)
    outcome = node.caption_result(goal_handle)
    assert outcome.status == GoalStatus.STATUS_CANCELED, outcome.result.message
    # the same greedy generation, uncancelled, ran to full.num_tokens: cancelling cut it short
    assert not outcome.result.success and outcome.result.num_tokens < full.result.num_tokens
    assert outcome.result.text == full.result.text[:len(outcome.result.text)]
    seen = len(feedback)
    assert result_future.done()
    # the language model is free at once for the next goal
    started = time.monotonic()
    nxt = node.caption_result(node.send_caption(Caption.Goal(object_id="disk", task="recognize", max_new_tokens=2),
                                                []))
    assert nxt.status == GoalStatus.STATUS_SUCCEEDED and time.monotonic() - started < 30.0
    # a whole later goal came and went: feedback the cancelled one might still have sent would be here by now
    assert len(feedback) == seen, "feedback went on after the cancel"


def test_caption_goals_queue_in_arrival_order_and_cancel_while_queued(node):
    first_feedback, second_feedback, third_feedback = [], [], []
    # the first goal runs to the model's own end (130 to 340 tokens): long enough that the third goal is
    # still waiting when its cancel arrives, also on a quiet machine (60 tokens could finish first)
    first = node.send_caption(Caption.Goal(object_id="disk", task="detailed_caption", max_new_tokens=LONG_TOKENS),
                              first_feedback)
    second = node.send_caption(Caption.Goal(object_id="disk", task="caption", max_new_tokens=4), second_feedback)
    third = node.send_caption(Caption.Goal(object_id="disk", task="caption", max_new_tokens=4), third_feedback)
    wait_until(lambda: any(f.status == "queued" for f in third_feedback), 30.0, "'queued' feedback",
               node.process.output)
    assert min(f.queue_position for f in third_feedback if f.status == "queued") >= 1
    node.wait_future(third.cancel_goal_async(), 30.0, "the cancel response", node.process.output)
    third_outcome = node.caption_result(third)
    assert third_outcome.status == GoalStatus.STATUS_CANCELED
    assert "while queued" in third_outcome.result.message
    assert not any(f.status == "running" for f in third_feedback), "a cancelled queued goal never runs"
    first_outcome, second_outcome = node.caption_result(first, 120), node.caption_result(second, 120)
    assert first_outcome.status == second_outcome.status == GoalStatus.STATUS_SUCCEEDED
    assert any(f.status == "queued" for f in second_feedback), "the second goal waited for the first"


def test_caption_goals_for_unknown_objects_or_tasks_are_rejected(node):
    node.send_caption(Caption.Goal(object_id="ghost", task="caption"), [], accepted=False)
    node.process.wait_for_line("caption goal rejected: unknown object id 'ghost'", timeout_s=10)
    node.send_caption(Caption.Goal(object_id="disk", task="dance"), [], accepted=False)
    node.process.wait_for_line("caption goal rejected: unknown task 'dance'", timeout_s=10)
    _assert_alive(node)


def test_describe_answers_within_the_timeout_while_the_model_is_busy(node):
    assert all(r.successful for r in node.set_parameters(request_timeout_s=0.5))
    busy = node.send_caption(Caption.Goal(object_id="disk", task="detailed_caption", max_new_tokens=LONG_TOKENS), [])
    try:
        started = time.monotonic()
        response = node.describe(Describe.Request(prompt=Prompt(object_id="disk"), tasks=["caption"],
                                                  max_new_tokens=4))
        assert not response.success and "timed out after 0.5 s" in response.message, response.message
        assert time.monotonic() - started < 10.0
    finally:
        node.wait_future(busy.cancel_goal_async(), 30.0, "the cancel response", node.process.output)
        node.caption_result(busy)
        assert all(r.successful for r in node.set_parameters(request_timeout_s=20.0))
    answered = node.describe(Describe.Request(prompt=Prompt(object_id="disk"), tasks=["caption"], max_new_tokens=4))
    assert answered.success, answered.message


def test_parameters_configure_time_refused_while_active_live_ones_apply(node):
    result = node.set_parameters(image_size=512)[0]
    assert not result.successful and "read at configure" in result.reason and "cleanup" in result.reason
    result = node.set_parameters(max_objects=0)[0]
    assert not result.successful
    result = node.set_parameters(max_batch=0)[0]
    assert not result.successful, "max_batch is an integer from 1"
    result = node.set_parameters(max_batch=257)[0]
    assert not result.successful, "max_batch is at most 256"
    assert all(r.successful for r in node.set_parameters(max_batch=256))
    node.process.wait_for_line("applied now: max_batch=256", timeout_s=10)
    assert all(r.successful for r in node.set_parameters(max_batch=3))
    node.process.wait_for_line("applied now: max_batch=3", timeout_s=10)
    values = node.wait_diagnostics(lambda v: v.get("engine.semantics_max_batch") == "3", "max_batch in diagnostics",
                                   timeout_s=15)
    assert values["engine.semantics_max_batch"] == "3"
    assert all(r.successful for r in node.set_parameters(max_new_tokens=2))
    try:
        node.process.wait_for_line("applied now: max_new_tokens=2", timeout_s=10)
        outcome = node.caption_result(node.send_caption(Caption.Goal(object_id="disk", task="detailed_caption"), []))
        assert outcome.status == GoalStatus.STATUS_SUCCEEDED and outcome.result.num_tokens == 2
    finally:
        assert all(r.successful for r in node.set_parameters(max_new_tokens=MAX_NEW_TOKENS))


def _manage_with_frames(node, *prompts, first_index: int):
    """Call manage_objects with wait; its prompts are applied to the next frame, so keep frames coming."""
    future = node.manage_client.call_async(ManageObjects.Request(prompts=list(prompts), wait=True))
    index = first_index
    deadline = time.monotonic() + 60.0
    while not future.done():
        assert time.monotonic() < deadline, "manage_objects did not answer\n" + node.process.output()
        node.wait_objects_for(node.publish_frame(frame(index)))
        index += 1
    return future.result(), index


def test_manage_objects_add_refine_remove(node):
    index = 100
    added, index = _manage_with_frames(node, point_prompt("", 200.0, 150.0), first_index=index)
    assert added.success, added.message
    new_id = added.object_ids[0]
    assert new_id.startswith("obj_") and list(added.errors) == [""]
    assert list(added.status) == [ManageObjects.Response.APPLIED]
    refused, index = _manage_with_frames(node, point_prompt("ghost", 10.0, 10.0, action=Prompt.REFINE),
                                         point_prompt("", math.nan, 1.0), first_index=index)
    assert not refused.success and list(refused.object_ids) == ["", ""]
    assert list(refused.status) == [ManageObjects.Response.REFUSED] * 2
    assert "ghost" in refused.errors[0] and "finite" in refused.errors[1]
    removed, index = _manage_with_frames(node, Prompt(action=Prompt.REMOVE, object_id=new_id), first_index=index)
    assert removed.success and list(removed.object_ids) == [new_id], removed.message
    header = node.publish_frame(frame(index))
    assert new_id not in [o.object_id for o in node.wait_objects_for(header).objects]


def test_manage_objects_answers_at_once_with_ids_and_never_duplicates(node):
    queued = node.manage(point_prompt("mug", 200.0, 150.0), point_prompt("", 100.0, 100.0),
                         point_prompt("mug", 10.0, 10.0))
    assert list(queued.status) == [ManageObjects.Response.QUEUED, ManageObjects.Response.QUEUED,
                                   ManageObjects.Response.REFUSED], queued.message
    mug, named = queued.object_ids[0], queued.object_ids[1]
    assert mug == "mug" and named.startswith("obj_") and queued.object_ids[2] == ""
    assert "already queued" in queued.errors[2] and not queued.success
    msg = node.wait_objects_for(node.publish_frame(frame(5)))
    assert {"mug", named} <= {o.object_id for o in msg.objects}
    retry = node.manage(point_prompt("mug", 200.0, 150.0))  # a client retrying after a lost answer
    assert list(retry.status) == [ManageObjects.Response.REFUSED] and "already tracked" in retry.errors[0]
    msg = node.wait_objects_for(node.publish_frame(frame(6)))
    assert [o.object_id for o in msg.objects].count("mug") == 1
    removed, _ = _manage_with_frames(node, Prompt(action=Prompt.REMOVE, object_id="mug"),
                                     Prompt(action=Prompt.REMOVE, object_id=named), first_index=7)
    assert removed.success and list(removed.status) == [ManageObjects.Response.APPLIED] * 2


def test_manage_objects_wait_times_out_queued_with_the_id_and_a_retry_is_refused(node):
    """No image while waiting: the answer comes after request_timeout_s, QUEUED with the id it will have; a
    client retrying while that prompt is still queued is refused (no duplicate); the next frame applies it."""
    assert all(r.successful for r in node.set_parameters(request_timeout_s=1.0))
    try:
        started = time.monotonic()
        first = node.manage(point_prompt("cup", 200.0, 150.0), point_prompt("", 100.0, 100.0), wait=True)
        assert time.monotonic() - started >= 1.0, "answered before the timeout without an image"
        assert list(first.status) == [ManageObjects.Response.QUEUED] * 2, first.message
        assert first.success and "not applied within 1 s" in first.message, first.message
        cup, named = first.object_ids
        assert cup == "cup" and named.startswith("obj_") and list(first.errors) == ["", ""]
        retry = node.manage(point_prompt("cup", 200.0, 150.0), wait=True)  # the first is still queued
        assert list(retry.status) == [ManageObjects.Response.REFUSED] and list(retry.object_ids) == [""]
        assert "already queued" in retry.errors[0] and not retry.success, retry.message
    finally:
        assert all(r.successful for r in node.set_parameters(request_timeout_s=20.0))
    msg = node.wait_objects_for(node.publish_frame(frame(9)))
    ids = [o.object_id for o in msg.objects]
    assert ids.count("cup") == 1 and ids.count(named) == 1, ids
    removed, _ = _manage_with_frames(node, Prompt(action=Prompt.REMOVE, object_id="cup"),
                                     Prompt(action=Prompt.REMOVE, object_id=named), first_index=10)
    assert removed.success and list(removed.status) == [ManageObjects.Response.APPLIED] * 2


def test_bad_topic_input_is_logged_and_tracking_goes_on(node):
    bad_images = [
        (Image(width=4, height=2, encoding="32FC1", step=8, data=bytes(16)), "unsupported image encoding '32FC1'"),
        (Image(width=0, height=0, encoding="rgb8", step=0, data=b""), "image has zero size"),
        (Image(width=4, height=2, encoding="rgb8", step=12, data=bytes(10)), "image data is truncated"),
    ]
    for msg, expected in bad_images:
        node.publish_raw(msg)
        node.process.wait_for_line(f"image skipped: {expected}", timeout_s=20)
    bad_prompts = [
        (point_prompt("", math.nan, 2.0), "prompt refused: point coordinates must be finite"),
        (Prompt(points=[Point(x=1.0, y=1.0), Point(x=2.0, y=2.0)], point_labels=[1]),
         "prompt refused: 2 points but 1 point_labels"),
        (Prompt(points=[Point(x=1.0, y=1.0)], point_labels=[2]), "prompt refused: point labels must be 1 (object) or 0"),
        (Prompt(box=[50.0, 50.0, 10.0, 80.0], has_box=True), "prompt refused: box must be x1 < x2"),
    ]
    for msg, expected in bad_prompts:
        node.prompt_pub.publish(msg)
        node.process.wait_for_line(expected, timeout_s=20)
    # Held for a frame that never comes, then refused with a log line.
    node.prompt_pub.publish(point_prompt("late", 10.0, 10.0, stamp_msg=Time(sec=2_000_000_000)))
    node.process.wait_for_line("ADD late refused (topic): no frame with stamp", timeout_s=PROMPT_HOLD_S + 10)
    # Refused by the engine on the next frame: out of the image, unknown id.
    node.prompt_pub.publish(point_prompt("far_away", 5000.0, 10.0))
    node.prompt_pub.publish(point_prompt("ghost", 10.0, 10.0, action=Prompt.REFINE))
    # both in the node: far_away refused on arrival (outside the latest frame), ghost waiting for a frame
    node.process.wait_for_line("ADD far_away refused (topic)", timeout_s=20)
    node.wait_diagnostics(lambda v: v.get("prompts_pending") == "1", "the REFINE waiting for the next frame")
    header = node.publish_frame(frame(20))
    msg = node.wait_objects_for(header)
    node.process.wait_for_line("ADD far_away refused (topic)", timeout_s=20)
    node.process.wait_for_line("REFINE ghost refused (topic)", timeout_s=20)
    assert "disk" in [o.object_id for o in msg.objects]
    _assert_alive(node)


# --- overlay, diagnostics, overload ---------------------------------------------------------------

def test_overlay_is_drawn_only_while_subscribed(node):
    values = node.wait_diagnostics(lambda v: v.get("lifecycle_state") == "active", "active diagnostics")
    assert values["overlays_drawn"] == "0", "overlay drawn with nobody subscribed"
    overlays = []
    subscription = node.node.create_subscription(Image, "overlay", lambda m: overlays.append(m), QoSProfile(depth=10))
    try:
        index = 300

        def overlay_arrived() -> bool:
            nonlocal index
            node.wait_objects_for(node.publish_frame(frame(index)))
            index += 1
            return bool(overlays)

        wait_until(overlay_arrived, 60.0, "an overlay image", node.process.output, period_s=0.1)
        overlay = overlays[-1]
        assert (overlay.width, overlay.height, overlay.encoding) == (320, 240, "rgb8")
        assert overlay.header.frame_id == "camera" and overlay.header.stamp.sec >= 1_000
    finally:
        node.node.destroy_subscription(subscription)

    def settled_overlays() -> int:
        """overlays_drawn once every frame before the last one published is fully done (one tracking thread,
        frames in order: a frame's objects come out after the previous frame's overlay was counted)."""
        nonlocal index
        for _ in range(2):
            msg = node.wait_objects_for(node.publish_frame(frame(index)))
            index += 1
        values = node.wait_diagnostics(lambda v: int(v["frames_processed"]) > msg.frame_index,
                                       "diagnostics counting the frame")
        return int(values["overlays_drawn"])

    counts = [settled_overlays()]

    def drawing_stopped() -> bool:  # the node sees the overlay subscriber leave, a few frames later at most
        counts.append(settled_overlays())
        return counts[-1] == counts[-2]

    wait_until(drawing_stopped, 90.0, "overlays to stop once nobody subscribes", node.process.output, period_s=0.0)
    assert settled_overlays() == counts[-1] and settled_overlays() == counts[-1]


def test_diagnostics_report_rates_latency_and_drops(node):
    for index in range(4):  # images arriving (lock-step): a rate above 0 in the 5-s window
        node.wait_objects_for(node.publish_frame(frame(index)))
    node.wait_diagnostics(lambda v: float(v["input_rate_hz"]) > 0 and float(v["processed_rate_hz"]) > 0,
                          "input and processed rates above 0 while images arrive")
    values = node.wait_diagnostics(lambda v: "latency_ms.track.last" in v, "diagnostics with tracking latency")
    for key in ("input_rate_hz", "processed_rate_hz", "frames_received", "frames_processed", "frames_dropped",
                "queue_depth", "latency_ms.convert.mean", "latency_ms.receive_to_publish.last"):
        assert key in values, f"{key} missing from diagnostics: {sorted(values)}"
    assert values["lifecycle_state"] == "active"
    assert int(values["frames_processed"]) > FRAMES_COMPARED
    assert float(values["latency_ms.track.last"]) > 0
    assert any(key.startswith("engine.") for key in values), sorted(values)
    assert values["image_encoder"] == "torch on cpu"  # which encoder runs, and on what


def test_frames_are_dropped_not_queued_under_overload(node):
    burst = 25
    before = node.objects[-1]
    headers = [node.publish_frame(frame(i)) for i in range(burst)]  # as fast as possible
    last = node.wait_objects_for(headers[-1])  # the newest frame is always processed
    processed = [h for h in headers if node.objects_for(h) is not None]
    assert len(processed) < burst, "every frame was processed: nothing was dropped"
    # Frames replaced in the node's slot are counted (DDS may also drop some from its own history).
    assert last.frames_dropped > before.frames_dropped
    assert last.frames_received - before.frames_received >= len(processed) + (last.frames_dropped - before.frames_dropped)
    stamps = [node.objects_for(h).header.stamp.sec for h in processed]
    assert stamps == sorted(stamps)
    values = node.wait_diagnostics(lambda v: int(v["frames_dropped"]) >= last.frames_dropped, "drops in diagnostics")
    assert int(values["queue_depth"]) <= 1


# --- lifecycle -------------------------------------------------------------------------------------

def test_deactivate_stops_work_and_activate_resumes(node):
    active = node.wait_diagnostics(lambda v: any(k.startswith("engine.") for k in v), "active engine diagnostics")
    assert int(active["engine.objects"]) >= 1
    running = node.send_caption(Caption.Goal(object_id="disk", task="detailed_caption", max_new_tokens=LONG_TOKENS),
                                feedback := [])
    wait_until(lambda: any(f.status == "running" for f in feedback), 60.0, "the caption to run", node.process.output)
    assert node.transition(Transition.TRANSITION_DEACTIVATE, timeout_s=60) is True
    assert node.state() == "inactive"
    outcome = node.caption_result(running)
    assert outcome.status == GoalStatus.STATUS_ABORTED and "deactivated" in outcome.result.message
    node.process.wait_for_line("inactive: tracking stopped and the model released", timeout_s=10)
    values = node.wait_diagnostics(lambda v: v.get("lifecycle_state") == "inactive", "inactive diagnostics")
    assert not any(k.startswith("engine.") for k in values), "the engine is gone while inactive"
    assert values["prompts_pending"] == "0"
    inactive_header = node.publish_frame(frame(1))
    describe = node.describe(Describe.Request(prompt=Prompt(object_id="disk")))
    assert not describe.success and "lifecycle state: inactive" in describe.message

    assert node.transition(Transition.TRANSITION_ACTIVATE, timeout_s=180) is True
    node.wait_subscribed()
    header = node.publish_frame(frame(2))
    msg = node.wait_objects_for(header)
    # objects come on one reliable publisher in processing order: the frame sent while inactive was never
    # processed, neither then nor queued for the activation (this is the activation's first frame)
    assert node.objects_for(inactive_header) is None, "a frame was processed while inactive"
    assert msg.frame_index == 0 and msg.objects == [], "a fresh activation starts with no objects"
    values = node.wait_diagnostics(lambda v: v.get("lifecycle_state") == "active" and "engine.objects" in v,
                                   "active diagnostics again")
    assert values["engine.objects"] == "0" and int(values["frames_processed"]) <= 1, "counters start afresh"


def test_reconfigure_for_compressed_input(node):
    from sensor_msgs.msg import CompressedImage

    assert node.transition(Transition.TRANSITION_DEACTIVATE, timeout_s=60) is True
    # read at configure: refused while configured (saying how), accepted after cleanup
    refused = node.set_parameters(image_transport="compressed")[0]
    assert not refused.successful and "deactivate and clean up first" in refused.reason
    assert node.transition(Transition.TRANSITION_CLEANUP) is True
    assert all(r.successful for r in node.set_parameters(image_transport="compressed"))
    assert node.transition(Transition.TRANSITION_CONFIGURE) is True
    assert node.transition(Transition.TRANSITION_ACTIVATE, timeout_s=180) is True
    compressed_pub = node.node.create_publisher(CompressedImage, "image/compressed", QoSProfile(depth=10))
    try:
        wait_until(lambda: compressed_pub.get_subscription_count() > 0, 30.0, "the node on image/compressed",
                   node.process.output)
        compressed_pub.publish(CompressedImage(format="png", data=b"not a png"))
        node.process.wait_for_line("image skipped: cannot decode 'png' image data", timeout_s=20)
        buffer = io.BytesIO()
        PilImage.fromarray(frame(4)).save(buffer, format="PNG")
        header = Header(stamp=stamp(10_000), frame_id="compressed_camera")
        compressed_pub.publish(CompressedImage(header=header, format="rgb8; png compressed rgb8",
                                               data=buffer.getvalue()))
        msg = node.wait_objects_for(header)
        assert (msg.image_width, msg.image_height, msg.header.frame_id) == (320, 240, "compressed_camera")
    finally:
        node.node.destroy_publisher(compressed_pub)
    _assert_alive(node)


def test_cleanup_and_shutdown(node):
    assert node.transition(Transition.TRANSITION_DEACTIVATE, timeout_s=60) is True
    assert node.transition(Transition.TRANSITION_CLEANUP) is True
    assert node.state() == "unconfigured"
    assert node.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN) is True
    assert node.state() == "finalized"
    _assert_alive(node)
