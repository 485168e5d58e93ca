"""The engine's prompt queue: every submission is a future that resolves once, with the prompt's outcome."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from pam_ros.engine.prompts import PromptQueue
from pam_ros.engine.types import PromptAction, PromptRequest


def add(object_id: str = "", stamp_ns: int = 0) -> PromptRequest:
    return PromptRequest(object_id=object_id, box=(1.0, 1.0, 9.0, 9.0), stamp_ns=stamp_ns)


def test_ids_are_named_at_submission_and_prompts_wait_for_their_stamp():
    tracked: set[str] = {"obj_1"}
    queue = PromptQueue(lambda: tracked)
    now, later = queue.submit(add()), queue.submit(add(stamp_ns=50))
    assert (now.object_id, later.object_id) == ("obj_2", "obj_3"), "tracked ids are skipped"
    assert [f.object_id for f in queue.take_due(10, (64, 48))] == ["obj_2"]
    assert not later.done() and len(queue) == 1
    assert [f.object_id for f in queue.take_due(50, (64, 48))] == ["obj_3"]


def test_a_duplicate_add_is_refused_at_once_so_a_retry_never_adds_twice():
    queue = PromptQueue(lambda: {"cup"})
    tracked = queue.submit(add("cup"))
    assert tracked.done() and not tracked.result().accepted and "already tracked" in tracked.result().error
    first, retry = queue.submit(add("mug")), queue.submit(add("mug"))
    assert not first.done()
    assert retry.done() and "already queued" in retry.result().error
    assert [f.object_id for f in queue.take_due(0, (64, 48))] == ["mug"]


def test_expiry_and_close_resolve_the_futures_with_the_reason():
    queue = PromptQueue(lambda: ())
    held = queue.submit(add("a", stamp_ns=10**12))
    waiting = queue.submit(add("b"))
    expired = queue.expire(hold_s=0.5, now_s=held.submitted_s + 1.0)
    assert [o.object_id for o in expired] == ["a"] and "within 0.5 s" in held.result().error
    assert not waiting.done(), "a prompt for the next frame never expires"
    queue.close("not applied: the node was deactivated")
    assert waiting.result(timeout=0).error == "not applied: the node was deactivated"
    after = queue.submit(add("c"))
    assert after.done() and not after.result().accepted and "deactivated" in after.result().error
    assert after.result().request.object_id == "c", "the outcome names the prompt as queued"


def test_points_and_boxes_are_checked_once_against_the_frames_coming_in():
    """Known frame size: a prompt outside it is refused at submission; a partly outside box is clipped
    once. Unknown (no frame yet) or another size: checked against the frame it is due on."""
    size = [None]
    queue = PromptQueue(lambda: (), lambda: size[0])
    early = queue.submit(PromptRequest(object_id="early", points=((50.0, 5.0),), labels=(1,)))
    assert not early.done(), "no frame yet: checked when its frame comes"
    (due,) = queue.take_due(0, (20, 10))
    assert due is early and "outside the 20x10 image" in due.problem
    size[0] = (20, 10)
    far = queue.submit(PromptRequest(object_id="far", box=(30.0, 0.0, 40.0, 5.0)))
    assert far.done() and "entirely outside the 20x10 image" in far.result().error
    clipped = queue.submit(PromptRequest(object_id="clip", box=(-5.0, 2.0, 12.0, 30.0)))
    assert clipped.visual.box.tolist() == [0.0, 2.0, 12.0, 10.0] and clipped.checked_for == (20, 10)
    nan = queue.submit(PromptRequest(object_id="nan", points=((float("nan"), 1.0),), labels=(1,)))
    assert "NaN" in nan.result(timeout=0).error
    refused_far, taken, refused_nan = queue.take_due(0, (20, 10))  # in submission order, refusals listed
    assert (refused_far, refused_nan) == (far, nan) and far.done() and nan.done()
    assert taken is clipped and not taken.problem and not taken.done()
    bigger = queue.submit(PromptRequest(object_id="big", points=((15.0, 8.0),), labels=(1,)))
    (grown,) = queue.take_due(0, (8, 8))  # the stream changed size: checked again against its frame
    assert grown is bigger and "outside the 8x8 image" in grown.problem
    refine = queue.submit(PromptRequest(action=PromptAction.REFINE, points=((1.0, 1.0),), labels=(1,)))
    assert "needs an object_id" in refine.result(timeout=0).error
    assert queue.take_due(0, (20, 10)) == [refine] and queue.take_due(0, (20, 10)) == [], "listed once"


def test_submissions_from_many_threads_get_distinct_ids():
    queue = PromptQueue(lambda: ())
    futures, lock = [], threading.Lock()

    def submit_many():
        for _ in range(50):
            future = queue.submit(add())
            with lock:
                futures.append(future)

    threads = [threading.Thread(target=submit_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [f.object_id for f in futures]
    assert len(ids) == 200 and len(set(ids)) == 200
    assert sorted(int(i.split("_")[1]) for i in ids) == list(range(1, 201))
    assert len(queue.take_due(0, (64, 48))) == 200


# ----- through the pipeline (tiny model, 256-pixel SAM 2 input) -----------------------------------
@pytest.fixture(scope="module")
def pipeline_model():
    from pam_ros.engine.pipeline import PerceptionPipeline, PipelineConfig
    from pam_ros.model.selection import ModelSpec

    return PerceptionPipeline.load(ModelSpec(name="tiny", image_size=256), PipelineConfig(semantics_mode="sync")).model


def frame() -> np.ndarray:
    image = np.full((48, 64, 3), 40, np.uint8)
    image[10:30, 20:40] = (220, 40, 40)
    return image


def test_pipeline_futures_resolve_on_apply_refusal_and_close(pipeline_model):
    from pam_ros.engine.pipeline import PerceptionPipeline, PipelineConfig

    pipe = PerceptionPipeline(pipeline_model, PipelineConfig(semantics_mode="sync", new_object_tasks=()))
    applied = pipe.submit_prompt(PromptRequest(box=(18.0, 8.0, 42.0, 32.0)))
    outside = pipe.submit_prompt(PromptRequest(points=((500.0, 5.0),), labels=(1,)))
    unknown = pipe.submit_prompt(PromptRequest(action=PromptAction.REMOVE, object_id="ghost"))
    future_frame = pipe.submit_prompt(PromptRequest(object_id="later", box=(1.0, 1.0, 9.0, 9.0), stamp_ns=99))
    assert not any(f.done() for f in (applied, outside, unknown, future_frame))
    result = pipe.process(frame(), 7)
    outcome = applied.result(timeout=0)
    assert outcome.accepted and outcome.object_id == "obj_1" and (outcome.frame_index, outcome.stamp_ns) == (0, 7)
    assert [o.object_id for o in result.objects] == ["obj_1"]
    assert not outside.result(timeout=0).accepted and "outside" in outside.result().error
    assert "ghost" in unknown.result(timeout=0).error and unknown.result().frame_index == -1
    assert [o.request.object_id for o in result.prompt_outcomes] == ["obj_1", "obj_2", "ghost"]
    assert pipe.pending_prompts() == [future_frame]
    pipe.close("the node was deactivated")
    assert future_frame.result(timeout=0).error == "not applied: the node was deactivated"
