"""The settings of SAM 2's automatic mask generator (segment everything), with their defaults, in one place.

Torch-free, so the command line, the node's parameter table and the engine read the same defaults
without loading a model. GENERATOR_DEFAULTS are the official SAM2AutomaticMaskGenerator's own keyword
defaults (a test compares them with its signature); DEFAULT_POINTS_PER_SIDE is ours.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from pam_ros.errors import RegionSettingsError

DEFAULT_POINTS_PER_SIDE = 16  # 256 prompts: the generator's 32 (1024 prompts) is too slow for a robot
DEFAULT_MAX_REGIONS = 16
GENERATOR_DEFAULTS = {"pred_iou_thresh": 0.8, "stability_score_thresh": 0.95, "box_nms_thresh": 0.7,
                      "min_mask_region_area": 0}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy integers too


@dataclass(frozen=True)
class RegionSettings:
    """The settings given to SAM2AutomaticMaskGenerator, by its keywords. None = the generator's default
    (resolved by `resolved()`, so what was run can always be reported in full)."""

    points_per_side: int = DEFAULT_POINTS_PER_SIDE
    pred_iou_thresh: float | None = None
    stability_score_thresh: float | None = None
    box_nms_thresh: float | None = None
    min_mask_region_area: int | None = None

    def resolved(self) -> "RegionSettings":
        """A copy with every None replaced by the generator's default, checked (RegionSettingsError)."""
        values = {name: (GENERATOR_DEFAULTS[name] if value is None else value) for name, value in asdict(self).items()}
        settings = RegionSettings(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        pps = self.points_per_side
        if not _is_int(pps) or pps < 1:
            raise RegionSettingsError(f"points per side must be an integer >= 1, got {pps!r}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise RegionSettingsError(f"{name} must be in [0, 1], got {value!r}")
        area = self.min_mask_region_area
        if area is not None and (not _is_int(area) or area < 0):
            raise RegionSettingsError(f"min_mask_region_area must be an integer >= 0, got {area!r}")

    def generator_kwargs(self) -> dict:
        """Keyword arguments for SAM2AutomaticMaskGenerator (every setting, defaults resolved)."""
        return asdict(self.resolved())
