"""Batched generation (model/decoding.py): many sequences in one decode loop give each sequence's own
result. Checked against the official token ids of the tiny fixture and against single runs."""
from __future__ import annotations

import pytest
import torch
from pam_tiny_fixture import golden, image_cases

from pam_ros.model.language import GenerationRequest, PamLanguageModel, with_overrides
from pam_ros.model.tasks import prepare_prompt

REGION_LEN = 1024 + 1 + 16 + 1


def _region(case: dict) -> torch.Tensor:
    """The official region tokens (image tokens, separators, sem tokens) of an image case."""
    pos = case["image_token_position"]
    return golden()[f"{case['case']}.llm.inputs_embeds"][0, pos:pos + REGION_LEN]


def _task_requests(language, tokenizer, region, tasks, settings, *, share: bool, key="obj"):
    requests = []
    for task in tasks:
        ids = prepare_prompt(tokenizer, task).input_ids
        embeds = language.embed_prompt(ids, region)
        prefix = ids.index(-200) + REGION_LEN
        requests.append(GenerationRequest(embeds, settings, prefix_key=key if share else None,
                                          prefix_length=prefix if share else 0))
    return requests


def test_all_image_cases_in_one_batch_give_the_official_ids(language, ckpt, greedy):
    """Four prompts of different lengths, left-padded into one batch: each gets the official tokens."""
    g = golden()
    cases = image_cases()
    lengths = {g[f"{c['case']}.llm.inputs_embeds"].shape[1] for c in cases}
    assert len(lengths) > 1  # the batch really needs padding
    requests = [GenerationRequest(g[f"{c['case']}.llm.inputs_embeds"], greedy) for c in cases]
    outs = language.generate_batch(requests, ckpt.tokenizer)
    for case, out in zip(cases, outs):
        assert out.token_ids == g[f"{case['case']}.generated_ids"].tolist(), case["case"]
        assert out.text == case["generated_text"]


def test_shared_visual_prefix_gives_the_unshared_results(language, ckpt, greedy):
    """Three tasks on one object: the prefix (system text + region) runs once, results unchanged."""
    region = _region(image_cases()[0])
    tasks = ["recognize", "explain", "caption"]
    shared = language.generate_batch(_task_requests(language, ckpt.tokenizer, region, tasks, greedy, share=True),
                                     ckpt.tokenizer)
    alone = [language.generate_batch([r], ckpt.tokenizer)[0]
             for r in _task_requests(language, ckpt.tokenizer, region, tasks, greedy, share=False)]
    assert [o.token_ids for o in shared] == [o.token_ids for o in alone]
    assert len({tuple(o.token_ids) for o in alone}) == 3  # the tasks really differ
    # the recognize prompt on case 0's region is case 0 itself: the official answer
    assert shared[0].token_ids == golden()[f"{image_cases()[0]['case']}.generated_ids"].tolist()


def test_mixed_batch_each_sequence_stops_streams_and_samples_on_its_own(language, ckpt, greedy):
    """Two objects x two tasks shared, plus a sampled, an early-eos and a cancelled sequence."""
    g = golden()
    cases = image_cases()
    tok = ckpt.tokenizer
    reqs = (_task_requests(language, tok, _region(cases[0]), ["recognize", "caption"], greedy, share=True, key=0)
            + _task_requests(language, tok, _region(cases[1]), ["explain", "recognize"], greedy, share=True, key=1))
    c2 = g[f"{cases[2]['case']}.llm.inputs_embeds"]
    c3 = g[f"{cases[3]['case']}.llm.inputs_embeds"]
    c3_ids = g[f"{cases[3]['case']}.generated_ids"].tolist()
    sampled = with_overrides(greedy, do_sample=True, temperature=1.5, top_p=0.95, seed=3, max_new_tokens=9)
    polls = []
    reqs += [
        GenerationRequest(c2, sampled),
        GenerationRequest(c3, with_overrides(greedy, eos_token_ids=(c3_ids[4],))),
        GenerationRequest(c2, greedy, should_stop=lambda: polls.append(1) or len(polls) > 5),
    ]
    streams: dict[int, list] = {i: [] for i in range(len(reqs))}
    for i, r in enumerate(reqs):
        r.on_text = lambda text, n, i=i: streams[i].append((text, n))
    batch = language.generate_batch(reqs, tok)
    single = [language.generate_batch([GenerationRequest(r.inputs_embeds, r.settings)], tok)[0] for r in reqs[:6]]
    for i in range(6):
        assert batch[i].token_ids == single[i].token_ids, i
        assert batch[i].text == single[i].text
        assert streams[i] and streams[i][-1][0] == batch[i].text  # each sequence streamed its own text
    assert len(batch[4].token_ids) == 9  # its own max_new_tokens
    assert batch[5].finished_by_eos and batch[5].token_ids == c3_ids[:5]
    # cancelled before its 6th token; the rest of the batch went on to 12 tokens
    assert batch[6].stopped and len(batch[6].token_ids) == 5 and batch[6].token_ids == language.generate(c2, greedy, tok).token_ids[:5]
    assert all(len(b.token_ids) == 12 for b in batch[:4])


def test_batched_sdpa_attention_matches_eager(ckpt, language, greedy):
    """Left padding leaves fully masked rows; the sdpa kernel must not turn them into NaNs."""
    sdpa = PamLanguageModel.from_checkpoint(ckpt, device="cpu", dtype=torch.float32, attn_implementation="sdpa")
    g = golden()
    requests = [GenerationRequest(g[f"{c['case']}.llm.inputs_embeds"], greedy) for c in image_cases()]
    outs = sdpa.generate_batch(requests, ckpt.tokenizer)
    assert [o.token_ids for o in outs] == [g[f"{c['case']}.generated_ids"].tolist() for c in image_cases()]


def test_shared_prefix_needs_one_length(language, ckpt, greedy):
    from pam_ros.errors import TaskError

    region = _region(image_cases()[0])
    reqs = _task_requests(language, ckpt.tokenizer, region, ["recognize", "caption"], greedy, share=True)
    reqs[1].prefix_length -= 1
    with pytest.raises(TaskError):
        language.generate_batch(reqs, ckpt.tokenizer)
