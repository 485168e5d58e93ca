"""Sam2Backbone against the official PAM recordings in test/fixtures/pam_tiny (CPU, float32)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pam_tiny_fixture import case_image as image_of
from pam_tiny_fixture import case_prompt as prompt_of
from pam_tiny_fixture import golden as fixture_golden

from pam_ros.errors import CheckpointError, ImageError, PromptError
from pam_ros.model.sam2_backbone import Sam2Backbone, VisualPrompt

FIXTURE = Path(__file__).parent / "fixtures" / "pam_tiny"
SAM2_YAML = FIXTURE / "sam2" / "sam2.1_hiera_tiny_pam.yaml"
SAM2_PT = FIXTURE / "sam2" / "sam2.1_hiera_tiny_pam.pt"
TOL = 1e-4

FIXTURE_JSON = json.loads((FIXTURE / "fixture.json").read_text())
IMAGE_CASES = {case["case"]: case for case in FIXTURE_JSON["image_cases"]}


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return fixture_golden()


@pytest.fixture(scope="module")
def backbone(full_backbone) -> Sam2Backbone:
    """The session's SAM 2 of the fixture (conftest), read-only here."""
    return full_backbone


@pytest.fixture(scope="module")
def decoded(backbone, decoded_image_cases):
    """Each image case encoded and decoded once by `backbone` (conftest, shared with the PamModel
    tests): {case: (encoding, output)}."""
    return decoded_image_cases


def max_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert tuple(actual.shape) == tuple(expected.shape)
    return (actual.float().cpu() - expected.float()).abs().max().item()


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_preprocessing_matches_pam(backbone, golden, case):
    pixels = backbone.preprocess(image_of(IMAGE_CASES[case]))
    assert pixels.shape == (1, 3, 1024, 1024) and pixels.dtype == torch.float32
    assert max_diff(pixels[0, :, ::16, ::16], golden[f"{case}.sam2.image_1024_normalized_sub16"]) <= TOL


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_decoder_outputs_match_pam(decoded, golden, case):
    enc, out = decoded[case]
    key = f"{case}.sam2."
    assert max_diff(out.point_coords, golden[key + "point_coords_1024"]) <= TOL
    assert out.point_labels.tolist() == IMAGE_CASES[case]["sam2_point_labels"]
    assert max_diff(out.low_res_logits, golden[key + "low_res_mask_logits"]) <= TOL
    assert max_diff(out.object_score_logits, golden[key + "object_score_logits"]) <= TOL
    assert max_diff(out.obj_ptr, golden[key + "obj_ptr"]) <= TOL
    assert max_diff(out.mask_tokens, golden[key + "decoder_all_mid_mask_tokens"]) <= TOL
    assert max_diff(out.mid_mask_tokens, golden[key + "mid_mask_tokens_out"]) <= TOL
    height, width = enc.orig_hw
    assert [width, height] == IMAGE_CASES[case]["image_size_wh"]
    assert out.mask_logits.shape == (1, 1, height, width)
    assert out.mid_image_embed.shape == (1, 256, 64, 64)


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_stability_decision_matches_pam(decoded, case):
    _, out = decoded[case]
    recorded = IMAGE_CASES[case]["sam2_decoder"]
    assert abs(out.stability.item() - recorded["all_mask_logits_stability"][0]) <= 1e-6
    assert bool(out.stability.item() >= 0.98) == recorded["is_stable(>=0.98)"]
    assert int(torch.argmax(out.iou[0, 1:])) + 1 == recorded["best_multimask_token_index(1..3)"]
    assert np.allclose(out.iou[0].tolist(), recorded["iou_pred"], atol=1e-5)
    # quirk 2: the first mid token is token 0 only for a stable mask
    chosen = 0 if recorded["is_stable(>=0.98)"] else recorded["best_multimask_token_index(1..3)"]
    assert torch.equal(out.mid_mask_tokens[0, 0], out.mask_tokens[0, chosen])
    assert torch.equal(out.mid_mask_tokens[0, 1], out.mask_tokens[0, 0])


def test_image_embed_and_full_resolution_mask_match_pam(decoded, golden):
    _, out = decoded["c0_box_recognize"]
    assert max_diff(out.mid_image_embed, golden["c0_box_recognize.sam2.mid_image_embed"]) <= TOL
    assert max_diff(out.mask_logits, golden["c0_box_recognize.sam2.video_res_mask_logits"]) <= TOL


def test_batched_prompts_equal_single_prompts(backbone, decoded):
    """N prompts on one image (with different point counts) give each prompt's solo result."""
    enc, solo_box = decoded["c0_box_recognize"]
    point = VisualPrompt(points=np.array([[320.0, 250.0]]), labels=np.array([1]))
    two_points = VisualPrompt(points=np.array([[100.0, 100.0], [500.0, 400.0]]), labels=np.array([1, 0]))
    box = prompt_of(IMAGE_CASES["c0_box_recognize"])
    batch = backbone.decode(enc, [point, box, two_points, point])
    assert batch.low_res_logits.shape == (4, 1, 256, 256)
    solo_point = backbone.decode(enc, [point])
    solo_two = backbone.decode(enc, [two_points])
    for index, solo in [(0, solo_point), (1, solo_box), (2, solo_two), (3, solo_point)]:
        for name in ("low_res_logits", "object_score_logits", "obj_ptr", "mid_mask_tokens", "mid_image_embed"):
            assert max_diff(getattr(batch, name)[index : index + 1], getattr(solo, name)) <= TOL, name


def test_packaged_config_builds_with_pam_behaviour():
    backbone = Sam2Backbone.from_config("sam2.1_hiera_t", None)
    sam = backbone.sam
    assert type(sam).__name__ == "SAM2VideoPredictor"
    assert sam.multimask_output_in_sam is False
    assert sam.binarize_mask_from_pts_for_mem_enc is True
    assert sam.sam_mask_decoder.dynamic_multimask_via_stability is False
    assert sam.sam_mask_decoder.dynamic_multimask_stability_thresh == 0.98
    # the hiera-t trunk, not the tiny fixture's
    assert sam.image_encoder.trunk.blocks[0].dim == 96


def test_missing_files_and_unknown_config_are_named():
    with pytest.raises(CheckpointError, match="not found: .*nowhere.pt"):
        Sam2Backbone.from_config(SAM2_YAML, "/nowhere.pt")
    with pytest.raises(CheckpointError, match="sam2.1_hiera_xxl"):
        Sam2Backbone.from_config("sam2.1_hiera_xxl", None)


@pytest.fixture(scope="module")
def fixture_state_dict() -> dict[str, torch.Tensor]:
    return torch.load(SAM2_PT, map_location="cpu", weights_only=True)["model"]


def test_checkpoint_with_missing_key_names_it(tmp_path, fixture_state_dict):
    weights = dict(fixture_state_dict)
    del weights["no_mem_embed"]
    path = tmp_path / "missing.pt"
    torch.save({"model": weights}, path)
    with pytest.raises(CheckpointError, match="missing keys: no_mem_embed"):
        Sam2Backbone.from_config(SAM2_YAML, path)


def test_checkpoint_with_wrong_shape_or_extra_key_names_it(fixture_state_dict):
    weights = dict(fixture_state_dict)
    weights["obj_ptr_proj.layers.0.weight"] = torch.zeros(3, 3)
    weights["surplus.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        Sam2Backbone.from_config(SAM2_YAML, None, state_dict=weights)
    message = str(info.value)
    assert "shape mismatch for obj_ptr_proj.layers.0.weight" in message
    assert "unexpected keys: surplus.weight" in message


def test_pam_vision_tower_copy_loads_as_state_dict(fixture_state_dict, backbone):
    """PAM's full training save holds the SAM 2 weights under a prefix; they load the same."""
    prefixed = {"model.vision_tower.sam2_model_predictor." + k: v for k, v in fixture_state_dict.items()}
    other = Sam2Backbone.from_config(SAM2_YAML, None, state_dict=prefixed)
    assert torch.equal(other.sam.no_mem_embed, backbone.sam.no_mem_embed)
    assert other.sam.no_mem_embed.dtype == torch.float32  # stored as bf16, upcast


@pytest.mark.parametrize(
    "prompt, message",
    [
        (VisualPrompt(), "at least one point or a box"),
        (VisualPrompt(points=np.array([[np.nan, 3.0]]), labels=np.array([1])), "NaN"),
        (VisualPrompt(points=np.array([[10.0, 10.0]]), labels=np.array([2])), "0 or 1"),
        (VisualPrompt(points=np.array([[10.0, 10.0]])), "together"),
        (VisualPrompt(points=np.array([[10.0, 10.0]]), labels=np.array([1, 0])), "match"),
        (VisualPrompt(box=np.array([50.0, 50.0, 40.0, 80.0])), "inverted or has zero area"),
        (VisualPrompt(box=np.array([50.0, 50.0, 50.0, 80.0])), "inverted or has zero area"),
        (VisualPrompt(box=np.array([700.0, 10.0, 900.0, 80.0])), "entirely outside"),
        (VisualPrompt(points=np.array([[10.0, 10.0], [641.0, 10.0]]), labels=np.array([1, 1])), "outside"),
        (VisualPrompt(points=np.array([[10.0, -1.0]]), labels=np.array([1])), "outside"),
    ],
)
def test_bad_prompts_raise_prompt_error(backbone, decoded, prompt, message):
    enc, _ = decoded["c0_box_recognize"]  # 640x480
    with pytest.raises(PromptError, match=message):
        backbone.decode(enc, [prompt])


def test_box_partly_outside_is_clipped():
    clipped = VisualPrompt(box=np.array([-20.0, 100.0, 700.0, 900.0])).validate((640, 480))
    assert clipped.box.tolist() == [0.0, 100.0, 640.0, 480.0]


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((48, 64), dtype=np.uint8), "HxWx3"),
        (np.zeros((48, 64, 4), dtype=np.uint8), "HxWx3"),
        (np.zeros((48, 64, 3), dtype=np.float32), "uint8"),
        (np.zeros((0, 64, 3), dtype=np.uint8), "empty"),
        (torch.zeros(48, 64, 3, dtype=torch.uint8), "numpy"),
    ],
)
def test_bad_images_raise_image_error(backbone, image, message):
    with pytest.raises(ImageError, match=message):
        backbone.encode_image(image)


def test_bfloat16_autocast_gives_the_float32_segmentation(small_backbone):
    """dtype=bfloat16 runs the same model under autocast (weights stay float32)."""
    small = {"image_size": 256}
    fp32 = small_backbone  # the session's float32 model at this input size (conftest)
    bf16 = Sam2Backbone.from_config(SAM2_YAML, SAM2_PT, overrides=small, dtype=torch.bfloat16)
    case = IMAGE_CASES["c0_box_recognize"]
    image, prompt = image_of(case), prompt_of(case)
    reference = fp32.decode(fp32.encode_image(image), [prompt])
    reduced = bf16.decode(bf16.encode_image(image), [prompt])
    assert reduced.mid_mask_tokens.dtype == torch.float32 and reduced.mid_image_embed.dtype == torch.float32
    assert abs(reduced.object_score_logits.item() - reference.object_score_logits.item()) < 0.1
    agreement = ((reduced.mask_logits > 0) == (reference.mask_logits > 0)).float().mean().item()
    assert agreement > 0.95


def test_encode_and_decode_build_no_autograd_graph(small_backbone):
    """The backbone runs inference by itself: with autograd on (as in any caller's process) no output
    holds a graph, so nothing keeps activations alive across frames."""
    case = IMAGE_CASES[sorted(IMAGE_CASES)[0]]
    assert torch.is_grad_enabled(), "a test left autograd switched off for the rest of the session"
    enc = small_backbone.encode_image(image_of(case))
    out = small_backbone.decode(enc, [prompt_of(case)])
    outputs = {"backbone_fpn[0]": enc.backbone["backbone_fpn"][0], "low_res_logits": out.low_res_logits,
               "mask_logits": out.mask_logits, "obj_ptr": out.obj_ptr, "mid_mask_tokens": out.mid_mask_tokens,
               "mid_image_embed": out.mid_image_embed}
    assert [name for name, t in outputs.items() if t.requires_grad or t.grad_fn is not None] == []
