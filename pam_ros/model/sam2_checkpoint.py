"""SAM 2.1 config and checkpoint reading for PAM: the packaged or YAML config with PAM's build overrides,
the official .pt (tensors only, memory-mapped), a build whose parameters stay unallocated until the
weights arrive, and a strict load whose errors name the offending keys."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from pam_ros.errors import CheckpointError

# Overrides PAM's `build_sam2_video_predictor` applies on top of the YAML (fixture README,
# "How the reference was run"). `multimask_output_in_sam` is the value in PAM's own config copy;
# setting it here makes the packaged SAM 2.1 configs behave like PAM's.
PAM_BUILD_OVERRIDES: dict[str, Any] = {
    "_target_": "sam2.sam2_video_predictor.SAM2VideoPredictor",
    "sam_mask_decoder_extra_args": {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    },
    "binarize_mask_from_pts_for_mem_enc": True,
    "fill_hole_area": 8,
    "multimask_output_in_sam": False,
}

# Key prefix of the SAM 2 copy inside a full PAM training save (model.safetensors).
PAM_VISION_TOWER_PREFIX = "model.vision_tower.sam2_model_predictor."


def resolve_config_path(config: str | Path) -> Path:
    """A YAML path as given, or the packaged SAM 2 / 2.1 config of that name.

    Accepted names: "sam2.1_hiera_t", "sam2.1_hiera_l.yaml", "configs/sam2.1/sam2.1_hiera_b+.yaml".
    """
    path = Path(config)
    if path.is_file():
        return path
    import sam2

    package_dir = Path(sam2.__path__[0])
    name = path.name if path.suffix == ".yaml" else path.name + ".yaml"
    for folder in ("configs/sam2.1", "configs/sam2", "configs/sam2.1_training", "."):
        candidate = package_dir / folder / name
        if candidate.is_file():
            return candidate
    packaged = sorted(p.stem for p in (package_dir / "configs").glob("*/*.yaml"))
    raise CheckpointError(
        f"SAM 2 config {str(config)!r} is neither a YAML file nor a packaged config name "
        f"(packaged: {', '.join(packaged)})"
    )


def load_sam2_config(config: str | Path, overrides: Mapping[str, Any] | None = None):
    """The config's `model` node with PAM's build overrides applied (an OmegaConf DictConfig).

    `overrides` (dotted keys under `model`, e.g. {"image_size": 512}) are applied last.
    """
    from omegaconf import OmegaConf

    path = resolve_config_path(config)
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml errors come in many types
        raise CheckpointError(f"cannot read SAM 2 config {path}: {exc}") from exc
    if "model" not in cfg:
        raise CheckpointError(f"SAM 2 config {path} has no 'model' section")
    model_cfg = cfg.model
    for key, value in {**PAM_BUILD_OVERRIDES, **(overrides or {})}.items():
        OmegaConf.update(model_cfg, key, value, merge=True, force_add=True)
    OmegaConf.resolve(model_cfg)
    return model_cfg


def read_sam2_checkpoint(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official SAM 2 `.pt` ({"model": state_dict}); tensors only, no pickles,
    memory-mapped (nothing is read until a tensor is used)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"SAM 2 checkpoint not found: {path}")
    try:
        # mmap: the tensors are views of the file's pages, so a load with assign=True copies nothing
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read SAM 2 checkpoint {path}: {exc}") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"SAM 2 checkpoint {path} holds no state dict")
    return dict(obj)


def _short_list(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


@contextlib.contextmanager
def parameters_on_meta():
    """Every nn.Parameter registered inside goes to the meta device; buffers and plain tensors stay real.

    SAM 2's modules initialise their weights in __init__ (kaiming, trunc_normal, ...): on meta tensors
    that costs nothing, and the checkpoint supplies the values afterwards (`load_state_dict_strict`
    with assign=True). What SAM 2 computes at construction and never saves (the RoPE tables
    `freqs_cis` of the memory attention, plain tensor attributes) is computed for real, exactly as in
    a normal build, because only parameters are diverted.
    """
    original = torch.nn.Module.register_parameter

    def register_on_meta(module: torch.nn.Module, name: str, param) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def meta_tensors(model: torch.nn.Module) -> list[str]:
    """Names of parameters, buffers and plain tensor attributes still on the meta device."""
    names = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    for module_name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor) and value.is_meta:
                names.append(f"{module_name}.{attr}" if module_name else attr)
    return names


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Load with strict key and shape checks; errors name the offending keys.

    The model's parameters may be on the meta device (`parameters_on_meta`): the checkpoint's tensors
    are assigned, not copied, so a memory-mapped checkpoint becomes the weights without a second copy.
    Stored tensors of another floating dtype (e.g. bf16) are converted to the model's dtype (exact for
    bf16 -> fp32) and tensors laid out with other strides are made contiguous, so the weights are the
    same, in the same layout, as after a copy into a normally built model.
    """
    if state_dict and all(k.startswith(PAM_VISION_TOWER_PREFIX) for k in state_dict):
        state_dict = {k[len(PAM_VISION_TOWER_PREFIX) :]: v for k, v in state_dict.items()}
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    problems = []
    if missing:
        problems.append(f"missing keys: {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short_list(unexpected)}")
    for key in sorted(set(expected) & set(state_dict)):
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            problems.append(f"key {key} is not a tensor ({type(value).__name__})")
        elif tuple(value.shape) != tuple(expected[key].shape):
            problems.append(
                f"shape mismatch for {key}: checkpoint {list(value.shape)}, "
                f"model {list(expected[key].shape)}"
            )
        elif value.is_floating_point() != expected[key].is_floating_point():
            problems.append(f"dtype mismatch for {key}: checkpoint {value.dtype}, model {expected[key].dtype}")
    if problems:
        raise CheckpointError(f"SAM 2 weights from {source} do not fit the model: " + "; ".join(problems))
    assigned = {}
    for key, value in state_dict.items():
        target = expected[key]
        if value.dtype != target.dtype:
            value = value.to(target.dtype)
        if value.stride() != target.stride():
            value = value.contiguous()
        assigned[key] = value
    model.load_state_dict(assigned, strict=True, assign=True)
    left = meta_tensors(model)
    if left:
        raise CheckpointError(f"SAM 2 weights from {source} left tensors unset: {_short_list(left)}")
