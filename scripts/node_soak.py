#!/usr/bin/env python3
"""Reliability figures of pam_ros_node: malformed input by the thousand, then a long soak.

Starts the node (built-in tiny model) in its own process on a private DDS domain and, from this
process over DDS:
  1. publishes N malformed images and N malformed prompts, and makes M malformed service / action
     requests (describe, manage_objects, caption); every request must be answered and the node must
     stay alive;
  2. checks that a valid prompt is still tracked afterwards;
  3. tracks F frames with two objects (lock-step: every frame is processed) and reads the node's
     resident memory at frame F/5 and at frame F.
Prints the figures as a table; exit status 1 if the node died, a request went unanswered, the valid
prompt was not tracked or memory grew by more than 5 %.

    python scripts/node_soak.py                      # 10,000 / 10,000 / 400, soak of 3,000 frames
    python scripts/node_soak.py --bad 500 --requests 40 --frames 300    # a quick run
"""
from __future__ import annotations

import argparse
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bad", type=int, default=10_000, help="malformed images, and as many malformed prompts")
    parser.add_argument("--requests", type=int, default=400, help="malformed service / action requests")
    parser.add_argument("--frames", type=int, default=3_000, help="frames of the soak (memory read at 1/5 and at the end)")
    parser.add_argument("--image-size", type=int, default=128, help="the node's SAM 2 input size (tiny model)")
    args = parser.parse_args(argv)

    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 80))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1")
    node_cmd = [sys.executable, "-m", "pam_ros.ros.node", "--ros-args", "--log-level", "error",
                "-p", "model:=tiny", "-p", "device:=cpu", "-p", "dtype:=float32", "-p", f"image_size:={args.image_size}",
                "-p", "new_object_tasks:=[caption]", "-p", "max_new_tokens:=4", "-p", "request_timeout_s:=30.0",
                "-p", "publish_overlay:=false"]
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pam_ros_soak_{os.getpid()}.log"
    with open(log_path, "w") as node_log:
        node = subprocess.Popen(node_cmd, env=env, stdout=node_log, stderr=subprocess.STDOUT)
    try:
        figures = run_against(node, args)
    finally:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
    width = max(len(k) for k, _ in figures)
    print("pam_ros_node reliability")
    for key, value in figures:
        print(f"  {key:<{width}}  {value}")
    print(f"  {'node log':<{width}}  {log_path}")
    failed = [k for k, v in figures if isinstance(v, str) and v.startswith("FAIL")]
    return 1 if failed else 0


def run_against(node_process: subprocess.Popen, args) -> list[tuple[str, object]]:
    import numpy as np
    import rclpy
    from action_msgs.msg import GoalStatus  # noqa: F401  (the action client needs its types loaded)
    from geometry_msgs.msg import Point
    from rclpy.action import ActionClient
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from pam_ros.action import Caption
    from pam_ros.msg import PerceivedObjectArray, Prompt
    from pam_ros.ros.convert import rgb_to_image_msg
    from pam_ros.srv import Describe, ManageObjects

    rclpy.init()
    client = rclpy.create_node("pam_ros_soak_client")
    executor = SingleThreadedExecutor()
    executor.add_node(client)
    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    image_pub = client.create_publisher(Image, "image", reliable)
    prompt_pub = client.create_publisher(Prompt, "prompts", reliable)
    received: dict[tuple[int, int], PerceivedObjectArray] = {}
    client.create_subscription(PerceivedObjectArray, "objects",
                               lambda m: received.__setitem__((m.header.stamp.sec, m.header.stamp.nanosec), m),
                               reliable)
    describe = client.create_client(Describe, "describe")
    manage = client.create_client(ManageObjects, "manage_objects")
    caption = ActionClient(client, Caption, "caption")
    figures: list[tuple[str, object]] = []
    rng = random.Random(0)

    def spin_until(condition, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline or node_process.poll() is not None:
                return False
            executor.spin_once(timeout_sec=0.02)
        return True

    def alive() -> bool:
        return node_process.poll() is None

    try:
        if not spin_until(lambda: describe.service_is_ready() and image_pub.get_subscription_count() > 0, 180):
            return [("node start", "FAIL: the node did not come up (see its log)")]

        # 1. malformed images and prompts
        started = time.monotonic()
        bad_images = [
            Image(width=4, height=2, encoding="32FC1", step=16, data=bytes(32)),
            Image(width=8, height=8, encoding="rgb8", step=24, data=bytes(10)),
            Image(width=0, height=0, encoding="rgb8", step=0, data=b""),
            Image(width=8, height=8, encoding="rgb8", step=4, data=bytes(192)),
            Image(width=5, height=4, encoding="yuv422", step=10, data=bytes(40)),
            Image(width=8, height=8, encoding="no_such_encoding", step=8, data=bytes(64)),
        ]
        for i in range(args.bad):
            image_pub.publish(bad_images[i % len(bad_images)])
            bad = Prompt(action=rng.choice([0, 1, 2, 3, 7]), object_id=rng.choice(["", "ghost", "x" * 300]))
            kind = i % 4
            if kind == 0:
                bad.points = [Point(x=math.nan, y=1.0)]
                bad.point_labels = [1]
            elif kind == 1:
                bad.points = [Point(x=1.0, y=1.0)]
                bad.point_labels = [5]
            elif kind == 2:
                bad.box, bad.has_box = [10.0, 10.0, 5.0, float("inf")], True
            prompt_pub.publish(bad)
            if i % 200 == 0:
                executor.spin_once(timeout_sec=0.0)
        figures.append(("malformed images published", args.bad))
        figures.append(("malformed prompts published", args.bad))
        figures.append(("  seconds", round(time.monotonic() - started, 1)))
        figures.append(("node alive after them", "yes" if alive() else "FAIL: the node died"))

        # malformed requests: every one must get an answer
        answered = 0
        started = time.monotonic()
        for i in range(args.requests):
            kind = i % 3
            if kind == 0:
                request = Describe.Request(prompt=Prompt(object_id=rng.choice(["", "ghost"])), tasks=["no_such_task"])
                future = describe.call_async(request)
            elif kind == 1:
                request = ManageObjects.Request(prompts=[Prompt(action=9), Prompt(object_id="", points=[])])
                future = manage.call_async(request)
            else:
                future = caption.send_goal_async(Caption.Goal(object_id="ghost", task="caption"))
            if spin_until(future.done, 30):
                answered += 1
        figures.append(("malformed requests answered", f"{answered} / {args.requests}"
                        + ("" if answered == args.requests else "  FAIL")))
        figures.append(("  seconds", round(time.monotonic() - started, 1)))
        if answered != args.requests:
            figures[-2] = ("malformed requests answered", f"FAIL: {answered} / {args.requests}")

        # 2. a valid prompt is tracked afterwards
        def frame(index: int):
            image = np.full((120, 160, 3), 30, np.uint8)
            x = 20 + (index % 60)
            image[30:70, x:x + 40] = (220, 40, 40)
            image[80:110, 100:140] = (40, 200, 60)
            return image

        def publish(index: int) -> tuple[int, int]:
            header = Header(frame_id="soak")
            header.stamp.sec, header.stamp.nanosec = 10_000 + index // 1000, (index % 1000) * 1_000_000
            image_pub.publish(rgb_to_image_msg(frame(index), header))
            return header.stamp.sec, header.stamp.nanosec

        response = manage.call_async(ManageObjects.Request(prompts=[
            Prompt(object_id="red", box=[20.0, 30.0, 60.0, 70.0], has_box=True),
            Prompt(object_id="green", box=[100.0, 80.0, 140.0, 110.0], has_box=True)]))
        spin_until(response.done, 30)
        key = publish(0)
        tracked = spin_until(lambda: key in received, 60) and {o.object_id for o in received[key].objects} == {
            "red", "green"}
        figures.append(("valid prompts tracked afterwards", "yes" if tracked else "FAIL: not tracked"))

        # 3. soak
        started = time.monotonic()
        rss_at: dict[int, float] = {}
        missing = 0
        checkpoint = max(args.frames // 5, 1)
        for index in range(1, args.frames + 1):
            key = publish(index)
            if not spin_until(lambda: key in received, 30):
                missing += 1
            received.pop(key, None)
            if index in (checkpoint, args.frames):
                rss_at[index] = rss_mib(node_process.pid) if alive() else float("nan")
        seconds = time.monotonic() - started
        growth = 100.0 * (rss_at[args.frames] - rss_at[checkpoint]) / rss_at[checkpoint]
        figures.append(("soak frames (2 objects)", f"{args.frames} in {seconds:.0f} s ({args.frames / seconds:.1f} "
                                                   f"frames/s), {missing} without an answer"))
        figures.append((f"resident memory at frame {checkpoint}", f"{rss_at[checkpoint]:.1f} MiB"))
        figures.append((f"resident memory at frame {args.frames}", f"{rss_at[args.frames]:.1f} MiB"))
        figures.append(("memory growth", f"{growth:+.2f} %" + ("" if growth < 5.0 else "  FAIL: over 5 %")))
        if growth >= 5.0:
            figures[-1] = ("memory growth", f"FAIL: {growth:+.2f} % (over 5 %)")
        figures.append(("node alive at the end", "yes" if alive() else "FAIL: the node died"))
        return figures
    finally:
        caption.destroy()
        client.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
