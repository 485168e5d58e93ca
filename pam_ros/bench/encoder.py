"""Measurements behind `pam-ros bench encoder` (the CLI is pam_ros/cli_bench.py): SAM 2's image encoder in
torch vs ONNX Runtime, milliseconds per frame, measured in one run on the same weights and input.

The model is SAM 2.1 hiera-tiny ("tiny") or hiera-large ("real", the size PAM uses) with random weights
unless a checkpoint is given: timing depends on shapes, not values. The torch rows run
`SAM2Base.forward_image` under the chosen dtype's autocast (and compiled, when asked); the encoder is then
exported to ONNX (opset 18, float32, checked against torch) and timed in one ONNX Runtime session per
execution provider that fits the device (TensorRT, CUDA, CPU). Each row is the median of `runs` timed
calls after `warmup` untimed ones; CUDA work is synchronised before a clock is read.

Numbers are printed (and optionally appended to a summary file), never asserted.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pam_ros.model.image_encoder import (
    OnnxImageEncoder,
    TorchImageEncoder,
    choose_providers,
    encoder_cache_folder,
    export_image_encoder,
)
from pam_ros.model.sam2_backbone import Sam2Backbone

SIZES = {"tiny": "sam2.1_hiera_t", "real": "sam2.1_hiera_l"}


@dataclass
class EncoderRow:
    encoder: str  # "torch", "torch compiled" or "onnxruntime"
    provider: str  # torch's device or the ONNX Runtime provider actually in use
    ms_per_frame: float


def time_calls(call: Callable[[], object], device: torch.device, *, runs: int, warmup: int) -> float:
    """Median milliseconds of `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    _sync(device)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        _sync(device)
        samples.append(1000 * (time.perf_counter() - started))
    return statistics.median(samples)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_encoder_bench(backbone: Sam2Backbone, *, name: str, runs: int = 5, warmup: int = 1,
                      compile_too: bool = False, providers: list[str] | None = None, threads: int = 0,
                      printer: Callable[[str], None] = print) -> list[EncoderRow]:
    """Print (and return) one row per encoder/provider; the ratio is against the eager torch row."""
    import onnxruntime

    device = backbone.device
    threads = threads or torch.get_num_threads()
    size = backbone.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    dtype = str(backbone.dtype).replace("torch.", "")
    printer(f"# bench encoder: {name}, input {size}, device {device}, dtype {dtype}; "
            f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), onnxruntime "
            f"{onnxruntime.__version__} ({threads} intra-op threads); median of {runs} after {warmup} warm-up")
    rows: list[EncoderRow] = []
    with tempfile.TemporaryDirectory(prefix="pam-ros-bench-encoder-") as tmp:
        # exported first: the export copies the eager modules, before compile_too changes them
        path = Path(tmp) / "encoder.onnx"
        report = export_image_encoder(backbone, path, say=lambda _: None)
        printer(f"# export {report.seconds:.1f} s, self-check max abs diff vs torch {report.max_abs_diff:.2g}")
        eager = TorchImageEncoder(backbone.sam, backbone.autocast)
        with torch.inference_mode():
            rows.append(EncoderRow("torch", str(device), time_calls(lambda: eager(pixels), device,
                                                                     runs=runs, warmup=warmup)))
        if compile_too:
            backbone.sam.image_encoder.compile()
            with torch.inference_mode():
                # the first call compiles: a warm-up of at least 2 keeps compilation out of the numbers
                rows.append(EncoderRow("torch compiled", str(device),
                                       time_calls(lambda: eager(pixels), device, runs=runs, warmup=max(2, warmup))))
        trt_cache = encoder_cache_folder(report.identity) / "tensorrt"
        candidates = choose_providers(device, reduced_precision=backbone.dtype != torch.float32,
                                      tensorrt_cache=trt_cache)
        for provider, options in candidates:
            if providers and provider not in providers:
                continue
            chain = [(provider, options)] + ([("CPUExecutionProvider", {})] if provider != "CPUExecutionProvider" else [])
            encoder = OnnxImageEncoder.open(path, backbone, threads=threads, providers=chain)
            if encoder.provider != provider:
                printer(f"# {provider} could not start (onnxruntime fell back to {encoder.provider}); skipped")
                continue
            with torch.inference_mode():
                # TensorRT builds its engine on the first call (minutes, then cached): warm up twice
                warm = max(warmup, 2) if provider == "TensorrtExecutionProvider" else warmup
                rows.append(EncoderRow("onnxruntime", provider, time_calls(lambda: encoder(pixels), device,
                                                                           runs=runs, warmup=warm)))
    reference = rows[0].ms_per_frame
    printer(f"{'encoder':<16} {'provider':<28} {'ms/frame':>10} {'x torch':>8}")
    for row in rows:
        printer(f"{row.encoder:<16} {row.provider:<28} {row.ms_per_frame:>10.1f} {row.ms_per_frame / reference:>8.2f}")
    return rows
