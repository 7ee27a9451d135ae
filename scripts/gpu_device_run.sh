#!/usr/bin/env bash
# The accelerator run: one command for an offline GPU machine (e.g. one H200), everything written
# under $OUT (benchmarks/README.md, "Running on an offline accelerator machine"); dry-run on CPU by
# scripts/tests/test_gpu_bundle.py.
#
#   1. checks the bundle (scripts/gpu_bundle.sh) against its SHA256SUMS and installs its wheels
#      (ml-collections, tensorboardX) with pip --no-index into $WORK/site;
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
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
BUNDLE=$(cd "${1:-$REPO/gpu_bundle}" 2>/dev/null && pwd) || {
  echo "no bundle folder ${1:-$REPO/gpu_bundle}: build it with scripts/gpu_bundle.sh" | tee -a "$OUT/progress.txt"; exit 2; }
cd "$REPO"
TOY=${GPU_RUN_TOY:-0}
BUDGET=${GPU_RUN_BUDGET_S:-560}
BENCH_S=${GPU_RUN_BENCH_S:-180}
WORK=${GPU_RUN_WORKDIR:-/tmp/distill_jax_gpu_run}
PYTHON=${PYTHON:-python3}
CELLS=()  # benchmarks/gpu_run.py owns the default cells
[ -n "${GPU_RUN_CELLS:-}" ] && CELLS=(--cells "$GPU_RUN_CELLS")
WIDTH=()
[ -n "${GPU_RUN_WIDTH:-}" ] && WIDTH=(--width "$GPU_RUN_WIDTH")
mkdir -p "$WORK"
START=$SECONDS
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/xla_cache}
if [ "$TOY" = 1 ]; then PRESET=gpu_device_toy; TOY_FLAG=--toy; else PRESET=gpu_device; TOY_FLAG=; fi

log() { echo "[$(date -u +%H:%M:%S)] +$((SECONDS - START))s $*" | tee -a "$OUT/progress.txt"; }
left() { echo $((BUDGET - (SECONDS - START))); }

log "device run$([ "$TOY" = 1 ] && echo ' (TOY DRY RUN)'): bundle $BUNDLE, workdir $WORK, budget ${BUDGET}s, cells ${GPU_RUN_CELLS:-default}, width ${GPU_RUN_WIDTH:-paper}"
if ! (cd "$BUNDLE" && sha256sum -c --quiet SHA256SUMS) >> "$OUT/progress.txt" 2>&1; then
  log "the bundle does not match its SHA256SUMS: rebuild it with scripts/gpu_bundle.sh"; exit 2
fi
if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
     "$BUNDLE"/wheels/*.whl >> "$OUT/progress.txt" 2>&1; then
  log "installing the carried wheels failed (see above)"; exit 2
fi
export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
{
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  else
    echo "no nvidia-smi on this machine"
  fi
  "$PYTHON" - <<'EOF' > "$WORK/setup_check.txt" 2>&1
import importlib.metadata as m, platform
import jax
def version(name):
    for candidate in (name, name.replace("-", "_")):
        try:
            return m.version(candidate)
        except m.PackageNotFoundError:
            pass
    return "absent"
print("python", platform.python_version(), "| jax devices:", jax.devices())
print("versions:", {n: version(n) for n in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex",
                                          "ml-collections", "tensorboardX", "torch", "numpy")})
import distill_jax.training.loop  # every module-level import the run needs
import ml_collections, tensorboardX
print("distill_jax imports: ok; ml_collections from", ml_collections.__file__, "| tensorboardX from", tensorboardX.__file__)
EOF
  SETUP_RC=$?
  cat "$WORK/setup_check.txt"
} >> "$OUT/progress.txt"
if [ "$SETUP_RC" -ne 0 ]; then  # the phases below will fail the same way: say why at once
  log "setup check failed (exit $SETUP_RC):"; tail -n 30 "$WORK/setup_check.txt"
else
  log "setup done"
fi

# ---- the benchmark
if [ -f "$WORK/bench.json" ]; then
  log "benchmark: finished in an earlier call, kept"
else
  cap=$(( $(left) - 60 < BENCH_S ? $(left) - 60 : BENCH_S ))
  if [ "$cap" -le 10 ]; then
    log "benchmark: skipped (GPU_RUN_BENCH_S=$BENCH_S, ${cap}s left for it)"
  else
    log "benchmark: preset $PRESET, at most ${cap}s"
    timeout --kill-after=10 "$cap" "$PYTHON" benchmarks/run_all.py --preset "$PRESET" --out "$WORK/bench.partial.json" \
      --log "$WORK/bench_workers.log" > "$OUT/bench.txt" 2>&1
    rc=$?
    BENCH_RC=$rc
    [ $rc -eq 0 ] && mv "$WORK/bench.partial.json" "$WORK/bench.json"
    log "benchmark: exit $rc$([ $rc -eq 124 ] || [ $rc -eq 137 ] && echo ' (time cap reached)')"
  fi
fi
[ -f "$WORK/bench.json" ] && cp "$WORK/bench.json" "$OUT/bench.json"
[ ! -f "$WORK/bench.json" ] && [ -f "$WORK/bench.partial.json" ] && cp "$WORK/bench.partial.json" "$OUT/bench.json"
if [ -f "$WORK/bench_workers.log" ]; then
  { echo; echo "---- worker log (last 200 lines)"; tail -n 200 "$WORK/bench_workers.log"; } >> "$OUT/bench.txt"
fi

# ---- the table
cap=$(( $(left) - 25 ))
log "table: at most ${cap}s"
if [ "$cap" -gt 20 ]; then
  timeout --kill-after=15 "$cap" "$PYTHON" benchmarks/gpu_run.py table --bundle "$BUNDLE" --workdir "$WORK/table" \
    --out "$OUT" "${CELLS[@]}" "${WIDTH[@]}" $TOY_FLAG >> "$OUT/table_log.txt" 2>&1
  rc=$?
  TABLE_RC=$rc
  log "table: exit $rc$([ $rc -eq 124 ] || [ $rc -eq 137 ] && echo ' (time budget reached: partial table; rerun to resume)')"
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
timed_out() { [ "$1" -eq 124 ] || [ "$1" -eq 137 ]; }
if [ "${BENCH_RC:-0}" -ne 0 ] && ! timed_out "${BENCH_RC:-0}"; then
  echo "---- benchmark failed (exit $BENCH_RC); end of bench.txt:"; tail -n 25 "$OUT/bench.txt"
fi
if [ "${TABLE_RC:-0}" -ne 0 ] && ! timed_out "${TABLE_RC:-0}"; then
  echo "---- table failed (exit $TABLE_RC); end of table_log.txt:"; tail -n 40 "$OUT/table_log.txt"
fi
