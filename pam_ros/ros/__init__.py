"""The ROS 2 front end: the lifecycle node, its parameters, message conversions and diagnostics (the only package importing rclpy)."""
