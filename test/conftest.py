"""Session-wide fixtures: the tiny PAM fixture's models, and its 16-frame clip tracked once.

Loading a model costs seconds and tracking the clip at SAM 2's full 1024 input about a minute on
CI's two cores, so tests that only read these objects share one instance per session. A test that
changes a model (a hook it does not remove, another dtype or input size) builds its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from pam_tiny_fixture import (
    PAM_DIR,
    SAM2_CHECKPOINT,
    SAM2_CONFIG,
    case_image,
    case_prompt,
    image_cases,
    video_case,
    video_frames,
)


@dataclass(frozen=True)
class TrackedVideo:
    """The fixture clip tracked from its box on frame 0 (stamps 1000 * frame index)."""

    tracker: object  # StreamingTracker, keep_feature_frames=16
    object_id: str
    results: list  # TrackingResult per frame


@pytest.fixture(scope="session")
def full_backbone():
    """SAM 2 of the fixture at its own 1024 input (the official computation)."""
    from pam_ros.model.sam2_backbone import Sam2Backbone

    return Sam2Backbone.from_config(SAM2_CONFIG, SAM2_CHECKPOINT)


@pytest.fixture(scope="session")
def small_backbone():
    """The fixture's weights at a 256-pixel model input: 16x faster, same code paths."""
    from pam_ros.model.sam2_backbone import Sam2Backbone

    return Sam2Backbone.from_config(SAM2_CONFIG, SAM2_CHECKPOINT, overrides={"image_size": 256})


@pytest.fixture(scope="session")
def decoded_image_cases(full_backbone) -> dict:
    """Every image case of the fixture encoded and decoded once at full resolution:
    {case name: (ImageEncoding, DecoderOutput)} (read by the backbone and the PamModel tests)."""
    decoded = {}
    for case in image_cases():
        enc = full_backbone.encode_image(case_image(case))
        decoded[case["case"]] = (enc, full_backbone.decode(enc, [case_prompt(case)]))
    return decoded


@pytest.fixture(scope="session")
def tracked_video(full_backbone) -> TrackedVideo:
    """The fixture clip through the StreamingTracker at full resolution, once per session."""
    from pam_ros.engine.tracker import StreamingTracker
    from pam_ros.model.visual_prompt import VisualPrompt

    # float32 features (feature_dtype=None): the official outputs are compared at float32
    tracker = StreamingTracker(full_backbone, keep_feature_frames=16, feature_dtype=None)
    object_id = "obj_1"
    tracker.add_object(object_id, VisualPrompt(box=np.array(video_case()["visual_prompt"], dtype=np.float32)).validate())
    results = [tracker.step(frame, stamp_ns=1000 * i) for i, frame in enumerate(video_frames())]
    return TrackedVideo(tracker, object_id, results)


@pytest.fixture(scope="session")
def pam_model():
    """The whole tiny PAM, float32 on CPU."""
    from pam_ros.model.pam import PamModel

    return PamModel.from_pretrained(PAM_DIR, SAM2_CONFIG, SAM2_CHECKPOINT, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def small_pam_model():
    """The whole tiny PAM with SAM 2 at a 256-pixel input (fast; not the official 1024 computation)."""
    from pam_ros.model.pam import PamModel

    return PamModel.from_pretrained(PAM_DIR, SAM2_CONFIG, SAM2_CHECKPOINT, device="cpu", dtype=torch.float32,
                                    sam2_overrides={"image_size": 256})


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory):
    """The fixture's SAM 2 image encoder exported to ONNX at its own 1024 input, once per session
    (about 20 s on two cores): model/image_encoder.ExportReport."""
    from pam_ros.model.image_encoder import export_image_encoder
    from pam_ros.model.sam2_backbone import Sam2Backbone

    source = Sam2Backbone.from_config(SAM2_CONFIG, SAM2_CHECKPOINT)
    return export_image_encoder(source, tmp_path_factory.mktemp("onnx") / "sam2_tiny_1024.onnx")


@pytest.fixture(scope="session")
def onnx_backbone(onnx_export):
    """The fixture's SAM 2 at 1024 whose image encoder is the ONNX Runtime session of `onnx_export`."""
    from pam_ros.model.image_encoder import use_image_encoder
    from pam_ros.model.sam2_backbone import Sam2Backbone

    backbone = Sam2Backbone.from_config(SAM2_CONFIG, SAM2_CHECKPOINT)
    use_image_encoder(backbone, "onnxruntime", onnx_export.path)
    return backbone


# The tiny PAM's checkpoint and language model alone (float32, CPU), for the language-level tests.
@pytest.fixture(scope="session")
def ckpt():
    from pam_ros.model.checkpoint import load_pam_checkpoint

    return load_pam_checkpoint(PAM_DIR)


@pytest.fixture(scope="session")
def language(ckpt):
    from pam_ros.model.language import PamLanguageModel

    return PamLanguageModel.from_checkpoint(ckpt, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def greedy(ckpt):
    """The checkpoint's own generation settings (greedy, its repetition penalty), 12 new tokens."""
    from pam_ros.model.language import GenerationSettings

    return GenerationSettings.from_generation_config(ckpt.generation_config, max_new_tokens=12)


NODE_IMAGE_SIZE = 256  # the node tests' SAM 2 input: fast on a CPU


@pytest.fixture(scope="module")
def engine():
    """The tiny model's pipeline in this process: the masks a node under test must reproduce."""
    from pam_ros.engine.pipeline import PerceptionPipeline, PipelineConfig
    from pam_ros.model.selection import ModelSpec

    pipeline = PerceptionPipeline.load(ModelSpec(name="tiny", device="cpu", dtype="float32",
                                                 image_size=NODE_IMAGE_SIZE),
                                       PipelineConfig(new_object_tasks=(), semantics_mode="sync"))
    yield pipeline
    pipeline.close()
