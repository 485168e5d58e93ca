"""CUDA readiness without a GPU: the whole pipeline in bfloat16 on CPU crosses the same dtype boundaries
(autocast SAM 2, bf16 perceiver + LLM, float32 masks out) that CUDA + bf16 does.

SAM 2 runs at a 256-pixel input to keep CPU time low (same code paths as 1024).
"""
from __future__ import annotations

import numpy as np
import pytest
from pam_tiny_fixture import SAM2_CHECKPOINT, SAM2_CONFIG, video_case, video_frames

from pam_ros.engine.pipeline import PerceptionPipeline, PipelineConfig
from pam_ros.engine.types import PromptRequest, SemanticsState
from pam_ros.model.selection import ModelSpec

CLIP_FRAMES = 8  # the first half of the fixture clip: the prompted frame and seven tracked ones


def run_clip(dtype: str) -> list:
    """The fixture clip's first frames through a sync pipeline: a box on frame 0, caption when it appears."""
    spec = ModelSpec(name="tiny", image_size=256, dtype=dtype)
    pipeline = PerceptionPipeline.load(spec, PipelineConfig(semantics_mode="sync", new_object_tasks=("caption",),
                                                            max_new_tokens=4))
    try:
        pipeline.submit_prompt(PromptRequest(object_id="thing", box=tuple(float(v) for v in video_case()["visual_prompt"])))
        frames = video_frames()[:CLIP_FRAMES]
        return [pipeline.process(frame, 1000 * (i + 1)).objects[0] for i, frame in enumerate(frames)]
    finally:
        pipeline.close()


@pytest.fixture(scope="module")
def float32_run():
    return run_clip("float32")


def test_bfloat16_pipeline_generates_and_its_masks_agree_with_float32(float32_run):
    reduced = run_clip("bfloat16")
    semantics = reduced[0].semantics
    assert semantics.state == SemanticsState.READY and semantics.texts["caption"].strip()
    ious = []
    for ours, reference in zip(reduced, float32_run, strict=True):
        union = np.logical_or(ours.mask, reference.mask).sum()
        assert union > 0  # the object is visible in every frame of the clip at both precisions
        ious.append(np.logical_and(ours.mask, reference.mask).sum() / union)
    assert min(ious) >= 0.9, [round(float(i), 3) for i in ious]


def test_compile_option_compiles_encoder_and_memory_attention():
    """`compile` (ModelSpec / --compile / node parameter) wraps exactly the two hot modules in torch.compile;
    running them compiled is what scripts/gpu_check.sh measures on a GPU."""
    from pam_ros.model.pam import configure_backbone
    from pam_ros.model.sam2_backbone import Sam2Backbone

    backbone = Sam2Backbone.from_config(SAM2_CONFIG, SAM2_CHECKPOINT, overrides={"image_size": 256})
    sam = backbone.sam
    assert sam.image_encoder._compiled_call_impl is None and sam.memory_attention._compiled_call_impl is None
    configure_backbone(backbone, "torch", None, compile=True)
    assert sam.image_encoder._compiled_call_impl is not None
    assert sam.memory_attention._compiled_call_impl is not None
    assert sam.sam_mask_decoder._compiled_call_impl is None
    assert backbone.image_encoder.provider.endswith("(compiled)")
