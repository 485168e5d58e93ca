"""KV-cache text generation for one or many sequences at once (the LLM's decode loop).

`BatchDecoder` runs B `GenerationRequest`s through one Qwen2 forward per step: prompts of different
lengths are left-padded (attention mask + explicit position ids), every sequence has its own stop
(end-of-sequence, max_new_tokens, should_stop), its own repetition penalty over its own generated
ids, greedy or seeded sampling, and its own streaming callback. A finished sequence leaves the batch
(its rows of the KV cache are dropped), so short answers do not pay for long ones.

Requests with the same `prefix_key` share `inputs_embeds[:prefix_length]` (PAM: the system text and the
object's region tokens): that prefix is run once and its KV cache is copied for each of them, then
only their own suffixes (the task text) are run. Greedy results equal decoding each request alone.

transformers' `generate` does batching too, but it cannot stream per sequence, cancel one sequence,
apply PAM's penalty to generated ids only or reuse a shared prefix across different prompts, so this
loop is our own; every tensor operation in it is transformers' Qwen2 forward.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Hashable, Sequence

import torch
from torch import Tensor

from pam_ros.errors import TaskError

TextCallback = Callable[[str, int], None]  # (text generated so far, number of tokens so far)
StopCheck = Callable[[], bool]


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
    finished_at: float = 0.0  # time.perf_counter() when this sequence ended (batches: each its own)


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


def is_out_of_memory(error: BaseException) -> bool:
    """True for an allocator failure (CUDA, MPS or host memory): the batch was too big, not wrong."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_cached_memory(device: torch.device) -> None:
    """After an out-of-memory error: hand the CUDA cache back so a smaller retry can fit."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def apply_repetition_penalty(scores: Tensor, history: Tensor, penalty: float) -> Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor: divide positive, multiply negative scores of
    tokens already generated (one row of scores, `history` its generated ids)."""
    if penalty == 1.0 or history.numel() == 0:
        return scores
    seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, history.view(1, -1).to(scores.device), True)
    return _penalise(scores, seen, torch.tensor([[penalty]], dtype=scores.dtype, device=scores.device))


def _penalise(scores: Tensor, seen: Tensor, penalty: Tensor) -> Tensor:
    """scores [B, V], seen [B, V] bool (ids each row generated), penalty [B, 1]: the same values as
    transformers' gather/scatter version, for every row at once."""
    return torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)


def _sample(scores: Tensor, settings: GenerationSettings, generator: torch.Generator | None) -> Tensor:
    """One row [1, V] of penalised scores -> sampled token [1] (transformers' warper order:
    temperature, top-k, top-p)."""
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


@dataclass
class GenerationRequest:
    """One sequence of a batched generation."""

    inputs_embeds: Tensor  # [1, T, H] or [T, H]
    settings: GenerationSettings
    on_text: TextCallback | None = None
    should_stop: StopCheck | None = None  # polled before every step; True ends this sequence only
    # requests with the same key share inputs_embeds[:prefix_length] (the caller guarantees equal values)
    prefix_key: Hashable | None = None
    prefix_length: int = 0
    forced: Sequence[int] | None = None  # teacher forcing: feed these ids instead of choosing
    return_logits: bool = False  # keep the raw logits of every step (Generation.step_logits)


class _Row:
    """Decoding state of one request."""

    def __init__(self, index: int, request: GenerationRequest, tokenizer, device: torch.device) -> None:
        self.index = index
        self.request = request
        self.settings = request.settings
        self.embeds = request.inputs_embeds[0] if request.inputs_embeds.ndim == 3 else request.inputs_embeds
        self.eos = set(self.settings.eos_token_ids)
        self.generator = None
        if self.settings.do_sample and self.settings.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(self.settings.seed)
        self.streamer = IncrementalDecoder(tokenizer) if (request.on_text and tokenizer is not None) else None
        self.new_ids: list[int] = []
        self.step_logits: list[Tensor] = []
        self.stopped = self.finished_by_eos = False
        self.seconds = 0.0
        self.finished_at = 0.0  # time.perf_counter() when the sequence ended
        self.text = ""


class BatchDecoder:
    """Prefill (shared prefixes once, then each suffix) and decode B sequences together."""

    def __init__(self, language, requests: Sequence[GenerationRequest], tokenizer) -> None:
        self.llm = language.llm
        self.device = language.device
        self.dtype = language.dtype
        self.tokenizer = tokenizer
        self.rows = [_Row(i, r, tokenizer, self.device) for i, r in enumerate(requests)]
        for row in self.rows:
            if row.embeds.ndim != 2 or row.embeds.shape[0] < 1:
                raise TaskError(f"inputs_embeds must be [1, T, H] with T >= 1, got {list(row.request.inputs_embeds.shape)}")

    # ---- prefill -------------------------------------------------------------------------------
    def _groups(self) -> list[tuple[list[_Row], int]]:
        """(rows sharing a prefix, prefix length); a row shares with nobody -> its whole prompt."""
        by_key: dict[Hashable, list[_Row]] = {}
        for row in self.rows:
            key = row.request.prefix_key
            by_key.setdefault(("row", row.index) if key is None else ("key", key), []).append(row)
        groups = []
        for members in by_key.values():
            length = members[0].request.prefix_length
            if len(members) == 1 or length <= 0:
                groups += [([row], row.embeds.shape[0]) for row in members]
                continue
            for row in members:
                if row.request.prefix_length != length or not 0 < length < row.embeds.shape[0]:
                    raise TaskError(
                        f"requests sharing prefix {row.request.prefix_key!r} need the same prefix_length, "
                        f"shorter than their prompts (got {row.request.prefix_length} of {row.embeds.shape[0]})"
                    )
            groups.append((members, length))
        return groups

    def _left_padded(self, parts: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """[B, L, H] embeddings left-padded with zeros and their [B, L] attention mask."""
        width = max(p.shape[0] for p in parts)
        hidden = parts[0].shape[-1]
        embeds = torch.zeros(len(parts), width, hidden, device=self.device, dtype=self.dtype)
        mask = torch.zeros(len(parts), width, device=self.device, dtype=torch.long)
        for i, part in enumerate(parts):
            if part.shape[0]:
                embeds[i, width - part.shape[0]:] = part.to(device=self.device, dtype=self.dtype)
                mask[i, width - part.shape[0]:] = 1
        return embeds, mask

    def _prefill(self):
        """Run every prompt; returns (cache, attention mask [B, L], next positions [B], logits [B, V])."""
        from transformers import DynamicCache

        groups = self._groups()
        cache = DynamicCache()
        prefix_embeds, mask = self._left_padded([members[0].embeds[:length] for members, length in groups])
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.llm(inputs_embeds=prefix_embeds, attention_mask=mask, position_ids=positions,
                       past_key_values=cache, use_cache=True, logits_to_keep=1)
        group_of = torch.empty(len(self.rows), dtype=torch.long)
        prefix_len = torch.empty(len(self.rows), dtype=torch.long)
        for g, (members, length) in enumerate(groups):
            for row in members:
                group_of[row.index] = g
                prefix_len[row.index] = length
        logits = out.logits[:, -1, :]
        suffixes = [row.embeds[int(prefix_len[row.index]):] for row in self.rows]
        order = group_of.to(self.device)
        lengths = torch.tensor([row.embeds.shape[0] for row in self.rows], device=self.device)
        if all(s.shape[0] == 0 for s in suffixes):
            # no prefix is shared: the rows are the groups, in order
            return cache, mask[order], lengths, logits[order]
        # copy each shared prefix's cache to every row that uses it, then run the suffixes
        cache.batch_select_indices(order)
        suffix_embeds, suffix_mask = self._left_padded(suffixes)
        start = prefix_len.to(self.device)[:, None]
        suffix_positions = start + (suffix_mask.cumsum(dim=1) - 1).clamp(min=0)
        mask = torch.cat((mask[order], suffix_mask), dim=1)
        out = self.llm(inputs_embeds=suffix_embeds, attention_mask=mask, position_ids=suffix_positions,
                       past_key_values=cache, use_cache=True, logits_to_keep=1)
        has_suffix = torch.tensor([s.shape[0] > 0 for s in suffixes], device=self.device)
        logits = torch.where(has_suffix[:, None], out.logits[:, -1, :], logits[order])
        return cache, mask, lengths, logits

    # ---- decode --------------------------------------------------------------------------------
    def run(self) -> list:
        start = time.perf_counter()
        cache, mask, positions, logits = self._prefill()
        active = list(self.rows)
        vocab = logits.shape[-1]
        seen = torch.zeros(len(active), vocab, dtype=torch.bool, device=self.device)
        penalty = torch.tensor([[r.settings.repetition_penalty] for r in active], device=self.device)
        step = 0
        while active:
            keep = [i for i, row in enumerate(active) if not self._cancelled(row, start)]
            if len(keep) < len(active):
                cache, mask, positions, logits, seen, penalty, active = self._select(
                    keep, cache, mask, positions, logits, seen, penalty, active)
                if not active:
                    break
            logits = logits.float()
            tokens = self._choose(active, logits, seen, penalty, step)
            seen.scatter_(1, tokens[:, None], True)
            token_ids = tokens.tolist()  # one host sync per step for the whole batch: eos and streaming
            keep = []
            for i, (row, token_id) in enumerate(zip(active, token_ids)):
                if row.request.return_logits:
                    row.step_logits.append(logits[i].clone())
                row.new_ids.append(token_id)
                if row.streamer is not None:
                    text = row.streamer.push(row.new_ids)
                    if text is not None:
                        row.request.on_text(text.strip(), len(row.new_ids))
                if row.request.forced is None and token_id in row.eos:
                    row.finished_by_eos = True
                elif len(row.new_ids) < row.settings.max_new_tokens:
                    keep.append(i)
                    continue
                self._finish(row, start)
            if len(keep) < len(active):
                cache, mask, positions, _, seen, penalty, active = self._select(
                    keep, cache, mask, positions, None, seen, penalty, active)
                tokens = tokens[torch.tensor(keep, dtype=torch.long, device=self.device)]
                if not active:
                    break
            mask = torch.cat((mask, mask.new_ones(len(active), 1)), dim=1)
            out = self.llm(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions[:, None],
                           past_key_values=cache, use_cache=True, logits_to_keep=1)
            positions = positions + 1
            logits = out.logits[:, -1, :]
            step += 1
        return [self._result(row) for row in self.rows]

    def _cancelled(self, row: _Row, start: float) -> bool:
        if row.request.should_stop is not None and row.request.should_stop():
            row.stopped = True
            self._finish(row, start)
            return True
        return False

    def _finish(self, row: _Row, start: float) -> None:
        """A sequence is done: its final text, and the last of it streamed at once."""
        row.finished_at = time.perf_counter()
        row.seconds = row.finished_at - start
        tokenizer = self.tokenizer
        row.text = tokenizer.decode(row.new_ids, skip_special_tokens=True).strip() if tokenizer is not None else ""
        if row.streamer is not None and row.streamer.text.strip() != row.text:
            row.request.on_text(row.text, len(row.new_ids))  # flush what was held back (a trailing invalid byte sequence)

    def _select(self, keep, cache, mask, positions, logits, seen, penalty, active):
        """Keep only some rows of the batch (finished or cancelled sequences leave it)."""
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        if keep:
            cache.batch_select_indices(index)
        return (cache, mask[index], positions[index], None if logits is None else logits[index],
                seen[index], penalty[index], [active[i] for i in keep])

    def _choose(self, active: list[_Row], logits: Tensor, seen: Tensor, penalty: Tensor, step: int) -> Tensor:
        """Next token of every active row [A]: greedy rows in one argmax, sampled/forced rows alone."""
        scores = _penalise(logits, seen, penalty.to(logits.dtype))
        tokens = scores.argmax(dim=-1)
        for i, row in enumerate(active):
            if row.request.forced is not None:
                tokens[i] = int(row.request.forced[step])
            elif row.settings.do_sample:
                tokens[i] = _sample(scores[i:i + 1], row.settings, row.generator)[0]
        return tokens

    def _result(self, row: _Row) -> Generation:
        return Generation(
            text=row.text, token_ids=row.new_ids, stopped=row.stopped, finished_by_eos=row.finished_by_eos,
            seconds=row.seconds, prompt_length=int(row.embeds.shape[0]),
            step_logits=torch.stack(row.step_logits) if row.request.return_logits and row.step_logits else None,
            finished_at=row.finished_at,
        )
