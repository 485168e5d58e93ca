"""The `pam-ros` argument groups that several commands share: which model, on which device, which encoder.

One group, so `describe`, `replay`, `demo` and the benches spell and check model selection alike
(the rule itself is pam_ros.model.selection.ModelSpec). Imports no torch.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pam_ros.model.tasks import DTYPE_NAMES, ENCODER_KINDS


def add_model_arguments(parser: argparse.ArgumentParser, *, default_model: str = "",
                        image_size_help: str = "") -> argparse._ArgumentGroup:
    """--model | --sam2-config --sam2-checkpoint --pam, and --device, --dtype, --image-size."""
    group = parser.add_argument_group("model (a downloaded model's name, or the three checkpoint paths)")
    default_note = f"; default {default_model}" if default_model else ""
    group.add_argument("--model", metavar="NAME", default="",
                       help="downloaded model, e.g. PAM-1.5B or PAM-3B (`pam-ros download NAME`), or 'tiny' "
                            "(built-in random-weight test model)" + default_note)
    group.add_argument("--sam2-config", metavar="CFG", default="",
                       help="SAM 2.1 config name (sam2.1_hiera_l) or YAML path")
    group.add_argument("--sam2-checkpoint", metavar="PT", default="", help="SAM 2.1 checkpoint (.pt)")
    group.add_argument("--pam", metavar="DIR", default="", help="PAM checkpoint folder (Hugging Face layout)")
    add_device_arguments(group)
    group.add_argument("--image-size", type=int, default=None, metavar="N",
                       help=image_size_help or "SAM 2 input size, a multiple of 64 (default: the config's, 1024 "
                                               "as PAM was trained; smaller is faster but no longer the "
                                               "official computation)")
    add_encoder_arguments(parser)
    return group


def add_device_arguments(parser, *, default_device: str = "cpu", auto_dtype: bool = True,
                         dtype_help: str = "") -> None:
    """--device and --dtype, as every command spells them (a bench defaults to auto: the GPU when there is one)."""
    parser.add_argument("--device", default=default_device, help=f"cpu, cuda, cuda:N or auto (default {default_device}"
                                                                 + ("; auto = cuda when available)" if default_device
                                                                    == "auto" else ")"))
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES + (("auto",) if auto_dtype else ()),
                        help=dtype_help or ("compute dtype (default float32" +
                                            ("; auto = bfloat16 on CUDA)" if auto_dtype else ")")))


def add_summary_argument(parser) -> None:
    """--summary TSV: the benches' tab-separated result lines, which scripts/gpu_check.sh gathers into one table."""
    parser.add_argument("--summary", type=Path, default=None, metavar="TSV",
                        help="also append tab-separated result lines to TSV (scripts/gpu_check.sh)")


def max_batch_argument(text: str) -> int:
    """argparse type of --max-batch: semantics jobs per batched generation, an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (1 = one object at a time), got {value}")
    return value


MAX_BATCH_HELP = ("objects (each with its tasks) whose semantics share one batched generation (default 8; "
                  "1 = one at a time)")




def add_encoder_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--image-encoder, --image-encoder-onnx and --compile (model/image_encoder.py; ModelSpec's fields)."""
    group = parser.add_argument_group("SAM 2 image encoder")
    group.add_argument("--image-encoder", choices=ENCODER_KINDS, default="torch",
                       help="run SAM 2's image encoder in torch (default) or ONNX Runtime (TensorRT > CUDA > CPU "
                            "provider, whichever the installed onnxruntime offers)")
    group.add_argument("--image-encoder-onnx", default="", metavar="FILE",
                       help="the .onnx written by `pam-ros export-onnx` for these weights and input size "
                            "(default: exported once into ~/.cache/pam_ros and reused)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile SAM 2's image encoder and memory attention (for CUDA; slow first frames)")
    return group


def model_spec_from_args(args: argparse.Namespace, *, default_model: str = "", default_image_size: int = 0):
    """The ModelSpec these arguments select (not yet validated): --model, else the three paths, else
    the command's default model."""
    from pam_ros.model.selection import ModelSpec

    uses_paths = any([args.sam2_config, args.sam2_checkpoint, args.pam])
    name = args.model or ("" if uses_paths else default_model)
    image_size = args.image_size if args.image_size is not None else default_image_size
    return ModelSpec(name=name, sam2_config=args.sam2_config, sam2_checkpoint=args.sam2_checkpoint,
                     pam_checkpoint=args.pam, device=args.device, dtype=args.dtype, image_size=image_size,
                     image_encoder=args.image_encoder, image_encoder_onnx=args.image_encoder_onnx or "",
                     compile=bool(args.compile))
