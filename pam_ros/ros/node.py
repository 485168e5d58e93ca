"""`pam_ros_node`: the Perceive Anything Model as a ROS 2 lifecycle node.

Topics, services and the action use relative names so namespaces and remapping work:
  subscribes  image (sensor_msgs/Image) or image/compressed (parameter image_transport), prompts (pam_ros/Prompt),
              clicked_point (geometry_msgs/PointStamped: a click in pixels starts tracking an object)
  publishes   objects (pam_ros/PerceivedObjectArray), overlay (sensor_msgs/Image), /diagnostics
  services    describe (pam_ros/Describe), manage_objects (pam_ros/ManageObjects),
              discover (pam_ros/Discover: segment everything on the next frame, track what is new),
              find_objects (pam_ros/FindObjects: rank tracked objects for a need)
  planners    use_depth: subscribes depth/image + depth/camera_info, publishes markers (ros/planning.py)
  action      caption (pam_ros/Caption)
Lifecycle: configure reads and validates the parameters; activate loads the model and starts tracking;
deactivate stops tracking and frees the model (GPU memory); cleanup / shutdown release everything.

Threads: the image callback only drops the message into a latest-frame-wins slot; one tracking thread
converts, tracks and publishes; describe, manage_objects and caption have their own callback groups
(MultiThreadedExecutor), so a long caption never holds up masks. All model work goes through
pam_ros.engine.pipeline.PerceptionPipeline.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import sys
import threading
import time
import traceback
from dataclasses import replace

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from pam_ros.action import Caption
from pam_ros.engine.discovery import DiscoverRequest
from pam_ros.engine.types import PromptOutcome
from pam_ros.errors import EngineClosedError, PamError
from pam_ros.model.tasks import canonical_task
from pam_ros.msg import PerceivedObjectArray, Prompt
from pam_ros.ros import convert
from pam_ros.ros.clicks import clicked_point_to_request
from pam_ros.ros.diagnostics import RateMeter, StageTimes, build_status
from pam_ros.ros.frame_slot import LatestFrameSlot
from pam_ros.ros.parameters import (
    ENGINE_LIVE_PARAMETERS,
    LIVE_PARAMETERS,
    PARAMETERS,
    NodeSettings,
    SettingsError,
    check_parameter_value,
    declare_parameters,
    read_settings,
)
from pam_ros.ros.planning import DepthInput, MarkerPublisher, answer_find_objects
from pam_ros.srv import Describe, Discover, FindObjects, ManageObjects

NODE_NAME = "pam_ros_node"
DEFAULT_DESCRIBE_TASKS = ("explain", "caption")
DEFAULT_CAPTION_TASK = "caption"
SLOT_POLL_S = 0.1  # how often the idle tracking thread expires held prompts
DISCOVER_EXTRA_S = 60.0  # discover waits request_timeout_s for a frame plus this for the generator itself
CAPTION_POLL_S = 0.1  # how often a queued caption goal checks for cancellation
BAD_INPUT_LOG_PERIOD_S = 5.0  # the same bad-input message is logged at most this often


def _error_text(error: BaseException) -> str:
    """str() of a KeyError is its repr; show its message plainly."""
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error)



def _semantics_text(settings) -> str:
    tasks = settings.new_object_task_tuple
    if not tasks:  # a valid choice, but easy to make by accident: say what it means
        return ("new_object_tasks is empty: new objects are tracked without semantics (ask with describe, "
                "caption or manage_objects' tasks)")
    return f"new objects get {', '.join(tasks)}, in batches of up to {settings.max_batch} objects"


def _image_encoder_text(pipeline) -> str:
    """e.g. "onnxruntime on TensorrtExecutionProvider" or "torch on cuda:0" (log line, diagnostics)."""
    model = getattr(pipeline, "model", None)  # None once the pipeline is closed
    if model is None:
        return "none"
    encoder = model.backbone.image_encoder
    return f"{encoder.kind} on {encoder.provider}"

class PamNode(LifecycleNode):
    """The PAM perception node (see the module docstring for its interface)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        declare_parameters(self)
        self.add_on_set_parameters_callback(self._check_parameter_changes)
        self.add_post_set_parameters_callback(self._apply_live_parameters)
        # "Bad request / bad data" (answered and logged) as opposed to a bug in the node (traceback).
        self._bad_input_errors = (PamError,)

        self._settings: NodeSettings | None = None
        self._failure = ""  # why the last configure/activate failed ("" after a success)
        self._model_spec = None
        # The pipeline is shared by the tracking thread and the service / action threads; users are
        # counted so deactivation can wait for them before freeing the model.
        self._pipeline = None
        self._pipeline_users = 0
        self._pipeline_condition = threading.Condition()
        self._stopping = threading.Event()  # set while deactivating: running captions stop
        self._caption_lock = threading.Lock()
        self._caption_waiting: list = []  # caption goals accepted and not yet running, in arrival order

        self._slot = LatestFrameSlot()
        self._tracking_thread: threading.Thread | None = None
        self._latest_header = Header()
        self._latest_size: tuple[int, int] | None = None

        # Numbers for /diagnostics.
        self._input_rate = RateMeter()
        self._processed_rate = RateMeter()
        self._stage_times = StageTimes()
        self._frames_processed = 0
        self._bad_frames = 0
        self._overlays_drawn = 0
        self._activated_at = 0.0
        self._last_image_at = 0.0
        self._no_image_warned = False
        self._bad_input_logged: dict[str, float] = {}
        self._overlay_unavailable = ""

        self._image_sub = None
        self._prompt_sub = None
        self._depth_input: DepthInput | None = None
        self._markers: MarkerPublisher | None = None
        self._depth_errors_warned: set[str] = set()
        self._click_sub = None
        self._objects_pub = None
        self._overlay_pub = None

        self._image_group = MutuallyExclusiveCallbackGroup()
        self._prompt_group = MutuallyExclusiveCallbackGroup()
        self._describe_group = MutuallyExclusiveCallbackGroup()
        self._manage_group = MutuallyExclusiveCallbackGroup()
        self._discover_group = MutuallyExclusiveCallbackGroup()
        self._caption_group = ReentrantCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._find_group = MutuallyExclusiveCallbackGroup()
        self._depth_group = MutuallyExclusiveCallbackGroup()

        # Services, action and diagnostics exist in every lifecycle state, so a request while
        # inactive gets a clear answer instead of silence.
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Describe, "describe", self._on_describe, callback_group=self._describe_group)
        self.create_service(ManageObjects, "manage_objects", self._on_manage_objects,
                            callback_group=self._manage_group)
        self.create_service(Discover, "discover", self._on_discover, callback_group=self._discover_group)
        self.create_service(FindObjects, "find_objects", self._on_find_objects, callback_group=self._find_group)
        self._caption_server = ActionServer(
            self, Caption, "caption", execute_callback=self._execute_caption,
            goal_callback=self._accept_caption_goal,
            cancel_callback=lambda goal_handle: CancelResponse.ACCEPT,
            callback_group=self._caption_group)
        period = float(self.get_parameter("diagnostics_period_s").value)
        self.create_timer(period if period > 0 else 1.0, self._publish_diagnostics, callback_group=self._timer_group)
        self.create_timer(0.5, self._watch_image_input, callback_group=self._timer_group)
        if self.get_parameter("autostart").value:
            # In the default group, like the lifecycle services: transitions never overlap.
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    # ------------------------------------------------------------------ lifecycle
    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        self.destroy_timer(self._autostart_timer)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            settings = read_settings(self)
            spec = settings.model_spec()
            spec.validate()
            settings.pipeline_config().validate()
        except ImportError as error:
            return self._transition_failed(f"configure failed: the engine is not installed ({error})")
        except PamError as error:  # SettingsError, ConfigError: a setting to fix
            return self._transition_failed(f"configure failed: {error}")
        self._settings, self._model_spec = settings, spec
        self._failure = ""
        self._objects_pub = self.create_lifecycle_publisher(PerceivedObjectArray, "objects", 10)
        self._overlay_pub = self.create_lifecycle_publisher(
            Image, "overlay", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self._markers = MarkerPublisher(self, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self.get_logger().info(
            f"configured: model {self._describe_model()}, input {self._image_topic_name()} "
            f"({settings.image_qos} QoS), mask_encoding {settings.mask_encoding}; {_semantics_text(settings)}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        settings = self._settings
        self.get_logger().info(f"activating: loading {self._describe_model()} ...")
        if self._model_spec.image_encoder == "onnxruntime" and not self._model_spec.image_encoder_onnx:
            from pam_ros.model.image_encoder import cache_root

            self.get_logger().info(f"image_encoder onnxruntime without image_encoder_onnx: using the ONNX export "
                                   f"cached in {cache_root() / 'image_encoder'}, exported there first if absent")
        started = time.monotonic()
        try:
            from pam_ros.engine.pipeline import PerceptionPipeline

            pipeline = PerceptionPipeline.load(self._model_spec, settings.pipeline_config())
        except Exception as error:  # any load failure is reported, the node stays inactive
            if not isinstance(error, self._bad_input_errors + (OSError, ImportError)):
                self.get_logger().error(traceback.format_exc())
            return self._transition_failed(
                f"activate failed: could not load the model: {error}{self._load_hint(error)}")
        self._reset_counters()
        self._stopping.clear()
        with self._pipeline_condition:
            self._pipeline = pipeline
        self._tracking_thread = threading.Thread(target=self._tracking_loop, args=(pipeline,),
                                                 name="pam_ros_tracking", daemon=True)
        self._tracking_thread.start()
        self._subscribe_inputs()
        self._activated_at = time.monotonic()
        self._failure = ""
        self.get_logger().info(f"active: model loaded in {time.monotonic() - started:.1f} s, image encoder "
                               f"{_image_encoder_text(pipeline)}; "
                               f"waiting for images on {self.resolve_topic_name(self._image_topic_name())}")
        return super().on_activate(state)

    def _transition_failed(self, reason: str) -> TransitionCallbackReturn:
        """Log a failed transition and keep its reason for /diagnostics (ERROR until one succeeds)."""
        self._failure = reason
        self.get_logger().error(reason)
        return TransitionCallbackReturn.FAILURE

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_work("the node was deactivated")
        self.get_logger().info("inactive: tracking stopped and the model released")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_publishers()
        self._settings = self._model_spec = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error("lifecycle error: releasing everything")
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Stop tracking, free the model and drop the publishers (shutdown, error, process exit)."""
        self._stop_work("the node is shutting down")
        self._destroy_publishers()

    def _stop_work(self, reason: str) -> None:
        self._unsubscribe_inputs()
        self._stopping.set()
        self._slot.close()
        if self._tracking_thread is not None:
            self._tracking_thread.join(timeout=30.0)
            if self._tracking_thread.is_alive():
                self.get_logger().error("the tracking thread did not stop within 30 s")
            self._tracking_thread = None
        with self._pipeline_condition:
            pipeline, self._pipeline = self._pipeline, None  # no new users from here on
            if not self._pipeline_condition.wait_for(lambda: self._pipeline_users == 0, timeout=30.0):
                self.get_logger().warn("requests still running after 30 s; closing the model anyway")
        if pipeline is not None:
            # refuses queued prompts, stops the semantics worker, drops the model, empties the CUDA cache
            pipeline.close(reason)

    def _destroy_publishers(self) -> None:
        markers, self._markers = self._markers, None
        if markers is not None:
            try:
                markers.destroy(self)
            except Exception:  # already gone with the context at process exit
                pass
        for name in ("_objects_pub", "_overlay_pub"):
            publisher = getattr(self, name)
            if publisher is not None:
                setattr(self, name, None)
                try:
                    self.destroy_lifecycle_publisher(publisher)
                except Exception:  # already gone with the context at process exit
                    pass

    def _describe_model(self) -> str:
        spec = self._model_spec
        if spec is None:
            return "(not configured)"
        which = spec.name or f"{spec.sam2_checkpoint} + {spec.pam_checkpoint}"
        return f"{which} on {spec.device} ({spec.dtype})"

    def _load_hint(self, error: Exception) -> str:
        spec = self._model_spec
        text = str(error)
        if spec is not None and spec.name and spec.name != "tiny" and "pam-ros download" not in text:
            return f" (download it with: pam-ros download {spec.name})"
        return ""

    def _check_parameter_changes(self, parameters) -> SetParametersResult:
        state = self._state_machine.current_state[1] if hasattr(self, "_state_machine") else "unconfigured"
        for parameter in parameters:
            try:
                check_parameter_value(parameter.name, parameter.value)
            except SettingsError as error:
                return SetParametersResult(successful=False, reason=str(error))
            if state in ("inactive", "active") and parameter.name not in LIVE_PARAMETERS:
                return SetParametersResult(successful=False, reason=(
                    f"{parameter.name} is read at configure and the node is {state}: deactivate and clean up "
                    f"first (ros2 lifecycle set {self.get_fully_qualified_name()} cleanup), then set it and "
                    f"configure again. Live parameters: {', '.join(LIVE_PARAMETERS)}"))
        return SetParametersResult(successful=True)

    def _apply_live_parameters(self, parameters) -> None:
        """After a successful set: live parameters take effect now (settings and the running engine)."""
        settings = self._settings
        if settings is None:
            return
        changed = {p.name: p.value for p in parameters if p.name in LIVE_PARAMETERS}
        if not changed:
            return
        self._settings = settings = settings.with_values(changed)
        pipeline = self._pipeline
        engine_values = {name: getattr(settings, name) for name in ENGINE_LIVE_PARAMETERS if name in changed}
        if pipeline is not None and engine_values:
            pipeline.update_settings(**engine_values)
        self.get_logger().info("applied now: " + ", ".join(f"{k}={v!r}" for k, v in changed.items()))

    # ------------------------------------------------------------------ inputs
    def _image_topic_name(self) -> str:
        settings = self._settings
        return "image/compressed" if settings is not None and settings.image_transport == "compressed" else "image"

    def _subscribe_inputs(self) -> None:
        settings = self._settings
        if settings.image_qos == "sensor_data":
            qos = qos_profile_sensor_data
        else:
            qos = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        msg_type = CompressedImage if settings.image_transport == "compressed" else Image
        self._image_sub = self.create_subscription(msg_type, self._image_topic_name(), self._on_image, qos,
                                                   callback_group=self._image_group)
        self._prompt_sub = self.create_subscription(Prompt, "prompts", self._on_prompt, 10,
                                                    callback_group=self._prompt_group)
        self._click_sub = self.create_subscription(PointStamped, "clicked_point", self._on_clicked_point, 10,
                                                   callback_group=self._prompt_group)
        if settings.use_depth:
            self._depth_input = DepthInput(self, qos, self._depth_group, self._pipeline.add_depth,
                                           float(settings.depth_scale), self._log_bad_input)
            self.get_logger().info("depth on: geometry from " + " + ".join(
                self.resolve_topic_name(t) for t in self._depth_input.topic_names))

    def _unsubscribe_inputs(self) -> None:
        depth_input, self._depth_input = self._depth_input, None
        if depth_input is not None:
            depth_input.destroy()
        for name in ("_image_sub", "_prompt_sub", "_click_sub"):
            subscription = getattr(self, name)
            if subscription is not None:
                self.destroy_subscription(subscription)
                setattr(self, name, None)

    def _on_image(self, msg) -> None:
        now = time.monotonic()
        self._input_rate.tick(now)
        stamp_ns = convert.stamp_to_ns(msg.header.stamp)
        if stamp_ns:  # receive time minus header stamp: transport + driver latency (clock offsets included)
            self._stage_times.record("image_age", (self.get_clock().now().nanoseconds - stamp_ns) * 1e-9)
        if self._no_image_warned:
            self._no_image_warned = False
            self.get_logger().info(f"images are arriving on {self.resolve_topic_name(self._image_topic_name())} now")
        self._last_image_at = now
        self._slot.put((msg, now))  # latest frame wins; a replaced frame is counted as dropped

    def _on_prompt(self, msg: Prompt) -> None:
        try:
            request = convert.prompt_msg_to_request(msg)
        except PamError as error:
            self._log_bad_input(f"prompt refused: {error}")
            return
        future = self._submit(request, source="topic")
        if future is None:
            self.get_logger().warn("prompt ignored: the node is not active")

    def _on_clicked_point(self, msg: PointStamped) -> None:
        try:
            request = clicked_point_to_request(msg, self._settings.click_task_tuple, self._latest_size)
        except PamError as error:
            self._log_bad_input(f"click refused: {error}")
            return
        future = self._submit(request, source="clicked_point")
        if future is None:
            self.get_logger().warn("click ignored: the node is not active")
        else:
            self.get_logger().info(f"click at ({msg.point.x:g}, {msg.point.y:g}) -> {future.object_id}")

    def _submit(self, request, source: str):
        """Hand a prompt to the engine's queue; its future, or None when the node is not active."""
        pipeline = self._acquire_pipeline()
        if pipeline is None:
            return None
        try:
            future = pipeline.submit_prompt(replace(request, source=source))
        finally:
            self._release_pipeline()
        if future.done():  # refused at once (duplicate id, closing): say so now
            self._log_outcome(future.result())
        return future

    # ------------------------------------------------------------------ tracking thread
    def _tracking_loop(self, pipeline) -> None:
        while not self._stopping.is_set():
            frame = self._slot.take(SLOT_POLL_S)
            if self._stopping.is_set():
                break
            try:
                self._report_outcomes(pipeline.expire_held_prompts())
                if frame is not None:
                    self._track_frame(pipeline, *frame)
            except Exception:  # a bug must not kill tracking; it is logged with its traceback
                if not self.context.ok():  # process shutting down: publishers are gone
                    break
                self.get_logger().error(f"tracking error (frame skipped):\n{traceback.format_exc()}")


    def _track_frame(self, pipeline, msg, received_at: float) -> None:
        started = time.monotonic()
        try:
            if isinstance(msg, CompressedImage):
                image = convert.compressed_msg_to_rgb(msg)
            else:
                image = convert.image_msg_to_rgb(msg)
        except convert.ImageConversionError as error:
            self._bad_frames += 1
            self._log_bad_input(f"image skipped: {_error_text(error)}")
            return
        converted = time.monotonic()
        stamp_ns = convert.stamp_to_ns(msg.header.stamp)
        if stamp_ns == 0:  # unstamped camera: the engine still needs increasing stamps
            stamp_ns = self.get_clock().now().nanoseconds
        try:
            result = pipeline.process(image, stamp_ns)
        except self._bad_input_errors as error:
            self._bad_frames += 1
            self._log_bad_input(f"image skipped: {_error_text(error)}")
            return
        tracked = time.monotonic()
        self._frames_processed += 1
        self._processed_rate.tick(tracked)
        self._latest_header = msg.header
        self._latest_size = (int(result.width), int(result.height))
        self._report_outcomes(result.prompt_outcomes)

        settings = self._settings
        objects_pub = self._objects_pub
        if objects_pub is not None:
            objects_pub.publish(convert.frame_result_to_msg(
                result, msg.header, settings.mask_encoding, self._slot.received, self._slot.dropped))
        markers = self._markers
        if markers is not None:
            markers.publish(result, msg.header)
        if result.depth_error and result.depth_error not in self._depth_errors_warned:
            self._depth_errors_warned.add(result.depth_error)  # one warning per distinct problem
            self.get_logger().warn(f"depth image refused (frames go on without geometry): {result.depth_error}")
        published = time.monotonic()
        overlay_pub = self._overlay_pub
        if settings.publish_overlay and overlay_pub is not None and overlay_pub.get_subscription_count() > 0:
            overlay = self._draw_overlay(image, result)
            if overlay is not None:
                overlay_pub.publish(convert.rgb_to_image_msg(overlay, msg.header))
                self._overlays_drawn += 1
            self._stage_times.record("overlay", time.monotonic() - published)
        self._stage_times.record("wait_in_slot", started - received_at)
        self._stage_times.record("convert", converted - started)
        self._stage_times.record("track", tracked - converted)
        self._stage_times.record("publish", published - tracked)
        self._stage_times.record("receive_to_publish", published - received_at)

    def _draw_overlay(self, image, result):
        if self._overlay_unavailable:
            return None
        try:
            from pam_ros.viz.overlay import draw_overlay
        except ImportError as error:
            self._overlay_unavailable = str(error)
            self.get_logger().warn(f"overlay disabled: pam_ros.viz.overlay is not available ({error})")
            return None
        return draw_overlay(image, result)

    def _report_outcomes(self, outcomes) -> None:
        for outcome in outcomes:
            self._log_outcome(outcome)

    def _log_outcome(self, outcome: PromptOutcome) -> None:
        request = outcome.request
        action = request.action.name if request is not None else "prompt"
        source = (request.source if request is not None else "") or "engine"
        if outcome.accepted:
            self.get_logger().info(f"{action} {outcome.object_id} applied on frame {outcome.frame_index} ({source})")
        else:
            self.get_logger().warn(f"{action} {outcome.object_id or ''} refused ({source}): {outcome.error}")

    def _log_bad_input(self, message: str) -> None:
        """Warn about bad input; the same message at most every BAD_INPUT_LOG_PERIOD_S."""
        now = time.monotonic()
        if now - self._bad_input_logged.get(message, -1e9) >= BAD_INPUT_LOG_PERIOD_S:
            self._bad_input_logged[message] = now
            self.get_logger().warn(message)

    # ------------------------------------------------------------------ pipeline access for requests
    def _acquire_pipeline(self):
        with self._pipeline_condition:
            if self._pipeline is None or self._stopping.is_set():
                return None
            self._pipeline_users += 1
            return self._pipeline

    def _release_pipeline(self) -> None:
        with self._pipeline_condition:
            self._pipeline_users -= 1
            self._pipeline_condition.notify_all()

    def _inactive_message(self) -> str:
        state = self._state_machine.current_state[1]
        return (f"{NODE_NAME} is not active (lifecycle state: {state}); activate it first "
                f"(ros2 lifecycle set {self.get_fully_qualified_name()} activate)")

    # ------------------------------------------------------------------ services and action
    def _on_describe(self, request: Describe.Request, response: Describe.Response) -> Describe.Response:
        """One-shot describe on the semantics worker; answered within request_timeout_s."""
        pipeline = self._acquire_pipeline()
        if pipeline is None:
            response.success, response.message = False, self._inactive_message()
            return response
        timeout_s = float(self._settings.request_timeout_s)
        gave_up = threading.Event()
        try:
            has_image = not convert.is_empty_image(request.image)
            image = convert.image_msg_to_rgb(request.image) if has_image else None
            size = (image.shape[1], image.shape[0]) if image is not None else self._latest_size
            prompt = convert.describe_prompt_from_msg(request.prompt, has_image, size)
            tasks = [t.strip() for t in request.tasks if t.strip()] or list(DEFAULT_DESCRIBE_TASKS)
            header = request.image.header if has_image else self._latest_header
            future = pipeline.describe_async(image, prompt, tasks, int(request.max_new_tokens),
                                             should_stop=lambda: gave_up.is_set() or self._stopping.is_set())
            try:
                obj, generations = self._result_within(future, timeout_s)
            except concurrent.futures.TimeoutError:
                gave_up.set()  # a running generation stops at its next token; a queued one never starts
                future.cancel()
                response.success = False
                response.message = (f"describe timed out after {timeout_s:g} s (request_timeout_s): the language "
                                    f"model is busy with {max(pipeline.stats()['semantics_queue'] - 1, 0)} other "
                                    "job(s); try again or raise request_timeout_s")
                self._log_bad_input(response.message)
                return response
            response.object = convert.object_result_to_msg(obj, header, self._settings.mask_encoding)
            response.texts = [g.text for g in generations]
            response.success = True
            response.message = f"described {obj.object_id or 'the prompted object'}: {', '.join(tasks)}"
        except self._bad_input_errors as error:
            response.success, response.message = False, f"describe refused: {_error_text(error)}"
            self._log_bad_input(response.message)
        except Exception as error:
            response.success, response.message = False, f"describe failed: {error}"
            self.get_logger().error(f"describe failed:\n{traceback.format_exc()}")
        finally:
            self._release_pipeline()
        return response

    def _on_manage_objects(self, request: ManageObjects.Request,
                           response: ManageObjects.Response) -> ManageObjects.Response:
        """Queue the prompts at once (each gets its id and a status); with wait, wait for them to apply."""
        count = len(request.prompts)
        if self._pipeline is None:
            response.success, response.message = False, self._inactive_message()
            response.object_ids, response.errors = [""] * count, [response.message] * count
            response.status = [ManageObjects.Response.REFUSED] * count
            return response
        if not request.prompts:
            response.success, response.message = False, "no prompts given"
            return response
        futures: list = []
        errors: list[str] = []
        for msg in request.prompts:
            try:
                future = self._submit(convert.prompt_msg_to_request(msg), source="manage_objects")
                errors.append("" if future is not None else self._inactive_message())
            except PamError as error:
                future = None
                errors.append(str(error))
            futures.append(future)
        timeout_s = float(self._settings.request_timeout_s)
        if request.wait:
            concurrent.futures.wait([f for f in futures if f is not None], timeout=timeout_s)
        object_ids, status = [], []
        for index, future in enumerate(futures):
            if future is None or (future.done() and not future.result().accepted):
                errors[index] = errors[index] or future.result().error or "refused"
                object_ids.append("")
                status.append(ManageObjects.Response.REFUSED)
            elif future.done():
                object_ids.append(future.result().object_id or future.object_id)
                status.append(ManageObjects.Response.APPLIED)
            else:
                object_ids.append(future.object_id)
                status.append(ManageObjects.Response.QUEUED)
        refused = [f"prompt {i}: {e}" for i, e in enumerate(errors) if e]
        response.object_ids, response.errors, response.status = object_ids, errors, status
        response.success = not refused
        queued = status.count(ManageObjects.Response.QUEUED)
        applied = status.count(ManageObjects.Response.APPLIED)
        summary = f"{applied} applied, {queued} queued"
        if queued and request.wait:
            summary += (f" (not applied within {timeout_s:g} s: no image was processed; is anything publishing on "
                        f"{self.resolve_topic_name(self._image_topic_name())}? They stay queued for their frame)")
        response.message = summary if not refused else (
            f"{summary}, {len(refused)} of {count} refused: " + "; ".join(refused))
        if refused:
            self._log_bad_input(f"manage_objects: {response.message}")
        return response

    def _on_discover(self, request: Discover.Request, response: Discover.Response) -> Discover.Response:
        pipeline = self._acquire_pipeline()
        if pipeline is None:
            response.success, response.message = False, self._inactive_message()
            return response
        try:
            tasks = tuple(t.strip() for t in request.tasks if t.strip())
            future = pipeline.discover(DiscoverRequest(int(request.max_new_objects), int(request.min_area), tasks))
        except self._bad_input_errors as error:
            response.success, response.message = False, f"discover refused: {_error_text(error)}"
            self._log_bad_input(response.message)
            return response
        finally:
            self._release_pipeline()
        timeout_s = float(self._settings.request_timeout_s) + DISCOVER_EXTRA_S
        try:
            outcome = future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            response.success = False
            response.message = (f"no frame was processed within {timeout_s:g} s (is anything publishing on "
                                f"{self.resolve_topic_name(self._image_topic_name())}?); the request stays queued")
            return response
        response.success, response.message = outcome.accepted, outcome.message
        response.object_ids = list(outcome.object_ids)
        if not outcome.accepted:
            self._log_bad_input(f"discover: {outcome.message}")
        return response

    def _on_find_objects(self, request: FindObjects.Request, response: FindObjects.Response) -> FindObjects.Response:
        pipeline = self._acquire_pipeline()
        if pipeline is None:
            response.success, response.message = False, self._inactive_message()
            return response
        try:
            answer_find_objects(pipeline, request, response, timeout_s=float(self._settings.request_timeout_s),
                                frame_id=self._latest_header.frame_id, mask_encoding=self._settings.mask_encoding)
        except self._bad_input_errors as error:
            response.success, response.message = False, f"find_objects refused: {_error_text(error)}"
            self._log_bad_input(response.message)
        except Exception as error:
            response.success, response.message = False, f"find_objects failed: {error}"
            self.get_logger().error(f"find_objects failed:\n{traceback.format_exc()}")
        finally:
            self._release_pipeline()
        return response

    def _result_within(self, future, timeout_s: float):
        """future.result() within timeout_s (TimeoutError after), cut short when the node deactivates."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return future.result(timeout=min(CAPTION_POLL_S, max(deadline - time.monotonic(), 0.0)))
            except concurrent.futures.TimeoutError:
                if time.monotonic() >= deadline:
                    raise
            if self._stopping.is_set() and future.cancel():
                raise EngineClosedError("the node was deactivated before the request ran")

    def _accept_caption_goal(self, goal: Caption.Goal) -> GoalResponse:
        """Reject at once what cannot run: node not active, unknown object, unknown task."""
        pipeline = self._pipeline
        reason = ""
        if pipeline is None or self._stopping.is_set():
            reason = self._inactive_message()
        else:
            try:
                canonical_task(goal.task.strip() or DEFAULT_CAPTION_TASK)
                object_id = goal.object_id.strip()
                if object_id and object_id not in pipeline.object_ids():
                    known = ", ".join(pipeline.object_ids()) or "none"
                    reason = f"unknown object id {object_id!r} (tracked: {known})"
            except PamError as error:
                reason = str(error)
        if reason:
            self._log_bad_input(f"caption goal rejected: {reason}")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _execute_caption(self, goal_handle) -> Caption.Result:
        """Caption goals run one at a time on the semantics worker, in arrival order; while one waits it
        gets "queued" feedback; cancel works queued or running."""
        goal = goal_handle.request
        pipeline = self._acquire_pipeline()
        if pipeline is None:
            goal_handle.abort()
            return Caption.Result(success=False, message=self._inactive_message())
        task = goal.task.strip() or DEFAULT_CAPTION_TASK
        with self._caption_lock:
            self._caption_waiting.append(goal_handle)

        def publish_text(text: str, num_tokens: int) -> None:
            goal_handle.publish_feedback(Caption.Feedback(status="running", text=text, num_tokens=int(num_tokens)))

        def should_stop() -> bool:
            return goal_handle.is_cancel_requested or self._stopping.is_set()

        try:
            if goal.object_id.strip():
                future = pipeline.caption_async(goal.object_id.strip(), task, int(goal.max_new_tokens),
                                                on_text=publish_text, should_stop=should_stop)
            else:
                # A prompt on the latest frame: one-shot describe, the whole text as one feedback.
                prompt = convert.describe_prompt_from_msg(goal.prompt, has_image=False, image_size=self._latest_size)
                future = pipeline.describe_async(None, prompt, [task], int(goal.max_new_tokens),
                                                 should_stop=should_stop)
            generation = self._wait_for_caption(goal_handle, future)
            if generation is None:  # cancelled or stopped while queued
                if goal_handle.is_cancel_requested:
                    goal_handle.canceled()
                    return Caption.Result(success=False, message="cancelled by the client while queued")
                goal_handle.abort()
                return Caption.Result(success=False, message="stopped while queued: the node was deactivated")
            if not goal.object_id.strip():
                generation = generation[1][0]
                publish_text(generation.text, len(generation.token_ids))
        except self._bad_input_errors as error:
            self._log_bad_input(f"caption refused: {_error_text(error)}")
            goal_handle.abort()
            return Caption.Result(success=False, message=f"caption refused: {_error_text(error)}")
        except Exception as error:
            self.get_logger().error(f"caption failed:\n{traceback.format_exc()}")
            goal_handle.abort()
            return Caption.Result(success=False, message=f"caption failed: {error}")
        finally:
            with self._caption_lock:
                if goal_handle in self._caption_waiting:
                    self._caption_waiting.remove(goal_handle)
            self._release_pipeline()
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
            return convert.generation_to_caption_result(generation, "cancelled by the client")
        if generation.stopped:  # the node was deactivated under it
            goal_handle.abort()
            return convert.generation_to_caption_result(generation, "stopped: the node was deactivated")
        goal_handle.succeed()
        return convert.generation_to_caption_result(generation)

    def _wait_for_caption(self, goal_handle, future):
        """Wait for a caption's future; "queued" feedback while it waits. None when cancelled while queued."""
        last_position = None
        while True:
            try:
                return future.result(timeout=CAPTION_POLL_S)
            except concurrent.futures.TimeoutError:
                pass
            except concurrent.futures.CancelledError:
                return None
            if future.running():
                with self._caption_lock:
                    if goal_handle in self._caption_waiting:
                        self._caption_waiting.remove(goal_handle)
                continue
            if goal_handle.is_cancel_requested or self._stopping.is_set():
                if future.cancel():
                    return None
                continue  # it just started: should_stop ends it
            with self._caption_lock:
                position = self._caption_waiting.index(goal_handle) if goal_handle in self._caption_waiting else 0
            if position != last_position:
                last_position = position
                goal_handle.publish_feedback(Caption.Feedback(status="queued", queue_position=position))

    # ------------------------------------------------------------------ monitoring
    def _watch_image_input(self) -> None:
        settings = self._settings
        if self._pipeline is None or settings is None or self._no_image_warned or self._image_sub is None:
            return
        since = self._last_image_at or self._activated_at
        if time.monotonic() - since < float(settings.no_image_warn_s):
            return
        self._no_image_warned = True
        self.get_logger().warn(self._no_image_message())

    def _no_image_message(self) -> str:
        """Why no image is being processed: never received (and the likely cause) or stopped N s ago."""
        settings = self._settings
        topic = self._image_sub.topic_name if self._image_sub is not None else self._image_topic_name()
        if self._last_image_at:
            return (f"images stopped arriving {time.monotonic() - self._last_image_at:.0f} s ago on {topic} "
                    f"(after {self._slot.received} received); is the camera still publishing?")
        publishers = self.get_publishers_info_by_topic(topic)
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
        return f"no image ever received in {time.monotonic() - self._activated_at:.0f} s: {where}"

    def _publish_diagnostics(self) -> None:
        if not self.context.ok():
            return
        pipeline = self._pipeline
        state = self._state_machine.current_state[1]
        values: dict = {
            "lifecycle_state": state,
            "input_topic": self._image_sub.topic_name if self._image_sub is not None else "",
            "input_rate_hz": self._input_rate.rate_hz(),
            "seconds_since_last_image": (time.monotonic() - self._last_image_at) if self._last_image_at else -1.0,
            "processed_rate_hz": self._processed_rate.rate_hz(),
            "frames_received": self._slot.received,
            "frames_processed": self._frames_processed,
            "frames_dropped": self._slot.dropped,
            "frames_bad": self._bad_frames,
            "overlays_drawn": self._overlays_drawn,
            "queue_depth": self._slot.depth,
            "prompts_pending": len(pipeline.pending_prompts()) if pipeline is not None else 0,
        }
        for stage, (last, mean) in self._stage_times.snapshot().items():
            values[f"latency_ms.{stage}"] = {"last": last * 1e3, "mean": mean * 1e3}
        if pipeline is not None:
            values["image_encoder"] = _image_encoder_text(pipeline)
            try:
                values["engine"] = pipeline.stats()
            except Exception as error:  # diagnostics must never take the node down
                values["engine_error"] = str(error)
        device = str(self._model_spec.device) if self._model_spec is not None else ""
        engine_keys = values.get("engine", {})
        if pipeline is not None and device.startswith("cuda") and not any("gpu_memory" in k for k in engine_keys):
            import torch

            values["gpu_memory_bytes"] = {"allocated": torch.cuda.memory_allocated(device),
                                          "reserved": torch.cuda.memory_reserved(device)}
        if self._failure and state != "active":
            level, message = DiagnosticStatus.ERROR, f"{state}: {self._failure}"
        elif state != "active":
            level, message = DiagnosticStatus.OK, f"{state}: not processing images"
        elif self._no_image_warned:
            level, message = DiagnosticStatus.WARN, self._no_image_message()
        else:
            level, message = DiagnosticStatus.OK, (f"tracking at {values['processed_rate_hz']:.1f} Hz, "
                                                   f"{values['frames_dropped']} frames dropped")
        status = build_status(f"{self.get_fully_qualified_name()}: perception", device or "unconfigured",
                              level, message, values)
        self._diagnostics_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                                      status=[status]))

    def _reset_counters(self) -> None:
        self._slot.reset()
        self._input_rate = RateMeter()
        self._processed_rate = RateMeter()
        self._stage_times.clear()
        self._frames_processed = self._bad_frames = self._overlays_drawn = 0
        self._last_image_at = 0.0
        self._no_image_warned = False
        self._bad_input_logged.clear()
        self._depth_errors_warned.clear()


def _help_epilog() -> str:
    lines = ["parameters (set with --ros-args -p NAME:=VALUE, or --params-file config/pam_ros.yaml):"]
    for spec in PARAMETERS:
        lines.append(f"  {spec.name} (default {spec.default!r}): {spec.description}")
    lines.append("")
    lines.append("example: pam_ros_node --ros-args -p model:=PAM-1.5B -r image:=/camera/color/image_raw")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=NODE_NAME, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Perceive Anything Model ROS 2 lifecycle node: tracks prompted objects in `image` and "
                    "publishes masks and semantics on `objects`. ROS arguments follow --ros-args.",
        epilog=_help_epilog())
    parser.parse_args(remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    node = PamNode()
    executor = MultiThreadedExecutor(num_threads=8)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # On SIGINT rclpy shuts the context down under the executor, which can then fail to build
        # its wait set (RCLError "context is not valid"): that is a normal exit, anything else is not.
        if node.context.ok():
            raise
    finally:
        node.release()
        executor.shutdown(timeout_sec=5.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
