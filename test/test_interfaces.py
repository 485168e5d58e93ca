"""The pam_ros interfaces through real rclpy and DDS, between two processes.

A helper process (ros_helpers/interface_echo_server.py) echoes every message type and serves the
Describe / ManageObjects / FindObjects services and the Caption action. Each sample sets every field (checked),
so a field that does not survive serialization, transport or the generated Python code fails here
with its path.
"""
from __future__ import annotations

import threading
import time

import pytest
from action_msgs.msg import GoalStatus
from rclpy.action import ActionClient
from rclpy.qos import QoSProfile
from ros_helpers import interface_samples as samples
from ros_helpers.message_compare import assert_messages_equal, message_differences, unset_fields
from ros_helpers.ros_session import RosClientSession, start_helper_script, wait_until

from pam_ros.action import Caption
from pam_ros.srv import Describe, Discover, FindObjects, ManageObjects

# Own namespace: other test modules of this session serve describe / manage_objects / caption too.
NAMESPACE = "/interface_test"
DISCOVERY_TIMEOUT_S = 30.0
REPLY_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def echo_server():
    server = start_helper_script("interface_echo_server.py", "--ros-args", "-r", f"__ns:={NAMESPACE}",
                                 name="interface echo server")
    try:
        server.wait_for_line("READY", timeout_s=DISCOVERY_TIMEOUT_S)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def session(echo_server):
    client = RosClientSession("pam_ros_interface_test", namespace=NAMESPACE)
    yield client
    client.close()


@pytest.mark.parametrize("name", sorted(samples.ECHO_TOPICS))
def test_sample_sets_every_field(name):
    _, build = samples.ECHO_TOPICS[name]
    assert unset_fields(build()) == [], f"the {name} sample leaves fields at their defaults"


@pytest.mark.parametrize("name", sorted(samples.ECHO_TOPICS))
def test_message_round_trips_between_processes(session, echo_server, name):
    msg_type, build = samples.ECHO_TOPICS[name]
    received = []
    got_one = threading.Event()

    def on_echo(msg):
        received.append(msg)
        got_one.set()

    subscription = session.node.create_subscription(msg_type, f"echo_out/{name}", on_echo, QoSProfile(depth=10))
    publisher = session.node.create_publisher(msg_type, f"echo_in/{name}", QoSProfile(depth=10))
    try:
        wait_until(lambda: publisher.get_subscription_count() > 0, DISCOVERY_TIMEOUT_S,
                   f"the echo server to subscribe to echo_in/{name}", echo_server.output)
        # Until both directions are matched a message can be echoed to nobody: resend until one comes back.
        deadline = time.monotonic() + DISCOVERY_TIMEOUT_S
        while not got_one.is_set():
            assert time.monotonic() < deadline, f"no echo on echo_out/{name} within {DISCOVERY_TIMEOUT_S} s\n" + echo_server.output()
            publisher.publish(build())
            got_one.wait(0.5)
        assert_messages_equal(build(), received[0], what=f"{msg_type.__name__} (echo_out/{name})")
    finally:
        session.node.destroy_subscription(subscription)
        session.node.destroy_publisher(publisher)


def _call(session, server, srv_type, name, request):
    client = session.node.create_client(srv_type, name)
    try:
        wait_until(client.service_is_ready, DISCOVERY_TIMEOUT_S, f"service {name}", server.output)
        return session.wait_future(client.call_async(request), REPLY_TIMEOUT_S, f"the {name} response", server.output)
    finally:
        session.node.destroy_client(client)


@pytest.mark.parametrize("srv_type,name,build_request,build_response", [
    (Describe, "describe", samples.describe_request, samples.describe_response),
    (ManageObjects, "manage_objects", samples.manage_objects_request, samples.manage_objects_response),
    (FindObjects, "find_objects", samples.find_objects_request, samples.find_objects_response),
    (Discover, "discover", samples.discover_request, samples.discover_response),
])
def test_service_end_to_end(session, echo_server, srv_type, name, build_request, build_response):
    response = _call(session, echo_server, srv_type, name, build_request())
    assert response.success, f"the server saw a different request: {response.message}"
    assert_messages_equal(build_response(), response, what=f"{name} response")


def test_service_request_fields_reach_the_server(session, echo_server):
    request = samples.describe_request()
    request.prompt.box[2] = 299.0
    request.image.data[5] ^= 0xFF
    response = _call(session, echo_server, Describe, "describe", request)
    assert not response.success
    assert "request.prompt.box[2]" in response.message and "request.image.data[5]" in response.message, response.message


def _send_goal(session, server, goal, on_feedback):
    client = ActionClient(session.node, Caption, "caption")
    wait_until(client.server_is_ready, DISCOVERY_TIMEOUT_S, "the caption action server", server.output)
    goal_handle = session.wait_future(client.send_goal_async(goal, feedback_callback=on_feedback),
                                      REPLY_TIMEOUT_S, "the caption goal to be answered", server.output)
    assert goal_handle.accepted, "the caption goal was rejected"
    return client, goal_handle


def test_caption_action_streams_feedback_and_result(session, echo_server):
    feedback = []
    client, goal_handle = _send_goal(session, echo_server, samples.caption_goal(),
                                     lambda msg: feedback.append(msg.feedback))
    try:
        outcome = session.wait_future(goal_handle.get_result_async(), REPLY_TIMEOUT_S, "the caption result",
                                      echo_server.output)
        assert outcome.status == GoalStatus.STATUS_SUCCEEDED, outcome.result.message
        assert_messages_equal(samples.caption_result(), outcome.result, what="Caption result")
        assert feedback, "no feedback received while the caption was generated"
        # Feedback is text so far: every message is one of the sample prefixes, in order, ending with the full text.
        counts = [f.num_tokens for f in feedback]
        assert counts == sorted(set(counts)), f"feedback out of order or repeated: {counts}"
        for f in feedback:
            assert not message_differences(samples.caption_feedback(f.num_tokens), f), f
        assert feedback[-1].text == outcome.result.text
    finally:
        client.destroy()


def test_caption_action_cancel_stops_generation(session, echo_server):
    feedback = []
    client, goal_handle = _send_goal(session, echo_server, samples.caption_goal(samples.ENDLESS_TASK),
                                     lambda msg: feedback.append(msg.feedback))
    try:
        wait_until(lambda: len(feedback) >= 2, REPLY_TIMEOUT_S, "feedback from the endless caption", echo_server.output)
        cancel = session.wait_future(goal_handle.cancel_goal_async(), REPLY_TIMEOUT_S, "the cancel response",
                                     echo_server.output)
        assert len(cancel.goals_canceling) == 1, "the server did not accept the cancel request"
        outcome = session.wait_future(goal_handle.get_result_async(), REPLY_TIMEOUT_S, "the cancelled result",
                                      echo_server.output)
        assert outcome.status == GoalStatus.STATUS_CANCELED
        assert not outcome.result.success and "cancelled" in outcome.result.message
        tokens_at_cancel = outcome.result.num_tokens
        assert tokens_at_cancel >= 2
        # The last feedback published before the cancel reaches the client (results and feedback travel
        # on different topics, so it may come after the result).
        wait_until(lambda: feedback[-1].num_tokens >= tokens_at_cancel, REPLY_TIMEOUT_S,
                   "the feedback of the last token before the cancel", echo_server.output)
        # Feedback of every goal shares one topic, delivered in publishing order: once a later goal's
        # feedback has all arrived, anything the cancelled goal had published after its end would have too.
        later = []
        later_client, later_goal = _send_goal(session, echo_server, samples.caption_goal(),
                                              lambda msg: later.append(msg.feedback))
        try:
            session.wait_future(later_goal.get_result_async(), REPLY_TIMEOUT_S, "the next goal's result",
                                echo_server.output)
            wait_until(lambda: later and later[-1].num_tokens == len(samples.CAPTION_WORDS), REPLY_TIMEOUT_S,
                       "the next goal's last feedback", echo_server.output)
        finally:
            later_client.destroy()
        assert [f.num_tokens for f in feedback][-1] == tokens_at_cancel, "feedback went on after the cancel"
        assert max(f.num_tokens for f in feedback) == tokens_at_cancel
    finally:
        client.destroy()
