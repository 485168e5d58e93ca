"""Models by name: the manifests in models/ (one JSON per model) and the Hugging Face cache.

`resolve_model(name)` finds downloaded weights strictly offline; `download_model(name)` is the only
place in pam_ros that goes to the network (used by `pam-ros download`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pam_ros.errors import CheckpointError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def package_data_dir(name: str) -> Path:
    """A data folder shipped with pam_ros (models, demo): NAME/ of the checkout, else the installed
    package's share/pam_ros/NAME (a colcon install, where the sources are not in a checkout)."""
    checkout = REPO_ROOT / name
    if checkout.is_dir():
        return checkout
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return checkout
    try:
        return Path(get_package_share_directory("pam_ros")) / name
    except PackageNotFoundError:
        return checkout


def models_dir() -> Path:
    """Where manifests live: $PAM_ROS_MODELS_DIR, else models/ of the checkout or of share/pam_ros."""
    if os.environ.get("PAM_ROS_MODELS_DIR"):
        return Path(os.environ["PAM_ROS_MODELS_DIR"])
    return package_data_dir("models")


@dataclass(frozen=True)
class ModelPaths:
    """Local files of a usable PAM model."""

    pam_dir: Path
    sam2_config: str
    sam2_checkpoint: Path


def known_models() -> list[str]:
    folder = models_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_manifest(name: str) -> dict[str, Any]:
    path = models_dir() / f"{name}.json"
    if not path.is_file():
        known = ", ".join(known_models()) or "none"
        raise CheckpointError(f"unknown model {name!r}; known models: {known}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"model manifest {path} cannot be read: {exc}") from None


def _local_path(relative: str) -> Path:
    """A built-in model's file: absolute, or relative to the folder that holds the manifests folder (the
    checkout, or share/pam_ros, where CMakeLists.txt installs the tiny model at the same relative path)."""
    path = Path(relative)
    if path.is_absolute():
        return path
    roots = [models_dir().parent, REPO_ROOT]
    return next((root / path for root in roots if (root / path).exists()), roots[0] / path)


def cached_snapshot(manifest: dict[str, Any]) -> Path:
    """The cached snapshot folder of a Hub model, offline; CheckpointError if not downloaded."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(manifest["repo_id"], revision=manifest.get("revision"),
                                        local_files_only=True))
    except Exception:
        raise CheckpointError(
            f"model {manifest['name']} is not downloaded; run: pam-ros download {manifest['name']}"
        ) from None
    missing = missing_files(manifest, folder)
    if missing:
        raise CheckpointError(
            f"model {manifest['name']} is incompletely downloaded (missing {', '.join(missing)}); "
            f"run: pam-ros download {manifest['name']}"
        )
    return folder


def missing_files(manifest: dict[str, Any], folder: Path) -> list[str]:
    missing = [f for f in manifest.get("required_files", []) if not (folder / f).is_file()]
    for alternatives in manifest.get("required_any", []):
        if not any((folder / f).is_file() for f in alternatives):
            missing.append(" or ".join(alternatives))
    return missing


def resolve_model(name: str) -> ModelPaths:
    """Local paths of a model name (a PAM model plus the SAM 2 it uses), never touching the network."""
    manifest = load_manifest(name)
    kind = manifest.get("kind")
    if kind == "local":
        return ModelPaths(_local_path(manifest["pam_dir"]), str(_local_path(manifest["sam2_config"])),
                          _local_path(manifest["sam2_checkpoint"]))
    if kind != "pam":
        raise CheckpointError(f"{name} is a {kind} model, not a PAM model; use a PAM name "
                              f"({', '.join(n for n in known_models() if n.startswith('PAM'))})")
    pam_dir = cached_snapshot(manifest)
    sam2 = load_manifest(manifest["sam2"])
    sam2_dir = cached_snapshot(sam2)
    return ModelPaths(pam_dir, sam2["sam2_config"], sam2_dir / sam2["checkpoint"])


def models_to_download(name: str) -> list[dict[str, Any]]:
    """The manifests a name needs: a PAM model brings its SAM 2."""
    manifest = load_manifest(name)
    if manifest.get("kind") == "local":
        raise CheckpointError(f"model {name} is built in (local files); nothing to download")
    needed = [manifest]
    if manifest.get("sam2"):
        needed.append(load_manifest(manifest["sam2"]))
    return needed


def download_model(manifest: dict[str, Any], *, check_hashes: bool = True) -> Path:
    """Fetch one Hub model into the usual cache (progress bars from huggingface_hub) and verify it."""
    from huggingface_hub import constants, snapshot_download

    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(f"cannot download {manifest['name']}: offline mode is on (HF_HUB_OFFLINE is set); "
                              f"unset HF_HUB_OFFLINE to download")
    folder = Path(snapshot_download(manifest["repo_id"], revision=manifest.get("revision")))
    verify_download(manifest, folder, check_hashes=check_hashes)
    return folder


def verify_download(manifest: dict[str, Any], folder: Path, *, check_hashes: bool = True) -> None:
    """Check a downloaded snapshot against the Hub: required files present; every file the Hub lists
    present with the size it publishes (and the manifest's, where given); content equal to the Hub's
    sha256 (large LFS files) or git blob id (small files). A file that fails is removed from the cache,
    so that running the download again fetches it afresh."""
    missing = missing_files(manifest, folder)
    if missing:
        raise CheckpointError(f"download of {manifest['name']} lacks {', '.join(missing)}")
    name = manifest["name"]
    for rel, size in (manifest.get("files") or {}).items():
        actual = (folder / rel).stat().st_size if (folder / rel).is_file() else None
        if actual != size:
            _reject(folder / rel, f"{name}: {rel} has {actual} bytes, expected {size}", name)
    # The snapshot folder is named by its commit: verify against that commit's metadata, not the
    # branch's, which may have moved on since the download started.
    for row in _hub_metadata(manifest, revision=folder.name):
        path = folder / row.rfilename
        if not path.is_file():
            raise CheckpointError(f"download of {name} lacks {row.rfilename}; run: pam-ros download {name}")
        if row.size is not None and path.stat().st_size != row.size:
            _reject(path, f"{name}: {row.rfilename} has {path.stat().st_size} bytes, the Hub says {row.size}", name)
        if not check_hashes:
            continue
        if row.sha256 and _sha256(path) != row.sha256:
            _reject(path, f"{name}: {row.rfilename} does not match the Hub's sha256", name)
        if not row.sha256 and row.blob_id and _git_blob_id(path) != row.blob_id:
            _reject(path, f"{name}: {row.rfilename} does not match the Hub's git blob id", name)


@dataclass(frozen=True)
class _HubFile:
    rfilename: str
    size: int | None
    sha256: str | None  # LFS files
    blob_id: str | None  # git blob sha1 (for LFS files, that of the pointer)


def _hub_metadata(manifest: dict[str, Any], *, revision: str | None = None) -> list[_HubFile]:
    from huggingface_hub import HfApi

    info = HfApi().model_info(manifest["repo_id"], revision=revision or manifest.get("revision"),
                              files_metadata=True)
    rows = []
    for sibling in info.siblings or []:
        lfs = getattr(sibling, "lfs", None)
        rows.append(_HubFile(sibling.rfilename, getattr(sibling, "size", None),
                             getattr(lfs, "sha256", None) if lfs is not None else None,
                             getattr(sibling, "blob_id", None)))
    return rows


def _reject(path: Path, problem: str, name: str) -> None:
    """Remove a bad file from the cache (the snapshot's link and the blob it points to: a blob left
    behind would be linked again instead of downloaded) and raise."""
    blob = path.resolve()
    for stale in {path, blob}:
        if stale.is_file() or stale.is_symlink():
            stale.unlink()
    raise CheckpointError(f"{problem}; removed it, run: pam-ros download {name} to fetch it again")


def _git_blob_id(path: Path) -> str:
    # git's object id of a file (sha1 of "blob <size>\0" + content): what the Hub publishes for small files
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()
