"""The semantics worker batches: waiting jobs share one generation, and a bad one fails alone.

Real pipeline, real tiny PAM on CPU. `describe_batch` is wrapped only to record how many sequences
each generation got (and, for the out-of-memory case, to refuse batches above a size the way a
full GPU does); the generation itself is the model's.
"""
from __future__ import annotations

import logging
import threading

import pytest
import torch
from test_pipeline import box_prompt, make, model, scene  # noqa: F401  (model: the shared fixture)

from pam_ros.engine.types import PromptAction, PromptRequest, SemanticsState
from pam_ros.errors import ConfigError, TaskError, UnknownObjectError

BOXES = {"a": (18.0, 22.0, 48.0, 52.0), "b": (60.0, 5.0, 90.0, 30.0), "c": (2.0, 40.0, 30.0, 70.0)}


class BatchSizes(list):
    """The number of sequences of every batched generation, and each generation's (task, token ids)."""

    def __init__(self):
        super().__init__()
        self.generated: list[tuple[str, tuple[int, ...]]] = []

    def clear(self) -> None:
        super().clear()
        self.generated.clear()


@pytest.fixture
def batch_sizes(model, monkeypatch):  # noqa: F811
    """Records the number of sequences of every batched generation the model runs, and what each generated."""
    sizes = BatchSizes()
    real = model.describe_batch

    def recording(jobs, **kwargs):
        sizes.append(len(jobs))
        results = real(jobs, **kwargs)
        sizes.generated += [(job.task, tuple(result.token_ids)) for job, result in zip(jobs, results)]
        return results

    monkeypatch.setattr(model, "describe_batch", recording)
    return sizes


def add_objects(pipe, ids=("a", "b", "c")) -> None:
    for oid in ids:
        pipe.submit_prompt(PromptRequest(object_id=oid, box=BOXES[oid]))


def words(pipe, ids=("a", "b", "c")) -> dict[str, dict[str, str]]:
    return {oid: pipe.semantics(oid).texts for oid in ids}


def test_new_objects_share_one_generation_with_the_same_words_as_alone(model, batch_sizes):  # noqa: F811
    alone = make(model, semantics_mode="sync", new_object_tasks=("explain", "caption"), max_batch=1)
    add_objects(alone)
    alone.process(scene(0), 1)
    assert batch_sizes == [2, 2, 2]  # max_batch 1: one object (its two tasks) per generation
    expected = words(alone)
    expected_ids = sorted(batch_sizes.generated)
    assert len(expected_ids) == 6 and len(set(expected_ids)) >= 5, "the objects' generations differ"
    alone.close()

    batch_sizes.clear()
    pipe = make(model, semantics_mode="async", new_object_tasks=("explain", "caption"))
    assert pipe.config.max_batch == 8
    add_objects(pipe)
    pipe.process(scene(0), 1)
    assert pipe.wait_semantics_idle(120)
    assert batch_sizes == [6], "three new objects x two tasks in one generation"
    stats = pipe.stats()
    assert stats["semantics_batches"] == 1 and stats["semantics_last_batch_jobs"] == 3
    assert stats["semantics_done"] == 3 and stats["semantics_max_batch"] == 8
    assert all(pipe.semantics(oid).state == SemanticsState.READY for oid in "abc")
    assert words(pipe) == expected, "greedy words do not depend on the batch"
    assert sorted(batch_sizes.generated) == expected_ids, "nor do the token ids"
    pipe.close()


def test_max_batch_caps_a_batch_and_applies_live(model, batch_sizes):  # noqa: F811
    pipe = make(model, semantics_mode="sync", new_object_tasks=("caption",), max_batch=2)
    add_objects(pipe)
    pipe.process(scene(0), 1)
    assert batch_sizes == [2, 1]
    pipe.update_settings(max_batch=3)
    for oid in "abc":
        pipe.request_refresh(oid)
    pipe.process(scene(1), 2)
    assert batch_sizes == [2, 1, 3]
    with pytest.raises(ConfigError, match="max_batch must be an integer >= 1"):
        pipe.update_settings(max_batch=0)
    assert pipe.config.max_batch == 3 and pipe.stats()["semantics_max_batch"] == 3
    pipe.close()
    with pytest.raises(ConfigError, match="max_batch"):
        make(model, max_batch=0)


def test_a_failing_job_fails_alone_and_its_batch_completes(model, batch_sizes):  # noqa: F811
    pipe = make(model, semantics_mode="sync", new_object_tasks=())
    add_objects(pipe, ("a", "b"))
    pipe.process(scene(0), 1)
    # PAM's video mode needs 16 frames; "a" has one, so its job fails inside the generation.
    pipe.request_refresh("a", ["video_caption"])
    pipe.request_refresh("b", ["caption"])
    pipe.process(scene(1), 2)
    assert batch_sizes == [2, 1, 1], "tried together, then job by job"
    failed, done = pipe.semantics("a"), pipe.semantics("b")
    assert failed.state == SemanticsState.FAILED and "16" in failed.error
    assert done.state == SemanticsState.READY and done.texts["caption"] and done.stamp_ns == 2
    assert pipe.stats()["semantics_failed"] == 1 and pipe.stats()["semantics_done"] == 1
    pipe.close()


def test_a_job_whose_object_disappeared_fails_alone(model, batch_sizes):  # noqa: F811
    pipe = make(model, semantics_mode="async", new_object_tasks=())
    add_objects(pipe, ("a", "b"))
    pipe.process(scene(0), 1)
    release = threading.Event()
    busy = pipe._worker.call_first(lambda _model: release.wait(60))  # the worker is busy
    futures = [pipe._worker.submit(job) for job in _refreshes(pipe, ("a", "b"))]
    pipe.submit_prompt(PromptRequest(action=PromptAction.REMOVE, object_id="a"))
    pipe.process(scene(1), 2)  # "a" is gone before its job starts
    release.set()
    assert busy.result(60) is True
    with pytest.raises(UnknownObjectError, match="no longer tracked"):
        futures[0].result(60)
    (caption,) = futures[1].result(60)
    assert caption.task == "caption" and caption.text == pipe.semantics("b").texts["caption"]
    assert batch_sizes == [1], "only the object still tracked was generated for"
    pipe.close()


def _refreshes(pipe, ids):
    """A caption job per object on its kept frames, as the scheduler hands them out."""
    from pam_ros.engine.semantics import SemanticsJob

    return [SemanticsJob(oid, ("caption",), tuple(pipe.tracker.features(oid))) for oid in ids]


def test_a_batch_too_big_for_memory_is_split_logged_once_and_kept_smaller(model, monkeypatch, caplog):  # noqa: F811
    sizes: list[int] = []
    real = model.describe_batch

    def full_gpu(jobs, **kwargs):  # as a GPU with room for two sequences answers
        sizes.append(len(jobs))
        if len(jobs) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(jobs, **kwargs)

    reference = make(model, semantics_mode="sync", new_object_tasks=("explain", "caption"))
    add_objects(reference)
    reference.process(scene(0), 1)
    expected = words(reference)
    reference.close()

    monkeypatch.setattr(model, "describe_batch", full_gpu)
    pipe = make(model, semantics_mode="sync", new_object_tasks=("explain", "caption"))
    add_objects(pipe)
    with caplog.at_level(logging.WARNING, logger="pam_ros.engine.semantics"):
        pipe.process(scene(0), 1)
        assert words(pipe) == expected, "every object answered, as without the split"
        assert all(pipe.semantics(oid).state == SemanticsState.READY for oid in "abc")
        assert sizes[0] == 6 and max(sizes[1:]) <= 3
        for oid in "abc":
            pipe.request_refresh(oid)
        sizes.clear()
        pipe.process(scene(1), 2)
    assert sizes and max(sizes) <= 2, "later batches stay within what fitted"
    assert sum(sizes) == 6
    notes = [r.getMessage() for r in caplog.records if "did not fit in memory" in r.getMessage()]
    assert len(notes) == 1 and "at most 3 sequences" in notes[0]
    assert pipe.stats()["semantics_memory_splits"] >= 2 and pipe.stats()["semantics_failed"] == 0
    pipe.close()


def test_one_sequence_that_does_not_fit_fails_its_job_and_the_worker_goes_on(model, monkeypatch):  # noqa: F811
    real = model.describe_batch
    too_big = {"on": True}

    def no_memory(jobs, **kwargs):
        if too_big["on"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(jobs, **kwargs)

    monkeypatch.setattr(model, "describe_batch", no_memory)
    pipe = make(model, semantics_mode="async", new_object_tasks=("caption",))
    add_objects(pipe, ("a",))
    pipe.process(scene(0), 1)
    assert pipe.wait_semantics_idle(60)
    assert pipe.semantics("a").state == SemanticsState.FAILED and "out of memory" in pipe.semantics("a").error
    too_big["on"] = False
    pipe.request_refresh("a")
    pipe.process(scene(1), 2)
    assert pipe.wait_semantics_idle(60)
    assert pipe.semantics("a").state == SemanticsState.READY and pipe.semantics("a").texts["caption"]
    pipe.close()


def test_a_describe_without_tasks_only_segments_and_a_bad_task_is_refused(model, batch_sizes):  # noqa: F811
    pipe = make(model, semantics_mode="sync", new_object_tasks=())
    pipe.process(scene(0), 1)
    obj, results = pipe.describe(scene(0), box_prompt(), [])
    assert results == [] and obj.mask.any() and obj.semantics.state == SemanticsState.NONE
    assert batch_sizes == [], "nothing generated"
    with pytest.raises(TaskError, match="dance"):
        pipe.describe_async(scene(0), box_prompt(), ["caption", "dance"])
    with pytest.raises(TaskError, match="list of task names"):
        pipe.describe(scene(0), box_prompt(), "caption")
    pipe.close()
