"""Latest-frame-wins hand-over from the image callback to the tracking thread.

One slot, never a queue: a frame that arrives while the previous one is still waiting replaces it,
and the replaced frame is counted as dropped. Tracking therefore always works on the newest image
and latency cannot grow when the camera is faster than the model.
"""
from __future__ import annotations

import threading
from typing import Any


class LatestFrameSlot:
    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._frame: Any = None
        self._closed = False
        self.received = 0
        self.dropped = 0

    def put(self, frame: Any) -> bool:
        """Offer a frame; returns True when it replaced a waiting (now dropped) frame."""
        with self._condition:
            self.received += 1
            replaced = self._frame is not None
            if replaced:
                self.dropped += 1
            self._frame = frame
            self._condition.notify()
            return replaced

    def take(self, timeout_s: float) -> Any:
        """The waiting frame (emptying the slot), or None after timeout_s or once closed."""
        with self._condition:
            if self._frame is None and not self._closed:
                self._condition.wait(timeout_s)
            frame, self._frame = self._frame, None
            return frame

    @property
    def depth(self) -> int:
        """Frames waiting (0 or 1)."""
        with self._condition:
            return int(self._frame is not None)

    def close(self) -> None:
        """Wake a waiting take(); later takes return at once."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def reset(self) -> None:
        with self._condition:
            self._frame, self._closed = None, False
            self.received = self.dropped = 0
