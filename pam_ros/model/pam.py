"""PamModel: SAM 2.1 + Semantic Perceiver + Qwen2, the whole Perceive Anything Model behind one facade.

Typical use (several prompts and tasks on one image encode the image once):

    pam = PamModel.from_pretrained(pam_dir, "sam2.1_hiera_l", "sam2.1_hiera_large.pt", device="cuda",
                                   dtype=torch.bfloat16)
    enc = pam.encode_image(rgb)                          # image encoder, once
    dec = pam.segment(enc, [VisualPrompt(box=np.array([x1, y1, x2, y2]))])
    feats = pam.region_features(dec, 0)                  # what the perceiver needs, per object
    out = pam.describe(feats, "explain", on_text=print)  # Generation(text, token_ids, explanation ...)

The engine keeps `RegionFeatures` per tracked object and frame and calls `describe` later, with one
frame's features (image mode) or a list of at least 16 frames' features (PAM's video mode); the image
encoder is never re-run for semantics.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from pam_ros.errors import CheckpointError, TaskError
from pam_ros.model.checkpoint import load_pam_checkpoint
from pam_ros.model.language import (
    Generation,
    GenerationSettings,
    PamLanguageModel,
    StopCheck,
    TextCallback,
)
from pam_ros.model.perceiver import IMAGE_SCALE, VIDEO_FRAME_SCALE, SemanticPerceiver
from pam_ros.model.sam2_backbone import DecoderOutput, ImageEncoding, Sam2Backbone, VisualPrompt
from pam_ros.model.tasks import (
    VIDEO_FRAMES,
    PreparedPrompt,
    is_video_task,
    parse_explanation,
    prepare_prompt,
    select_video_frames,
    torch_dtype,
)

log = logging.getLogger(__name__)

EXPLAIN_TASKS = ("explain", "explain_zh")


@dataclass
class RegionFeatures:
    """One object in one frame, as the Semantic Perceiver consumes it: the one per-frame feature type
    that the tracker keeps, one-shot describes produce and the model reads."""

    mid_mask_tokens: Tensor  # [2, 256] PAM quirk 2: [selected mask token, mask token 0]
    mid_image_embed: Tensor  # [256, 64, 64] the decoder's image output (quirk 3)
    frame_index: int = 0  # index of the frame in its stream / clip
    stamp_ns: int = 0  # stamp of that frame (0 when unknown)
    object_score_logit: float = 0.0  # SAM 2's object score on that frame

    def __post_init__(self) -> None:
        if self.mid_mask_tokens.ndim == 3:
            self.mid_mask_tokens = self.mid_mask_tokens[0]
        if self.mid_image_embed.ndim == 4:
            self.mid_image_embed = self.mid_image_embed[0]
        if self.mid_mask_tokens.ndim != 2 or self.mid_image_embed.ndim != 3:
            raise TaskError(
                "region features must be mid_mask_tokens [2, C] and mid_image_embed [C, H, W], got "
                f"{list(self.mid_mask_tokens.shape)} and {list(self.mid_image_embed.shape)}"
            )


def as_region_features(item) -> RegionFeatures:
    """Check that `item` is a RegionFeatures (a clear TaskError for anything else)."""
    if not isinstance(item, RegionFeatures):
        raise TaskError(f"expected RegionFeatures (mid_mask_tokens + mid_image_embed), got {type(item).__name__}")
    return item


def _is_single(features) -> bool:
    return hasattr(features, "mid_mask_tokens")


@dataclass
class PamGeneration(Generation):
    """A Generation plus what was asked; `explanation` is filled for the explain tasks."""

    task: str = ""
    prompt: str = ""  # the user turn sent to the LLM
    explanation: object | None = None  # tasks.Explanation (category, definition, raw)
    num_frames: int = 1  # frames the LLM saw (16 in video mode)






class PamModel:
    """The Perceive Anything Model: segmentation (SAM 2.1) and region semantics (perceiver + Qwen2)."""

    def __init__(self, backbone: Sam2Backbone, perceiver: SemanticPerceiver, language: PamLanguageModel,
                 tokenizer, generation_config, *, name: str = "") -> None:
        self.backbone = backbone
        self.perceiver = perceiver
        self.language = language
        self.tokenizer = tokenizer
        self.generation_config = generation_config
        self.name = name

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pam_dir: str | Path, sam2_config: str | Path,
                        sam2_checkpoint: str | Path | None = None, *, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = torch.float32,
                        attn_implementation: str | None = None,
                        sam2_overrides: dict | None = None, image_encoder: str = "torch",
                        image_encoder_onnx: str | Path | None = None, compile: bool = False) -> "PamModel":
        """Load a PAM folder and SAM 2.1 (config name or YAML + official .pt), strictly offline.

        sam2_overrides: SAM 2 config values to change (e.g. {"image_size": 512}: faster on small
        devices, but no longer the official PAM computation, which uses 1024).

        image_encoder: "torch" or "onnxruntime" (SAM 2's image encoder in an ONNX Runtime session, from
        `image_encoder_onnx`, or exported once into the cache when that is empty; model/image_encoder.py).
        compile: torch.compile SAM 2's image encoder and memory attention (for CUDA; off by default).

        SAM 2 weights come from `sam2_checkpoint` as in the official code. Without one, the SAM 2 copy
        inside a full PAM save (`model.vision_tower.sam2_model_predictor.*`) is used if present; with
        one, that copy is dropped on purpose (the official path never reads it).
        """
        dtype = torch_dtype(dtype)
        device = check_device(device)
        ckpt = load_pam_checkpoint(pam_dir)
        sam2_copy = ckpt.sam2_state_dict
        if sam2_checkpoint is not None:
            if sam2_copy is not None:
                log.info("using SAM 2 weights from %s; ignoring the copy inside %s", sam2_checkpoint, pam_dir)
            backbone = Sam2Backbone.from_config(sam2_config, sam2_checkpoint, device=device, dtype=dtype,
                                                overrides=sam2_overrides)
        elif sam2_copy is not None:
            log.info("using the SAM 2 copy stored in %s", pam_dir)
            backbone = Sam2Backbone.from_config(sam2_config, None, device=device, dtype=dtype,
                                                state_dict=sam2_copy, overrides=sam2_overrides)
        else:
            raise CheckpointError(
                f"no SAM 2 weights: {pam_dir} holds no SAM 2 copy, so give the SAM 2.1 checkpoint (.pt)"
            )
        ckpt.tensors.pop("sam2", None)  # free the copy
        configure_backbone(backbone, image_encoder, image_encoder_onnx, compile)
        perceiver = SemanticPerceiver.from_checkpoint(ckpt, device=device, dtype=dtype)
        language = PamLanguageModel.from_checkpoint(ckpt, device=device, dtype=dtype,
                                                    attn_implementation=attn_implementation)
        return cls(backbone, perceiver, language, ckpt.tokenizer, ckpt.generation_config,
                   name=Path(pam_dir).name)

    @classmethod
    def from_name(cls, name: str, *, device: str | torch.device = "cpu",
                  dtype: str | torch.dtype = torch.float32, attn_implementation: str | None = None,
                  **backbone_options) -> "PamModel":
        """A model fetched earlier with `pam-ros download NAME` (found in the Hugging Face cache, offline).
        backbone_options: image_encoder, image_encoder_onnx, compile, sam2_overrides (from_pretrained)."""
        from pam_ros.model.registry import resolve_model

        paths = resolve_model(name)
        model = cls.from_pretrained(paths.pam_dir, paths.sam2_config, paths.sam2_checkpoint, device=device,
                                    dtype=dtype, attn_implementation=attn_implementation, **backbone_options)
        model.name = name
        return model

    @property
    def device(self) -> torch.device:
        return self.language.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language.dtype

    # ------------------------------------------------------------------ segmentation
    def encode_image(self, image) -> ImageEncoding:
        """Run SAM 2's image encoder once; the result serves any number of prompts."""
        return self.backbone.encode_image(image)

    def segment(self, enc: ImageEncoding, prompts: Sequence[VisualPrompt]) -> DecoderOutput:
        """Masks and PAM features for N prompts on an encoded image (no memory)."""
        return self.backbone.decode(enc, prompts)

    @staticmethod
    def region_features(dec: DecoderOutput, index: int, frame_index: int = 0) -> RegionFeatures:
        """The perceiver inputs of object `index` of a decoder output."""
        return RegionFeatures(dec.mid_mask_tokens[index], dec.mid_image_embed[index], frame_index)

    # ------------------------------------------------------------------ semantics
    @torch.inference_mode()
    def perceive(self, features: RegionFeatures, scale: float = IMAGE_SCALE) -> tuple[Tensor, Tensor]:
        """Semantic Perceiver outputs (sem_tokens [1, 16, C], image_tokens [1, N, 4C])."""
        features = as_region_features(features)
        dtype = self.perceiver.sem_tokens.weight.dtype
        embed = features.mid_image_embed.to(device=self.device, dtype=dtype)[None]
        tokens = features.mid_mask_tokens.to(device=self.device, dtype=dtype)[None]
        return self.perceiver(embed, tokens, scale)

    @torch.inference_mode()
    def region_embeddings(self, features: RegionFeatures | Sequence[RegionFeatures]) -> Tensor:
        """The LLM tokens that replace `<image>`: one frame (image mode) or PAM's video mode."""
        if _is_single(features):
            return self.language.image_region_embeddings(*self.perceive(as_region_features(features), IMAGE_SCALE))
        frames = [as_region_features(f) for f in features]
        chosen = select_video_frames(len(frames))
        # the scale rule is the official `frame_id == 0`: the clip's first frame gets 1/2
        per_frame = [self.perceive(frames[i], IMAGE_SCALE if i == 0 else VIDEO_FRAME_SCALE) for i in chosen]
        return self.language.video_region_embeddings(per_frame)

    def prepare(self, features: RegionFeatures | Sequence[RegionFeatures], task: str | None = "recognize",
                *, prompt: str | None = None, history: str | None = None) -> tuple[PreparedPrompt, Tensor]:
        """Prompt ids and the LLM's inputs_embeds [1, T, H] for a task (or free prompt) on a region."""
        video = not _is_single(features)
        if prompt is None:
            if is_video_task(task) and not video:
                raise TaskError(f"task {task!r} needs a track: give {VIDEO_FRAMES}+ frames' features")
            if video and not is_video_task(task):
                raise TaskError(f"task {task!r} is an image task: give one frame's features")
        prepared = prepare_prompt(self.tokenizer, None if prompt is not None else task, prompt=prompt,
                                  history=history)
        region = self.region_embeddings(features)
        return prepared, self.language.embed_prompt(prepared.input_ids, region)

    def generation_settings(self, *, max_new_tokens: int | None = None, do_sample: bool = False,
                            temperature: float | None = None, top_p: float | None = None,
                            top_k: int | None = None, seed: int | None = None) -> GenerationSettings:
        """Decoding settings: the checkpoint's generation_config with these overrides."""
        return GenerationSettings.from_generation_config(
            self.generation_config, max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)

    def describe(self, features: RegionFeatures | Sequence[RegionFeatures], task: str | None = "recognize", *,
                 prompt: str | None = None, history: str | None = None, max_new_tokens: int | None = None,
                 do_sample: bool = False, temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None, seed: int | None = None, on_text: TextCallback | None = None,
                 should_stop: StopCheck | None = None) -> PamGeneration:
        """Generate PAM's answer for one object.

        features: one frame's RegionFeatures (image tasks) or a list of >= 16 frames' (video tasks);
            anything with mid_mask_tokens / mid_image_embed (the tracker's FrameFeatures) works too.
        task: a task name (tasks.TASK_PROMPTS) or None with `prompt` (free text about the region).
        Greedy by default; repetition penalty etc. from the checkpoint's generation_config.
        on_text(text_so_far, num_tokens) streams; should_stop() -> True cancels between tokens.
        """
        settings = self.generation_settings(max_new_tokens=max_new_tokens, do_sample=do_sample,
                                            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        prepared, embeds = self.prepare(features, task, prompt=prompt, history=history)
        out = self.language.generate(embeds, settings, self.tokenizer, on_text=on_text, should_stop=should_stop)
        result = PamGeneration(**vars(out), task=prepared.task, prompt=prepared.user_turn,
                               num_frames=1 if _is_single(features) else VIDEO_FRAMES)
        if prepared.task in EXPLAIN_TASKS:
            result.explanation = parse_explanation(out.text)
        return result

    def describe_image(self, image, prompt: VisualPrompt, tasks: Sequence[str], **generation) -> tuple[
            DecoderOutput, list[PamGeneration]]:
        """One object on one image: segment once, then run every task on the same features."""
        enc = self.encode_image(image)
        dec = self.segment(enc, [prompt])
        feats = self.region_features(dec, 0)
        return dec, [self.describe(feats, task, **generation) for task in tasks]


def configure_backbone(backbone: Sam2Backbone, image_encoder: str = "torch",
                       image_encoder_onnx: str | Path | None = None, compile: bool = False) -> None:
    """Select the image encoder (torch / onnxruntime), then optionally torch.compile SAM 2's hot modules:
    in this order, since an ONNX export (on first use) traces the eager encoder; with ONNX Runtime only
    the memory attention is compiled."""
    from pam_ros.model.image_encoder import use_image_encoder

    use_image_encoder(backbone, image_encoder, image_encoder_onnx or None)
    if compile:
        backbone.compile_modules(encoder=image_encoder == "torch")


def check_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"unknown device {device!r}: {exc}") from None
    if dev.type not in ("cpu", "cuda"):
        raise CheckpointError(f"unsupported device {device!r}; use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CheckpointError(f"device {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CheckpointError(f"device {device!r} does not exist ({torch.cuda.device_count()} GPU(s))")
    return dev
