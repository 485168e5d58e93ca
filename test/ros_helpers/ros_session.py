"""Isolated ROS 2 sessions for tests: a private DDS domain, helper processes, bounded waits.

Every test session picks its own ROS_DOMAIN_ID and keeps discovery on this host
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST), so parallel test runs on one machine never see each
other's topics. Helper processes inherit that environment.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

REPO_ROOT = Path(__file__).resolve().parents[2]
HELPERS_DIR = Path(__file__).resolve().parent


def isolate_ros_environment() -> int:
    """Give this process (and its children) a private DDS domain. Idempotent; returns the domain id."""
    if "PAM_ROS_TEST_DOMAIN_ID" not in os.environ:
        # Fast DDS maps domain ids to UDP ports; 0..232 are valid. 1..100 is avoided (common defaults).
        os.environ["PAM_ROS_TEST_DOMAIN_ID"] = str(101 + os.getpid() % 131)
    os.environ["ROS_DOMAIN_ID"] = os.environ["PAM_ROS_TEST_DOMAIN_ID"]
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.pop("ROS_STATIC_PEERS", None)
    return int(os.environ["ROS_DOMAIN_ID"])


def child_environment(**extra: str) -> dict[str, str]:
    """Environment for helper processes: same DDS domain, this checkout's sources first on sys.path."""
    isolate_ros_environment()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(HELPERS_DIR.parent)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, details: Callable[[], str] | None = None,
               period_s: float = 0.02) -> None:
    """Poll condition until it holds; on timeout fail with `what` (and details, e.g. a process log)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            message = f"timed out after {timeout_s:.1f} s waiting for {what}"
            if details is not None:
                message += "\n" + details()
            raise AssertionError(message)
        time.sleep(period_s)


class HelperProcess:
    """A child process (helper script or node) whose output is collected line by line."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, name: str = "helper"):
        self.name = name
        self.argv = argv
        self.lines: deque[str] = deque(maxlen=4000)
        self.process = subprocess.Popen(argv, env=env or child_environment(), cwd=str(REPO_ROOT),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self, last: int = 60) -> str:
        lines = list(self.lines)[-last:]
        status = "running" if self.process.poll() is None else f"exited with {self.process.returncode}"
        return f"--- {self.name} ({status}), last {len(lines)} lines ---\n" + "\n".join(lines)

    def has_line(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def count_lines(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    def wait_for_line(self, text: str, timeout_s: float) -> None:
        def seen() -> bool:
            if self.process.poll() is not None and not self.has_line(text):
                raise AssertionError(f"{self.name} exited before printing {text!r}\n{self.output()}")
            return self.has_line(text)
        wait_until(seen, timeout_s, f"{self.name} to print {text!r}", self.output)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGINT (clean rclpy shutdown), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._reader.join(2)
        return self.process.returncode


def start_helper_script(script: str, *args: str, name: str | None = None, **env: str) -> HelperProcess:
    return HelperProcess([sys.executable, str(HELPERS_DIR / script), *args], child_environment(**env),
                         name=name or script)


class RosClientSession:
    """An rclpy context + node in the test process, spun by a background MultiThreadedExecutor."""

    def __init__(self, node_name: str, namespace: str = ""):
        domain_id = isolate_ros_environment()
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node(node_name, namespace=namespace, context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.executor.add_node(self.node)
        self.spin_errors: list[str] = []  # tracebacks of exceptions the executor raised (it spun on)
        self._closing = False
        self._spinner = threading.Thread(target=self._spin, name=f"{node_name}-spin", daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        # spin_once in a loop, not spin(): rclpy's MultiThreadedExecutor re-raises a callback's exception
        # from spin_once, which ends spin(). In full-suite runs that happened mid-module (py-spy: no spin
        # thread left while a test waited for a reply) and every later reply of the module was lost,
        # silently. Such an exception is now kept (and printed) and the session goes on.
        while not self._closing and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.1)
            except ExternalShutdownException:
                return
            except Exception:  # noqa: BLE001 - reported, then the next wait
                if self._closing or not self.context.ok():
                    return
                error = traceback.format_exc()
                self.spin_errors.append(error)
                print(f"{self.node.get_name()}: the executor raised (spinning on):\n{error}", file=sys.stderr)
        if not self._closing:  # say why replies stop coming, in the failing test's captured output
            print(f"{self.node.get_name()}: stopped spinning (context ok: {self.context.ok()})", file=sys.stderr)

    def wait_future(self, future, timeout_s: float, what: str, details: Callable[[], str] | None = None):
        wait_until(future.done, timeout_s, what, details)
        return future.result()

    def close(self) -> None:
        self._closing = True
        self._spinner.join(5)
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self._spinner.join(5)
