"""The one depth pairing (engine/depth.py): each frame's depth image and CameraInfo by stamp, live and in order.

Depth images here carry their stamp in their content (every pixel = stamp / 1000 metres), so a test
sees which image a frame got, not only that it got one.
"""
from __future__ import annotations

import numpy as np
import pytest

from pam_ros.engine.depth import NO_CAMERA_INFO, DepthPairing
from pam_ros.engine.geometry import CameraIntrinsics, DepthImage

W, H = 8, 6


def depth(stamp: int, size=(W, H)) -> DepthImage:
    return DepthImage(np.full((size[1], size[0]), stamp / 1000, np.float32), None, "cam", stamp)


def info(fx: float = 100.0, size=(W, H)) -> CameraIntrinsics:
    return CameraIntrinsics.from_camera_info([fx, 0, 3.5, 0, fx, 2.5, 0, 0, 1], *size, check=False)


def got(frame) -> tuple:
    """(depth stamp read from the content, fx) or the outcome."""
    if frame.depth is None:
        return (frame.outcome,)
    return (round(float(frame.depth.metres[0, 0]) * 1000), frame.depth.intrinsics.fx)


# ------------------------------------------------------------------------------- live: depth

def test_live_takes_the_exact_stamp_and_says_when_there_is_none():
    pairing = DepthPairing(slop_ns=0)
    pairing.add_camera_info(0, info())
    pairing.add_depth(depth(100))
    pairing.add_depth(depth(200))
    assert got(pairing.take(150)) == ("no_depth",)
    assert got(pairing.take(200)) == (200, 100.0)
    assert got(pairing.take(300)) == ("no_depth",)


def test_live_with_slop_takes_the_nearest_depth():
    pairing = DepthPairing(slop_ns=10_000_000)
    pairing.add_camera_info(0, info())
    for stamp in (100_000_000, 104_000_000, 130_000_000):
        pairing.add_depth(depth(stamp))
    assert got(pairing.take(105_000_000))[0] == 104_000_000
    assert got(pairing.take(125_000_000))[0] == 130_000_000
    assert got(pairing.take(145_000_000)) == ("no_depth",)


def test_live_memory_is_bounded():
    pairing = DepthPairing(slop_ns=0, max_depth=4)
    pairing.add_camera_info(0, info())
    for stamp in range(1, 11):
        pairing.add_depth(depth(stamp))
    assert got(pairing.take(3)) == ("no_depth",)  # dropped: only the newest 4 are kept
    assert got(pairing.take(7))[0] == 7


# ------------------------------------------------------------------------------- live: CameraInfo

def test_camera_info_of_the_frames_own_stamp_wins_whichever_arrives_first():
    pairing = DepthPairing()
    pairing.add_camera_info(100, info(fx=100.0))
    pairing.add_depth(depth(200))
    pairing.add_camera_info(200, info(fx=200.0))  # after its depth image, before the frame is taken
    pairing.add_camera_info(300, info(fx=300.0))
    assert got(pairing.take(200)) == (200, 200.0)


def test_else_the_latest_earlier_camera_info():
    pairing = DepthPairing()
    for stamp, fx in ((100, 100.0), (150, 150.0), (400, 400.0)):
        pairing.add_camera_info(stamp, info(fx=fx))
    pairing.add_depth(depth(200))
    assert got(pairing.take(200)) == (200, 150.0)


def test_camera_info_stamped_only_after_the_frame_still_gives_geometry():
    pairing = DepthPairing()
    pairing.add_depth(depth(200))
    pairing.add_camera_info(900, info(fx=900.0))
    assert got(pairing.take(200)) == (200, 900.0)


def test_no_camera_info_at_all_gives_no_geometry_and_says_so():
    pairing = DepthPairing()
    pairing.add_depth(depth(200))
    frame = pairing.take(200)
    assert frame.depth is None and frame.outcome == "no_camera_info" and frame.problem == NO_CAMERA_INFO


@pytest.mark.parametrize("bad, words", [
    (info(size=(640, 480)), "CameraInfo is 640x480 but the depth image is 8x6"),
    (info(fx=-100.0), "no positive focal length"),
    (CameraIntrinsics.from_camera_info([100, 0, float("nan"), 0, 100, 2.5, 0, 0, 1], W, H, check=False),
     "non-finite"),
    (CameraIntrinsics.from_camera_info([0.0] * 9, W, H, check=False), "all zeros"),
])
def test_unusable_camera_info_refuses_only_the_frames_it_pairs_with(bad, words):
    pairing = DepthPairing()
    pairing.add_camera_info(100, bad)
    pairing.add_depth(depth(100))
    refused = pairing.take(100)
    assert refused.depth is None and refused.outcome == "bad_intrinsics" and words in refused.problem
    pairing.add_camera_info(200, info())  # the driver fixed: the next frame has geometry again
    pairing.add_depth(depth(200))
    assert got(pairing.take(200)) == (200, 100.0)


# ------------------------------------------------------------------------------- in order (replay)

@pytest.mark.parametrize("order", ["depth-info-colour", "colour-depth-info", "info-colour-depth", "colour-info-depth"])
def test_in_order_pairs_whatever_the_storage_order(order):
    pairing = DepthPairing()
    settled = []
    for stamp in (10, 20, 30):
        for kind in order.split("-"):
            if kind == "depth":
                settled += pairing.add_depth(depth(stamp))
            elif kind == "info":
                settled += pairing.add_camera_info(stamp, info(fx=float(stamp)))
            else:
                settled += pairing.hold(stamp, stamp)
    settled += pairing.flush()
    # each settled frame is then taken, as the pipeline does
    assert [got(pairing.take(stamp)) for stamp in settled] == [(10, 10.0), (20, 20.0), (30, 30.0)]


def test_first_camera_info_just_after_the_first_frame_still_pairs_with_it():
    """A recording whose first CameraInfo comes just after the first colour and depth images."""
    pairing = DepthPairing()
    settled = pairing.hold(10, 10) + pairing.add_depth(depth(10))
    assert settled == [], "the frame waits for its CameraInfo within the same wait as its depth"
    settled += pairing.add_camera_info(10, info())
    assert settled == [10] and got(pairing.take(10)) == (10, 100.0)


def test_in_order_settles_missing_depth_without_stalling():
    pairing = DepthPairing(max_waiting=2)

    def depth_and_info(stamp):
        return pairing.add_depth(depth(stamp)) + pairing.add_camera_info(stamp, info())

    settled = pairing.hold(10, 10) + depth_and_info(10)
    settled += pairing.hold(20, 20)  # its depth never comes
    assert settled == [10]
    settled += pairing.hold(30, 30) + depth_and_info(30)  # a later depth settles 20 and 30
    assert settled == [10, 20, 30]
    for stamp in (40, 50, 60, 70):  # no depth at all: at most max_waiting frames wait
        settled += pairing.hold(stamp, stamp)
    assert pairing.waiting == 2 and settled[-2:] == [40, 50]
    settled += pairing.flush()
    assert settled[-2:] == [60, 70] and pairing.waiting == 0


def test_one_camera_info_at_the_start_serves_every_frame():
    """Frames wait (bounded) for a CameraInfo of their stamp that never comes, then take the earlier one."""
    pairing = DepthPairing(max_waiting=2)
    settled = pairing.add_camera_info(1, info(fx=123.0))
    for stamp in (10, 20, 30, 40):
        settled += pairing.hold(stamp, stamp) + pairing.add_depth(depth(stamp))
    settled += pairing.flush()
    assert settled == [10, 20, 30, 40]
    taken = []
    for stamp in settled:
        taken.append(got(pairing.take(stamp)))
    assert taken == [(10, 123.0), (20, 123.0), (30, 123.0), (40, 123.0)]
