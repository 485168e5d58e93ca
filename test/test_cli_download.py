"""`pam-ros download` and `--model NAME`: manifests, offline behaviour, clear one-sentence failures."""
from __future__ import annotations

import pytest
from pam_tiny_fixture import PAM_DIR

from pam_ros.cli import main
from pam_ros.errors import CheckpointError
from pam_ros.model.registry import known_models, load_manifest, resolve_model


def test_manifests_name_the_official_repositories():
    assert {"PAM-1.5B", "PAM-3B", "sam2.1-hiera-large"} <= set(known_models())
    assert load_manifest("PAM-1.5B")["repo_id"] == "Perceive-Anything/PAM-1.5B"
    assert load_manifest("PAM-3B")["repo_id"] == "Perceive-Anything/PAM-3B"
    sam2 = load_manifest("sam2.1-hiera-large")
    assert (sam2["repo_id"], sam2["checkpoint"], sam2["sam2_config"]) == (
        "facebook/sam2.1-hiera-large", "sam2.1_hiera_large.pt", "sam2.1_hiera_l")
    assert load_manifest("PAM-3B")["sam2"] == "sam2.1-hiera-large"


def test_builtin_tiny_model_resolves_to_the_fixture():
    paths = resolve_model("tiny")
    assert paths.pam_dir.resolve() == PAM_DIR.resolve() and paths.sam2_checkpoint.is_file()


def test_not_downloaded_model_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="not downloaded; run: pam-ros download PAM-1.5B"):
        resolve_model("PAM-1.5B")


def test_download_offline_fails_with_one_sentence(capsys, monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    code = main(["download", "PAM-1.5B"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    failure = [line for line in err if line.startswith("pam-ros download: error:")]
    assert len(failure) == 1 and "cannot download PAM-1.5B" in failure[0]
    assert not any("Traceback" in line for line in err)


def test_bad_name_fails_with_one_sentence(capsys):
    assert main(["download", "GPT-9"]) != 0
    err = capsys.readouterr().err
    assert "unknown model 'GPT-9'" in err and "PAM-1.5B" in err and "Traceback" not in err
    image = str(PAM_DIR.parent / "inputs" / "img0.png")
    assert main(["describe", image, "--box", "1", "2", "30", "40", "--model", "GPT-9"]) != 0
    assert "unknown model 'GPT-9'" in capsys.readouterr().err
