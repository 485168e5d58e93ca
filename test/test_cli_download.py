"""`pam-ros download` and `--model NAME`: manifests, offline behaviour, clear one-sentence failures."""
from __future__ import annotations

import pytest
from fake_hub import FakeHub, HubFile, HubRepo
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


# ---- downloads from a local stand-in of the Hub (test/fake_hub.py), never the network ---------------
PAM_FILES = {"config.json": b'{"model_type": "llava_qwen"}', "generation_config.json": b'{"do_sample": false}',
             "tokenizer_config.json": b'{"model_max_length": 32768}', "tokenizer.json": b'{"version": "1.0"}' * 40}
PAM_WEIGHTS = bytes(range(256)) * 64  # model.safetensors: a large (LFS) file
SAM2_WEIGHTS = bytes(range(255, -1, -1)) * 48


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake Hub serving PAM-1.5B and sam2.1-hiera-large; huggingface_hub pointed at it (as HF_ENDPOINT
    does) with an empty cache and offline mode off."""
    import huggingface_hub.constants as hub_constants
    import huggingface_hub.file_download as file_download
    from huggingface_hub.utils import reset_sessions

    repos = {"Perceive-Anything/PAM-1.5B": HubRepo({**{n: HubFile(d) for n, d in PAM_FILES.items()},
                                                    "model.safetensors": HubFile(PAM_WEIGHTS, lfs=True)}),
             "facebook/sam2.1-hiera-large": HubRepo({"sam2.1_hiera_large.pt": HubFile(SAM2_WEIGHTS, lfs=True)},
                                                    commit="89abcdef" * 5)}
    with FakeHub(repos) as server:
        template = server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(hub_constants, "ENDPOINT", server.endpoint)
        monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        reset_sessions()  # sessions made while offline refuse every request
        yield server
    reset_sessions()


def pam_file(hub, name: str) -> HubFile:
    return hub.repos["Perceive-Anything/PAM-1.5B"].files[name]


def download(capsys, *args) -> tuple[int, str, list[str]]:
    code = main(["download", *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, [line for line in captured.err.splitlines() if line.startswith("pam-ros download:")]


def test_download_offline_names_the_cause(capsys, monkeypatch, hub):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    code, _, errors = download(capsys, "PAM-1.5B")
    assert code != 0 and errors == [
        "pam-ros download: error: cannot download PAM-1.5B: offline mode is on (HF_HUB_OFFLINE is set); "
        "unset HF_HUB_OFFLINE to download"]
    assert hub.requests == []


def test_download_without_a_reachable_hub_says_so(capsys, monkeypatch, hub):
    import huggingface_hub.constants as hub_constants
    import huggingface_hub.file_download as file_download

    closed = "http://127.0.0.1:9"  # the discard port: nothing listens there
    monkeypatch.setattr(hub_constants, "ENDPOINT", closed)
    monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", closed + "/{repo_id}/resolve/{revision}/{filename}")
    code, _, errors = download(capsys, "PAM-1.5B")
    assert code != 0 and len(errors) == 1
    assert errors[0].startswith("pam-ros download: error: cannot download PAM-1.5B from the Hugging Face Hub "
                                "(Perceive-Anything/PAM-1.5B): ")
    assert "check your internet connection" in errors[0]


def test_download_fetches_verifies_and_is_then_found_offline(capsys, monkeypatch, hub):
    import huggingface_hub.constants as hub_constants

    code, out, errors = download(capsys, "PAM-1.5B")
    assert code == 0 and errors == [] and out.strip() == "PAM-1.5B downloaded; use it with --model PAM-1.5B"
    assert hub.file_gets("model.safetensors") == 1 and hub.file_gets("sam2.1_hiera_large.pt") == 1

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    requests_before = len(hub.requests)
    paths = resolve_model("PAM-1.5B")
    assert len(hub.requests) == requests_before, "finding downloaded weights must not touch the network"
    assert {name: (paths.pam_dir / name).read_bytes() for name in PAM_FILES} == PAM_FILES
    assert (paths.pam_dir / "model.safetensors").read_bytes() == PAM_WEIGHTS
    assert paths.sam2_checkpoint.read_bytes() == SAM2_WEIGHTS and paths.sam2_config == "sam2.1_hiera_l"
    assert main(["download", "--list"]) == 0
    assert "PAM-1.5B               downloaded" in capsys.readouterr().out


@pytest.mark.parametrize(("name", "check"), [("model.safetensors", "sha256"), ("config.json", "git blob id")])
def test_download_damaged_in_transit_is_refused_removed_and_fetched_again(capsys, hub, name, check):
    pam_file(hub, name).corrupt_gets = 1
    code, _, errors = download(capsys, "PAM-1.5B")
    assert code != 0 and errors == [
        f"pam-ros download: error: PAM-1.5B: {name} does not match the Hub's {check}; removed it, "
        f"run: pam-ros download PAM-1.5B to fetch it again"]
    with pytest.raises(CheckpointError, match=f"model PAM-1.5B is incompletely downloaded \\(missing {name}"):
        resolve_model("PAM-1.5B")
    code, _, errors = download(capsys, "PAM-1.5B")  # the next run downloads the damaged file again
    assert code == 0 and errors == [] and hub.file_gets(name) == 2
    assert (resolve_model("PAM-1.5B").pam_dir / name).read_bytes() == hub.repos[
        "Perceive-Anything/PAM-1.5B"].files[name].data


def test_download_whose_size_differs_from_the_hubs_is_refused(capsys, hub):
    size = len(PAM_FILES["tokenizer.json"])
    pam_file(hub, "tokenizer.json").published["size"] = size + 1
    code, _, errors = download(capsys, "PAM-1.5B")
    assert code != 0 and errors == [
        f"pam-ros download: error: PAM-1.5B: tokenizer.json has {size} bytes, the Hub says {size + 1}; "
        f"removed it, run: pam-ros download PAM-1.5B to fetch it again"]


def test_no_hash_check_skips_the_content_check_only(capsys, hub):
    pam_file(hub, "model.safetensors").published["sha256"] = "0" * 64
    code, _, errors = download(capsys, "PAM-1.5B", "--no-hash-check")
    assert code == 0 and errors == []
    pam_file(hub, "tokenizer.json").published["size"] = 1
    code, _, errors = download(capsys, "PAM-1.5B", "--no-hash-check")
    assert code != 0 and "tokenizer.json has" in errors[0]


def test_interrupted_download_fails_in_one_sentence_and_the_next_run_completes_it(capsys, hub):
    pam_file(hub, "model.safetensors").truncate_gets = 100  # every attempt breaks off halfway
    code, _, errors = download(capsys, "PAM-1.5B")
    assert code != 0 and len(errors) == 1
    assert errors[0].startswith("pam-ros download: error: cannot download PAM-1.5B from the Hugging Face Hub "
                                "(Perceive-Anything/PAM-1.5B): ") and "Connection broken" in errors[0]
    with pytest.raises(CheckpointError, match=r"model PAM-1.5B is incompletely downloaded \(missing "
                                              r"model.safetensors or model.safetensors.index.json\)"):
        resolve_model("PAM-1.5B")  # no half file is taken for a model
    pam_file(hub, "model.safetensors").truncate_gets = 0
    code, _, errors = download(capsys, "PAM-1.5B")
    assert code == 0 and errors == [] and hub.file_gets("model.safetensors") == 2
    assert (resolve_model("PAM-1.5B").pam_dir / "model.safetensors").read_bytes() == PAM_WEIGHTS


def test_bad_name_fails_with_one_sentence(capsys):
    assert main(["download", "GPT-9"]) != 0
    err = capsys.readouterr().err
    assert "unknown model 'GPT-9'" in err and "PAM-1.5B" in err and "Traceback" not in err
    image = str(PAM_DIR.parent / "inputs" / "img0.png")
    assert main(["describe", image, "--box", "1", "2", "30", "40", "--model", "GPT-9"]) != 0
    assert "unknown model 'GPT-9'" in capsys.readouterr().err
