"""Helper process for test/test_interfaces.py: a small server for every pam_ros interface.

- topics: republishes each message received on echo_in/<name> unchanged on echo_out/<name>;
- service `describe` / `manage_objects`: answers the sample response when the request equals the
  sample request, otherwise success=false with the differing fields in `message`;
- action `caption`: streams the sample caption word by word as feedback, then the sample result;
  a goal with task ENDLESS_TASK streams until it is cancelled (result: success=false, "cancelled").
Prints READY once everything is created. Runs until SIGINT.
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # so `ros_helpers` imports

import rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile

from pam_ros.action import Caption
from pam_ros.srv import Describe, Discover, ManageObjects
from ros_helpers import interface_samples as samples
from ros_helpers.message_compare import message_differences

FEEDBACK_PERIOD_S = 0.05
ENDLESS_LIMIT_S = 60.0  # an endless goal nobody cancels still ends


class InterfaceEchoServer(Node):
    def __init__(self):
        super().__init__("pam_ros_interface_echo")
        self._keep = []
        for name, (msg_type, _) in samples.ECHO_TOPICS.items():
            publisher = self.create_publisher(msg_type, f"echo_out/{name}", QoSProfile(depth=10))
            self._keep.append(self.create_subscription(msg_type, f"echo_in/{name}", publisher.publish, QoSProfile(depth=10)))
        self.create_service(Describe, "describe", self._describe)
        self.create_service(ManageObjects, "manage_objects", self._manage_objects)
        self.create_service(Discover, "discover", self._discover)
        self._caption = ActionServer(self, Caption, "caption", execute_callback=self._execute_caption,
                                     goal_callback=lambda goal: GoalResponse.ACCEPT,
                                     cancel_callback=lambda goal_handle: CancelResponse.ACCEPT,
                                     callback_group=ReentrantCallbackGroup())

    @staticmethod
    def _answer(request, expected_request, response, response_type):
        diffs = message_differences(expected_request, request, "request")
        if diffs:
            return response_type(success=False, message="unexpected request: " + "; ".join(diffs[:5]))
        return response

    def _describe(self, request, response):
        return self._answer(request, samples.describe_request(), samples.describe_response(), Describe.Response)

    def _manage_objects(self, request, response):
        return self._answer(request, samples.manage_objects_request(), samples.manage_objects_response(),
                            ManageObjects.Response)

    def _discover(self, request, response):
        return self._answer(request, samples.discover_request(), samples.discover_response(), Discover.Response)

    def _execute_caption(self, goal_handle):
        goal = goal_handle.request
        if goal.task == samples.ENDLESS_TASK:
            return self._stream_until_cancelled(goal_handle)
        diffs = message_differences(samples.caption_goal(), goal, "goal")
        if diffs:
            goal_handle.abort()
            return Caption.Result(success=False, message="unexpected goal: " + "; ".join(diffs[:5]))
        for n in range(1, len(samples.CAPTION_WORDS) + 1):
            goal_handle.publish_feedback(samples.caption_feedback(n))
            time.sleep(FEEDBACK_PERIOD_S)
        goal_handle.succeed()
        return samples.caption_result()

    def _stream_until_cancelled(self, goal_handle):
        start, tokens = time.monotonic(), 0
        while time.monotonic() - start < ENDLESS_LIMIT_S:
            if goal_handle.is_cancel_requested:
                goal_handle.canceled()
                return Caption.Result(success=False, message=f"cancelled after {tokens} tokens",
                                      text=" ".join(["word"] * tokens), num_tokens=tokens)
            tokens += 1
            goal_handle.publish_feedback(Caption.Feedback(text=" ".join(["word"] * tokens), num_tokens=tokens))
            time.sleep(FEEDBACK_PERIOD_S)
        goal_handle.abort()
        return Caption.Result(success=False, message="never cancelled")


def main() -> int:
    rclpy.init(args=sys.argv)  # --ros-args -r __ns:=... from the test
    signal.signal(signal.SIGINT, lambda *_: rclpy.try_shutdown())
    node = InterfaceEchoServer()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    print("READY", flush=True)
    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
