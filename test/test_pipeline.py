"""PerceptionPipeline: the engine both front ends drive (tiny random-weight model, CPU).

The model runs with a 256-pixel SAM 2 input (ModelSpec.image_size) to keep CPU time low: same code
paths, smaller grids. Parity with the official outputs at 1024 is tested in the model/tracker tests.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pam_ros.engine.pipeline import PerceptionPipeline, PipelineConfig
from pam_ros.engine.types import PromptAction, PromptRequest, SemanticsState, TrackingState
from pam_ros.errors import ConfigError, EngineClosedError, ImageError, TaskError, UnknownObjectError
from pam_ros.model.selection import ModelSpec

W, H = 96, 72


def scene(index: int) -> np.ndarray:
    """A red square moving right over a textured background."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([(xx * 2) % 256, (yy * 3) % 256, ((xx + yy) * 5) % 256], axis=-1).astype(np.uint8)
    x0 = 20 + 2 * index
    img[25:50, x0:x0 + 25] = (230, 30, 30)
    return img


SPEC = ModelSpec(name="tiny", image_size=256)


@pytest.fixture(scope="module")
def model():
    return PerceptionPipeline.load(SPEC, PipelineConfig(semantics_mode="sync")).model


def make(model, **cfg) -> PerceptionPipeline:
    cfg.setdefault("max_new_tokens", 4)
    return PerceptionPipeline(model, PipelineConfig(**cfg))


def box_prompt(**kw) -> PromptRequest:
    return PromptRequest(box=(18.0, 22.0, 48.0, 52.0), **kw)


def test_model_spec_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no model selected"):
        ModelSpec().validate()
    with pytest.raises(ConfigError, match="not both"):
        ModelSpec(name="tiny", pam_checkpoint=str(tmp_path)).validate()
    with pytest.raises(ConfigError, match="pam-ros download PAM-1.5B"):
        ModelSpec(name="PAM-1.5B").validate()
    with pytest.raises(ConfigError, match="does not exist"):
        ModelSpec(sam2_config="sam2.1_hiera_l", sam2_checkpoint=str(tmp_path / "x.pt"),
                  pam_checkpoint=str(tmp_path)).validate()
    with pytest.raises(ConfigError, match="device"):
        ModelSpec(name="tiny", device="tpu").validate()
    with pytest.raises(ConfigError, match="dtype"):
        ModelSpec(name="tiny", dtype="int8").validate()
    with pytest.raises(TaskError):
        PipelineConfig(new_object_tasks=("dance",)).validate()


def test_sync_semantics_describe_the_frame_the_object_was_added_on(model):
    pipe = make(model, semantics_mode="sync", new_object_tasks=("explain", "caption"))
    pipe.process(scene(0), 1_000)
    pipe.submit_prompt(box_prompt(object_id="cup"))
    first = pipe.process(scene(1), 2_000)
    assert [o.accepted for o in first.prompt_outcomes] == [True]
    (obj,) = first.objects
    assert obj.object_id == "cup" and obj.tracking_state == TrackingState.PROMPTED
    assert obj.semantics.state == SemanticsState.READY
    assert obj.semantics.stamp_ns == 2_000 and obj.semantics.frame_index == first.frame_index
    assert set(obj.semantics.texts) == {"explain", "caption"}
    assert obj.semantics.caption == obj.semantics.texts["caption"]
    assert obj.semantics.explanation == obj.semantics.texts["explain"]
    later = pipe.process(scene(2), 3_000)
    assert later.objects[0].tracking_state in (TrackingState.TRACKED, TrackingState.LOST)
    # the words still describe frame 2000, and say so
    assert later.objects[0].semantics.stamp_ns == 2_000
    pipe.close()


def test_async_semantics_never_block_tracking(model):
    pipe = make(model, semantics_mode="async", new_object_tasks=("detailed_caption",), max_new_tokens=8)
    # Hold the LLM as a long generation would: tracking must go on regardless.
    with pipe._worker._model_lock:
        pipe.submit_prompt(box_prompt())
        results = [pipe.process(scene(i), i + 1) for i in range(3)]
        assert [r.objects[0].semantics.state for r in results] == [SemanticsState.PENDING] * 3
        assert pipe.stats()["semantics_queue"] == 1
    assert pipe.wait_semantics_idle(60)
    sem = pipe.process(scene(3), 4).objects[0].semantics
    # the words describe the frame the object was added on, and say so
    assert sem.state == SemanticsState.READY and sem.stamp_ns == 1 and sem.texts["detailed_caption"]
    pipe.close()


def test_prompt_refusals_are_reported_and_tracking_goes_on(model):
    pipe = make(model, semantics_mode="sync", new_object_tasks=(), max_objects=1)
    pipe.submit_prompt(PromptRequest(action=PromptAction.REMOVE, object_id="ghost"))
    pipe.submit_prompt(PromptRequest(action=PromptAction.REFINE, object_id="ghost", points=((5.0, 5.0),),
                                     labels=(1,)))
    pipe.submit_prompt(PromptRequest(points=((float("nan"), 3.0),), labels=(1,)))
    pipe.submit_prompt(PromptRequest(points=((500.0, 30.0),), labels=(1,)))
    pipe.submit_prompt(PromptRequest(points=((30.0, 30.0),), labels=(7,)))
    pipe.submit_prompt(PromptRequest(box=(40.0, 40.0, 40.0, 60.0)))
    pipe.submit_prompt(PromptRequest())
    pipe.submit_prompt(box_prompt(object_id="a"))
    pipe.submit_prompt(box_prompt(object_id="b"))  # over max_objects
    res = pipe.process(scene(0), 10)
    outcome = res.prompt_outcomes
    assert [o.accepted for o in outcome] == [False] * 7 + [True, False]
    messages = [o.error for o in outcome]
    assert "ghost" in messages[0] and "ghost" in messages[1]
    assert "NaN" in messages[2]
    assert "outside" in messages[3]
    assert "0 or 1" in messages[4]
    assert "zero area" in messages[5]
    assert "at least one point or a box" in messages[6]
    assert "max_objects" in messages[8] or "more than 1" in messages[8]
    assert [o.object_id for o in res.objects] == ["a"]
    assert pipe.process(scene(1), 11).objects[0].object_id == "a"
    pipe.close()


@pytest.mark.parametrize("image, message", [
    (np.zeros((72, 96), np.uint8), "HxWx3"),
    (np.zeros((72, 96, 3), np.float32), "uint8"),
    (np.zeros((0, 96, 3), np.uint8), "empty"),
    ("not an image", "numpy array"),
])
def test_bad_frames_are_refused_and_the_stream_continues(model, image, message):
    pipe = make(model, semantics_mode="sync", new_object_tasks=())
    pipe.submit_prompt(box_prompt(object_id="x"))
    with pytest.raises(ImageError, match=message):
        pipe.process(image, 1)
    res = pipe.process(scene(0), 2)  # the held prompt is still applied, on the next good frame
    assert [o.object_id for o in res.objects] == ["x"]
    pipe.close()


def test_adds_without_an_id_are_named_on_submission(model):
    """Both front ends name objects through this: the node learns the id before the frame comes."""
    pipe = make(model, semantics_mode="sync", new_object_tasks=())
    first = pipe.submit_prompt(box_prompt())
    assert first.object_id == "obj_1" and first.request.box == box_prompt().box
    pipe.submit_prompt(box_prompt(object_id="obj_2"))  # a user's own id is never given out again
    assert pipe.submit_prompt(PromptRequest(points=((70.0, 60.0),), labels=(1,))).object_id == "obj_3"
    res = pipe.process(scene(0), 1)
    assert [o.object_id for o in res.prompt_outcomes] == ["obj_1", "obj_2", "obj_3"]
    assert [o.object_id for o in res.objects] == ["obj_1", "obj_2", "obj_3"]
    pipe.submit_prompt(PromptRequest(action=PromptAction.REMOVE, object_id="obj_3"))
    pipe.process(scene(1), 2)
    assert pipe.submit_prompt(box_prompt()).object_id == "obj_4", "numbers are not reused"
    pipe.close()


def test_prompts_wait_for_their_frame_and_expire(model):
    pipe = make(model, semantics_mode="sync", new_object_tasks=(), prompt_hold_s=0.5)
    pipe.submit_prompt(box_prompt(object_id="late", stamp_ns=3_000))
    assert pipe.process(scene(0), 1_000).objects == []
    assert pipe.process(scene(1), 2_000).objects == []
    res = pipe.process(scene(2), 3_000)
    assert [o.object_id for o in res.objects] == ["late"] and res.prompt_outcomes[0].frame_index == 2
    pipe.submit_prompt(box_prompt(object_id="never", stamp_ns=10**12))
    assert pipe.expire_held_prompts(now_s=time.monotonic()) == []
    expired = pipe.expire_held_prompts(now_s=time.monotonic() + 1.0)
    assert len(expired) == 1 and not expired[0].accepted and "within 0.5 s" in expired[0].error
    pipe.close()


def test_worker_failure_is_reported_and_the_worker_goes_on(model):
    pipe = make(model, semantics_mode="async", new_object_tasks=())
    pipe.submit_prompt(box_prompt(object_id="o"))
    pipe.process(scene(0), 1)
    # A video task on a 1-frame track fails inside the worker (PAM's video mode needs 16 frames).
    pipe.request_refresh("o", ["video_caption"])
    pipe.process(scene(1), 2)
    assert pipe.wait_semantics_idle(60)
    failed = pipe.semantics("o")
    assert failed.state == SemanticsState.FAILED and "16" in failed.error
    pipe.request_refresh("o", ["caption"])
    pipe.process(scene(2), 3)
    assert pipe.wait_semantics_idle(60)
    assert pipe.semantics("o").state == SemanticsState.READY and pipe.semantics("o").texts["caption"]
    pipe.close()


def test_caption_streams_and_cancels(model):
    pipe = make(model, semantics_mode="sync", new_object_tasks=())
    pipe.submit_prompt(box_prompt(object_id="o"))
    pipe.process(scene(0), 5)
    seen: list[tuple[str, int]] = []
    full = pipe.caption("o", "caption", 6, on_text=lambda text, n: seen.append((text, n)))
    assert full.stamp_ns == 5 and len(full.token_ids) == 6 and not full.stopped
    assert seen and seen[-1][0] == full.text and [n for _, n in seen] == sorted(n for _, n in seen)
    stop = threading.Event()

    def on_text(text, n):
        if n >= 2:
            stop.set()

    cut = pipe.caption("o", "caption", 6, on_text=on_text, should_stop=stop.is_set)
    assert cut.stopped and len(cut.token_ids) < 6
    with pytest.raises(UnknownObjectError, match="nobody"):
        pipe.caption("nobody", "caption")
    with pytest.raises(TaskError):
        pipe.caption("o", "dance")
    pipe.close()


def test_removed_object_gets_a_clear_answer(model):
    pipe = make(model, semantics_mode="sync", new_object_tasks=())
    pipe.submit_prompt(box_prompt(object_id="gone"))
    pipe.process(scene(0), 1)
    pipe.submit_prompt(PromptRequest(action=PromptAction.REMOVE, object_id="gone"))
    res = pipe.process(scene(1), 2)
    assert res.objects == [] and res.prompt_outcomes[0].accepted
    with pytest.raises(UnknownObjectError, match="gone"):
        pipe.caption("gone", "caption")
    with pytest.raises(UnknownObjectError, match="gone"):
        pipe.describe(None, PromptRequest(object_id="gone"), ["caption"])
    pipe.close()
    with pytest.raises(EngineClosedError):
        pipe.process(scene(2), 3)


def test_describe_one_shot_and_by_id_without_tracking_it(model):
    pipe = make(model, semantics_mode="sync", new_object_tasks=())
    with pytest.raises(ImageError, match="no frame"):
        pipe.describe(None, box_prompt(), ["recognize"])
    img = scene(0)
    obj, texts = pipe.describe(img, box_prompt(), ["recognize", "explain"], max_new_tokens=3)
    assert [t.task for t in texts] == ["recognize", "explain"] and all(len(t.token_ids) == 3 for t in texts)
    assert obj.mask.shape == (H, W) and obj.semantics.explanation == texts[1].text
    assert pipe.object_ids() == []  # one-shot: not tracked
    # same prompt, same image -> same words (greedy)
    again, texts2 = pipe.describe(img, box_prompt(), ["recognize"], max_new_tokens=3)
    assert texts2[0].token_ids == texts[0].token_ids and np.array_equal(again.mask, obj.mask)
    pipe.submit_prompt(box_prompt(object_id="t"))
    tracked = pipe.process(img, 77).objects[0]
    by_id, t3 = pipe.describe(None, PromptRequest(object_id="t"), ["recognize"], max_new_tokens=3)
    assert by_id.object_id == "t" and t3[0].stamp_ns == 77
    assert np.array_equal(by_id.mask, tracked.mask)
    pipe.close()


def test_streaming_video_caption_runs_every_window_with_the_previous_caption_as_history(model):
    """Three windows of the default 32 frames through the real pipeline: each captions its own frames
    (PAM reads 16 of them), with no history first and then the previous window's caption."""
    pipe = make(model, semantics_mode="sync", new_object_tasks=("video_caption", "video_stream_caption"),
                max_new_tokens=4)
    assert pipe.config.stream_window_frames == 32
    calls = []
    generate = pipe._worker._generate

    def recording_generate(sequences):
        histories = [pipe._store.history("o", task) for _, task in sequences]  # what PAM's prompt gets
        results = generate(sequences)
        for (job, task), history, result in zip(sequences, histories, results):
            calls.append((task, [f.frame_index for f in job.frames], history, result.text))
        return results

    pipe._worker._generate = recording_generate  # record what the worker runs, change nothing
    pipe.submit_prompt(box_prompt(object_id="o"))
    texts = []
    for i in range(96):
        sem = pipe.process(scene(i % 20), i + 1).objects[0].semantics
        texts.append(sem.texts.get("video_stream_caption"))
    streamed = [c for c in calls if c[0] == "video_stream_caption"]
    assert [c[0] for c in calls].count("video_caption") == 1, "the plain video caption runs once"
    assert len(streamed) == 3
    for number, (_, frames, _, _) in enumerate(streamed):
        window = range(32 * number, 32 * number + 32)
        assert 16 <= len(frames) <= 32 and set(frames) <= set(window), (number, frames)
        assert frames[0] == window[0] and frames[-1] == window[-1], "a window spans its own frames"
    assert streamed[0][2] is None
    for previous, current in zip(streamed, streamed[1:]):  # each later window continues the narrative
        assert current[2] == previous[3]
    assert texts[31] is not None and texts[30] is None, "the first window is captioned on its 32nd frame"
    assert texts[95] == pipe.semantics("o").texts["video_stream_caption"]
    pipe.close()


def test_semantics_backlog_is_bounded_while_the_model_is_busy(model):
    """A refresh period far shorter than a generation queues at most one job per object (the newest
    features win); the pipeline does not pile up a job, and a copy of the features, per frame."""
    pipe = make(model, semantics_mode="async", new_object_tasks=("caption",), refresh_period_s=0.001,
                max_new_tokens=2)
    pipe.submit_prompt(box_prompt(object_id="a"))
    pipe.submit_prompt(PromptRequest(object_id="b", box=(60.0, 5.0, 90.0, 30.0)))
    depths = []
    with pipe._worker._model_lock:  # the model is busy for the whole stream
        for i in range(30):
            pipe.process(scene(i), i + 1)
            time.sleep(0.002)  # past the refresh period, on every frame
            depths.append(pipe.stats()["semantics_queue"])
    assert max(depths) <= 3, depths  # a job per object queued, plus the one that is waiting for the model
    assert pipe.stats()["semantics_merged"] >= 40
    assert pipe.wait_semantics_idle(120)
    words = [pipe.semantics(oid) for oid in ("a", "b")]
    assert all(sem.state == SemanticsState.READY for sem in words)
    assert [sem.stamp_ns for sem in words] == [30, 30], "the merged job describes the newest frame"
    pipe.close()


def test_a_request_future_is_running_while_it_generates_and_cancel_while_queued_skips_it(model):
    """The caption action reads these states: a request's future says "running" while its tokens stream
    (so a cancel then stops the generation instead of calling it cancelled-while-queued), and a request
    cancelled while it waits never generates."""
    pipe = make(model, semantics_mode="async", new_object_tasks=())
    pipe.submit_prompt(box_prompt(object_id="o"))
    pipe.process(scene(0), 1)
    futures, running = [], []
    futures.append(pipe.caption_async("o", "caption", 4, on_text=lambda text, n: running.append(futures[0].running())))
    result = futures[0].result(60)
    assert running and all(running) and len(result.token_ids) == 4
    release = threading.Event()
    busy = pipe._worker.call_first(lambda _model: release.wait(60))
    waiting = pipe.caption_async("o", "caption", 4, on_text=lambda text, n: running.append("generated"))
    assert pipe.queue_position(waiting) == 1 and waiting.cancel()
    release.set()
    assert busy.result(60) is True and pipe.wait_semantics_idle(60)
    assert "generated" not in running and pipe.queue_position(waiting) is None
    pipe.close()
