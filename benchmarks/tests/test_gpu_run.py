"""benchmarks/gpu_run.py, the Python side of the accelerator run, on hand-made inputs: the carried
transform, the summary and the partial table, and its options. The scripts that drive it are tested
in scripts/tests/test_gpu_bundle.py."""
import json

import numpy as np
import pytest

import gpu_run
from distill_jax.data import preprocess


def test_packed_transform_rebuilds_the_fitted_one_exactly(tmp_path):
    x = np.random.default_rng(0).random((64, 4, 4, 3)).astype(np.float32)
    prep = preprocess.fit("zca_mtt", x)
    matrix = prep.zca_matrix.copy()
    matrix[7, 2] = np.nextafter(matrix[2, 7], np.float32(1))  # a rounding asymmetry, as real fits have
    origin = {"dataset": "toy", "split": "train", "images_sha256": "0" * 64}
    prep = preprocess.Preprocessing("zca_mtt", prep.image_shape, zca_mean=prep.zca_mean, zca_matrix=matrix,
                                    zca_reg=prep.zca_reg, fitted_on=origin)
    meta = gpu_run.pack_transform(prep, tmp_path / "packed.npz")
    assert meta["packing"]["dim"] == 48
    back = gpu_run.unpack_transform(tmp_path / "packed.npz")
    assert back.zca_matrix.tobytes() == matrix.tobytes()
    assert back.zca_mean.tobytes() == prep.zca_mean.tobytes()
    assert back.fitted_on == origin and back.recipe == "zca_mtt"
    with np.load(tmp_path / "packed.npz") as npz:  # a damaged copy is refused, never used
        entries = {k: npz[k] for k in npz.files}
    entries["packed.upper"][3] += 1
    np.savez(tmp_path / "damaged.npz", **entries)
    with pytest.raises(gpu_run.GpuRunError, match="sha256"):
        gpu_run.unpack_transform(tmp_path / "damaged.npz")
    with pytest.raises(gpu_run.GpuRunError, match="not found"):
        gpu_run.unpack_transform(tmp_path / "absent.npz")


def test_partial_table_says_which_cells_are_missing(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "teacher").mkdir(parents=True)
    (work / "teacher" / "results.json").write_text(json.dumps({"finished": True}))
    (work / "teacher" / "config.json").write_text(json.dumps({"train": {"epochs": 1000}}))
    (work / "teacher" / "metrics.jsonl").write_text(json.dumps({"step": 1000, "epoch": 1000, "images_per_s": 9e4}))
    (work / "baseline").mkdir()
    (work / "baseline" / "config.json").write_text(json.dumps({"train": {"epochs": 1000}}))
    (work / "baseline" / "metrics.jsonl").write_text(
        json.dumps({"step": 350, "epoch": 350, "images_per_s": 5e4}) + "\n" + '{"step": 40')  # cut by the kill
    (work / "table.md").write_text("| cell |\n|---|\n| Teacher |\n")
    text = gpu_run.write_summary(work, out, toy=False)
    table = (out / "table.md").read_text()
    assert "| Teacher |" in table and "Partial table" in table
    assert "baseline (epoch 350 of 1000)" in table and "full (epoch 0 of ?)" in table
    assert "- baseline: NOT finished, epoch 350 of 1000, 50000 images/s" in text
    assert "Benchmark: no results" in text
    assert json.loads((out / "table.json").read_text())["progress"][0]["finished"]


def test_cells_option_takes_cells_of_the_experiment_in_the_order_given():
    assert gpu_run.parse_cells("no_kd, no_dp_kd") == ("no_kd", "no_dp_kd")
    assert gpu_run.parse_cells(",".join(gpu_run.CELLS)) == gpu_run.CELLS


@pytest.mark.parametrize("text, says", [("no_dp,bogus", "unknown: ['bogus']"), ("", "expected distinct names"),
                                        ("full,full", "expected distinct names")])
def test_cells_option_refuses_unknown_empty_or_repeated_names(text, says):
    with pytest.raises(gpu_run.GpuRunError, match="--cells") as error:
        gpu_run.parse_cells(text)
    assert says in str(error.value) and "'no_dp_kd'" in str(error.value)  # the known names are listed


def test_cells_option_on_the_command_line_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        gpu_run.main(["summary", "--workdir", "w", "--out", "o", "--cells", "no_dp,bogus"])
    assert "unknown: ['bogus']" in capsys.readouterr().err


def test_summary_reports_the_chosen_cells_only(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "no_dp_kd").mkdir(parents=True)
    (work / "no_dp_kd" / "results.json").write_text(json.dumps({"finished": True}))
    (work / "no_dp_kd" / "config.json").write_text(json.dumps({"train": {"epochs": 1000}}))
    (work / "table.no_dp_kd.md").write_text("| cell |\n|---|\n| w/o DP & KD |\n")
    text = gpu_run.write_summary(work, out, toy=False, cells=("no_dp_kd", "no_kd"))
    assert "- no_dp_kd: finished" in text and "- no_kd: NOT finished, epoch 0 of ?" in text
    assert "teacher" not in text and "baseline" not in text
    assert "Partial table**: not finished within the time limit: no_kd (epoch 0 of ?)" in (out / "table.md").read_text()


@pytest.mark.parametrize("width", ["-1", "16px", ""])
def test_width_option_refuses_what_is_not_a_whole_number(width, capsys):
    with pytest.raises(SystemExit):
        gpu_run.main(["table", "--bundle", "b", "--workdir", "w", "--out", "o", "--width", width])
    assert f"--width {width!r}: expected a whole number >= 0" in capsys.readouterr().err


def test_width_option_sets_the_students_width_only():
    config = gpu_run.table_config(toy=False, width=16)
    assert config.reproduce.width == 16 and config.reproduce.teacher_width == 0  # the teacher stays at the paper's
    assert gpu_run.table_config(toy=False).reproduce.width == 0
