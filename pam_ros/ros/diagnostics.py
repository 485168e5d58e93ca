"""What the node says about its own health: /diagnostics (rates, stage latencies, engine numbers, the
lifecycle state and why a transition failed) and the no-image watchdog (one warning, with the likely cause,
when images never arrive or stop arriving)."""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Mapping

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

WATCHDOG_PERIOD_S = 0.5


class RateMeter:
    """Events per second over a sliding window (thread-safe)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self._window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)

    def rate_hz(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and self._times[0] < now - self._window_s:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            span = max(now - self._times[0], 1e-6)
            return (len(self._times) - 1) / span if span < self._window_s else len(self._times) / self._window_s


class StageTimes:
    """Last and mean (exponentially weighted) seconds per named stage (thread-safe)."""

    def __init__(self, smoothing: float = 0.1) -> None:
        self._smoothing = smoothing
        self._last: dict[str, float] = {}
        self._mean: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._last[stage] = seconds
            previous = self._mean.get(stage)
            self._mean[stage] = seconds if previous is None else previous + self._smoothing * (seconds - previous)

    def snapshot(self) -> dict[str, tuple[float, float]]:
        with self._lock:
            return {stage: (self._last[stage], self._mean[stage]) for stage in self._last}

    def clear(self) -> None:
        with self._lock:
            self._last.clear()
            self._mean.clear()


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def flatten(prefix: str, value) -> list[tuple[str, str]]:
    """Nested dicts (e.g. pipeline.stats()) -> dotted key/value strings."""
    if isinstance(value, Mapping):
        items = []
        for key, inner in value.items():
            items += flatten(f"{prefix}.{key}" if prefix else str(key), inner)
        return items
    return [(prefix, _format(value))]


def build_status(name: str, hardware_id: str, level: bytes, message: str, values: Mapping) -> DiagnosticStatus:
    """level: DiagnosticStatus.OK / WARN / ERROR / STALE (bytes constants)."""
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in flatten("", values)])


def image_encoder_text(pipeline) -> str:
    """e.g. "onnxruntime on TensorrtExecutionProvider" or "torch on cuda:0" (log line, diagnostics)."""
    setup = pipeline.describe_setup() if pipeline is not None else None  # None once the pipeline is closed
    return setup.image_encoder if setup is not None else "none"


class ImageWatchdog:
    """Warns once when no image arrives for no_image_warn_s after activation (naming the likely cause) or
    when images stop arriving; says so when they arrive again."""

    def __init__(self, node, settings: Callable, input_topic: Callable[[], str | None],
                 received: Callable[[], int]) -> None:
        self._node = node
        self._settings = settings
        self._input_topic = input_topic  # the subscribed image topic; None while not subscribed
        self._received = received
        self.activated_at = 0.0
        self.last_image_at = 0.0
        self.warned = False

    def start(self, now: float) -> None:
        self.activated_at, self.last_image_at, self.warned = now, 0.0, False

    def image_arrived(self, now: float) -> None:
        if self.warned:
            self.warned = False
            self._node.get_logger().info(f"images are arriving on {self._input_topic()} now")
        self.last_image_at = now

    def check(self) -> None:
        settings = self._settings()
        if settings is None or self.warned or self._input_topic() is None:
            return
        since = self.last_image_at or self.activated_at
        if time.monotonic() - since < float(settings.no_image_warn_s):
            return
        self.warned = True
        self._node.get_logger().warn(self.message())

    def message(self) -> str:
        """Why no image is being processed: never received (and the likely cause) or stopped N s ago."""
        settings = self._settings()
        topic = self._input_topic() or "image"
        if self.last_image_at:
            return (f"images stopped arriving {time.monotonic() - self.last_image_at:.0f} s ago on {topic} "
                    f"(after {self._received()} received); is the camera still publishing?")
        publishers = self._node.get_publishers_info_by_topic(topic)
        ours = "best effort (sensor_data)" if settings.image_qos == "sensor_data" else "reliable"
        if not publishers:
            where = (f"nothing publishes on {topic}. Remap the input to your camera topic "
                     f"(--ros-args -r image:=/camera/image_raw, or the launch argument image_topic)")
        else:
            kinds = sorted({p.qos_profile.reliability.name.lower() for p in publishers})
            where = (f"{len(publishers)} publisher(s) on {topic} (reliability: {', '.join(kinds)}) but no message "
                     f"was ever received. This node subscribes {ours}; a reliable subscription never receives from "
                     f"a best-effort camera (set image_qos:=sensor_data), and check the message type "
                     f"({'CompressedImage' if settings.image_transport == 'compressed' else 'Image'})")
        return f"no image ever received in {time.monotonic() - self.activated_at:.0f} s: {where}"


class DiagnosticsPublisher:
    """/diagnostics every diagnostics_period_s, and the watchdog's check, on their own timers.

    `status` is the node's view: lifecycle_state(), failure() (why the last transition failed, "" after a
    success), device() ("" before configure), pipeline() (None while inactive), input_topic() (None while not
    subscribed); `tracking` the TrackingLoop (slot, counters, stage times)."""

    def __init__(self, node, period_s: float, callback_group, status, tracking, watchdog: ImageWatchdog) -> None:
        self._node = node
        self._status = status
        self._tracking = tracking
        self._watchdog = watchdog
        self._publisher = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        node.create_timer(period_s if period_s > 0 else 1.0, self.publish, callback_group=callback_group)
        node.create_timer(WATCHDOG_PERIOD_S, watchdog.check, callback_group=callback_group)

    def publish(self) -> None:
        node, status, tracking, watchdog = self._node, self._status, self._tracking, self._watchdog
        if not node.context.ok():
            return
        pipeline = status.pipeline()
        state = status.lifecycle_state()
        slot = tracking.slot
        values: dict = {
            "lifecycle_state": state,
            "input_topic": status.input_topic() or "",
            "input_rate_hz": tracking.input_rate.rate_hz(),
            "seconds_since_last_image": (time.monotonic() - watchdog.last_image_at) if watchdog.last_image_at else -1.0,
            "processed_rate_hz": tracking.processed_rate.rate_hz(),
            "frames_received": slot.received,
            "frames_processed": tracking.frames_processed,
            "frames_dropped": slot.dropped,
            "frames_bad": tracking.bad_frames,
            "overlays_drawn": tracking.overlays_drawn,
            "queue_depth": slot.depth,
            "prompts_pending": len(pipeline.pending_prompts()) if pipeline is not None else 0,
        }
        for stage, (last, mean) in tracking.stage_times.snapshot().items():
            values[f"latency_ms.{stage}"] = {"last": last * 1e3, "mean": mean * 1e3}
        if pipeline is not None:
            values["image_encoder"] = image_encoder_text(pipeline)
            try:
                values["engine"] = pipeline.stats()
            except Exception as error:  # noqa: BLE001 - diagnostics must never take the node down
                values["engine_error"] = str(error)
        device = status.device()
        engine_keys = values.get("engine", {})
        if pipeline is not None and device.startswith("cuda") and not any("gpu_memory" in k for k in engine_keys):
            import torch

            values["gpu_memory_bytes"] = {"allocated": torch.cuda.memory_allocated(device),
                                          "reserved": torch.cuda.memory_reserved(device)}
        failure = status.failure()
        if failure and state != "active":
            level, message = DiagnosticStatus.ERROR, f"{state}: {failure}"
        elif state != "active":
            level, message = DiagnosticStatus.OK, f"{state}: not processing images"
        elif watchdog.warned:
            level, message = DiagnosticStatus.WARN, watchdog.message()
        else:
            level, message = DiagnosticStatus.OK, (f"tracking at {values['processed_rate_hz']:.1f} Hz, "
                                                   f"{values['frames_dropped']} frames dropped")
        diagnostic = build_status(f"{node.get_fully_qualified_name()}: perception", device or "unconfigured",
                                  level, message, values)
        self._publisher.publish(DiagnosticArray(header=Header(stamp=node.get_clock().now().to_msg()),
                                                status=[diagnostic]))
