"""`pam-ros bench ...`: the benchmarks' command-line front end (parsing and printing only).

torch and the models load only when a bench runs, so `pam-ros --help` stays fast.
"""
from __future__ import annotations

import argparse

from pam_ros.model.tasks import DTYPE_NAMES


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `bench` with its subcommands to the `pam-ros` subparsers."""
    bench = subparsers.add_parser("bench", help="benchmarks (printed numbers, not tests)")
    kinds = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    track = kinds.add_parser(
        "track",
        help="streaming tracker vs SAM 2 video predictor: time and memory per frame",
        description="Per-frame time and memory of the streaming tracker vs the upstream sam2 SAM2VideoPredictor "
                    "on the same model and synthetic frames, then a long stream showing bounded memory. "
                    "Numbers are printed, never asserted.",
    )
    track.add_argument("--config", default="sam2.1_hiera_t", help="SAM 2.1 config name or YAML path")
    track.add_argument("--checkpoint", default=None, help="SAM 2 .pt (default: random weights, timing only)")
    track.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    track.add_argument("--dtype", choices=DTYPE_NAMES, default="float32")
    track.add_argument("--image-size", type=int, default=256,
                       help="model input size (PAM uses 1024; smaller is faster on CPU)")
    track.add_argument("--frames", type=int, default=20, help="frames per comparison run")
    track.add_argument("--objects", default="1,4,16", help="comma-separated object counts")
    track.add_argument("--width", type=int, default=64)
    track.add_argument("--height", type=int, default=48)
    track.add_argument("--long-frames", default="100,10000",
                       help="frame counts after which the long stream's state is printed ('' to skip)")
    track.add_argument("--no-upstream", action="store_true", help="skip the SAM2VideoPredictor runs")
    track.set_defaults(run=run_track)
    return bench


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_track(args: argparse.Namespace) -> int:
    """Entry point for `pam-ros bench track`."""
    from pam_ros.bench.track import run_track_bench
    from pam_ros.model.sam2_backbone import Sam2Backbone
    from pam_ros.model.tasks import torch_dtype

    overrides = {"image_size": args.image_size} if args.image_size else None
    backbone = Sam2Backbone.from_config(
        args.config, args.checkpoint, device=_device(args.device), dtype=torch_dtype(args.dtype), overrides=overrides
    )
    run_track_bench(
        backbone,
        num_frames=args.frames,
        num_objects=_int_list(args.objects),
        width=args.width,
        height=args.height,
        long_frames=_int_list(args.long_frames),
        compare_upstream=not args.no_upstream,
    )
    return 0
