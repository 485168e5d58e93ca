"""The node follows its own lifecycle state (rclpy keeps it private): after every transition it says what
rclpy's state machine says. In-process node, no model loaded (configure only validates the settings)."""
from __future__ import annotations

import rclpy
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from ros_helpers.ros_session import isolate_ros_environment


def _rclpy_state(node) -> str:
    return node._state_machine.current_state[1]  # the private truth, read here only to check against


def test_lifecycle_state_follows_every_transition():
    from pam_ros.ros.node import PamNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=isolate_ros_environment())
    node = PamNode(context=context, parameter_overrides=[Parameter("autostart", value=False),
                                                         Parameter("image_qos", value="bogus"),
                                                         Parameter("model", value="tiny")],
                   cli_args=["--ros-args", "-r", "__node:=pam_ros_lifecycle_test", "-r", "__ns:=/lifecycle_test"],
                   start_parameter_services=False, enable_rosout=False)
    try:
        seen = [node.lifecycle_state()]
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE  # image_qos is bogus
        seen.append(node.lifecycle_state())
        assert node.lifecycle_state() == _rclpy_state(node) == "unconfigured"
        assert node.set_parameters([Parameter("image_qos", value="reliable")])[0].successful
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        seen.append(node.lifecycle_state())
        assert node.lifecycle_state() == _rclpy_state(node) == "inactive"
        refused = node.set_parameters([Parameter("image_size", value=512)])[0]
        assert not refused.successful and "the node is inactive" in refused.reason
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        seen.append(node.lifecycle_state())
        assert node.lifecycle_state() == _rclpy_state(node) == "unconfigured"
        assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
        assert node.lifecycle_state() == _rclpy_state(node) == "finalized"
        assert seen == ["unconfigured", "unconfigured", "inactive", "unconfigured"]
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
