"""Numbers for /diagnostics: event rates, stage latencies, and the DiagnosticStatus built from them."""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Mapping

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue


class RateMeter:
    """Events per second over a sliding window (thread-safe)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self._window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)

    def rate_hz(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and self._times[0] < now - self._window_s:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            span = max(now - self._times[0], 1e-6)
            return (len(self._times) - 1) / span if span < self._window_s else len(self._times) / self._window_s


class StageTimes:
    """Last and mean (exponentially weighted) seconds per named stage (thread-safe)."""

    def __init__(self, smoothing: float = 0.1) -> None:
        self._smoothing = smoothing
        self._last: dict[str, float] = {}
        self._mean: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._last[stage] = seconds
            previous = self._mean.get(stage)
            self._mean[stage] = seconds if previous is None else previous + self._smoothing * (seconds - previous)

    def snapshot(self) -> dict[str, tuple[float, float]]:
        with self._lock:
            return {stage: (self._last[stage], self._mean[stage]) for stage in self._last}

    def clear(self) -> None:
        with self._lock:
            self._last.clear()
            self._mean.clear()


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def flatten(prefix: str, value) -> list[tuple[str, str]]:
    """Nested dicts (e.g. pipeline.stats()) -> dotted key/value strings."""
    if isinstance(value, Mapping):
        items = []
        for key, inner in value.items():
            items += flatten(f"{prefix}.{key}" if prefix else str(key), inner)
        return items
    return [(prefix, _format(value))]


def build_status(name: str, hardware_id: str, level: bytes, message: str, values: Mapping) -> DiagnosticStatus:
    """level: DiagnosticStatus.OK / WARN / ERROR / STALE (bytes constants)."""
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in flatten("", values)])
