"""The pipeline for planners: geometry of tracked objects from aligned depth, and ranking objects for a need.

Tiny random-weight model at a 256-pixel SAM 2 input (as test_pipeline.py); the masks it draws are
whatever the random weights give, so geometry is checked against the definition applied to those
very masks, and the ranking against the model's own single-object scores.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from pam_ros.engine.geometry import CameraIntrinsics, DepthImage, DepthSettings, object_geometry
from pam_ros.engine.pipeline import PerceptionPipeline, PipelineConfig
from pam_ros.engine.types import PromptRequest
from pam_ros.errors import QueryError, UnknownObjectError
from pam_ros.model.selection import ModelSpec

W, H = 96, 72
INTRINSICS = CameraIntrinsics(fx=80.0, fy=80.0, cx=47.5, cy=35.5)


def scene() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([(xx * 2) % 256, (yy * 3) % 256, ((xx + yy) * 5) % 256], axis=-1).astype(np.uint8)
    img[25:50, 20:45] = (230, 30, 30)
    img[10:30, 60:85] = (30, 30, 230)
    return img


def depth_at(stamp_ns: int, size=(W, H), decoy: bool = False) -> DepthImage:
    """The scene's depth; a decoy has everything 0.3 m farther (taking it instead shows in every number)."""
    metres = np.full((size[1], size[0]), 1.2, np.float32)
    metres[25:50, 20:45] = 0.6
    metres[10:30, 60:85] = 0.9
    return DepthImage(metres + np.float32(0.3 if decoy else 0.0), INTRINSICS, "camera_depth_optical_frame", stamp_ns)


@pytest.fixture(scope="module")
def model():
    return PerceptionPipeline.load(ModelSpec(name="tiny", image_size=256), PipelineConfig(semantics_mode="sync")).model


def make(model, **cfg) -> PerceptionPipeline:
    cfg.setdefault("new_object_tasks", ())
    cfg.setdefault("max_new_tokens", 4)
    return PerceptionPipeline(model, PipelineConfig(**cfg))


def track_two(pipe: PerceptionPipeline, **process_kwargs):
    pipe.submit_prompt(PromptRequest(box=(18.0, 23.0, 47.0, 52.0), object_id="red"))
    pipe.submit_prompt(PromptRequest(box=(58.0, 8.0, 87.0, 32.0), object_id="blue"))
    return pipe.process(scene(), 1_000, **process_kwargs)


# ------------------------------------------------------------------------------- geometry

def test_objects_get_the_defined_geometry_from_matched_depth(model):
    settings = DepthSettings(min_depth_points=1)
    pipe = make(model, depth=settings)
    pipe.add_depth(depth_at(999, decoy=True))  # another stamp: not this frame's
    pipe.add_depth(depth_at(1_000))
    result = track_two(pipe)
    assert result.has_depth and result.depth_error == ""
    for obj in result.objects:
        expected = object_geometry(depth_at(1_000), obj.mask, settings) if obj.mask_area else None
        assert obj.geometry == expected
    assert any(obj.geometry is not None for obj in result.objects)
    assert pipe.stats()["frames_with_depth"] == 1


def test_a_frame_without_depth_is_tracked_and_counted(model):
    pipe = make(model, depth=DepthSettings())
    result = track_two(pipe)  # nothing was added
    assert len(result.objects) == 2 and all(obj.geometry is None for obj in result.objects)
    assert not result.has_depth
    again = pipe.process(scene(), 2_000, depth=None)  # a front end that matched no depth itself
    assert not again.has_depth
    assert (pipe.stats()["frames_with_depth"], pipe.stats()["frames_without_depth"]) == (0, 2)


def test_depth_pairs_with_the_camera_info_of_its_stamp_and_unusable_ones_are_counted(model):
    settings = DepthSettings(min_depth_points=1)
    pipe = make(model, depth=settings)
    sized = CameraIntrinsics.from_camera_info([80.0, 0, 47.5, 0, 80.0, 35.5, 0, 0, 1], W, H)
    other = CameraIntrinsics.from_camera_info([160.0, 0, 95.5, 0, 160.0, 71.5, 0, 0, 1], 2 * W, 2 * H)
    bare = DepthImage(depth_at(1_000).metres, None, "camera_depth_optical_frame", 1_000)
    pipe.add_depth(bare)
    pipe.add_camera_info(1_000, sized)  # after its depth image, before the frame is tracked
    result = track_two(pipe)
    assert result.has_depth
    for obj in result.objects:
        assert obj.geometry == (object_geometry(depth_at(1_000), obj.mask, settings) if obj.mask_area else None)
    pipe.add_camera_info(2_000, other)  # a K for another resolution
    pipe.add_depth(DepthImage(bare.metres, None, bare.frame_id, 2_000))
    refused = pipe.process(scene(), 2_000)
    assert not refused.has_depth and all(obj.geometry is None for obj in refused.objects)
    assert "192x144" in refused.depth_error and "96x72" in refused.depth_error
    stats = pipe.stats()
    assert (stats["frames_with_depth"], stats["frames_bad_intrinsics"], stats["frames_without_camera_info"]) == (1, 1, 0)

    fresh = make(model, depth=settings)
    fresh.add_depth(bare)  # no CameraInfo at all
    assert not track_two(fresh).has_depth and fresh.stats()["frames_without_camera_info"] == 1


def test_depth_slop_matches_a_nearby_stamp(model):
    pipe = make(model, depth=DepthSettings(min_depth_points=1), depth_slop_ms=5.0)
    pipe.add_depth(depth_at(4_000_000))
    assert track_two(pipe).has_depth  # frame at 1 us, depth at 4 ms: within 5 ms
    pipe.add_depth(depth_at(20_000_000))
    assert not pipe.process(scene(), 12_000_000).has_depth  # 8 ms apart
    pipe.add_depth(depth_at(16_000_000))
    assert pipe.process(scene(), 17_000_000).has_depth
    assert (pipe.frames_with_depth, pipe.frames_without_depth) == (2, 1)


def test_wrong_size_depth_is_refused_naming_both_sizes(model):
    pipe = make(model, depth=DepthSettings())
    result = track_two(pipe, depth=depth_at(1_000, size=(48, 36)))
    assert not result.has_depth and all(obj.geometry is None for obj in result.objects)
    assert "48x36" in result.depth_error and "96x72" in result.depth_error


def test_geometry_is_off_by_default(model):
    pipe = make(model)
    pipe.add_depth(depth_at(1_000))
    result = track_two(pipe)
    assert all(obj.geometry is None for obj in result.objects) and "frames_with_depth" not in pipe.stats()


# ------------------------------------------------------------------------------- ranking

def test_ranking_equals_sorting_the_single_object_scores(model):
    pipe = make(model, semantics_mode="sync")
    track_two(pipe)
    ranked = pipe.rank_objects("cutting paper")
    single = {oid: model.ask(pipe.tracker.features(oid)[-1], "cutting paper")[0] for oid in ("red", "blue")}
    assert [r.object_id for r in ranked] == sorted(single, key=lambda oid: -single[oid].score)
    for match in ranked:
        assert match.score == pytest.approx(single[match.object_id].score, abs=1e-5)
        assert match.log_odds == pytest.approx(single[match.object_id].log_odds, abs=1e-4)
        assert match.stamp_ns == 1_000 and match.object.object_id == match.object_id
    assert [r.object_id for r in pipe.rank_objects("cutting paper", max_results=1)] == [ranked[0].object_id]
    assert pipe.rank_objects("cutting paper", min_score=ranked[0].score + 1e-6 if ranked[0].score < 1 else 1) == []
    assert [r.object_id for r in pipe.rank_objects("cutting paper", ["blue"])] == ["blue"]


def test_queries_run_on_the_semantics_worker(model):
    pipe = make(model, semantics_mode="async")
    try:
        track_two(pipe)
        threads = []
        original = model.ask

        def recording_ask(*args, **kwargs):
            threads.append(threading.current_thread().name)
            return original(*args, **kwargs)

        model.ask = recording_ask
        try:
            ranked = pipe.find_objects("holding water").result(timeout=120)
        finally:
            del model.ask
        assert len(ranked) == 2 and threads == ["pam-semantics"]
    finally:
        pipe.close()


@pytest.mark.parametrize("kwargs, error, text", [
    ({"query": "  "}, QueryError, "the query is empty"),
    ({"query": "cut", "max_results": -1}, QueryError, "max_results"),
    ({"query": "cut", "min_score": 1.5}, QueryError, "min_score"),
    ({"query": "cut", "object_ids": ["ghost"]}, UnknownObjectError, "unknown object id(s) 'ghost'"),
])
def test_bad_queries_are_refused_at_once(model, kwargs, error, text):
    pipe = make(model, semantics_mode="sync")
    track_two(pipe)
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
        pipe.find_objects(**kwargs)


def test_nothing_tracked_ranks_nothing(model):
    assert make(model, semantics_mode="sync").rank_objects("cutting paper") == []
