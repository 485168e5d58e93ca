"""Segment everything: the official `SAM2AutomaticMaskGenerator` on the SAM 2 that PAM already loaded.

    found = find_regions(pam.backbone, rgb, RegionSettings(points_per_side=16), max_regions=16)
    for region in found.regions: ...                      # best predicted_iou first
    dec = region_decoder_output(pam.backbone, found)       # PAM's decoder features, one per region
    pam.describe(pam.region_features(dec, i), "explain")   # semantics without a second image encoding

The regions are exactly the generator's (grid of point prompts, IoU / stability filters, box NMS),
run on `backbone.sam`, the same weights the tracker and the describe path use. The generator encodes
the image once (SAM2ImagePredictor.set_image); `EncodingTap` keeps that encoding so PAM's decoder
can then read each region's mask tokens and image embedding from it, prompted with the region's box.
That encoding comes from the generator's own preprocessing (SAM2Transforms: bilinear resize), not
PAM's PIL bicubic resize: one encoding shared by regions and semantics is the point here, and the
features differ from a `describe --box` run only by that resize.
"""
from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass

import numpy as np
import torch

from pam_ros.errors import RegionSettingsError
from pam_ros.model.region_settings import DEFAULT_MAX_REGIONS, DEFAULT_POINTS_PER_SIDE, RegionSettings  # noqa: F401
from pam_ros.model.sam2_backbone import DecoderOutput, ImageEncoding, Sam2Backbone, VisualPrompt


def _generator_class():
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    return SAM2AutomaticMaskGenerator


def generator_default(keyword: str):
    """The official generator's own default for one of its keyword arguments."""
    return inspect.signature(_generator_class().__init__).parameters[keyword].default


def check_max_regions(max_regions: int) -> int:
    if isinstance(max_regions, bool) or not isinstance(max_regions, (int, np.integer)) or max_regions < 1:
        raise RegionSettingsError(f"the most regions to keep must be an integer >= 1, got {max_regions!r}")
    return int(max_regions)


@dataclass
class Region:
    """One region of the generator, in pixels of the image."""

    mask: np.ndarray  # bool [H, W]
    area: int
    bbox_xywh: tuple[float, float, float, float]  # the generator's box (x, y, w, h; x + w = last column)
    predicted_iou: float
    stability_score: float
    point: tuple[float, float]  # the grid point that produced it (x, y)

    def box_xyxy(self) -> tuple[float, float, float, float]:
        """The region's box as pixel edges x1, y1, x2, y2 (the last column and row included)."""
        x, y, w, h = self.bbox_xywh
        return (x, y, x + w + 1, y + h + 1)

    def box_prompt(self) -> VisualPrompt:
        """The region's box as a SAM 2 box prompt."""
        return VisualPrompt(box=np.array(self.box_xyxy(), dtype=np.float32))


@dataclass
class FoundRegions:
    """The kept regions and the one image encoding they came from."""

    regions: list[Region]
    encoding: ImageEncoding
    settings: RegionSettings  # resolved: exactly what the generator was given
    generated: int = 0  # regions the generator returned before the area filter and the cap
    skipped_small: int = 0  # left out as smaller than min_area


class EncodingTap:
    """Keeps the output of SAM 2's image encoder while the generator runs (a forward hook, not a fork).

    SAM2Base.forward_image projects the two high-resolution levels in place in the dict the encoder
    returned, so after the call the kept dict holds exactly what forward_image returned. Only calls
    from the thread that opened the tap are kept (another thread may track on the same model).
    """

    def __init__(self, sam: torch.nn.Module):
        self._encoder = sam.image_encoder
        self._thread = threading.get_ident()
        self.outputs: list[dict] = []
        self._handle = None

    def __enter__(self) -> "EncodingTap":
        self._handle = self._encoder.register_forward_hook(self._on_encoder)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def _on_encoder(self, module, args, output) -> None:
        if threading.get_ident() == self._thread:
            self.outputs.append(output)

    def encoding(self, orig_hw: tuple[int, int]) -> ImageEncoding:
        if len(self.outputs) != 1:
            raise RuntimeError(f"expected one image-encoder call by the generator, saw {len(self.outputs)}")
        out = self.outputs[0]
        return ImageEncoding(orig_hw=orig_hw, backbone={"backbone_fpn": list(out["backbone_fpn"]),
                                                        "vision_pos_enc": list(out["vision_pos_enc"])})


def automatic_mask_generator(sam: torch.nn.Module, settings: RegionSettings):
    """The official SAM2AutomaticMaskGenerator on `sam` with these (resolved) settings."""
    generator = _generator_class()(sam, **settings.generator_kwargs())
    fit_predictor_to_input_size(generator.predictor)
    return generator


def fit_predictor_to_input_size(predictor) -> None:
    """SAM2ImagePredictor hard-codes its feature-map sizes for a 1024-pixel input (256, 128, 64);
    set them from the model's image size so reduced inputs (fast tests, small devices) work too."""
    size = int(predictor.model.image_size)
    predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]


@torch.no_grad()
def find_regions(backbone: Sam2Backbone, image: np.ndarray, settings: RegionSettings | None = None, *,
                 max_regions: int | None = DEFAULT_MAX_REGIONS, min_area: int = 0, generator=None) -> FoundRegions:
    """Segment everything in an RGB image: the generator's regions, best predicted_iou first.

    Regions smaller than `min_area` pixels are left out, then at most `max_regions` are kept (None: all).
    `generator`: one made earlier by automatic_mask_generator(backbone.sam, settings), reused by callers
    that discover repeatedly (building one compiles SAM 2's transforms).
    Raises RegionSettingsError for settings out of range, ImageError for a bad image.
    """
    settings = (settings or RegionSettings()).resolved()
    if max_regions is not None:
        max_regions = check_max_regions(max_regions)
    if isinstance(min_area, bool) or not isinstance(min_area, (int, np.integer)) or min_area < 0:
        raise RegionSettingsError(f"min_area must be an integer >= 0, got {min_area!r}")
    rgb = np.array(backbone.check_image(image))  # writable: the generator hands it to torch
    if generator is None:
        generator = automatic_mask_generator(backbone.sam, settings)
    with backbone.autocast(), EncodingTap(backbone.sam) as tap:
        records = generator.generate(rgb)
    encoding = tap.encoding(rgb.shape[:2])
    # the generator returns them NMS-ordered by predicted IoU; sort anyway (stable) to make it a contract
    records = sorted(records, key=lambda r: -r["predicted_iou"])
    big = [r for r in records if r["area"] >= min_area]
    regions = [
        Region(mask=np.asarray(r["segmentation"], dtype=bool), area=int(r["area"]),
               bbox_xywh=tuple(float(v) for v in r["bbox"]), predicted_iou=float(r["predicted_iou"]),
               stability_score=float(r["stability_score"]),
               point=(float(r["point_coords"][0][0]), float(r["point_coords"][0][1])))
        for r in big[:max_regions]
    ]
    return FoundRegions(regions=regions, encoding=encoding, settings=settings, generated=len(records),
                        skipped_small=len(records) - len(big))


def region_decoder_output(backbone: Sam2Backbone, found: FoundRegions) -> DecoderOutput | None:
    """PAM's decoder run on every region's box over the kept encoding (one batch; None if no regions)."""
    if not found.regions:
        return None
    return backbone.decode(found.encoding, [region.box_prompt() for region in found.regions])


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same size (0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b)) / union if union else 0.0
