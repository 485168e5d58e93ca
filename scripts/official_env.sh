#!/usr/bin/env bash
# scripts/official_env.sh OFFICIAL_SRC [VENV]: a separate venv (default .venv-official, gitignored) that runs
# the official PAM code (Perceive-Anything/PAM: its llava/ and its modified sam2/) with the versions the
# test fixture's reference was made with (test/fixtures/pam_tiny/README.md, "How the reference was run"):
# transformers 4.39.3, tokenizers 0.15.2, accelerate 0.29.3, numpy 1.26.4, hydra-core 1.3.8.
#
# Torch is not installed here (no multi-GB download): a .pth file appends our own venv's site-packages
# (torch 2.14.1) *after* this venv's site-packages, so this venv's transformers / numpy / tokenizers win
# and only what it lacks (torch and its dependencies) comes from ours. The official source is put on the
# path by another .pth (its sam2/ first, so its modified sam2 shadows the PyPI sam2 in our venv); nothing is
# built, so its bundled sam2/_C.so may fail to load: SAM 2 then skips hole filling with a warning, which
# PAM's predictor does not use anyway (hole filling is commented out there) and does not matter for timing.
#
# Idempotent: a second run only re-checks. Needs network access to PyPI the first time.
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    echo "usage: $0 OFFICIAL_SRC [VENV]"
    exit 2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OFFICIAL_SRC=$(cd "$1" && pwd)
VENV=${2:-$ROOT/.venv-official}
MAIN_VENV=${PAM_ROS_VENV:-$ROOT/.venv}

for f in llava/model/builder.py sam2/sam2/build_sam.py; do
    [[ -f "$OFFICIAL_SRC/$f" ]] || { echo "$OFFICIAL_SRC is not the official PAM source (no $f)" >&2; exit 2; }
done
[[ -x "$MAIN_VENV/bin/python" ]] || { echo "no venv at $MAIN_VENV (run make setup there first)" >&2; exit 2; }

MAIN_SITE=$("$MAIN_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BASE_PY=$("$MAIN_VENV/bin/python" -c 'import sys; print(sys._base_executable)')
"$MAIN_VENV/bin/python" -c 'import torch; assert torch.__version__.startswith("2.14.1"), torch.__version__' \
    || { echo "our venv's torch is not 2.14.1" >&2; exit 1; }

if [[ ! -x "$VENV/bin/python" ]]; then
    "$BASE_PY" -m venv "$VENV"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# Install before the torch .pth exists, so pip neither sees nor touches our venv's packages. accelerate
# goes in without dependencies (its torch requirement would pull a CUDA torch); its other ones are listed.
PINS=(transformers==4.39.3 tokenizers==0.15.2 numpy==1.26.4 hydra-core==1.3.8 safetensors==0.8.0 pillow==13.0.0
      einops==0.6.1 "huggingface_hub<1.0" iopath tqdm pyyaml psutil packaging)
rm -f "$SITE/zz_pam_ros_torch.pth"
if ! "$VENV/bin/python" - "${PINS[@]}" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
from packaging.requirements import Requirement
for spec in sys.argv[1:] + ["accelerate==0.29.3"]:
    req = Requirement(spec)
    try:
        assert version(req.name) in req.specifier or not req.specifier
    except (PackageNotFoundError, AssertionError):
        sys.exit(1)
EOF
then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip packaging
    "$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
    "$VENV/bin/python" -m pip install --quiet --no-deps accelerate==0.29.3
fi

# Official source first (its sam2/ before the repository root), then our venv's site-packages for torch.
printf '%s\n%s\n' "$OFFICIAL_SRC/sam2" "$OFFICIAL_SRC" > "$SITE/pam_official_src.pth"
echo "$MAIN_SITE" > "$SITE/zz_pam_ros_torch.pth"

"$VENV/bin/python" - "$OFFICIAL_SRC" <<'EOF'
import os, sys
import numpy, tokenizers, torch, transformers, accelerate, hydra, sam2
src = sys.argv[1]
assert os.path.realpath(sam2.__file__).startswith(os.path.realpath(src)), f"sam2 comes from {sam2.__file__}"
for mod, want in ((transformers, "4.39.3"), (tokenizers, "0.15.2"), (accelerate, "0.29.3"), (numpy, "1.26.4"),
                  (hydra, "1.3.8")):
    assert mod.__version__ == want, f"{mod.__name__} {mod.__version__}, want {want}"
print(f"official venv ok: python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
      f"{transformers.__version__}, numpy {numpy.__version__}, sam2 from {os.path.dirname(sam2.__file__)}")
EOF
