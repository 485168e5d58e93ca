"""Helpers shared by the ROS 2 tests: isolated DDS environment, helper processes, sample messages."""
