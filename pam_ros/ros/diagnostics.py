"""What the node says about its own health: /diagnostics (rates, stage latencies, engine numbers, the
lifecycle state and why a transition failed) and the no-image watchdog (one warning, with the likely cause,
when images never arrive or stop arriving; one per camera).

One camera: one DiagnosticStatus, "<node>: perception", with everything. Several cameras (parameter
`cameras`): "<node>: perception" says the lifecycle and the shared model (device, memory, semantics queue
and batches), and "<node>: camera <name>" each camera's rates, drops, image age and objects."""
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
                 received: Callable[[], int], relative_topic: Callable[[], str] = lambda: "image") -> None:
        self._node = node
        self._relative_topic = relative_topic  # the name to remap: image, or front/image with cameras
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
            relative = self._relative_topic()
            how = "the launch argument image_topic" if relative == "image" else "the launch argument remappings"
            where = (f"nothing publishes on {topic}. Remap the input to your camera topic "
                     f"(--ros-args -r {relative}:=/camera/image_raw, or {how})")
        else:
            kinds = sorted({p.qos_profile.reliability.name.lower() for p in publishers})
            where = (f"{len(publishers)} publisher(s) on {topic} (reliability: {', '.join(kinds)}) but no message "
                     f"was ever received. This node subscribes {ours}; a reliable subscription never receives from "
                     f"a best-effort camera (set image_qos:=sensor_data), and check the message type "
                     f"({'CompressedImage' if settings.image_transport == 'compressed' else 'Image'})")
        return f"no image ever received in {time.monotonic() - self.activated_at:.0f} s: {where}"


class DiagnosticsPublisher:
    """/diagnostics every diagnostics_period_s, and the watchdogs' checks, on their own timers.

    `status` is the node's view: lifecycle_state(), failure() (why the last transition failed, "" after a
    success), device() ("" before configure), pipeline() (the engine: a PerceptionPipeline, a PerceptionHost,
    None while inactive) and cameras() (the wired cameras: .name ("" in single-camera mode), .feed (the
    CameraFeed: slot, counters, stage times), .watchdog, .input_topic(), .pipeline())."""

    def __init__(self, node, period_s: float, callback_group, status) -> None:
        self._node = node
        self._status = status
        self._publisher = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        node.create_timer(period_s if period_s > 0 else 1.0, self.publish, callback_group=callback_group)
        node.create_timer(WATCHDOG_PERIOD_S, self._check_watchdogs, callback_group=callback_group)

    def _check_watchdogs(self) -> None:
        for camera in self._status.cameras():
            camera.watchdog.check()

    def publish(self) -> None:
        node, status = self._node, self._status
        if not node.context.ok():
            return
        cameras = list(status.cameras())
        if len(cameras) == 1 and cameras[0].name == "":
            statuses = [self._single_camera(cameras[0])]
        else:
            statuses = [self._model_status(cameras)] + [self._camera_status(camera) for camera in cameras]
        self._publisher.publish(DiagnosticArray(header=Header(stamp=node.get_clock().now().to_msg()),
                                                status=statuses))

    def _camera_values(self, camera) -> dict:
        feed, watchdog = camera.feed, camera.watchdog
        slot = feed.slot
        pipeline = camera.pipeline()
        values: dict = {
            "lifecycle_state": self._status.lifecycle_state(),
            "input_topic": camera.input_topic() or "",
            "input_rate_hz": feed.input_rate.rate_hz(),
            "seconds_since_last_image": (time.monotonic() - watchdog.last_image_at) if watchdog.last_image_at else -1.0,
            "processed_rate_hz": feed.processed_rate.rate_hz(),
            "frames_received": slot.received,
            "frames_processed": feed.frames_processed,
            "frames_dropped": slot.dropped,
            "frames_bad": feed.bad_frames,
            "overlays_drawn": feed.overlays_drawn,
            "queue_depth": slot.depth,
            "prompts_pending": len(pipeline.pending_prompts()) if pipeline is not None else 0,
        }
        for stage, (last, mean) in feed.stage_times.snapshot().items():
            values[f"latency_ms.{stage}"] = {"last": last * 1e3, "mean": mean * 1e3}
        return values

    def _state_level(self) -> tuple[bytes, str] | None:
        """(level, message) while not active (ERROR with the reason after a failed transition); None when active."""
        state, failure = self._status.lifecycle_state(), self._status.failure()
        if failure and state != "active":
            return DiagnosticStatus.ERROR, f"{state}: {failure}"
        if state != "active":
            return DiagnosticStatus.OK, f"{state}: not processing images"
        return None

    def _with_memory(self, values: dict, engine_keys) -> None:
        device = self._status.device()
        if self._status.pipeline() is not None and device.startswith("cuda") and \
                not any("gpu_memory" in k for k in engine_keys):
            import torch

            values["gpu_memory_bytes"] = {"allocated": torch.cuda.memory_allocated(device),
                                          "reserved": torch.cuda.memory_reserved(device)}

    def _single_camera(self, camera) -> DiagnosticStatus:
        """One camera: the one status of a single-camera node (its camera, the engine and the lifecycle)."""
        values = self._camera_values(camera)
        pipeline = self._status.pipeline()
        if pipeline is not None:
            values["image_encoder"] = image_encoder_text(pipeline)
            try:
                values["engine"] = pipeline.stats()
            except Exception as error:  # noqa: BLE001 - diagnostics must never take the node down
                values["engine_error"] = str(error)
        self._with_memory(values, values.get("engine", {}))
        level, message = self._state_level() or self._camera_level(camera, values)
        return build_status(f"{self._node.get_fully_qualified_name()}: perception",
                            self._status.device() or "unconfigured", level, message, values)

    @staticmethod
    def _camera_level(camera, values: dict) -> tuple[bytes, str]:
        if camera.watchdog.warned:
            return DiagnosticStatus.WARN, camera.watchdog.message()
        return DiagnosticStatus.OK, (f"tracking at {values['processed_rate_hz']:.1f} Hz, "
                                     f"{values['frames_dropped']} frames dropped")

    def _camera_status(self, camera) -> DiagnosticStatus:
        """One camera of several: its rates, drops, image age and objects."""
        values = self._camera_values(camera)
        pipeline = camera.pipeline()
        if pipeline is not None:
            try:
                stats = pipeline.stats()
                values["engine"] = {k: v for k, v in stats.items() if not k.startswith(("semantics_", "gpu_"))}
            except Exception as error:  # noqa: BLE001 - diagnostics must never take the node down
                values["engine_error"] = str(error)
        state = self._state_level()
        level, message = state if state is not None else self._camera_level(camera, values)
        return build_status(f"{self._node.get_fully_qualified_name()}: camera {camera.name}",
                            self._status.device() or "unconfigured", level, message, values)

    def _model_status(self, cameras) -> DiagnosticStatus:
        """The lifecycle and the model the cameras share: device, memory, semantics queue and batches."""
        host = self._status.pipeline()
        values: dict = {"lifecycle_state": self._status.lifecycle_state(),
                        "cameras": ", ".join(camera.name for camera in cameras)}
        if host is not None:
            try:
                values["model"] = host.stats()["model"]
            except Exception as error:  # noqa: BLE001 - diagnostics must never take the node down
                values["engine_error"] = str(error)
        self._with_memory(values, values.get("model", {}))
        state = self._state_level()
        if state is not None:
            level, message = state
        else:
            model = values.get("model", {})
            level, message = DiagnosticStatus.OK, (f"one model for {len(cameras)} cameras; semantics queue "
                                                   f"{model.get('semantics_queue', 0)}, "
                                                   f"{model.get('semantics_batches', 0)} batches")
        return build_status(f"{self._node.get_fully_qualified_name()}: perception",
                            self._status.device() or "unconfigured", level, message, values)
