"""Drive a pam_ros_node process from a test: lifecycle, topics, services, action, diagnostics."""
from __future__ import annotations

import contextlib
import threading
import time
from collections import deque

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.action import ActionClient
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from pam_ros.action import Caption
from pam_ros.msg import PerceivedObjectArray, Prompt
from pam_ros.ros import convert
from pam_ros.srv import Describe, ManageObjects
from ros_helpers.ros_session import HelperProcess, RosClientSession, child_environment, wait_until

NODE = "pam_ros_node"
REPLY_TIMEOUT_S = 60.0  # CPU, two shared cores: model loads and generations can be slow


def start_node(console_script: str, *parameters: str, **env: str) -> HelperProcess:
    """pam_ros_node --ros-args -p a:=b ... in its own process (the test session's DDS domain)."""
    argv = [console_script, "--ros-args", "--log-level", "info"]
    for parameter in parameters:
        argv += ["-p", parameter]
    return HelperProcess(argv, child_environment(**env), name=NODE)


@contextlib.contextmanager
def node_client(process: HelperProcess, *, wait_connected: bool = False):
    """A NodeClient on a started node; on exit the node must stop cleanly on SIGINT."""
    client = NodeClient(process)
    try:
        if wait_connected:
            client.wait_connected()
        yield client
    finally:
        client.close()
        rc = process.stop(timeout_s=20.0)
        assert rc == 0, f"the node did not exit cleanly on SIGINT (rc {rc})\n{process.output()}"


def stamp(index: int) -> Time:
    return Time(sec=1_000 + index, nanosec=1_000 * index)


class NodeClient(RosClientSession):
    """Publishers, subscribers and clients for one pam_ros_node, all in the test process."""

    def __init__(self, node_process: HelperProcess):
        super().__init__("pam_ros_node_test_client")
        self.process = node_process
        node = self.node
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = node.create_publisher(Image, "image", reliable)
        self.prompt_pub = node.create_publisher(Prompt, "prompts", reliable)
        self.objects: deque[PerceivedObjectArray] = deque(maxlen=1000)
        self.diagnostics: deque[DiagnosticArray] = deque(maxlen=100)
        node.create_subscription(PerceivedObjectArray, "objects", lambda m: self.objects.append(m), reliable)
        node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.diagnostics.append(m), 10)
        self.describe_client = node.create_client(Describe, "describe")
        self.manage_client = node.create_client(ManageObjects, "manage_objects")
        self.change_state_client = node.create_client(ChangeState, f"/{NODE}/change_state")
        self.get_state_client = node.create_client(GetState, f"/{NODE}/get_state")
        self.set_parameters_client = node.create_client(SetParameters, f"/{NODE}/set_parameters")
        self.caption_client = ActionClient(node, Caption, "caption")
        self._lock = threading.Lock()
        self._frames_sent = 0

    def publish_frame(self, rgb: np.ndarray, frame_id: str = "camera") -> Header:
        """Publish an image stamped stamp(n) for the n-th frame this client sends (stamps only increase)."""
        with self._lock:
            index, self._frames_sent = self._frames_sent, self._frames_sent + 1
        return self.publish_image(rgb, index, frame_id)

    # --- plumbing
    def call(self, client, request, what: str, timeout_s: float = REPLY_TIMEOUT_S):
        wait_until(client.service_is_ready, 30.0, f"service {client.srv_name}", self.process.output)
        return self.wait_future(client.call_async(request), timeout_s, what, self.process.output)

    def wait_connected(self) -> None:
        wait_until(lambda: self.get_state_client.service_is_ready(), 60.0, "the node's lifecycle services",
                   self.process.output)

    # --- lifecycle
    def state(self) -> str:
        # get_state is idempotent, so a lost reply is asked again: a server that answers before the DDS
        # match of its reply writer with this client completes gives up on sending it ("failed to send
        # response (timeout)", seen once in a full-suite run), and this client would otherwise wait forever.
        client = self.get_state_client
        wait_until(client.service_is_ready, 30.0, f"service {client.srv_name}", self.process.output)
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while True:
            future = client.call_async(GetState.Request())
            attempt_end = min(deadline, time.monotonic() + 5.0)
            while not future.done() and time.monotonic() < attempt_end:
                time.sleep(0.02)
            if future.done():
                return future.result().current_state.label
            client.remove_pending_request(future)
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {REPLY_TIMEOUT_S:.1f} s waiting for get_state\n"
                                     f"{self.process.output()}")

    def transition(self, transition_id: int, timeout_s: float = REPLY_TIMEOUT_S) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.call(self.change_state_client, request, f"change_state {transition_id}", timeout_s).success

    def wait_state(self, label: str, timeout_s: float = REPLY_TIMEOUT_S) -> None:
        wait_until(lambda: self.state() == label, timeout_s, f"lifecycle state {label!r}", self.process.output,
                   period_s=0.2)

    def set_parameters(self, **values) -> list:
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return self.call(self.set_parameters_client, request, "set_parameters").results

    # --- topics
    def wait_subscribed(self) -> None:
        wait_until(lambda: self.image_pub.get_subscription_count() > 0 and self.prompt_pub.get_subscription_count() > 0,
                   30.0, "the node to subscribe to image and prompts", self.process.output)

    def publish_image(self, rgb: np.ndarray, index: int, frame_id: str = "camera") -> Header:
        header = Header(stamp=stamp(index), frame_id=frame_id)
        self.image_pub.publish(convert.rgb_to_image_msg(rgb, header))
        return header

    def publish_raw(self, msg: Image) -> None:
        self.image_pub.publish(msg)

    def objects_for(self, header: Header) -> PerceivedObjectArray | None:
        for msg in list(self.objects):
            if msg.header.stamp == header.stamp:
                return msg
        return None

    def wait_objects_for(self, header: Header, timeout_s: float = REPLY_TIMEOUT_S) -> PerceivedObjectArray:
        wait_until(lambda: self.objects_for(header) is not None, timeout_s,
                   f"objects for the frame stamped {header.stamp.sec}.{header.stamp.nanosec:09d}", self.process.output)
        return self.objects_for(header)

    def latest_diagnostics(self) -> dict[str, str]:
        for array in reversed(list(self.diagnostics)):
            for status in array.status:
                if "perception" in status.name:
                    return ({kv.key: kv.value for kv in status.values}
                            | {"_message": status.message, "_level": int.from_bytes(status.level, "little")})
        return {}

    def wait_diagnostics(self, condition, what: str, timeout_s: float = 30.0) -> dict[str, str]:
        def holds() -> bool:
            values = self.latest_diagnostics()
            return bool(values) and condition(values)
        wait_until(holds, timeout_s, what, lambda: f"last diagnostics: {self.latest_diagnostics()}\n" + self.process.output())
        return self.latest_diagnostics()

    # --- services / action
    def describe(self, request: Describe.Request) -> Describe.Response:
        return self.call(self.describe_client, request, "describe response")

    def manage(self, *prompts: Prompt, wait: bool = False) -> ManageObjects.Response:
        return self.call(self.manage_client, ManageObjects.Request(prompts=list(prompts), wait=wait),
                         "manage_objects response")

    def send_caption(self, goal: Caption.Goal, feedback: list, *, accepted: bool = True):
        """Send a goal; returns its handle (asserting it was accepted, or rejected when accepted=False)."""
        wait_until(self.caption_client.server_is_ready, 30.0, "the caption action server", self.process.output)
        goal_handle = self.wait_future(
            self.caption_client.send_goal_async(goal, feedback_callback=lambda m: feedback.append(m.feedback)),
            REPLY_TIMEOUT_S, "the caption goal response", self.process.output)
        assert goal_handle.accepted == accepted, f"caption goal {'rejected' if accepted else 'accepted'}"
        return goal_handle

    def caption_result(self, goal_handle, timeout_s: float = REPLY_TIMEOUT_S):
        return self.wait_future(goal_handle.get_result_async(), timeout_s, "the caption result", self.process.output)

    def close(self) -> None:
        self.caption_client.destroy()
        super().close()


def point_prompt(object_id: str, x: float, y: float, action: int = Prompt.ADD, stamp_msg: Time | None = None,
                 tasks: tuple[str, ...] = ()) -> Prompt:
    from geometry_msgs.msg import Point

    msg = Prompt(action=action, object_id=object_id, points=[Point(x=float(x), y=float(y))], point_labels=[1],
                 tasks=list(tasks))
    if stamp_msg is not None:
        msg.header.stamp = stamp_msg
    return msg
