"""`pam-ros replay BAG --camera NAME=TOPIC[,DEPTH,INFO] ...`: several cameras of one bag over one model
(replay/cameras.py), argument checks and printing only. Outputs: OUT/<camera>/ per camera; with several
bags, a fleet replay (cli/fleet.py) writing OUT/<bag>/<camera>/."""
from __future__ import annotations

import argparse
import sys

from pam_ros.cli.replay_settings import depth_settings, model_spec, pipeline_config


def run_cameras_command(args: argparse.Namespace) -> int:
    """0 when every camera's replay is complete, 1 when one is not, 2 for unusable inputs (nothing written)."""
    from pam_ros.engine.host import PerceptionHost, check_camera_names
    from pam_ros.errors import PamError
    from pam_ros.replay.bag import BagInput
    from pam_ros.replay.cameras import parse_camera
    from pam_ros.replay.outputs import check_out_dir
    from pam_ros.replay.prompts import load_prompt_file, prompts_for_camera
    from pam_ros.replay.runner import format_summary

    def fail(message: str) -> int:
        print(f"pam-ros replay: error: {message}", file=sys.stderr)
        return 2

    if args.image_topic or args.depth_topic or args.camera_info_topic:
        return fail("with --camera, give each camera's topics there, not --image-topic / --depth-topic / "
                    "--camera-info-topic")
    if len(args.bag) > 1:  # a fleet: each bag's cameras in OUT/<bag>/<camera>/ (checked per bag by the plan)
        from pam_ros.cli.fleet import run_fleet_command

        try:
            cameras = [parse_camera(text) for text in args.camera]
            check_camera_names([camera.name for camera in cameras])
        except PamError as err:
            return fail(str(err))
        return run_fleet_command(args, cameras=tuple(cameras))
    bag = args.bag[0]
    try:
        cameras = [parse_camera(text) for text in args.camera]
        names = check_camera_names([camera.name for camera in cameras])
        for camera in cameras:
            with BagInput(bag, camera.image_topic, depth_topic=camera.depth_topic or None,
                          camera_info_topic=camera.camera_info_topic or None):
                pass
        if args.prompts:
            prompts_for_camera(load_prompt_file(args.prompts), names[0], names)
        for name in names:
            check_out_dir(args.out / name, args.overwrite)
        config = pipeline_config(args)
        if any(camera.depth_topic for camera in cameras):
            config.depth, config.depth_slop_ms = depth_settings(args), args.depth_slop_ms
        config.validate()
        spec = model_spec(args).validate()
    except PamError as err:
        return fail(str(err))
    print(f"loading model {spec.label()} on {spec.device} ({spec.dtype}) once for {len(names)} cameras: "
          f"{', '.join(names)} ...", file=sys.stderr)
    try:
        host = PerceptionHost.load(spec, names, config)
    except PamError as err:
        return fail(f"cannot load the model: {err}")
    from pam_ros.replay.cameras import run_cameras_replay

    model_name = spec.name or f"{spec.pam_checkpoint} + {spec.sam2_checkpoint}"
    try:
        reports = run_cameras_replay(bag, args.out, host, cameras, prompt_file=args.prompts,
                                     overwrite=args.overwrite, overlay_pngs=args.overlay_pngs,
                                     mask_encoding=args.mask_encoding, progress=not args.no_progress,
                                     model_name=model_name)
    except PamError as err:
        return fail(str(err))
    except KeyboardInterrupt:
        print(f"pam-ros replay: interrupted; partial outputs are in {args.out}", file=sys.stderr)
        return 130
    finally:
        host.close()
    for name, report in reports.items():
        print(f"== camera {name}: {args.out / name}")
        print(format_summary(report))
    return 0 if all(report.complete for report in reports.values()) else 1
