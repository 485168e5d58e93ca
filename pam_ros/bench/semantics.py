"""Measurements behind `pam-ros bench semantics` (CLI: pam_ros/cli_bench.py): the same semantics jobs
(N objects x T tasks) answered one at a time and in one batched generation, in one process.

Printed: serial and batched wall time, when the last object's first answer is complete, tokens/s,
peak memory, and the prefill of three tasks on one object with the shared visual prefix against three
separate prefills. The model has random weights at the official shapes (bench/shapes.py), so no
sequence ends early at end-of-sequence: every one runs to max_new_tokens (end-of-sequence is switched
off so both runs do exactly the same work). Numbers are printed, never asserted.
"""
from __future__ import annotations

import gc
import resource
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from pam_ros.errors import PamError
from pam_ros.model.language import GenerationRequest
from pam_ros.model.pam import DescribeJob, PamModel, RegionFeatures
from pam_ros.model.tasks import IMAGE_TOKEN_INDEX, is_video_task

PREFILL_TASKS = ("explain", "caption", "recognize")


@dataclass
class RunTiming:
    seconds: float  # wall time of all jobs
    last_object_first_answer_s: float  # from the start until the last object has one complete answer
    tokens: int
    peak_bytes: int | None  # CUDA peak allocated during the run; None on CPU

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


@dataclass
class SemanticsBenchResult:
    serial: RunTiming
    batched: RunTiming
    prefill_shared_s: float
    prefill_separate_s: float
    objects: int

    @property
    def ratio(self) -> float:
        return self.batched.seconds / self.serial.seconds

    @property
    def scene_ratio(self) -> float:
        """All objects batched against one object alone (the serial time per object)."""
        return self.batched.seconds / (self.serial.seconds / self.objects)

    @property
    def prefill_ratio(self) -> float:
        return self.prefill_shared_s / self.prefill_separate_s


def random_objects(count: int, device: torch.device, seed: int = 0) -> list[RegionFeatures]:
    """Decoder features of `count` objects, as the tracker keeps them (random values)."""
    generator = torch.Generator().manual_seed(seed)
    return [RegionFeatures(torch.randn(2, 256, generator=generator).to(device),
                           torch.randn(256, 64, 64, generator=generator).to(device)) for _ in range(count)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_start(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def run_serial(model: PamModel, jobs: Sequence[DescribeJob], num_tasks: int) -> RunTiming:
    """One generation after the other, object by object (what the worker does without batching)."""
    device = model.device
    _peak_start(device)
    start = time.perf_counter()
    tokens = 0
    last_first = 0.0
    first_of_last_object = len(jobs) - num_tasks
    for index, job in enumerate(tqdm(jobs, desc="serial generations", leave=False, file=sys.stderr)):
        (out,) = model.describe_batch([job])
        tokens += len(out.token_ids)
        if index == first_of_last_object:
            _sync(device)
            last_first = time.perf_counter() - start
    _sync(device)
    return RunTiming(time.perf_counter() - start, last_first, tokens, _peak(device))


def run_batched(model: PamModel, jobs: Sequence[DescribeJob], num_tasks: int, max_batch: int = 0) -> RunTiming:
    """Objects in batches of max_batch (0: all at once), each object's tasks together, as the worker does."""
    device = model.device
    _peak_start(device)
    start = time.perf_counter()
    per_batch = len(jobs) if max_batch < 1 else max_batch * num_tasks
    outs = []
    for first in tqdm(range(0, len(jobs), per_batch), desc="batched generations", leave=False, file=sys.stderr):
        outs += model.describe_batch(jobs[first:first + per_batch])
    _sync(device)
    seconds = time.perf_counter() - start
    last_object = outs[len(outs) - num_tasks:]
    last_first = min(o.finished_at for o in last_object) - start
    return RunTiming(seconds, last_first, sum(len(o.token_ids) for o in outs), _peak(device))


def measure_prefill(model: PamModel, features: RegionFeatures, settings, repeats: int = 5) -> tuple[float, float]:
    """Three tasks on one object, one new token each: shared visual prefix vs three separate prefills
    (median seconds of `repeats`); the region tokens are computed before timing."""
    region = model.region_embeddings(features)
    one_token = replace(settings, max_new_tokens=1)
    requests = []
    for task in PREFILL_TASKS:
        prepared = model.prompt_for(features, task, None, None)
        before = prepared.input_ids.index(IMAGE_TOKEN_INDEX)
        embeds = model.language.embed_prompt(prepared.input_ids, region)
        requests.append(GenerationRequest(embeds, one_token, prefix_key="object",
                                          prefix_length=before + region.shape[0]))
    device = model.device

    tok = model.tokenizer
    alone = [replace(r, prefix_key=None) for r in requests]
    shared, separate = [], []
    for _ in range(repeats):  # interleaved, so a change in machine load hits both alike
        shared.append(_timed(device, lambda: model.language.generate_batch(requests, tok)))
        separate.append(_timed(device, lambda: [model.language.generate_batch([r], tok) for r in alone]))
    return sorted(shared)[repeats // 2], sorted(separate)[repeats // 2]


def _timed(device: torch.device, fn) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def run_semantics_bench(model: PamModel, *, objects: int = 8, tasks: Sequence[str] = ("explain", "caption"),
                        max_new_tokens: int = 32, max_batch: int = 8, prefill_repeats: int = 5,
                        printer: Callable[[str], None] = print) -> SemanticsBenchResult:
    if objects < 1:
        raise PamError(f"--objects must be at least 1, got {objects}")
    if max_batch < 1:
        raise PamError(f"--max-batch must be at least 1, got {max_batch}")
    if not tasks:
        raise PamError("give at least one task")
    video = [t for t in tasks if is_video_task(t)]
    if video:
        raise PamError(f"bench semantics runs image tasks; {', '.join(video)} need a track")
    device = model.device
    settings = replace(model.generation_settings(max_new_tokens=max_new_tokens), eos_token_ids=())
    feats = random_objects(objects, device)
    jobs = [DescribeJob(f, task, settings=settings) for f in feats for task in tasks]
    lm = model.language.llm.config
    printer(f"# bench semantics: {model.name}: LLM hidden {lm.hidden_size}, {lm.num_hidden_layers} layers, "
            f"vocab {lm.vocab_size}; device {device}, dtype {str(model.dtype).replace('torch.', '')}, "
            f"torch threads {torch.get_num_threads()}")
    batches = -(-objects // max_batch)
    printer(f"# {objects} objects x {len(tasks)} tasks ({', '.join(tasks)}) = {len(jobs)} generations "
            f"of {max_new_tokens} tokens; batched run: {batches} batch{'es' if batches > 1 else ''} of up to "
            f"{max_batch} objects (--max-batch)")
    printer("# random weights never stop at end-of-sequence: every sequence runs to max_new_tokens "
            "(end-of-sequence is off in both runs)")
    # warm-up: first calls allocate and pick kernels
    model.describe_batch([replace(jobs[0], settings=replace(settings, max_new_tokens=2))])
    gc.collect()
    serial = run_serial(model, jobs, len(tasks))
    printer(_line("serial", serial))
    gc.collect()
    batched = run_batched(model, jobs, len(tasks), max_batch)
    printer(_line("batched", batched))
    if device.type != "cuda":
        printer(f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    shared, separate = measure_prefill(model, feats[0], settings, repeats=prefill_repeats)
    result = SemanticsBenchResult(serial, batched, shared, separate, objects)
    printer(f"prefill: {len(PREFILL_TASKS)} tasks on one object ({', '.join(PREFILL_TASKS)}), shared visual prefix "
            f"{1000 * shared:.1f} ms vs {len(PREFILL_TASKS)} separate prefills {1000 * separate:.1f} ms, "
            f"ratio {result.prefill_ratio:.3f}")
    printer(f"scene: {objects} objects batched {batched.seconds:.2f} s vs one object alone "
            f"{serial.seconds / objects:.2f} s (serial / {objects}): {result.scene_ratio:.2f}x")
    printer(f"semantics: serial {serial.seconds:.2f} s, batched {batched.seconds:.2f} s, "
            f"ratio Y/X = {result.ratio:.3f}")
    return result


def _line(name: str, run: RunTiming) -> str:
    peak = "" if run.peak_bytes is None else f", CUDA peak {run.peak_bytes / 2**20:.0f} MiB"
    return (f"{name:>7}: {run.seconds:.2f} s, last object's first answer after {run.last_object_first_answer_s:.2f} s, "
            f"{run.tokens} tokens, {run.tokens_per_s:.1f} tokens/s{peak}")
