"""PamModel end to end on the tiny fixture: image + visual prompt + task -> the official token ids."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pam_tiny_fixture import PAM_DIR, SAM2_CHECKPOINT, SAM2_CONFIG, TASK_OF_KEY, golden, image_cases, video_case
from pam_tiny_fixture import case_image as load_image
from pam_tiny_fixture import case_prompt as visual_prompt

from pam_ros.errors import TaskError
from pam_ros.model.pam import PamModel, RegionFeatures
from pam_ros.model.tasks import select_video_frames

IMAGE_CASES = {c["case"]: c for c in image_cases()}


@pytest.fixture(scope="module")
def pam(pam_model):
    """The session's tiny PAM (conftest), float32 on CPU."""
    return pam_model


@pytest.fixture(scope="module")
def runs(pam, decoded_image_cases):
    """Every image case through the full path, once: encode + segment (conftest: done once per session
    on the fixture's SAM 2, the same weights as pam.backbone), perceive, describe."""
    results = {}
    for name, case in IMAGE_CASES.items():
        _, dec = decoded_image_cases[name]
        feats = pam.region_features(dec, 0)
        task = TASK_OF_KEY[case["task_key"]]
        prepared, embeds = pam.prepare(feats, task)
        sem, img = pam.perceive(feats)
        out = pam.describe(feats, task, max_new_tokens=12)
        results[name] = dict(dec=dec, prepared=prepared, embeds=embeds, sem=sem, img=img, out=out)
    return results


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_full_path_gives_official_tokens(runs, case):
    g = golden()
    run = runs[case]
    assert run["out"].token_ids == g[f"{case}.generated_ids"].tolist()
    assert run["out"].text == IMAGE_CASES[case]["generated_text"]
    assert list(run["prepared"].input_ids) == g[f"{case}.input_ids"].tolist()


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_full_path_intermediates_match_official(runs, case):
    g = golden()
    run = runs[case]
    torch.testing.assert_close(run["dec"].mid_mask_tokens, g[f"{case}.sam2.mid_mask_tokens_out"], rtol=0, atol=1e-4)
    torch.testing.assert_close(run["sem"], g[f"{case}.perceiver.sem_tokens"], rtol=0, atol=1e-4)
    torch.testing.assert_close(run["img"][0].norm(dim=-1), g[f"{case}.perceiver.image_tokens_token_norms"],
                               rtol=0, atol=1e-4)
    torch.testing.assert_close(run["embeds"], g[f"{case}.llm.inputs_embeds"], rtol=0, atol=1e-4)


def test_explain_answer_is_parsed(runs):
    out = runs["c1_points_explain"]["out"]
    assert out.task == "explain" and out.explanation is not None
    assert out.explanation.raw == out.text and out.explanation.category


def test_several_prompts_encode_the_image_once(pam):
    case = IMAGE_CASES["c1_points_explain"]
    calls = []
    hook = pam.backbone.sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        enc = pam.encode_image(load_image(case))
        dec = pam.segment(enc, [visual_prompt(case), visual_prompt(IMAGE_CASES["c3_box_detail"])])
        outs = [pam.describe(pam.region_features(dec, i), task, max_new_tokens=12)
                for i, task in ((0, "explain"), (1, "detailed_caption"), (0, "recognize_zh"))]
    finally:
        hook.remove()
    assert len(calls) == 1
    assert outs[0].token_ids == golden()["c1_points_explain.generated_ids"].tolist()
    assert outs[1].token_ids == golden()["c3_box_detail.generated_ids"].tolist()


def test_streaming_and_cancel_through_the_facade(pam, runs):
    feats = pam.region_features(runs["c0_box_recognize"]["dec"], 0)
    texts = []
    out = pam.describe(feats, "recognize", max_new_tokens=12, on_text=lambda t, n: texts.append(t))
    assert texts[-1] == out.text
    polls = []
    cut = pam.describe(feats, "recognize", max_new_tokens=12, should_stop=lambda: polls.append(1) or len(polls) > 5)
    assert cut.stopped and cut.token_ids == out.token_ids[:5]


def test_video_mode_frame_selection():
    assert select_video_frames(16) == list(range(16))
    picked = select_video_frames(40)
    assert picked[0] == 0 and len(picked) == 16 and picked[-1] == 39
    assert picked == [0] + np.linspace(1, 39, 15, dtype=int).tolist()
    with pytest.raises(TaskError, match="at least 16 frames"):
        select_video_frames(15)


def test_video_mode_layout(pam):
    """v0: 16 frames of per-frame features (mid tokens from the fixture) give the official layout of
    5213 LLM positions. (Generation from the official inputs_embeds gives the official ids:
    test_pam_language.test_greedy_generation_matches_official; from tracked features: below.)"""
    g = golden()
    info = video_case()
    name = info["case"]
    tokens = g[f"{name}.sam2.mid_mask_tokens_out_per_frame"]
    # the fixture keeps no per-frame image embeds; the layout does not depend on their values
    frames = [RegionFeatures(tokens[i], torch.zeros(256, 64, 64), frame_index=i) for i in range(16)]
    prepared, embeds = pam.prepare(frames, "video_caption")
    assert list(prepared.input_ids) == g[f"{name}.input_ids"].tolist()
    assert embeds.shape == (1, info["inputs_embeds_len"], 64) == (1, 5213, 64)
    official = g[f"{name}.llm.inputs_embeds"]
    pos = info["input_ids"].index(-200)
    torch.testing.assert_close(embeds[0, :pos], official[0, :pos], rtol=0, atol=1e-6)


def test_task_and_input_mismatch_is_refused(pam, runs):
    feats = pam.region_features(runs["c0_box_recognize"]["dec"], 0)
    with pytest.raises(TaskError, match="needs a track"):
        pam.describe(feats, "video_caption")
    with pytest.raises(TaskError, match="at least 16 frames"):
        pam.describe([feats] * 8, "video_caption")
    with pytest.raises(TaskError, match="image task"):
        pam.describe([feats] * 16, "caption")
    with pytest.raises(TaskError, match="unknown task"):
        pam.describe(feats, "summarise")


@pytest.fixture(scope="module")
def tracked_clip(tracked_video):
    """The kept features of the fixture clip tracked by the streaming tracker (conftest: tracked once
    per session on the fixture's SAM 2, the same weights as the model's backbone)."""
    return tracked_video.tracker.features(tracked_video.object_id)


def test_video_mode_from_tracked_features_gives_official_tokens(pam, tracked_clip):
    """v0 end to end: the tracker's kept per-frame features go straight into describe (video mode)."""
    g = golden()
    name = video_case()["case"]
    assert len(tracked_clip) == 16
    sem = torch.cat([pam.perceive(f, 0.5 if i == 0 else 0.25)[0] for i, f in enumerate(tracked_clip)])
    torch.testing.assert_close(sem, g[f"{name}.perceiver.sem_tokens_selected_frames"], rtol=0, atol=1e-4)
    _, embeds = pam.prepare(tracked_clip, "video_caption")
    torch.testing.assert_close(embeds, g[f"{name}.llm.inputs_embeds"], rtol=0, atol=1e-4)
    out = pam.describe(tracked_clip, "video_caption", max_new_tokens=12)
    assert out.token_ids == g[f"{name}.generated_ids"].tolist() and out.num_frames == 16


def test_reduced_precision_runs_end_to_end():
    """bfloat16 weights (LLM, perceiver; SAM 2 under autocast) work on CPU; the first token, whose
    greedy margin is large (1.19), is the official one."""
    model = PamModel.from_pretrained(PAM_DIR, SAM2_CONFIG, SAM2_CHECKPOINT, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    case = IMAGE_CASES["c0_box_recognize"]
    _, (out,) = model.describe_image(load_image(case), visual_prompt(case), ["recognize"], max_new_tokens=4)
    assert len(out.token_ids) == 4 and out.token_ids[0] == case["generated_ids"][0]
