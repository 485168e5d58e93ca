"""Several cameras over one model (engine/host.py): each camera tracks as a single-camera pipeline would,
prompts stay with their camera, semantics batches mix cameras, a query ranks every camera's objects.

Real tiny PAM on CPU, SAM 2 at a 256-pixel input (the session's shared model).
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
from test_pipeline import box_prompt, scene

from pam_ros.engine.host import PerceptionHost, check_camera_names
from pam_ros.engine.pipeline import PerceptionPipeline, PipelineConfig
from pam_ros.engine.types import PromptRequest, SemanticsState
from pam_ros.errors import ConfigError, UnknownCameraError, UnknownObjectError

FRAMES = 4


def config(**values) -> PipelineConfig:
    values.setdefault("max_new_tokens", 3)
    values.setdefault("new_object_tasks", ("caption",))
    return PipelineConfig(**values)


def test_two_cameras_fed_one_clip_reproduce_the_single_camera_pipeline(small_pam_model):
    alone = PerceptionPipeline(small_pam_model, config(semantics_mode="sync"))
    alone.submit_prompt(box_prompt(object_id="cup"))
    expected = [alone.process(scene(i), i + 1) for i in range(FRAMES)]
    alone.close()

    host = PerceptionHost(small_pam_model, ["front", "wrist"], config(semantics_mode="sync"))
    assert host["front"].model is host["wrist"].model is small_pam_model, "one copy of the weights"
    for camera in host.cameras:
        host[camera].submit_prompt(box_prompt(object_id="cup"))
    for i in range(FRAMES):
        for camera in host.cameras:
            (obj,) = host[camera].process(scene(i), i + 1).objects
            (want,) = expected[i].objects
            assert np.array_equal(obj.mask, want.mask), (camera, i)
            assert obj.object_score_logit == pytest.approx(want.object_score_logit, abs=1e-5)
            assert obj.semantics.texts == want.semantics.texts, "the same words as one camera alone"
    assert host["front"].semantics("cup").state == SemanticsState.READY
    host.close()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_process_frames_encodes_the_cameras_frames_in_one_batch_and_keeps_their_masks(small_pam_model, monkeypatch):
    alone = PerceptionPipeline(small_pam_model, config(semantics_mode="sync", new_object_tasks=()))
    alone.submit_prompt(box_prompt(object_id="cup"))
    expected = [alone.process(scene(i), i + 1) for i in range(FRAMES)]
    alone.close()

    batches = []
    encoder = small_pam_model.backbone.image_encoder

    class CountingEncoder:  # the real encoder, its batch sizes noted
        max_batch = encoder.max_batch

        def __call__(self, pixels):
            batches.append(pixels.shape[0])
            return encoder(pixels)

    monkeypatch.setattr(small_pam_model.backbone, "image_encoder", CountingEncoder())
    host = PerceptionHost(small_pam_model, ["front", "wrist", "arm"], config(semantics_mode="sync",
                                                                            new_object_tasks=()))
    for camera in ("front", "wrist"):
        host[camera].submit_prompt(box_prompt(object_id="cup"))
    for i in range(FRAMES):
        bad = np.zeros((4, 4), np.uint8)  # the arm camera's frame is broken: refused, the others go on
        front, wrist, arm = host.process_frames([("front", scene(i), i + 1), ("wrist", scene(i), i + 1),
                                                 ("arm", bad, i + 1)])
        assert "HxWx3" in str(arm)
        (want,) = expected[i].objects
        for result in (front, wrist):
            (obj,) = result.objects
            assert iou(obj.mask, want.mask) >= 0.99, i
    assert batches == [2] * FRAMES, "one encoder call per round, both good frames in it"
    assert host["arm"].frames_processed == 0 and host["front"].frames_processed == FRAMES
    with pytest.raises(UnknownCameraError, match="front, wrist, arm"):
        host.process_frames([("head", scene(0), 9)])
    host.close()


def test_prompts_and_ids_stay_with_their_camera(small_pam_model):
    host = PerceptionHost(small_pam_model, ["front", "wrist"], config(semantics_mode="sync", new_object_tasks=()))
    named = host["front"].submit_prompt(box_prompt())
    host["wrist"].submit_prompt(box_prompt())
    assert named.object_id == "obj_1" and host["wrist"].pending_prompts()[0].object_id == "obj_1", \
        "ids are per camera"
    host["front"].process(scene(0), 1)
    assert host["front"].object_ids() == ["obj_1"] and host["wrist"].object_ids() == []
    host["wrist"].process(scene(0), 1)
    host["front"].submit_prompt(PromptRequest(object_id="mug", box=(60.0, 5.0, 90.0, 30.0)))
    host["front"].process(scene(1), 2)
    assert host["front"].object_ids() == ["mug", "obj_1"] and host["wrist"].object_ids() == ["obj_1"]
    host.close()


def test_the_cameras_objects_share_one_semantics_batch(small_pam_model, monkeypatch):
    sizes: list[int] = []
    real = small_pam_model.describe_batch

    def recording(jobs, **kwargs):
        sizes.append(len(jobs))
        return real(jobs, **kwargs)

    monkeypatch.setattr(small_pam_model, "describe_batch", recording)
    host = PerceptionHost(small_pam_model, ["front", "wrist"], config(semantics_mode="async"))
    release = threading.Event()
    busy = host._worker.call_first(lambda _model: release.wait(60))  # the worker is busy while both track
    for camera in host.cameras:
        host[camera].submit_prompt(box_prompt(object_id="cup"))
        host[camera].process(scene(0), 1)
    release.set()
    assert busy.result(60) is True and host.wait_semantics_idle(120)
    assert sizes == [2], "front's and wrist's new objects in one generation"
    assert all(host[c].semantics("cup").state == SemanticsState.READY for c in host.cameras)
    stats = host.stats()
    assert set(stats["cameras"]) == {"front", "wrist"} and stats["model"]["semantics_last_batch_jobs"] == 2
    assert stats["model"]["device"] == "cpu"
    host.close()


def test_find_objects_ranks_the_objects_of_every_camera_and_names_them(small_pam_model):
    host = PerceptionHost(small_pam_model, ["front", "wrist"], config(semantics_mode="sync", new_object_tasks=()))
    host["front"].submit_prompt(box_prompt(object_id="cup"))
    host["wrist"].submit_prompt(PromptRequest(object_id="knife", box=(60.0, 5.0, 90.0, 30.0)))
    for camera in host.cameras:
        host[camera].process(scene(0), 1)
    matches = host.find_objects("cutting paper").result(60)
    assert sorted((m.camera, m.object_id) for m in matches) == [("front", "cup"), ("wrist", "knife")]
    assert matches[0].score >= matches[1].score
    alone = {m.camera: small_pam_model.ask(host[m.camera].tracker.features(m.object_id)[-1], "cutting paper")[0]
             for m in matches}
    for match in matches:
        assert match.score == pytest.approx(alone[match.camera].score, abs=1e-4), "batched = asked alone"
    (only,) = host.find_objects("cutting paper", ["wrist/knife"]).result(60)
    assert (only.camera, only.object_id) == ("wrist", "knife")
    with pytest.raises(UnknownCameraError, match="cameras: front, wrist"):
        host.find_objects("cutting paper", ["hand/knife"])
    with pytest.raises(UnknownObjectError, match="camera/id"):
        host.find_objects("cutting paper", ["knife"])
    host.close()


def test_camera_names_are_checked_and_unknown_cameras_refused(small_pam_model):
    for bad, why in (([], "at least one"), (["front", "front"], "front named more than once"),
                     ([""], "not a camera name"), (["head/left"], "not a camera name")):
        with pytest.raises(ConfigError, match=why):
            check_camera_names(bad)
    host = PerceptionHost(small_pam_model, ["front"], config(semantics_mode="sync"))
    with pytest.raises(UnknownCameraError, match=r"unknown camera 'wrist' \(cameras: front\)"):
        host["wrist"]
    host.close()
