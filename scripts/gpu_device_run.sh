#!/usr/bin/env bash
# The accelerator run: one command for an offline GPU machine (e.g. one H200), everything written
# under $OUT (benchmarks/README.md, "Running on an offline accelerator machine"); dry-run on CPU by
# scripts/tests/test_gpu_bundle.py.
#
#   1. checks the bundle (scripts/gpu_bundle.sh) against its SHA256SUMS and installs its wheels
#      (ml-collections, tensorboardX) with pip --no-index into $WORK/site (scripts/gpu_common.sh, shared
#      with scripts/gpu_campaign.sh);
#   2. the accelerator benchmark (benchmarks/run_all.py --preset gpu_device): ResNet-18 at the
#      paper's batch 100, MFU against the card's TF32 peak, 1/3/5 seeds vmapped, 5 seeds one after
#      another in JAX and in PyTorch (whatever PyTorch the image has; if none, the table says so);
#   3. the FRePo IPC 10 ResNet-18 table on CIFAR-10 (JPEG) at full length (benchmarks/gpu_run.py
#      table): ConvNet-FRePo teacher, Baseline, Full, w/o DP, paper widths and epochs, 3 seeds
#      vmapped per cell, the carried zca_mtt transform (no training split on the device);
#   4. summary.md (also printed), runs.tar.gz (records, curves, plots; no checkpoints) and the
#      table's results record (results_record*.json, the format of results/).
#
# Out files (8): progress.txt, bench.txt, bench.json, table_log.txt,
# table.md, table.json, summary.md, runs.tar.gz. Each is written as its phase goes, so a run cut
# off at a time limit still leaves what it did.
#
# Time (sized for a slot of 600 s per command): the run keeps to GPU_RUN_BUDGET_S (default 560 s)
# and stops itself before such a limit:
#   benchmark: 6 cells compiled at once on 16 cores, then 21 rounds of ms-long steps: ~1.5-2 min
#              (capped at GPU_RUN_BENCH_S, default 180 s);
#   table: XLA's cost analysis of the steps (benchmarks/train_step.py, 3 seeds, batch 100) gives
#     teacher  1000 steps x 245 GFLOP              + 10 evals x  8 TFLOP =  0.33 PFLOP
#     Baseline 1000 steps x 871 GFLOP              + 10 evals x 29 TFLOP =  1.16 PFLOP
#     w/o DP   1000 steps x 899 GFLOP (KD, 2 DSA)  + 10 evals x 29 TFLOP =  1.19 PFLOP
#     Full     4000 steps x 899 GFLOP (KD, DP)     + 40 evals x 29 TFLOP =  4.76 PFLOP
#     total 7.4 PFLOP: 15 s at the H200's TF32 peak (495 TFLOP/s), 37 s at 40 % MFU, 150 s at
#     10 %; ResNet-18 at batch 100 on 32 px images is more likely bound by kernel launches
#     (~7000 steps x a few ms), so ~1-3 min of steps, plus 4 cells' compiles (~0.5-1 min each),
#     16 checkpoints of ~270 MB and the data: ~3-7 min.
#   So the full table fits the ~6 min left after the benchmark only if compiles are quick. It is run whole, not cut: cells go teacher, Baseline, Full, w/o DP, and a cell the
#   budget cuts off is reported as unfinished with the epoch it reached (table.md says "Partial
#   table"). Running the same command again on the same machine (workdir, checkpoints and XLA
#   cache are in $WORK) resumes that cell and skips the benchmark. No cell is shortened: a partial table says which cells are missing.
#
# Usage (on the accelerator machine, from the repository root; bundle built by scripts/gpu_bundle.sh):
#   bash scripts/gpu_device_run.sh gpu_bundle
# Environment: OUT (required), GPU_RUN_BUDGET_S, GPU_RUN_BENCH_S (0 skips the benchmark),
# GPU_RUN_CELLS (the table's cells, in order; default: benchmarks/gpu_run.py's CELLS; e.g.
# no_dp_kd,no_kd for the two columns without KD, which need no teacher), GPU_RUN_WIDTH (the
# students' width, default the paper's; 16 runs the CPU table of docs/results.md §1d), GPU_RUN_WORKDIR (default
# /tmp/distill_jax_gpu_run), PYTHON (default python3), GPU_RUN_TOY=1 (the CPU dry run: the same
# phases at toy size, labelled so; what scripts/tests/test_gpu_bundle.py runs).
set -uo pipefail
WORK_DEFAULT=/tmp/distill_jax_gpu_run
BENCH_DEFAULT=180
# shellcheck source=scripts/gpu_common.sh
source "$(dirname "$0")/gpu_common.sh"
CELLS=()  # benchmarks/gpu_run.py owns the default cells
[ -n "${GPU_RUN_CELLS:-}" ] && CELLS=(--cells "$GPU_RUN_CELLS")
WIDTH=()
[ -n "${GPU_RUN_WIDTH:-}" ] && WIDTH=(--width "$GPU_RUN_WIDTH")
if [ "$TOY" = 1 ]; then PRESET=gpu_device_toy; else PRESET=gpu_device; fi

log "device run$([ "$TOY" = 1 ] && echo ' (TOY DRY RUN)'): bundle $BUNDLE, workdir $WORK, budget ${BUDGET}s, cells ${GPU_RUN_CELLS:-default}, width ${GPU_RUN_WIDTH:-paper}"
device_setup

# ---- the benchmark
bench_phase "$PRESET"

# ---- the table
cap=$(( $(left) - 25 ))
log "table: at most ${cap}s"
if [ "$cap" -gt 20 ]; then
  timeout --kill-after=15 "$cap" "$PYTHON" benchmarks/gpu_run.py table --bundle "$BUNDLE" --workdir "$WORK/table" \
    --out "$OUT" "${CELLS[@]}" "${WIDTH[@]}" $TOY_FLAG >> "$OUT/table_log.txt" 2>&1
  rc=$?
  TABLE_RC=$rc
  log "table: exit $rc$(timed_out $rc && echo ' (time budget reached: partial table; rerun to resume)')"
fi

# ---- what came of it
"$PYTHON" benchmarks/gpu_run.py summary --workdir "$WORK/table" --out "$OUT" "${CELLS[@]}" $TOY_FLAG \
  > "$WORK/summary.txt" 2>&1
rc=$?
tar -czf "$OUT/runs.tar.gz" -C "$WORK" --exclude=checkpoints --exclude='*.npz' --exclude=toy_data table 2>/dev/null
# The table's results record (the format of results/), ready to commit: the newest one, written by
# the last stretch of cells that finished (results_record.<cells>.json names the cells it holds).
RECORD=$(ls -t "$WORK"/table/results_record*.json 2>/dev/null | head -n 1)
if [ -n "$RECORD" ]; then cp "$RECORD" "$OUT/"; else log "no results record: no cell finished"; fi
log "done (summary exit $rc)"
cat "$WORK/summary.txt"
# a phase that failed (not merely cut by the time budget): its last lines, at the end of the output
failed_phase_tail benchmark "${BENCH_RC:-0}" "$OUT/bench.txt" 25
failed_phase_tail table "${TABLE_RC:-0}" "$OUT/table_log.txt" 40
