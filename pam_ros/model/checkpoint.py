"""Loading PAM checkpoint folders (the official Hugging Face layout) without touching the network.

A PAM folder holds `config.json` (LlavaQwenConfig, model_type "llava_qwen"), `generation_config.json`,
the tokenizer files, and the weights as one `model.safetensors` or shards listed in
`model.safetensors.index.json`. The official parameter names are mapped onto our modules:

    model.vision_resampler.<k>                  -> perceiver   <k>
    model.mm_projector_img.<k> / _semT.<k>      -> language    projector_img.<k> / projector_semT.<k>
    model.image_newline / semT_ / frame_newline -> language    image_newline / ...
    model.<k> (embed_tokens, layers, norm)      -> language    llm.model.<k>
    lm_head.weight                              -> language    llm.lm_head.weight (absent when tied)
    model.vision_tower.sam2_model_predictor.<k> -> sam2        <k> (a copy of SAM 2; optional)

Every problem is a CheckpointError naming the file or the tensor.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pam_ros.errors import CheckpointError

log = logging.getLogger(__name__)

SINGLE_WEIGHTS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
PAM_MODEL_TYPE = "llava_qwen"
# config.json fields without which the folder cannot be a PAM model
REQUIRED_PAM_FIELDS = ("mm_hidden_size", "mm_projector_type", "mm_vision_tower")
REQUIRED_LLM_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
# one of these sets must be present for AutoTokenizer to build a Qwen2 tokenizer offline
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))

SAM2_COPY_PREFIX = "model.vision_tower.sam2_model_predictor."
# (official prefix, component, our prefix); the first match wins, so "model." must stay last
_KEY_MAP = (
    (SAM2_COPY_PREFIX, "sam2", ""),
    ("model.vision_resampler.", "perceiver", ""),
    ("model.mm_projector_img.", "language", "projector_img."),
    ("model.mm_projector_semT.", "language", "projector_semT."),
    ("model.image_newline", "language", "image_newline"),
    ("model.semT_newline", "language", "semT_newline"),
    ("model.frame_newline", "language", "frame_newline"),
    ("lm_head.", "language", "llm.lm_head."),
    ("model.", "language", "llm.model."),
)
COMPONENTS = ("language", "perceiver", "sam2")
EMBEDDING_KEYS = ("llm.model.embed_tokens.weight", "llm.lm_head.weight")


def map_official_name(name: str) -> tuple[str, str]:
    """Official parameter name -> (component, parameter name inside that component)."""
    for prefix, component, ours in _KEY_MAP:
        if name.startswith(prefix):
            return component, ours + name[len(prefix):]
    raise CheckpointError(f"unexpected tensor {name!r}: not a PAM parameter name")


def official_name(component: str, name: str) -> str:
    """Inverse of map_official_name, for error messages in the checkpoint's own terms."""
    for prefix, comp, ours in _KEY_MAP:
        if comp == component and name.startswith(ours):
            return prefix + name[len(ours):]
    return f"{component}:{name}"


@dataclass
class PamCheckpoint:
    """Everything read from a PAM folder, weights split by the module they belong to."""

    path: Path
    config: dict[str, Any]
    tokenizer: Any
    generation_config: Any  # transformers.GenerationConfig
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def sam2_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The checkpoint's copy of SAM 2 (`model.vision_tower.sam2_model_predictor.*`), if saved.

        The official loader never uses it (SAM 2 comes from the .pt); callers decide whether to use
        it instead of the .pt or to drop it.
        """
        return self.tensors.get("sam2") or None

    @property
    def vocab_rows(self) -> int:
        """Rows kept in embed_tokens / lm_head: the official loader resizes both to len(tokenizer)."""
        return len(self.tokenizer)

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{what} not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{what} {path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {path} does not hold a JSON object")
    return data


def read_pam_config(folder: Path) -> dict[str, Any]:
    """config.json, checked to be a PAM (LLaVA-Qwen) config."""
    config = _read_json(folder / "config.json", "config.json")
    model_type = config.get("model_type")
    missing_mm = [k for k in REQUIRED_PAM_FIELDS if k not in config]
    if model_type != PAM_MODEL_TYPE or missing_mm:
        detail = f"model_type is {model_type!r}"
        if missing_mm:
            detail += f", and it lacks {', '.join(missing_mm)}"
        raise CheckpointError(
            f"{folder} is not a PAM checkpoint: config.json {detail} "
            f"(expected model_type {PAM_MODEL_TYPE!r} with the mm_* fields of LlavaQwenConfig)"
        )
    missing_llm = [k for k in REQUIRED_LLM_FIELDS if k not in config]
    if missing_llm:
        raise CheckpointError(f"{folder}/config.json lacks {', '.join(missing_llm)}")
    return config


def load_tokenizer(folder: Path):
    """The checkpoint's own tokenizer, strictly from local files."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    if not any(all(n in names for n in files) for files in TOKENIZER_FILE_SETS):
        raise CheckpointError(
            f"tokenizer missing in {folder}: expected tokenizer.json (or vocab.json + merges.txt) "
            "next to config.json"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises many types for broken tokenizer files
        raise CheckpointError(f"tokenizer in {folder} cannot be loaded: {exc}") from None


def load_generation_config(folder: Path, config: dict[str, Any]):
    """generation_config.json when present, else the defaults derived from config.json."""
    from transformers import GenerationConfig

    if (folder / "generation_config.json").is_file():
        try:
            return GenerationConfig.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise CheckpointError(f"{folder}/generation_config.json cannot be read: {exc}") from None
    log.warning("%s has no generation_config.json; using defaults from config.json", folder)
    return GenerationConfig(
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=config.get("eos_token_id"),
        pad_token_id=config.get("pad_token_id"),
    )


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of the folder: the single file, or every shard named by the index."""
    single = folder / SINGLE_WEIGHTS
    index = folder / SHARD_INDEX
    if index.is_file():
        weight_map = _read_json(index, SHARD_INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        shards = [folder / name for name in dict.fromkeys(weight_map.values())]
        absent = [p.name for p in shards if not p.is_file()]
        if absent:
            raise CheckpointError(f"shard(s) listed in {index} are missing: {', '.join(absent)}")
        return shards
    if single.is_file():
        return [single]
    raise CheckpointError(f"no weights in {folder}: expected {SINGLE_WEIGHTS} or {SHARD_INDEX}")


# safetensors dtype codes -> torch dtypes (the ones a PAM or SAM 2 checkpoint can hold)
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file as views of the memory-mapped file (nothing is read or copied
    until a tensor is used; a load with assign=True in the stored dtype copies nothing at all). A
    truncated or corrupt file is a CheckpointError."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError(f"header length {header_len} does not fit a file of {size} bytes")
            header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        start = 8 + header_len
        ends = [entry["data_offsets"][1] for entry in header.values()]
        if ends and start + max(ends) > size:
            raise ValueError(f"data needs {start + max(ends)} bytes, the file has {size}")
        storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
        data = torch.empty(0, dtype=torch.uint8).set_(storage)
        tensors = {}
        for name, entry in header.items():
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            begin, end = entry["data_offsets"]
            raw = data[start + begin:start + end]
            if (start + begin) % dtype.itemsize:
                raw = raw.clone()  # misaligned for this dtype: a copy of this one tensor
            tensors[name] = raw.view(dtype).reshape(entry["shape"])
        return tensors
    except Exception as exc:  # a bad header surfaces as KeyError, ValueError, JSON or runtime errors
        raise CheckpointError(
            f"{path} is truncated or corrupt (cannot read safetensors): {exc}"
        ) from None


def load_pam_checkpoint(pam_dir: str | Path, *, tokenizer=None) -> PamCheckpoint:
    """Read and check a PAM folder. Weights stay on the CPU in their stored dtype."""
    folder = Path(pam_dir).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"PAM checkpoint folder not found: {folder}")
    config = read_pam_config(folder)
    if tokenizer is None:
        tokenizer = load_tokenizer(folder)
    generation_config = load_generation_config(folder, config)
    tensors: dict[str, dict[str, torch.Tensor]] = {c: {} for c in COMPONENTS}
    unknown: list[str] = []
    for path in weight_files(folder):
        for name, tensor in read_safetensors(path).items():
            try:
                component, key = map_official_name(name)
            except CheckpointError:
                unknown.append(name)
                continue
            tensors[component][key] = tensor
    if unknown:
        raise CheckpointError(f"unexpected tensors in {folder}: {_name_list(unknown)}")
    ckpt = PamCheckpoint(folder, config, tokenizer, generation_config, tensors)
    _truncate_vocabulary(ckpt)
    if ckpt.sam2_state_dict is not None:
        log.info("%s contains a SAM 2 copy (%d tensors)", folder, len(ckpt.sam2_state_dict))
    return ckpt


def _truncate_vocabulary(ckpt: PamCheckpoint) -> None:
    """The official loader resizes embed_tokens and lm_head to len(tokenizer) rows (dropping padding)."""
    rows = ckpt.vocab_rows
    language = ckpt.tensors["language"]
    for key in EMBEDDING_KEYS:
        weight = language.get(key)
        if weight is None:
            continue
        if weight.ndim != 2 or weight.shape[0] < rows:
            raise CheckpointError(
                f"tensor {official_name('language', key)} has shape {tuple(weight.shape)}, but the "
                f"tokenizer has {rows} tokens (expected at least {rows} rows)"
            )
        language[key] = weight[:rows]


def _name_list(names: list[str], limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def load_module_weights(module: nn.Module, state: dict[str, torch.Tensor], component: str, *,
                        device: torch.device | str, dtype: torch.dtype,
                        optional: tuple[str, ...] = ()) -> None:
    """Strictly load `state` into `module` (which may live on the meta device).

    Missing, unexpected and wrongly shaped tensors are reported by their official names. Tensors are
    converted to `dtype` (floating point only) and placed on `device`. `optional` names may be absent
    (e.g. lm_head when the embeddings are tied).
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{official_name(component, k)} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append("missing tensors: " + _name_list([official_name(component, k) for k in missing]))
    if unexpected:
        problems.append("unexpected tensors: " + _name_list([official_name(component, k) for k in unexpected]))
    if wrong:
        problems.append("wrong shapes: " + _name_list(wrong))
    if problems:
        raise CheckpointError(f"{component} weights do not fit the model; " + "; ".join(problems))
    converted = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        for k, v in state.items()
    }
    module.load_state_dict(converted, strict=False, assign=True)
