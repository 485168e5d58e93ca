"""PAM itself: SAM 2.1, the Semantic Perceiver, projectors and Qwen2 generation, checkpoints, prompts and facts. No ROS, no threads."""
