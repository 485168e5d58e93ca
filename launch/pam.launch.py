"""Launch pam_ros_node (the Perceive Anything Model perception node).

    ros2 launch pam_ros pam.launch.py image_topic:=/camera/color/image_raw model:=PAM-1.5B
    ros2 launch pam_ros pam.launch.py image_topic:=/camera/color/image_raw depth_topic:=/camera/aligned_depth_to_color/image_raw depth_info_topic:=/camera/aligned_depth_to_color/camera_info
    ros2 launch pam_ros pam.launch.py sam2_checkpoint:=/w/sam2.1_hiera_large.pt pam_checkpoint:=/w/PAM-3B device:=cuda
    ros2 launch pam_ros pam.launch.py image_topic:=/camera/color/image_raw model:=tiny rviz:=true
    ros2 launch pam_ros pam.launch.py cameras:="[front, wrist]" remappings:="front/image:=/head/camera/color/image_raw wrist/image:=/wrist/camera/color/image_raw"

Parameters come from params_file (default: the installed config/pam_ros.yaml); every argument left
empty keeps the file's value, every argument given overrides it. Without ros2 launch, run the same
node with: pam_ros_node --ros-args --params-file config/pam_ros.yaml -r image:=/camera/image_raw
rviz:=true also starts RViz 2 with the installed rviz/pam_ros.rviz (overlay, markers, camera frame).
With cameras (several cameras over one model) each camera's topics are <name>/image, <name>/depth/image, ...:
remap them with remappings (image_topic and the depth arguments remap the single camera's names only).
"""
import os

import yaml
from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from launch import LaunchDescription

# Launch argument -> node parameter; "" = keep the params file's value.
PARAMETER_ARGUMENTS = {
    "model": "Downloaded model name (PAM-1.5B, PAM-3B) or tiny",
    "sam2_config": "SAM 2.1 config name or YAML path (with explicit checkpoints)",
    "sam2_checkpoint": "SAM 2.1 checkpoint .pt (with pam_checkpoint)",
    "pam_checkpoint": "PAM checkpoint folder (with sam2_checkpoint)",
    "device": "auto | cpu | cuda | cuda:N",
    "dtype": "auto | float32 | bfloat16 | float16",
    "image_size": "SAM 2 input size (0 = the model's 1024)",
    "image_encoder": "torch | onnxruntime (TensorRT > CUDA > CPU)",
    "image_encoder_onnx": "exported encoder .onnx ('' = export once into the cache)",
    "compile": "true | false: torch.compile the encoder and memory attention",
    "image_transport": "raw (Image on image_topic) | compressed (CompressedImage on image_topic/compressed)",
    "image_qos": "sensor_data (best effort) | reliable",
    "mask_encoding": "roi | full | none",
    "publish_overlay": "true | false",
    "max_objects": "most objects tracked at once",
    "max_new_tokens": "default token limit per task",
    "max_batch": "semantics jobs per batched generation (1 = one at a time)",
    "refresh_period_s": "re-run semantics every N s (0 = never)",
    "discover_period_s": "segment everything and track what is new every N s (0 = on request)",
    "autostart": "true: configure + activate on start",
    "cameras": "camera names, e.g. [front, wrist]: one model, topics and services under each name",
    "use_depth": "true: 3-D geometry from depth_topic + depth_info_topic (default: true when depth_topic is given)",
    "depth_scale": "metres per 16UC1 depth unit",
    "depth_slop_ms": "largest colour/depth stamp difference (0 = exact)",
}
BOOLEAN_PARAMETERS = {"publish_overlay", "autostart", "compile", "use_depth"}
INTEGER_PARAMETERS = {"max_objects", "max_new_tokens", "max_batch", "image_size"}
FLOAT_PARAMETERS = {"refresh_period_s", "discover_period_s", "depth_scale", "depth_slop_ms"}
LIST_PARAMETERS = {"cameras"}  # "[front, wrist]" (YAML, as with ros2 run -p) or "front,wrist"


def _share_file(*parts: str) -> str:
    """A file of the installed package's share/pam_ros, or of the source checkout when not installed."""
    try:
        share = get_package_share_directory("pam_ros")
    except PackageNotFoundError:  # running from a source checkout
        share = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(share, *parts)


def _default_params_file() -> str:
    return _share_file("config", "pam_ros.yaml")


def _typed(name: str, text: str):
    if name in BOOLEAN_PARAMETERS:
        return text.strip().lower() in ("1", "true", "yes", "on")
    if name in INTEGER_PARAMETERS:
        return int(text)
    if name in FLOAT_PARAMETERS:
        return float(text)
    if name in LIST_PARAMETERS:
        value = yaml.safe_load(text) if text.strip().startswith("[") else text.split(",")
        return [str(item).strip() for item in value]
    return text


def _remappings(text: str) -> list[tuple[str, str]]:
    """"from:=to from:=to" -> [(from, to), ...] (the remappings argument)."""
    pairs = []
    for item in text.split():
        source, separator, target = item.partition(":=")
        if not separator or not source or not target:
            raise ValueError(f"remappings: {item!r} is not FROM:=TO")
        pairs.append((source, target))
    return pairs


def _node(context):
    overrides = {}
    for name in PARAMETER_ARGUMENTS:
        value = LaunchConfiguration(name).perform(context)
        if value != "":
            overrides[name] = _typed(name, value)
    image_topic = LaunchConfiguration("image_topic").perform(context)
    remappings = [("image", image_topic), ("image/compressed", image_topic + "/compressed")]
    prompts_topic = LaunchConfiguration("prompts_topic").perform(context)
    if prompts_topic:
        remappings.append(("prompts", prompts_topic))
    depth_topic = LaunchConfiguration("depth_topic").perform(context)
    depth_info_topic = LaunchConfiguration("depth_info_topic").perform(context)
    if depth_topic:
        remappings.append(("depth/image", depth_topic))
        overrides.setdefault("use_depth", True)
    if depth_info_topic:
        remappings.append(("depth/camera_info", depth_info_topic))
    remappings += _remappings(LaunchConfiguration("remappings").perform(context))
    return [LifecycleNode(
        package="pam_ros",
        executable="pam_ros_node",
        name=LaunchConfiguration("node_name").perform(context),
        namespace=LaunchConfiguration("namespace").perform(context),
        parameters=[LaunchConfiguration("params_file").perform(context), overrides],
        remappings=remappings,
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level").perform(context)],
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument("image_topic", default_value="image",
                              description="Camera topic (sensor_msgs/Image); compressed input uses <image_topic>/compressed"),
        DeclareLaunchArgument("prompts_topic", default_value="", description="Remap the prompts topic ('' = prompts)"),
        DeclareLaunchArgument("depth_topic", default_value="",
                              description="Aligned depth (sensor_msgs/Image 16UC1 or 32FC1, same size and stamps as "
                                          "image_topic); giving it turns use_depth on ('' = depth/image)"),
        DeclareLaunchArgument("depth_info_topic", default_value="",
                              description="CameraInfo of the aligned depth ('' = depth/camera_info)"),
        DeclareLaunchArgument("remappings", default_value="",
                              description="More remappings, space-separated FROM:=TO pairs, e.g. for cameras: "
                                          "front/image:=/head/camera/color/image_raw wrist/image:=/wrist/camera/"
                                          "color/image_raw"),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node and its topics"),
        DeclareLaunchArgument("node_name", default_value="pam_ros_node", description="Node name"),
        DeclareLaunchArgument("params_file", default_value=_default_params_file(),
                              description="Parameter YAML (see config/pam_ros.yaml)"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug | info | warn | error"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="true: also start RViz 2 with rviz_config (needs the rviz2 package)"),
        DeclareLaunchArgument("rviz_config", default_value=_share_file("rviz", "pam_ros.rviz"),
                              description="RViz config (default: the shipped rviz/pam_ros.rviz)"),
    ]
    arguments += [DeclareLaunchArgument(name, default_value="", description=f"{text} ('' = params file value)")
                  for name, text in PARAMETER_ARGUMENTS.items()]
    rviz = Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
                arguments=["-d", LaunchConfiguration("rviz_config")], condition=IfCondition(LaunchConfiguration("rviz")))
    return LaunchDescription(arguments + [OpaqueFunction(function=_node), rviz])
