"""SAM 2's image encoder through ONNX Runtime: export, parity with the official outputs, refusals, cache.

The fixture's encoder is exported once per session at its own 1024 input (conftest `onnx_export`) and run
by the real onnxruntime (CPU provider here); the official token ids and masks must come out unchanged.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from pam_tiny_fixture import (
    FIXTURE_DIR,
    PAM_DIR,
    SAM2_CHECKPOINT,
    SAM2_CONFIG,
    TASK_OF_KEY,
    golden,
    image_cases,
    video_case,
    video_frames,
)
from pam_tiny_fixture import case_image as load_image
from pam_tiny_fixture import case_prompt as visual_prompt

from pam_ros.engine.tracker import StreamingTracker
from pam_ros.errors import ConfigError, OnnxModelError
from pam_ros.model.image_encoder import (
    MAX_ABS_DIFF,
    EncoderIdentity,
    OnnxImageEncoder,
    choose_providers,
    encoder_cache_folder,
    file_sha256,
    make_image_encoder,
)
from pam_ros.model.masks import rle_to_mask
from pam_ros.model.sam2_backbone import Sam2Backbone, VisualPrompt
from pam_ros.model.selection import ModelSpec

IMAGE_CASES = {c["case"]: c for c in image_cases()}
TOL = 1e-4


# ---------------------------------------------------------------- export
def test_export_embeds_its_identity_and_checks_itself(onnx_export):
    assert onnx_export.max_abs_diff <= MAX_ABS_DIFF["float32"] == 1e-3
    session = onnxruntime.InferenceSession(str(onnx_export.path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["pam_ros.checkpoint_sha256"] == file_sha256(SAM2_CHECKPOINT)
    assert meta["pam_ros.image_size"] == "1024"
    # the sam2 package that traced the graph, and the precision it was exported in
    assert meta["pam_ros.sam2_version"] == importlib.metadata.version("sam2") == "1.1.0"
    assert meta["pam_ros.precision"] == "float32"
    assert onnx_export.identity == EncoderIdentity(file_sha256(SAM2_CHECKPOINT), 1024, "1.1.0", "float32")
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("pixels", [1, 3, 1024, 1024])]
    # the three feature levels the tracker and PAM read (after the decoder's high-res convs)
    assert [o.shape for o in session.get_outputs()] == [[1, 32, 256, 256], [1, 64, 128, 128], [1, 256, 64, 64]]
    model = onnx.load(str(onnx_export.path))
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17


def test_onnxruntime_features_equal_torch(onnx_backbone, decoded_image_cases):
    case = IMAGE_CASES["c1_points_explain"]
    ours = onnx_backbone.encode_image(load_image(case)).backbone
    official, _ = decoded_image_cases["c1_points_explain"]
    for key in ("backbone_fpn", "vision_pos_enc"):
        for got, want in zip(ours[key], official.backbone[key], strict=True):
            assert got.shape == want.shape and got.dtype == torch.float32
            assert (got - want).abs().max() <= 1e-4, key


# ---------------------------------------------------------------- parity
@pytest.fixture(scope="module")
def onnx_decoded(onnx_backbone):
    out = {}
    for name, case in IMAGE_CASES.items():
        enc = onnx_backbone.encode_image(load_image(case))
        out[name] = onnx_backbone.decode(enc, [visual_prompt(case)])
    return out


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_every_image_case_gives_the_official_tokens_and_masks(onnx_decoded, pam_model, case):
    g = golden()
    dec = onnx_decoded[case]
    assert (dec.low_res_logits - g[f"{case}.sam2.low_res_mask_logits"]).abs().max() <= TOL
    assert (dec.mid_mask_tokens - g[f"{case}.sam2.mid_mask_tokens_out"]).abs().max() <= TOL
    task = TASK_OF_KEY[IMAGE_CASES[case]["task_key"]]
    out = pam_model.describe(pam_model.region_features(dec, 0), task, max_new_tokens=12)
    assert out.token_ids == g[f"{case}.generated_ids"].tolist()
    assert out.text == IMAGE_CASES[case]["generated_text"]


def test_full_resolution_mask_is_the_official_one(onnx_decoded):
    official = golden()["c0_box_recognize.sam2.video_res_mask_logits"][0, 0] > 0
    mask = onnx_decoded["c0_box_recognize"].mask_logits[0, 0] > 0
    assert mask.shape == official.shape and int((mask != official).sum()) <= 5


def test_fixture_clip_tracks_like_the_official_propagation(onnx_backbone):
    key = video_case()["case"] + ".sam2."
    g = golden()
    tracker = StreamingTracker(onnx_backbone, keep_feature_frames=16, feature_dtype=None)  # float32: official parity
    object_id = "obj_1"
    tracker.add_object(object_id, VisualPrompt(box=np.array(video_case()["visual_prompt"], dtype=np.float32)).validate())
    tracks = [tracker.step(frame, stamp_ns=1000 * i).by_id()[object_id] for i, frame in enumerate(video_frames())]
    scores = torch.tensor([[t.object_score_logit] for t in tracks])
    assert (scores - g[key + "object_score_logits_per_frame"]).abs().max() <= TOL
    for stored, frame in enumerate(video_case()["low_res_stored_frame_ids"]):
        assert (tracks[frame].low_res_logits - g[key + "low_res_mask_logits_stored_frames"][stored]).abs().max() <= TOL
    packed = g[key + "video_res_binary_masks_packbits"].numpy()
    official = np.unpackbits(packed, axis=1)[:, : 240 * 320].reshape(16, 240, 320).astype(bool)
    for index, track in enumerate(tracks):
        assert np.count_nonzero(track.mask != official[index]) <= 5, index
    mid_tokens = torch.stack([t.features.mid_mask_tokens for t in tracks])
    assert (mid_tokens - g[key + "mid_mask_tokens_out_per_frame"]).abs().max() <= TOL


# ---------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def backbone_1024():
    return Sam2Backbone.from_config(SAM2_CONFIG, SAM2_CHECKPOINT)


def test_corrupt_files_are_refused(onnx_export, backbone_1024, tmp_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_export.path.read_bytes()[: onnx_export.path.stat().st_size // 3])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf" * 100)
    for path in (truncated, garbage):
        with pytest.raises(OnnxModelError, match="corrupt or not an ONNX model"):
            OnnxImageEncoder.open(path, backbone_1024)
    with pytest.raises(OnnxModelError, match="not found"):
        OnnxImageEncoder.open(tmp_path / "missing.onnx", backbone_1024)


def _with_metadata(source, target, **changes):
    model = onnx.load(str(source))
    kept = [(p.key, p.value) for p in model.metadata_props]
    del model.metadata_props[:]
    for key, value in kept:
        key_short = key.removeprefix("pam_ros.")
        if key_short in changes and changes[key_short] is None:
            continue
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(changes.get(key_short, value))
    onnx.save(model, str(target))
    return target


def test_other_checkpoint_or_size_or_no_metadata_is_refused(onnx_export, backbone_1024, tmp_path):
    other = _with_metadata(onnx_export.path, tmp_path / "other.onnx", checkpoint_sha256="0" * 64)
    with pytest.raises(OnnxModelError, match="exported from another checkpoint"):
        OnnxImageEncoder.open(other, backbone_1024)
    anonymous = _with_metadata(onnx_export.path, tmp_path / "anonymous.onnx", checkpoint_sha256=None)
    with pytest.raises(OnnxModelError, match="not written by `pam-ros export-onnx`"):
        OnnxImageEncoder.open(anonymous, backbone_1024)
    small = Sam2Backbone.from_config(SAM2_CONFIG, SAM2_CHECKPOINT, overrides={"image_size": 256})
    with pytest.raises(OnnxModelError, match="input size 1024, the model uses 256"):
        OnnxImageEncoder.open(onnx_export.path, small)
    # metadata that claims 256 on a graph traced at 1024: the graph's own input is checked too
    relabelled = _with_metadata(onnx_export.path, tmp_path / "relabelled.onnx", image_size=256)
    with pytest.raises(OnnxModelError, match=re.escape("its input is [('pixels', [1, 3, 1024, 1024])], "
                                                       "expected pixels [1, 3, 256, 256]")):
        OnnxImageEncoder.open(relabelled, small)
    # the backbone keeps its torch encoder after a refusal
    assert small.image_encoder.kind == "torch"


def test_compile_with_onnxruntime_compiles_only_the_memory_attention(onnx_export):
    from pam_ros.model.pam import configure_backbone

    backbone = Sam2Backbone.from_config(SAM2_CONFIG, SAM2_CHECKPOINT)
    configure_backbone(backbone, "onnxruntime", onnx_export.path, compile=True)
    assert backbone.image_encoder.kind == "onnxruntime"
    assert backbone.sam.memory_attention._compiled_call_impl is not None
    assert backbone.sam.image_encoder._compiled_call_impl is None  # ONNX Runtime runs it


def test_selection_errors_are_config_errors(onnx_export, tmp_path):
    with pytest.raises(ConfigError, match="unknown image encoder"):
        ModelSpec(name="tiny", image_encoder="tensorflow").validate()
    with pytest.raises(ConfigError, match="select image encoder 'onnxruntime'"):
        ModelSpec(name="tiny", image_encoder_onnx=str(onnx_export.path)).validate()
    with pytest.raises(OnnxModelError, match="not found"):
        ModelSpec(name="tiny", image_encoder="onnxruntime", image_encoder_onnx=str(tmp_path / "x.onnx")).validate()


def test_providers_best_first_from_what_is_installed(tmp_path):
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = choose_providers(torch.device("cuda:1"), reduced_precision=True, tensorrt_cache=tmp_path / "trt",
                              available=everything)
    assert [name for name, _ in chosen] == everything
    trt = chosen[0][1]
    assert trt["device_id"] == 1 and trt["trt_fp16_enable"] and trt["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert (tmp_path / "trt").is_dir()
    assert [n for n, _ in choose_providers(torch.device("cuda"), available=everything[1:])] == everything[1:]
    # a CPU model never hands its encoder to the GPU; the installed CPU onnxruntime offers CPU only
    assert [n for n, _ in choose_providers(torch.device("cpu"), available=everything)] == ["CPUExecutionProvider"]
    assert [n for n, _ in choose_providers(torch.device("cuda"))] == ["CPUExecutionProvider"]


# ---------------------------------------------------------------- cache
def test_export_on_first_use_into_the_cache_then_reuse(tmp_path, caplog):
    backbone = Sam2Backbone.from_config(SAM2_CONFIG, SAM2_CHECKPOINT, overrides={"image_size": 256})
    identity = EncoderIdentity(file_sha256(SAM2_CHECKPOINT), 256, "1.1.0")
    folder = encoder_cache_folder(identity, tmp_path)
    assert folder.name == f"{identity.checkpoint_sha256[:16]}-256"
    with caplog.at_level(logging.INFO, logger="pam_ros.model.image_encoder"):
        first = make_image_encoder(backbone, "onnxruntime", cache_dir=tmp_path)
        exported = (folder / "image_encoder.onnx").stat()
        assert "exporting SAM 2's encoder to ONNX" in caplog.text
        caplog.clear()
        second = make_image_encoder(backbone, "onnxruntime", cache_dir=tmp_path)
    assert "reusing the cached ONNX export" in caplog.text and "exporting" not in caplog.text
    again = (folder / "image_encoder.onnx").stat()
    assert (again.st_ino, again.st_mtime_ns) == (exported.st_ino, exported.st_mtime_ns)
    assert first.path == second.path == folder / "image_encoder.onnx"
    frame = video_frames()[0]
    pixels = backbone.preprocess(frame)
    with torch.inference_mode():
        torch_levels = backbone.image_encoder(pixels)["backbone_fpn"]
        onnx_levels = second(pixels)["backbone_fpn"]
    assert max(float((a - b).abs().max()) for a, b in zip(torch_levels, onnx_levels)) <= 1e-4

    # a cached file that no longer reads (a disk error, an interrupted copy) is exported again, not used
    cached = folder / "image_encoder.onnx"
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pam_ros.model.image_encoder"):
        third = make_image_encoder(backbone, "onnxruntime", cache_dir=tmp_path)
    assert "cached ONNX encoder is unusable" in caplog.text and "exporting it again" in caplog.text
    assert third.path == cached and cached.stat().st_size == exported.st_size
    with torch.inference_mode():
        again_levels = third(pixels)["backbone_fpn"]
    assert max(float((a - b).abs().max()) for a, b in zip(torch_levels, again_levels)) <= 1e-4


def test_export_onnx_command(tmp_path, capsys):
    from pam_ros.cli import main

    out = tmp_path / "enc.onnx"
    code = main(["export-onnx", "--sam2-config", str(SAM2_CONFIG), "--sam2-checkpoint", str(SAM2_CHECKPOINT),
                 "--image-size", "128", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "self-check: max abs difference ONNX Runtime vs torch" in printed and f"wrote {out}" in printed
    # the written file opens for the weights it came from, at its size
    backbone = Sam2Backbone.from_config(SAM2_CONFIG, SAM2_CHECKPOINT, overrides={"image_size": 128})
    assert OnnxImageEncoder.open(out, backbone).identity == EncoderIdentity(
        file_sha256(SAM2_CHECKPOINT), 128, importlib.metadata.version("sam2"), "float32")
    half = tmp_path / "enc16.onnx"
    code = main(["export-onnx", "--sam2-config", str(SAM2_CONFIG), "--sam2-checkpoint", str(SAM2_CHECKPOINT),
                 "--image-size", "128", "--fp16", "--out", str(half)])
    assert code == 0, capsys.readouterr()
    assert "float16" in capsys.readouterr().out
    assert OnnxImageEncoder.open(half, backbone).identity.precision == "float16"
    code = main(["export-onnx", "--model", "tiny", "--sam2-config", "x", "--out", str(out)])
    assert code == 2 and "not both" in capsys.readouterr().err


# ---------------------------------------------------------------- front end
def _describe(*args):
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "pam_ros.cli", "describe", *args], capture_output=True, text=True,
                          env=env, cwd=repo, timeout=300)


def test_describe_command_with_the_onnxruntime_encoder(onnx_export, tmp_path):
    case = IMAGE_CASES["c0_box_recognize"]
    args = [str(FIXTURE_DIR / case["image"]), "--box", *[str(v) for v in case["visual_prompt"]], "--task", "recognize",
            "--pam", str(PAM_DIR), "--sam2-config", str(SAM2_CONFIG), "--sam2-checkpoint", str(SAM2_CHECKPOINT),
            "--max-new-tokens", "12", "--json", "--image-encoder", "onnxruntime"]
    proc = _describe(*args, "--image-encoder-onnx", str(onnx_export.path))
    assert proc.returncode == 0, proc.stderr
    assert "image encoder: onnxruntime on CPUExecutionProvider" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["tasks"]["recognize"]["token_ids"] == golden()["c0_box_recognize.generated_ids"].tolist()
    official = golden()["c0_box_recognize.sam2.video_res_mask_logits"][0, 0].numpy() > 0
    assert np.count_nonzero(rle_to_mask(result["mask_rle"]) != official) <= 5
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx" * 64)
    refused = _describe(*args, "--image-encoder-onnx", str(garbage))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "corrupt or not an ONNX model" in refused.stderr and "pam-ros export-onnx" in refused.stderr
