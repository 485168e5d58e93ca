"""SAM 2's memory attention run on slices of the object batch (a CPU speed-up with the same result)."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def memory_attention_in_chunks(memory_attention: torch.nn.Module, chunk: int | None):
    """While active, SAM 2's memory attention runs on at most `chunk` objects at a time (None: all).

    Why: on a CPU one memory-attention call over N objects took longer than N calls over one object
    (hiera-tiny, 256 px, 1 and 2 threads: about 20 % at 4 objects, 10-15 % at 16). Its activations
    grow with N (the MLP's [N*HW, 2048] hidden layer, the [N, HW, memory] attention) and fall out of
    cache, and SAM 2 stacks the memory sequence-first, so with N > 1 every key/value projection
    reads it strided. The result is the same: each object's output depends on its own slice only
    (checked bitwise on random inputs). The mask decoder and memory encoder stay batched. The
    memory is laid out batch-first once, so that each slice is contiguous where the module
    transposes it. A torch.compile'd module is left alone (its graph would be traced per slice).
    """
    if not chunk or getattr(memory_attention, "_compiled_call_impl", None) is not None:
        yield
        return
    forward = memory_attention.forward  # the module's own (bound) forward

    def forward_in_chunks(curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
        batch = memory.shape[1]  # sequence-first [tokens, batch, channels]
        if batch <= chunk:
            return forward(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens)
        curr_list = curr if isinstance(curr, list) else [curr]
        pos_list = curr_pos if isinstance(curr_pos, list) else [curr_pos]
        memory_bf = memory.transpose(0, 1).contiguous()
        memory_pos_bf = None if memory_pos is None else memory_pos.transpose(0, 1).contiguous()
        parts = []
        with _first_self_attention_shared(memory_attention, curr_list + pos_list):
            for start in range(0, batch, chunk):
                rows = slice(start, start + chunk)
                parts.append(
                    forward(
                        [c[:, rows] for c in curr_list],
                        memory_bf[rows].transpose(0, 1),
                        [None if p is None else p[:, rows] for p in pos_list],
                        None if memory_pos_bf is None else memory_pos_bf[rows].transpose(0, 1),
                        num_obj_ptr_tokens,
                    )
                )
        # batch-first underneath, as the module's own output: later ops see the same memory layout
        return torch.cat([part.transpose(0, 1) for part in parts], dim=0).transpose(0, 1)

    replaced = vars(memory_attention).get("forward")  # an instance-level forward (e.g. sam2's VOS predictor)
    memory_attention.forward = forward_in_chunks
    try:
        yield
    finally:
        if replaced is None:
            del memory_attention.forward
        else:
            memory_attention.forward = replaced


@contextlib.contextmanager
def _first_self_attention_shared(memory_attention: torch.nn.Module, inputs: list):
    """While active, the first layer's self-attention runs once per slice size and its result is reused.

    Why: the first layer attends over the current frame's features alone (memory enters at its cross-
    attention), and every object of a frame has the same features: the tracker expands one encoding
    to N objects (batch stride 0). So N slices computed the same self-attention N times; now once.
    Only when every input is such an expansion; the result is the very tensor a slice would compute.
    """
    layers = getattr(memory_attention, "layers", None)
    shared = bool(layers) and all(x is None or (x.dim() == 3 and x.stride(1) == 0) for x in inputs)
    if not shared or "_forward_sa" in vars(layers[0]):
        yield
        return
    first = layers[0]
    own = first._forward_sa
    results: dict[tuple, torch.Tensor] = {}

    def forward_sa_once(tgt, query_pos):
        key = tuple(tgt.shape)
        if key not in results:
            results[key] = own(tgt, query_pos)
        return results[key]

    first._forward_sa = forward_sa_once
    try:
        yield
    finally:
        del first._forward_sa
