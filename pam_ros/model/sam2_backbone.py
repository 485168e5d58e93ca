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

log = logging.getLogger(__name__)

# ImageNet statistics used by SAM 2 (and by PAM's frame loader).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# Overrides PAM's `build_sam2_video_predictor` applies on top of the YAML (fixture README,
# "How the reference was run"). `multimask_output_in_sam` is the value in PAM's own config copy;
# setting it here makes the packaged SAM 2.1 configs behave like PAM's.
PAM_BUILD_OVERRIDES: dict[str, Any] = {
    "_target_": "sam2.sam2_video_predictor.SAM2VideoPredictor",
    "sam_mask_decoder_extra_args": {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    },
    "binarize_mask_from_pts_for_mem_enc": True,
    "fill_hole_area": 8,
    "multimask_output_in_sam": False,
}

# Key prefix of the SAM 2 copy inside a full PAM training save (model.safetensors).
PAM_VISION_TOWER_PREFIX = "model.vision_tower.sam2_model_predictor."

# SAM 2 point labels for the two box corners.
BOX_TOP_LEFT_LABEL = 2
BOX_BOTTOM_RIGHT_LABEL = 3


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------
@dataclass
class VisualPrompt:
    """A visual prompt in pixel coordinates of the original image.

    points: [P, 2] float (x, y); labels: [P] int, 1 = positive, 0 = negative; box: [4] x1, y1, x2, y2.
    A box may be combined with points (SAM 2 puts the box corners first).
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None

    @property
    def num_sam_points(self) -> int:
        """Number of SAM 2 prompt points this prompt becomes (a box counts as two)."""
        n = 0 if self.points is None else int(np.asarray(self.points).reshape(-1, 2).shape[0])
        return n + (2 if self.box is not None else 0)

    def validate(self, image_size_wh: tuple[int, int] | None = None) -> "VisualPrompt":
        """Check the prompt and return a normalised copy (float32/int32 arrays, clipped box).

        Raises PromptError on: no prompt at all, points without labels (or the reverse), a count
        mismatch, NaN/inf, labels not in {0, 1}, an inverted or zero-area box and, when the image
        size is given, points outside the image or a box entirely outside it. A box partly outside
        the image is clipped to it.
        """
        points = labels = box = None
        if self.points is not None or self.labels is not None:
            if self.points is None or self.labels is None:
                raise PromptError("points and labels must be given together")
            points = np.asarray(self.points, dtype=np.float64)
            labels = np.asarray(self.labels)
            if points.size == 0 and labels.size == 0:
                points = labels = None
            else:
                if points.ndim != 2 or points.shape[1] != 2:
                    raise PromptError(f"points must have shape [P, 2], got {list(points.shape)}")
                if labels.ndim != 1 or labels.shape[0] != points.shape[0]:
                    raise PromptError(
                        f"labels must have shape [{points.shape[0]}] to match the points, "
                        f"got {list(labels.shape)}"
                    )
                if not np.all(np.isfinite(points)):
                    raise PromptError("point coordinates contain NaN or infinity")
                if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
                    raise PromptError("point labels contain NaN or infinity")
                if not np.all(np.isin(labels, (0, 1))):
                    raise PromptError(f"point labels must be 0 or 1, got {labels.tolist()}")
                labels = labels.astype(np.int32)
        if self.box is not None:
            box = np.asarray(self.box, dtype=np.float64).reshape(-1)
            if box.shape[0] != 4:
                raise PromptError(f"box must have 4 numbers x1, y1, x2, y2, got {box.shape[0]}")
            if not np.all(np.isfinite(box)):
                raise PromptError("box contains NaN or infinity")
            if box[2] <= box[0] or box[3] <= box[1]:
                raise PromptError(f"box {box.tolist()} is inverted or has zero area (need x2>x1, y2>y1)")
        if points is None and box is None:
            raise PromptError("a prompt needs at least one point or a box")
        if image_size_wh is not None:
            width, height = image_size_wh
            if points is not None:
                outside = (
                    (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (points[:, 1] > height)
                )
                if np.any(outside):
                    raise PromptError(
                        f"points {points[outside].tolist()} lie outside the {width}x{height} image"
                    )
            if box is not None:
                if box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
                    raise PromptError(f"box {box.tolist()} lies entirely outside the {width}x{height} image")
                box = np.array(
                    [max(box[0], 0.0), max(box[1], 0.0), min(box[2], width), min(box[3], height)]
                )
        return VisualPrompt(
            points=None if points is None else points.astype(np.float32),
            labels=labels,
            box=None if box is None else box.astype(np.float32),
        )


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
# Memory attention in slices of the batch
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def memory_attention_in_chunks(memory_attention: torch.nn.Module, chunk: int | None):
    """While active, SAM 2's memory attention runs on at most `chunk` objects at a time (None: all).

    Why: on a CPU one memory-attention call over N objects took longer than N calls over one object
    (hiera-tiny, 256 px, 1 and 2 threads: about 20 % at 4 objects, 10-15 % at 16). Its activations
    grow with N (the MLP's [N*HW, 2048] hidden layer, the [N, HW, memory] attention) and fall out of
    cache, and SAM 2 stacks the memory sequence-first, so with N > 1 every key/value projection
    reads it strided. The result is the same: each object's output depends on its own slice only
    (checked bitwise on random inputs). The mask decoder and memory encoder stay batched. The
    memory is laid out batch-first once, so that each slice is contiguous where the module
    transposes it. A torch.compile'd module is left alone (its graph would be traced per slice).
    """
    if not chunk or getattr(memory_attention, "_compiled_call_impl", None) is not None:
        yield
        return
    forward = memory_attention.forward  # the module's own (bound) forward

    def forward_in_chunks(curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
        batch = memory.shape[1]  # sequence-first [tokens, batch, channels]
        if batch <= chunk:
            return forward(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens)
        curr_list = curr if isinstance(curr, list) else [curr]
        pos_list = curr_pos if isinstance(curr_pos, list) else [curr_pos]
        memory_bf = memory.transpose(0, 1).contiguous()
        memory_pos_bf = None if memory_pos is None else memory_pos.transpose(0, 1).contiguous()
        parts = []
        for start in range(0, batch, chunk):
            rows = slice(start, start + chunk)
            parts.append(
                forward(
                    [c[:, rows] for c in curr_list],
                    memory_bf[rows].transpose(0, 1),
                    [None if p is None else p[:, rows] for p in pos_list],
                    None if memory_pos_bf is None else memory_pos_bf[rows].transpose(0, 1),
                    num_obj_ptr_tokens,
                )
            )
        # batch-first underneath, as the module's own output: later ops see the same memory layout
        return torch.cat([part.transpose(0, 1) for part in parts], dim=0).transpose(0, 1)

    replaced = vars(memory_attention).get("forward")  # an instance-level forward (e.g. sam2's VOS predictor)
    memory_attention.forward = forward_in_chunks
    try:
        yield
    finally:
        if replaced is None:
            del memory_attention.forward
        else:
            memory_attention.forward = replaced


# --------------------------------------------------------------------------------------------
# Config and checkpoint loading
# --------------------------------------------------------------------------------------------
def resolve_config_path(config: str | Path) -> Path:
    """A YAML path as given, or the packaged SAM 2 / 2.1 config of that name.

    Accepted names: "sam2.1_hiera_t", "sam2.1_hiera_l.yaml", "configs/sam2.1/sam2.1_hiera_b+.yaml".
    """
    path = Path(config)
    if path.is_file():
        return path
    import sam2

    package_dir = Path(sam2.__path__[0])
    name = path.name if path.suffix == ".yaml" else path.name + ".yaml"
    for folder in ("configs/sam2.1", "configs/sam2", "configs/sam2.1_training", "."):
        candidate = package_dir / folder / name
        if candidate.is_file():
            return candidate
    packaged = sorted(p.stem for p in (package_dir / "configs").glob("*/*.yaml"))
    raise CheckpointError(
        f"SAM 2 config {str(config)!r} is neither a YAML file nor a packaged config name "
        f"(packaged: {', '.join(packaged)})"
    )


def load_sam2_config(config: str | Path, overrides: Mapping[str, Any] | None = None):
    """The config's `model` node with PAM's build overrides applied (an OmegaConf DictConfig).

    `overrides` (dotted keys under `model`, e.g. {"image_size": 512}) are applied last.
    """
    from omegaconf import OmegaConf

    path = resolve_config_path(config)
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml errors come in many types
        raise CheckpointError(f"cannot read SAM 2 config {path}: {exc}") from exc
    if "model" not in cfg:
        raise CheckpointError(f"SAM 2 config {path} has no 'model' section")
    model_cfg = cfg.model
    for key, value in {**PAM_BUILD_OVERRIDES, **(overrides or {})}.items():
        OmegaConf.update(model_cfg, key, value, merge=True, force_add=True)
    OmegaConf.resolve(model_cfg)
    return model_cfg


def read_sam2_checkpoint(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official SAM 2 `.pt` ({"model": state_dict}); tensors only, no pickles."""
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"SAM 2 checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read SAM 2 checkpoint {path}: {exc}") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"SAM 2 checkpoint {path} holds no state dict")
    return dict(obj)


def _short_list(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Load with strict key and shape checks; errors name the offending keys.

    Stored tensors of another floating dtype (e.g. bf16) are upcast to the model's dtype by the
    copy, which is exact for bf16 -> fp32.
    """
    if state_dict and all(k.startswith(PAM_VISION_TOWER_PREFIX) for k in state_dict):
        state_dict = {k[len(PAM_VISION_TOWER_PREFIX) :]: v for k, v in state_dict.items()}
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    problems = []
    if missing:
        problems.append(f"missing keys: {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short_list(unexpected)}")
    for key in sorted(set(expected) & set(state_dict)):
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            problems.append(f"key {key} is not a tensor ({type(value).__name__})")
        elif tuple(value.shape) != tuple(expected[key].shape):
            problems.append(
                f"shape mismatch for {key}: checkpoint {list(value.shape)}, "
                f"model {list(expected[key].shape)}"
            )
        elif value.is_floating_point() != expected[key].is_floating_point():
            problems.append(f"dtype mismatch for {key}: checkpoint {value.dtype}, model {expected[key].dtype}")
    if problems:
        raise CheckpointError(f"SAM 2 weights from {source} do not fit the model: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


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
        a warning says so. `overrides` changes config values after PAM's (e.g. a smaller
        {"image_size": 256} for fast CPU tests; PAM itself needs 1024).
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
        try:
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
        if image.ndim != 3 or image.shape[2] != 3:
            raise ImageError(f"image must have shape [H, W, 3] (RGB), got {list(image.shape)}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ImageError(f"image is empty: shape {list(image.shape)}")
        if image.dtype != np.uint8:
            raise ImageError(f"image must be uint8, got {image.dtype}")
        return Image.fromarray(np.ascontiguousarray(image), mode="RGB")

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
