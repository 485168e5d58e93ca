"""Pairs colour frames with depth images by header stamp (ROS-free; node and replay share it).

A colour frame takes the depth image whose stamp is nearest its own within a slop (0 = the exact
stamp), whatever order the two arrive or are stored in. Memory is bounded: at most `max_depth`
depth images and `max_waiting` colour frames are held. Frames that end up without depth are
counted (they are tracked as usual and get no geometry).

Two ways to use it:
- live (node): `add_depth` from the depth callback, `take(stamp)` when a frame's tracking is done,
  never waiting (depth never stalls tracking; it has the tracking time to arrive);
- in order (replay): `add_colour` / `add_depth` in bag order return the colour frames that are
  settled, in colour order; a colour frame is settled once a depth image stamped at or after it
  has been seen (depth comes in stamp order, so no nearer one can follow), or when too many colour
  frames wait; `flush()` settles the rest at the end.
(message_filters' ApproximateTime would need rclpy and subscriptions; the replay has neither.)
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

Colour = TypeVar("Colour")
Depth = TypeVar("Depth")


@dataclass(frozen=True)
class Paired(Generic[Colour, Depth]):
    """A settled colour frame and its depth (None: no depth within the slop)."""

    stamp_ns: int
    colour: Colour
    depth: Depth | None


class DepthMatcher(Generic[Colour, Depth]):
    """Depth images by stamp, matched to colour frames; thread-safe."""

    def __init__(self, slop_ns: int = 0, max_depth: int = 32, max_waiting: int = 8) -> None:
        if slop_ns < 0:
            raise ValueError(f"slop must be >= 0, got {slop_ns} ns")
        self.slop_ns = int(slop_ns)
        self._depth: deque[tuple[int, Depth]] = deque(maxlen=max(1, max_depth))
        self._waiting: deque[tuple[int, Colour]] = deque()
        self._max_waiting = max(0, max_waiting)
        self._latest_depth_ns: int | None = None
        self._lock = threading.Lock()
        self.frames_with_depth = 0
        self.frames_without_depth = 0
        self.depth_received = 0

    # --------------------------------------------------------------------------- live (node)
    def add_depth(self, stamp_ns: int, depth: Depth) -> list[Paired]:
        """Store a depth image; returns the waiting colour frames it settles (in colour order)."""
        with self._lock:
            self.depth_received += 1
            self._depth.append((int(stamp_ns), depth))
            if self._latest_depth_ns is None or stamp_ns > self._latest_depth_ns:
                self._latest_depth_ns = int(stamp_ns)
            return self._settle(force=0)

    def take(self, stamp_ns: int) -> Depth | None:
        """The depth image for a colour frame stamped stamp_ns, or None (counted); never waits.

        The depth image taken and every older one are dropped (colour stamps only go forward).
        """
        with self._lock:
            return self._take(int(stamp_ns))

    # --------------------------------------------------------------------------- in order (replay)
    def add_colour(self, stamp_ns: int, colour: Colour) -> list[Paired]:
        """Queue a colour frame; returns the colour frames now settled, in colour order."""
        with self._lock:
            self._waiting.append((int(stamp_ns), colour))
            return self._settle(force=max(0, len(self._waiting) - self._max_waiting))

    def flush(self) -> list[Paired]:
        """Settle every waiting colour frame (end of the input)."""
        with self._lock:
            return self._settle(force=len(self._waiting))

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # --------------------------------------------------------------------------- internals
    def _nearest(self, stamp_ns: int) -> int | None:
        best, best_gap = None, None
        for index, (depth_ns, _) in enumerate(self._depth):
            gap = abs(depth_ns - stamp_ns)
            if gap <= self.slop_ns and (best_gap is None or gap < best_gap):
                best, best_gap = index, gap
        return best

    def _take(self, stamp_ns: int) -> Depth | None:
        index = self._nearest(stamp_ns)
        if index is None:
            # depth older than this frame's window cannot match a later frame
            self._depth = deque(((s, d) for s, d in self._depth if s >= stamp_ns - self.slop_ns),
                                maxlen=self._depth.maxlen)
            self.frames_without_depth += 1
            return None
        depth_ns, depth = self._depth[index]
        self._depth = deque(((s, d) for s, d in self._depth if s > depth_ns), maxlen=self._depth.maxlen)
        self.frames_with_depth += 1
        return depth

    def _settle(self, force: int) -> list[Paired]:
        """Release waiting colour frames from the front while each is decided (the first `force` always)."""
        settled: list[Paired] = []
        while self._waiting:
            stamp_ns, colour = self._waiting[0]
            # Depth comes in stamp order: once one stamped at or after this frame is in, no nearer one can follow.
            decided = force > 0 or (self._latest_depth_ns is not None and self._latest_depth_ns >= stamp_ns)
            if not decided:
                break
            self._waiting.popleft()
            force -= 1
            settled.append(Paired(stamp_ns, colour, self._take(stamp_ns)))
        return settled
