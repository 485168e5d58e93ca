"""Discover (engine.discovery + PerceptionPipeline.discover): segment everything, track what is new.

The tiny random model at a 256-pixel SAM 2 input; its predicted IoUs sit near 0.5 and its stability
scores near 0, so the generator runs with lowered thresholds (4 x 4 points) to return regions.
"""
from __future__ import annotations

import numpy as np
import pytest

from pam_ros.engine.discovery import DiscoverRequest, select_new_regions
from pam_ros.engine.pipeline import PerceptionPipeline, PipelineConfig
from pam_ros.engine.types import TrackingState
from pam_ros.model.regions import Region, RegionSettings, find_regions, mask_iou
from pam_ros.model.selection import ModelSpec

SETTINGS = RegionSettings(points_per_side=4, pred_iou_thresh=0.5, stability_score_thresh=0.0, box_nms_thresh=1.0)
GRAY = np.full((72, 96, 3), 128, np.uint8)  # the random model's masks there overlap its regions


@pytest.fixture(scope="module")
def model():
    return PerceptionPipeline.load(ModelSpec(name="tiny", image_size=256), PipelineConfig(semantics_mode="sync")).model


def make(model, **cfg) -> PerceptionPipeline:
    cfg.setdefault("max_new_tokens", 2)
    cfg.setdefault("semantics_mode", "sync")
    cfg.setdefault("new_object_tasks", ("recognize",))
    return PerceptionPipeline(model, PipelineConfig(discover_settings=SETTINGS, **cfg))


def region(x0: int, x1: int, area_rows: int = 10, iou: float = 0.9) -> Region:
    mask = np.zeros((20, 40), bool)
    mask[:area_rows, x0:x1] = True
    return Region(mask, int(mask.sum()), (float(x0), 0.0, float(x1 - x0 - 1), float(area_rows - 1)), iou, 0.9,
                  (float(x0), 0.0))


def test_selection_skips_tracked_overlaps_small_regions_and_respects_the_caps():
    tracked = region(0, 10).mask  # covers columns 0..9
    regions = [region(0, 9), region(0, 30), region(12, 20, area_rows=1), region(20, 30), region(21, 30),
               region(30, 40), region(10, 12)]
    chosen = select_new_regions(regions, [tracked], free_slots=5, min_area=20)
    # IoU(0..9, tracked) = 0.9 -> tracked; 0..30 IoU 0.33 -> new; 12..20 x 1 row: 8 px < 20 -> small;
    # 20..30 new; 21..30 overlaps the region just taken (0.9) -> skipped; 30..40 new; 10..12 new
    assert [r.mask.nonzero()[1].min() for r in chosen.chosen] == [0, 20, 30, 10]
    assert (chosen.skipped_overlap, chosen.skipped_small, chosen.skipped_full) == (2, 1, 0)
    capped = select_new_regions(regions, [tracked], free_slots=5, max_new=2, min_area=20)
    assert len(capped.chosen) == 2 and capped.skipped_full == 2
    full = select_new_regions(regions, [tracked], free_slots=1)
    assert len(full.chosen) == 1


def test_discover_adds_new_objects_on_the_next_frame_and_skips_what_is_tracked(model):
    pipe = make(model, max_objects=8)
    pipe.process(GRAY, 1_000)
    first = pipe.discover(DiscoverRequest(max_new_objects=1))
    assert not first.done()  # waits for the next frame
    frame = pipe.process(GRAY, 2_000)
    outcome = first.result(timeout=0)
    assert outcome.accepted and outcome.object_ids == ["obj_1"] and outcome.frame_index == frame.frame_index
    assert outcome.regions_found > 1 and outcome.seconds > 0
    (obj,) = frame.objects
    assert obj.object_id == "obj_1" and obj.tracking_state == TrackingState.PROMPTED
    assert [o.object_id for o in frame.prompt_outcomes] == ["obj_1"]  # an ordinary ADD prompt
    assert obj.semantics.texts.keys() == {"recognize"}
    tracked = pipe.process(GRAY, 3_000).objects[0].mask

    second = pipe.discover(DiscoverRequest(max_new_objects=2, tasks=("caption",)))
    later = pipe.process(GRAY, 4_000)
    outcome = second.result(timeout=0)
    assert outcome.object_ids == ["obj_2", "obj_3"]
    regions = find_regions(model.backbone, GRAY, SETTINGS, max_regions=None).regions
    overlapping = [r for r in regions if mask_iou(r.mask, tracked) > 0.5]
    assert overlapping, "the fixture image must give a region that overlaps obj_1"
    assert outcome.skipped_overlap >= len(overlapping)
    for chosen in outcome.regions:  # what was taken does not overlap obj_1
        assert mask_iou(chosen.mask, tracked) <= 0.5
    assert "already tracked" in outcome.message and "2 new object(s)" in outcome.message
    new = {o.object_id: o for o in later.objects if o.object_id != "obj_1"}
    assert set(new) == {"obj_2", "obj_3"} and all(o.semantics.texts.keys() == {"caption"} for o in new.values())
    assert pipe.stats()["discover_runs"] == 2 and pipe.stats()["discover_seconds"] > 0


def test_discover_refuses_when_max_objects_is_reached_and_bad_requests(model):
    pipe = make(model, max_objects=1)
    pipe.discover()
    pipe.process(GRAY, 1_000)
    refused = pipe.discover()
    frame = pipe.process(GRAY, 2_000)
    outcome = refused.result(timeout=0)
    assert not outcome.accepted and "max_objects (1) reached" in outcome.error
    assert [o.object_id for o in frame.objects] == ["obj_1"]  # tracking goes on
    bad = pipe.discover(DiscoverRequest(min_area=-1)).result(timeout=0)
    assert not bad.accepted and "min_area must be an integer >= 0" in bad.error
    from pam_ros.errors import TaskError

    with pytest.raises(TaskError):
        pipe.discover(DiscoverRequest(tasks=("dance",)))


def textured(shift: int) -> np.ndarray:
    """A 96x72 scene (a colour gradient with a bright square and a dark disc), moved right by `shift` px."""
    rows, cols = np.mgrid[0:72, 0:96]
    image = np.stack([cols * 2, rows * 3, 255 - cols - rows], axis=-1).astype(np.uint8)
    image[10:34, 12:40] = (240, 220, 30)
    image[(rows - 48) ** 2 + (cols - 64) ** 2 < 14 ** 2] = (20, 30, 90)
    return np.roll(image, shift, axis=1)


def test_discover_every_n_frames_runs_the_generator_on_frames_0_2_4_deterministically(model):
    frames = [textured(6 * i) for i in range(5)]
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:])), "every frame differs"

    def run():
        pipe = make(model, max_objects=32, discover_every_frames=2)  # never full: every due frame runs it
        results, runs = [], []
        for i, img in enumerate(frames):
            results.append(pipe.process(img, 1_000 * (i + 1)))
            runs.append(pipe.stats()["discover_runs"])  # the generator's runs so far
        added = [[o.object_id for o in r.prompt_outcomes if o.accepted] for r in results]
        return [[(o.object_id, o.mask.tobytes()) for o in r.objects] for r in results], runs, added

    (first, runs, added), (second, runs_again, _) = run(), run()
    assert first == second and runs == runs_again
    assert runs == [1, 1, 2, 2, 3], "the generator runs on frames 0, 2 and 4 only"
    assert added[0] and added[2] and added[4] and added[1] == [] and added[3] == [], added
    assert [len(objs) for objs in first] == [len(sum(added[:i + 1], [])) for i in range(5)]


def test_generator_defaults_are_the_official_generators():
    """The defaults the CLI help, the node's parameters and the engine share are SAM 2's own."""
    from pam_ros.model.region_settings import GENERATOR_DEFAULTS
    from pam_ros.model.regions import generator_default

    assert GENERATOR_DEFAULTS == {name: generator_default(name) for name in GENERATOR_DEFAULTS}
