"""pam_ros: the Perceive Anything Model (PAM) on ROS 2 robots.

Layers (arrows point down only):
  pam_ros.model   PAM itself (SAM 2.1 + Semantic Perceiver + Qwen2), model selection. No ROS.
  pam_ros.engine  prompt queue (futures), streaming tracker, semantics scheduler + worker, pipeline. No ROS.
  pam_ros.ros     the ROS 2 node (the only place that imports rclpy);
  pam_ros.replay  rosbag replay; pam_ros.cli* the `pam-ros` command; pam_ros.bench the benchmarks.
  pam_ros.errors  the one error root: every error a user can cause is a PamError.
"""
# The rosidl-generated modules (pam_ros.msg / .srv / .action) are installed in a different
# directory than these sources (an install prefix, or a colcon install space). extend_path lets
# `import pam_ros.msg` find them wherever they are on sys.path.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
