"""StreamingTracker: parity with PAM's offline video propagation, add/remove, bounded state, bad input."""
from __future__ import annotations

import contextlib
import gc

import numpy as np
import pytest
import torch
from pam_tiny_fixture import SAM2_CHECKPOINT, SAM2_CONFIG, video_case, video_frames
from pam_tiny_fixture import golden as fixture_golden

from pam_ros.engine.history import FeatureHistory
from pam_ros.engine.tracker import (
    RegionFeatures,
    StreamingTracker,
    TrackerError,
    UnknownObjectError,
)
from pam_ros.engine.types import TrackingState
from pam_ros.errors import ImageError
from pam_ros.model.sam2_backbone import Sam2Backbone, VisualPrompt

VIDEO = video_case()
TOL = 1e-4


def box(*xyxy: float) -> VisualPrompt:
    return VisualPrompt(box=np.array(xyxy, dtype=np.float32)).validate()


def point(x: float, y: float) -> VisualPrompt:
    return VisualPrompt(points=np.array([[x, y]], dtype=np.float32), labels=np.array([1])).validate()


# ---- parity with the official offline propagation ------------------------------------------
# `tracked_video` (conftest): the fixture clip tracked from its box on frame 0 at full resolution,
# once per session (test_pam_model describes the same run).
@pytest.fixture(scope="module")
def video_run(tracked_video):
    return tracked_video.tracker, tracked_video.object_id, tracked_video.results


def test_video_tracking_matches_pam_offline_propagation(video_run):
    golden = fixture_golden()
    key = VIDEO["case"] + ".sam2."
    _, object_id, results = video_run
    tracks = [result.by_id()[object_id] for result in results]
    scores = torch.tensor([[t.object_score_logit] for t in tracks])
    assert (scores - golden[key + "object_score_logits_per_frame"]).abs().max() <= TOL
    for stored, frame in enumerate(VIDEO["low_res_stored_frame_ids"]):
        expected = golden[key + "low_res_mask_logits_stored_frames"][stored]
        assert (tracks[frame].low_res_logits.cpu() - expected).abs().max() <= TOL, frame
    mid_tokens = torch.stack([t.features.mid_mask_tokens for t in tracks])
    assert (mid_tokens.cpu() - golden[key + "mid_mask_tokens_out_per_frame"]).abs().max() <= TOL
    assert [t.state for t in tracks] == [TrackingState.PROMPTED] + [TrackingState.TRACKED] * 15


def test_video_binary_masks_match_up_to_near_zero_pixels(video_run, full_backbone):
    golden = fixture_golden()
    packed = golden[VIDEO["case"] + ".sam2.video_res_binary_masks_packbits"].numpy()
    expected = np.unpackbits(packed, axis=1)[:, : 240 * 320].reshape(16, 240, 320).astype(bool)
    _, object_id, results = video_run
    for index, result in enumerate(results):
        track = result.by_id()[object_id]
        assert track.mask.shape == (240, 320) and track.mask.dtype == bool
        differs = track.mask != expected[index]
        assert differs.sum() <= 5, index
        if differs.any():
            logits = full_backbone.upsample_to_image(track.low_res_logits[None], (240, 320))[0, 0]
            assert logits[torch.from_numpy(differs)].abs().max() < 1e-3
        assert track.mask_area == int(track.mask.sum())


def test_kept_features_are_the_frames_pam_video_mode_reads(video_run):
    tracker, object_id, results = video_run
    kept = tracker.features(object_id)
    assert [f.frame_index for f in kept] == list(range(16))
    assert [f.stamp_ns for f in kept] == [1000 * i for i in range(16)]
    assert kept[0].mid_mask_tokens.shape == (2, 256)
    assert kept[0].mid_image_embed.shape == (256, 64, 64)
    assert kept[-1] is results[-1].by_id()[object_id].features


def test_memory_attention_per_object_gives_the_batched_result(small_backbone, monkeypatch):
    """On a CPU the tracker runs SAM 2's memory attention one object at a time (faster there); the
    result must be the whole batch's, bit for bit, mask decoder and PAM features included."""
    from pam_ros.model import sam2_backbone

    frames = video_frames()[:4]
    prompts = [box(20, 40, 100, 120), point(250, 200), box(150, 20, 300, 100)]

    def run() -> list:
        tracker = StreamingTracker(small_backbone, feature_dtype=None)
        ids = [f"obj_{i}" for i in range(len(prompts))]
        for object_id, prompt in zip(ids, prompts):
            tracker.add_object(object_id, prompt)
        return [[result.by_id()[i] for i in ids] for result in (tracker.step(frame) for frame in frames)]

    first_self_attention = small_backbone.sam.memory_attention.layers[0].self_attn
    calls = []
    hook = first_self_attention.register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
    per_object = run()
    hook.remove()
    assert calls == [1] * (len(frames) - 1), "the first self-attention once a frame: it sees no memory, and " \
        "every object has the same frame features"
    whole = sam2_backbone.memory_attention_in_chunks
    monkeypatch.setattr(sam2_backbone, "memory_attention_in_chunks", lambda module, chunk: whole(module, None))
    batched = run()
    for frame_tracks, expected_tracks in zip(per_object[1:], batched[1:]):  # frame 0 has no memory yet
        for track, expected in zip(frame_tracks, expected_tracks):
            assert torch.equal(track.low_res_logits, expected.low_res_logits)
            assert track.object_score_logit == expected.object_score_logit
            assert torch.equal(track.features.mid_mask_tokens, expected.features.mid_mask_tokens)
            assert torch.equal(track.features.mid_image_embed, expected.features.mid_image_embed)
    assert "forward" not in vars(small_backbone.sam.memory_attention)  # the module's own forward is back
    assert "_forward_sa" not in vars(small_backbone.sam.memory_attention.layers[0])


# ---- objects come and go --------------------------------------------------------------------
def test_add_and_remove_mid_stream_leave_other_objects_untouched(small_backbone):
    frames = video_frames()[:10]
    alone = StreamingTracker(small_backbone)
    first = "disk"
    alone.add_object(first, box(20, 40, 100, 120))
    solo = [alone.step(frame).by_id()[first] for frame in frames]

    busy = StreamingTracker(small_backbone)
    busy.add_object("disk", box(20, 40, 100, 120))
    busy.add_object("corner", point(250, 200))  # same frame: batched with "disk"
    seen = []
    for index, frame in enumerate(frames):
        if index == 3:
            busy.add_object("late", box(150, 20, 300, 100))  # its prompt is due on frame 3
        if index == 7:
            busy.remove_object("late")
        result = busy.step(frame)
        seen.append(sorted(result.by_id()))
        disk = result.by_id()["disk"]
        assert (disk.low_res_logits - solo[index].low_res_logits).abs().max() <= TOL, index
        assert abs(disk.object_score_logit - solo[index].object_score_logit) <= TOL
        assert (disk.mask != solo[index].mask).sum() <= 5
        if index == 3:
            assert result.by_id()["late"].prompted
            assert result.by_id()["late"].state == TrackingState.PROMPTED  # its object score logit is +1.8
    assert seen[0] == ["corner", "disk"]
    assert seen[3] == ["corner", "disk", "late"]
    assert seen[7] == ["corner", "disk"]
    assert busy.object_ids == ["disk", "corner"]


def test_refine_with_and_without_memory(small_backbone):
    frames = video_frames()[:6]
    tracker = StreamingTracker(small_backbone, max_conditioning_frames=2)
    object_id = "disk"
    tracker.add_object(object_id, box(20, 40, 100, 120))
    for frame in frames[:3]:
        tracker.step(frame)
    tracker.refine_object(object_id, point(90, 90))
    refined = tracker.step(frames[3]).by_id()[object_id]
    assert refined.prompted and tracker.state_size()["conditioning_frames"] == 2
    tracker.refine_object(object_id, box(60, 60, 140, 140), keep_memory=False)
    restarted = tracker.step(frames[4]).by_id()[object_id]
    # a restart decodes the box alone, like a fresh object on that frame
    fresh = StreamingTracker(small_backbone)
    fresh_id = "fresh"
    fresh.add_object(fresh_id, box(60, 60, 140, 140))
    expected = fresh.step(frames[4]).by_id()[fresh_id]
    assert (restarted.low_res_logits - expected.low_res_logits).abs().max() <= TOL
    assert tracker.state_size()["conditioning_frames"] == 1
    assert [f.frame_index for f in tracker.features(object_id)] == [4]


# ---- bounded memory ---------------------------------------------------------------------------
def moving_square(index: int) -> np.ndarray:
    frame = np.full((48, 64, 3), 40, dtype=np.uint8)
    x = 5 + (index % 40)
    frame[15:30, x : x + 15] = (220, 30, 30)
    return frame


@pytest.fixture(scope="module")
def long_stream_backbone():
    """The fixture's weights at a 128-pixel model input: what is kept per frame does not depend on
    the input size, and 200 frames run about 3x faster than at 256."""
    return Sam2Backbone.from_config(SAM2_CONFIG, SAM2_CHECKPOINT, overrides={"image_size": 128})


def live_array_bytes() -> int:
    """Bytes of every tensor storage and every data-owning numpy array alive in this process, counted
    from outside the tracker (whatever it holds, however it accounts for it)."""
    gc.collect()
    storages, arrays = {}, 0
    for obj in gc.get_objects():
        kind = type(obj)  # not isinstance: that reads __class__, which lazy modules answer with warnings
        if issubclass(kind, torch.Tensor):
            try:
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
            except RuntimeError:  # a FakeTensor torch.compile left behind (another test): it holds no memory
                continue
        elif issubclass(kind, np.ndarray) and obj.base is None:
            arrays += obj.nbytes
    return sum(storages.values()) + arrays


def test_state_stops_growing_on_a_long_stream(long_stream_backbone):
    tracker = StreamingTracker(long_stream_backbone, max_conditioning_frames=3, keep_feature_frames=8)
    first = "square"
    tracker.add_object(first, box(5, 15, 20, 30))
    tracker.add_object("point", point(50, 40))
    sizes, live_bytes = {}, {}
    for index in range(200):
        if index in (25, 50, 75, 100):
            tracker.refine_object(first, point(12 + (index % 40), 22))
        tracker.step(moving_square(index))
        if index in (45, 130, 199):
            sizes[index] = tracker.state_size()
        if index in (45, 101, 130, 199):
            live_bytes[index] = live_array_bytes()
    memory_keys = ("objects", "conditioning_frames", "tracked_frames", "spatial_memories", "memory_bytes")
    assert {k: sizes[130][k] for k in memory_keys} == {k: sizes[199][k] for k in memory_keys}
    assert sizes[45]["tracked_frames"] == sizes[199]["tracked_frames"]
    assert sizes[199]["conditioning_frames"] == 3 + 1  # capped for the refined object, 1 for the other
    grid = long_stream_backbone.image_size // 16  # the decoder's feature grid at this model size
    frame_bytes = (2 * 256 + 256 * grid * grid) * 2  # one frame's PAM features (bfloat16, the default)
    for index in (130, 199):
        assert sizes[index]["feature_frames"] == 2 * 8  # keep_feature_frames, two objects
        assert sizes[index]["feature_bytes"] == 2 * 8 * frame_bytes
    history = [f.frame_index for f in tracker.features(first)]
    assert history[0] == 0 and history[-1] == 199 and len(history) == 8
    # The process's real memory, not the tracker's own account. From frame 45 on (memory bank full)
    # every object keeps exactly keep_feature_frames feature frames, so the arrays alive in the process
    # stay the same size to a few bytes: even a leak of one object pointer (1 KB) per frame and object
    # fails.
    assert [len(tracker.features(object_id)) for object_id in tracker.object_ids] == [8, 8]
    assert max(live_bytes[101], live_bytes[130], live_bytes[199]) - live_bytes[45] <= 16 * 1024, live_bytes
    assert abs(live_bytes[199] - live_bytes[101]) <= 16 * 1024, live_bytes


def test_feature_history_spans_the_whole_track():
    history = FeatureHistory(capacity=5)
    for index in range(40):
        history.add(RegionFeatures(torch.zeros(2, 256), torch.zeros(256, 1, 1), index, index, 1.0))
        kept = [f.frame_index for f in history.frames()]
        assert len(kept) == min(index + 1, 5) and kept[0] == 0 and kept[-1] == index
    gaps = np.diff(kept[:-1])  # the last gap closes at the latest frame, whatever its length
    assert gaps.max() <= 3 * gaps.min()  # spread over the track, not bunched at either end


def test_feature_history_always_holds_what_pam_video_mode_reads():
    """A track keeps exactly the 16 frames PAM's video mode reads once it is that long, at any length."""
    history = FeatureHistory(capacity=16)
    for index in range(1000):
        history.add(index)
        assert len(history) == min(index + 1, 16), f"{len(history)} frames kept after {index + 1}"
    assert history.frames()[0] == 0 and history.frames()[-1] == 999
    gaps = np.diff(history.frames()[:-1])
    assert gaps.max() <= 3 * gaps.min()


# ---- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((48, 64), dtype=np.uint8), r"image must be HxWx3 RGB, got shape \[48, 64\]"),
        (np.zeros((48, 64, 3), dtype=np.float64), "image must be uint8, got float64"),
        (np.zeros((0, 0, 3), dtype=np.uint8), "image is empty or degenerate: 0x0"),
        (None, "image must be a numpy array or PIL image, got NoneType"),
    ],
    ids=["gray", "float", "empty", "none"],
)
def test_bad_frames_raise_and_tracking_continues(small_backbone, image, message):
    tracker = StreamingTracker(small_backbone)
    object_id = "square"
    tracker.add_object(object_id, box(5, 15, 20, 30))
    tracker.step(moving_square(0))
    with pytest.raises(ImageError, match=message):
        tracker.step(image)
    assert tracker.next_frame_index == 1
    result = tracker.step(moving_square(1))
    assert result.frame_index == 1 and result.by_id()[object_id].state != TrackingState.UNKNOWN


def test_bad_ids_raise_clear_errors(small_backbone):
    """The tracker takes checked prompts (engine/prompts.py checks them once); ids are its to police."""
    tracker = StreamingTracker(small_backbone, max_objects=2)
    tracker.add_object("a", box(5, 15, 20, 30))
    tracker.step(moving_square(0))
    with pytest.raises(TrackerError, match="already tracked"):
        tracker.add_object("a", point(10, 10))
    with pytest.raises(TrackerError, match="non-empty string"):
        tracker.add_object("", point(10, 10))
    for call in (tracker.remove_object, tracker.features, lambda i: tracker.refine_object(i, point(5, 5))):
        with pytest.raises(UnknownObjectError, match="unknown object id 'ghost'"):
            call("ghost")
    tracker.add_object("b", point(30, 30))
    with pytest.raises(TrackerError, match="more than 2"):
        tracker.add_object("c", point(40, 30))
    result = tracker.step(moving_square(1))
    assert sorted(result.by_id()) == ["a", "b"]


def test_reset_frees_everything(small_backbone):
    tracker = StreamingTracker(small_backbone)
    tracker.add_object("square", box(5, 15, 20, 30))
    tracker.step(moving_square(0))
    tracker.reset()
    assert tracker.object_ids == [] and tracker.next_frame_index == 0
    assert tracker.state_size()["memory_bytes"] == 0 == tracker.state_size()["feature_bytes"]
    assert tracker.step(moving_square(1)).objects == []


# ---- benchmark plumbing (numbers are printed, not asserted) --------------------------------------
def test_track_bench_runs_both_trackers_on_the_same_frames(small_backbone):
    from pam_ros.bench.track import run_track_bench

    lines: list[str] = []
    rows, points = run_track_bench(
        small_backbone, num_frames=3, num_objects=(1, 2), long_frames=(4, 6), printer=lines.append
    )
    assert [(r.tracker, r.objects, r.frames) for r in rows] == [
        ("streaming", 1, 3), ("sam2-video-predictor", 1, 3), ("streaming", 2, 3), ("sam2-video-predictor", 2, 3)
    ]
    assert all(r.seconds_per_frame > 0 and r.state_bytes > 0 for r in rows)
    assert [p.frames for p in points] == [4, 6]
    assert any("after      6 frames" in line for line in lines)


def test_position_encodings_as_views_change_nothing_but_the_copies(small_backbone, monkeypatch):
    """SAM 2's cached sine position encodings are served as views during our encoder and track calls:
    every mask and PAM feature equals what sam2's own copying code gives, and the patch is gone after."""
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    from pam_ros.model import image_encoder, sam2_backbone
    from pam_ros.model.sam2_position import position_encodings_as_views

    frames = video_frames()[:3]
    prompts = [box(20, 40, 100, 120), point(250, 200)]

    def run() -> list:
        tracker = StreamingTracker(small_backbone, feature_dtype=None)
        for number, prompt in enumerate(prompts):
            tracker.add_object(f"obj_{number}", prompt)
        return [tracker.step(frame) for frame in frames]

    as_views = run()
    encodings = [m for m in small_backbone.sam.modules() if type(m) is PositionEmbeddingSine]
    assert encodings and all("forward" not in vars(m) for m in encodings), "sam2's own forward is back"
    with position_encodings_as_views(small_backbone.sam):
        level = encodings[0]
        grid = next(iter(level.cache))
        served = level(torch.zeros(2, 1, *grid))
        assert served.shape[0] == 2 and served.data_ptr() == level.cache[grid].data_ptr(), "a view, not a copy"
    monkeypatch.setattr(image_encoder, "position_encodings_as_views", lambda sam: contextlib.nullcontext())
    monkeypatch.setattr(sam2_backbone, "position_encodings_as_views", lambda sam: contextlib.nullcontext())
    copies = run()
    for viewed, copied in zip(as_views, copies):
        for track, expected in zip(viewed.objects, copied.objects):
            assert torch.equal(track.low_res_logits, expected.low_res_logits)
            assert torch.equal(track.features.mid_image_embed, expected.features.mid_image_embed)
            assert torch.equal(track.features.mid_mask_tokens, expected.features.mid_mask_tokens)
