"""`pam-ros replay BAG BAG ... --out OUT [--workers N] [--ray-address ADDR]`: several bags in one
command. Argument checks and printing only; the work is pam_ros.replay.fleet (and fleet_ray on Ray).
"""
from __future__ import annotations

import argparse
import sys


def run_fleet_command(args: argparse.Namespace, cameras: tuple = ()) -> int:
    """Replay args.bag (several bags) into OUT/<bag name>/ (OUT/<bag name>/<camera>/ with `cameras`,
    replay/cameras.py CameraTopics); the exit code: 0 when every bag is complete, 1 when one is not,
    2 for unusable inputs (nothing replayed), 130 after Ctrl-C."""
    from pam_ros.cli.replay_settings import depth_settings, model_spec, pipeline_config
    from pam_ros.errors import PamError
    from pam_ros.replay.fleet import format_fleet_summary, run_fleet
    from pam_ros.replay.fleet_plan import FleetSettings

    def fail(message: str) -> int:
        print(f"pam-ros replay: error: {message}", file=sys.stderr)
        return 2

    if args.workers < 1:
        return fail(f"--workers must be >= 1, got {args.workers}")
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        return fail(f"--gpus-per-worker must be >= 0, got {args.gpus_per_worker:g}")
    try:
        spec = model_spec(args)
        config = pipeline_config(args)
        if any(camera.depth_topic for camera in cameras):
            config.depth, config.depth_slop_ms = depth_settings(args), args.depth_slop_ms
        config.validate()
        if not args.ray_address:  # on a cluster the workers' machines decide (the head may have no GPU)
            spec = spec.validate()
    except PamError as err:
        return fail(f"cannot load the model: {err}")
    model_name = spec.name or f"{spec.pam_checkpoint} + {spec.sam2_checkpoint}"
    if spec.name == "tiny":
        print("note: using the built-in tiny model (random weights: its words are meaningless)", file=sys.stderr)
    settings = FleetSettings(spec=spec, config=config, image_topic=args.image_topic, overwrite=args.overwrite,
                             overlay_pngs=args.overlay_pngs, mask_encoding=args.mask_encoding,
                             model_name=model_name, cameras=cameras)
    try:
        report = run_fleet(args.bag, args.out, settings, prompts=args.prompts, workers=args.workers,
                           ray_address=args.ray_address, gpus_per_worker=args.gpus_per_worker,
                           progress=not args.no_progress)
    except PamError as err:
        return fail(str(err))
    except KeyboardInterrupt:
        print(f"pam-ros replay: interrupted; finished bags and {args.out}/summary.txt are kept", file=sys.stderr)
        return 130
    print(format_fleet_summary(report))
    if report.interrupted:
        return 130
    return 0 if report.complete else 1
