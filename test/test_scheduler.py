"""The semantics scheduler on its own: which object gets which task on which frame (no model)."""
from __future__ import annotations

import torch

from pam_ros.engine.scheduler import SemanticsScheduler
from pam_ros.engine.types import TrackingState
from pam_ros.model.pam import RegionFeatures

VISIBLE, LOST = TrackingState.TRACKED, TrackingState.LOST


def features(index: int) -> RegionFeatures:
    return RegionFeatures(torch.zeros(2, 4), torch.zeros(4, 1, 1), frame_index=index, stamp_ns=1000 + index)


def due(scheduler, frame: int, *objects, now_s: float = 0.0):
    """(object, tasks, the window's frames or [] for image tasks) of each job due on this frame."""
    jobs = scheduler.due([(oid, state, features(frame)) for oid, state in objects], now_s,
                         kept_frames=lambda oid: [features(frame - 1), features(frame)])
    for job in jobs:
        if job.kind == "image":  # image tasks run on the object's kept frames, newest last
            assert [f.frame_index for f in job.frames] == [frame - 1, frame]
            assert (job.stamp_ns, job.frame_index) == (1000 + frame, frame), "the job is its newest frame's"
    return [(job.object_id, job.tasks, [f.frame_index for f in job.frames] if job.kind == "window" else [])
            for job in jobs]


def test_new_objects_run_their_own_or_the_default_tasks_once():
    scheduler = SemanticsScheduler(("explain", "caption"))
    scheduler.object_added("a")
    scheduler.object_added("b", ("recognize",))
    assert due(scheduler, 0, ("a", VISIBLE), ("b", VISIBLE)) == [("a", ("explain", "caption"), []),
                                                                  ("b", ("recognize",), [])]
    assert due(scheduler, 1, ("a", VISIBLE), ("b", VISIBLE)) == [], "no refresh period: nothing more"


def test_a_lost_object_is_described_when_it_is_visible_again():
    scheduler = SemanticsScheduler(("caption",))
    scheduler.object_added("a")
    assert due(scheduler, 0, ("a", LOST)) == []
    assert due(scheduler, 1, ("a", LOST)) == []
    assert due(scheduler, 2, ("a", VISIBLE)) == [("a", ("caption",), [])]


def test_refresh_period_and_requests():
    scheduler = SemanticsScheduler(("caption",), refresh_period_s=1.0)
    scheduler.object_added("a", ("explain",))
    assert due(scheduler, 0, ("a", VISIBLE), now_s=10.0) == [("a", ("explain",), [])]
    assert due(scheduler, 1, ("a", VISIBLE), now_s=10.5) == []
    assert due(scheduler, 2, ("a", VISIBLE), now_s=11.0) == [("a", ("explain",), [])], "its own tasks again"
    scheduler.request("a", ("recognize",))
    assert due(scheduler, 3, ("a", VISIBLE), now_s=11.1) == [("a", ("recognize",), [])]
    scheduler.forget("a")
    assert due(scheduler, 4, ("a", VISIBLE), now_s=20.0) == [], "a forgotten object's needs are gone"


def test_video_tasks_run_on_windows_of_the_track():
    scheduler = SemanticsScheduler((), window_frames=16)
    scheduler.object_added("v", ("caption", "video_caption", "video_stream_caption"))
    fired = []
    for frame in range(48):
        fired += [(frame, *item) for item in due(scheduler, frame, ("v", VISIBLE))]
    assert fired[0] == (0, "v", ("caption",), [])
    windows = fired[1:]
    assert [f[0] for f in windows] == [15, 31, 47]
    assert windows[0][2] == ("video_caption", "video_stream_caption"), "the plain video caption runs once"
    assert all(w[2] == ("video_stream_caption",) for w in windows[1:])
    for frame, _, _, frames in windows:
        assert frames == list(range(frame - 15, frame + 1)), "each window carries its own 16 frames"
