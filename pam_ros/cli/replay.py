"""`pam-ros replay` and `pam-ros demo`: argument parsing and printing only.

The work is done by pam_ros.replay (bag in, outputs out) driving the engine's PerceptionPipeline
in semantics_mode="sync" (deterministic); the demo is a replay of the bag shipped in demo/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pam_ros.cli import compare
from pam_ros.cli.options import MAX_BATCH_HELP, add_model_arguments, max_batch_argument
from pam_ros.cli.regions import add_discover_arguments, discover_config
from pam_ros.cli.replay_settings import depth_settings, model_spec, pipeline_config
from pam_ros.messages import MASK_ENCODINGS

DEFAULT_TASKS = ("explain", "caption")
DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"
DEMO_BAG = DEMO_DIR / "demo_bag"
DEMO_PROMPTS = DEMO_DIR / "prompts.yaml"
TINY_MODEL_NOTICE = """\
NOTE: this ran the built-in tiny model (test/fixtures/pam_tiny). It has RANDOM weights: its masks
follow the prompts only loosely and its words are meaningless. For real results fetch real weights
and rerun the demo with them:

    pam-ros download PAM-1.5B
    pam-ros download sam2.1-hiera-large
    pam-ros demo --model PAM-1.5B

(PAM-3B works the same way: pam-ros download PAM-3B; pam-ros demo --model PAM-3B)"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `replay` and `demo` sub-commands."""
    replay = subparsers.add_parser(
        "replay", help="run a rosbag2 bag (MCAP or sqlite3) through the perception pipeline",
        description="Replay every image of a rosbag2 bag through SAM 2.1 tracking + PAM semantics, in "
                    "order and deterministically. Writes OUT/bag (MCAP: input images, /objects, /overlay), "
                    "OUT/frames.jsonl (one line per input image) and OUT/summary.txt.")
    replay.add_argument("bag", type=Path, nargs="+",
                        help="bag directory (with metadata.yaml), or a .mcap / .db3 file; several bags: each "
                             "one's outputs go to OUT/<bag name>/, with OUT/summary.txt + summary.json over all")
    replay.add_argument("--out", type=Path, required=True, help="output directory")
    replay.add_argument("--image-topic", default=None,
                        help="sensor_msgs/Image or CompressedImage topic (default: the only image topic)")
    replay.add_argument("--prompts", type=Path, default=None,
                        help="prompts YAML file (see README: 'prompts:' list with frame or stamp_ns, "
                             "object_id, box, points + labels, tasks, action); with several bags a FILE "
                             "applies to each bag, a folder holds <bag name>.yaml per bag")
    replay.add_argument("--overwrite", action="store_true", help="replace earlier replay outputs in OUT")
    replay.add_argument("--overlay-pngs", action="store_true", help="also save OUT/overlays/frame_NNNNN.png")
    replay.add_argument("--depth-topic", default=None, metavar="TOPIC",
                        help="aligned depth (sensor_msgs/Image 16UC1 or 32FC1, same size and stamps as the image "
                             "topic): each object gets its 3-D geometry in /objects and frames.jsonl")
    replay.add_argument("--camera-info-topic", default=None, metavar="TOPIC",
                        help="CameraInfo of the depth images (default: the bag's only CameraInfo topic)")
    replay.add_argument("--depth-scale", type=float, default=0.001, metavar="M",
                        help="metres per 16UC1 depth unit (default 0.001: millimetres)")
    replay.add_argument("--depth-slop-ms", type=float, default=0.0, metavar="MS",
                        help="largest stamp difference between an image and its depth image (default 0: exact)")
    replay.add_argument("--grasp-radius-m", type=float, default=0.02, metavar="M",
                        help="the approach is the normal of the points within M of the grasp point (default 0.02)")
    replay.add_argument("--grasp-slab-m", type=float, default=0.01, metavar="M",
                        help="the grasp width is measured over the points within M of the grasp point along the "
                             "object's long axis (default 0.01)")
    replay.add_argument("--camera", action="append", default=[], metavar="NAME=TOPIC[,DEPTH,INFO]",
                        help="replay several cameras of the bag over one model (repeat per camera): its image "
                             "topic, optionally its aligned depth and CameraInfo topics; outputs in OUT/NAME/")
    _add_engine_arguments(replay, default_model="")
    fleet = replay.add_argument_group("several bags (see README: 'Many bags at once')")
    fleet.add_argument("--workers", type=int, default=1, metavar="N",
                       help="1 (default): bags one after another in this process; N > 1: N Ray workers, each "
                            "loading the model once and taking the next bag when free")
    fleet.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="join this running Ray cluster (e.g. HEAD_IP:6379, after `ray start --head`); "
                            "default: start a local Ray instance for this command and stop it after")
    fleet.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                       help="GPUs reserved per Ray worker (default 1 when --device is CUDA, else 0)")
    replay.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="compare the outputs with this earlier replay right after the replay, as `pam-ros "
                             "compare DIR OUT` does (its options below, its exit status)")
    compare.add_check_arguments(replay)
    replay.set_defaults(run=run)

    demo = subparsers.add_parser(
        "demo", help="replay the built-in demo bag (default: the built-in tiny random-weight model)",
        description="Replay demo/demo_bag with demo/prompts.yaml and write the output bag, overlay PNGs, "
                    "an animated GIF and a summary to OUT (default demo_out/).")
    demo.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory (default: demo_out)")
    demo.add_argument("--bag", type=Path, default=DEMO_BAG, help=argparse.SUPPRESS)
    demo.add_argument("--prompts", type=Path, default=DEMO_PROMPTS, help=argparse.SUPPRESS)
    _add_engine_arguments(demo, default_model="tiny")
    demo.set_defaults(run=run)


def _add_engine_arguments(parser: argparse.ArgumentParser, default_model: str) -> None:
    if default_model == "tiny":
        size_help = ("SAM 2 input size, a multiple of 64 (default: 256 for the built-in tiny model, whose output "
                     "is meaningless anyway, so the demo runs in seconds on a CPU; 0, the config's 1024 as PAM "
                     "was trained, for any other model)")
    else:
        size_help = ""
    add_model_arguments(parser, default_model=default_model or "tiny", image_size_help=size_help)
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), metavar="TASK",
                        help=f"semantic tasks run for each new object (default: {' '.join(DEFAULT_TASKS)})")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="generated tokens per task (default 48)")
    parser.add_argument("--max-batch", type=max_batch_argument, default=8, metavar="N", help=MAX_BATCH_HELP)
    parser.add_argument("--mask-encoding", default="roi", choices=MASK_ENCODINGS,
                        help="masks in /objects: roi-sized (default), full-frame, or none")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_discover_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run `replay` or `demo`; returns the process exit code."""
    if args.command == "demo":
        return _run_demo(args)
    if args.baseline is None:
        return _run_bags(args)
    problem = compare.baseline_problem(args)  # before the replay, which may take hours
    if problem:
        print(f"pam-ros replay: error: {problem}", file=sys.stderr)
        return 2
    code = _run_bags(args)
    if code not in (0, 1):  # unusable inputs or interrupted: nothing to compare
        return code
    return max(code, compare.run_comparison(args.baseline, args.out, args, command="replay"))


def _run_bags(args: argparse.Namespace) -> int:
    if args.camera:
        from pam_ros.cli.replay_cameras import run_cameras_command

        return run_cameras_command(args)
    if len(args.bag) > 1:
        from pam_ros.cli.fleet import run_fleet_command

        return run_fleet_command(args)
    from pam_ros.replay.fleet_plan import prompt_file_for, unique_names

    if args.workers != 1 or args.ray_address:
        print("note: one bag is replayed in this process (--workers and --ray-address are for several bags)",
              file=sys.stderr)
    args.bag = args.bag[0]
    if args.prompts is not None and args.prompts.is_dir():  # a folder of <bag name>.yaml
        folder, args.prompts = args.prompts, prompt_file_for(args.prompts, unique_names([args.bag])[0])
        if args.prompts is None:
            print(f"warning: no {unique_names([args.bag])[0]}.yaml in {folder}: only the bag's recorded prompts "
                  f"are used", file=sys.stderr)
    return _run_replay(args)


def _load_pipeline(args: argparse.Namespace):
    from pam_ros.engine.pipeline import PerceptionPipeline

    spec = model_spec(args).validate()
    config = pipeline_config(args)
    size = f", SAM 2 input {spec.image_size} px" if spec.image_size else ""
    print(f"loading model {spec.label()} on {spec.device} ({spec.dtype}{size}) ...",
          file=sys.stderr)
    pipeline = PerceptionPipeline.load(spec, config)
    print(f"image encoder: {pipeline.describe_setup().image_encoder}", file=sys.stderr)
    return spec, pipeline


def _check_inputs(args: argparse.Namespace, overwrite: bool) -> str:
    """Check the bag, topic, prompts file and output directory before loading a model (which may
    take a minute): the error text, or "" when all is well."""
    from pam_ros.errors import DepthError, InputError, ReplayError
    from pam_ros.replay.bag import BagInput
    from pam_ros.replay.outputs import check_out_dir
    from pam_ros.replay.prompts import load_prompt_file, prompts_for_camera

    try:
        with BagInput(args.bag, getattr(args, "image_topic", None), depth_topic=getattr(args, "depth_topic", None),
                      camera_info_topic=getattr(args, "camera_info_topic", None)):
            pass
        if getattr(args, "depth_topic", None):
            depth_settings(args)
            if not args.depth_slop_ms >= 0:
                return f"--depth-slop-ms must be >= 0, got {args.depth_slop_ms}"
        if args.prompts:
            prompts_for_camera(load_prompt_file(args.prompts), "")  # no entry may name a camera here
        check_out_dir(args.out, overwrite)
        discover_config(args)
    except (ReplayError, InputError, DepthError) as err:
        return str(err)
    return ""


def _run_replay(args: argparse.Namespace, *, overlay_pngs: bool | None = None, overwrite: bool | None = None):
    overwrite = args.overwrite if overwrite is None else overwrite
    problem = _check_inputs(args, overwrite)
    if problem:
        print(f"pam-ros {args.command}: error: {problem}", file=sys.stderr)
        return 2

    from pam_ros.errors import BagReadError, PamError, ReplayError
    from pam_ros.replay.runner import format_summary, run_replay

    try:
        spec, pipeline = _load_pipeline(args)
    except PamError as err:
        print(f"pam-ros {args.command}: cannot load the model: {err}", file=sys.stderr)
        return 2
    model_name = spec.name or f"{spec.pam_checkpoint} + {spec.sam2_checkpoint}"
    if spec.name == "tiny" and args.command == "replay":
        print("note: using the built-in tiny model (random weights: its words are meaningless); for real "
              "results: pam-ros download PAM-1.5B && pam-ros download sam2.1-hiera-large, then --model PAM-1.5B",
              file=sys.stderr)
    try:
        report = run_replay(args.bag, args.out, pipeline, image_topic=getattr(args, "image_topic", None),
                            prompt_file=args.prompts,
                            overwrite=overwrite,
                            overlay_pngs=args.overlay_pngs if overlay_pngs is None else overlay_pngs,
                            mask_encoding=args.mask_encoding, progress=not args.no_progress,
                            model_name=model_name, depth_topic=getattr(args, "depth_topic", None),
                            camera_info_topic=getattr(args, "camera_info_topic", None))
    except BagReadError as err:
        report = getattr(err, "report", None)
        if report is not None:
            print(format_summary(report))
        print(f"pam-ros {args.command}: error: {err}\nThe outputs in {args.out} hold the frames read before "
              f"the damage (closed properly, readable).", file=sys.stderr)
        return 1
    except (ReplayError, PamError) as err:
        print(f"pam-ros {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pam-ros {args.command}: interrupted; partial outputs are in {args.out}", file=sys.stderr)
        return 130
    finally:
        pipeline.close()
    print(format_summary(report))
    return 0 if report.complete else 1


def _run_demo(args: argparse.Namespace) -> int:
    from pam_ros.replay.demo import write_gif

    if not args.bag.exists():
        print(f"pam-ros demo: error: the demo bag {args.bag} is missing (the demo runs from a pam_ros "
              f"checkout; regenerate it with: python scripts/make_demo_bag.py)", file=sys.stderr)
        return 2
    args.image_topic = None
    code = _run_replay(args, overlay_pngs=True, overwrite=True)
    if code != 0:
        return code
    gif = write_gif(args.out)
    print(f"  animated overlay  {gif}")
    if (args.model or "tiny") == "tiny" and not any([args.sam2_config, args.sam2_checkpoint, args.pam]):
        print()
        print(TINY_MODEL_NOTICE)
        with open(args.out / "summary.txt", "a", encoding="utf-8") as summary:
            summary.write("\n" + TINY_MODEL_NOTICE + "\n")
    return 0

