"""Which weights to load, on which device: the one rule every front end uses to pick a model.

A model is either a downloaded name ("PAM-1.5B", "PAM-3B", or the built-in "tiny") or the three
checkpoint paths (SAM 2.1 config, SAM 2.1 .pt, PAM folder), never both. The CLI (one shared argument
group, pam_ros/cli_options.py), the node's parameters and the replay all build a ModelSpec and let it
check itself. Resolving a name never touches the network.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pam_ros.errors import CheckpointError, ConfigError
from pam_ros.model.tasks import DTYPE_NAMES

AUTO = "auto"
DEFAULT_MODEL = "PAM-1.5B"  # the node's `model` parameter and `describe` without --model (once downloaded)
PATH_FIELDS = ("sam2_config", "sam2_checkpoint", "pam_checkpoint")
# SAM 2's Hiera trunk downsamples by 32 and its memory/decoder grids by 16 of that input; 64 keeps
# every level an integer size for every packaged config.
IMAGE_SIZE_MULTIPLE = 64


def check_image_size(image_size: int) -> int:
    """The SAM 2 input size rule: 0 (the config's own, 1024 as PAM was trained) or a multiple of 64."""
    if not isinstance(image_size, int) or image_size < 0 or image_size % IMAGE_SIZE_MULTIPLE:
        raise ConfigError(f"image_size must be 0 (the config's own) or a positive multiple of "
                          f"{IMAGE_SIZE_MULTIPLE}, got {image_size!r}")
    return image_size


def check_device_name(device: str) -> str:
    """"auto", "cpu", "cuda" or "cuda:N" (whether that device exists is checked on load)."""
    if device in (AUTO, "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise ConfigError(f'device {device!r}: use "auto", "cpu", "cuda" or "cuda:N"')


@dataclass(frozen=True)
class ModelSpec:
    """A model name or three checkpoint paths, plus device, dtype and SAM 2 input size."""

    name: str = ""  # a downloaded model ("PAM-1.5B", "PAM-3B") or "tiny" (built-in, random weights)
    sam2_config: str = ""  # packaged SAM 2.1 config name or YAML path
    sam2_checkpoint: str = ""  # official SAM 2.1 .pt
    pam_checkpoint: str = ""  # PAM Hugging Face folder
    device: str = "cpu"  # "auto" = cuda when available
    dtype: str = "float32"  # "auto" = bfloat16 on CUDA, float32 on CPU
    # SAM 2 input size; 0 = the config's (1024, what PAM was trained with). Smaller is faster
    # (e.g. 512 on small GPUs, 256 in CPU tests) but no longer the official PAM computation.
    image_size: int = 0
    # SAM 2's image encoder: "torch" or "onnxruntime" (the .onnx at image_encoder_onnx; empty = exported
    # once into the cache); compile: torch.compile the encoder + memory attention (CUDA; off by default)
    image_encoder: str = "torch"
    image_encoder_onnx: str = ""
    compile: bool = False

    @property
    def uses_paths(self) -> bool:
        return any(getattr(self, key) for key in PATH_FIELDS)

    def label(self) -> str:
        """How log lines name the model."""
        return self.name or self.pam_checkpoint or "(none)"

    def with_auto_resolved(self) -> "ModelSpec":
        """device / dtype "auto" replaced by what this machine offers."""
        device, dtype = self.device, self.dtype
        if device == AUTO:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == AUTO:
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        return replace(self, device=device, dtype=dtype)

    def validate(self) -> "ModelSpec":
        """Check every rule without loading anything (ConfigError); returns the spec with "auto" resolved."""
        check_image_size(self.image_size)
        check_device_name(self.device)
        if self.dtype != AUTO and self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"dtype {self.dtype!r}: use auto or one of {', '.join(DTYPE_NAMES)}")
        from pam_ros.model.image_encoder import check_encoder_choice

        check_encoder_choice(self.image_encoder, self.image_encoder_onnx)
        self.resolve()
        return self.with_auto_resolved()

    def resolve(self) -> tuple[str, str, str]:
        """(sam2_config, sam2_checkpoint, pam_dir) of this spec. Offline."""
        from pam_ros.model.registry import resolve_model

        if self.name and self.uses_paths:
            raise ConfigError("give either a model name or the three checkpoint paths "
                              "(sam2_config, sam2_checkpoint, pam_checkpoint), not both")
        if self.name:
            try:
                paths = resolve_model(self.name)
            except CheckpointError as error:  # not downloaded / unknown: a setting to fix, not a bad file
                raise ConfigError(str(error)) from None
            return str(paths.sam2_config), str(paths.sam2_checkpoint), str(paths.pam_dir)
        missing = [key for key in PATH_FIELDS if not getattr(self, key)]
        if missing:
            raise ConfigError("no model selected: give a downloaded model name (e.g. PAM-1.5B after "
                              "`pam-ros download PAM-1.5B`, or `tiny` for the built-in test model) or all of "
                              "sam2_config, sam2_checkpoint, pam_checkpoint (missing: " + ", ".join(missing) + ")")
        for key in ("sam2_checkpoint", "pam_checkpoint"):
            if not Path(getattr(self, key)).exists():
                raise ConfigError(f"{key} {getattr(self, key)!r} does not exist")
        if self.sam2_config.endswith((".yaml", ".yml")) and not Path(self.sam2_config).exists():
            raise ConfigError(f"sam2_config {self.sam2_config!r} does not exist")
        return self.sam2_config, self.sam2_checkpoint, self.pam_checkpoint

    def load(self):
        """The PamModel of this spec, loaded from local files only."""
        from pam_ros.model.pam import PamModel

        spec = self.validate()
        sam2_config, sam2_checkpoint, pam_dir = spec.resolve()
        overrides = {"image_size": spec.image_size} if spec.image_size else None
        model = PamModel.from_pretrained(pam_dir, sam2_config, sam2_checkpoint, device=spec.device,
                                         dtype=spec.dtype, sam2_overrides=overrides,
                                         image_encoder=spec.image_encoder,
                                         image_encoder_onnx=spec.image_encoder_onnx or None, compile=spec.compile)
        model.name = spec.name or Path(pam_dir).name
        return model
