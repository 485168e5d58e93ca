"""Asynchronous PAM semantics: a worker that turns tracked-object features into words, in batches.

The tracker hands over each object's decoder features (never the image), so language never re-runs
the image encoder. The worker owns the LLM, in its own thread, so tracking never waits for text:
whatever semantics jobs wait when it is free (new objects, refreshes, stream windows; up to
max_batch) share one batched generation. Its backlog is bounded (one queued job per object and kind,
newer work merged in). In "sync" mode (bag replay) a frame's jobs run in the caller's thread instead,
which makes the output deterministic. The store keeps every object's latest words for any thread.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pam_ros.engine.types import GenerationResult, ObjectSemantics, SemanticsState
from pam_ros.errors import ConfigError, EngineClosedError, UnknownObjectError
from pam_ros.model.decoding import is_out_of_memory
from pam_ros.model.tasks import CAPTION_PRIORITY, parse_explanation

log = logging.getLogger(__name__)


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


class RequestJob:
    """A caller's request (describe, caption) run on the worker: work() -> future."""

    def __init__(self, work: Callable[[], object], name: str) -> None:
        self.work = work
        self.name = name
        self.future: Future = Future()

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return  # cancelled while it waited
        try:
            result = self.work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who decides
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


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


# (sequences: [(job, task)]) -> one GenerationResult per sequence, in order, from one batched generation
RunBatch = Callable[[list[tuple[SemanticsJob, str]]], list[GenerationResult]]


class SemanticsWorker:
    """Runs semantics jobs in batches, and callers' requests one at a time, in a thread ("async") or
    inline ("sync").

    Batches: when the worker is free it takes every semantics job waiting at the head of the queue (up
    to `max_batch` jobs, each with its tasks) into one batched generation. A job whose object is no
    longer tracked, or whose generation fails, fails alone: a failed batch is run again job by job.
    A batch too big for memory is split in halves and retried (logged once); the worker then keeps
    its batches within the size that fitted.

    The backlog is bounded: at most one queued job per object and kind (image tasks / a video
    window). A new job for an object whose job has not started yet is merged into it (the newest
    features win, the tasks are joined, both callers get the one result); a job already running
    finishes. Failures are reported on the job's future and in the store (FAILED + message).

    Requests (describe, caption, queries) run alone, in arrival order with the jobs; `first=True`
    puts one ahead of the queued jobs (a planner's query should not wait for every refresh).
    """

    def __init__(self, run_batch: RunBatch, store: SemanticsStore, *, mode: str = "async",
                 is_tracked: Callable[[str], bool] = lambda _id: True, max_batch: int = 8) -> None:
        if mode not in ("async", "sync"):
            raise ConfigError(f"semantics mode must be 'async' or 'sync', not {mode!r}")
        self._run_batch = run_batch
        self._store = store
        self._mode = mode
        self._is_tracked = is_tracked
        self.max_batch = max_batch  # checked by the setter
        self._lock = threading.Condition()
        self._queued: OrderedDict[tuple[str, str], SemanticsJob | RequestJob] = OrderedDict()
        self._first: deque[RequestJob] = deque()  # requests that go ahead of the queue
        self._closed = False
        self._running = 0
        self._request_count = 0
        self._fitting_sequences: int | None = None  # set after an out-of-memory split: what fitted
        self.jobs_done = 0
        self.jobs_failed = 0
        self.jobs_merged = 0
        self.batches = 0
        self.last_batch_jobs = 0
        self.last_batch_seconds = 0.0
        self.memory_splits = 0
        self._thread: threading.Thread | None = None
        if mode == "async":
            self._thread = threading.Thread(target=self._loop, name="pam-semantics", daemon=True)
            self._thread.start()

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @max_batch.setter
    def max_batch(self, value: int) -> None:
        self._max_batch = check_max_batch(value)

    def submit(self, job: SemanticsJob) -> Future:
        return self.submit_many([job])[0]

    def submit_many(self, jobs: Sequence[SemanticsJob]) -> list[Future]:
        """Queue jobs together (one frame's work): a free worker finds all of them for its next batch.
        In "sync" mode they run at once, in batches of max_batch, in the caller's thread."""
        if self._closed:
            raise EngineClosedError("the semantics worker is closed")
        for job in jobs:
            self._store.mark_pending(job.object_id)
        if self._mode == "sync":
            for start in range(0, len(jobs), self.max_batch):
                self._run_jobs(list(jobs[start:start + self.max_batch]))
            return [job.future for job in jobs]
        with self._lock:
            for job in jobs:
                queued = self._queued.get(job.key)
                if isinstance(queued, SemanticsJob):
                    queued.merge(job)
                    self.jobs_merged += 1
                else:
                    self._queued[job.key] = job
            self._lock.notify_all()
        return [job.future for job in jobs]

    def run_request(self, work: Callable[[], object], *, name: str = "request", first: bool = False) -> Future:
        """Run `work()` on the worker (it owns the language model), alone.

        For callers' requests (describe, caption, queries): in arrival order after the jobs queued
        before it, or with first=True ahead of them; never merged. The future resolves to work()'s
        result or exception; cancelling it while queued skips the work.
        """
        if self._closed:
            raise EngineClosedError("the semantics worker is closed")
        job = RequestJob(work, name)
        if self._mode == "sync":
            job.run()
            return job.future
        with self._lock:
            if first:
                self._first.append(job)
            else:
                self._request_count += 1
                self._queued[("", f"{name}-{self._request_count}")] = job
            self._lock.notify_all()
        return job.future

    def pending(self) -> int:
        """Jobs and requests queued or running."""
        with self._lock:
            return len(self._queued) + len(self._first) + self._running

    def queued(self) -> int:
        with self._lock:
            return len(self._queued) + len(self._first)

    def position(self, future: Future) -> int | None:
        """How many batches and requests run or wait before the queued work whose future this is (0: it
        runs next); None once it runs or is done (or was never queued here)."""
        with self._lock:
            ahead = self._running
            for item in list(self._first) + list(self._queued.values()):
                if item.future is future or (isinstance(item, SemanticsJob) and future in item.merged_futures):
                    return ahead
                ahead += 1
            return None

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: not self._queued and not self._first and not self._running,
                                       timeout_s)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiting = list(self._first) + list(self._queued.values())
            self._queued.clear()
            self._first.clear()
            self._lock.notify_all()
        # Fail what is still queued, so that nobody waits forever on a future.
        for item in waiting:
            item.fail(EngineClosedError("the pipeline was closed before this ran"))
        # a batch or request running now finishes (a caller's should_stop is how it is cut short)
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ---- the worker thread ----------------------------------------------------------------------
    def _take(self) -> RequestJob | list[SemanticsJob]:
        """The next request, or the semantics jobs at the head of the queue (up to max_batch)."""
        if self._first:
            return self._first.popleft()
        _, head = self._queued.popitem(last=False)
        if isinstance(head, RequestJob):
            return head
        batch = [head]
        while len(batch) < self.max_batch and self._queued:
            key, following = next(iter(self._queued.items()))
            if not isinstance(following, SemanticsJob):
                break  # a request waits its turn; the jobs behind it stay behind it
            del self._queued[key]
            batch.append(following)
        return batch

    def _loop(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._queued or self._first or self._closed)
                if self._closed:
                    return
                work = self._take()
                self._running += 1
            try:
                if isinstance(work, RequestJob):
                    work.run()
                else:
                    self._run_jobs(work)
            finally:
                with self._lock:
                    self._running -= 1
                    self._lock.notify_all()

    def _run_jobs(self, jobs: list[SemanticsJob]) -> None:
        """One batch: the jobs still wanted and tracked, all their tasks in one generation."""
        live = []
        for job in jobs:
            if not job.start():
                continue  # every caller cancelled
            if not self._is_tracked(job.object_id):
                job.fail(UnknownObjectError(
                    f"object {job.object_id!r} is no longer tracked; its semantics were not computed"))
                continue
            if not job.tasks:
                log.debug("semantics job for %r has no tasks; nothing to generate", job.object_id)
                self._finish(job, [])
                continue
            live.append(job)
        if not live:
            return
        sequences = [(job, task) for job in live for task in job.tasks]
        t0 = time.perf_counter()
        answers = self._answer(sequences)
        self.last_batch_seconds = time.perf_counter() - t0
        self.last_batch_jobs = len(live)
        self.batches += 1
        for job in live:
            mine = [answer for (owner, _), answer in zip(sequences, answers) if owner is job]
            error = next((a for a in mine if isinstance(a, BaseException)), None)
            if error is not None:
                self.jobs_failed += 1
                message = f"semantics for {job.object_id!r} failed: {type(error).__name__}: {error}"
                log.error(message)
                self._store.set_error(job.object_id, message)
                job.fail(error)
                continue
            for res in mine:
                res.stamp_ns, res.frame_index = job.stamp_ns, job.frame_index
            self._finish(job, mine)

    def _finish(self, job: SemanticsJob, results: list[GenerationResult]) -> None:
        self.jobs_done += 1
        self._store.set_result(job.object_id, job, results)
        job.succeed(results)

    def _answer(self, sequences: list[tuple[SemanticsJob, str]]) -> list[GenerationResult | BaseException]:
        """A result or the error for each sequence. Too many for memory: halves; one failing job: each
        job alone, so only the failing one fails."""
        limit = self._fitting_sequences
        if limit is not None and len(sequences) > limit:
            return self._answer(sequences[:limit]) + self._answer(sequences[limit:])
        try:
            results = self._run_batch(sequences)
            if len(results) != len(sequences):
                raise RuntimeError(f"the batch gave {len(results)} results for {len(sequences)} sequences")
            return list(results)
        except Exception as exc:  # noqa: BLE001 - any model failure is reported per job, the worker goes on
            if len(sequences) == 1:
                return [exc]
            if is_out_of_memory(exc):
                half = (len(sequences) + 1) // 2
                self._remember_fit(half, len(sequences), exc)
                return self._answer(sequences[:half]) + self._answer(sequences[half:])
            owners = list({id(job): job for job, _ in sequences}.values())  # jobs in order (unhashable)
            if len(owners) == 1:
                return [exc] * len(sequences)
            log.warning("a semantics batch of %d jobs failed (%s: %s); running them one by one",
                        len(owners), type(exc).__name__, exc)
            answers: list[GenerationResult | BaseException] = []
            for owner in owners:
                answers += self._answer([s for s in sequences if s[0] is owner])
            return answers

    def _remember_fit(self, half: int, tried: int, error: BaseException) -> None:
        # `tried` never exceeds the size remembered before (_answer splits to it first), so half is smaller
        first_time = self._fitting_sequences is None
        self._fitting_sequences = half
        self.memory_splits += 1
        if first_time:  # logged once: the worker keeps within the size that fits from now on
            log.warning("semantics: a batch of %d sequences did not fit in memory (%s); split and retried, "
                        "batches now hold at most %d sequences (lower max_batch to avoid the retry)",
                        tried, str(error).splitlines()[0][:200], half)


def check_max_batch(value) -> int:
    """max_batch: semantics jobs (objects, each with its tasks) per batched generation, >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"max_batch must be an integer >= 1 (1 = no batching), got {value!r}")
    return value
