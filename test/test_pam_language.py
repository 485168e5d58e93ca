"""Semantic Perceiver, projectors, token layout, prompts and Qwen2 generation against the official
PAM outputs recorded in the tiny fixture (golden tensors computed by the official code, float32 CPU)."""
from __future__ import annotations

import pytest
import torch
from pam_tiny_fixture import (
    TASK_OF_KEY,
    all_cases,
    golden,
    image_cases,
    teacher_forced_logits,
    video_case,
)

from pam_ros.model.language import (
    apply_repetition_penalty,
    with_overrides,
)
from pam_ros.model.perceiver import IMAGE_SCALE, VIDEO_FRAME_SCALE, SemanticPerceiver
from pam_ros.model.tasks import prepare_prompt

C0 = "c0_box_recognize"
ALL_CASE_IDS = [c["case"] for c in all_cases()]
IMAGE_CASE_IDS = [c["case"] for c in image_cases()]
CASES = {c["case"]: c for c in all_cases()}
REGION_LEN = 1024 + 1 + 16 + 1


@pytest.fixture(scope="module")
def perceiver(ckpt):
    model = SemanticPerceiver()
    model.load_state_dict({k: v.float() for k, v in ckpt.tensors["perceiver"].items()})
    return model.eval()


@pytest.fixture(scope="module")
def c0_perceiver_out(perceiver):
    g = golden()
    with torch.no_grad():
        return perceiver(g[f"{C0}.sam2.mid_image_embed"], g[f"{C0}.sam2.mid_mask_tokens_out"], IMAGE_SCALE)


# ---------------------------------------------------------------- perceiver
def test_perceiver_semantic_tokens_match_official(c0_perceiver_out):
    sem, _ = c0_perceiver_out
    torch.testing.assert_close(sem, golden()[f"{C0}.perceiver.sem_tokens"], rtol=0, atol=1e-4)


def test_perceiver_image_tokens_match_official_order(c0_perceiver_out):
    _, tokens = c0_perceiver_out
    g = golden()
    assert tokens.shape == (1, 1024, 1024)
    # first64 and per-token norms expose any difference in the reshape / pixel-shuffle order
    torch.testing.assert_close(tokens[:, :64], g[f"{C0}.perceiver.image_tokens_first64"], rtol=0, atol=1e-4)
    torch.testing.assert_close(tokens[0].norm(dim=-1), g[f"{C0}.perceiver.image_tokens_token_norms"],
                               rtol=0, atol=1e-4)
    # sums over 1024 tokens accumulate rounding (README: 4.9e-4 between thread counts): relative check
    torch.testing.assert_close(tokens[0].sum(0), g[f"{C0}.perceiver.image_tokens_sum_over_tokens"],
                               rtol=1e-5, atol=2e-3)


def test_perceiver_quarter_scale_gives_256_projected_tokens(perceiver):
    g = golden()
    with torch.no_grad():
        sem_half, _ = perceiver(g[f"{C0}.sam2.mid_image_embed"], g[f"{C0}.sam2.mid_mask_tokens_out"], IMAGE_SCALE)
        sem, tokens = perceiver(g[f"{C0}.sam2.mid_image_embed"], g[f"{C0}.sam2.mid_mask_tokens_out"],
                                VIDEO_FRAME_SCALE)
    assert tokens.shape == (1, 256, 1024)  # [256, 4096] through proj 4096 -> 1024
    torch.testing.assert_close(sem, sem_half)  # the scale only changes the image branch
    with pytest.raises(ValueError, match="perceiver scale must be 1/2 or 1/4, got 0.333"):
        perceiver(g[f"{C0}.sam2.mid_image_embed"], g[f"{C0}.sam2.mid_mask_tokens_out"], 1 / 3)


# ---------------------------------------------------------------- projectors and layout
@pytest.mark.parametrize("case", IMAGE_CASE_IDS)
def test_semantic_projector_matches_official(language, case):
    g = golden()
    with torch.no_grad():
        sem, _ = language.project(g[f"{case}.perceiver.sem_tokens"], torch.zeros(1, 1, 1024))
    torch.testing.assert_close(sem, g[f"{case}.projector.sem_tokens"], rtol=0, atol=1e-4)


def test_image_projector_matches_official(language):
    g = golden()
    pos = CASES[C0]["image_token_position"]
    with torch.no_grad():
        _, img = language.project(torch.zeros(1, 16, 256), g[f"{C0}.perceiver.image_tokens_first64"])
    torch.testing.assert_close(img[0], g[f"{C0}.llm.inputs_embeds"][0, pos:pos + 64], rtol=0, atol=1e-4)


@pytest.mark.parametrize("case", IMAGE_CASE_IDS)
def test_image_token_layout_matches_official(language, case):
    """text_before | 1024 image tokens | image_newline | 16 sem tokens | semT_newline | text_after."""
    g = golden()
    info = CASES[case]
    layout = info["token_layout"]
    embeds = g[f"{case}.llm.inputs_embeds"][0]
    pos = info["image_token_position"]
    assert embeds.shape[0] == info["inputs_embeds_len"] == len(info["input_ids"]) - 1 + REGION_LEN
    assert layout["image_tokens"] == 1024 and layout["sem_tokens"] == 16
    with torch.no_grad():
        sem, _ = language.project(g[f"{case}.perceiver.sem_tokens"], torch.zeros(1, 1, 1024))
        # our splice of the official region (image tokens + separators) into our text embeddings
        ours = language.embed_prompt(info["input_ids"], embeds[pos:pos + REGION_LEN])
        region = language.image_region_embeddings(g[f"{case}.perceiver.sem_tokens"], torch.zeros(1, 1024, 1024))
    torch.testing.assert_close(ours[0], embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(embeds[pos + 1024], language.image_newline, rtol=0, atol=1e-6)
    torch.testing.assert_close(embeds[pos + 1025:pos + 1041], sem[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(embeds[pos + 1041], language.semT_newline, rtol=0, atol=1e-6)
    # our region builder puts the same separators and sem tokens at the same offsets
    assert region.shape == (REGION_LEN, language.hidden_size)
    torch.testing.assert_close(region[1024:], embeds[pos + 1024:pos + REGION_LEN], rtol=0, atol=1e-4)


def test_video_layout_length_and_separators(language):
    """Video mode: frame 0 with 1024 image tokens, 15 frames with 256, each frame closed by the
    image/semT/frame newlines; the fixture's clip gives 5213 LLM positions."""
    g = golden()
    info = video_case()
    frames = [(torch.zeros(1, 16, 256), torch.zeros(1, 1024 if i == 0 else 256, 1024)) for i in range(16)]
    with torch.no_grad():
        region = language.video_region_embeddings(frames)
        embeds = language.embed_prompt(info["input_ids"], region)
    assert embeds.shape[1] == info["inputs_embeds_len"] == 5213
    official = g[f"{info['case']}.llm.inputs_embeds"][0]
    pos = info["input_ids"].index(-200)
    offset = pos
    for count in info["perceiver_image_token_counts"]:
        offset += count
        torch.testing.assert_close(official[offset], language.image_newline, rtol=0, atol=1e-6)
        torch.testing.assert_close(official[offset + 17], language.semT_newline, rtol=0, atol=1e-6)
        torch.testing.assert_close(official[offset + 18], language.frame_newline, rtol=0, atol=1e-6)
        offset += 19
    # the text around the region is ours and the official one alike
    torch.testing.assert_close(embeds[0, :pos], official[:pos], rtol=0, atol=1e-6)
    torch.testing.assert_close(embeds[0, offset:], official[offset:], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- prompts
@pytest.mark.parametrize("case", ALL_CASE_IDS)
def test_prompt_text_and_input_ids_match_official(ckpt, case):
    info = CASES[case]
    prepared = prepare_prompt(ckpt.tokenizer, TASK_OF_KEY[info["task_key"]])
    assert prepared.user_turn == info["task_prompt"]
    assert prepared.text == info["prompt_text"]
    assert list(prepared.input_ids) == golden()[f"{case}.input_ids"].tolist()


# ---------------------------------------------------------------- LLM
def test_vocabulary_truncated_to_tokenizer(language, ckpt):
    assert len(ckpt.tokenizer) == 643
    assert language.llm.get_input_embeddings().weight.shape[0] == 643
    assert language.llm.get_output_embeddings().weight.shape[0] == 643


@pytest.mark.parametrize("case", ALL_CASE_IDS)
def test_greedy_generation_matches_official(language, ckpt, greedy, case):
    g = golden()
    out = language.generate(g[f"{case}.llm.inputs_embeds"], greedy, ckpt.tokenizer, return_logits=True)
    assert out.token_ids == g[f"{case}.generated_ids"].tolist()
    assert out.text == CASES[case]["generated_text"]
    torch.testing.assert_close(out.step_logits[0], g[f"{case}.llm.first_step_logits"][0], rtol=0, atol=1e-3)


@pytest.mark.parametrize("case", IMAGE_CASE_IDS)
def test_teacher_forced_step_logits_match_official(language, case):
    g = golden()
    logits = teacher_forced_logits(language, g[f"{case}.llm.inputs_embeds"], g[f"{case}.generated_ids"].tolist())
    torch.testing.assert_close(logits, g[f"{case}.llm.step_logits"], rtol=0, atol=1e-3)


@pytest.mark.parametrize("case", IMAGE_CASE_IDS)
def test_repetition_penalty_only_on_generated_tokens(greedy, case):
    """Quirk 7: the official processed scores = raw logits penalised (1.05) on earlier new tokens."""
    g = golden()
    raw, processed, ids = g[f"{case}.llm.step_logits"], g[f"{case}.llm.step_scores_processed"], g[f"{case}.generated_ids"]
    assert greedy.repetition_penalty == pytest.approx(1.05)
    for step in range(raw.shape[0]):
        ours = apply_repetition_penalty(raw[step:step + 1], ids[:step], greedy.repetition_penalty)
        torch.testing.assert_close(ours[0], processed[step], rtol=0, atol=1e-5)


def test_streaming_callback_and_cancel(language, ckpt, greedy):
    g = golden()
    embeds = g[f"{C0}.llm.inputs_embeds"]
    seen: list[tuple[str, int]] = []
    full = language.generate(embeds, greedy, ckpt.tokenizer, on_text=lambda t, n: seen.append((t, n)))
    assert seen and seen[-1][0] == full.text
    assert [n for _, n in seen] == sorted(n for _, n in seen)
    assert all(not t.endswith("\ufffd") for t, _ in seen[:-1])

    polls = []  # should_stop is polled before every step: cancel before the 4th token
    stopped = language.generate(embeds, greedy, ckpt.tokenizer,
                                should_stop=lambda: polls.append(1) or len(polls) > 3)
    assert stopped.stopped and not stopped.finished_by_eos
    assert stopped.token_ids == full.token_ids[:3]


def test_eos_ends_generation(language, ckpt, greedy):
    g = golden()
    ids = g[f"{C0}.generated_ids"].tolist()
    settings = with_overrides(greedy, eos_token_ids=(ids[3],))
    out = language.generate(g[f"{C0}.llm.inputs_embeds"], settings, ckpt.tokenizer)
    assert out.finished_by_eos and out.token_ids == ids[:4]


def test_sampling_is_seeded_and_top_k_one_is_greedy(language, ckpt, greedy):
    g = golden()
    embeds = g[f"{C0}.llm.inputs_embeds"]
    top1 = with_overrides(greedy, do_sample=True, top_k=1, seed=0)
    assert language.generate(embeds, top1, ckpt.tokenizer).token_ids == g[f"{C0}.generated_ids"].tolist()
    hot = with_overrides(greedy, do_sample=True, temperature=1.5, top_p=0.95, top_k=0, seed=7)
    a = language.generate(embeds, hot, ckpt.tokenizer).token_ids
    b = language.generate(embeds, hot, ckpt.tokenizer).token_ids
    assert a == b and len(a) == 12


def test_bad_generation_settings_are_refused(greedy):
    from pam_ros.errors import TaskError

    for changes, message in (({"max_new_tokens": 0}, "max_new_tokens must be a positive integer, got 0"),
                             ({"do_sample": True, "temperature": 0.0}, "temperature must be > 0 when sampling"),
                             ({"do_sample": True, "top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5")):
        with pytest.raises(TaskError, match=message):
            with_overrides(greedy, **changes)
