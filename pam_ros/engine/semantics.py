"""Asynchronous PAM semantics: the worker that owns the language model and turns features into words.

The tracker hands over each object's decoder features (never the image), so language never re-runs
the image encoder. The worker owns the LLM and every generation, in its own thread, so tracking never
waits for text: whatever semantics jobs wait when it is free (new objects, refreshes, stream windows;
up to max_batch) share one batched generation; callers' describes and captions run alone (streamed,
cancellable) in arrival order; a planner's query goes first. Its backlog is bounded (one queued job
per object and kind, newer work merged in). In "sync" mode (bag replay) work runs in the caller's
thread instead, which makes the output deterministic. The store keeps every object's latest words.

Two work types between the scheduler and the model: SemanticsJob (what to describe) here, and the
model's DescribeJob (how to generate it), built in one place (`_generate`).
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
from pam_ros.model.tasks import CAPTION_PRIORITY, canonical_task, is_streaming_task, is_video_task, parse_explanation

log = logging.getLogger(__name__)

TextCallback = Callable[[str, int], None]


@dataclass(frozen=True)
class Stream:
    """Whose objects a job is about: one camera stream's semantics store and membership. A worker
    serves one stream, or several over one model (engine/host.py: cameras share the language model
    and its batches); object ids are per stream."""

    name: str
    store: "SemanticsStore"
    is_tracked: Callable[[str], bool] = lambda _id: True


@dataclass(frozen=True)
class GenerationConfig:
    """How the worker decodes: tokens per answer (a job may ask for its own) and greedy or sampled."""

    max_new_tokens: int = 48
    greedy: bool = True
    temperature: float = 0.7
    top_p: float = 0.8


@dataclass
class SemanticsJob:
    """Tasks to run for one object on its frames, oldest first: image tasks read the newest, video
    tasks all of them. The job's stamp and frame index are its newest frame's (set nowhere else).

    kind: "image" (new object, refresh, request of the scheduler), "window" (a stream window), or
    "request" (a caller's describe or caption: run alone, streamed through on_text, stopped by
    should_stop). store=False for a one-shot describe of a region that is not tracked.
    """

    object_id: str
    tasks: tuple[str, ...]
    frames: tuple
    kind: str = "image"
    max_new_tokens: int = 0  # 0 = the worker's GenerationConfig
    store: bool = True
    on_text: TextCallback | None = None
    should_stop: Callable[[], bool] | None = None
    stream: Stream | None = None  # None: the worker's own stream (a worker serving one camera)
    # a request's answer from its results (what its future resolves to); None: the [GenerationResult] list
    answer: Callable[[list], object] | None = None
    future: Future = field(default_factory=Future)
    merged_futures: list = field(default_factory=list)  # futures of later jobs merged into this one

    @property
    def stamp_ns(self) -> int:
        return self.frames[-1].stamp_ns

    @property
    def frame_index(self) -> int:
        return self.frames[-1].frame_index

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.stream.name if self.stream is not None else "", self.object_id, self.kind)

    def merge(self, newer: "SemanticsJob") -> None:
        """Take a newer job for the same object into this queued one: newest frames, joined tasks."""
        self.tasks = self.tasks + tuple(t for t in newer.tasks if t not in self.tasks)
        self.frames = newer.frames
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


class _ModelCall:
    """A planner's query on the worker: fn(model) -> future (not a generation, so no SemanticsJob)."""

    def __init__(self, fn: Callable[[object], object]) -> None:
        self.fn = fn
        self.future: Future = Future()

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

    def set_results(self, object_id: str, results: Sequence[GenerationResult], *, create: bool = False) -> None:
        """An object's new words (each result carries the stamp of the frame it describes). Scheduled
        jobs' objects were marked pending: one gone since was removed while its job ran and stays gone;
        a caller's caption (create=True) may be the object's first words."""
        with self._lock:
            sem = self._items.setdefault(object_id, ObjectSemantics()) if create else self._items.get(object_id)
            if sem is None:
                return
            for res in results:
                sem.texts[res.task] = res.text
                sem.stamp_ns, sem.frame_index = res.stamp_ns, res.frame_index
            fill_named_fields(sem)
            sem.state, sem.error = SemanticsState.READY, ""

    def history(self, object_id: str, task: str) -> str | None:
        """PAM's streaming caption: the previous window's caption of this object is the next one's history."""
        if not object_id or not is_streaming_task(task):
            return None
        with self._lock:
            sem = self._items.get(object_id)
            return sem.texts.get(canonical_task(task)) if sem is not None else None

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
    """Owns the language model: runs semantics jobs in batches, callers' requests one at a time and
    planners' queries first, in a thread ("async") or inline ("sync").

    Batches: when the worker is free it takes every semantics job waiting at the head of the queue (up
    to `max_batch` jobs, each with its tasks) into one batched generation. A job whose object is no
    longer tracked, or whose generation fails, fails alone: a failed batch is run again job by job.
    A batch too big for memory is split in halves and retried (logged once); the worker then keeps
    its batches within the size that fitted.

    The backlog is bounded: at most one queued job per object and kind (image tasks / a video
    window). A new job for an object whose job has not started yet is merged into it (the newest
    features win, the tasks are joined, both callers get the one result); a job already running
    finishes. Failures are reported on the job's future and in the store (FAILED + message).

    Requests (describe, caption) run alone, streamed, in arrival order with the jobs; `call_first`
    puts a query ahead of the queued jobs (a planner's query should not wait for every refresh).
    """

    def __init__(self, model, store: SemanticsStore, *, generation: GenerationConfig = GenerationConfig(),
                 mode: str = "async", is_tracked: Callable[[str], bool] = lambda _id: True,
                 max_batch: int = 8) -> None:
        if mode not in ("async", "sync"):
            raise ConfigError(f"semantics mode must be 'async' or 'sync', not {mode!r}")
        self._model = model
        self._model_lock = threading.Lock()  # the model is used by one generation at a time
        self.generation = generation  # replaced as a whole by update_settings (live)
        self._stream = Stream("", store, is_tracked)  # for jobs that name no stream
        self._mode = mode
        self.max_batch = max_batch  # checked by the setter
        self._lock = threading.Condition()
        self._queued: OrderedDict[tuple[str, ...], SemanticsJob] = OrderedDict()  # by SemanticsJob.key
        self._first: deque[_ModelCall] = deque()  # queries that go ahead of the queue
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
            self._stream_of(job).store.mark_pending(job.object_id)
        if self._mode == "sync":
            for start in range(0, len(jobs), self.max_batch):
                self._run_jobs(list(jobs[start:start + self.max_batch]))
            return [job.future for job in jobs]
        with self._lock:
            for job in jobs:
                queued = self._queued.get(job.key)  # a request has a key of its own: never merged
                if queued is not None:
                    queued.merge(job)
                    self.jobs_merged += 1
                else:
                    self._queued[job.key] = job
            self._lock.notify_all()
        return [job.future for job in jobs]

    def request(self, job: SemanticsJob) -> Future:
        """A caller's describe or caption (job.kind "request"): run alone, after the work queued before
        it, streamed through job.on_text. The future (running while it runs) resolves to job.answer(results)
        or the [GenerationResult] list (stored when the job says so and it was not stopped), or the error;
        cancelling it while queued skips it."""
        if self._closed:
            raise EngineClosedError("the semantics worker is closed")
        if self._mode == "sync":
            self._run_request(job)
            return job.future
        with self._lock:
            self._request_count += 1
            self._queued[(*job.key[:2], f"request-{self._request_count}")] = job
            self._lock.notify_all()
        return job.future

    def call_first(self, fn: Callable[[object], object]) -> Future:
        """fn(model) on the worker, ahead of the queued jobs (a planner's query); a future of its result."""
        if self._closed:
            raise EngineClosedError("the semantics worker is closed")
        call = _ModelCall(fn)
        if self._mode == "sync":
            self._run_call(call)
            return call.future
        with self._lock:
            self._first.append(call)
            self._lock.notify_all()
        return call.future

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
        with self._model_lock:
            self._model = None  # the pipeline drops its reference too: the weights can be freed

    # ---- the worker thread ----------------------------------------------------------------------
    def _take(self) -> _ModelCall | list[SemanticsJob]:
        """The next query, request, or the semantics jobs at the head of the queue (up to max_batch)."""
        if self._first:
            return self._first.popleft()
        _, head = self._queued.popitem(last=False)
        if head.kind == "request":
            return [head]
        batch = [head]
        while len(batch) < self.max_batch and self._queued:
            key, following = next(iter(self._queued.items()))
            if following.kind == "request":
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
                if isinstance(work, _ModelCall):
                    self._run_call(work)
                elif work[0].kind == "request":
                    self._run_request(work[0])
                else:
                    self._run_jobs(work)
            finally:
                with self._lock:
                    self._running -= 1
                    self._lock.notify_all()

    def _run_call(self, call: _ModelCall) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            with self._model_lock:
                result = call.fn(self._live_model())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who decides
            call.future.set_exception(exc)
        else:
            call.future.set_result(result)

    def _run_request(self, job: SemanticsJob) -> None:
        if not job.start():
            return  # cancelled while it waited
        try:
            results = self._generate([(job, task) for task in job.tasks]) if job.tasks else []
            answer = job.answer(results) if job.answer is not None else results
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who decides
            job.fail(exc)
            return
        if job.store and results and not any(r.stopped for r in results):
            self._stream_of(job).store.set_results(job.object_id, results, create=True)
        job.succeed(answer)

    def _run_jobs(self, jobs: list[SemanticsJob]) -> None:
        """One batch: the jobs still wanted and tracked, all their tasks in one generation."""
        live = []
        for job in jobs:
            if not job.start():
                continue  # every caller cancelled
            if not self._stream_of(job).is_tracked(job.object_id):
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
                self._stream_of(job).store.set_error(job.object_id, message)
                job.fail(error)
                continue
            self._finish(job, mine)

    def _finish(self, job: SemanticsJob, results: list[GenerationResult]) -> None:
        self.jobs_done += 1
        self._stream_of(job).store.set_results(job.object_id, results)
        job.succeed(results)

    def _stream_of(self, job: SemanticsJob) -> Stream:
        return job.stream if job.stream is not None else self._stream

    def _live_model(self):
        if self._model is None:
            raise EngineClosedError("the pipeline was closed")
        return self._model

    def _generate(self, sequences: list[tuple[SemanticsJob, str]]) -> list[GenerationResult]:
        """One batched generation: each (job, task) on its job's frames (image tasks the newest, video
        tasks all of them; a streaming task with the object's previous caption as history). Sequences
        on the same frames share their visual prefix. The one place a DescribeJob is built."""
        from pam_ros.model.pam import DescribeJob

        config = self.generation
        with self._model_lock:
            model = self._live_model()
            settings = {}  # one GenerationSettings per token limit
            requests = []
            for job, task in sequences:
                canonical = canonical_task(task)
                limit = job.max_new_tokens or config.max_new_tokens
                if limit not in settings:
                    settings[limit] = model.generation_settings(max_new_tokens=limit, do_sample=not config.greedy,
                                                                temperature=config.temperature, top_p=config.top_p)
                regions = list(job.frames) if is_video_task(canonical) else job.frames[-1]
                requests.append(DescribeJob(regions, canonical, history=self._stream_of(job).store.history(job.object_id, task),
                                            on_text=job.on_text, should_stop=job.should_stop,
                                            settings=settings[limit]))
            try:
                generations = model.describe_batch(requests)
            except Exception as exc:
                from pam_ros.model.decoding import is_out_of_memory, release_cached_memory

                if is_out_of_memory(exc):
                    release_cached_memory(model.device)  # so that the smaller retry can fit
                raise
        # seconds: from the start of the batch's decoding until this sequence ended
        return [GenerationResult(task, gen.text, list(gen.token_ids), gen.seconds, stamp_ns=job.stamp_ns,
                                 frame_index=job.frame_index, stopped=bool(gen.stopped))
                for (job, task), gen in zip(sequences, generations)]

    def _answer(self, sequences: list[tuple[SemanticsJob, str]]) -> list[GenerationResult | BaseException]:
        """A result or the error for each sequence. Too many for memory: halves; one failing job: each
        job alone, so only the failing one fails."""
        limit = self._fitting_sequences
        if limit is not None and len(sequences) > limit:
            return self._answer(sequences[:limit]) + self._answer(sequences[limit:])
        try:
            results = self._generate(sequences)
            if len(results) != len(sequences):
                raise RuntimeError(f"the batch gave {len(results)} results for {len(sequences)} sequences")
            return list(results)
        except Exception as exc:  # noqa: BLE001 - any model failure is reported per job, the worker goes on
            from pam_ros.model.decoding import is_out_of_memory

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
