"""CUDA readiness without a GPU: the whole pipeline in bfloat16 on CPU crosses the same dtype boundaries
(autocast SAM 2, bf16 perceiver + LLM, float32 masks out) that CUDA + bf16 does.

SAM 2 runs at a 256-pixel input to keep CPU time low (same code paths as 1024).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pam_tiny_fixture import SAM2_CHECKPOINT, SAM2_CONFIG, video_case, video_frames

from pam_ros.engine.pipeline import PerceptionPipeline, PipelineConfig
from pam_ros.engine.types import PromptRequest, SemanticsState
from pam_ros.model.selection import ModelSpec

CLIP_FRAMES = 8  # the first half of the fixture clip: the prompted frame and seven tracked ones


def run_clip(dtype: str, seen: dict | None = None) -> list:
    """The fixture clip's first frames through a sync pipeline: a box on frame 0, caption when it appears.

    With `seen`, forward hooks record {stage: (parameter dtypes, output dtype)} for one module per stage."""
    spec = ModelSpec(name="tiny", image_size=256, dtype=dtype)
    pipeline = PerceptionPipeline.load(spec, PipelineConfig(semantics_mode="sync", new_object_tasks=("caption",),
                                                            max_new_tokens=4))
    hooks = [] if seen is None else record_stage_dtypes(pipeline.model, seen)
    try:
        pipeline.submit_prompt(PromptRequest(object_id="thing", box=tuple(float(v) for v in video_case()["visual_prompt"])))
        frames = video_frames()[:CLIP_FRAMES]
        return [pipeline.process(frame, 1000 * (i + 1)).objects[0] for i, frame in enumerate(frames)]
    finally:
        for hook in hooks:
            hook.remove()
        pipeline.close()


def first_tensor(value):
    """The first tensor in a module's output (a tensor, a tuple/list/dict of them, or a ModelOutput)."""
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value
    return next(t for t in (first_tensor(v) for v in items if v is not None) if t is not None)


def record_stage_dtypes(model, seen: dict) -> list:
    """One module per stage of the pipeline: the dtypes of its parameters and of its first floating output."""
    sam = model.backbone.sam
    stages = {
        # inside SAM 2, a module whose last op autocast runs in bf16 (LayerNorm and interpolation stay float32)
        "sam2 image encoder": sam.image_encoder.trunk.blocks[0].attn,
        "sam2 mask decoder": sam.sam_mask_decoder,
        "sam2 memory attention": sam.memory_attention.layers[0].cross_attn_image,  # tracked frames only
        "perceiver": model.perceiver,
        "projector": model.language.projector_semT,
        "llm decoder layer": model.language.llm.model.layers[0],
    }
    hooks = []
    for stage, module in stages.items():
        def hook(module, args, output, stage=stage):
            out = first_tensor(output)
            seen[stage] = ({p.dtype for p in module.parameters()}, out.dtype)
        hooks.append(module.register_forward_hook(hook))
    return hooks


@pytest.fixture(scope="module")
def float32_run():
    return run_clip("float32")


def test_bfloat16_pipeline_generates_and_its_masks_agree_with_float32(float32_run):
    seen: dict = {}
    reduced = run_clip("bfloat16", seen)
    # bfloat16 is what ran: SAM 2 keeps float32 weights and computes under bf16 autocast; the perceiver,
    # the projectors and the LLM hold bf16 weights. Every stage's output is bf16.
    bf16, f32 = torch.bfloat16, torch.float32
    assert seen == {
        "sam2 image encoder": ({f32}, bf16),
        "sam2 mask decoder": ({f32}, bf16),
        "sam2 memory attention": ({f32}, bf16),
        "perceiver": ({bf16}, bf16),
        "projector": ({bf16}, bf16),
        "llm decoder layer": ({bf16}, bf16),
    }, seen
    semantics = reduced[0].semantics
    assert semantics.state == SemanticsState.READY and semantics.texts["caption"].strip()
    ious = []
    for ours, reference in zip(reduced, float32_run, strict=True):
        union = np.logical_or(ours.mask, reference.mask).sum()
        assert union > 0  # the object is visible in every frame of the clip at both precisions
        ious.append(np.logical_and(ours.mask, reference.mask).sum() / union)
    assert min(ious) >= 0.9, [round(float(i), 3) for i in ious]


def test_compile_option_compiles_encoder_and_memory_attention_and_the_encoder_runs_compiled():
    """`compile` (ModelSpec / --compile / node parameter) wraps exactly the two hot modules in torch.compile
    (what scripts/gpu_check.sh measures on a GPU); the compiled encoder runs here once, on CPU, and gives
    the eager encoder's features. Cost: about a minute on two cores the first time (inductor compiles C++),
    a few seconds once torch's compile cache holds the kernels."""
    from pam_ros.model.pam import configure_backbone
    from pam_ros.model.sam2_backbone import Sam2Backbone

    backbone = Sam2Backbone.from_config(SAM2_CONFIG, SAM2_CHECKPOINT, overrides={"image_size": 256})
    sam = backbone.sam
    pixels = backbone.preprocess(video_frames()[0])
    with torch.inference_mode():
        eager = backbone.image_encoder(pixels)
    assert sam.image_encoder._compiled_call_impl is None and sam.memory_attention._compiled_call_impl is None
    configure_backbone(backbone, "torch", None, compile=True)
    assert sam.image_encoder._compiled_call_impl is not None
    assert sam.memory_attention._compiled_call_impl is not None
    assert sam.sam_mask_decoder._compiled_call_impl is None
    assert backbone.image_encoder.provider.endswith("(compiled)")

    from torch._dynamo.utils import counters

    graphs_before = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        compiled = backbone.image_encoder(pixels)
    assert counters["stats"]["unique_graphs"] > graphs_before, "the encoder ran without being compiled"
    for key in ("backbone_fpn", "vision_pos_enc"):
        assert len(compiled[key]) == len(eager[key])
        for ours, reference in zip(compiled[key], eager[key]):
            assert ours.shape == reference.shape and ours.dtype == reference.dtype
            torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
