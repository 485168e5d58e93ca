"""`pam-ros download NAME`: fetch real weights from the Hugging Face Hub into the usual cache.

Names come from the manifests in models/ (PAM-1.5B, PAM-3B, sam2.1-hiera-large). A PAM model brings
the SAM 2.1 checkpoint it needs. Files are verified after download (required files present, sizes and
sha256 as the Hub publishes them). Offline or on a bad name the command prints one sentence and exits
non-zero. Afterwards `--model NAME` finds the weights offline.
"""
from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("pam_ros.download")

EXIT_FAILED = 1


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "download",
        help="download PAM / SAM 2.1 weights from the Hugging Face Hub",
        description="Download model weights into the Hugging Face cache and verify them.",
    )
    p.add_argument("name", nargs="?", help="model name (see --list)")
    p.add_argument("--list", action="store_true", help="list the known model names and whether they are downloaded")
    p.add_argument("--no-hash-check", action="store_true", help="skip the sha256 check (sizes are still checked)")
    p.set_defaults(run=run)
    return p


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def list_models() -> int:
    from pam_ros.errors import PamError
    from pam_ros.model.registry import known_models, load_manifest, resolve_model

    for name in known_models():
        manifest = load_manifest(name)
        if manifest.get("kind") == "pam":
            try:
                resolve_model(name)
                state = "downloaded"
            except PamError:
                state = "not downloaded"
        else:
            state = manifest.get("kind", "")
        print(f"{name:22s} {state:15s} {manifest.get('description', '')}")
    return 0


def run(args) -> int:
    from pam_ros.errors import PamError
    from pam_ros.model.registry import download_model, models_to_download

    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.list:
        return list_models()
    if not args.name:
        print("pam-ros download: error: give a model name (pam-ros download --list shows them)", file=sys.stderr)
        return EXIT_FAILED
    try:
        manifests = models_to_download(args.name)
    except PamError as exc:
        print(f"pam-ros download: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for manifest in manifests:
        log.info("downloading %s from %s", manifest["name"], manifest["repo_id"])
        try:
            folder = download_model(manifest, check_hashes=not args.no_hash_check)
        except PamError as exc:
            print(f"pam-ros download: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except Exception as exc:  # network, offline mode, disk: all the user can act on is one sentence
            print(f"pam-ros download: error: cannot download {manifest['name']} from the Hugging Face Hub "
                  f"({manifest['repo_id']}): {_one_line(exc)}", file=sys.stderr)
            return EXIT_FAILED
        log.info("%s is ready in %s", manifest["name"], folder)
    print(f"{args.name} downloaded; use it with --model {args.name}")
    return 0
