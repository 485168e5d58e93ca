"""Asynchronous PAM semantics: a worker that turns tracked-object features into words.

The tracker hands over each object's decoder features (never the image), so language never re-runs
the image encoder. The worker owns the LLM: one generation at a time, in its own thread, so tracking
never waits for text; its backlog is bounded (one queued job per object and kind, newer work merged
in). In "sync" mode (bag replay) jobs run in the caller's thread instead, which makes the output
deterministic. The store keeps every object's latest words for any thread to read.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pam_ros.engine.types import GenerationResult, ObjectSemantics, SemanticsState
from pam_ros.errors import ConfigError, EngineClosedError, UnknownObjectError
from pam_ros.model.tasks import CAPTION_PRIORITY, parse_explanation

log = logging.getLogger(__name__)

# (snapshot, task, max_new_tokens, object_id=...) -> GenerationResult
RunTask = Callable[..., GenerationResult]


@dataclass
class SemanticsJob:
    """Tasks to run for one object on a snapshot of its features."""

    object_id: str
    tasks: tuple[str, ...]
    snapshot: object  # the object's RegionFeatures: its kept frames, or a video window's
    stamp_ns: int
    frame_index: int
    max_new_tokens: int
    kind: str = "image"  # "image" (latest frame / whole track) or "window" (a stream window)
    future: Future = field(default_factory=Future)
    merged_futures: list = field(default_factory=list)  # futures of later jobs merged into this one

    @property
    def key(self) -> tuple[str, str]:
        return (self.object_id, self.kind)

    def merge(self, newer: "SemanticsJob") -> None:
        """Take a newer job for the same object into this queued one: newest features, joined tasks."""
        self.tasks = self.tasks + tuple(t for t in newer.tasks if t not in self.tasks)
        self.snapshot, self.stamp_ns, self.frame_index = newer.snapshot, newer.stamp_ns, newer.frame_index
        self.max_new_tokens = max(self.max_new_tokens, newer.max_new_tokens)
        self.merged_futures.append(newer.future)
        self.merged_futures.extend(newer.merged_futures)

    def _futures(self) -> list[Future]:
        return [self.future] + self.merged_futures

    def start(self) -> bool:
        """Mark the futures running; False when every caller cancelled."""
        return any([f.set_running_or_notify_cancel() for f in self._futures()])

    def succeed(self, results) -> None:
        for future in self._futures():
            if not future.done():
                future.set_result(results)

    def fail(self, error: BaseException) -> None:
        for future in self._futures():
            if not future.done():
                future.set_exception(error)


class SemanticsStore:
    """Latest semantics of every object, safe to read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, ObjectSemantics] = {}

    def get(self, object_id: str) -> ObjectSemantics:
        with self._lock:
            sem = self._items.get(object_id)
            return _copy(sem) if sem is not None else ObjectSemantics()

    def mark_pending(self, object_id: str) -> None:
        with self._lock:
            sem = self._items.setdefault(object_id, ObjectSemantics())
            # Words already there stay readable while the refresh runs: they are only stale.
            sem.state = SemanticsState.STALE if sem.texts else SemanticsState.PENDING

    def set_result(self, object_id: str, job: SemanticsJob, results: Sequence[GenerationResult]) -> None:
        with self._lock:
            if object_id not in self._items:
                return  # removed while the job ran
            sem = self._items[object_id]
            for res in results:
                sem.texts[res.task] = res.text
            sem.stamp_ns, sem.frame_index = job.stamp_ns, job.frame_index
            fill_named_fields(sem)
            sem.state, sem.error = SemanticsState.READY, ""

    def set_texts(self, object_id: str, results: Sequence[GenerationResult]) -> None:
        """Texts produced outside a job (a caption request): same bookkeeping as a job's result."""
        with self._lock:
            sem = self._items.setdefault(object_id, ObjectSemantics())
            for res in results:
                sem.texts[res.task] = res.text
                sem.stamp_ns, sem.frame_index = res.stamp_ns, res.frame_index
            fill_named_fields(sem)
            sem.state, sem.error = SemanticsState.READY, ""

    def set_error(self, object_id: str, message: str) -> None:
        with self._lock:
            if object_id in self._items:
                self._items[object_id].state = SemanticsState.FAILED
                self._items[object_id].error = message

    def remove(self, object_id: str) -> None:
        with self._lock:
            self._items.pop(object_id, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _copy(sem: ObjectSemantics) -> ObjectSemantics:
    return ObjectSemantics(sem.state, sem.stamp_ns, sem.frame_index, dict(sem.texts), sem.category,
                           sem.definition, sem.explanation, sem.caption, sem.error)


def fill_named_fields(sem: ObjectSemantics) -> None:
    """category / definition / explanation / caption from the raw task texts (English or _zh)."""
    texts = sem.texts
    for explain in ("explain", "explain_zh"):
        if explain in texts:
            sem.explanation = texts[explain]
            parsed = parse_explanation(texts[explain])
            sem.category, sem.definition = parsed.category, parsed.definition
            break
    else:
        for recognize in ("recognize", "recognize_zh"):
            if recognize in texts:
                sem.category = texts[recognize].strip()
                break
    for cap in CAPTION_PRIORITY:
        if cap in texts:
            sem.caption = texts[cap]
            break


class SemanticsWorker:
    """Runs SemanticsJobs one at a time, in a thread ("async") or inline ("sync").

    The backlog is bounded: at most one queued job per object and kind (image tasks / a video
    window). A new job for an object whose job has not started yet is merged into it (the newest
    features win, the tasks are joined, both callers get the one result); a job already running
    finishes. A failing job is reported on its future and in the store (FAILED + message); the
    worker goes on.
    """

    def __init__(self, run_task: RunTask, store: SemanticsStore, *, mode: str = "async",
                 is_tracked: Callable[[str], bool] = lambda _id: True) -> None:
        if mode not in ("async", "sync"):
            raise ConfigError(f"semantics mode must be 'async' or 'sync', not {mode!r}")
        self._run_task = run_task
        self._store = store
        self._mode = mode
        self._is_tracked = is_tracked
        self._lock = threading.Condition()
        self._queued: OrderedDict[tuple[str, str], SemanticsJob] = OrderedDict()
        self._closed = False
        self._running = 0
        self.jobs_done = 0
        self.jobs_failed = 0
        self.jobs_merged = 0
        self.last_job_seconds = 0.0
        self._thread: threading.Thread | None = None
        if mode == "async":
            self._thread = threading.Thread(target=self._loop, name="pam-semantics", daemon=True)
            self._thread.start()

    @property
    def mode(self) -> str:
        return self._mode

    def submit(self, job: SemanticsJob) -> Future:
        if self._closed:
            raise EngineClosedError("the semantics worker is closed")
        self._store.mark_pending(job.object_id)
        if self._mode == "sync":
            self._run(job)
            return job.future
        with self._lock:
            queued = self._queued.get(job.key)
            if queued is None:
                self._queued[job.key] = job
                self._lock.notify_all()
                return job.future
            queued.merge(job)
            self.jobs_merged += 1
        return job.future

    def pending(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return len(self._queued) + self._running

    def queued(self) -> int:
        with self._lock:
            return len(self._queued)

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: not self._queued and not self._running, timeout_s)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            jobs = list(self._queued.values())
            self._queued.clear()
            self._lock.notify_all()
        # Fail what is still queued, so that nobody waits forever on a future.
        for job in jobs:
            job.fail(EngineClosedError("the pipeline was closed before this job ran"))
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._queued or self._closed)
                if self._closed:
                    return
                _, job = self._queued.popitem(last=False)
                self._running += 1
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running -= 1
                    self._lock.notify_all()

    def _run(self, job: SemanticsJob) -> None:
        if not job.start():
            return
        if not self._is_tracked(job.object_id):
            job.fail(UnknownObjectError(
                f"object {job.object_id!r} is no longer tracked; its semantics were not computed"))
            return
        t0 = time.perf_counter()
        results: list[GenerationResult] = []
        try:
            for task in job.tasks:
                res = self._run_task(job.snapshot, task, job.max_new_tokens, object_id=job.object_id)
                res.stamp_ns, res.frame_index = job.stamp_ns, job.frame_index
                results.append(res)
        except Exception as exc:  # noqa: BLE001 - any model failure is reported, the worker goes on
            self.jobs_failed += 1
            message = f"semantics for {job.object_id!r} failed: {type(exc).__name__}: {exc}"
            log.error(message)
            self._store.set_error(job.object_id, message)
            job.fail(exc)
            return
        finally:
            self.last_job_seconds = time.perf_counter() - t0
        self.jobs_done += 1
        self._store.set_result(job.object_id, job, results)
        job.succeed(results)
