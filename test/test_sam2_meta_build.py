"""SAM 2 built with its parameters on the meta device and the checkpoint assigned equals a normal build
(random initialisation, then the checkpoint copied in): every parameter, buffer and tensor attribute."""
from __future__ import annotations

from pathlib import Path

import torch

from pam_ros.model.sam2_backbone import Sam2Backbone
from pam_ros.model.sam2_checkpoint import load_sam2_config, meta_tensors, parameters_on_meta

FIXTURE = Path(__file__).parent / "fixtures" / "pam_tiny"
SAM2_YAML = FIXTURE / "sam2" / "sam2.1_hiera_tiny_pam.yaml"
SAM2_PT = FIXTURE / "sam2" / "sam2.1_hiera_tiny_pam.pt"


def normal_build() -> torch.nn.Module:
    """SAM 2 as the sam2 package builds it: random init, then the checkpoint copied in."""
    from hydra.utils import instantiate

    sam = instantiate(load_sam2_config(SAM2_YAML), _recursive_=True)
    state = torch.load(SAM2_PT, map_location="cpu", weights_only=True)["model"]
    sam.load_state_dict(state, strict=True)
    return sam


def tensor_attributes(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Plain tensor attributes (not parameters, not buffers): what SAM 2 computes at construction."""
    found = {}
    for module_name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor):
                found[f"{module_name}.{attr}"] = value
    return found


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, want in expected.items():
        got = actual[name]
        assert not got.is_meta, name
        assert (got.dtype, got.device, tuple(got.shape), got.stride()) == (
            want.dtype, want.device, tuple(want.shape), want.stride()), name
        assert got.requires_grad == want.requires_grad, name
        assert torch.equal(got, want), name


def test_meta_build_equals_normal_build():
    reference = normal_build()
    backbone = Sam2Backbone.from_config(SAM2_YAML, SAM2_PT)
    built = backbone.sam
    assert meta_tensors(built) == []
    assert_same_tensors(dict(built.named_parameters()), dict(reference.named_parameters()))
    assert_same_tensors(dict(built.named_buffers()), dict(reference.named_buffers()))
    # e.g. memory_attention.layers.*.freqs_cis (RoPE tables, never saved), computed at construction
    attributes = tensor_attributes(reference)
    assert any(name.endswith("freqs_cis") for name in attributes)
    assert_same_tensors(tensor_attributes(built), attributes)
    assert type(built) is type(reference)


def test_meta_build_assigns_the_checkpoint_without_copying():
    """Weights stored in the model's dtype become the parameters themselves, not copies of them (the
    fixture's .pt holds bf16, which must be converted, so it is converted here first)."""
    from pam_ros.model.sam2_checkpoint import read_sam2_checkpoint

    state = {k: v.float() for k, v in read_sam2_checkpoint(SAM2_PT).items()}
    backbone = Sam2Backbone.from_config(SAM2_YAML, None, state_dict=state)
    name, stored = next((k, v) for k, v in state.items() if k.endswith("weight"))
    assert dict(backbone.sam.named_parameters())[name].data_ptr() == stored.data_ptr()


def test_parameters_on_meta_keeps_buffers_real():
    class Part(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)
            self.register_buffer("table", torch.arange(4.0), persistent=False)
            self.plain = torch.ones(2)

    with parameters_on_meta():
        part = Part()
    assert part.linear.weight.is_meta and part.linear.bias.is_meta
    assert not part.table.is_meta and not part.plain.is_meta
    assert sorted(meta_tensors(part)) == ["linear.bias", "linear.weight"]
    # the patch is gone afterwards
    assert not torch.nn.Linear(3, 2).weight.is_meta
