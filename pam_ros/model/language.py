"""PAM's language side: projectors, newline embeddings, token layout, Qwen2 and text generation.

The LLM is transformers' `Qwen2ForCausalLM`, always fed `inputs_embeds` (the prompt with the region
tokens spliced in place of the `<image>` placeholder). Generation is our own KV-cache decode loop
(model/decoding.py, one or many sequences at once) so that callers can stream text and cancel between
tokens; it reproduces what the official
`model.generate(inputs_embeds=...)` does with the checkpoint's generation_config (quirk 7): the
repetition penalty applies under greedy decoding too, and only to generated tokens.
"""
from __future__ import annotations

import logging
import re
from typing import Sequence

import torch
from torch import Tensor, nn

from pam_ros.errors import CheckpointError, TaskError
from pam_ros.model.checkpoint import PamCheckpoint, load_module_weights
from pam_ros.model.decoding import (  # noqa: F401  (re-exported: the model layer's generation API)
    BatchDecoder,
    Generation,
    GenerationRequest,
    GenerationSettings,
    IncrementalDecoder,
    StopCheck,
    TextCallback,
    apply_repetition_penalty,
    with_overrides,
)
from pam_ros.model.tasks import IMAGE_TOKEN_INDEX

log = logging.getLogger(__name__)

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
# config.json keys that belong to LLaVA/PAM or to the file itself, not to Qwen2Config
_NON_QWEN_KEYS = ("model_type", "architectures", "transformers_version", "torch_dtype", "dtype")



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


def qwen2_config(ckpt: PamCheckpoint):
    """The Qwen2Config of a PAM checkpoint, as the official loader ends up with it."""
    from transformers import Qwen2Config

    fields = {k: v for k, v in ckpt.config.items() if k not in _NON_QWEN_KEYS}
    config = Qwen2Config(**fields)
    config.vocab_size = ckpt.vocab_rows  # quirk 6: truncated to len(tokenizer)
    config.rope_scaling = None  # quirk 10: LlavaQwenForCausalLM forces it
    config.tie_word_embeddings = ckpt.tie_word_embeddings
    return config


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
        from transformers import Qwen2ForCausalLM
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

        device = torch.device(device)
        attn = attn_implementation or ("sdpa" if device.type == "cuda" else "eager")
        if attn not in ATTN_IMPLEMENTATIONS:
            raise CheckpointError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn!r}")
        config = qwen2_config(ckpt)
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
        request = GenerationRequest(inputs_embeds, settings, on_text=on_text, should_stop=should_stop,
                                    return_logits=return_logits)
        return self.generate_batch([request], tokenizer)[0]


    @torch.inference_mode()
    def first_step_logits(self, inputs_embeds: Sequence[Tensor], token_ids: Sequence[int], *,
                          batch_size: int = 8) -> Tensor:
        """Raw logits [N, len(token_ids)] of the first generated position (prefill only, no decoding)
        for N prompts (each [1, T, H]); prompts of equal length go through the LLM together, up to
        batch_size at a time, so no padding or attention mask is needed."""
        columns = torch.as_tensor(list(token_ids), dtype=torch.long, device=self.device)
        out = torch.empty(len(inputs_embeds), len(columns), dtype=torch.float32, device=self.device)
        by_length: dict[int, list[int]] = {}
        for index, embeds in enumerate(inputs_embeds):
            by_length.setdefault(int(embeds.shape[-2]), []).append(index)
        for indices in by_length.values():
            for start in range(0, len(indices), max(1, batch_size)):
                chunk = indices[start:start + max(1, batch_size)]
                batch = torch.cat([inputs_embeds[i].to(device=self.device, dtype=self.dtype) for i in chunk])
                logits = self.llm(inputs_embeds=batch, use_cache=False, logits_to_keep=1).logits[:, -1, :]
                out[torch.as_tensor(chunk, device=self.device)] = logits.float().index_select(1, columns)
        return out

    @torch.inference_mode()
    def generate_batch(self, requests: Sequence[GenerationRequest], tokenizer) -> list[Generation]:
        """Generate for several sequences at once (see `BatchDecoder`); results in request order.

        Greedy results equal running each request alone; a request that stops (end-of-sequence,
        its max_new_tokens, its should_stop) leaves the batch and the others go on.
        """
        for request in requests:
            request.settings.validate()
        if not requests:
            return []
        return BatchDecoder(self, requests, tokenizer).run()

def _one(x: Tensor) -> Tensor:
    """Accept [N, C] or [1, N, C]."""
    if x.ndim == 3:
        if x.shape[0] != 1:
            raise ValueError(f"expected one object's tokens, got batch {x.shape[0]}")
        return x[0]
    return x
