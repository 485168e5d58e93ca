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
