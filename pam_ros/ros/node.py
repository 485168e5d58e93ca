"""`pam_ros_node`: the Perceive Anything Model as a ROS 2 lifecycle node.

Topics, services and the action use relative names so namespaces and remapping work:
  subscribes  image (sensor_msgs/Image) or image/compressed (parameter image_transport), prompts (pam_ros/Prompt),
              image_click (geometry_msgs/Point: a click in pixels, as rqt_image_view publishes it),
              clicked_point (geometry_msgs/PointStamped in the camera frame, as RViz publishes it) and
              camera_info (sensor_msgs/CameraInfo, to project clicked_point): see ros/clicks.py
  publishes   objects (pam_ros/PerceivedObjectArray), overlay (sensor_msgs/Image), /diagnostics
  services    describe (pam_ros/Describe), manage_objects (pam_ros/ManageObjects),
              discover (pam_ros/Discover: segment everything on the next frame, track what is new),
              find_objects (pam_ros/FindObjects: rank tracked objects for a need): ros/services.py
  planners    use_depth: subscribes depth/image + depth/camera_info, publishes markers (ros/planning.py)
  action      caption (pam_ros/Caption): ros/caption_action.py
  cameras     parameter `cameras: [front, wrist]`: each camera's topics, services and action under its name
              (front/image, front/objects, front/describe, front/caption, ...), one model for all of them
              (engine/host.py PerceptionHost); find_objects stays one service ranking every camera's objects
Lifecycle: configure reads and validates the parameters; activate loads the model and starts tracking;
deactivate stops tracking and frees the model (GPU memory); cleanup / shutdown release everything.

This module is the lifecycle and the wiring; one camera's topics, services and action are ros/camera_io.py
(single-camera mode is the same code with no prefix). Threads: an image callback only drops the message into
its camera's latest-frame-wins slot; one tracking thread (ros/tracking.py) serves every camera: converts,
tracks and publishes; services and the action have their own callback groups (MultiThreadedExecutor), so a
long caption never holds up masks; requests use the engine under a lease (ros/lease.py); /diagnostics and
the no-image watchdogs are in ros/diagnostics.py. All model work goes through
pam_ros.engine.pipeline.PerceptionPipeline (one camera) or pam_ros.engine.host.PerceptionHost (several).
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
import traceback

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.utilities import remove_ros_args

from pam_ros.errors import PamError
from pam_ros.ros.camera_io import CameraIO
from pam_ros.ros.diagnostics import DiagnosticsPublisher, image_encoder_text
from pam_ros.ros.lease import PipelineHolder, camera_pipeline
from pam_ros.ros.parameters import (
    ENGINE_LIVE_PARAMETERS,
    LIVE_PARAMETERS,
    PARAMETERS,
    NodeSettings,
    SettingsError,
    check_parameter_value,
    declare_parameters,
    parameter_value,
    read_settings,
)
from pam_ros.ros.reporting import Reporter
from pam_ros.ros.services import FindObjectsService
from pam_ros.ros.tracking import TrackingLoop

NODE_NAME = "pam_ros_node"
STOP_TIMEOUT_S = 30.0  # deactivation waits this long for running requests before freeing the model anyway

# rclpy keeps the lifecycle state in a private attribute only, so the node follows it itself. Per transition:
# (its transitional state, the state after SUCCESS, after FAILURE, after ERROR), as rcl_lifecycle defines them.
_TRANSITIONS = {
    "configure": ("configuring", "inactive", "unconfigured", "errorprocessing"),
    "activate": ("activating", "active", "inactive", "errorprocessing"),
    "deactivate": ("deactivating", "inactive", "active", "errorprocessing"),
    "cleanup": ("cleaningup", "unconfigured", "inactive", "errorprocessing"),
    "shutdown": ("shuttingdown", "finalized", "finalized", "errorprocessing"),
    "error": ("errorprocessing", "unconfigured", "finalized", "finalized"),
}


def _transition(name: str):
    """Decorates an on_<name> callback so that the node's lifecycle state follows it."""
    during, succeeded, failed, errored = _TRANSITIONS[name]

    def decorate(callback):
        @functools.wraps(callback)
        def run(self, state: LifecycleState) -> TransitionCallbackReturn:
            self._lifecycle_state = during
            result = TransitionCallbackReturn.ERROR  # what rclpy makes of an exception
            try:
                result = callback(self, state)
                return result
            finally:
                self._lifecycle_state = {TransitionCallbackReturn.SUCCESS: succeeded,
                                         TransitionCallbackReturn.FAILURE: failed}.get(result, errored)
        return run
    return decorate


def _semantics_text(settings) -> str:
    tasks = settings.new_object_task_tuple
    if not tasks:  # a valid choice, but easy to make by accident: say what it means
        return ("new_object_tasks is empty: new objects are tracked without semantics (ask with describe, "
                "caption or manage_objects' tasks)")
    return f"new objects get {', '.join(tasks)}, in batches of up to {settings.max_batch} objects"


class PamNode(LifecycleNode):
    """The PAM perception node (see the module docstring for its interface)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._lifecycle_state = "unconfigured"
        declare_parameters(self)
        self.add_on_set_parameters_callback(self._check_parameter_changes)
        self.add_post_set_parameters_callback(self._apply_live_parameters)

        self._settings: NodeSettings | None = None
        self._failure = ""  # why the last configure/activate failed ("" after a success)
        self._model_spec = None
        self._reporter = Reporter(self.get_logger())
        self._holder = PipelineHolder(self._inactive_message)  # holds the engine: a pipeline, or a host
        settings = lambda: self._settings  # noqa: E731 - live parameters replace the settings
        self._tracking = TrackingLoop(self, self._reporter, settings, lambda: self._cameras)

        # Each camera's services and action exist in every lifecycle state, so a request while inactive gets
        # a clear answer instead of silence: the cameras named at start (their names are checked again, and
        # may change, at configure).
        self._cameras: list[CameraIO] = []
        cameras = parameter_value(self, "cameras")
        try:
            check_parameter_value("cameras", cameras)
            self._wire_cameras(tuple(cameras or ()))
        except PamError:  # bad names: configure says why (and fails)
            pass
        self._find_objects = FindObjectsService(self, self._holder, settings, self._frame_id, self._reporter)
        self._diagnostics = DiagnosticsPublisher(self, float(self.get_parameter("diagnostics_period_s").value),
                                                 MutuallyExclusiveCallbackGroup(), self)
        if self.get_parameter("autostart").value:
            # In the default group, like the lifecycle services: transitions never overlap.
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    # ------------------------------------------------------------------ what diagnostics read
    def lifecycle_state(self) -> str:
        return self._lifecycle_state

    def failure(self) -> str:
        return self._failure

    def device(self) -> str:
        return str(self._model_spec.device) if self._model_spec is not None else ""

    def pipeline(self):
        """The engine (a PerceptionPipeline, or a PerceptionHost with `cameras`); None while inactive."""
        return self._holder.pipeline

    def cameras(self) -> list[CameraIO]:
        return self._cameras

    def _frame_id(self, camera: str) -> str:
        """The frame of a camera's latest image (find_objects' matches)."""
        for io in self._cameras:
            if io.name == camera:
                return io.feed.latest_header.frame_id
        return ""

    def _wire_cameras(self, names: tuple[str, ...]) -> None:
        """One CameraIO per camera name (one without a name for ()); kept when the names are unchanged."""
        wanted = list(names) or [""]
        if [io.name for io in self._cameras] == wanted:
            return
        for io in self._cameras:
            io.destroy()
        self._cameras = [CameraIO(self, name, self._holder, lambda: self._settings, self._reporter, self._tracking)
                         for name in wanted]

    # ------------------------------------------------------------------ lifecycle
    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        self.destroy_timer(self._autostart_timer)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    @_transition("configure")
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
        self._wire_cameras(settings.camera_names)
        for io in self._cameras:
            io.create_outputs()
        inputs = ", ".join(io.image_topic_name() for io in self._cameras)
        self.get_logger().info(
            f"configured: model {self._describe_model()}, input {inputs} "
            f"({settings.image_qos} QoS), mask_encoding {settings.mask_encoding}; {_semantics_text(settings)}")
        return TransitionCallbackReturn.SUCCESS

    @_transition("activate")
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        settings = self._settings
        self.get_logger().info(f"activating: loading {self._describe_model()} ...")
        if self._model_spec.image_encoder == "onnxruntime" and not self._model_spec.image_encoder_onnx:
            from pam_ros.model.image_encoder import cache_root

            self.get_logger().info(f"image_encoder onnxruntime without image_encoder_onnx: using the ONNX export "
                                   f"cached in {cache_root() / 'image_encoder'}, exported there first if absent")
        started = time.monotonic()
        try:
            if settings.camera_names:  # one model in memory for every camera
                from pam_ros.engine.host import PerceptionHost

                engine = PerceptionHost.load(self._model_spec, settings.camera_names, settings.pipeline_config())
            else:
                from pam_ros.engine.pipeline import PerceptionPipeline

                engine = PerceptionPipeline.load(self._model_spec, settings.pipeline_config())
        except Exception as error:  # noqa: BLE001 - any load failure is reported, the node stays inactive
            if not isinstance(error, (PamError, OSError, ImportError)):
                self.get_logger().error(traceback.format_exc())
            return self._transition_failed(
                f"activate failed: could not load the model: {error}{self._load_hint(error)}")
        self._reporter.reset()
        self._holder.hand_in(engine)
        self._tracking.start(engine)
        for io in self._cameras:
            io.subscribe(camera_pipeline(engine, io.name))
        self._failure = ""
        topics = ", ".join(self.resolve_topic_name(io.image_topic_name()) for io in self._cameras)
        self.get_logger().info(f"active: model loaded in {time.monotonic() - started:.1f} s, image encoder "
                               f"{image_encoder_text(camera_pipeline(engine, self._cameras[0].name))}; "
                               f"waiting for images on {topics}")
        return super().on_activate(state)

    def _transition_failed(self, reason: str) -> TransitionCallbackReturn:
        """Log a failed transition and keep its reason for /diagnostics (ERROR until one succeeds)."""
        self._failure = reason
        self.get_logger().error(reason)
        return TransitionCallbackReturn.FAILURE

    @_transition("deactivate")
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_work("the node was deactivated")
        self.get_logger().info("inactive: tracking stopped and the model released")
        return super().on_deactivate(state)

    @_transition("cleanup")
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_outputs()
        self._settings = self._model_spec = None
        return TransitionCallbackReturn.SUCCESS

    @_transition("shutdown")
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    @_transition("error")
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error("lifecycle error: releasing everything")
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Stop tracking, free the model and drop the publishers (shutdown, error, process exit)."""
        self._stop_work("the node is shutting down")
        self._destroy_outputs()

    def _stop_work(self, reason: str) -> None:
        for io in self._cameras:
            io.unsubscribe()
        self._holder.stopping.set()  # running captions and describes stop; no new lease
        self._tracking.stop()
        pipeline, finished = self._holder.take_back(STOP_TIMEOUT_S)
        if not finished:
            self.get_logger().warn(f"requests still running after {STOP_TIMEOUT_S:g} s; closing the model anyway")
        if pipeline is not None:
            # refuses queued prompts, stops the semantics worker, drops the model, empties the CUDA cache
            pipeline.close(reason)

    def _destroy_outputs(self) -> None:
        for io in self._cameras:
            io.destroy_outputs()

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

    def _inactive_message(self) -> str:
        return (f"{NODE_NAME} is not active (lifecycle state: {self._lifecycle_state}); activate it first "
                f"(ros2 lifecycle set {self.get_fully_qualified_name()} activate)")

    # ------------------------------------------------------------------ parameters
    def _check_parameter_changes(self, parameters) -> SetParametersResult:
        state = self._lifecycle_state
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
        engine = self._holder.pipeline
        engine_values = {name: getattr(settings, name) for name in ENGINE_LIVE_PARAMETERS if name in changed}
        if engine is not None and engine_values:
            for io in self._cameras:  # every camera's pipeline (the shared worker's settings, too)
                camera_pipeline(engine, io.name).update_settings(**engine_values)
        self.get_logger().info("applied now: " + ", ".join(f"{k}={v!r}" for k, v in changed.items()))


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
