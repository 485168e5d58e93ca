"""`pam-ros export-onnx`: SAM 2's image encoder to an ONNX file (the --image-encoder options that use it
are in cli_options). Front end only: parsing and printing; the export itself is pam_ros.model.image_encoder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    export = subparsers.add_parser(
        "export-onnx", help="export SAM 2's image encoder to ONNX (for ONNX Runtime / TensorRT)",
        description="Write SAM 2.1's image encoder (Hiera trunk + FPN neck + the mask decoder's high-res "
                    "convs: the three feature levels the tracker and PAM read) as ONNX, opset 18, with the "
                    "checkpoint's sha256, the input size and the sam2 version embedded. Before it exits, one "
                    "random image runs through ONNX Runtime and torch; a difference over 1e-3 (float32) is "
                    "an error. Use the file with --image-encoder onnxruntime --image-encoder-onnx FILE or "
                    "the node's image_encoder_onnx parameter.")
    source = export.add_argument_group("model (a downloaded model's name, or a SAM 2.1 config + checkpoint)")
    source.add_argument("--model", default="", help="downloaded model name, e.g. PAM-1.5B, or 'tiny'")
    source.add_argument("--sam2-config", default="", help="SAM 2.1 config name or YAML path")
    source.add_argument("--sam2-checkpoint", default="", help="SAM 2.1 .pt checkpoint")
    export.add_argument("--image-size", type=int, default=0, metavar="N",
                        help="model input size, a multiple of 64 (default 0: the config's, 1024)")
    export.add_argument("--fp16", action="store_true",
                        help="export in float16 (self-check limit 5e-2); TensorRT can also run a float32 "
                             "export in fp16 on its own")
    export.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    export.set_defaults(run=run_export)
    return export


def _sam2_source(args: argparse.Namespace) -> tuple[str, str]:
    from pam_ros.errors import InputError

    explicit = args.sam2_config or args.sam2_checkpoint
    if args.model and explicit:
        raise InputError("give either --model NAME or --sam2-config and --sam2-checkpoint, not both")
    if args.model:
        from pam_ros.model.registry import resolve_model

        paths = resolve_model(args.model)
        return str(paths.sam2_config), str(paths.sam2_checkpoint)
    if not (args.sam2_config and args.sam2_checkpoint):
        raise InputError("no model: give --model NAME, or --sam2-config CFG and --sam2-checkpoint PT")
    return args.sam2_config, args.sam2_checkpoint


def run_export(args: argparse.Namespace) -> int:
    from pam_ros.errors import PamError

    try:
        if args.image_size and (args.image_size < 64 or args.image_size % 64):
            from pam_ros.errors import InputError

            raise InputError(f"--image-size must be a multiple of 64, got {args.image_size}")
        config, checkpoint = _sam2_source(args)
        from pam_ros.model.image_encoder import export_image_encoder
        from pam_ros.model.sam2_backbone import Sam2Backbone

        overrides = {"image_size": args.image_size} if args.image_size else None
        backbone = Sam2Backbone.from_config(config, checkpoint, overrides=overrides)
        print(f"exporting the image encoder of {config} ({checkpoint}) at input {backbone.image_size} ...",
              file=sys.stderr)
        export_image_encoder(backbone, args.out, fp16=args.fp16, say=print)
    except PamError as exc:
        print(f"pam-ros export-onnx: error: {exc}", file=sys.stderr)
        return 2
    return 0
