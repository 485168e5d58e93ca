"""Paths and lazy accessors for the tiny PAM fixture (test/fixtures/pam_tiny, see its README)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "pam_tiny"
PAM_DIR = FIXTURE_DIR / "pam_tiny_model"
SAM2_CONFIG = FIXTURE_DIR / "sam2" / "sam2.1_hiera_tiny_pam.yaml"
SAM2_CHECKPOINT = FIXTURE_DIR / "sam2" / "sam2.1_hiera_tiny_pam.pt"

# the notebooks' task keys used by the fixture cases -> our task names
TASK_OF_KEY = {
    "recognize_en": "recognize",
    "explain_en": "explain",
    "brief_cap_en": "caption",
    "detail_cap_en": "detailed_caption",
    "video_cap_en": "video_caption",
}


@lru_cache(maxsize=1)
def fixture_json() -> dict:
    return json.loads((FIXTURE_DIR / "fixture.json").read_text())


@lru_cache(maxsize=1)
def golden() -> dict:
    from safetensors.torch import load_file

    return load_file(str(FIXTURE_DIR / "golden.safetensors"))


def image_cases() -> list[dict]:
    return fixture_json()["image_cases"]


def video_case() -> dict:
    return fixture_json()["video_cases"][0]


def all_cases() -> list[dict]:
    return image_cases() + fixture_json()["video_cases"]


def video_frames() -> list:
    """The fixture clip's 16 frames as HxWx3 uint8 RGB arrays (320x240)."""
    import numpy as np
    from PIL import Image

    return [np.array(Image.open(FIXTURE_DIR / path).convert("RGB")) for path in video_case()["frames"]]


def case_image(case: dict):
    """The RGB image of an image case as an HxWx3 uint8 array."""
    import numpy as np
    from PIL import Image

    return np.array(Image.open(FIXTURE_DIR / case["image"]).convert("RGB"))


def case_prompt(case: dict):
    """The visual prompt of a fixture case (box, or points with labels) in pixels of its image."""
    import numpy as np

    from pam_ros.model.visual_prompt import VisualPrompt

    if case["prompt_type"] == "box":
        return VisualPrompt(box=np.array(case["visual_prompt"], dtype=np.float32))
    return VisualPrompt(points=np.array(case["visual_prompt"], dtype=np.float32),
                        labels=np.array(case["vp_labels"], dtype=np.int64))


def teacher_forced_logits(language, inputs_embeds, token_ids):
    """Raw logits [n, vocab] at every step when `token_ids` are fed back in (the KV-cache decode path)."""
    import torch

    from pam_ros.model.language import GenerationRequest, GenerationSettings

    with torch.inference_mode():
        settings = GenerationSettings(max_new_tokens=len(token_ids))
        request = GenerationRequest(inputs_embeds, settings, forced=list(token_ids), return_logits=True)
        return language.generate_batch([request], None)[0].step_logits
