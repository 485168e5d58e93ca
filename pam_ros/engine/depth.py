"""The one depth pairing: each colour frame gets the depth image and the CameraInfo of its stamp (no ROS).

The pipeline owns one DepthPairing; the node and the replay hand it every depth image and CameraInfo
(pipeline.add_depth / add_camera_info) and the pipeline takes each frame's pair when it tracks the
frame, so both front ends pair alike:

- depth: the image whose stamp is nearest the frame's within a slop (0 = the exact stamp), whichever
  of the two arrives or is stored first; none: the frame has no geometry;
- CameraInfo: the one with the depth image's stamp (a driver stamps image, depth and CameraInfo
  alike), in either order, else the latest one stamped before it (the earliest held when every one
  is stamped after); only when none has arrived at all is the frame left without geometry;
- intrinsics are checked against the depth image (engine/geometry.intrinsics_problem): a K of
  another size, zeros or non-positive / non-finite fx, fy give no geometry (the reason is kept).
Each frame's outcome (FrameDepth.outcome) is counted by the pipeline.

Two ways to be fed, one pairing:
- live (node): add_depth / add_camera_info from their callbacks, `take(stamp)` once the frame is
  tracked, never waiting: depth never stalls tracking; it has the tracking time to arrive;
- in order (replay): colour frames are held (`hold`) in bag order and come back, in order, once their
  pair is settled: a depth image stamped at or after the frame has been read (depth comes in stamp
  order, so no nearer one can follow) and, when one matched, a CameraInfo stamped at or after that
  depth image; or when more than `max_waiting` frames wait; `flush()` settles the rest at the end.
  The caller then tracks each settled frame, which takes its pair exactly as live.
Memory is bounded: at most `max_depth` depth images, `max_infos` CameraInfos and `max_waiting`
colour frames are held. (message_filters' ApproximateTime would need rclpy and subscriptions; the
replay has neither.)
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from pam_ros.engine.geometry import CameraIntrinsics, DepthImage, intrinsics_problem

Held = TypeVar("Held")

NO_CAMERA_INFO = "no CameraInfo received yet"


@dataclass(frozen=True)
class FrameDepth:
    """What one frame got: `depth` with its intrinsics set (ready for geometry), or None and why.

    outcome: "depth" (usable), "no_depth" (no depth image of the frame's stamp), "no_camera_info"
    (none had arrived at all) or "bad_intrinsics" (`problem` says why; it names both sizes for a K
    of another resolution).
    """

    depth: DepthImage | None
    outcome: str = "no_depth"
    problem: str = ""


def with_intrinsics(depth: DepthImage, intrinsics: CameraIntrinsics | None) -> FrameDepth:
    """A frame's depth image with the intrinsics it pairs with (its own, when set), checked."""
    intrinsics = depth.intrinsics or intrinsics
    if intrinsics is None:
        return FrameDepth(None, "no_camera_info", NO_CAMERA_INFO)
    problem = intrinsics_problem(intrinsics, depth.size)
    if problem:
        return FrameDepth(None, "bad_intrinsics", problem)
    return FrameDepth(replace(depth, intrinsics=intrinsics), "depth")


class DepthPairing(Generic[Held]):
    """Depth images and CameraInfos by stamp, paired with colour frames; thread-safe."""

    def __init__(self, slop_ns: int = 0, max_depth: int = 32, max_infos: int = 32, max_waiting: int = 8) -> None:
        if slop_ns < 0:
            raise ValueError(f"slop must be >= 0, got {slop_ns} ns")
        self.slop_ns = int(slop_ns)
        self._depth: deque[DepthImage] = deque(maxlen=max(1, max_depth))
        self._infos: deque[tuple[int, CameraIntrinsics]] = deque(maxlen=max(1, max_infos))
        self._waiting: deque[tuple[int, Held]] = deque()
        self._max_waiting = max(0, max_waiting)
        self._latest_depth_ns: int | None = None
        self._latest_info_ns: int | None = None
        self.depth_received = self.infos_received = 0  # since construction (diagnostics: is depth arriving?)
        self._lock = threading.Lock()

    # --------------------------------------------------------------------------- inputs (any thread)
    def add_depth(self, depth: DepthImage) -> list[Held]:
        """Store a depth image; returns the held colour frames it settles (in order)."""
        with self._lock:
            self.depth_received += 1
            self._depth.append(depth)
            if self._latest_depth_ns is None or depth.stamp_ns > self._latest_depth_ns:
                self._latest_depth_ns = int(depth.stamp_ns)
            return self._settle(force=0)

    def add_camera_info(self, stamp_ns: int, intrinsics: CameraIntrinsics) -> list[Held]:
        """Store a CameraInfo (unchecked: the frames it pairs with report its problem); returns settled frames."""
        with self._lock:
            self.infos_received += 1
            self._infos.append((int(stamp_ns), intrinsics))
            if self._latest_info_ns is None or stamp_ns > self._latest_info_ns:
                self._latest_info_ns = int(stamp_ns)
            return self._settle(force=0)

    # --------------------------------------------------------------------------- live: take
    def take(self, stamp_ns: int) -> FrameDepth:
        """The pair of the frame stamped stamp_ns; never waits. Older depth images are dropped
        (colour stamps only go forward)."""
        with self._lock:
            return self._take(int(stamp_ns))

    # --------------------------------------------------------------------------- in order: hold
    def hold(self, stamp_ns: int, item: Held) -> list[Held]:
        """Hold a colour frame until its pair is settled; returns the frames now settled, in order."""
        with self._lock:
            self._waiting.append((int(stamp_ns), item))
            return self._settle(force=max(0, len(self._waiting) - self._max_waiting))

    def flush(self) -> list[Held]:
        """Settle every held frame (end of the input)."""
        with self._lock:
            return self._settle(force=len(self._waiting))

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # --------------------------------------------------------------------------- internals
    def _nearest_depth(self, stamp_ns: int) -> DepthImage | None:
        best = None
        for depth in self._depth:
            gap = abs(depth.stamp_ns - stamp_ns)
            if gap <= self.slop_ns and (best is None or gap < abs(best.stamp_ns - stamp_ns)):
                best = depth
        return best

    def _info_for(self, stamp_ns: int) -> CameraIntrinsics | None:
        """The CameraInfo of this stamp, else the latest stamped before it, else the earliest held."""
        if not self._infos:
            return None
        exact = [info for s, info in self._infos if s == stamp_ns]
        if exact:
            return exact[-1]
        earlier = [(s, i) for i, (s, _) in enumerate(self._infos) if s < stamp_ns]
        if earlier:
            # latest stamp first, then latest arrival among equal stamps
            return self._infos[max(earlier)[1]][1]
        return min(self._infos, key=lambda pair: pair[0])[1]

    def _take(self, stamp_ns: int) -> FrameDepth:
        depth = self._nearest_depth(stamp_ns)
        if depth is None:
            # depth older than this frame's window cannot match a later frame
            self._depth = deque((d for d in self._depth if d.stamp_ns >= stamp_ns - self.slop_ns),
                                maxlen=self._depth.maxlen)
            return FrameDepth(None)
        self._depth = deque((d for d in self._depth if d.stamp_ns > depth.stamp_ns), maxlen=self._depth.maxlen)
        return with_intrinsics(depth, self._info_for(depth.stamp_ns))

    def _settled(self, stamp_ns: int) -> bool:
        # Depth and CameraInfo come in stamp order: once one stamped at or after the frame (for the
        # CameraInfo: at or after its depth image) has been read, no better one can follow.
        if self._latest_depth_ns is None or self._latest_depth_ns < stamp_ns:
            return False
        depth = self._nearest_depth(stamp_ns)
        if depth is None or depth.intrinsics is not None:
            return True
        return self._latest_info_ns is not None and self._latest_info_ns >= depth.stamp_ns

    def _settle(self, force: int) -> list[Held]:
        """Release held frames from the front while each is settled (the first `force` always)."""
        settled: list[Held] = []
        while self._waiting:
            stamp_ns, item = self._waiting[0]
            if force <= 0 and not self._settled(stamp_ns):
                break
            self._waiting.popleft()
            force -= 1
            settled.append(item)
        return settled
