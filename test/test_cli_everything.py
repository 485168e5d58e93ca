"""`pam-ros describe IMAGE --everything`: the official generator's regions, each described by PAM.

The command runs in-process on the tiny PAM at a 256-pixel SAM 2 input (--image-size 256, fast); the
direct generator run uses the session's model at that size. The fixture's random SAM 2 predicts IoUs near 0.5 and stability near 0, so the tests lower those
thresholds to get several regions from a 4 x 4 grid.
"""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pam_tiny_fixture import FIXTURE_DIR, PAM_DIR, SAM2_CHECKPOINT, SAM2_CONFIG
from PIL import Image

from pam_ros.cli import main
from pam_ros.model.masks import mask_to_rle, rle_to_mask

IMAGE = str(FIXTURE_DIR / "inputs" / "video" / "00000.png")  # 320x240
MODEL_ARGS = ["--pam", str(PAM_DIR), "--sam2-config", str(SAM2_CONFIG), "--sam2-checkpoint", str(SAM2_CHECKPOINT)]
REGION_ARGS = ["--points-per-side", "4", "--pred-iou-thresh", "0.5", "--stability-score-thresh", "0",
               "--box-nms-thresh", "1", "--min-region-area", "40000", "--max-objects", "3"]


@pytest.fixture(scope="module")
def everything(small_pam_model, tmp_path_factory):
    """(JSON result, overlay path) of one --everything run on the fixture frame."""
    overlay = tmp_path_factory.mktemp("everything") / "regions.png"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["describe", IMAGE, "--everything", *REGION_ARGS, "--task", "recognize", "--max-new-tokens",
                     "6", "--ask", "holding water", "--json", "--overlay", str(overlay), *MODEL_ARGS,
                     "--image-size", "256"])
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue()), overlay


def official_regions(sam, image, generator_settings: dict, min_area: int, max_objects: int) -> list[dict]:
    """SAM2AutomaticMaskGenerator run directly with the reported settings, best predicted IoU first."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    generator = SAM2AutomaticMaskGenerator(sam, **generator_settings)
    size = sam.image_size  # the official predictor assumes a 1024 input; this model runs at 256
    generator.predictor._bb_feat_sizes = [(size // 4,) * 2, (size // 8,) * 2, (size // 16,) * 2]
    records = sorted(generator.generate(image), key=lambda r: -r["predicted_iou"])
    return [r for r in records if r["area"] >= min_area][:max_objects]


def test_regions_are_the_official_generators_in_the_same_order(everything, small_pam_model):
    result, _ = everything
    assert set(result) == {"image", "size", "generator", "objects"}
    assert result["image"] == IMAGE and result["size"] == [320, 240]
    assert result["generator"] == {"points_per_side": 4, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.0,
                                   "box_nms_thresh": 1.0, "min_mask_region_area": 40000}
    image = np.array(Image.open(IMAGE).convert("RGB"))
    expected = official_regions(small_pam_model.backbone.sam, image, result["generator"], 40000, 3)
    assert len(result["objects"]) == 3 == len(expected)
    for obj, ref in zip(result["objects"], expected):
        assert set(obj) == {"mask_rle", "roi", "predicted_iou", "stability_score", "tasks", "category", "definition",
                            "ask"}  # "ask" because --ask was given
        assert obj["mask_rle"] == mask_to_rle(ref["segmentation"])
        assert obj["predicted_iou"] == ref["predicted_iou"] and obj["stability_score"] == ref["stability_score"]
        mask = rle_to_mask(obj["mask_rle"])
        ys, xs = np.nonzero(mask)
        assert obj["roi"] == [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
        assert np.count_nonzero(mask) >= 40000
    ious = [obj["predicted_iou"] for obj in result["objects"]]
    assert ious == sorted(ious, reverse=True)


def generator_encoding(model, image):
    """The image encoding SAM2ImagePredictor.set_image computes (its own preprocessing), made here."""
    import torch
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from pam_ros.model.sam2_backbone import ImageEncoding

    pixels = SAM2ImagePredictor(model.backbone.sam)._transforms(image)[None]
    with torch.no_grad():
        out = model.backbone.sam.forward_image(pixels)
    return ImageEncoding(orig_hw=image.shape[:2], backbone={"backbone_fpn": out["backbone_fpn"],
                                                            "vision_pos_enc": out["vision_pos_enc"]})


def test_regions_and_their_pam_features_share_the_generators_one_image_encoding(small_pam_model):
    import torch

    from pam_ros.model.regions import RegionSettings, find_regions, region_decoder_output

    backbone = small_pam_model.backbone
    image = np.array(Image.open(IMAGE).convert("RGB"))
    settings = RegionSettings(points_per_side=2, pred_iou_thresh=0.5, stability_score_thresh=0.0, box_nms_thresh=1.0)
    encoder_calls = []
    handle = backbone.sam.image_encoder.register_forward_hook(lambda *args: encoder_calls.append(1))
    try:
        found = find_regions(backbone, image, settings, max_regions=2)
        decoded = region_decoder_output(backbone, found)
    finally:
        handle.remove()
    assert len(encoder_calls) == 1 and len(found.regions) == 2  # one encoding for regions and semantics
    prompts = [region.box_prompt() for region in found.regions]
    expected = backbone.decode(generator_encoding(small_pam_model, image), prompts)
    assert torch.equal(decoded.mid_image_embed, expected.mid_image_embed)
    assert torch.equal(decoded.mid_mask_tokens, expected.mid_mask_tokens)
    # PAM's own preprocessing gives other features, so the equality above tells the encodings apart
    own = backbone.decode(backbone.encode_image(image), prompts)
    assert not torch.allclose(own.mid_image_embed, decoded.mid_image_embed)


def test_each_region_is_described_by_pam_from_its_box(everything, small_pam_model):
    from pam_ros.model.sam2_backbone import VisualPrompt

    result, _ = everything
    model = small_pam_model
    encoding = generator_encoding(model, np.array(Image.open(IMAGE).convert("RGB")))
    for obj in result["objects"]:
        x, y, w, h = obj["roi"]
        dec = model.segment(encoding, [VisualPrompt(box=np.array([x, y, x + w, y + h], dtype=np.float32))])
        answer = model.describe(model.region_features(dec, 0), "recognize", max_new_tokens=6)
        (asked,) = model.ask(model.region_features(dec, 0), "holding water")
        assert obj["ask"]["query"] == "holding water"
        assert obj["ask"]["log_odds"] == pytest.approx(asked.log_odds, abs=1e-3)
        assert obj["tasks"]["recognize"]["token_ids"] == answer.token_ids
        assert obj["tasks"]["recognize"]["text"] == answer.text
        assert obj["tasks"]["recognize"]["prompt"] == answer.prompt


def test_overlay_draws_every_region(everything):
    result, overlay = everything
    drawn = np.array(Image.open(overlay).convert("RGB"))
    image = np.array(Image.open(IMAGE).convert("RGB"))
    assert drawn.shape == image.shape
    changed = np.any(drawn != image, axis=2)
    for obj in result["objects"]:  # every region's pixels are tinted
        mask = rle_to_mask(obj["mask_rle"])
        assert changed[mask].mean() > 0.9


def test_defaults_are_16_points_the_generators_own_and_16_regions():
    import argparse

    from pam_ros.cli.describe import add_parser
    from pam_ros.cli.regions import region_settings

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    settings, max_objects = region_settings(parser.parse_args(["describe", IMAGE, "--everything"]))
    assert settings.generator_kwargs() == {"points_per_side": 16, "pred_iou_thresh": 0.8,
                                           "stability_score_thresh": 0.95, "box_nms_thresh": 0.7,
                                           "min_mask_region_area": 0}
    assert max_objects == 16


@pytest.mark.parametrize("extra, message", [
    (["--points-per-side", "0"], "points per side must be an integer >= 1, got 0"),
    (["--pred-iou-thresh", "1.5"], "pred_iou_thresh must be in [0, 1], got 1.5"),
    (["--stability-score-thresh", "-0.1"], "stability_score_thresh must be in [0, 1]"),
    (["--box-nms-thresh", "nan"], "box_nms_thresh must be in [0, 1]"),
    (["--min-region-area", "-5"], "min_mask_region_area must be an integer >= 0"),
    (["--max-objects", "0"], "--max-objects must be at least 1"),
    (["--box", "1", "2", "30", "40"], "leave out --box and --point"),
    (["--task", "video_caption"], "needs a video"),
])
def test_bad_settings_exit_2_with_one_line(capsys, extra, message):
    code = main(["describe", IMAGE, "--everything", *extra, *MODEL_ARGS])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.startswith("pam-ros describe: error:") and len(err.strip().splitlines()) == 1


def test_region_options_need_everything(capsys):
    code = main(["describe", IMAGE, "--box", "1", "2", "30", "40", "--points-per-side", "8", *MODEL_ARGS])
    assert code == 2 and "--points-per-side needs --everything" in capsys.readouterr().err
