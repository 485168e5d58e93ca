"""Random-weight PAM at the official shapes, for benchmarks that need no download (timing depends on
shapes, not on weight values).

The LLM configs below are the public Qwen2.5 values PAM builds on (/work/shared/notes/real-shapes.md);
"tiny" is the test fixture's shape. The Semantic Perceiver and the projectors have fixed sizes (256-wide
SAM 2 decoder features, `mlp2x_gelu`). SAM 2.1's shapes are the `sam2` package's own configs.

Qwen2.5's tokenizer is not on this machine, so prompts are tokenised by a byte-level BPE tokenizer
trained here, in-process, on PAM's own prompt texts (the `tokenizers` library): prompt lengths stay
within a few tokens of Qwen's, and the 1042 region tokens dominate every prompt anyway.
"""
from __future__ import annotations

import math

import torch

from pam_ros.errors import PamError

QWEN_SHAPES: dict[str, dict] = {
    # the test fixture's LLM (test/fixtures/pam_tiny)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=643, rope_theta=1e6, tie_word_embeddings=False),
    # Qwen2.5-1.5B (PAM-1.5B)
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, rope_theta=1e6, tie_word_embeddings=True),
    # Qwen2.5-3B (PAM-3B)
    "3B": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, rope_theta=1e6, tie_word_embeddings=True),
}
_QWEN_COMMON = dict(hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6, use_sliding_window=False,
                    rope_scaling=None, attention_dropout=0.0)
# SAM 2.1 configs of the `sam2` package and their input size, for `bench track --size`
SAM2_SHAPES: dict[str, tuple[str, int]] = {"tiny": ("sam2.1_hiera_t", 256), "real": ("sam2.1_hiera_l", 1024)}
MM_HIDDEN = 256  # SAM 2 decoder width: what the perceiver and projectors read
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def prompt_tokenizer():
    """A Qwen2-style (byte-level BPE, ChatML specials) tokenizer trained on PAM's prompt texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pam_ros.model.tasks import SYSTEM_PROMPT, TASK_PROMPTS, chat_prompt

    corpus = [chat_prompt(text) for text in TASK_PROMPTS.values()] + [SYSTEM_PROMPT]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=640, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def random_pam(size: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               attn_implementation: str | None = None, seed: int = 0):
    """A PamModel without SAM 2 (semantics only) at the shapes of `size`, random weights."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from pam_ros.model.language import PamLanguageModel
    from pam_ros.model.pam import PamModel
    from pam_ros.model.perceiver import SemanticPerceiver

    if size not in QWEN_SHAPES:
        raise PamError(f"unknown size {size!r}; use one of {', '.join(QWEN_SHAPES)}")
    device = torch.device(device)
    attn = attn_implementation or ("sdpa" if device.type == "cuda" else "eager")
    torch.manual_seed(seed)
    config = Qwen2Config(**QWEN_SHAPES[size], **_QWEN_COMMON)
    with torch.device(device):
        llm = Qwen2ForCausalLM._from_config(config, attn_implementation=attn, dtype=dtype)
        language = PamLanguageModel(llm, MM_HIDDEN, "mlp2x_gelu").to(dtype)
        scale = 1 / math.sqrt(config.hidden_size)
        for newline in (language.image_newline, language.semT_newline, language.frame_newline):
            torch.nn.init.normal_(newline, std=scale)
        perceiver = SemanticPerceiver().to(dtype)
    tokenizer = prompt_tokenizer()
    eos = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    generation_config = GenerationConfig(repetition_penalty=1.05, eos_token_id=eos, max_new_tokens=512)
    return PamModel(None, perceiver.eval(), language.eval(), tokenizer, generation_config, name=f"random-{size}")
