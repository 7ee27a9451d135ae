"""The device run, on CPU: the bundle scripts/gpu_bundle.sh builds, and a dry run of
scripts/gpu_device_run.sh at toy size (GPU_RUN_TOY=1), so that the command works the first
time a device is lent. No test here needs an accelerator; benchmarks/tests/test_gpu_run.py
tests gpu_run.py's own parts.

The bundle (built once per session by conftest.py) and the dry run need the real data (skipped
without it, as elsewhere); the dry run
takes ~2 min on a loaded 2-core machine with the suite's XLA cache warm, ~3.5 min cold.
"""
import json
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))  # the device run's Python side (tested in benchmarks/tests)

import gpu_run  # noqa: E402
from distill_jax.report import results_record  # noqa: E402

OUT_FILES = {"progress.txt", "bench.txt", "bench.json", "table_log.txt", "table.md", "table.json", "summary.md",
             "runs.tar.gz"}


def test_bundle_holds_what_the_device_run_needs_under_the_limit(bundle):
    files = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    assert {
        "data/cifar10_jpeg_test.npz",
        "data/distilled/cifar10_10_frepo/images_best.pt",
        "data/distilled/cifar10_10_frepo/labels_best.pt",
        "zca_mtt.packed.npz",
        "MANIFEST.txt",
        "SHA256SUMS",
        "data/distilled/cifar10_1_frepo/images_best.pt",
        "data/distilled/cifar10_1_mtt/labels_best.pt",
        "data/teachers/cifar10_1_mtt_convnet/checkpoint_best.pth",
    } <= files  # the campaign's sets and teacher
    wheels = sorted(f for f in files if f.startswith("wheels/"))
    assert [re.sub(r"-.*", "", w[len("wheels/"):]).lower() for w in wheels] == ["ml_collections", "tensorboardx"]
    assert all(w.endswith("-py3-none-any.whl") for w in wheels)  # pure Python: any interpreter, any CPU
    assert not any("train" in f for f in files)  # the training split stays here
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    assert size < 60 * 2 ** 20
    subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=bundle, check=True)
    prep = gpu_run.unpack_transform(bundle / "zca_mtt.packed.npz")  # rebuilt bit for bit (sha256 checked)
    assert prep.recipe == "zca_mtt" and prep.image_shape == (32, 32, 3) and prep.zca_reg == 0.1
    assert prep.fitted_on["dataset"] == "cifar10_jpeg" and prep.fitted_on["split"] == "train"
    assert prep.fitted_on["images_sha256"] in (bundle / "MANIFEST.txt").read_text()


def test_size_check_refuses_a_bundle_over_the_limit(tmp_path, script_env):
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "blob").write_bytes(b"\0" * (2 * 2 ** 20 + 1))
    check = [str(REPO / "scripts" / "gpu_bundle.sh"), "--check", str(folder)]
    over = subprocess.run(["bash", *check], env=script_env(GPU_BUNDLE_MAX_MIB="2"), capture_output=True, text=True)
    assert over.returncode == 2
    assert "over the limit of 2 MiB" in over.stderr and str(folder) in over.stderr
    under = subprocess.run(["bash", *check], env=script_env(GPU_BUNDLE_MAX_MIB="3"), capture_output=True, text=True)
    assert under.returncode == 0, under.stderr
    assert "2.0 MiB (limit 3)" in under.stdout


def test_device_command_dry_run_on_cpu(bundle, tmp_path, script_env):
    """The device command at toy size: every phase, every out file, the carried wheels and transform
    used, and no training split or cached transform anywhere in reach."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = script_env(
        OUT=str(out), GPU_RUN_TOY="1", GPU_RUN_WORKDIR=str(work), DISTILL_JAX_CACHE=str(tmp_path / "no_cache")
    )
    env.pop("DISTILL_JAX_DATA", None)  # the device has no data root but the bundle
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_device_run.sh"), str(bundle)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    record_files = [n for n in names if n.startswith("results_record")]
    assert names - set(record_files) == OUT_FILES and len(record_files) == 1  # all that a device call brings back
    assert all(p.stat().st_size < 16 * 2 ** 20 for p in out.iterdir())
    progress = (out / "progress.txt").read_text()
    assert f"ml_collections from {work}/site" in progress and f"tensorboardX from {work}/site" in progress
    assert "benchmark: exit 0" in progress and "table: exit 0" in progress
    summary = (out / "summary.md").read_text()
    assert summary.strip() in done.stdout  # printed at the end too
    assert "TOY DRY RUN" in summary and "5 seeds vmapped vs one after another" in summary
    table = (out / "table.md").read_text()
    for row in ("Teacher (convnet_frepo", "resnet18 Baseline", "resnet18 w/o DP", "resnet18 Full"):
        assert row in table
    assert "Partial table" not in table and "TOY DRY RUN" in table
    bench = json.loads((out / "bench.json").read_text())
    assert {r["cell"] for r in bench["cells"]} == {"jax", "torch", "jax_s3", "jax_s5", "jax_seq5", "torch_seq5",
                                                    "jax_s3_grouped", "jax_s5_grouped"}
    assert "5 seeds vmapped (XLA's grouped convolution) vs one after another" in summary
    record = results_record.read_record(out / record_files[0])  # ready for results/
    assert {c["cell"] for c in record["cells"]} >= set(gpu_run.CELLS) and record["source"]["kind"] == "run"
    records = json.loads((out / "table.json").read_text())["records"]
    assert set(records) == set(gpu_run.CELLS)
    assert all(r["preprocessing"] == "zca_mtt" and r["final_accuracy"] for r in records.values())
    assert (work / "table" / "full" / "config.json").is_file()
    saved = json.loads((work / "table" / "full" / "config.json").read_text())["data"]["preprocessing_path"]
    assert pathlib.Path(saved) == (work / "table" / gpu_run.TRANSFORM_NAME).resolve()
    assert not (tmp_path / "no_cache" / "preprocessing").exists()  # nothing was fitted (kernels/ may be built)


def test_device_command_dry_run_of_chosen_cells_without_the_benchmark(bundle, tmp_path, script_env):
    """GPU_RUN_CELLS=no_dp_kd, GPU_RUN_WIDTH=2 and GPU_RUN_BENCH_S=0: that cell alone at width 2,
    no teacher, no benchmark."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = script_env(
        OUT=str(out),
        GPU_RUN_TOY="1",
        GPU_RUN_WORKDIR=str(work),
        GPU_RUN_CELLS="no_dp_kd",
        GPU_RUN_BENCH_S="0",
        GPU_RUN_WIDTH="2",
    )
    env.pop("DISTILL_JAX_DATA", None)
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_device_run.sh"), str(bundle)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    progress = (out / "progress.txt").read_text()
    assert (
        "cells no_dp_kd, width 2" in progress
        and "table: exit 0" in progress
        and "benchmark: skipped (GPU_RUN_BENCH_S=0" in progress
    )
    assert (
        "resnet18 w/o DP & KD" in (out / "table.md").read_text()
        and "Partial table" not in (out / "table.md").read_text()
    )
    assert "test-network width 2," in (out / "table.md").read_text()
    record = results_record.read_record(out / "results_record.no_dp_kd.json")  # ready for results/
    assert [c["cell"] for c in record["cells"]] == ["no_dp_kd"] and record["source"]["kind"] == "run"
    records = json.loads((out / "table.json").read_text())["records"]
    assert set(records) == {"no_dp_kd"} and records["no_dp_kd"]["config"]["model"]["width"] == 2
    assert not (work / "table" / "teacher").exists() and (work / "table" / "no_dp_kd" / "record.json").is_file()
