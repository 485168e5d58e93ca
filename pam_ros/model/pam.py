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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Sequence

import torch
from torch import Tensor

from pam_ros.errors import CheckpointError, TaskError
from pam_ros.model.checkpoint import load_pam_checkpoint
from pam_ros.model.language import (
    Generation,
    GenerationRequest,
    GenerationSettings,
    PamLanguageModel,
    StopCheck,
    TextCallback,
)
from pam_ros.model.perceiver import IMAGE_SCALE, VIDEO_FRAME_SCALE, SemanticPerceiver
from pam_ros.model.sam2_backbone import DecoderOutput, ImageEncoding, Sam2Backbone, VisualPrompt
from pam_ros.model.tasks import (
    AFFORDANCE_QUESTION,
    IMAGE_TOKEN_INDEX,
    VIDEO_FRAMES,
    PreparedPrompt,
    affordance_question,
    answer_token_ids,
    chat_prompt,
    is_video_task,
    parse_explanation,
    prepare_prompt,
    select_video_frames,
    tokenize_prompt,
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


@dataclass
class DescribeJob:
    """One question about one object, for `PamModel.describe_batch`."""

    features: object  # RegionFeatures (image task) or a sequence of >= 16 of them (video task)
    task: str | None = "recognize"
    prompt: str | None = None  # free text instead of a task
    history: str | None = None  # video caption: the previous caption
    on_text: TextCallback | None = None
    should_stop: StopCheck | None = None
    settings: GenerationSettings | None = None  # None: the batch's settings
    # jobs about the same object share its region tokens and the prompt up to them (computed once);
    # None: the identity of `features` (the same object passed twice is recognised)
    object_key: Hashable | None = None


def _object_key(job: DescribeJob) -> Hashable:
    if job.object_key is not None:
        return ("key", job.object_key)
    if _is_single(job.features):
        return ("id", id(job.features))
    return ("ids", tuple(id(f) for f in job.features))



@dataclass(frozen=True)
class AffordanceAnswer:
    """PAM's yes/no judgement that one object serves a need, read from its first answer position.

    yes_logit / no_logit: the raw logits (no penalty, no temperature) at the first token id of "Yes"
    and of "No"; log_odds = yes_logit - no_logit; score = exp(yes) / (exp(yes) + exp(no)) = sigmoid(log_odds).
    """

    query: str
    score: float
    log_odds: float
    yes_logit: float
    no_logit: float

    def to_json(self) -> dict:
        return {"query": self.query, "score": self.score, "log_odds": self.log_odds}


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
        return self._region_embeddings_many([features])[0]

    @torch.inference_mode()
    def _region_embeddings_many(self, objects: Sequence) -> list[Tensor]:
        """Region tokens of several objects; image-mode objects go through the perceiver as one batch."""
        out: list[Tensor | None] = [None] * len(objects)
        singles = [i for i, f in enumerate(objects) if _is_single(f)]
        if singles:
            feats = [as_region_features(objects[i]) for i in singles]
            dtype = self.perceiver.sem_tokens.weight.dtype
            embed = torch.stack([f.mid_image_embed.to(device=self.device, dtype=dtype) for f in feats])
            tokens = torch.stack([f.mid_mask_tokens.to(device=self.device, dtype=dtype) for f in feats])
            sem, img = self.perceiver(embed, tokens, IMAGE_SCALE)
            for k, i in enumerate(singles):
                out[i] = self.language.image_region_embeddings(sem[k], img[k])
        for i, features in enumerate(objects):
            if out[i] is not None:
                continue
            frames = [as_region_features(f) for f in features]
            chosen = select_video_frames(len(frames))
            # the scale rule is the official `frame_id == 0`: the clip's first frame gets 1/2
            per_frame = [self.perceive(frames[j], IMAGE_SCALE if j == 0 else VIDEO_FRAME_SCALE) for j in chosen]
            out[i] = self.language.video_region_embeddings(per_frame)
        return out

    def prompt_for(self, features, task: str | None, prompt: str | None = None,
                   history: str | None = None) -> PreparedPrompt:
        """The prompt for a task (or free prompt) on these features; TaskError if they do not fit."""
        video = not _is_single(features)
        if prompt is None:
            if is_video_task(task) and not video:
                raise TaskError(f"task {task!r} needs a track: give {VIDEO_FRAMES}+ frames' features")
            if video and not is_video_task(task):
                raise TaskError(f"task {task!r} is an image task: give one frame's features")
        return prepare_prompt(self.tokenizer, None if prompt is not None else task, prompt=prompt, history=history)

    def prepare(self, features: RegionFeatures | Sequence[RegionFeatures], task: str | None = "recognize",
                *, prompt: str | None = None, history: str | None = None) -> tuple[PreparedPrompt, Tensor]:
        """Prompt ids and the LLM's inputs_embeds [1, T, H] for a task (or free prompt) on a region."""
        prepared = self.prompt_for(features, task, prompt, history)
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
        job = DescribeJob(features, task, prompt=prompt, history=history, on_text=on_text, should_stop=should_stop)
        return self.describe_batch([job], max_new_tokens=max_new_tokens, do_sample=do_sample,
                                   temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)[0]

    def describe_batch(self, jobs: Sequence[DescribeJob], *, max_new_tokens: int | None = None,
                       do_sample: bool = False, temperature: float | None = None, top_p: float | None = None,
                       top_k: int | None = None, seed: int | None = None,
                       share_prefix: bool = True) -> list[PamGeneration]:
        """Answer several jobs (objects and/or tasks) in one batched generation; results in job order.

        Each object's region tokens are computed once (image-mode objects in one perceiver batch);
        with share_prefix, jobs about the same object also run the prompt up to the end of the
        region tokens once and reuse its KV cache. Greedy results equal one `describe` per job.
        Every job is checked before anything runs (a bad task raises TaskError for the batch).
        """
        if not jobs:
            return []
        default = self.generation_settings(max_new_tokens=max_new_tokens, do_sample=do_sample,
                                           temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        prepared = [self.prompt_for(j.features, j.task, j.prompt, j.history) for j in jobs]
        keys = [_object_key(j) for j in jobs]
        unique: dict[Hashable, int] = {}
        objects = []
        for key, job in zip(keys, jobs):
            if key not in unique:
                unique[key] = len(objects)
                objects.append(job.features)
        regions = self._region_embeddings_many(objects)
        requests = []
        for job, prep, key in zip(jobs, prepared, keys):
            region = regions[unique[key]]
            embeds = self.language.embed_prompt(prep.input_ids, region)
            before = prep.input_ids.index(IMAGE_TOKEN_INDEX)
            settings = job.settings or default
            settings.validate()
            requests.append(GenerationRequest(
                embeds, settings, on_text=job.on_text, should_stop=job.should_stop,
                prefix_key=(key, prep.input_ids[:before]) if share_prefix else None,
                prefix_length=before + region.shape[0]))
        outs = self.language.generate_batch(requests, self.tokenizer)
        results = []
        for job, prep, out in zip(jobs, prepared, outs):
            result = PamGeneration(**vars(out), task=prep.task, prompt=prep.user_turn,
                                   num_frames=1 if _is_single(job.features) else VIDEO_FRAMES)
            if prep.task in EXPLAIN_TASKS:
                result.explanation = parse_explanation(out.text)
            results.append(result)
        return results

    @torch.inference_mode()
    def ask(self, objects: RegionFeatures | Sequence[RegionFeatures], query: str, *,
            template: str = AFFORDANCE_QUESTION, batch_size: int = 8) -> list[AffordanceAnswer]:
        """Can each object be used for `query`? One answer per object, in order (one frame's features each).

        The question (tasks.AFFORDANCE_QUESTION unless `template` is given) goes through PAM's chat
        template with the object's region tokens; only the prefill runs (no text is generated), and
        the objects' prefills are batched (batch_size at a time). TaskError for an empty query.
        """
        items = [objects] if _is_single(objects) else list(objects)
        user_turn = affordance_question(query, template)
        input_ids = tokenize_prompt(chat_prompt(user_turn), self.tokenizer)
        yes_id, no_id = answer_token_ids(self.tokenizer)
        if not items:
            return []
        embeds = [self.language.embed_prompt(input_ids, self.region_embeddings(as_region_features(f)))
                  for f in items]
        logits = self.language.first_step_logits(embeds, (yes_id, no_id), batch_size=batch_size)
        pairs = logits.cpu().tolist()  # the one host sync of the whole query
        text = query.strip()
        answers = []
        for yes, no in pairs:
            log_odds = yes - no
            score = 0.5 * (1.0 + math.tanh(0.5 * log_odds))  # the sigmoid, without overflow at any logit
            answers.append(AffordanceAnswer(text, float(score), float(log_odds), float(yes), float(no)))
        return answers

    def describe_image(self, image, prompt: VisualPrompt, tasks: Sequence[str], **generation) -> tuple[
            DecoderOutput, list[PamGeneration]]:
        """One object on one image: segment once, then run every task on the same features."""
        enc = self.encode_image(image)
        dec = self.segment(enc, [prompt])
        feats = self.region_features(dec, 0)
        return dec, self.describe_batch([DescribeJob(feats, task) for task in tasks], **generation)


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
