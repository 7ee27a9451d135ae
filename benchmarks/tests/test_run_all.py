"""Arithmetic and plans of benchmarks/run_all.py: paired ratios, the comparison and seed-scaling rows,
the summary of a group, the accelerator plan."""
import numpy as np
import pytest

import run_all


def _group(cells: dict) -> dict:
    return {"name": "g", "cells": {label: {"lib": lib, "config": config, "walls": walls, "cpus": cpus}
                                   for label, (lib, config, walls, cpus) in cells.items()}}


def test_paired_ratio_is_the_median_of_per_round_ratios():
    assert run_all.paired_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0
    assert run_all.paired_ratio([], []) is None


def test_compare_and_scaling_rows():
    group = _group({
        "jax": ("jax", {"model": "convnet", "batch": 10, "seeds": 1}, [1.0, 2.0], [2.0, 2.0]),
        "jax_s4": ("jax", {"model": "convnet", "batch": 10, "seeds": 4}, [2.0, 4.0], [4.0, 6.0]),
        "torch": ("torch", {"model": "convnet", "batch": 10, "seeds": 1}, [0.5, 2.0], [1.0, 4.0]),
    })
    compare = run_all.compare_rows(group, [("jax", "torch"), ("jax", "torch_cl")])
    assert compare[0]["wall_ratio"] == 1.5 and compare[0]["cpu_ratio"] == 1.25  # medians of [2, 1] and [2, 0.5]
    assert compare[1]["wall_ratio"] is None and compare[1]["note"].startswith("missing")
    (row,) = run_all.scaling_rows(group, ("jax", ["jax_s4"], "torch"))
    assert row["seeds"] == 4 and row["sequential_is"] == "4 x 1-seed step"
    assert row["speedup_wall"] == 2.0  # [4, 8] / [2, 4]
    assert row["speedup_cpu"] == pytest.approx(np.median([8 / 4, 8 / 6]))
    assert row["vs_torch_sequential_wall"] == pytest.approx(np.median([2 / 2, 8 / 4]))


def test_summary_gives_torch_cells_the_flops_of_the_matching_jax_cell():
    """PyTorch has no cost analysis: its rows take the FLOPs per seed, peak and cores of the plain JAX
    cell of the same network, batch and norm; a JAX cell with KD does not lend its (larger) count."""
    group = _group({
        "jax": ("jax", {"model": "convnet", "batch": 10, "seeds": 2}, [1.0], [1.0]),
        "jax_kd": ("jax", {"model": "convnet", "batch": 10, "seeds": 1, "kd": True}, [1.0], [1.0]),
        "torch": ("torch", {"model": "convnet", "batch": 10, "seeds": 3}, [2.0], [4.0]),
        "torch_b20": ("torch", {"model": "convnet", "batch": 20, "seeds": 1}, [2.0], [4.0]),
    })
    group["cells"]["jax"]["info"] = {"flops_per_step": 8e9, "peak_flops": 4e9, "cores": 2}
    group["cells"]["jax_kd"]["info"] = {"flops_per_step": 9e9, "peak_flops": 4e9, "cores": 2}
    group["cells"]["torch"]["info"] = {}
    group["cells"]["torch_b20"]["info"] = {}
    summary = run_all.summarise([group], [run_all.Group("g", [], 1)])
    rows = {row["cell"]: row for row in summary["cells"]}
    assert set(rows) == {"jax", "jax_kd", "torch", "torch_b20"}
    torch = rows["torch"]
    assert torch["flops_per_step"] == 12e9 and torch["mfu"] == 12e9 / 2.0 / 4e9 and torch["mfu_cpu"] == 12e9 / 4.0 / 2e9
    assert rows["torch_b20"]["flops_per_step"] is None and rows["torch_b20"]["mfu"] is None  # no JAX cell at batch 20
    assert summary["compare"] == [] and summary["scaling"] == []


def test_run_all_rejects_unknown_group():
    with pytest.raises(SystemExit, match="unknown group.*'nope'"):
        run_all.main(["--preset", "smoke", "--groups", "nope"])


def test_device_benchmark_plan_measures_the_goals():
    group, = run_all.PLANS["gpu_device"]()
    cells = {c.label: c for c in group.cells}
    assert set(cells) == {
        "jax",
        "torch",
        "jax_s3",
        "jax_s5",
        "jax_seq5",
        "torch_seq5",
        "jax_s3_grouped",
        "jax_s5_grouped",
    }
    # the grouped cells force XLA's grouped convolution; the others run the GPU default (xla_per_seed)
    assert cells["jax_s5_grouped"].env == {"DISTILL_JAX_CONV": "xla"} and not cells["jax_s5"].env
    assert ("jax_s5_grouped", "torch_seq5") in group.compare
    assert all(c.config["model"] == "resnet18" and c.config["batch"] == 100 for c in cells.values())
    assert cells["torch_seq5"].config == {
        "model": "resnet18",
        "batch": 100,
        "seeds": 5,
        "device": "cuda",
        "norm": "batch",
    }
    assert cells["jax_seq5"].config["sequential"] and group.parallel_build
    assert ("jax_s5", "torch_seq5") in group.compare
    toy, = run_all.PLANS["gpu_device_toy"]()
    assert {c.label for c in toy.cells} == set(cells)  # the dry run steps the same cells
