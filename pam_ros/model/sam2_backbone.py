"""SAM 2.1 as PAM uses it, built from the official `sam2` package.

PAM runs SAM 2.1 through its own slightly modified copy of `sam2`. This module reproduces that
behaviour on top of the unmodified package, without copying its code:

* Build: the hydra config (packaged name or YAML path) is instantiated as a `SAM2VideoPredictor`
  with the overrides PAM's builder applies (dynamic multimask via stability, delta 0.05, thresh
  0.98, binarised clicked masks for the memory encoder, `fill_hole_area` 8) and PAM's config value
  `multimask_output_in_sam: False`.
* Mask decoder (fixture README quirks 1-3): PAM's decoder returns token 0's mask and IoU without
  the stability fallback. We get that by switching the decoder's `dynamic_multimask_via_stability`
  off after building. PAM also reads three things the upstream decoder does not return: the four
  raw mask tokens, the transformer's image output (`mid_image_embed`) and the IoU predictions of
  all four tokens. `DecoderTap` records them with forward hooks while one decoder call runs.
* Preprocessing: PIL bicubic resize to 1024x1024, /255 in float64, float32, ImageNet mean/std.

Everything the official `SAM2Base` offers (prompt encoder, `track_step`, memory encoder, memory
attention) is called as is, so the streaming tracker in pam_ros.engine reuses the same object.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pam_ros.errors import CheckpointError, ImageError, PromptError
from pam_ros.model.image_input import check_rgb_array
from pam_ros.model.memory_attention import memory_attention_in_chunks
from pam_ros.model.sam2_checkpoint import (
    load_sam2_config,
    load_state_dict_strict,
    parameters_on_meta,
    read_sam2_checkpoint,
)
from pam_ros.model.sam2_position import position_encodings_as_views
from pam_ros.model.visual_prompt import BOX_BOTTOM_RIGHT_LABEL, BOX_TOP_LEFT_LABEL, VisualPrompt

log = logging.getLogger(__name__)

# ImageNet statistics used by SAM 2 (and by PAM's frame loader).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass
class ImageEncoding:
    """The image encoder's output for one image, computed once and shared by every prompt.

    backbone holds SAM2Base.forward_image's output for a batch of one ("backbone_fpn",
    "vision_pos_enc"); `features(batch_size)` expands it for N objects without copying.
    """

    orig_hw: tuple[int, int]
    backbone: dict

    def features(self, batch_size: int) -> tuple[list, list, list]:
        """(vision_feats, vision_pos_embeds, feat_sizes) in SAM2Base's (HW)BC layout for N objects."""
        fpn = [x.expand(batch_size, -1, -1, -1) for x in self.backbone["backbone_fpn"]]
        pos = [x.expand(batch_size, -1, -1, -1) for x in self.backbone["vision_pos_enc"]]
        feat_sizes = [(x.shape[-2], x.shape[-1]) for x in pos]
        vision_feats = [x.flatten(2).permute(2, 0, 1) for x in fpn]
        vision_pos = [x.flatten(2).permute(2, 0, 1) for x in pos]
        return vision_feats, vision_pos, feat_sizes


@dataclass
class DecoderReadout:
    """What PAM reads from one mask-decoder call over a batch of B objects."""

    mask_tokens: torch.Tensor  # [B, 4, 256] raw two-way-transformer outputs of the mask tokens
    image_embed: torch.Tensor  # [B, 256, 64, 64] the transformer's image output (keys)
    iou: torch.Tensor  # [B, 4] IoU predictions of the four mask tokens
    token0_logits: torch.Tensor  # [B, 1, 256, 256] token-0 low-res logits before the object gate
    stability: torch.Tensor  # [B] stability score of token0_logits
    mid_mask_tokens: torch.Tensor  # [B, 2, 256] PAM quirk 2: cat([selected token, token 0])


@dataclass
class DecoderOutput:
    """PAM's SAM 2 output for N prompts on one image (N = number of objects)."""

    low_res_logits: torch.Tensor  # [N, 1, 256, 256] token-0 mask after the object-score gate
    mask_logits: torch.Tensor  # [N, 1, H, W] at the original image resolution
    object_score_logits: torch.Tensor  # [N, 1]
    obj_ptr: torch.Tensor  # [N, 256]
    mid_mask_tokens: torch.Tensor  # [N, 2, 256]
    mid_image_embed: torch.Tensor  # [N, 256, 64, 64]
    stability: torch.Tensor  # [N]
    iou: torch.Tensor  # [N, 4]
    mask_tokens: torch.Tensor | None = None  # [N, 4, 256] all raw mask tokens (PAM uses two)
    point_coords: torch.Tensor | None = None  # [N, P, 2] prompts in the 1024 frame (one batch only)
    point_labels: torch.Tensor | None = None


@dataclass
class TrackStepOutput:
    """One SAM2Base.track_step over B objects plus PAM's decoder readout."""

    current_out: dict  # SAM2Base.track_step's dict (pred_masks, obj_ptr, maskmem_features, ...)
    readout: DecoderReadout


# --------------------------------------------------------------------------------------------
# Decoder tap (PAM quirks 1-3) -- hooks, not a fork
# --------------------------------------------------------------------------------------------
class DecoderTap:
    """Records the values PAM's modified mask decoder exposes, during calls of the upstream one.

    Hooks: the two-way transformer gives (hs, keys); the IoU head gives all four IoUs; the decoder
    itself gives token 0's low-res logits before SAM2Base applies the object-score gate (the
    stability fallback is switched off, so its mask output is always token 0's).
    """

    def __init__(self, decoder: torch.nn.Module):
        self._decoder = decoder
        self._calls: list[dict[str, Any]] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "DecoderTap":
        d = self._decoder
        self._handles = [
            d.transformer.register_forward_hook(self._on_transformer),
            d.iou_prediction_head.register_forward_hook(self._on_iou_head),
            d.register_forward_hook(self._on_decoder),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _on_transformer(self, module, args, output) -> None:
        hs, keys = output
        image_embedding = args[0]
        self._calls.append({"hs": hs, "keys": keys, "src_shape": tuple(image_embedding.shape)})

    def _on_iou_head(self, module, args, output) -> None:
        self._calls[-1]["iou"] = output

    def _on_decoder(self, module, args, output) -> None:
        self._calls[-1]["token0_logits"] = output[0]

    def readout(self) -> DecoderReadout:
        """PAM's view of the single decoder call made inside the `with` block."""
        if len(self._calls) != 1:
            raise RuntimeError(f"expected exactly one mask-decoder call, saw {len(self._calls)}")
        call = self._calls[0]
        decoder = self._decoder
        hs, keys = call["hs"], call["keys"]
        b, c, h, w = call["src_shape"]
        # Token order in hs: [object score, IoU, mask 0..3, prompt tokens] when object scores are
        # predicted, else [IoU, mask 0..3, ...].
        first_mask = 2 if decoder.pred_obj_scores else 1
        mask_tokens = hs[:, first_mask : first_mask + decoder.num_mask_tokens]
        # Quirk 3: the image output as the decoder reshapes it before output_upscaling.
        image_embed = keys.transpose(1, 2).reshape(b, c, h, w)
        token0_logits = call["token0_logits"]
        stability = decoder._get_stability_scores(token0_logits[:, 0:1].float()).reshape(-1)
        iou = call["iou"]
        # Quirk 2: token 0 if its mask is stable, else the best of tokens 1..3 by predicted IoU.
        stable = stability >= decoder.dynamic_multimask_stability_thresh
        best_multimask = 1 + torch.argmax(iou[:, 1:], dim=-1)
        selected_index = torch.where(stable, torch.zeros_like(best_multimask), best_multimask)
        batch = torch.arange(mask_tokens.shape[0], device=mask_tokens.device)
        selected = mask_tokens[batch, selected_index]
        mid_mask_tokens = torch.stack([selected, mask_tokens[:, 0]], dim=1)
        # Under autocast these come out in mixed precisions; hand them on uniformly as float32.
        return DecoderReadout(
            mask_tokens=mask_tokens.float(),
            image_embed=image_embed.float(),
            iou=iou.float(),
            token0_logits=token0_logits,
            stability=stability,
            mid_mask_tokens=mid_mask_tokens.float(),
        )


# --------------------------------------------------------------------------------------------
# The backbone
# --------------------------------------------------------------------------------------------
class Sam2Backbone(torch.nn.Module):
    """SAM 2.1 with PAM's build, preprocessing and mask-decoder behaviour.

    `sam` is the official `SAM2VideoPredictor` (a `SAM2Base`); its weights stay float32 and
    `dtype` (float32 / bfloat16 / float16) selects autocast for the forward passes.
    """

    def __init__(self, sam: torch.nn.Module, *, device: str | torch.device = "cpu", dtype=torch.float32):
        super().__init__()
        self.sam = sam
        # PAM quirk 1: PAM's decoder has the stability fallback commented out; the flag stays in
        # the config (the build sets it), so we switch the behaviour off here.
        self.sam.sam_mask_decoder.dynamic_multimask_via_stability = False
        self.dtype = dtype
        self.checkpoint_path: Path | None = None  # the .pt the weights came from (identity of ONNX exports)
        self.to(device)
        self.eval()
        from pam_ros.model.image_encoder import TorchImageEncoder

        # torch by default; model/image_encoder.use_image_encoder switches to an ONNX Runtime session
        self.image_encoder = TorchImageEncoder(self.sam, self.autocast)

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config: str | Path,
        checkpoint: str | Path | None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        state_dict: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> "Sam2Backbone":
        """Build SAM 2.1 from a packaged config name or YAML path and load its weights.

        Weights come from `checkpoint` (an official `.pt`) or `state_dict` (e.g. PAM's
        vision-tower copy, with or without its `model.vision_tower.sam2_model_predictor.` prefix).
        With neither, the module keeps its random initialisation (useful for benchmarks only);
        a warning says so. With weights, the parameters are built on the meta device (no random
        initialisation) and the checkpoint's tensors become them (`parameters_on_meta`).
        `overrides` changes config values after PAM's (e.g. a smaller {"image_size": 256} for fast
        CPU tests; PAM itself needs 1024).
        """
        from hydra.utils import instantiate

        model_cfg = load_sam2_config(config, overrides)
        if checkpoint is not None and state_dict is not None:
            raise CheckpointError("give either a SAM 2 checkpoint file or a state_dict, not both")
        weights = source = None
        if checkpoint is not None:
            weights, source = read_sam2_checkpoint(checkpoint), str(checkpoint)
        elif state_dict is not None:
            weights, source = state_dict, "the given state_dict"
        build_context = parameters_on_meta() if weights is not None else contextlib.nullcontext()
        try:
            with build_context:
                sam = instantiate(model_cfg, _recursive_=True)
        except Exception as exc:
            raise CheckpointError(f"cannot build SAM 2 from config {config}: {exc}") from exc
        if weights is not None:
            load_state_dict_strict(sam, weights, source)
        else:
            log.warning("SAM 2 built from %s without weights: random initialisation", config)
        backbone = cls(sam, device=device, dtype=dtype)
        backbone.checkpoint_path = Path(checkpoint) if checkpoint is not None else None
        return backbone

    @property
    def device(self) -> torch.device:
        return self.sam.no_mem_embed.device

    @property
    def image_size(self) -> int:
        return int(self.sam.image_size)

    def compile_modules(self, encoder: bool = True) -> None:
        """torch.compile the image encoder (unless encoder=False: ONNX Runtime runs it) and the memory
        attention in place (CUDA speed; off by default).

        Memory attention sees a different number of memory tokens as a track grows: dynamic shapes.
        The first frames pay the compilation (tens of seconds).
        """
        if encoder:
            self.sam.image_encoder.compile()
        self.sam.memory_attention.compile(dynamic=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for reduced-precision runs; a no-op in float32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # ---- images ------------------------------------------------------------------------
    @staticmethod
    def check_image(image: np.ndarray | Image.Image) -> Image.Image:
        """The image as an RGB PIL image; ImageError for anything that is not an HxWx3 uint8 image."""
        if isinstance(image, Image.Image):
            if image.width == 0 or image.height == 0:
                raise ImageError("image is empty (zero width or height)")
            return image.convert("RGB")
        if isinstance(image, torch.Tensor):
            raise ImageError("pass images as numpy HxWx3 uint8 RGB arrays or PIL images, not tensors")
        if not isinstance(image, np.ndarray):
            raise ImageError(f"image must be a numpy array or PIL image, got {type(image).__name__}")
        return Image.fromarray(check_rgb_array(image), mode="RGB")

    def preprocess(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        """PAM's SAM 2 input [1, 3, 1024, 1024] float32 on the model's device."""
        pil = self.check_image(image)
        size = self.image_size
        resized = pil.resize((size, size), Image.BICUBIC)
        # /255 in float64 and then float32, as the official frame loader does.
        pixels = torch.from_numpy(np.asarray(resized) / 255.0).permute(2, 0, 1).to(torch.float32)
        mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32)[:, None, None]
        std = torch.tensor(IMAGE_STD, dtype=torch.float32)[:, None, None]
        pixels = (pixels - mean) / std
        return pixels.unsqueeze(0).to(self.device)

    @torch.inference_mode()
    def encode_image(self, image: np.ndarray | Image.Image) -> ImageEncoding:
        """Run the image encoder once (SAM2Base.forward_image, incl. the decoder's high-res convs), by
        torch or ONNX Runtime (`self.image_encoder`, see model/image_encoder.py)."""
        pil = self.check_image(image)
        pixels = self.preprocess(pil)
        return ImageEncoding(orig_hw=(pil.height, pil.width), backbone=self.image_encoder(pixels))

    @torch.inference_mode()
    def encode_images(self, images: Sequence[np.ndarray | Image.Image]) -> list[ImageEncoding]:
        """Encode several images (of any sizes: each is resized to the square model input) in as few
        encoder calls as the encoder allows, one ImageEncoding per image, in order. Several cameras'
        frames share one call this way: on a GPU the encoder's cost is mostly per call."""
        pils = [self.check_image(image) for image in images]
        pixels = [self.preprocess(pil) for pil in pils]
        step = max(1, getattr(self.image_encoder, "max_batch", 1))
        encodings: list[ImageEncoding] = []
        for start in range(0, len(pixels), step):
            chunk = pixels[start:start + step]
            out = self.image_encoder(torch.cat(chunk) if len(chunk) > 1 else chunk[0])
            for offset, pil in enumerate(pils[start:start + len(chunk)]):
                one = {key: [level[offset:offset + 1] for level in levels] for key, levels in out.items()}
                encodings.append(ImageEncoding(orig_hw=(pil.height, pil.width), backbone=one))
        return encodings

    # ---- prompts -----------------------------------------------------------------------
    def prompt_to_points(
        self, prompt: VisualPrompt, orig_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM 2 point inputs [1, P, 2] (1024 frame) and labels [1, P] for a validated prompt.

        As the official predictor: box corners first (labels 2, 3), then the points; coordinates
        divided by the image width/height and multiplied by the model's image size, in float32.
        """
        height, width = orig_hw
        coords = []
        labels = []
        if prompt.box is not None:
            coords.append(torch.as_tensor(prompt.box, dtype=torch.float32).reshape(2, 2))
            labels.append(torch.tensor([BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL], dtype=torch.int32))
        if prompt.points is not None:
            coords.append(torch.as_tensor(prompt.points, dtype=torch.float32).reshape(-1, 2))
            labels.append(torch.as_tensor(prompt.labels, dtype=torch.int32).reshape(-1))
        points = torch.cat(coords, dim=0)[None]
        points = points / torch.tensor([width, height]) * self.image_size
        return points.to(self.device), torch.cat(labels)[None].to(self.device)

    def point_inputs(
        self, prompts: Sequence[VisualPrompt], orig_hw: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """Batched SAM 2 point inputs; every prompt must have the same number of SAM points."""
        pairs = [self.prompt_to_points(p, orig_hw) for p in prompts]
        return {
            "point_coords": torch.cat([c for c, _ in pairs], dim=0),
            "point_labels": torch.cat([l for _, l in pairs], dim=0),
        }

    # ---- decoding ----------------------------------------------------------------------
    @torch.inference_mode()
    def track_step(
        self,
        enc: ImageEncoding,
        *,
        batch_size: int,
        frame_idx: int,
        is_init_cond_frame: bool,
        output_dict: dict,
        num_frames: int,
        point_inputs: dict | None = None,
        run_mem_encoder: bool = True,
        memory_attention_chunk: int | None = None,
    ) -> TrackStepOutput:
        """SAM2Base.track_step for `batch_size` objects on the shared encoding, plus PAM's readout.

        memory_attention_chunk: run the memory attention on at most this many objects at a time (same
        result; faster on a CPU, see `memory_attention_in_chunks`); None: the whole batch at once.
        """
        vision_feats, vision_pos, feat_sizes = enc.features(batch_size)
        with (
            self.autocast(),
            memory_attention_in_chunks(self.sam.memory_attention, memory_attention_chunk),
            position_encodings_as_views(self.sam),
            DecoderTap(self.sam.sam_mask_decoder) as tap,
        ):
            current_out = self.sam.track_step(
                frame_idx=frame_idx,
                is_init_cond_frame=is_init_cond_frame,
                current_vision_feats=vision_feats,
                current_vision_pos_embeds=vision_pos,
                feat_sizes=feat_sizes,
                point_inputs=point_inputs,
                mask_inputs=None,
                output_dict=output_dict,
                num_frames=num_frames,
                run_mem_encoder=run_mem_encoder,
            )
        return TrackStepOutput(current_out=current_out, readout=tap.readout())

    def upsample_to_image(self, low_res_logits: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Low-res logits [N,1,256,256] -> [N,1,H,W], bilinear as SAM 2's predictor."""
        return F.interpolate(low_res_logits.float(), size=orig_hw, mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def decode(self, enc: ImageEncoding, prompts: Sequence[VisualPrompt]) -> DecoderOutput:
        """Segment N prompts on one image without memory (a conditioning frame), PAM's way.

        Prompts with the same number of SAM points run as one batch; different counts run as
        separate batches (padding would change the result), and outputs keep the prompt order.
        """
        if len(prompts) == 0:
            raise PromptError("decode needs at least one prompt")
        height, width = enc.orig_hw
        checked = [p.validate((width, height)) for p in prompts]
        groups: dict[int, list[int]] = {}
        for index, prompt in enumerate(checked):
            groups.setdefault(prompt.num_sam_points, []).append(index)
        parts: list[tuple[list[int], DecoderOutput]] = []
        for indices in groups.values():
            group_prompts = [checked[i] for i in indices]
            inputs = self.point_inputs(group_prompts, enc.orig_hw)
            step = self.track_step(
                enc,
                batch_size=len(indices),
                frame_idx=0,
                is_init_cond_frame=True,
                output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                num_frames=1,
                point_inputs=inputs,
                run_mem_encoder=False,
            )
            parts.append((indices, self._decoder_output(step, enc.orig_hw, inputs)))
        if len(parts) == 1:
            return parts[0][1]
        return _merge_in_order(parts, len(prompts))

    def _decoder_output(
        self, step: TrackStepOutput, orig_hw: tuple[int, int], inputs: dict | None
    ) -> DecoderOutput:
        out, readout = step.current_out, step.readout
        low_res = out["pred_masks"]
        return DecoderOutput(
            low_res_logits=low_res,
            mask_logits=self.upsample_to_image(low_res, orig_hw),
            object_score_logits=out["object_score_logits"],
            obj_ptr=out["obj_ptr"],
            mid_mask_tokens=readout.mid_mask_tokens,
            mid_image_embed=readout.image_embed,
            stability=readout.stability,
            iou=readout.iou,
            mask_tokens=readout.mask_tokens,
            point_coords=None if inputs is None else inputs["point_coords"],
            point_labels=None if inputs is None else inputs["point_labels"],
        )


def _merge_in_order(parts: list[tuple[list[int], DecoderOutput]], total: int) -> DecoderOutput:
    """Reassemble per-group decoder outputs in the original prompt order."""
    order = torch.tensor([i for indices, _ in parts for i in indices])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(total)

    def merged(name: str) -> torch.Tensor:
        stacked = torch.cat([getattr(out, name) for _, out in parts], dim=0)
        return stacked[inverse.to(stacked.device)]

    return DecoderOutput(
        low_res_logits=merged("low_res_logits"),
        mask_logits=merged("mask_logits"),
        object_score_logits=merged("object_score_logits"),
        obj_ptr=merged("obj_ptr"),
        mid_mask_tokens=merged("mid_mask_tokens"),
        mid_image_embed=merged("mid_image_embed"),
        stability=merged("stability"),
        iou=merged("iou"),
        mask_tokens=merged("mask_tokens"),
    )
