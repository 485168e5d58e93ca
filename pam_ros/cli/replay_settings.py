"""What `pam-ros replay` (one bag or many) and `pam-ros demo` run: the model and the pipeline settings
their arguments select, shared by the in-process replay and the fleet."""
from __future__ import annotations

import argparse
from dataclasses import replace

from pam_ros.cli.options import model_spec_from_args
from pam_ros.cli.regions import discover_config

TINY_DEMO_IMAGE_SIZE = 256


def model_spec(args: argparse.Namespace):
    """The model these arguments select; the tiny model runs at a 256-pixel input unless told otherwise
    (its output is meaningless anyway), every real model at its config's size."""
    spec = model_spec_from_args(args, default_model="tiny")
    if args.image_size is None and spec.name == "tiny":
        spec = replace(spec, image_size=TINY_DEMO_IMAGE_SIZE)
    return spec


def pipeline_config(args: argparse.Namespace):
    from pam_ros.engine.pipeline import PipelineConfig

    config = PipelineConfig(new_object_tasks=tuple(args.tasks), max_new_tokens=args.max_new_tokens,
                            max_batch=args.max_batch, semantics_mode="sync", **discover_config(args))
    if getattr(args, "depth_topic", None):
        from pam_ros.engine.geometry import DepthSettings

        config.depth, config.depth_slop_ms = DepthSettings(depth_scale=args.depth_scale), args.depth_slop_ms
    return config
