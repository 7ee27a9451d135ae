"""Tests of benchmarks/cost_laws.py: one toy run end to end (the machinery, not the speed), and the
arithmetic it rests on (the linear fit, the roofline bound, the full-length extrapolation) on
hand-made numbers.

The toy run keeps to four small programs (a width-8 ConvNet at batch 10 and 20, two seeds, KD off):
each XLA compile costs seconds on a 2-core machine, so the width axis and other networks are
checked through the hand-made laws instead.
"""
import json

import numpy as np
import pytest

import cost_laws

CELL_FIELDS = {"axis", "value", "network", "width", "batch", "seeds", "config", "compile_s", "step_s", "cpu_s",
               "cores_busy", "flops", "bytes_accessed", "roofline", "eval_s", "eval_cpu_s", "eval_test_s",
               "eval_batch", "peak_rss_mb"}


def test_toy_run_end_to_end(tmp_path):
    out, md, png = tmp_path / "laws.json", tmp_path / "laws.md", tmp_path / "laws.png"
    record = cost_laws.main(["--toy", "--axes", "ipc,seeds,network", "--networks", "convnet", "--out", str(out),
                             "--markdown", str(md), "--plot", str(png)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))  # written whole, JSON-safe
    assert sorted(p.name for p in tmp_path.iterdir()) == ["laws.json", "laws.md", "laws.png"]  # no .tmp left
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert record["toy"] and not record["partial"] and record["repeats"] == 1

    cells = record["cells"]
    assert [(c["axis"], c["value"]) for c in cells] == [("ipc", 1), ("ipc", 10), ("ipc", 50), ("seeds", 1),
                                                        ("seeds", 2), ("network", "convnet"), ("kd", "off")]
    for c in cells:
        assert CELL_FIELDS <= set(c), CELL_FIELDS - set(c)
        assert c["step_s"] > 0 and c["compile_s"] > 0 and c["flops"] > 0 and c["bytes_accessed"] > 0
        assert c["roofline"]["bound"] in ("one thread", "memory", "compute")
        np.testing.assert_allclose(c["cores_busy"], c["cpu_s"] / c["step_s"])
        np.testing.assert_allclose(c["eval_test_s"], c["eval_s"] * 10_000 / c["eval_batch"])
    ipc = [c for c in cells if c["axis"] == "ipc"]
    assert [(c["batch"], c["steps_per_epoch"]) for c in ipc] == [(10, 1), (20, 5), (20, 25)]  # toy batch <= 20
    for c in ipc:
        np.testing.assert_allclose(c["epoch_s"], c["steps_per_epoch"] * c["step_s"])
    assert ipc[1]["step_s"] == ipc[2]["step_s"]  # one program for both: same config
    assert cells[4]["config"]["seeds"] == 2 and not cells[-1]["config"]["kd"]

    laws = record["laws"]
    assert set(laws["batch"]) == {"convnet"} and laws["seeds_step"] and laws["kd"]
    np.testing.assert_allclose(cost_laws.law_at(laws["batch"]["convnet"], 10), ipc[0]["step_s"], rtol=1e-6)
    table = record["extrapolation"]
    assert len(table["rows"]) == 2 * 3 * (1 + 4 * 5) and "extrapolation" in table["note"]
    mtt_teacher = [r for r in table["rows"] if r["method"] == "mtt" and r["variant"] == "teacher"]
    assert all(r["hours"] > 0 and r["seeds"] == 1 for r in mtt_teacher)  # the ConvNet was measured
    assert all(r["hours"] is None for r in table["rows"] if r["network"] == "resnet50")

    # --report: the same laws, table and files again from the JSON alone, nothing measured
    md.unlink()
    again = cost_laws.main(["--report", str(out), "--markdown", str(md), "--plot", str(png)])
    assert again["laws"] == json.loads(json.dumps(laws)) and again["extrapolation"] == json.loads(json.dumps(table))
    assert md.is_file() and json.loads(out.read_text())["cells"] == json.loads(json.dumps(cells))

    text = md.read_text()
    for needed in (record["cpu"]["model_name"], "family", "jax " + record["environment"]["jax"], "Load average",
                   "extrapolations from measured steps", "roofline estimate"):
        assert needed in text, needed


def test_fit_linear_reproduces_its_points():
    law = cost_laws.fit_linear([10, 100, 100], [0.5, 3.2, 3.2])
    np.testing.assert_allclose([law["a"], law["b"]], [0.2, 0.03], rtol=1e-9)
    for x, y in law["points"]:
        np.testing.assert_allclose(cost_laws.law_at(law, x), y, rtol=1e-9)
    noisy = cost_laws.fit_linear([1, 2, 4, 8], [1.1, 1.9, 4.1, 7.9])  # least squares, not through every point
    np.testing.assert_allclose([noisy["a"], noisy["b"]], [0.1, 0.975], atol=0.05)
    assert 0 < noisy["max_rel_residual"] < 0.1
    with pytest.raises(ValueError, match="two different x"):
        cost_laws.fit_linear([100, 100], [3.0, 3.1])


def test_bound_classification():
    peak, bandwidth = 100e9, 10e9  # balance: 10 FLOP per byte
    assert cost_laws.classify_bound(1.1, 1e12, 1e9, peak, bandwidth)["bound"] == "one thread"
    memory = cost_laws.classify_bound(1.9, 5e9, 1e9, peak, bandwidth)  # 5 FLOP/B, below the balance
    assert memory["bound"] == "memory" and memory["intensity"] == 5.0 and memory["balance"] == 10.0
    assert memory["memory_s"] == 0.1 and memory["compute_s"] == 0.05
    assert cost_laws.classify_bound(1.9, 50e9, 1e9, peak, bandwidth)["bound"] == "compute"
    assert cost_laws.classify_bound(1.9, 50e9, None, peak, bandwidth)["bound"] == "unknown"


def test_extrapolation_arithmetic():
    assert cost_laws.full_length_seconds(4000, 1, 2.0, 80, 10.0) == 8800.0
    assert cost_laws.evaluations(4000, 100) == 40 and cost_laws.evaluations(1000, 300) == 4
    assert [cost_laws.ipc_batch(ipc, 100) for ipc in (1, 10, 50)] == [(10, 1), (100, 1), (100, 5)]


def _laws(**changes):
    laws = {"batch": {"resnet18": {"a": 0.2, "b": 0.03}}, "seeds_step": {"a": 0.0, "b": 1.0}, "seeds_eval": None,
            "network_step": {"resnet18": 3.2, "vgg11": 1.6, "convnet": 0.4},
            "network_eval": {"resnet18": 10.0, "vgg11": 6.0, "convnet": 1.0, "convnet_frepo": 2.0},
            "kd": {"per_image_seed_s": 0.001}, "base_network": "resnet18", "base_batch": 100}
    return {**laws, **changes}


def _row(network, variant, method="mtt", ipc=10, epochs=4000, kd=True, seeds=3):
    return {"method": method, "ipc": ipc, "set": f"cifar10_{ipc}_{method}", "network": network, "variant": variant,
            "images": 10 * ipc, "epochs": epochs, "batch_size": 100, "seeds": seeds, "eval_every_epochs": 100, "kd": kd}


def test_predictions_from_hand_made_laws():
    laws = _laws()
    step, notes = cost_laws.predict_step(laws, "resnet18", 100, 3, kd=True)  # 3.2 s x 3 seeds (linear law)
    assert step == pytest.approx(9.6) and "batch law of resnet18" in notes
    assert cost_laws.predict_step(laws, "resnet18", 100, 3, kd=False)[0] == pytest.approx(9.6 - 0.3)
    # ConvNet-FRePo teacher: its forward costs 2x the ConvNet's, so the KD share (0.3 s) doubles
    assert cost_laws.predict_step(laws, "resnet18", 100, 3, kd=True, teacher="convnet_frepo")[0] == pytest.approx(9.9)
    # vgg11 has no batch law: its batch-100 step scaled by resnet18's law, 0.5 / 3.2 at batch 10
    step, notes = cost_laws.predict_step(laws, "vgg11", 10, 1, kd=True)
    assert step == pytest.approx(1.6 * 0.5 / 3.2) and "resnet18's batch law" in notes
    assert cost_laws.predict_step(laws, "resnet50", 100, 3, kd=True) == (None, "resnet50 not measured")
    # a ConvNet teacher trains without KD: only the ConvNet's forward leaves its step, 1.0 s / 10000 images
    # x 100 images = 0.01 s, not the students' KD difference (0.1 s at batch 100, one seed)
    step, notes = cost_laws.predict_step(laws, "convnet", 100, 1, kd=False)
    assert step == pytest.approx(0.4 - 0.01) and "teacher's forward" in notes
    assert cost_laws.predict_eval(laws, "resnet18", 3) == 30.0  # no eval seed law: linear
    assert cost_laws.predict_eval(_laws(seeds_eval={"a": 5.0, "b": 5.0}), "resnet18", 3) == 20.0

    table = cost_laws.extrapolate(laws, [_row("resnet18", "full"), _row("resnet18", "baseline", epochs=1000, kd=False),
                                         _row("resnet50", "full")])
    full, baseline, missing = table["rows"]
    assert full["steps"] == 4000 and full["evaluations"] == 40
    assert full["hours"] * 3600 == pytest.approx(4000 * 9.6 + 40 * 30.0)
    assert baseline["hours"] * 3600 == pytest.approx(1000 * 9.3 + 10 * 30.0)
    assert missing["hours"] is None and table["rows_not_measured"] == 1
    assert table["total_hours"] == pytest.approx(full["hours"] + baseline["hours"])


def test_laws_fitted_from_cells():
    def cell(axis, value, network, batch, seeds, step, eval_s, kd=True):
        return {"axis": axis, "value": value, "network": network, "batch": batch, "seeds": seeds, "step_s": step,
                "eval_test_s": eval_s, "config": {"width": None, "kd": kd}}

    cells = [cell("ipc", 1, "resnet18", 10, 1, 0.5, 10.0), cell("ipc", 10, "resnet18", 100, 1, 3.2, 10.0),
             cell("seeds", 1, "resnet18", 100, 1, 3.2, 10.0),
             cell("ipc", 50, "resnet18", 100, 1, 3.2, 10.0), cell("seeds", 2, "resnet18", 100, 2, 6.0, 19.0),
             cell("network", "vgg11", "vgg11", 100, 1, 1.6, 6.0),
             cell("kd", "off", "resnet18", 100, 1, 3.0, 10.0, kd=False),
             {"axis": "width", "value": 8, "network": "resnet18", "error": "MemoryError: ..."}]
    laws = cost_laws.fit_laws(cells, cost_laws.base_config(toy=False))
    np.testing.assert_allclose([laws["batch"]["resnet18"]["a"], laws["batch"]["resnet18"]["b"]], [0.2, 0.03])
    np.testing.assert_allclose([laws["seeds_step"]["a"], laws["seeds_step"]["b"]], [0.4, 2.8])
    assert laws["network_step"] == {"resnet18": 3.2, "vgg11": 1.6}
    assert laws["kd"]["delta_s"] == pytest.approx(0.2) and laws["kd"]["per_image_seed_s"] == pytest.approx(0.002)


def test_paper_table_rows_follow_the_recipes():
    rows = cost_laws.table_rows()
    assert len(rows) == 126
    full = [r for r in rows if r["variant"] == "full"]
    assert {r["epochs"] for r in full} == {4000} and {r["seeds"] for r in full} == {3} and all(r["kd"] for r in full)
    assert {r["epochs"] for r in rows if r["variant"] == "baseline"} == {1000}
    teachers = [r for r in rows if r["variant"] == "teacher"]
    assert {r["network"] for r in teachers} == {"convnet", "convnet_frepo"} and not any(r["kd"] for r in teachers)


def test_report_of_an_unfinished_run_is_refused(tmp_path):
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"partial": True, "cells": []}))
    with pytest.raises(SystemExit, match="partial.json: not a finished cost-laws run"):
        cost_laws.main(["--report", str(partial)])


def test_cpu_description_and_plan_errors(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\nmodel name\t: Test Xeon\n"
                    "stepping\t: 2\ncpu MHz\t\t: 2100.0\nflags\t\t: fpu avx avx2 fma avx512f amx_tile\n")
    info = cost_laws.cpu_description(str(path))
    assert (info["model_name"], info["family"], info["model"]) == ("Test Xeon", "6", "207")
    assert info["vector_extensions"] == ["AVX", "AVX2", "FMA", "AVX-512F", "AMX-TILE"]
    assert info["peak_flops"] == info["cores"] * 2.1e9 * 64
    with pytest.raises(ValueError, match="--axes must be"):
        cost_laws.make_plan(["ipc", "depth"])
    with pytest.raises(ValueError, match="--networks: unknown network"):
        cost_laws.make_plan(["network"], networks=["lenet"])
    cells = cost_laws.plan_cells(cost_laws.make_plan(["ipc", "width", "network"]))
    resnet18_ipc = [c["config"].batch for c in cells if c["axis"] == "ipc" and c["config"].model == "resnet18"]
    assert resnet18_ipc == [10, 100, 100]
    assert {c["config"].model for c in cells if c["axis"] == "ipc"} == set(cost_laws.NETWORKS)
    vgg = [c["config"] for c in cells if c["axis"] == "network" and c["value"] == "vgg11"][0]
    assert vgg.droppath and vgg.kd and vgg.augment_k == 2 and vgg.optimizer == "lion" and vgg.norm == "batch"
