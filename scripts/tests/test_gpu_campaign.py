"""The device campaign on CPU: scripts/gpu_campaign.sh at toy size (GPU_RUN_TOY=1) with the bundle of
scripts/gpu_bundle.sh, so that the command works the first time a device is lent. The queue's own
rules (validation, done markers, planning) are tested without data in benchmarks/tests/test_campaign.py.

Needs the real data (the bundle; skipped without it). The dry run takes ~75 s on a loaded 2-core
machine with the suite's XLA cache warm (setup 5 s, the measurement's 3 tiny programs 35 s, two toy
cells 30 s; 95 s measured at a load of 4-6), ~3 min cold.
"""
import json
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import campaign  # noqa: E402
from distill_jax.report import results_record  # noqa: E402

EXPERIMENT = "frepo_cifar10_jpeg_1_resnet18"
OUT_FILES = {"progress.txt", "bench.txt", "bench.json", "campaign_log.txt", "campaign.json", "summary.md",
             "runs.tar.gz"}


def _toy_queue(path: pathlib.Path) -> None:
    """The committed queue's FRePo IPC 1 teacher and w/o DP (KD; estimates of 100 s: 1 s at toy size),
    and between them its Full (KD) with an estimate no budget holds: the Full must not start, and the
    w/o DP after it must, with the teacher first."""
    cells = {c["cell"]: c for c in campaign.read_queue()["cells"] if c["experiment"] == EXPERIMENT}
    queue = dict(campaign.read_queue(), cells=[dict(cells["teacher"], estimate_s=100.0),
                                               dict(cells["full"], estimate_s=1e9),
                                               dict(cells["no_dp"], estimate_s=100.0)])
    campaign.write_queue(path, queue)


def test_campaign_dry_run_on_cpu(bundle, tmp_path, script_env):
    out, work, results = tmp_path / "out", tmp_path / "work", tmp_path / "results"
    results.mkdir()
    _toy_queue(tmp_path / "queue.json")
    env = script_env(OUT=str(out), GPU_RUN_TOY="1", GPU_RUN_WORKDIR=str(work),
                     GPU_CAMPAIGN_QUEUE=str(tmp_path / "queue.json"), GPU_CAMPAIGN_RESULTS=str(results))
    env.pop("DISTILL_JAX_DATA", None)  # the device has no data root but the bundle
    started = time.perf_counter()
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_campaign.sh"), str(bundle)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record_name = f"{EXPERIMENT}.teacher+no_dp.json"
    assert {p.name for p in out.iterdir()} == OUT_FILES | {record_name}, wall
    progress = (out / "progress.txt").read_text()
    assert f"ml_collections from {work}/site" in progress and "benchmark: exit 0" in progress
    assert "cells: exit 0" in progress
    # the measurement: 1 and 2 seeds in float32, 1 in bfloat16, PyTorch beside (reported missing without torch)
    bench = json.loads((out / "bench.json").read_text())
    measured = {r["cell"]: r for r in bench["cells"]}
    assert {"jax_s1", "jax_s2", "torch_cl"} <= set(measured) and measured["jax_s2"]["wall_s"] > 0
    # the cells: the Full does not fit and is not started; the w/o DP after it runs, its teacher first
    log = json.loads((out / "campaign.json").read_text())
    assert [(r["cells"], r["finished"]) for r in log["ran"]] == [(["teacher", "no_dp"], True)]
    assert [(s["cell"], s["reason"].split(" s ")[0]) for s in log["not_started"]] == [("full", "estimate 10000000")]
    assert "> " in log["not_started"][0]["reason"] and "left" in log["not_started"][0]["reason"]
    assert not (work / "campaign" / EXPERIMENT / "full").exists()
    # the record comes back in the results/ format, ready to commit
    record = results_record.read_record(out / record_name)
    assert record["experiment"] == EXPERIMENT and record["source"]["kind"] == "run"
    assert [c["cell"] for c in record["cells"]] == ["teacher", "no_dp"]
    assert record["cells"][1]["kd_teacher"] == results_record.TRAINED_HERE
    assert all(len(c["final_test_accuracy"]) == 1 for c in record["cells"])
    assert record["command"] == "bash scripts/gpu_campaign.sh gpu_bundle"
    summary = (out / "summary.md").read_text()
    assert "TOY DRY RUN" in summary and "not started: " + EXPERIMENT + " full" in summary
    assert summary.strip() in done.stdout
