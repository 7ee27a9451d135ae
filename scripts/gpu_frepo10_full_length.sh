#!/usr/bin/env bash
# Full-length FRePo IPC 10 on CIFAR-10 (JPEG): ConvNet-FRePo teacher, then the paper's five
# ResNet-18 columns (Baseline, w/o DP & KD, w/o DP: 1000 epochs; w/o KD, Full: 4000), 3 seeds
# each, vmapped in one program per cell, at the paper's widths (about 10 min on one H200,
# docs/results.md §7). Appends the table, with the card that ran it, to docs/results.md.
# For a GPU machine that has the data root (DISTILL_JAX_DATA, with the training split) and time.
# An offline GPU machine (no network, no data root) runs the same cells through
# scripts/gpu_bundle.sh + scripts/gpu_device_run.sh instead (benchmarks/README.md, "Running on an
# offline accelerator machine").
#
# Usage (on a GPU machine, from the repository root):  scripts/gpu_frepo10_full_length.sh [workdir]
# Rerun the same command to resume an interrupted run (cells restart from their checkpoints).
set -euo pipefail
WORKDIR=${1:-runs/gpu_frepo_cifar10_jpeg_10_resnet18}
PYTHON=${PYTHON:-python}
mkdir -p "$WORKDIR"
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || echo "unknown device")
"$PYTHON" launch/main.py --config "configs/reproduce.py:frepo_cifar10_jpeg_10_resnet18" --workdir "$WORKDIR" \
  2>&1 | tee -a "$WORKDIR/log.txt"
{
  echo
  echo "## Full-length FRePo IPC 10, ResNet-18 (GPU: $CARD, $(date -u +%Y-%m-%d))"
  echo
  echo "Command: \`scripts/gpu_frepo10_full_length.sh $WORKDIR\` (paper widths and epochs, 3 seeds)."
  echo
  cat "$WORKDIR/table.md"
} >> docs/results.md
