"""FeatureHistory: the bounded, evenly spread history of one object's per-frame PAM features.

Its own module, free of torch and sam2, so the scheduler (which thins stream windows with it) needs no
model code; the tracker keeps one per object.
"""
from __future__ import annotations

from typing import Any

from pam_ros.errors import TrackerError


class FeatureHistory:
    """Bounded history of an object's `RegionFeatures`, spread over the whole track.

    Holds at most `capacity` frames: every frame until then, and afterwards always the first and the
    latest frame plus `capacity - 2` frames in between. When a new frame would make one too many, the
    in-between frame whose removal leaves the smallest gap goes, so the kept frames stay spread
    (gaps between kept frames within a factor of three of each other). With capacity 16 that is exactly
    what PAM's video mode reads (it selects 16 frames), so nothing is kept that semantics never read.
    """

    def __init__(self, capacity: int):
        if capacity < 2:
            raise TrackerError(f"keep_feature_frames must be at least 2, got {capacity}")
        self.capacity = capacity
        self._kept: list[tuple[int, Any]] = []  # (ordinal in the track, features)
        self._seen = 0

    def add(self, features) -> None:
        self._kept.append((self._seen, features))
        self._seen += 1
        if len(self._kept) > self.capacity:
            ordinals = [ordinal for ordinal, _ in self._kept]
            # the oldest of the in-between frames whose neighbours are closest together
            drop = min(range(1, len(ordinals) - 1), key=lambda i: (ordinals[i + 1] - ordinals[i - 1], i))
            del self._kept[drop]

    def frames(self) -> list:
        return [features for _, features in self._kept]

    def latest(self) -> Any:
        return self._kept[-1][1] if self._kept else None

    def __len__(self) -> int:
        return len(self._kept)
