"""One cold start, measured inside a fresh process for `pam-ros bench startup`: imports, model load (ours,
or the naive way), first mask, first answer, peak RSS; one JSON line on stdout.

    python -m pam_ros.bench.startup_probe MODE SPAWN_TIME PAM_DIR SAM2_CONFIG SAM2_PT IMAGE [IMAGE_SIZE]

MODE is "fast" (PamModel.from_pretrained: parameters on the meta device, checkpoints assigned) or "naive"
(what a plain build does: every module randomly initialised, then the weights copied in). SPAWN_TIME is the
parent's time.time() just before it started this process, so every figure counts from the spawn. Nothing
heavy is imported before the import phase starts.
"""
from __future__ import annotations

import json
import resource
import sys
import time


def naive_load(pam_dir: str, sam2_config: str, sam2_checkpoint: str, overrides: dict | None):
    """PAM loaded the usual way: each module constructed with its random initialisation (transformers'
    default construction, sam2's hydra build), then its weights read and copied into it."""
    import torch
    from hydra.utils import instantiate
    from transformers import Qwen2ForCausalLM

    from pam_ros.model.checkpoint import load_pam_checkpoint
    from pam_ros.model.language import PamLanguageModel, qwen2_config
    from pam_ros.model.pam import PamModel, configure_backbone
    from pam_ros.model.perceiver import SemanticPerceiver
    from pam_ros.model.sam2_backbone import Sam2Backbone
    from pam_ros.model.sam2_checkpoint import load_sam2_config

    ckpt = load_pam_checkpoint(pam_dir)
    sam = instantiate(load_sam2_config(sam2_config, overrides), _recursive_=True)
    sam.load_state_dict(torch.load(sam2_checkpoint, map_location="cpu", weights_only=True)["model"])
    backbone = Sam2Backbone(sam)
    configure_backbone(backbone)
    perceiver = SemanticPerceiver()
    perceiver.load_state_dict(ckpt.tensors["perceiver"])
    config = qwen2_config(ckpt)
    llm = Qwen2ForCausalLM._from_config(config, attn_implementation="eager", dtype=torch.float32)
    language = PamLanguageModel(llm, int(ckpt.config["mm_hidden_size"]), str(ckpt.config["mm_projector_type"]))
    language.load_state_dict(ckpt.tensors["language"], strict=not ckpt.tie_word_embeddings)
    if ckpt.tie_word_embeddings:
        llm.lm_head.weight = llm.model.embed_tokens.weight
    return PamModel(backbone, perceiver.eval(), language.eval(), ckpt.tokenizer, ckpt.generation_config)


def main(argv: list[str]) -> int:
    mode, spawn, pam_dir, sam2_config, sam2_checkpoint, image_path = argv[:6]
    image_size = int(argv[6]) if len(argv) > 6 else None
    spawn = float(spawn)
    marks = {"interpreter": time.time() - spawn}

    import numpy as np
    import torch  # noqa: F401
    import transformers.models.qwen2.modeling_qwen2  # noqa: F401  (both modes need it; imported here, timed)
    from PIL import Image

    from pam_ros.engine.describe import describe_regions, segment_object
    from pam_ros.model.pam import PamModel
    from pam_ros.model.visual_prompt import VisualPrompt

    marks["imports"] = time.time() - spawn
    overrides = {"image_size": image_size} if image_size else None
    if mode == "fast":
        model = PamModel.from_pretrained(pam_dir, sam2_config, sam2_checkpoint, sam2_overrides=overrides)
    elif mode == "naive":
        model = naive_load(pam_dir, sam2_config, sam2_checkpoint, overrides)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    # random weights never say end-of-sequence reliably: every answer runs to its token limit
    model.generation_config.eos_token_id = None
    marks["load"] = time.time() - spawn

    image = np.asarray(Image.open(image_path).convert("RGB"))
    height, width = image.shape[:2]
    box = (width * 0.25, height * 0.25, width * 0.75, height * 0.75)
    segmented = segment_object(model, image, VisualPrompt(box=np.array(box, dtype=np.float32)), frame_index=0)
    marks["first_mask"] = time.time() - spawn

    (generations,) = describe_regions(model, [segmented.features], ["explain"], max_new_tokens=16)
    marks["first_answer"] = time.time() - spawn

    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"mode": mode, **marks, "peak_rss_mib": peak_kib / 1024,
              "mask_pixels": int(segmented.mask.sum()), "token_ids": list(generations[0].token_ids)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
