"""Running figures whose memory does not grow with the number of frames, for `pam-ros compare`.

A comparison may stream millions of frames, so nothing here keeps a value per frame: quantiles come
from fixed histograms, frame lists are kept as ranges (up to a cap), the IoU curve of the report is
a series that halves its resolution when it fills up, and only the few worst frames are kept whole.
"""
from __future__ import annotations

import bisect
import heapq
import itertools
import math

import numpy as np


class Histogram:
    """Counts of values between fixed bin edges: count, mean, min, max exactly; quantiles to a bin."""

    def __init__(self, edges) -> None:
        # plain lists: one bisect per value is several times quicker than numpy on single values
        self.edges = [float(edge) for edge in edges]
        self.counts = [0] * len(self.edges)  # bin i: [edges[i], edges[i + 1]); the last one is open
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        self.counts[max(bisect.bisect_right(self.edges, value) - 1, 0)] += 1
        self.count += 1
        self.total += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """The lower edge of the bin holding the q-quantile, clamped to the exact min and max."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        index = bisect.bisect_left(list(itertools.accumulate(self.counts)), rank)
        return float(min(max(self.edges[index], self.min), self.max))


def iou_histogram() -> Histogram:
    """IoU in [0, 1] to 1e-4; exactly 1.0 has a bin of its own, so identical masks read back as 1.0."""
    return Histogram(np.append(np.arange(10_000) / 10_000, 1.0))


def log_histogram(low: float, high: float, per_decade: int = 100) -> Histogram:
    """Positive values from `low` to `high` in bins 2.3 % wide (plus one for everything below `low`)."""
    decades = math.log10(high / low)
    return Histogram(np.concatenate([[0.0], low * 10 ** (np.arange(int(decades * per_decade) + 1) / per_decade)]))


class FrameRanges:
    """Frame indices, in the order met, kept as [first, last] ranges; beyond `cap` ranges a frame is only counted."""

    def __init__(self, cap: int = 200) -> None:
        self.cap = cap
        self.ranges: list[list[int]] = []
        self.count = 0
        self.frames_not_listed = 0

    def add(self, frame: int) -> None:
        self.count += 1
        if self.ranges and self.ranges[-1][1] + 1 == frame:
            self.ranges[-1][1] = frame
        elif len(self.ranges) < self.cap:
            self.ranges.append([frame, frame])
        else:
            self.frames_not_listed += 1

    def text(self, limit: int = 6) -> str:
        """'3-7, 12, 15-16' (with '...' after `limit` ranges)."""
        shown = [f"{a}" if a == b else f"{a}-{b}" for a, b in self.ranges[:limit]]
        if len(self.ranges) > limit or self.frames_not_listed:
            shown.append("...")
        return ", ".join(shown)

    def phrase(self, limit: int = 6) -> str:
        """'frame 3' or 'frames 3-7, 12'."""
        return ("frame " if self.count == 1 else "frames ") + self.text(limit)

    def to_json(self) -> dict:
        return {"count": self.count, "ranges": [list(r) for r in self.ranges],
                "frames_not_listed": self.frames_not_listed}


class LowestSeries:
    """(frame, value) points for a plot of at most about 2 x `capacity` points: when full, neighbours
    merge and later points each cover twice as many frames. A point keeps the lowest value it covers
    (a regression plot must not smooth a bad frame away) at the first frame it covers."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.frames_per_point = 1
        self.points: list[tuple[int, float]] = []
        self._open: list | None = None  # [first frame, lowest value, values taken]

    def add(self, frame: int, value: float) -> None:
        if self._open is None:
            self._open = [frame, value, 0]
        self._open[1] = min(self._open[1], value)
        self._open[2] += 1
        if self._open[2] == self.frames_per_point:
            self.points.append((self._open[0], self._open[1]))
            self._open = None
            if len(self.points) >= 2 * self.capacity:
                self.points = [(a[0], min(a[1], b[1])) for a, b in zip(self.points[::2], self.points[1::2])]
                self.frames_per_point *= 2

    def values(self) -> list[tuple[int, float]]:
        return self.points + ([(self._open[0], self._open[1])] if self._open is not None else [])


class WorstFrames:
    """The `keep` frames with the lowest score seen, each with whatever the caller attaches to it."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._heap: list[tuple[float, int, int, object]] = []  # (-score, -frame, tiebreak, item): max-heap on score
        self._added = 0

    def would_keep(self, score: float) -> bool:
        return len(self._heap) < self.keep or score < -self._heap[0][0]

    def add(self, score: float, frame: int, item: object) -> None:
        self._added += 1
        entry = (-score, -frame, self._added, item)
        if len(self._heap) < self.keep:
            heapq.heappush(self._heap, entry)
        elif score < -self._heap[0][0]:
            heapq.heapreplace(self._heap, entry)

    def items(self) -> list[object]:
        """Worst first; equal scores: the earlier frame first."""
        return [entry[3] for entry in sorted(self._heap, key=lambda e: (-e[0], -e[1]))]


def counted(count: int, noun: str) -> str:
    """'1 frame', '3 frames'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
