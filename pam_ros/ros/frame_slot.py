"""Latest-frame-wins hand-over from the image callback to the tracking thread.

One slot, never a queue: a frame that arrives while the previous one is still waiting replaces it,
and the replaced frame is counted as dropped. Tracking therefore always works on the newest image
and latency cannot grow when the camera is faster than the model.

Several cameras (one slot each) share one condition, so the one tracking thread sleeps until a frame waits
in any slot and then takes every waiting frame at once (take_waiting): a silent camera never holds up another.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence


class LatestFrameSlot:
    def __init__(self, condition: threading.Condition | None = None) -> None:
        self._condition = condition or threading.Condition()  # shared by the slots of one tracking thread
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
            self._condition.notify_all()
            return replaced

    @property
    def depth(self) -> int:
        """Frames waiting (0 or 1)."""
        with self._condition:
            return int(self._frame is not None)

    def close(self) -> None:
        """Wake a waiting take_waiting(); later ones return at once."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def reset(self) -> None:
        with self._condition:
            self._frame, self._closed = None, False
            self.received = self.dropped = 0


def take_waiting(slots: Sequence[LatestFrameSlot], timeout_s: float) -> list[tuple[int, Any]]:
    """[(index of the slot, its frame)] for every slot with a frame waiting (emptying them); waits up to
    timeout_s for the first one (or until a slot is closed). The slots must share one condition."""
    if not slots:
        return []
    condition = slots[0]._condition
    if any(slot._condition is not condition for slot in slots):
        raise ValueError("take_waiting: the slots must share one condition")
    with condition:
        if not any(slot._frame is not None or slot._closed for slot in slots):
            condition.wait(timeout_s)
        taken = []
        for index, slot in enumerate(slots):
            if slot._frame is not None:
                taken.append((index, slot._frame))
                slot._frame = None
        return taken
