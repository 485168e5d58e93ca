"""The node's ROS parameters: one declaration table, validation, and the engine configs built from them.

The table is the single place parameter names, defaults and descriptions live; config/pam_ros.yaml,
the launch file and `pam_ros_node --help` are checked against it by the tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from pam_ros.engine.types import LIVE_SETTINGS
from pam_ros.errors import ConfigError, PamError, SettingsError
from pam_ros.messages import MASK_ENCODINGS
from pam_ros.model.region_settings import DEFAULT_POINTS_PER_SIDE, GENERATOR_DEFAULTS
from pam_ros.model.selection import DEFAULT_MODEL, PATH_FIELDS, ModelSpec, check_device_name, check_image_size
from pam_ros.model.tasks import AFFORDANCE_QUESTION, DTYPE_NAMES, ENCODER_KINDS, VIDEO_FRAMES

IMAGE_QOS_CHOICES = ("sensor_data", "reliable")
IMAGE_TRANSPORT_CHOICES = ("raw", "compressed")
MASK_ENCODING_CHOICES = MASK_ENCODINGS
IMAGE_ENCODER_CHOICES = ENCODER_KINDS
DTYPE_CHOICES = ("auto",) + DTYPE_NAMES



@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    value_range: tuple[float, float, float] | None = None  # (from, to, step; 0 = any) in the descriptor


PARAMETERS: tuple[ParameterSpec, ...] = (
    # --- model selection (ModelSpec) ---
    ParameterSpec("model", DEFAULT_MODEL,
                  'Downloaded model name ("PAM-1.5B", "PAM-3B"; get one with `pam-ros download NAME`) or "tiny" '
                  "(built-in random-weight test model). Ignored when the explicit paths below are set."),
    ParameterSpec("sam2_config", "", "SAM 2.1 config: packaged name or YAML path; set with the two checkpoints."),
    ParameterSpec("sam2_checkpoint", "", "SAM 2.1 checkpoint (.pt) path; set with sam2_config and pam_checkpoint."),
    ParameterSpec("pam_checkpoint", "", "PAM checkpoint folder (Hugging Face layout); set with the SAM 2.1 paths."),
    ParameterSpec("device", "auto", 'Torch device: "auto" (cuda when available, else cpu), "cpu", "cuda" or "cuda:N".'),
    ParameterSpec("dtype", "auto", 'Compute dtype: "auto" (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16.',
                  DTYPE_CHOICES),
    ParameterSpec("image_size", 0,
                  "SAM 2 input size in pixels; 0 = the model's own (1024, as PAM was trained). Smaller is faster "
                  "(e.g. 512 on small GPUs) but no longer the official PAM computation.",
                  value_range=(0, 4096, 64)),
    ParameterSpec("image_encoder", "torch",
                  'SAM 2 image encoder: "torch", or "onnxruntime" (TensorRT > CUDA > CPU provider, whichever the '
                  "installed onnxruntime offers; the provider is logged and in /diagnostics).", IMAGE_ENCODER_CHOICES),
    ParameterSpec("image_encoder_onnx", "",
                  "The .onnx from `pam-ros export-onnx` for image_encoder onnxruntime; empty = exported on first use "
                  "into ~/.cache/pam_ros (keyed by checkpoint sha256 + input size) and reused."),
    ParameterSpec("compile", False, "torch.compile SAM 2's image encoder and memory attention (CUDA; slow first frames)."),
    # --- engine (PipelineConfig) ---
    ParameterSpec("new_object_tasks", ["explain", "caption"],
                  "Semantic tasks run once when an object starts being tracked (recognize, explain, caption, "
                  'detailed_caption, *_zh ...); [""] = none. A prompt\'s own tasks override these.'),
    ParameterSpec("refresh_period_s", 0.0, "Re-run each object's tasks every this many seconds; 0 = never.",
                  value_range=(0.0, 86400.0, 0.0)),
    ParameterSpec("max_objects", 16, "Most objects tracked at once; further ADD prompts are refused.",
                  value_range=(1, 256, 1)),
    ParameterSpec("max_conditioning_frames", 4, "Prompted frames kept per object in the memory bank.",
                  value_range=(1, 64, 1)),
    ParameterSpec("keep_feature_frames", 16,
                  "Frames of features kept per object for semantics, at least (video tasks read 16; must be >= 16; up to twice this are held).",
                  value_range=(16, 4096, 1)),
    ParameterSpec("stream_window_frames", 32,
                  "video_stream_caption: frames per captioned window of a track (>= 16).",
                  value_range=(16, 100000, 1)),
    ParameterSpec("max_new_tokens", 48, "Default upper bound on generated tokens per task.",
                  value_range=(1, 8192, 1)),
    ParameterSpec("max_batch", 8,
                  "Semantics jobs (objects, each with its tasks: new objects, refreshes, stream windows) that share "
                  "one batched generation when the model is free; 1 = one at a time. A batch too big for memory "
                  "is split and retried (logged once).",
                  value_range=(1, 256, 1)),
    ParameterSpec("greedy", True, "Greedy decoding (deterministic); false = sample with temperature / top_p."),
    ParameterSpec("temperature", 0.7, "Sampling temperature (greedy = false).",
                  value_range=(0.0, 10.0, 0.0)),
    ParameterSpec("top_p", 0.8, "Nucleus sampling threshold (greedy = false).",
                  value_range=(0.0, 1.0, 0.0)),
    ParameterSpec("prompt_hold_s", 2.0,
                  "Longest time a prompt whose stamp names a frame not yet received is held; then it is refused.",
                  value_range=(0.0, 3600.0, 0.0)),
    # --- discover (segment everything) and clicks ---
    ParameterSpec("discover_period_s", 0.0,
                  "Run `discover` (segment everything, track what is new) every this many seconds; 0 = only when "
                  "the discover service is called.",
                  value_range=(0.0, 86400.0, 0.0)),
    ParameterSpec("discover_every_frames", 0,
                  "Run `discover` on every N-th processed frame (0, N, 2N, ...); 0 = off. Deterministic, unlike "
                  "discover_period_s.",
                  value_range=(0, 1000000, 1)),
    ParameterSpec("discover_points_per_side", DEFAULT_POINTS_PER_SIDE, "discover: grid of N x N point prompts for SAM 2's automatic mask "
                  "generator (>= 1).",
                  value_range=(1, 128, 1)),
    ParameterSpec("discover_pred_iou_thresh", GENERATOR_DEFAULTS["pred_iou_thresh"], "discover: keep regions whose predicted IoU is above this, in [0, 1].",
                  value_range=(0.0, 1.0, 0.0)),
    ParameterSpec("discover_stability_score_thresh", GENERATOR_DEFAULTS["stability_score_thresh"],
                  "discover: keep regions with at least this stability score, in [0, 1].",
                  value_range=(0.0, 1.0, 0.0)),
    ParameterSpec("discover_box_nms_thresh", GENERATOR_DEFAULTS["box_nms_thresh"],
                  "discover: box IoU above which duplicate regions are dropped, in [0, 1].",
                  value_range=(0.0, 1.0, 0.0)),
    ParameterSpec("click_tasks", ["explain", "caption"],
                  "Semantic tasks for an object added by a click (`image_click`, `clicked_point`); [\"\"] = "
                  "new_object_tasks."),
    # --- node ---
    ParameterSpec("autostart", True, "Configure and activate on start (false: wait for lifecycle transitions)."),
    ParameterSpec("cameras", [],
                  "Camera names, e.g. [front, wrist]: one model serves them all, each with its own topics, services "
                  "and action under its name (front/image, front/objects, front/manage_objects, ...; object ids are "
                  "per camera) and find_objects ranks the objects of every camera. Empty = one camera on image, "
                  "objects, ... (no prefix). Names: a letter, then letters, digits or _; no duplicates."),
    ParameterSpec("image_transport", "raw",
                  'Input: "raw" = sensor_msgs/Image on `image`; "compressed" = sensor_msgs/CompressedImage '
                  "(jpeg/png) on `image/compressed`.", IMAGE_TRANSPORT_CHOICES),
    ParameterSpec("image_qos", "sensor_data",
                  'Image subscription QoS: "sensor_data" (best effort, depth 5: receives from any camera) or '
                  '"reliable" (depth 5: only from reliable publishers).', IMAGE_QOS_CHOICES),
    ParameterSpec("mask_encoding", "roi",
                  'PerceivedObject.mask: "roi" (cropped to the object\'s roi), "full" (image size) or "none".',
                  MASK_ENCODING_CHOICES),
    ParameterSpec("publish_overlay", True, "Publish `overlay` (coloured masks, ids, labels); drawn only while subscribed."),
    ParameterSpec("no_image_warn_s", 5.0, "Warn once when no image arrives for this many seconds after activation.",
                  value_range=(0.0, 3600.0, 0.0)),
    ParameterSpec("diagnostics_period_s", 1.0, "Period of /diagnostics messages in seconds.",
                  value_range=(0.0, 3600.0, 0.0)),
    ParameterSpec("request_timeout_s", 10.0,
                  "Longest wait of describe, find_objects and of manage_objects with wait=true; then they answer (timed out / QUEUED).",
                  value_range=(0.0, 3600.0, 0.0)),
    # --- planners: geometry from aligned depth, find_objects ---
    ParameterSpec("use_depth", False,
                  "Subscribe `depth/image` (aligned depth, 16UC1 or 32FC1) and `depth/camera_info` and give each "
                  "object its 3-D geometry (PerceivedObject.has_geometry, position, size, grasp_point)."),
    ParameterSpec("depth_scale", 0.001, "Metres per unit of a 16UC1 depth image (0.001: millimetres).",
                  value_range=(0.0, 1000.0, 0.0)),
    ParameterSpec("depth_slop_ms", 0.0,
                  "Largest stamp difference between a colour frame and its depth image; 0 = the exact stamp.",
                  value_range=(0.0, 10000.0, 0.0)),
    ParameterSpec("min_depth_m", 0.1, "Depth readings nearer than this (metres) are invalid.",
                  value_range=(0.0, 1000.0, 0.0)),
    ParameterSpec("max_depth_m", 10.0, "Depth readings farther than this (metres) are invalid.",
                  value_range=(0.0, 1000.0, 0.0)),
    ParameterSpec("min_depth_points", 20, "Fewer mask pixels with valid depth than this: no geometry.",
                  value_range=(1, 100000000, 1)),
    ParameterSpec("depth_band_m", 0.05,
                  "Mask pixels whose depth is farther than this from the object's median depth are dropped "
                  "(background the mask bleeds onto).",
                  value_range=(0.0, 100.0, 0.0)),
    ParameterSpec("grasp_radius_m", 0.02,
                  "The grasp approach is the normal of the object's points within this distance (metres) of its "
                  "grasp point (all its points when fewer than 10).",
                  value_range=(0.0, 10.0, 0.0)),
    ParameterSpec("grasp_slab_m", 0.01,
                  "grasp_width is measured over the object's points within this distance (metres) of the grasp "
                  "point along its long axis (oriented_size.y when fewer than 5).",
                  value_range=(0.0, 10.0, 0.0)),
    ParameterSpec("affordance_question", AFFORDANCE_QUESTION,
                  "find_objects: the question asked per object; {query} is replaced by the request's query and "
                  "<image> marks the object's region tokens."),
)
PARAMETER_NAMES = tuple(spec.name for spec in PARAMETERS)
_SPECS = {spec.name: spec for spec in PARAMETERS}


# Parameters that take effect when set, in any state; every other one is read at configure.
LIVE_PARAMETERS = ("refresh_period_s", "max_new_tokens", "max_batch", "greedy", "temperature", "top_p",
                   "publish_overlay", "mask_encoding", "no_image_warn_s", "request_timeout_s", "discover_period_s")
ENGINE_LIVE_PARAMETERS = LIVE_SETTINGS  # handed to PerceptionPipeline.update_settings
LIVE_PARAMETERS = ENGINE_LIVE_PARAMETERS + tuple(name for name in LIVE_PARAMETERS if name not in LIVE_SETTINGS)


# Parameters the node reads once, when it starts (before any lifecycle transition).
STARTUP_PARAMETERS = ("autostart", "diagnostics_period_s")


def applies_when(name: str) -> str:
    """When a parameter takes effect, in the words the descriptor, config/pam_ros.yaml and docs/node.md use."""
    if name in LIVE_PARAMETERS:
        return "Applies at once."
    if name in STARTUP_PARAMETERS:
        return "Read when the node starts."
    return "Read at configure."


def descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    """The ParameterDescriptor of a parameter: description, choices, range, and when it applies."""
    when = " " + applies_when(spec.name)
    choices = f" One of: {', '.join(spec.choices)}." if spec.choices else ""
    desc = ParameterDescriptor(description=spec.description + choices + when,
                               additional_constraints=(f"one of: {', '.join(spec.choices)}" if spec.choices else ""))
    if spec.value_range is not None:
        low, high, step = spec.value_range
        if isinstance(spec.default, bool) or not isinstance(spec.default, (int, float)):
            raise TypeError(f"{spec.name}: a range needs a numeric parameter")
        if isinstance(spec.default, int):
            desc.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=int(step))]
        else:
            desc.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high),
                                                            step=float(step))]
        desc.additional_constraints = f"from {low} to {high}" + (f" in steps of {step}" if step else "")
    return desc


def declare_parameters(node) -> None:
    for spec in PARAMETERS:
        # rclpy types an empty list as a byte array: an empty string-array default is declared by its type
        # (unset until given; read as [])
        default = Parameter.Type.STRING_ARRAY if spec.default == [] else spec.default
        node.declare_parameter(spec.name, default, descriptor(spec))


def parameter_value(node, name: str) -> Any:
    """A parameter's value; its default while unset (an empty string array: rclpy keeps [] as unset, and a
    params file's `cameras: []` leaves it so)."""
    try:
        value = node.get_parameter(name).value
    except ParameterUninitializedException:
        return _SPECS[name].default
    return _SPECS[name].default if value is None else value


def check_parameter_value(name: str, value: Any) -> None:
    """Raise SettingsError when a single parameter value is unusable (used on set and on configure)."""
    spec = _SPECS.get(name)
    if spec is None:
        return
    if spec.choices and value not in spec.choices:
        raise SettingsError(f"parameter {name}={value!r} is not one of {', '.join(spec.choices)}")
    positive = {"max_objects", "max_conditioning_frames", "max_new_tokens", "max_batch",
                "diagnostics_period_s", "request_timeout_s", "no_image_warn_s", "temperature"}
    if name in positive and not value > 0:
        raise SettingsError(f"parameter {name}={value!r} must be > 0")
    if name in ("refresh_period_s", "prompt_hold_s", "discover_period_s", "discover_every_frames") and not value >= 0:
        raise SettingsError(f"parameter {name}={value!r} must be >= 0")
    if name in ("keep_feature_frames", "stream_window_frames") and not value >= VIDEO_FRAMES:
        raise SettingsError(f"parameter {name}={value!r} must be >= {VIDEO_FRAMES} (PAM's video mode reads "
                            f"{VIDEO_FRAMES} frames)")
    if name == "discover_points_per_side" and not value >= 1:
        raise SettingsError(f"parameter {name}={value!r} must be >= 1")
    if name.startswith("discover_") and name.endswith("_thresh") and not 0 <= value <= 1:
        raise SettingsError(f"parameter {name}={value!r} must be in [0, 1]")
    if name == "image_size":
        _check_with(check_image_size, name, value)
    if name == "top_p" and not 0 < value <= 1:
        raise SettingsError(f"parameter top_p={value!r} must be in (0, 1]")
    if name == "device":
        _check_with(check_device_name, name, value)
    if name in ("depth_scale", "max_depth_m", "depth_band_m", "min_depth_points", "grasp_radius_m",
                "grasp_slab_m") and not value > 0:
        raise SettingsError(f"parameter {name}={value!r} must be > 0")
    if name in ("depth_slop_ms", "min_depth_m") and not value >= 0:
        raise SettingsError(f"parameter {name}={value!r} must be >= 0")
    if name == "cameras" and value:
        from pam_ros.engine.host import check_camera_names

        _check_with(check_camera_names, name, list(value))
    if name == "affordance_question":
        from pam_ros.model.tasks import check_affordance_template

        try:
            check_affordance_template(value)
        except PamError as error:
            raise SettingsError(f"parameter affordance_question: {error}") from None


def _check_with(rule, name: str, value: Any) -> None:
    """Apply an engine rule to a parameter; its ConfigError becomes a SettingsError naming the parameter."""
    try:
        rule(value)
    except ConfigError as error:
        raise SettingsError(f"parameter {error}") from None


@dataclass(frozen=True)
class NodeSettings:
    """Every parameter value, read once at configure."""

    values: dict

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def with_values(self, changed: dict) -> "NodeSettings":
        """These settings with some values changed (live parameters)."""
        return NodeSettings({**self.values, **changed})

    @property
    def camera_names(self) -> tuple[str, ...]:
        """The cameras' names; () = one camera without a name (today's topics)."""
        return tuple(self.cameras or ())

    @property
    def new_object_task_tuple(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.new_object_tasks if t.strip() and t.strip().lower() != "none")

    def model_spec(self) -> ModelSpec:
        """The model to load: the explicit paths when any is set (then `model` is ignored), else `model`;
        device/dtype "auto" resolved."""
        paths = {key: self.values[key] for key in PATH_FIELDS}
        return ModelSpec(name="" if any(paths.values()) else self.model, **paths, device=self.device,
                         dtype=self.dtype, image_size=int(self.image_size), image_encoder=self.image_encoder,
                         image_encoder_onnx=self.image_encoder_onnx,
                         compile=bool(self.compile)).with_auto_resolved()

    def pipeline_config(self):
        from pam_ros.engine.pipeline import PipelineConfig
        from pam_ros.model.regions import RegionSettings

        return PipelineConfig(
            new_object_tasks=self.new_object_task_tuple,
            refresh_period_s=float(self.refresh_period_s),
            max_objects=int(self.max_objects),
            max_conditioning_frames=int(self.max_conditioning_frames),
            keep_feature_frames=int(self.keep_feature_frames),
            stream_window_frames=int(self.stream_window_frames),
            max_new_tokens=int(self.max_new_tokens),
            max_batch=int(self.max_batch),
            greedy=bool(self.greedy),
            temperature=float(self.temperature),
            top_p=float(self.top_p),
            semantics_mode="async",  # the node never lets semantics block tracking
            prompt_hold_s=float(self.prompt_hold_s),
            discover_period_s=float(self.discover_period_s),
            discover_every_frames=int(self.discover_every_frames),
            discover_settings=RegionSettings(
                points_per_side=int(self.discover_points_per_side),
                pred_iou_thresh=float(self.discover_pred_iou_thresh),
                stability_score_thresh=float(self.discover_stability_score_thresh),
                box_nms_thresh=float(self.discover_box_nms_thresh)),
            affordance_question=str(self.affordance_question),
            depth=self.depth_settings() if self.use_depth else None,
            depth_slop_ms=float(self.depth_slop_ms),
        )

    @property
    def click_task_tuple(self) -> tuple[str, ...]:
        """click_tasks without empty entries; () = the pipeline's new_object_tasks."""
        return tuple(t for t in self.click_tasks if t)

    def depth_settings(self):
        from pam_ros.engine.geometry import DepthSettings

        try:
            return DepthSettings(depth_scale=float(self.depth_scale), min_depth_m=float(self.min_depth_m),
                                 max_depth_m=float(self.max_depth_m), min_depth_points=int(self.min_depth_points),
                                 depth_band_m=float(self.depth_band_m),
                                 grasp_radius_m=float(self.grasp_radius_m), grasp_slab_m=float(self.grasp_slab_m))
        except PamError as error:
            raise SettingsError(f"depth parameters: {error}") from None


def read_settings(node) -> NodeSettings:
    """All parameters from the node, validated (SettingsError names the first bad one)."""
    values = {name: parameter_value(node, name) for name in PARAMETER_NAMES}
    for name, value in values.items():
        check_parameter_value(name, value)
    return NodeSettings(values)
