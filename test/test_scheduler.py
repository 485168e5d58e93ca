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


def test_a_window_longer_than_16_frames_is_thinned_evenly_to_16():
    """stream_window_frames 40: every window fires on its 40th frame and carries 16 of its 40 frames,
    the first and the last included, spread evenly (no gap more than three times another)."""
    scheduler = SemanticsScheduler((), window_frames=40)
    scheduler.object_added("v", ("video_stream_caption",))
    fired = []
    for frame in range(120):
        fired += [(frame, frames) for _, _, frames in due(scheduler, frame, ("v", VISIBLE))]
    assert [frame for frame, _ in fired] == [39, 79, 119]
    for frame, frames in fired:
        assert len(frames) == 16 and frames[0] == frame - 39 and frames[-1] == frame, frames
        gaps = [b - a for a, b in zip(frames, frames[1:])]
        assert min(gaps) >= 1 and max(gaps) <= 3 * min(gaps), gaps
        assert sum(gaps) == 39


def test_lost_frames_stay_in_video_windows_and_the_window_fires_on_time():
    """PAM's video mode reads every frame of the track, the object visible or not: frames where the object is
    LOST count toward the window and are carried in it, in their place."""
    scheduler = SemanticsScheduler((), window_frames=20)
    scheduler.object_added("v", ("video_caption",))
    fired = []
    for frame in range(20):
        state = LOST if 5 <= frame < 12 else VISIBLE
        fired += [(frame, tasks, frames) for _, tasks, frames in due(scheduler, frame, ("v", state))]
    assert len(fired) == 1 and fired[0][:2] == (19, ("video_caption",))
    frames = fired[0][2]
    assert len(frames) == 16 and frames[0] == 0 and frames[-1] == 19 and frames == sorted(frames)
    assert any(5 <= f < 12 for f in frames), "the LOST stretch is part of the window"


def test_a_refresh_due_while_lost_waits_for_the_next_visible_frame():
    scheduler = SemanticsScheduler(("caption",), refresh_period_s=1.0)
    scheduler.object_added("a")
    assert due(scheduler, 0, ("a", VISIBLE), now_s=10.0) == [("a", ("caption",), [])]
    assert due(scheduler, 1, ("a", LOST), now_s=11.0) == [], "due, but the object is lost"
    assert due(scheduler, 2, ("a", LOST), now_s=11.1) == []
    assert due(scheduler, 3, ("a", VISIBLE), now_s=11.2) == [("a", ("caption",), [])], "run once it is visible"
    assert due(scheduler, 4, ("a", VISIBLE), now_s=11.9) == [], "the period counts from that run"
    assert due(scheduler, 5, ("a", VISIBLE), now_s=12.2) == [("a", ("caption",), [])]
