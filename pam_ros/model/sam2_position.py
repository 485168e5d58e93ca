"""SAM 2's sine position encodings served from their own cache as views, not copies.

sam2's PositionEmbeddingSine caches each grid's encoding, yet every call returns `cache.repeat(B, 1, 1, 1)`:
a fresh copy per frame of every level, the 256x256x256 level of a 1024 input included (67 MB, which SAM 2
then never reads). On a CPU that was 0.1 s of a tracked frame. While `position_encodings_as_views` is
active, a cached grid comes back as an expanded view of the cache instead: the same values, no copy.
Nothing downstream writes into position encodings (they are only added to other tensors), and the first
call for a grid still goes through sam2's own code, which fills the cache.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def position_encodings_as_views(sam: torch.nn.Module):
    """While active, every cached PositionEmbeddingSine of `sam` returns views (see the module docstring)."""
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    # a torch.compile'd part keeps its own modules: its graph was traced with them
    compiled = {id(m) for part in sam.modules() if getattr(part, "_compiled_call_impl", None) is not None
                for m in part.modules()}
    patched = []
    for module in sam.modules():
        if type(module) is PositionEmbeddingSine and "forward" not in vars(module) and id(module) not in compiled:
            module.forward = _cached_view_forward(module)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def _cached_view_forward(module):
    own = module.forward  # sam2's, bound: computes and caches a grid it has not seen

    def forward(x: torch.Tensor) -> torch.Tensor:
        cached = module.cache.get((x.shape[-2], x.shape[-1]))
        if cached is None or cached.device != x.device:
            return own(x)
        return cached[None].expand(x.shape[0], -1, -1, -1)

    return forward
