"""Message field codecs shared by the ROS node and the bag replay (no rclpy): engine results <-> message
fields, and ROS image encodings <-> numpy."""

# how a PerceivedObject carries its mask: cropped to its box, the full frame, or not at all
MASK_ENCODINGS = ("roi", "full", "none")
