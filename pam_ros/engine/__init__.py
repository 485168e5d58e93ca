"""Streams: the tracker, the prompt queue, the semantics scheduler and worker, one-shot describes, the pipeline facade. No ROS."""
