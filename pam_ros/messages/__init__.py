"""Message field codecs shared by the ROS node and the bag replay (no rclpy): engine results <-> message
fields, and ROS image encodings <-> numpy."""
