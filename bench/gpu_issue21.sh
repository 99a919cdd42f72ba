#!/usr/bin/env bash
# Issue 21's GPU checks in one prepared run (bench/README.md, "Launch-bound steps"): which
# methods' steps wait for the device, then ResNet-18 and the transformer classifier at batch 128,
# eager and compiled, every ratio to plain PyTorch BP in the same run.  Sized for the device
# tool's 10-minute command (about 5 minutes on an H100-class GPU, most of it compiling):
#
#   run: bash bench/gpu_issue21.sh            (JSON files land in $OUT, else bench/results)
#
# It uses the machine's own python3 with CUDA PyTorch and ssdfa from this checkout (src/).
# A dry run of the script itself on the CPU (a minute; measures nothing):
#   DEVICE=cpu BATCH=4 EXTRA=--quick OUT=/tmp/dry bash bench/gpu_issue21.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-128}
EXTRA=${EXTRA:-}
STAMP=$(date -u +%Y%m%d-%H%M%S)
$PY -c 'import torch, ssdfa; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name() if torch.cuda.is_available() else "-", "ssdfa", ssdfa.__version__)'
$PY bench/sync_check.py --device "$DEVICE" --batch "$BATCH" --threads 4 --out "$OUT/sync_check-gpu-$STAMP.json"
$PY bench/step_time.py --device "$DEVICE" --cases launch-bound --batch "$BATCH" --threads 4 --reps 15 --steps 5 \
    --no-biotorch --methods bp,dfa,dfa-per-block,sdfa,ssdfa,dkp,sign_dfa,drtp,shallow \
    $EXTRA --out "$OUT/step_time-launch-bound-gpu-$STAMP.json"
$PY bench/step_time.py --device "$DEVICE" --cases launch-bound --batch "$BATCH" --threads 4 --reps 9 --steps 5 \
    --no-biotorch --methods dfa --compile --compile-methods dfa,ssdfa \
    $EXTRA --out "$OUT/step_time-launch-bound-gpu-compiled-$STAMP.json"
