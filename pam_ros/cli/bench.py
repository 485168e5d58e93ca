"""`pam-ros bench ...`: the benchmarks' command-line front end (parsing and printing only).

torch and the models load only when a bench runs, so `pam-ros --help` stays fast.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pam_ros.cli.options import add_device_arguments, add_encoder_arguments, add_summary_argument, max_batch_argument


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
    track.add_argument("--size", choices=("tiny", "real"), default=None,
                       help="shorthand: tiny = sam2.1_hiera_t at 256, real = sam2.1_hiera_l at 1024 (PAM's)")
    track.add_argument("--config", default=None, help="SAM 2.1 config name or YAML path (default sam2.1_hiera_t)")
    track.add_argument("--checkpoint", default=None, help="SAM 2 .pt (default: random weights, timing only)")
    add_device_arguments(track, default_device="auto", auto_dtype=False)
    track.add_argument("--image-size", type=int, default=None,
                       help="model input size (default 256; PAM uses 1024; smaller is faster on CPU)")
    track.add_argument("--frames", type=int, default=20, help="frames per comparison run")
    track.add_argument("--objects", default="1,4,16", help="comma-separated object counts")
    track.add_argument("--width", type=int, default=64)
    track.add_argument("--height", type=int, default=48)
    track.add_argument("--long-frames", default="100",
                       help="frame counts after which the long stream's state is printed, e.g. 100,10000 for the "
                            "bounded-memory check over 10,000 frames (about 45 minutes on a 2-core CPU); "
                            "default 100; '' to skip")
    track.add_argument("--no-upstream", action="store_true", help="skip the SAM2VideoPredictor runs")
    add_summary_argument(track)
    track.add_argument("--warmup-frames", type=int, default=None, metavar="N",
                       help="untimed frames first (default: 10 with --compile or --image-encoder onnxruntime, "
                            "whose first frames compile / build TensorRT engines; else 0)")
    add_encoder_arguments(track)
    track.set_defaults(run=run_track)

    semantics = kinds.add_parser(
        "semantics",
        help="semantics jobs one at a time vs in one batched generation",
        description="N objects x T tasks answered one generation at a time and then in one batch, by a "
                    "random-weight PAM at the official shapes (no download). Prints wall times, when the last "
                    "object's first answer is complete, tokens/s, peak memory, the shared-prefix prefill, and as "
                    "last line 'semantics: serial X s, batched Y s, ratio Y/X = R'.",
    )
    semantics.add_argument("--size", choices=("tiny", "1.5B", "3B"), default="tiny",
                           help="LLM shapes: the test fixture's tiny one, Qwen2.5-1.5B or -3B (PAM-1.5B/3B)")
    semantics.add_argument("--objects", type=int, default=8, help="objects (default 8)")
    semantics.add_argument("--tasks", nargs="+", default=["explain", "caption"], metavar="TASK",
                           help="image tasks per object (default: explain caption)")
    semantics.add_argument("--max-new-tokens", type=int, default=32, help="tokens per answer (default 32)")
    semantics.add_argument("--max-batch", type=max_batch_argument, default=8, metavar="N",
                           help="objects per batched generation in the batched run, as the node's max_batch "
                                "(default 8)")
    add_device_arguments(semantics, default_device="auto", auto_dtype=False)
    add_summary_argument(semantics)
    semantics.set_defaults(run=run_semantics)

    cameras = kinds.add_parser(
        "cameras",
        help="N cameras in one process (one model) vs N single-camera processes: memory and frames/s",
        description="Peak resident memory and total frames/s of N cameras served by one process (one model in "
                    "memory, engine/host.py) against N single-camera processes running at once (a model each), "
                    "every row in fresh processes. Rows that would not fit in the available memory are skipped. "
                    "Last line: 'cameras: 2 in one process X MiB, 2 processes Y MiB, ratio X/Y = R'.",
    )
    cameras.add_argument("--size", choices=("tiny", "1.5B", "3B"), default="tiny",
                         help="tiny: the test fixture; 1.5B / 3B: random weights at PAM's shapes (SAM 2.1-L at "
                              "1024 px + Qwen2.5), no download (default tiny)")
    cameras.add_argument("--cameras", default="1,2,4", help="comma-separated camera counts (default 1,2,4)")
    cameras.add_argument("--frames", type=int, default=4, help="frames per camera (default 4)")
    cameras.set_defaults(run=run_cameras)

    encoder = kinds.add_parser(
        "encoder",
        help="SAM 2 image encoder: torch vs ONNX Runtime, ms per frame",
        description="Milliseconds per frame of SAM 2's image encoder in torch and in ONNX Runtime (each execution "
                    "provider that fits the device: TensorRT, CUDA, CPU), measured in one run on the same weights "
                    "and input, with their ratio and the thread counts. Random weights unless --checkpoint is given "
                    "(timing depends on shapes only). Numbers are printed, never asserted.",
    )
    encoder.add_argument("--size", choices=("tiny", "real"), default="tiny",
                         help="tiny: SAM 2.1 hiera-tiny; real: hiera-large, the SAM 2 PAM uses (default tiny)")
    encoder.add_argument("--config", default=None, help="SAM 2.1 config name or YAML path (overrides --size)")
    encoder.add_argument("--checkpoint", default=None, help="SAM 2 .pt (default: random weights)")
    encoder.add_argument("--image-size", type=int, default=1024, help="model input size (default 1024, as PAM)")
    add_device_arguments(encoder, default_device="auto", auto_dtype=False,
                         dtype_help="torch autocast dtype; TensorRT runs in fp16 when this is not float32")
    encoder.add_argument("--runs", type=int, default=5, help="timed calls per row (median printed)")
    encoder.add_argument("--warmup", type=int, default=1, help="untimed calls before each row")
    encoder.add_argument("--threads", type=int, default=0,
                         help="ONNX Runtime intra-op threads (default: torch's thread count, for a fair comparison)")
    encoder.add_argument("--compile", action="store_true", help="also time the torch.compile'd encoder")
    encoder.add_argument("--providers", default="",
                         help="comma-separated ONNX Runtime providers to time (default: all that fit the device)")
    add_summary_argument(encoder)
    encoder.set_defaults(run=run_encoder)
    add_startup_parser(kinds)
    return bench


def add_startup_parser(kinds) -> None:
    startup = kinds.add_parser(
        "startup",
        help="cold start in fresh processes: imports, load, first mask, first answer, peak RSS; ours vs naive",
        description="Writes a random-weight PAM + SAM 2.1 checkpoint at the official shapes once (cached under "
                    "$PAM_ROS_BENCH_CACHE, else $XDG_CACHE_HOME/pam_ros/bench or ~/.cache/pam_ros/bench), then "
                    "starts fresh processes that load it our way (meta device, checkpoints assigned) and the "
                    "naive way (random init, then copy) and time each to its first mask (one box) and first "
                    "answer (explain, 16 tokens). Last line: 'startup: first answer X s, naive Y s, ratio X/Y = R'.",
    )
    startup.add_argument("--size", choices=("tiny", "1.5B", "3B"), default="tiny",
                         help="tiny: the fixture's shapes; 1.5B / 3B: Qwen2.5-1.5B / -3B + SAM 2.1 hiera-large")
    startup.add_argument("--repeats", type=int, default=1,
                         help="rounds of (ours, naive) processes, mirrored order; the best of each side counts")
    add_summary_argument(startup)
    startup.set_defaults(run=run_startup)


def run_startup(args: argparse.Namespace) -> int:
    """Entry point for `pam-ros bench startup`."""
    from pam_ros.bench.startup import print_startup, run_startup_bench

    if args.repeats < 1:
        raise SystemExit("pam-ros bench startup: --repeats must be at least 1")
    result = run_startup_bench(args.size, repeats=args.repeats)
    print_startup(result, args.size)
    append_summary(args.summary, [
        ("startup", args.size, "first answer s (ours)", f"{result.fast['first_answer']:.2f}"),
        ("startup", args.size, "first answer s (naive)", f"{result.naive['first_answer']:.2f}"),
        ("startup", args.size, "ours / naive", f"{result.ratio:.3f}"),
    ])
    return 0


def append_summary(path: Path | None, lines: list[tuple[str, ...]]) -> None:
    """Tab-separated lines: bench, setting, what, value (scripts/gpu_check.sh prints them as one table)."""
    if path is None:
        return
    with open(path, "a", encoding="utf-8") as out:
        for fields in lines:
            out.write("\t".join(fields) + "\n")


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _seed_random_weights(checkpoint: str | None) -> None:
    """Random weights drawn from a fixed seed: the same each run, so an ONNX export of them (and its
    TensorRT engines) is found again in the cache, keyed by the weights' hash."""
    if checkpoint is None:
        import torch

        torch.manual_seed(0)


def run_track(args: argparse.Namespace) -> int:
    """Entry point for `pam-ros bench track`."""
    from pam_ros.bench.shapes import SAM2_SHAPES
    from pam_ros.bench.track import run_track_bench, warm_up
    from pam_ros.model.pam import configure_backbone
    from pam_ros.model.sam2_backbone import Sam2Backbone
    from pam_ros.model.tasks import torch_dtype

    config, image_size = SAM2_SHAPES[args.size or "tiny"]
    args.config = args.config or config
    overrides = {"image_size": args.image_size or image_size}
    _seed_random_weights(args.checkpoint)
    backbone = Sam2Backbone.from_config(
        args.config, args.checkpoint, device=_device(args.device), dtype=torch_dtype(args.dtype), overrides=overrides,
    )
    configure_backbone(backbone, args.image_encoder, args.image_encoder_onnx or None, args.compile)
    encoder = backbone.image_encoder
    print(f"# image encoder: {encoder.kind} on {encoder.provider}")
    warmup = args.warmup_frames
    if warmup is None:
        warmup = 10 if args.compile or args.image_encoder != "torch" else 0
    if warmup:
        seconds = warm_up(backbone, warmup, width=args.width, height=args.height)
        print(f"# warm-up: {warmup} untimed frames in {seconds:.1f} s")
    rows, _ = run_track_bench(
        backbone,
        num_frames=args.frames,
        num_objects=_int_list(args.objects),
        width=args.width,
        height=args.height,
        long_frames=_int_list(args.long_frames),
        compare_upstream=not args.no_upstream,
    )
    setting = (f"{args.config} {backbone.image_size}px {backbone.device} {args.dtype} encoder={encoder.kind}"
               f"{' compile' if args.compile else ''}")
    append_summary(args.summary, [("track", setting, f"{row.objects} object(s) ms/frame", f"{1000 * row.seconds_per_frame:.1f}")
                                  for row in rows if row.tracker == "streaming"])
    return 0


def run_cameras(args: argparse.Namespace) -> int:
    """Entry point for `pam-ros bench cameras`."""
    from pam_ros.bench.cameras import run_cameras_bench, summary_line

    counts = _int_list(args.cameras)
    if not counts or min(counts) < 1 or args.frames < 1:
        print("pam-ros bench cameras: error: --cameras needs counts >= 1 and --frames >= 1", file=sys.stderr)
        return 2
    rows = run_cameras_bench(args.size, counts, args.frames)
    print(summary_line(rows, 2 if 2 in counts else max(counts)))
    return 0


def run_encoder(args: argparse.Namespace) -> int:
    """Entry point for `pam-ros bench encoder`."""
    from pam_ros.bench.encoder import SIZES, run_encoder_bench
    from pam_ros.errors import PamError
    from pam_ros.model.sam2_backbone import Sam2Backbone
    from pam_ros.model.tasks import torch_dtype

    config = args.config or SIZES[args.size]
    _seed_random_weights(args.checkpoint)
    try:
        backbone = Sam2Backbone.from_config(config, args.checkpoint, device=_device(args.device),
                                            dtype=torch_dtype(args.dtype), overrides={"image_size": args.image_size})
        weights = args.checkpoint or "random weights"
        rows = run_encoder_bench(backbone, name=f"{config} ({weights})", runs=args.runs, warmup=args.warmup,
                                 compile_too=args.compile, threads=args.threads,
                                 providers=[p for p in args.providers.split(",") if p.strip()] or None)
    except PamError as exc:
        print(f"pam-ros bench encoder: error: {exc}")
        return 2
    setting = f"{config} {backbone.image_size}px {backbone.device} {args.dtype}"
    append_summary(args.summary, [("encoder", setting, f"{row.encoder} {row.provider} ms/frame", f"{row.ms_per_frame:.1f}")
                                  for row in rows])
    return 0


def run_semantics(args: argparse.Namespace) -> int:
    """Entry point for `pam-ros bench semantics`."""
    from pam_ros.bench.semantics import run_semantics_bench
    from pam_ros.bench.shapes import random_pam
    from pam_ros.model.tasks import torch_dtype

    if args.max_new_tokens < 1:
        raise SystemExit("pam-ros bench semantics: --max-new-tokens must be at least 1")
    model = random_pam(args.size, device=_device(args.device), dtype=torch_dtype(args.dtype))
    result = run_semantics_bench(model, objects=args.objects, tasks=args.tasks, max_new_tokens=args.max_new_tokens,
                                 max_batch=args.max_batch)
    setting = (f"{args.size} {args.dtype}, {args.objects} objects x {'+'.join(args.tasks)} x "
               f"{args.max_new_tokens} tokens")
    append_summary(args.summary, [
        ("semantics", setting, "serial s", f"{result.serial.seconds:.2f}"),
        ("semantics", setting, "batched s", f"{result.batched.seconds:.2f}"),
        ("semantics", setting, "batched / serial", f"{result.ratio:.3f}"),
        ("semantics", setting, "batched / one object alone", f"{result.scene_ratio:.2f}"),
        ("semantics", setting, "shared prefix prefill / 3 separate", f"{result.prefill_ratio:.3f}"),
    ])
    return 0
