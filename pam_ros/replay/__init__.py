"""Bag replay: rosbag2 in, MCAP + frames.jsonl + summary out, driving the same engine as the node."""
