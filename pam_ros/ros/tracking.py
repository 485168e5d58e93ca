"""The tracking thread: takes the newest image of every camera from its latest-frame slot, runs the engine
on them and publishes each camera's `objects`, `markers` and (while someone subscribes) `overlay`, timing
every stage.

Image callbacks only offer frames (CameraFeed.offer); everything slow happens on this one thread, so tracking
always works on the newest images and a frame that arrives while another of its camera waits replaces it
(counted as dropped). With several cameras the thread takes whatever frames wait across the slots and hands
them to PerceptionHost.process_frames in one call (same-size frames can share an encoder batch); a camera
without a new frame is simply not in that call, so a slow or silent camera never stalls another.
"""
from __future__ import annotations

import threading
import time
import traceback
from typing import Callable, Sequence

from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from pam_ros.errors import PamError
from pam_ros.msg import PerceivedObjectArray
from pam_ros.ros import convert
from pam_ros.ros.diagnostics import RateMeter, StageTimes
from pam_ros.ros.frame_slot import LatestFrameSlot, take_waiting
from pam_ros.ros.lease import camera_pipeline
from pam_ros.ros.planning import MarkerPublisher
from pam_ros.ros.reporting import Reporter, error_text

SLOT_POLL_S = 0.1  # how often the idle tracking thread expires held prompts
STOP_TIMEOUT_S = 30.0


class FrameOutputs:
    """One camera's per-frame publishers, created at configure and destroyed at cleanup: `objects` and
    `overlay` (lifecycle publishers: silent while inactive) and `markers`."""

    def __init__(self, node, prefix: str = "") -> None:
        self._node = node  # prefix: "" (one camera) or "front/": names relative to the node's namespace
        latest_only = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.objects = node.create_lifecycle_publisher(PerceivedObjectArray, prefix + "objects", 10)
        self.overlay = node.create_lifecycle_publisher(Image, prefix + "overlay", latest_only)
        self.markers = MarkerPublisher(node, latest_only, prefix)

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


class CameraFeed:
    """One camera's side of the tracking thread: its slot, its counters and its latest processed frame (for
    /diagnostics, service headers and clicks)."""

    def __init__(self, clock, condition: threading.Condition) -> None:
        self._clock = clock
        self.slot = LatestFrameSlot(condition)
        self.latest_header = Header()
        self.latest_size: tuple[int, int] | None = None  # (width, height) of the latest processed frame
        self.depth_errors_warned: set[str] = set()
        self.reset_counters()

    def reset_counters(self) -> None:
        self.slot.reset()
        self.input_rate = RateMeter()
        self.processed_rate = RateMeter()
        self.stage_times = StageTimes()
        self.frames_processed = self.bad_frames = self.overlays_drawn = 0
        self.depth_errors_warned.clear()

    def offer(self, msg, received_at: float) -> None:
        """From the image callback: count it, time its transport, put it in the slot (latest frame wins)."""
        self.input_rate.tick(received_at)
        stamp_ns = convert.stamp_to_ns(msg.header.stamp)
        if stamp_ns:  # receive time minus header stamp: transport + driver latency (clock offsets included)
            self.stage_times.record("image_age", (self._clock().now().nanoseconds - stamp_ns) * 1e-9)
        self.slot.put((msg, received_at))


def process_frames(engine, frames: list[tuple[str, object, int]]) -> list:
    """One result (FrameResult or the PamError that refused it) per (camera, rgb, stamp_ns): a PerceptionHost
    takes them in one call; a lone PerceptionPipeline (camera "") the one frame."""
    if len(frames) == 1 and frames[0][0] == "":
        _, image, stamp_ns = frames[0]
        try:
            return [engine.process(image, stamp_ns)]
        except PamError as error:
            return [error]
    return engine.process_frames(frames)


class TrackingLoop:
    """The tracking thread over every camera. `cameras()` gives the cameras now wired (each with .name,
    .feed (CameraFeed) and .outputs (FrameOutputs or None)); their slots share this loop's condition."""

    def __init__(self, node, reporter: Reporter, settings: Callable, cameras: Callable[[], Sequence]):
        self._node = node
        self._reporter = reporter
        self._settings = settings
        self._cameras = cameras
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._overlay_unavailable = ""
        self.condition = threading.Condition()  # the slots' one condition: any frame wakes the thread

    def new_feed(self) -> CameraFeed:
        return CameraFeed(self._node.get_clock, self.condition)

    def start(self, engine) -> None:
        for camera in self._cameras():
            camera.feed.reset_counters()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, args=(engine,), name="pam_ros_tracking", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for camera in self._cameras():
            camera.feed.slot.close()
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_S)
            if self._thread.is_alive():
                self._node.get_logger().error(f"the tracking thread did not stop within {STOP_TIMEOUT_S:g} s")
            self._thread = None

    def _run(self, engine) -> None:
        while not self._stopping.is_set():
            cameras = list(self._cameras())
            taken = take_waiting([camera.feed.slot for camera in cameras], SLOT_POLL_S)
            if self._stopping.is_set():
                break
            try:
                for camera in cameras:
                    self._reporter.outcomes(camera_pipeline(engine, camera.name).expire_held_prompts())
                if taken:
                    self._track(engine, [(cameras[index], frame) for index, frame in taken])
            except Exception:  # noqa: BLE001 - a bug must not kill tracking; it is logged with its traceback
                if not self._node.context.ok():  # process shutting down: publishers are gone
                    break
                self._node.get_logger().error(f"tracking error (frames skipped):\n{traceback.format_exc()}")

    def _track(self, engine, taken: list) -> None:
        """Convert each camera's frame, track them all in one engine call, publish each on its camera's topics."""
        started = time.monotonic()
        waiting = []  # (camera, msg, received_at, image, stamp_ns)
        for camera, (msg, received_at) in taken:
            try:
                if isinstance(msg, CompressedImage):
                    image = convert.compressed_msg_to_rgb(msg)
                else:
                    image = convert.image_msg_to_rgb(msg)
            except convert.ImageConversionError as error:
                camera.feed.bad_frames += 1
                self._reporter.bad_input(f"{_camera_text(camera.name)}image skipped: {error_text(error)}")
                continue
            stamp_ns = convert.stamp_to_ns(msg.header.stamp)
            if stamp_ns == 0:  # unstamped camera: the engine still needs increasing stamps
                stamp_ns = self._node.get_clock().now().nanoseconds
            waiting.append((camera, msg, received_at, image, stamp_ns))
        if not waiting:
            return
        converted = time.monotonic()
        results = process_frames(engine, [(camera.name, image, stamp_ns)
                                          for camera, _, _, image, stamp_ns in waiting])
        tracked = time.monotonic()
        for (camera, msg, received_at, image, _), result in zip(waiting, results, strict=True):
            if isinstance(result, PamError):
                camera.feed.bad_frames += 1
                self._reporter.bad_input(f"{_camera_text(camera.name)}image skipped: {error_text(result)}")
                continue
            self._publish(camera, msg, received_at, image, result, (started, converted, tracked))

    def _publish(self, camera, msg, received_at: float, image, result, times: tuple[float, float, float]) -> None:
        started, converted, tracked = times
        feed = camera.feed
        feed.frames_processed += 1
        feed.processed_rate.tick(tracked)
        feed.latest_header = msg.header
        feed.latest_size = (int(result.width), int(result.height))
        self._reporter.outcomes(result.prompt_outcomes)

        settings = self._settings()
        outputs = camera.outputs
        if outputs is not None:
            outputs.objects.publish(convert.frame_result_to_msg(
                result, msg.header, settings.mask_encoding, feed.slot.received, feed.slot.dropped))
            outputs.markers.publish(result, msg.header)
        if result.depth_error and result.depth_error not in feed.depth_errors_warned:
            feed.depth_errors_warned.add(result.depth_error)  # one warning per distinct problem
            self._node.get_logger().warn(f"{_camera_text(camera.name)}depth image refused (frames go on without "
                                         f"geometry): {result.depth_error}")
        published = time.monotonic()
        if settings.publish_overlay and outputs is not None and outputs.overlay.get_subscription_count() > 0:
            overlay = self._draw_overlay(image, result)
            if overlay is not None:
                outputs.overlay.publish(convert.rgb_to_image_msg(overlay, msg.header))
                feed.overlays_drawn += 1
            feed.stage_times.record("overlay", time.monotonic() - published)
        stages = feed.stage_times
        stages.record("wait_in_slot", started - received_at)
        stages.record("convert", converted - started)
        stages.record("track", tracked - converted)  # with several cameras: the one call for all of them
        stages.record("publish", published - tracked)
        stages.record("receive_to_publish", published - received_at)

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


def _camera_text(camera: str) -> str:
    """"front: " before a log line of camera front; nothing in single-camera mode (lines unchanged)."""
    return f"{camera}: " if camera else ""
