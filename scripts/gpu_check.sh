#!/usr/bin/env bash
# `make gpu-check`: the one script a machine with an NVIDIA GPU runs. It times pam_ros at real size on CUDA
# (SAM 2.1 hiera-large at 1024 px, random weights: timing depends on shapes only) and prints ONE table:
#   - bench encoder: torch eager / torch.compile vs ONNX Runtime TensorRT and CUDA providers, bf16 and fp16
#   - bench track: one object tracked at 1024 px, torch encoder (compile off/on) and the ONNX Runtime encoder
#   - bench semantics: Qwen2.5-1.5B shapes (PAM-1.5B), 8 objects x explain, serial vs batched (issue target:
#     8 objects batched <= 1.5x one object alone)
# Exits 1 with a message when there is no usable GPU. Each bench's full output goes to $LOG_DIR.
# Environment: PAM_ROS_PY (python of the venv, default .venv/bin/python), GPU_CHECK_FRAMES (track frames,
# default 30), GPU_CHECK_RUNS (encoder runs, default 10), GPU_CHECK_DEVICE (default cuda).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PAM_ROS_PY:-.venv/bin/python}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
FRAMES=${GPU_CHECK_FRAMES:-30}
RUNS=${GPU_CHECK_RUNS:-10}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

fail() { printf 'gpu-check: %s\n' "$*" >&2; exit 1; }

[ -x "$PY" ] || fail "no Python at $PY; run 'make setup' first (or set PAM_ROS_PY)"
command -v nvidia-smi >/dev/null 2>&1 || fail "no NVIDIA GPU here (nvidia-smi not found). Run this on a machine with a CUDA GPU."
GPU_NAME=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
[ -n "$GPU_NAME" ] || fail "nvidia-smi finds no GPU (driver not loaded?)."
TORCH_CUDA=$("$PY" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null) \
  || fail "cannot import torch with $PY"
[ -n "$TORCH_CUDA" ] || fail "this torch is a CPU-only build; install a CUDA build of torch (requirements/torch.txt)"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || fail "torch $("$PY" -c 'import torch; print(torch.__version__)') cannot use the GPU ($GPU_NAME): check the driver vs CUDA $TORCH_CUDA"

ORT_PROVIDERS=$("$PY" -c 'import onnxruntime as o; print(",".join(o.get_available_providers()))' 2>/dev/null || echo "")
NOTES=()
case "$ORT_PROVIDERS" in
  *CUDAExecutionProvider*) ;;
  *) NOTES+=("onnxruntime has no CUDA provider (${ORT_PROVIDERS:-not installed}): pip uninstall -y onnxruntime && pip install -r requirements/robot.txt (onnxruntime-gpu); ONNX Runtime GPU rows skipped") ;;
esac
case "$ORT_PROVIDERS" in
  *TensorrtExecutionProvider*) ;;
  *) NOTES+=("onnxruntime offers no TensorRT provider: TensorRT rows skipped") ;;
esac
GPU_PROVIDERS=TensorrtExecutionProvider,CUDAExecutionProvider

LOG_DIR=${GPU_CHECK_LOG_DIR:-$(mktemp -d -t pam-ros-gpu-check-XXXXXX)}
SUMMARY=$LOG_DIR/summary.tsv
: > "$SUMMARY"
echo "gpu-check: $GPU_NAME; torch CUDA $TORCH_CUDA; onnxruntime providers: ${ORT_PROVIDERS:-none}; logs in $LOG_DIR" >&2

# run NAME ARGS...: one bench; its rows go to the summary, a failure becomes a FAILED row (the check goes on)
run() {
  local name=$1; shift
  local log="$LOG_DIR/$name.log"
  echo "gpu-check: $name ..." >&2
  if ! "$PY" -m pam_ros.cli bench "$@" --summary "$SUMMARY" > "$log" 2>&1; then
    printf '%s\t%s\t%s\t%s\n' "${name%%-*}" "$name" "FAILED (see $log)" "-" >> "$SUMMARY"
    tail -5 "$log" | sed 's/^/    /' >&2
  fi
}

for DTYPE in bfloat16 float16; do
  run "encoder-$DTYPE" encoder --size real --image-size 1024 --device "$DEVICE" --dtype "$DTYPE" \
      --runs "$RUNS" --warmup 3 --compile --providers "$GPU_PROVIDERS"
  for ENCODER in torch onnxruntime; do
    for COMPILE in "" --compile; do
      run "track-$DTYPE-$ENCODER${COMPILE:+-compile}" track --config sam2.1_hiera_l --image-size 1024 \
          --device "$DEVICE" --dtype "$DTYPE" --objects 1 --frames "$FRAMES" --width 1280 --height 720 \
          --long-frames '' --no-upstream --warmup-frames 10 --image-encoder "$ENCODER" $COMPILE
    done
  done
  run "semantics-$DTYPE" semantics --size 1.5B --device "$DEVICE" --dtype "$DTYPE" --objects 8 --tasks explain
done

# the one table
echo
echo "## gpu-check: $GPU_NAME (torch CUDA $TORCH_CUDA, $(date -u +%Y-%m-%d))"
echo
"$PY" - "$SUMMARY" <<'EOF'
import sys

rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
header = ("bench", "setting", "measurement", "value")
widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(4)]
print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for r in rows:
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
EOF
for note in "${NOTES[@]+"${NOTES[@]}"}"; do echo "note: $note"; done
grep -q FAILED "$SUMMARY" && exit 1
exit 0
