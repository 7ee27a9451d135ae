#!/usr/bin/env bash
# Full-length FRePo IPC 10 on CIFAR-10 (JPEG): ConvNet-FRePo teacher, then ResNet-18 Baseline
# (1000 epochs), w/o DP (1000) and Full (4000 epochs), 3 seeds each, vmapped in one program per
# cell, at the paper's widths. Appends the table, with the card that ran it, to docs/results.md.
# For a GPU machine that has the data root (DISTILL_JAX_DATA, with the training split) and time.
# The lent device (no network, no ../shared, 15 minutes) runs the same cells through
# scripts/gpu_bundle.sh + scripts/gpu_device_run.sh instead (benchmarks/README.md, "GPU run").
#
# Usage (on a GPU machine, from the repository root):  scripts/gpu_frepo10_full_length.sh [workdir]
# Rerun the same command to resume an interrupted run (cells restart from their checkpoints).
set -euo pipefail
WORKDIR=${1:-runs/gpu_frepo_cifar10_jpeg_10_resnet18}
PYTHON=${PYTHON:-python}
mkdir -p "$WORKDIR"
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || echo "unknown device")
"$PYTHON" launch/main.py --config "configs/reproduce.py:frepo_cifar10_jpeg_10_resnet18" --workdir "$WORKDIR" \
  --config.reproduce.cells=teacher,baseline,no_dp,full 2>&1 | tee -a "$WORKDIR/log.txt"
{
  echo
  echo "## Full-length FRePo IPC 10, ResNet-18 (GPU: $CARD, $(date -u +%Y-%m-%d))"
  echo
  echo "Command: \`scripts/gpu_frepo10_full_length.sh $WORKDIR\` (paper widths and epochs, 3 seeds)."
  echo
  cat "$WORKDIR/table.teacher+baseline+no_dp+full.md"  # a run of some cells (reproduce.cells) names its table so
} >> docs/results.md
