"""SAM 2's memory, laid out as SAM2Base reads it: what one object keeps of one past frame, and the
`output_dict` that `track_step` takes for a batch of objects. Model knowledge: the engine's tracker
decides what to keep and for how long, and never builds sam2's dictionaries itself."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch


@dataclass
class FrameMemory:
    """What SAM 2's memory attention reads from one past frame of one object."""

    maskmem_features: torch.Tensor | None  # [1, mem_dim, 64, 64]; None once only the pointer is read
    obj_ptr: torch.Tensor  # [1, 256]
    object_score_logits: torch.Tensor  # [1, 1]

    @classmethod
    def from_step(cls, current_out: Mapping, index: int, memory_dtype: torch.dtype) -> "FrameMemory":
        """Object `index` of a track_step output, copied out of the batch (spatial memory in memory_dtype)."""
        return cls(maskmem_features=current_out["maskmem_features"][index:index + 1].to(memory_dtype, copy=True),
                   obj_ptr=current_out["obj_ptr"][index:index + 1].clone(),
                   object_score_logits=current_out["object_score_logits"][index:index + 1].clone())


def empty_output_dict() -> dict:
    """The output_dict of objects with no memory yet (their first, prompted frame)."""
    return {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}


def batched_output_dict(conditioning: Sequence[Mapping[int, FrameMemory]], tracked: Sequence[Mapping[int, FrameMemory]],
                        maskmem_pos_enc: Sequence[torch.Tensor]) -> dict:
    """SAM2Base's output_dict for a batch of objects whose memories cover the same frames (one mapping
    frame -> FrameMemory per object, conditioning and tracked frames apart)."""
    batch = len(conditioning)
    pos_enc = [p.expand(batch, -1, -1, -1) for p in maskmem_pos_enc]

    def stack(per_object: Sequence[Mapping[int, FrameMemory]]) -> dict[int, dict]:
        stacked = {}
        for t in sorted(per_object[0]):
            memories = [memory[t] for memory in per_object]
            spatial = [m.maskmem_features for m in memories]
            stacked[t] = {
                # None only for frames whose spatial memory SAM 2 no longer reads
                "maskmem_features": None if any(s is None for s in spatial) else torch.cat(spatial, dim=0),
                "maskmem_pos_enc": pos_enc,
                "obj_ptr": torch.cat([m.obj_ptr for m in memories], dim=0),
                "object_score_logits": torch.cat([m.object_score_logits for m in memories], dim=0),
            }
        return stacked

    return {"cond_frame_outputs": stack(conditioning), "non_cond_frame_outputs": stack(tracked)}
