"""PAM's language side: projectors, newline embeddings, token layout, Qwen2 and text generation.

The LLM is transformers' `Qwen2ForCausalLM`, always fed `inputs_embeds` (the prompt with the region
tokens spliced in place of the `<image>` placeholder). Generation is our own KV-cache decode loop so that
callers can stream text and cancel between tokens; it reproduces what the official
`model.generate(inputs_embeds=...)` does with the checkpoint's generation_config (quirk 7): the
repetition penalty applies under greedy decoding too, and only to generated tokens.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from pam_ros.errors import CheckpointError, TaskError
from pam_ros.model.checkpoint import PamCheckpoint, load_module_weights
from pam_ros.model.tasks import IMAGE_TOKEN_INDEX

log = logging.getLogger(__name__)

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
# config.json keys that belong to LLaVA/PAM or to the file itself, not to Qwen2Config
_NON_QWEN_KEYS = ("model_type", "architectures", "transformers_version", "torch_dtype", "dtype")

TextCallback = Callable[[str, int], None]  # (text generated so far, number of tokens so far)
StopCheck = Callable[[], bool]


def build_projector(projector_type: str, in_dim: int, out_dim: int) -> nn.Sequential:
    """LLaVA projector: "linear" or "mlp<N>x_gelu" (PAM uses mlp2x_gelu: Linear, GELU, Linear)."""
    if projector_type == "linear":
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if not match:
        raise CheckpointError(f"unsupported mm_projector_type {projector_type!r} (PAM uses 'mlp2x_gelu')")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(1, int(match.group(1))):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode. `from_generation_config` fills unset values from the checkpoint's file."""

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = ()
    seed: int | None = None  # sampling only: a fixed seed makes sampled text reproducible

    @classmethod
    def from_generation_config(cls, gen_config, *, max_new_tokens: int | None = None,
                               do_sample: bool | None = None, temperature: float | None = None,
                               top_p: float | None = None, top_k: int | None = None,
                               seed: int | None = None) -> "GenerationSettings":
        eos = gen_config.eos_token_id
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        default_max = gen_config.max_new_tokens or cls.max_new_tokens
        settings = cls(
            max_new_tokens=default_max if max_new_tokens is None else max_new_tokens,
            # greedy unless asked: robots want repeatable answers (the file says do_sample=true)
            do_sample=bool(do_sample),
            temperature=_pick(temperature, gen_config.temperature, 1.0),
            top_p=_pick(top_p, gen_config.top_p, 1.0),
            top_k=int(_pick(top_k, gen_config.top_k, 0)),
            repetition_penalty=_pick(None, gen_config.repetition_penalty, 1.0),
            eos_token_ids=eos_ids,
            seed=seed,
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise TaskError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.repetition_penalty <= 0:
            raise TaskError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.do_sample:
            if not self.temperature > 0:
                raise TaskError(f"temperature must be > 0 when sampling, got {self.temperature}")
            if not 0 < self.top_p <= 1:
                raise TaskError(f"top_p must be in (0, 1], got {self.top_p}")
            if self.top_k < 0:
                raise TaskError(f"top_k must be >= 0, got {self.top_k}")


def _pick(explicit, from_file, default):
    if explicit is not None:
        return explicit
    return default if from_file is None else from_file


@dataclass
class Generation:
    """One finished (or cancelled) generation."""

    text: str  # decoded new tokens, special tokens skipped, stripped (as the official notebooks)
    token_ids: list[int]  # the new tokens only (an end-of-sequence token included when generated)
    stopped: bool = False  # cancelled by should_stop() before finishing
    finished_by_eos: bool = False
    seconds: float = 0.0
    prompt_length: int = 0  # inputs_embeds length seen by the LLM
    step_logits: Tensor | None = None  # [n, vocab] raw logits per step, when requested


class IncrementalDecoder:
    """Streams text as tokens arrive without ever emitting half of a multi-byte UTF-8 character.

    Byte-level BPE tokens can split a character; decoding such a prefix yields U+FFFD at the end, so
    text is only released once it no longer ends in U+FFFD.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.text = ""

    def push(self, token_ids: Sequence[int]) -> str | None:
        """New full text after the given tokens, or None if nothing new is safe to show yet."""
        decoded = self.tokenizer.decode(list(token_ids), skip_special_tokens=True)
        if decoded.endswith("\ufffd") or decoded == self.text:
            return None
        self.text = decoded
        return decoded


class PamLanguageModel(nn.Module):
    """Projectors + newline embeddings + Qwen2. Parameter names follow checkpoint.map_official_name."""

    def __init__(self, llm: nn.Module, mm_hidden_size: int, projector_type: str) -> None:
        super().__init__()
        hidden = llm.config.hidden_size
        self.llm = llm
        self.projector_img = build_projector(projector_type, mm_hidden_size * 4, hidden)
        self.projector_semT = build_projector(projector_type, mm_hidden_size, hidden)
        self.image_newline = nn.Parameter(torch.empty(hidden))
        self.semT_newline = nn.Parameter(torch.empty(hidden))
        self.frame_newline = nn.Parameter(torch.empty(hidden))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, ckpt: PamCheckpoint, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32,
                        attn_implementation: str | None = None) -> "PamLanguageModel":
        """Build on the meta device (no random init of billions of weights), then load the checkpoint."""
        from transformers import Qwen2Config, Qwen2ForCausalLM
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

        device = torch.device(device)
        attn = attn_implementation or ("sdpa" if device.type == "cuda" else "eager")
        if attn not in ATTN_IMPLEMENTATIONS:
            raise CheckpointError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn!r}")
        fields = {k: v for k, v in ckpt.config.items() if k not in _NON_QWEN_KEYS}
        config = Qwen2Config(**fields)
        config.vocab_size = ckpt.vocab_rows  # quirk 6: truncated to len(tokenizer)
        config.rope_scaling = None  # quirk 10: LlavaQwenForCausalLM forces it
        config.tie_word_embeddings = ckpt.tie_word_embeddings
        with torch.device("meta"):
            llm = Qwen2ForCausalLM._from_config(config, attn_implementation=attn, dtype=dtype)
            model = cls(llm, int(ckpt.config["mm_hidden_size"]), str(ckpt.config["mm_projector_type"]))
        state = dict(ckpt.tensors["language"])
        optional: tuple[str, ...] = ()
        if ckpt.tie_word_embeddings:
            # a tied checkpoint (Qwen2.5-1.5B/3B bases) stores no lm_head; one stored anyway is ignored
            state.pop("llm.lm_head.weight", None)
            optional = ("llm.lm_head.weight",)
        load_module_weights(model, state, "language", device=device, dtype=dtype, optional=optional)
        if ckpt.tie_word_embeddings:
            llm.lm_head.weight = llm.model.embed_tokens.weight
        # non-persistent buffers are not in the checkpoint: rebuild RoPE frequencies on the device
        llm.model.rotary_emb = Qwen2RotaryEmbedding(config, device=device)
        leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
                     if t.is_meta]
        if leftovers:
            raise CheckpointError(f"language weights left unset: {', '.join(leftovers)}")
        return model.eval()

    @property
    def hidden_size(self) -> int:
        return self.llm.config.hidden_size

    @property
    def device(self) -> torch.device:
        return self.image_newline.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_newline.dtype

    # ------------------------------------------------------------------ region tokens
    def project(self, sem_tokens: Tensor, image_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Perceiver outputs -> LLM space: (sem [.., 16, H], image [.., N, H])."""
        sem_tokens = sem_tokens.to(device=self.device, dtype=self.dtype)
        image_tokens = image_tokens.to(device=self.device, dtype=self.dtype)
        return self.projector_semT(sem_tokens), self.projector_img(image_tokens)

    def image_region_embeddings(self, sem_tokens: Tensor, image_tokens: Tensor) -> Tensor:
        """Image mode (quirk 5): image tokens, image_newline, 16 sem tokens, semT_newline -> [N+18, H].

        sem_tokens [16, C] or [1, 16, C]; image_tokens [N, 4C] or [1, N, 4C] (perceiver outputs).
        """
        sem, img = self.project(_one(sem_tokens), _one(image_tokens))
        return torch.cat((img, self.image_newline[None], sem, self.semT_newline[None]), dim=0)

    def video_region_embeddings(self, frames: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        """Video mode: per frame (sem_tokens, image_tokens), in order, each followed by the frame's
        separators: image tokens, image_newline, sem tokens, semT_newline, frame_newline."""
        parts: list[Tensor] = []
        for sem_tokens, image_tokens in frames:
            sem, img = self.project(_one(sem_tokens), _one(image_tokens))
            parts += [img, self.image_newline[None], sem, self.semT_newline[None], self.frame_newline[None]]
        return torch.cat(parts, dim=0)

    def embed_prompt(self, input_ids: Sequence[int], region: Tensor) -> Tensor:
        """inputs_embeds [1, T, H]: text embeddings with `region` in place of the single -200 id."""
        ids = torch.as_tensor(list(input_ids), dtype=torch.long)
        where = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
        if len(where) != 1:
            raise TaskError(f"the prompt must hold exactly one <image> placeholder, found {len(where)}")
        pos = where[0]
        embed = self.llm.get_input_embeddings()
        text = embed(torch.cat((ids[:pos], ids[pos + 1:])).to(self.device))
        region = region.to(device=self.device, dtype=text.dtype)
        return torch.cat((text[:pos], region, text[pos:]), dim=0).unsqueeze(0)

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(self, inputs_embeds: Tensor, settings: GenerationSettings, tokenizer, *,
                 on_text: TextCallback | None = None, should_stop: StopCheck | None = None,
                 return_logits: bool = False) -> Generation:
        """Decode new tokens after `inputs_embeds` [1, T, H] with a KV cache.

        on_text(text_so_far, num_tokens) is called whenever the decoded text grows (UTF-8 safe);
        should_stop() is polled before every step and ends generation early (Generation.stopped).
        """
        settings.validate()
        return self._decode(inputs_embeds, settings, tokenizer, on_text=on_text,
                            should_stop=should_stop, return_logits=return_logits)


    def _decode(self, inputs_embeds: Tensor, settings: GenerationSettings, tokenizer, *,
                on_text: TextCallback | None = None, should_stop: StopCheck | None = None,
                forced: list[int] | None = None, return_logits: bool = False) -> Generation:
        from transformers import DynamicCache

        start = time.perf_counter()
        inputs_embeds = inputs_embeds.to(device=self.device, dtype=self.dtype)
        eos = set(settings.eos_token_ids)
        generator = None
        if settings.do_sample and settings.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        decoder = IncrementalDecoder(tokenizer) if (on_text and tokenizer is not None) else None
        cache = DynamicCache()
        new_ids: list[int] = []
        history = torch.empty(0, dtype=torch.long, device=self.device)  # generated ids, for the penalty
        step_logits: list[Tensor] = []
        stopped = finished = False
        out = self.llm(inputs_embeds=inputs_embeds, past_key_values=cache, use_cache=True, logits_to_keep=1)
        for step in range(settings.max_new_tokens):
            if should_stop is not None and should_stop():
                stopped = True
                break
            logits = out.logits[:, -1, :].float()
            if return_logits:
                step_logits.append(logits[0].clone())
            if forced is not None:
                token = torch.tensor([forced[step]], device=self.device)
            else:
                token = _next_token(logits, history, settings, generator)
            history = torch.cat((history, token))
            token_id = int(token.item())  # one host sync per token: needed for eos and streaming
            new_ids.append(token_id)
            if decoder is not None:
                text = decoder.push(new_ids)
                if text is not None:
                    on_text(text.strip(), len(new_ids))
            if forced is None and token_id in eos:
                finished = True
                break
            if step + 1 < settings.max_new_tokens:
                out = self.llm(input_ids=token.view(1, 1), past_key_values=cache, use_cache=True,
                               logits_to_keep=1)
        text = tokenizer.decode(new_ids, skip_special_tokens=True).strip() if tokenizer is not None else ""
        if decoder is not None and decoder.text.strip() != text:
            on_text(text, len(new_ids))  # flush what was held back (a trailing invalid byte sequence)
        return Generation(
            text=text, token_ids=new_ids, stopped=stopped, finished_by_eos=finished,
            seconds=time.perf_counter() - start, prompt_length=int(inputs_embeds.shape[1]),
            step_logits=torch.stack(step_logits) if return_logits and step_logits else None,
        )


def _one(x: Tensor) -> Tensor:
    """Accept [N, C] or [1, N, C]."""
    if x.ndim == 3:
        if x.shape[0] != 1:
            raise ValueError(f"expected one object's tokens, got batch {x.shape[0]}")
        return x[0]
    return x


def apply_repetition_penalty(scores: Tensor, history: Tensor, penalty: float) -> Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor: divide positive, multiply negative scores of
    tokens already generated."""
    if penalty == 1.0 or history.numel() == 0:
        return scores
    idx = history.view(1, -1)
    picked = torch.gather(scores, 1, idx)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, idx, picked)


def _next_token(logits: Tensor, history: Tensor, settings: GenerationSettings,
                generator: torch.Generator | None) -> Tensor:
    scores = apply_repetition_penalty(logits, history, settings.repetition_penalty)
    if not settings.do_sample:
        return scores.argmax(dim=-1)
    # same order as transformers' warpers: temperature, top-k, top-p
    scores = scores / settings.temperature
    if 0 < settings.top_k < scores.shape[-1]:
        kth = torch.topk(scores, settings.top_k, dim=-1).values[..., -1, None]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if settings.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - settings.top_p)
        drop_sorted[..., -1:] = False  # always keep the most likely token
        drop = drop_sorted.scatter(1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).view(1)


def with_overrides(settings: GenerationSettings, **changes) -> GenerationSettings:
    """A copy of settings with some fields changed (None values ignored), validated."""
    out = replace(settings, **{k: v for k, v in changes.items() if v is not None})
    out.validate()
    return out
