"""Benchmarks: measurements that print numbers (never timed assertions); the CLI is pam_ros/cli_bench.py."""
