"""`pam-ros bench startup`: how long a fresh process takes to its first mask and first answer, our load
(parameters on the meta device, checkpoints assigned) against the naive one (random init, then copy).

A random-weight checkpoint in the official layout is written once per size and kept in the cache
(`$PAM_ROS_BENCH_CACHE`, else `$XDG_CACHE_HOME/pam_ros/bench`, else `~/.cache/pam_ros/bench`): a PAM folder
(config.json, generation_config.json, bf16 model.safetensors as PAM's own, the fixture's tokenizer with its
vocabulary padded to the model's 151,936 rows for 1.5B / 3B) and a SAM 2.1 .pt (hiera-large for 1.5B / 3B,
the fixture's hiera-tiny for tiny). Each start runs in its own process (pam_ros/bench/startup_probe.py):
first both ways once each, then again in mirrored order, and the better of each side counts.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pam_ros.errors import PamError

FIXTURE = Path(__file__).resolve().parents[2] / "test" / "fixtures" / "pam_tiny"
FIXTURE_PAM = FIXTURE / "pam_tiny_model"
FIXTURE_SAM2_YAML = FIXTURE / "sam2" / "sam2.1_hiera_tiny_pam.yaml"
IMAGE = FIXTURE / "inputs" / "img0.png"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
# SAM 2 config and input size per size: tiny runs the fixture's hiera-tiny at 256 (a fast test)
SAM2_FOR_SIZE = {"tiny": (str(FIXTURE_SAM2_YAML), 256), "1.5B": ("sam2.1_hiera_l", None),
                 "3B": ("sam2.1_hiera_l", None)}
REAL_VOCAB = 151936
PHASES = ("imports", "load", "first_mask", "first_answer")
FORMAT_VERSION = "1"  # bump when the written checkpoint changes


def cache_dir() -> Path:
    if os.environ.get("PAM_ROS_BENCH_CACHE"):
        return Path(os.environ["PAM_ROS_BENCH_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pam_ros" / "bench"


# ----------------------------------------------------------------------------------------------- writing
def _random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Norm weights 1, biases 0, everything else N(0, 0.02): random but numerically tame."""
    if len(shape) == 1 and "norm" in name and name.endswith("weight"):
        return torch.ones(shape)
    if name.endswith("bias"):
        return torch.zeros(shape)
    return torch.randn(shape, generator=generator) * 0.02


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, seed: int,
                      bar: tqdm) -> None:
    """A safetensors file of random tensors, written one tensor at a time (no whole model in memory)."""
    codes = {torch.bfloat16: ("BF16", 2), torch.float32: ("F32", 4)}
    code, width = codes[dtype]
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = width * int(torch.Size(shape).numel())
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    generator = torch.Generator().manual_seed(seed)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in shapes.items():
            tensor = _random_tensor(name, shape, generator).to(dtype).contiguous()
            f.write(tensor.view(torch.uint8).numpy().tobytes() if dtype == torch.bfloat16 else tensor.numpy().tobytes())
            bar.update(tensor.numel())
    partial.replace(path)


def _padded_tokenizer(folder: Path, rows: int) -> dict[int, int]:
    """The fixture's byte-level BPE tokenizer with its vocabulary (and merges) grown to `rows` tokens, so
    that len(tokenizer) = the model's vocabulary, as Qwen2.5's. New tokens are concatenations of existing
    ones with a merge each; the special tokens move to the end, as in Qwen's layout (the tokenizers library
    numbers added tokens after the model's vocabulary). Returns {old special id: new id}."""
    for name in TOKENIZER_FILES + ("generation_config.json",):
        shutil.copy(FIXTURE_PAM / name, folder / name)
    spec = json.loads((FIXTURE_PAM / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges: list = spec["model"]["merges"]
    as_lists = bool(merges) and isinstance(merges[0], list)
    specials = {t["content"] for t in spec["added_tokens"]}
    next_id = len(vocab)
    base = list(vocab)
    i = j = 0
    while len(vocab) + len(specials) < rows:
        left, right = base[i], base[j]
        j += 1
        if j == len(base):
            i, j = i + 1, 0
        token = left + right
        if token in vocab or token in specials:
            continue
        vocab[token] = next_id
        next_id += 1
        merges.append([left, right] if as_lists else f"{left} {right}")
    id_map = {}
    for added in spec["added_tokens"]:
        id_map[added["id"]] = next_id
        added["id"] = next_id
        next_id += 1
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    if "added_tokens_decoder" in config:
        config["added_tokens_decoder"] = {str(id_map.get(int(k), int(k))): v
                                          for k, v in config["added_tokens_decoder"].items()}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    added_tokens = json.loads((folder / "added_tokens.json").read_text(encoding="utf-8"))
    (folder / "added_tokens.json").write_text(json.dumps({k: id_map.get(v, v) for k, v in added_tokens.items()}),
                                              encoding="utf-8")
    _remap_token_ids(folder / "generation_config.json", id_map)
    return id_map


def _remap_token_ids(path: Path, id_map: dict[int, int]) -> None:
    """bos/eos/pad token ids of a config file, renumbered by id_map."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = data.get(key)
        if isinstance(value, list):
            data[key] = [id_map.get(v, v) for v in value]
        elif isinstance(value, int):
            data[key] = id_map.get(value, value)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _language_and_perceiver_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Official tensor names -> shapes of the PAM folder described by `config` (built on the meta device)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pam_ros.model.checkpoint import official_name
    from pam_ros.model.language import PamLanguageModel
    from pam_ros.model.perceiver import SemanticPerceiver

    fields = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "transformers_version",
                                                          "torch_dtype", "dtype")}
    with torch.device("meta"):
        llm = Qwen2ForCausalLM._from_config(Qwen2Config(**fields), attn_implementation="eager")
        language = PamLanguageModel(llm, int(config["mm_hidden_size"]), str(config["mm_projector_type"]))
        perceiver = SemanticPerceiver()
    shapes = {}
    for component, module in (("language", language), ("perceiver", perceiver)):
        for name, tensor in module.state_dict().items():
            if component == "language" and name == "llm.lm_head.weight" and config["tie_word_embeddings"]:
                continue
            shapes[official_name(component, name)] = tuple(tensor.shape)
    return shapes


def _sam2_state_shapes(config: str) -> dict[str, tuple[int, ...]]:
    from hydra.utils import instantiate

    from pam_ros.model.sam2_checkpoint import load_sam2_config, parameters_on_meta

    with parameters_on_meta():
        sam = instantiate(load_sam2_config(config), _recursive_=True)
    return {name: tuple(t.shape) for name, t in sam.state_dict().items()}


@dataclass(frozen=True)
class BenchCheckpoint:
    pam_dir: Path
    sam2_config: str
    sam2_checkpoint: Path
    image_size: int | None


def bench_checkpoint(size: str, root: Path | None = None) -> BenchCheckpoint:
    """The random-weight checkpoint of `size` in the cache, written first if absent."""
    from pam_ros.bench.shapes import QWEN_SHAPES

    if size not in SAM2_FOR_SIZE:
        raise PamError(f"unknown size {size!r}; use one of {', '.join(SAM2_FOR_SIZE)}")
    folder = (root or cache_dir()) / f"startup-{size}-v{FORMAT_VERSION}"
    sam2_config, image_size = SAM2_FOR_SIZE[size]
    ready = folder / "ready"
    result = BenchCheckpoint(folder / "pam", sam2_config, folder / "sam2.pt", image_size)
    if ready.is_file():
        return result
    pam = folder / "pam"
    pam.mkdir(parents=True, exist_ok=True)
    config = json.loads((FIXTURE_PAM / "config.json").read_text(encoding="utf-8"))
    config.update(QWEN_SHAPES[size], max_window_layers=QWEN_SHAPES[size]["num_hidden_layers"])
    if size != "tiny":
        config.update(vocab_size=REAL_VOCAB, mm_vision_tower="facebook/sam2.1-hiera-large")
        id_map = _padded_tokenizer(pam, REAL_VOCAB)
        config.update({k: id_map.get(config[k], config[k]) for k in ("bos_token_id", "eos_token_id")})
    else:
        config["vocab_size"] = 768  # the fixture's padded embedding rows (truncated to the tokenizer at load)
        for name in TOKENIZER_FILES + ("generation_config.json", "vocab.json", "merges.txt"):
            shutil.copy(FIXTURE_PAM / name, pam / name)
    (pam / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    pam_shapes = _language_and_perceiver_shapes(config)
    sam_shapes = _sam2_state_shapes(sam2_config)
    total = sum(int(torch.Size(s).numel()) for s in list(pam_shapes.values()) + list(sam_shapes.values()))
    with tqdm(total=total, desc=f"writing the {size} random-weight checkpoint", unit="param", unit_scale=True,
              file=sys.stderr, leave=False) as bar:
        write_safetensors(pam / "model.safetensors", pam_shapes, torch.bfloat16, seed=0, bar=bar)
        generator = torch.Generator().manual_seed(1)
        state = {}
        for name, shape in sam_shapes.items():
            state[name] = _random_tensor(name, shape, generator)
            bar.update(state[name].numel())
        torch.save({"model": state}, folder / "sam2.partial")
        (folder / "sam2.partial").replace(folder / "sam2.pt")
    ready.write_text("complete\n")
    return result


# ----------------------------------------------------------------------------------------------- running
def probe(mode: str, ckpt: BenchCheckpoint, *, timeout: float | None = None) -> dict:
    """One fresh process measuring one cold start (pam_ros/bench/startup_probe.py)."""
    options = [str(ckpt.pam_dir), ckpt.sam2_config, str(ckpt.sam2_checkpoint), str(IMAGE)]
    if ckpt.image_size:
        options.append(str(ckpt.image_size))
    command = [sys.executable, "-m", "pam_ros.bench.startup_probe", mode, repr(time.time()), *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise PamError(f"startup probe ({mode}) failed with status {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class StartupResult:
    fast: dict
    naive: dict

    @property
    def ratio(self) -> float:
        return self.fast["first_answer"] / self.naive["first_answer"]


def _best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["first_answer"])


def run_startup_bench(size: str, *, repeats: int = 1) -> StartupResult:
    """Fast and naive starts in fresh processes, `repeats` rounds in mirrored order (fast, naive / naive,
    fast, ...); the best start of each side counts. Both must give the same mask and the same answer."""
    ckpt = bench_checkpoint(size)
    order = []
    for round_index in range(repeats):
        order += ["fast", "naive"] if round_index % 2 == 0 else ["naive", "fast"]
    runs: dict[str, list[dict]] = {"fast": [], "naive": []}
    for mode in tqdm(order, desc=f"cold starts ({size})", unit="process", file=sys.stderr, leave=False):
        runs[mode].append(probe(mode, ckpt))
    fast, naive = _best(runs["fast"]), _best(runs["naive"])
    if (fast["token_ids"], fast["mask_pixels"]) != (naive["token_ids"], naive["mask_pixels"]):
        raise PamError("the fast and the naive load answer differently: "
                       f"{fast['token_ids']} / {fast['mask_pixels']} px vs {naive['token_ids']} / "
                       f"{naive['mask_pixels']} px")
    return StartupResult(fast, naive)


def print_startup(result: StartupResult, size: str, out=sys.stdout) -> None:
    """The table (seconds since the process was spawned, and each phase's own time) and the last line."""
    rows = [("interpreter start", "interpreter")] + [(p.replace("_", " "), p) for p in PHASES]
    print(f"startup, {size}: seconds since spawn (phase time)", file=out)
    print(f"{'':<20}{'ours':>20}{'naive':>20}", file=out)
    previous = {"fast": 0.0, "naive": 0.0}
    for label, key in rows:
        cells = []
        for side in ("fast", "naive"):
            run = result.fast if side == "fast" else result.naive
            cells.append(f"{run[key]:8.2f} ({run[key] - previous[side]:6.2f})")
            previous[side] = run[key]
        print(f"{label:<20}{cells[0]:>20}{cells[1]:>20}", file=out)
    print(f"{'peak RSS MiB':<20}{result.fast['peak_rss_mib']:>20.0f}{result.naive['peak_rss_mib']:>20.0f}", file=out)
    print(f"same mask and answer: yes ({len(result.fast['token_ids'])} tokens)", file=out)
    print(f"startup: first answer {result.fast['first_answer']:.2f} s, naive {result.naive['first_answer']:.2f} s, "
          f"ratio X/Y = {result.ratio:.3f}", file=out)
