"""SAM 2's image encoder behind one call: torch, or an ONNX Runtime session of an exported copy.

`Sam2Backbone.encode_image` calls `backbone.image_encoder(pixels)` and gets SAM2Base.forward_image's
two lists back ("backbone_fpn": the three feature levels after the decoder's high-res 1x1 convs,
"vision_pos_enc": their position encodings). Two implementations:

* `TorchImageEncoder`: `sam.forward_image` itself, under the backbone's autocast (the default).
* `OnnxImageEncoder`: an ONNX Runtime session of the trunk + FPN neck + high-res convs, exported by
  `export_image_encoder` (`pam-ros export-onnx`). Only the three feature levels are graph outputs: the
  position encodings depend on the input size alone (PositionEmbeddingSine of the level's shape), so
  they are computed once with the torch neck and reused.

Every exported file carries its identity as ONNX metadata (sha256 of the SAM 2 checkpoint it was
exported from, input size, sam2 version, precision); a file whose identity does not match the loaded
weights, or that ONNX Runtime cannot read, is refused with `OnnxModelError`, never used. Without a
given file, the encoder is exported on first use into a cache folder keyed by checkpoint sha256 and
input size, and reused afterwards.

Execution providers, best first among what the installed onnxruntime offers: TensorRT (engine cache
in the model's cache folder, fp16 when the model runs in reduced precision), CUDA, CPU. GPU
providers are used only when the model's device is CUDA.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from pam_ros.errors import ConfigError, OnnxExportError, OnnxModelError
from pam_ros.model.sam2_position import position_encodings_as_views
from pam_ros.model.tasks import ENCODER_KINDS

log = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME = "pixels"
METADATA_PREFIX = "pam_ros."
# The export's self-check: ONNX Runtime vs torch on one random image, largest absolute difference.
MAX_ABS_DIFF = {"float32": 1e-3, "float16": 5e-2}
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


# --------------------------------------------------------------------------------------------
# Identity of an exported encoder
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderIdentity:
    """What an exported encoder was made from; stored in the .onnx and checked on load."""

    checkpoint_sha256: str  # of the SAM 2 .pt (or of the state dict when weights came from elsewhere)
    image_size: int
    sam2_version: str
    precision: str = "float32"

    def metadata(self) -> dict[str, str]:
        return {METADATA_PREFIX + key: str(value) for key, value in vars(self).items()}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], source: str) -> "EncoderIdentity":
        try:
            return cls(
                checkpoint_sha256=metadata[METADATA_PREFIX + "checkpoint_sha256"],
                image_size=int(metadata[METADATA_PREFIX + "image_size"]),
                sam2_version=metadata[METADATA_PREFIX + "sam2_version"],
                precision=metadata.get(METADATA_PREFIX + "precision", "float32"),
            )
        except (KeyError, ValueError):
            raise OnnxModelError(
                f"{source} carries no pam_ros metadata (checkpoint sha256, input size): it was not written by "
                "`pam-ros export-onnx`; export the encoder with it"
            ) from None

    def mismatch(self, expected: "EncoderIdentity") -> list[str]:
        """Human-readable differences that make this file unusable for `expected` (empty: usable)."""
        problems = []
        if self.checkpoint_sha256 != expected.checkpoint_sha256:
            problems.append(
                f"exported from another checkpoint (sha256 {self.checkpoint_sha256[:12]}..., "
                f"loaded weights {expected.checkpoint_sha256[:12]}...)"
            )
        if self.image_size != expected.image_size:
            problems.append(f"exported for input size {self.image_size}, the model uses {expected.image_size}")
        return problems


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_dict_sha256(module: torch.nn.Module) -> str:
    """Fingerprint of weights that came from no file (PAM's SAM 2 copy, random init): names + bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sam2_version() -> str:
    try:
        return importlib.metadata.version("sam2")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def backbone_identity(backbone, precision: str = "float32") -> EncoderIdentity:
    """The identity an encoder exported from this backbone's current weights would carry."""
    checkpoint = getattr(backbone, "checkpoint_path", None)
    sha = getattr(backbone, "_weights_sha256", None)
    if sha is None:
        sha = file_sha256(checkpoint) if checkpoint else state_dict_sha256(backbone.sam)
        backbone._weights_sha256 = sha  # hashing a large .pt takes a second; once per backbone
    return EncoderIdentity(sha, backbone.image_size, sam2_version(), precision)


# --------------------------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------------------------
class TorchImageEncoder:
    """SAM2Base.forward_image under the backbone's autocast."""

    kind = "torch"
    max_batch = 8  # frames per call in encode_images (several cameras); bounds the activations' memory

    def __init__(self, sam: torch.nn.Module, autocast: Callable[[], contextlib.AbstractContextManager]):
        self._sam = sam
        self._autocast = autocast

    @property
    def provider(self) -> str:
        device = self._sam.no_mem_embed.device
        compiled = " (compiled)" if getattr(self._sam.image_encoder, "_compiled_call_impl", None) else ""
        return f"{device}{compiled}"

    def __call__(self, pixels: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        with self._autocast(), position_encodings_as_views(self._sam):
            out = self._sam.forward_image(pixels)
        return {"backbone_fpn": list(out["backbone_fpn"]), "vision_pos_enc": list(out["vision_pos_enc"])}


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
class _FeatureLevels(torch.nn.Module):
    """forward_image's feature levels as a tuple (the graph to export); float32 in and out."""

    def __init__(self, sam: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.sam = sam
        self.dtype = dtype

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        levels = self.sam.forward_image(pixels.to(self.dtype))["backbone_fpn"]
        return tuple(level.float() for level in levels)


@dataclass
class ExportReport:
    path: Path
    identity: EncoderIdentity
    seconds: float
    max_abs_diff: float
    outputs: list[tuple[int, ...]]


def export_image_encoder(backbone, out: str | Path, *, fp16: bool = False, check: bool = True,
                         say: Callable[[str], None] = log.info) -> ExportReport:
    """Write the backbone's image encoder as ONNX (opset 18) with its identity as metadata.

    The export runs on a float32 (or float16) CPU copy of the encoder, so the backbone itself is left
    as it is. Then, unless check=False, one random image goes through ONNX Runtime (CPU) and torch
    (float32) and the largest absolute difference is reported; over MAX_ABS_DIFF it is an
    OnnxExportError and no file is left behind. The file appears atomically (written beside, renamed).
    """
    import copy

    try:
        import onnx
    except ImportError:
        raise OnnxExportError("exporting needs the `onnx` package: pip install -r requirements/venv.txt") from None
    precision = "float16" if fp16 else "float32"
    identity = backbone_identity(backbone, precision)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = backbone.image_size
    started = time.perf_counter()
    sam = copy.deepcopy(backbone.sam).to("cpu").float()
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = list(_FeatureLevels(sam, torch.float32).eval()(example))
    if fp16:
        sam = sam.half()
    graph = _FeatureLevels(sam, torch.float16 if fp16 else torch.float32).eval()
    names = [f"backbone_fpn_{i}" for i in range(len(reference))]
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad(), warnings_quiet():
            torch.onnx.export(graph, (example,), str(raw), opset_version=OPSET, dynamo=False,
                              input_names=[INPUT_NAME], output_names=names)
        model = onnx.load(str(raw))
        for key, value in identity.metadata().items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        model.producer_name = "pam_ros"
        staged = Path(tmp) / "encoder.onnx"
        onnx.save(model, str(staged))
        del model
        diff = float("nan")
        if check:
            session = _new_session(staged, [("CPUExecutionProvider", {})])
            got = session.run(names, {INPUT_NAME: example.numpy()})
            diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, reference))
            say(f"self-check: max abs difference ONNX Runtime vs torch = {diff:.3g} "
                f"(limit {MAX_ABS_DIFF[precision]:g}, {precision})")
            if not diff <= MAX_ABS_DIFF[precision]:
                raise OnnxExportError(
                    f"exported encoder differs from torch by {diff:.3g} (> {MAX_ABS_DIFF[precision]:g}); "
                    f"nothing was written to {out}")
        os.replace(staged, out)
    seconds = time.perf_counter() - started
    say(f"wrote {out} (input {size}, {precision}, checkpoint sha256 {identity.checkpoint_sha256[:12]}..., "
        f"sam2 {identity.sam2_version}) in {seconds:.1f} s")
    return ExportReport(out, identity, seconds, diff, [tuple(r.shape) for r in reference])


@contextlib.contextmanager
def warnings_quiet():
    """The TorchScript exporter warns about every traced Python branch in Hiera; none is actionable."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------
def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(
            "image_encoder 'onnxruntime' needs the onnxruntime package: `pip install onnxruntime` (CPU) or "
            "`pip install onnxruntime-gpu` on CUDA machines (requirements/robot.txt)"
        ) from None
    return onnxruntime


def choose_providers(device: torch.device, *, reduced_precision: bool = False,
                     tensorrt_cache: Path | None = None,
                     available: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(provider, options) best first: TensorRT > CUDA (only for a CUDA device) > CPU, among `available`
    (default: what the installed onnxruntime offers)."""
    if available is None:
        available = _import_ort().get_available_providers()
    chosen: list[tuple[str, dict[str, Any]]] = []
    if device.type == "cuda":
        index = device.index if device.index is not None else 0
        if "TensorrtExecutionProvider" in available:
            options: dict[str, Any] = {"device_id": index, "trt_fp16_enable": bool(reduced_precision)}
            if tensorrt_cache is not None:
                tensorrt_cache.mkdir(parents=True, exist_ok=True)
                options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(tensorrt_cache),
                               trt_timing_cache_enable=True, trt_timing_cache_path=str(tensorrt_cache))
            chosen.append(("TensorrtExecutionProvider", options))
        if "CUDAExecutionProvider" in available:
            chosen.append(("CUDAExecutionProvider", {"device_id": index}))
        if not chosen:
            log.warning("the installed onnxruntime has no CUDA or TensorRT provider, so the encoder runs on the "
                        "CPU; install onnxruntime-gpu instead (requirements/robot.txt)")
    chosen.append(("CPUExecutionProvider", {}))
    return chosen


def _new_session(path: Path, providers: list[tuple[str, dict[str, Any]]], threads: int = 0):
    ort = _import_ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the exporter's Concat shape merge warning is harmless
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=[name for name, _ in providers],
                                    provider_options=[opts for _, opts in providers])
    except Exception as exc:  # onnxruntime raises its own pybind classes (InvalidProtobuf, Fail, ...)
        raise OnnxModelError(f"ONNX Runtime cannot load {path}: the file is corrupt or not an ONNX model "
                             f"({type(exc).__name__}: {str(exc).strip()[:300]}); export it again with "
                             "`pam-ros export-onnx`") from None


class OnnxImageEncoder:
    """An exported encoder in an ONNX Runtime session; same call and outputs as TorchImageEncoder."""

    kind = "onnxruntime"
    max_batch = 1  # the graph is exported with a fixed batch of one (its shapes are checked at load)

    def __init__(self, session, path: Path, identity: EncoderIdentity, position_encodings: list[torch.Tensor]):
        self.session = session
        self.path = path
        self.identity = identity
        self._pos = position_encodings
        self._names = [o.name for o in session.get_outputs()]
        self._shapes = [tuple(o.shape) for o in session.get_outputs()]
        self.provider = session.get_providers()[0]

    @classmethod
    def open(cls, path: str | Path, backbone, *, cache_dir: Path | None = None, threads: int = 0,
             providers: list[tuple[str, dict[str, Any]]] | None = None) -> "OnnxImageEncoder":
        """Load `path` for `backbone`; OnnxModelError if it is unreadable or made from other weights/size.

        providers: (name, options) to use instead of choose_providers' (the benchmarks time each one).
        threads: ONNX Runtime's intra-op threads (0: its default, one per physical core)."""
        path = Path(path)
        if not path.is_file():
            raise OnnxModelError(f"ONNX encoder not found: {path}")
        expected = backbone_identity(backbone)
        device = backbone.device
        tensorrt_cache = encoder_cache_folder(expected, cache_dir) / "tensorrt"
        if providers is None:
            providers = choose_providers(device, reduced_precision=backbone.dtype != torch.float32,
                                         tensorrt_cache=tensorrt_cache if device.type == "cuda" else None)
        # identity first, on a CPU session (cheap to build), so a mismatched file never reaches TensorRT
        probe = _new_session(path, [("CPUExecutionProvider", {})], threads)
        identity = EncoderIdentity.from_metadata(probe.get_modelmeta().custom_metadata_map, str(path))
        problems = identity.mismatch(expected)
        if problems:
            raise OnnxModelError(f"refusing ONNX encoder {path}: " + "; ".join(problems)
                                 + ". Export one for these weights with `pam-ros export-onnx` (or leave the path "
                                 "empty to export into the cache)")
        inputs = probe.get_inputs()
        size = backbone.image_size
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or list(inputs[0].shape) != [1, 3, size, size]:
            raise OnnxModelError(f"refusing ONNX encoder {path}: its input is "
                                 f"{[(i.name, i.shape) for i in inputs]}, expected {INPUT_NAME} [1, 3, {size}, {size}]")
        cpu_only = [name for name, _ in providers] == ["CPUExecutionProvider"]
        session = probe if cpu_only else _new_session(path, providers, threads)
        encoder = cls(session, path, identity, [])
        encoder._pos = encoder._position_encodings(backbone)
        return encoder

    def _position_encodings(self, backbone) -> list[torch.Tensor]:
        """The neck's sine position encodings at each output level's shape (they depend on nothing else)."""
        neck = backbone.sam.image_encoder.neck
        with torch.inference_mode():
            return [neck.position_encoding(torch.empty(1, neck.d_model, shape[2], shape[3], device=backbone.device))
                    for shape in self._shapes]

    @property
    def on_gpu(self) -> bool:
        return self.provider != "CPUExecutionProvider"

    def __call__(self, pixels: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        pixels = pixels.to(torch.float32).contiguous()
        if self.on_gpu and pixels.is_cuda:
            levels = self._run_on_device(pixels)
        else:
            arrays = self.session.run(self._names, {INPUT_NAME: pixels.cpu().numpy()})
            levels = [torch.from_numpy(a).to(pixels.device) for a in arrays]
        pos = [p.expand(pixels.shape[0], -1, -1, -1) for p in self._pos]
        return {"backbone_fpn": levels, "vision_pos_enc": pos}

    def _run_on_device(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Input and outputs stay in CUDA memory (IO binding on torch's tensors): no host round trip."""
        index = pixels.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(INPUT_NAME, "cuda", index, np.float32, tuple(pixels.shape), pixels.data_ptr())
        levels = [torch.empty(shape, dtype=torch.float32, device=pixels.device) for shape in self._shapes]
        for name, level in zip(self._names, levels):
            binding.bind_output(name, "cuda", index, np.float32, tuple(level.shape), level.data_ptr())
        # ONNX Runtime runs on its own stream: the preprocessed pixels must be complete first. Its run
        # ends with a stream synchronisation, so the outputs are ready when it returns.
        torch.cuda.current_stream(pixels.device).synchronize()
        self.session.run_with_iobinding(binding)
        return levels


# --------------------------------------------------------------------------------------------
# cache and selection
# --------------------------------------------------------------------------------------------
def cache_root(cache_dir: str | Path | None = None) -> Path:
    """$PAM_ROS_CACHE_DIR, else $XDG_CACHE_HOME/pam_ros, else ~/.cache/pam_ros."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("PAM_ROS_CACHE_DIR"):
        return Path(os.environ["PAM_ROS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pam_ros"


def encoder_cache_folder(identity: EncoderIdentity, cache_dir: str | Path | None = None) -> Path:
    """One folder per (checkpoint sha256, input size): the exported encoder and its TensorRT engines."""
    return cache_root(cache_dir) / "image_encoder" / f"{identity.checkpoint_sha256[:16]}-{identity.image_size}"


def cached_encoder(backbone, cache_dir: str | Path | None = None, threads: int = 0) -> OnnxImageEncoder:
    """The cached export for these weights and input size, exported now if absent or unreadable."""
    identity = backbone_identity(backbone)
    path = encoder_cache_folder(identity, cache_dir) / "image_encoder.onnx"
    if path.is_file():
        try:
            encoder = OnnxImageEncoder.open(path, backbone, cache_dir=cache_dir, threads=threads)
            log.info("image encoder: reusing the cached ONNX export %s", path)
            return encoder
        except OnnxModelError as exc:
            log.warning("cached ONNX encoder is unusable (%s); exporting it again", exc)
    log.info("image encoder: exporting SAM 2's encoder to ONNX (once for these weights and input size) into %s",
             path)
    export_image_encoder(backbone, path, say=log.info)
    return OnnxImageEncoder.open(path, backbone, cache_dir=cache_dir, threads=threads)


def check_encoder_choice(kind: str, onnx_path: str | Path | None = None) -> None:
    """ConfigError for an unknown kind, a .onnx path with the torch encoder, or a missing onnxruntime."""
    if kind not in ENCODER_KINDS:
        raise ConfigError(f"unknown image encoder {kind!r}; use one of {', '.join(ENCODER_KINDS)}")
    if kind == "torch" and onnx_path:
        raise ConfigError("an ONNX encoder file was given but the image encoder is 'torch'; "
                          "select image encoder 'onnxruntime' to use it")
    if kind == "onnxruntime":
        _import_ort()
        if onnx_path and not Path(onnx_path).is_file():
            raise OnnxModelError(f"ONNX encoder not found: {onnx_path}")


def make_image_encoder(backbone, kind: str = "torch", onnx_path: str | Path | None = None, *,
                       cache_dir: str | Path | None = None, threads: int = 0):
    """The encoder a backbone should use: `torch`, or `onnxruntime` from `onnx_path` (empty: the cache)."""
    check_encoder_choice(kind, onnx_path)
    if kind == "torch":
        return TorchImageEncoder(backbone.sam, backbone.autocast)
    if onnx_path:
        return OnnxImageEncoder.open(onnx_path, backbone, cache_dir=cache_dir, threads=threads)
    return cached_encoder(backbone, cache_dir, threads)


def use_image_encoder(backbone, kind: str = "torch", onnx_path: str | Path | None = None, *,
                      cache_dir: str | Path | None = None):
    """Switch `backbone` to the chosen encoder and log which provider runs it; returns the encoder."""
    encoder = make_image_encoder(backbone, kind, onnx_path, cache_dir=cache_dir)
    backbone.image_encoder = encoder
    where = f" ({encoder.path})" if isinstance(encoder, OnnxImageEncoder) else ""
    log.info("image encoder: %s on %s%s", encoder.kind, encoder.provider, where)
    return encoder
