"""The tracking thread: takes the newest image from the latest-frame slot, runs the pipeline on it and
publishes `objects`, `markers` and (while someone subscribes) `overlay`, timing every stage.

The image callback only offers frames (offer()); everything slow happens on this one thread, so tracking
always works on the newest image and a frame that arrives while another waits replaces it (counted as dropped).
"""
from __future__ import annotations

import threading
import time
import traceback
from typing import Callable

from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from pam_ros.errors import PamError
from pam_ros.msg import PerceivedObjectArray
from pam_ros.ros import convert
from pam_ros.ros.diagnostics import RateMeter, StageTimes
from pam_ros.ros.frame_slot import LatestFrameSlot
from pam_ros.ros.planning import MarkerPublisher
from pam_ros.ros.reporting import Reporter, error_text

SLOT_POLL_S = 0.1  # how often the idle tracking thread expires held prompts
STOP_TIMEOUT_S = 30.0


class FrameOutputs:
    """The per-frame publishers, created at configure and destroyed at cleanup: `objects` and `overlay`
    (lifecycle publishers: silent while inactive) and `markers`."""

    def __init__(self, node) -> None:
        self._node = node
        latest_only = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.objects = node.create_lifecycle_publisher(PerceivedObjectArray, "objects", 10)
        self.overlay = node.create_lifecycle_publisher(Image, "overlay", latest_only)
        self.markers = MarkerPublisher(node, latest_only)

    def destroy(self) -> None:
        # Each may already be gone with the context at process exit.
        try:
            self.markers.destroy(self._node)
        except Exception:  # noqa: BLE001 - see above
            pass
        for publisher in (self.objects, self.overlay):
            try:
                self._node.destroy_lifecycle_publisher(publisher)
            except Exception:  # noqa: BLE001 - see above
                pass


class TrackingLoop:
    """The slot, the tracking thread and its numbers (for /diagnostics and the latest frame's header)."""

    def __init__(self, node, reporter: Reporter, settings: Callable, outputs: Callable[[], FrameOutputs | None]):
        self._node = node
        self._reporter = reporter
        self._settings = settings
        self._outputs = outputs
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._overlay_unavailable = ""
        self._depth_errors_warned: set[str] = set()
        self.slot = LatestFrameSlot()
        self.latest_header = Header()
        self.latest_size: tuple[int, int] | None = None  # (width, height) of the latest processed frame
        self.reset_counters()

    def reset_counters(self) -> None:
        self.slot.reset()
        self.input_rate = RateMeter()
        self.processed_rate = RateMeter()
        self.stage_times = StageTimes()
        self.frames_processed = self.bad_frames = self.overlays_drawn = 0
        self._depth_errors_warned.clear()

    def offer(self, msg, received_at: float) -> None:
        """From the image callback: count it, time its transport, put it in the slot (latest frame wins)."""
        self.input_rate.tick(received_at)
        stamp_ns = convert.stamp_to_ns(msg.header.stamp)
        if stamp_ns:  # receive time minus header stamp: transport + driver latency (clock offsets included)
            self.stage_times.record("image_age", (self._node.get_clock().now().nanoseconds - stamp_ns) * 1e-9)
        self.slot.put((msg, received_at))

    def start(self, pipeline) -> None:
        self.reset_counters()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, args=(pipeline,), name="pam_ros_tracking", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.slot.close()
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_S)
            if self._thread.is_alive():
                self._node.get_logger().error(f"the tracking thread did not stop within {STOP_TIMEOUT_S:g} s")
            self._thread = None

    def _run(self, pipeline) -> None:
        while not self._stopping.is_set():
            frame = self.slot.take(SLOT_POLL_S)
            if self._stopping.is_set():
                break
            try:
                self._reporter.outcomes(pipeline.expire_held_prompts())
                if frame is not None:
                    self._track(pipeline, *frame)
            except Exception:  # noqa: BLE001 - a bug must not kill tracking; it is logged with its traceback
                if not self._node.context.ok():  # process shutting down: publishers are gone
                    break
                self._node.get_logger().error(f"tracking error (frame skipped):\n{traceback.format_exc()}")

    def _track(self, pipeline, msg, received_at: float) -> None:
        started = time.monotonic()
        try:
            if isinstance(msg, CompressedImage):
                image = convert.compressed_msg_to_rgb(msg)
            else:
                image = convert.image_msg_to_rgb(msg)
        except convert.ImageConversionError as error:
            self.bad_frames += 1
            self._reporter.bad_input(f"image skipped: {error_text(error)}")
            return
        converted = time.monotonic()
        stamp_ns = convert.stamp_to_ns(msg.header.stamp)
        if stamp_ns == 0:  # unstamped camera: the engine still needs increasing stamps
            stamp_ns = self._node.get_clock().now().nanoseconds
        try:
            result = pipeline.process(image, stamp_ns)
        except PamError as error:
            self.bad_frames += 1
            self._reporter.bad_input(f"image skipped: {error_text(error)}")
            return
        tracked = time.monotonic()
        self.frames_processed += 1
        self.processed_rate.tick(tracked)
        self.latest_header = msg.header
        self.latest_size = (int(result.width), int(result.height))
        self._reporter.outcomes(result.prompt_outcomes)

        settings = self._settings()
        outputs = self._outputs()
        if outputs is not None:
            outputs.objects.publish(convert.frame_result_to_msg(
                result, msg.header, settings.mask_encoding, self.slot.received, self.slot.dropped))
            outputs.markers.publish(result, msg.header)
        if result.depth_error and result.depth_error not in self._depth_errors_warned:
            self._depth_errors_warned.add(result.depth_error)  # one warning per distinct problem
            self._node.get_logger().warn(f"depth image refused (frames go on without geometry): {result.depth_error}")
        published = time.monotonic()
        if settings.publish_overlay and outputs is not None and outputs.overlay.get_subscription_count() > 0:
            overlay = self._draw_overlay(image, result)
            if overlay is not None:
                outputs.overlay.publish(convert.rgb_to_image_msg(overlay, msg.header))
                self.overlays_drawn += 1
            self.stage_times.record("overlay", time.monotonic() - published)
        self.stage_times.record("wait_in_slot", started - received_at)
        self.stage_times.record("convert", converted - started)
        self.stage_times.record("track", tracked - converted)
        self.stage_times.record("publish", published - tracked)
        self.stage_times.record("receive_to_publish", published - received_at)

    def _draw_overlay(self, image, result):
        if self._overlay_unavailable:
            return None
        try:
            from pam_ros.viz.overlay import draw_overlay
        except ImportError as error:
            self._overlay_unavailable = str(error)
            self._node.get_logger().warn(f"overlay disabled: pam_ros.viz.overlay is not available ({error})")
            return None
        return draw_overlay(image, result)
