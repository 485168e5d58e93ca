"""Loading PAM checkpoint folders: official names, optional SAM 2 copy, shards, tied embeddings, and a
clear CheckpointError for every broken folder."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from pam_tiny_fixture import PAM_DIR, SAM2_CHECKPOINT, fixture_json, golden
from safetensors.torch import load_file, save_file

from pam_ros.errors import CheckpointError
from pam_ros.model.checkpoint import SAM2_COPY_PREFIX, load_pam_checkpoint
from pam_ros.model.language import PamLanguageModel
from pam_ros.model.perceiver import SemanticPerceiver


@pytest.fixture(scope="module")
def official_tensors():
    return load_file(str(PAM_DIR / "model.safetensors"))


@pytest.fixture(scope="module")
def sam2_state():
    return torch.load(SAM2_CHECKPOINT, map_location="cpu", weights_only=True)["model"]


def make_folder(tmp_path, tensors=None, config_changes=None, drop_files=()):
    """A copy of the fixture's PAM folder, optionally with other weights / config / files removed."""
    folder = tmp_path / "pam"
    shutil.copytree(PAM_DIR, folder)
    if tensors is not None:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if config_changes:
        config = json.loads((folder / "config.json").read_text())
        for key, value in config_changes.items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        (folder / "config.json").write_text(json.dumps(config))
    for name in drop_files:
        (folder / name).unlink()
    return folder


def load_all(folder):
    ckpt = load_pam_checkpoint(folder)
    language = PamLanguageModel.from_checkpoint(ckpt)
    perceiver = SemanticPerceiver.from_checkpoint(ckpt)
    return ckpt, language, perceiver


def first_step_logits(language, case="c0_box_recognize"):
    from pam_ros.model.language import GenerationSettings

    out = language.generate(golden()[f"{case}.llm.inputs_embeds"], GenerationSettings(max_new_tokens=1),
                            None, return_logits=True)
    return out.step_logits[0]


def test_official_names_load_with_nothing_missing(official_tensors):
    ckpt, language, perceiver = load_all(PAM_DIR)
    n_loaded = sum(len(t) for t in ckpt.tensors.values())
    assert n_loaded == len(official_tensors) == 124
    assert ckpt.sam2_state_dict is None  # the visible fixture leaves the SAM 2 copy out
    assert len(language.state_dict()) == len(ckpt.tensors["language"])
    assert len(perceiver.state_dict()) == len(ckpt.tensors["perceiver"])
    # weights land where the official code had them: the recorded logits come out
    torch.testing.assert_close(first_step_logits(language),
                               golden()["c0_box_recognize.llm.first_step_logits"][0], rtol=0, atol=1e-3)


def test_checkpoint_with_sam2_copy_loads_and_returns_it(tmp_path, official_tensors, sam2_state):
    tensors = dict(official_tensors)
    tensors.update({SAM2_COPY_PREFIX + k: v.contiguous() for k, v in sam2_state.items()})
    assert len(sam2_state) == fixture_json()["load"]["n_vision_tower_keys_in_full_state_dict"]
    ckpt, language, _ = load_all(make_folder(tmp_path, tensors))
    copy = ckpt.sam2_state_dict
    assert copy is not None and set(copy) == set(sam2_state)
    for key, value in sam2_state.items():
        assert torch.equal(copy[key], value), key
    assert len(language.state_dict()) == len(ckpt.tensors["language"])


def test_sharded_checkpoint_loads(tmp_path, official_tensors):
    folder = make_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    names = sorted(official_tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: official_tensors[k] for k in keys}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ckpt, language, _ = load_all(folder)
    assert sum(len(t) for t in ckpt.tensors.values()) == len(official_tensors)

    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        load_pam_checkpoint(folder)


def test_tied_embeddings_checkpoint_loads(tmp_path, official_tensors):
    tensors = {k: v for k, v in official_tensors.items() if k != "lm_head.weight"}
    folder = make_folder(tmp_path, tensors, {"tie_word_embeddings": True})
    ckpt, language, _ = load_all(folder)
    head = language.llm.get_output_embeddings().weight
    embed = language.llm.get_input_embeddings().weight
    assert head.data_ptr() == embed.data_ptr() and head.shape == (643, 64)
    # logits are now computed with the embedding matrix: the untied fixture's logits must change
    assert not torch.allclose(first_step_logits(language), golden()["c0_box_recognize.llm.first_step_logits"][0])


@pytest.mark.parametrize("name", ["model.layers.1.mlp.up_proj.weight", "model.vision_resampler.norm_final_attn.bias",
                                  "lm_head.weight", "model.semT_newline"])
def test_missing_tensor_is_named(tmp_path, official_tensors, name):
    tensors = {k: v for k, v in official_tensors.items() if k != name}
    with pytest.raises(CheckpointError, match=f"missing tensors: .*{name}"):
        load_all(make_folder(tmp_path, tensors))


def test_wrong_shape_is_named(tmp_path, official_tensors):
    tensors = dict(official_tensors)
    tensors["model.mm_projector_semT.0.weight"] = torch.zeros(64, 128, dtype=torch.bfloat16)
    with pytest.raises(CheckpointError, match=r"wrong shapes: model\.mm_projector_semT\.0\.weight \(64, 128\)"):
        load_all(make_folder(tmp_path, tensors))


def test_unexpected_tensor_is_named(tmp_path, official_tensors):
    tensors = dict(official_tensors)
    tensors["model.vision_resampler.extra_head.weight"] = torch.zeros(2, 2)
    with pytest.raises(CheckpointError, match="unexpected tensors: model.vision_resampler.extra_head.weight"):
        load_all(make_folder(tmp_path, tensors))


def test_truncated_safetensors_is_reported(tmp_path):
    folder = make_folder(tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        load_pam_checkpoint(folder)


def test_non_pam_config_is_refused(tmp_path):
    folder = make_folder(tmp_path, config_changes={"model_type": "qwen2", "mm_hidden_size": None,
                                                   "mm_projector_type": None, "mm_vision_tower": None})
    with pytest.raises(CheckpointError, match="not a PAM checkpoint: config.json model_type is 'qwen2'"):
        load_pam_checkpoint(folder)


def test_missing_tokenizer_is_reported(tmp_path):
    folder = make_folder(tmp_path, drop_files=("tokenizer.json", "vocab.json", "merges.txt"))
    with pytest.raises(CheckpointError, match="tokenizer missing"):
        load_pam_checkpoint(folder)


def test_missing_folder_and_weights_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="folder not found"):
        load_pam_checkpoint(tmp_path / "nope")
    folder = make_folder(tmp_path, drop_files=("model.safetensors",))
    with pytest.raises(CheckpointError, match="no weights"):
        load_pam_checkpoint(folder)
