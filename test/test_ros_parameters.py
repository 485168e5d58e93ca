"""The node's parameters: declared with descriptions, validated, and mirrored by the YAML and the launch file."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import rclpy
import yaml
from rclpy.parameter import Parameter
from ros_helpers.ros_session import isolate_ros_environment

from pam_ros.errors import ConfigError
from pam_ros.ros.parameters import PARAMETER_NAMES, PARAMETERS, read_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def node():
    from pam_ros.ros.node import PamNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=isolate_ros_environment())
    # autostart off: nothing is loaded, the node only declares and validates parameters.
    # Renamed and without lifecycle services: a node process started later by another test module
    # must not be confused with this one by DDS discovery.
    pam_node = PamNode(context=context, parameter_overrides=[Parameter("autostart", value=False)],
                       cli_args=["--ros-args", "-r", "__node:=pam_ros_parameter_test", "-r", "__ns:=/parameter_test"],
                       start_parameter_services=False, enable_rosout=False, enable_communication_interface=False)
    yield pam_node
    pam_node.destroy_node()
    rclpy.shutdown(context=context)


def test_every_parameter_is_declared_with_a_description(node):
    for spec in PARAMETERS:
        assert node.has_parameter(spec.name), spec.name
        descriptor = node.describe_parameter(spec.name)
        assert len(descriptor.description) > 20, f"{spec.name} has no useful description"
    assert node.get_parameter("autostart").value is False
    assert node.get_parameter("image_qos").value == "sensor_data"
    assert node.get_parameter("mask_encoding").value == "roi"


def test_numeric_parameters_declare_their_range_and_choices_are_listed(node):
    from rcl_interfaces.msg import ParameterType

    for spec in PARAMETERS:
        descriptor = node.describe_parameter(spec.name)
        numeric = descriptor.type in (ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_DOUBLE)
        if numeric:
            ranges = list(descriptor.integer_range) + list(descriptor.floating_point_range)
            assert len(ranges) == 1, f"{spec.name} declares no range"
            assert ranges[0].from_value <= spec.default <= ranges[0].to_value, spec.name
        if spec.choices:
            assert all(choice in descriptor.additional_constraints for choice in spec.choices), spec.name
        whens = ("Applies at once.", "Read at configure.", "Read when the node starts.")
        assert sum(when in descriptor.description for when in whens) == 1, spec.name
    size = node.describe_parameter("image_size").integer_range[0]
    assert (size.from_value, size.step) == (0, 64)
    # rclpy itself refuses a value outside the declared range, before our own checks
    result = node.set_parameters([Parameter("max_objects", value=100000)])[0]
    assert not result.successful and node.get_parameter("max_objects").value == 16
    assert not node.set_parameters([Parameter("top_p", value=1.5)])[0].successful
    assert not node.set_parameters([Parameter("image_size", value=100)])[0].successful


def test_yaml_lists_every_parameter_with_its_default():
    document = yaml.safe_load((ROOT / "config" / "pam_ros.yaml").read_text())
    values = document["/**"]["ros__parameters"]
    assert sorted(values) == sorted(PARAMETER_NAMES)
    for spec in PARAMETERS:
        assert values[spec.name] == spec.default and type(values[spec.name]) is type(spec.default), spec.name


def test_bad_values_are_refused_when_set(node):
    result = node.set_parameters([Parameter("mask_encoding", value="rle")])[0]
    assert not result.successful and "mask_encoding='rle' is not one of roi, full, none" in result.reason
    result = node.set_parameters([Parameter("max_objects", value=0)])[0]
    assert not result.successful and "max_objects out of range. Min: 1" in result.reason
    result = node.set_parameters([Parameter("device", value="gpu")])[0]
    assert not result.successful and "cuda:N" in result.reason
    assert node.get_parameter("mask_encoding").value == "roi"
    assert node.set_parameters([Parameter("mask_encoding", value="full")])[0].successful
    node.set_parameters([Parameter("mask_encoding", value="roi")])


def test_settings_need_a_model_or_both_checkpoints(node):
    settings = read_settings(node)
    assert settings.model == "PAM-1.5B" and not settings.model_spec().uses_paths
    assert settings.new_object_task_tuple == ("explain", "caption")
    node.set_parameters([Parameter("sam2_checkpoint", value="/weights/sam2.pt")])
    try:
        with pytest.raises(ConfigError, match=r"no model selected.*missing: sam2_config, pam_checkpoint"):
            read_settings(node).model_spec().validate()
        node.set_parameters([Parameter("pam_checkpoint", value="/weights/PAM-1.5B"),
                             Parameter("sam2_config", value="configs/sam2.1/sam2.1_hiera_l.yaml")])
        spec = read_settings(node).model_spec()
        assert spec.uses_paths and spec.name == ""  # explicit paths win over `model`
    finally:
        node.set_parameters([Parameter(name, value="") for name in ("sam2_config", "sam2_checkpoint", "pam_checkpoint")])


def test_engine_parameters_mirror_the_pipeline_config(node):
    """Every PipelineConfig field is a node parameter with the engine's default (semantics_mode is
    always "async" in the node: semantics never block tracking)."""
    import dataclasses

    from pam_ros.engine.geometry import DepthSettings
    from pam_ros.engine.pipeline import PipelineConfig

    engine_defaults = {f.name: f.default for f in dataclasses.fields(PipelineConfig)}
    del engine_defaults["semantics_mode"]
    # depth (DepthSettings or None) is use_depth (default off) plus one parameter per DepthSettings field
    assert engine_defaults.pop("depth") is None and node.get_parameter("use_depth").value is False
    engine_defaults.update({f.name: f.default for f in dataclasses.fields(DepthSettings)})
    # the generator's settings are one RegionSettings in the engine, four discover_* parameters here
    generator = engine_defaults.pop("discover_settings").resolved()
    for name in ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"):
        assert node.get_parameter(f"discover_{name}").value == getattr(generator, name), name
    for name, default in engine_defaults.items():
        assert node.has_parameter(name), f"PipelineConfig.{name} has no node parameter"
        value = node.get_parameter(name).value
        assert (tuple(value) if isinstance(value, list) else value) == default, name
    config = read_settings(node).pipeline_config()
    config.validate()
    assert config.semantics_mode == "async" and config.depth is None
    node.set_parameters([Parameter("use_depth", value=True), Parameter("depth_band_m", value=0.02)])
    try:
        assert read_settings(node).pipeline_config().depth == DepthSettings(depth_band_m=0.02)
        assert not node.set_parameters([Parameter("depth_scale", value=0.0)])[0].successful
        refused = node.set_parameters([Parameter("affordance_question", value="Is it for {query}?")])[0]
        assert not refused.successful and "<image>" in refused.reason
    finally:
        node.set_parameters([Parameter("use_depth", value=False), Parameter("depth_band_m", value=0.05)])


def test_model_parameters_mirror_the_model_spec(node):
    import dataclasses

    from pam_ros.model.selection import ModelSpec

    spec_fields = {f.name for f in dataclasses.fields(ModelSpec)}
    node_names = {"model" if name == "name" else name for name in spec_fields}
    assert node_names <= set(PARAMETER_NAMES), sorted(node_names - set(PARAMETER_NAMES))
    node.set_parameters([Parameter("image_size", value=256), Parameter("device", value="cpu"),
                         Parameter("dtype", value="bfloat16")])
    try:
        spec = read_settings(node).model_spec()
        assert (spec.name, spec.image_size, spec.device, spec.dtype) == ("PAM-1.5B", 256, "cpu", "bfloat16")
        assert not node.set_parameters([Parameter("image_size", value=100)])[0].successful
    finally:
        node.set_parameters([Parameter("image_size", value=0), Parameter("device", value="auto"),
                             Parameter("dtype", value="auto")])


def test_model_is_validated_without_loading_it(node):
    from pam_ros.errors import ConfigError

    node.set_parameters([Parameter("model", value="tiny")])
    try:
        read_settings(node).model_spec().validate()
        node.set_parameters([Parameter("model", value="PAM-7B-nonexistent")])
        with pytest.raises(ConfigError, match="unknown model 'PAM-7B-nonexistent'; known models: .*PAM-1.5B"):
            read_settings(node).model_spec().validate()
    finally:
        node.set_parameters([Parameter("model", value="PAM-1.5B")])


def test_resolved_device_and_dtype(node):
    import torch

    from pam_ros.model.selection import ModelSpec

    settings = read_settings(node)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    spec = settings.model_spec()
    assert (spec.device, spec.dtype) == (expected, "bfloat16" if expected == "cuda" else "float32")
    assert ModelSpec(device="cuda:1", dtype="auto").with_auto_resolved().dtype == "bfloat16"


def test_launch_file_declares_the_arguments():
    pytest.importorskip("launch", reason="ROS 2 `launch` is not installable here (no pip wheel)")
    pytest.importorskip("launch_ros", reason="ROS 2 `launch_ros` is not installable here (no pip wheel)")
    from launch.actions import DeclareLaunchArgument

    spec = importlib.util.spec_from_file_location("pam_launch", ROOT / "launch" / "pam.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {entity.name for entity in description.entities if isinstance(entity, DeclareLaunchArgument)}
    required = {"image_topic", "model", "sam2_config", "sam2_checkpoint", "pam_checkpoint", "device", "dtype",
                "namespace", "params_file", "mask_encoding", "image_qos", "publish_overlay"}
    assert required <= declared, f"missing launch arguments: {sorted(required - declared)}"
    assert set(module.PARAMETER_ARGUMENTS) <= set(PARAMETER_NAMES)


def test_launch_file_parameter_arguments_are_node_parameters():
    """Checked from the source when `launch` is absent: every forwarded argument is a real parameter."""
    source = (ROOT / "launch" / "pam.launch.py").read_text()
    start = source.index("PARAMETER_ARGUMENTS = {")
    block = source[start:source.index("}", start)]
    names = [line.split('"')[1] for line in block.splitlines()[1:] if line.strip().startswith('"')]
    assert names and set(names) <= set(PARAMETER_NAMES), sorted(set(names) - set(PARAMETER_NAMES))
