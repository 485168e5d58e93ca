"""One-shot describes: segment objects on one image and run PAM tasks on them, in one batch.

`segment_object` is used by the pipeline's describe (a prompt on a given or the latest frame);
`describe_regions` by `pam-ros describe` with one box, several boxes or --everything, so every
one-shot path reports the same mask, score and words for the same prompt, and always batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pam_ros.engine.types import ObjectResult, TrackingState
from pam_ros.model.masks import mask_bbox_xywh, mask_centroid, score_from_logit
from pam_ros.model.pam import RegionFeatures


@dataclass
class SegmentedObject:
    """One prompted object on one image."""

    mask: np.ndarray  # bool [H, W] at the image resolution
    object_score_logit: float
    features: RegionFeatures

    @property
    def score(self) -> float:
        return score_from_logit(self.object_score_logit)

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def present(self) -> bool:
        return self.object_score_logit > 0 and self.area > 0

    def as_result(self, object_id: str = "") -> ObjectResult:
        state = TrackingState.PROMPTED if self.present else TrackingState.LOST
        return ObjectResult(object_id, self.score, self.object_score_logit, state, 0, self.mask,
                            mask_bbox_xywh(self.mask), self.area, mask_centroid(self.mask))


def segment_object(model, image_or_encoding, visual, *, frame_index: int = -1, stamp_ns: int = 0) -> SegmentedObject:
    """Decode one visual prompt (pixels of the image) on an image or an existing encoding of it."""
    from pam_ros.model.sam2_backbone import ImageEncoding

    enc = image_or_encoding if isinstance(image_or_encoding, ImageEncoding) else model.encode_image(image_or_encoding)
    dec = model.segment(enc, [visual])
    logit = float(dec.object_score_logits[0, 0])
    mask = (dec.mask_logits[0, 0] > 0).cpu().numpy()
    features = RegionFeatures(dec.mid_mask_tokens[0], dec.mid_image_embed[0], frame_index, stamp_ns, logit)
    return SegmentedObject(mask, logit, features)


def describe_regions(model, regions: Sequence[RegionFeatures], tasks: Sequence[str], *,
                     free_prompt: str | None = None, **options) -> list[list]:
    """Every task (then the free prompt, as task "prompt") on every region, in one batched generation
    (each region's visual prefix computed once). Returns, per region, its PamGenerations in task order."""
    from pam_ros.model.pam import DescribeJob

    runs = [(task, None) for task in tasks] + ([(None, free_prompt)] if free_prompt is not None else [])
    if not runs or not regions:
        return [[] for _ in regions]
    jobs = [DescribeJob(features, task, prompt=free) for features in regions for task, free in runs]
    generations = model.describe_batch(jobs, **options)
    return [generations[k * len(runs):(k + 1) * len(runs)] for k in range(len(regions))]
