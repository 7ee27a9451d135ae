"""The device campaign's own rules (benchmarks/campaign.py), without data or a device: the committed
queue, its validation (one test per error), the done markers read from results records, and which
cells a call of some seconds starts. The command itself is dry-run in scripts/tests/test_gpu_campaign.py."""
import copy
import json
import pathlib
import re

import pytest

import campaign
import run_all
from distill_jax.report import results_record

REPO = pathlib.Path(__file__).resolve().parents[2]
PAPER_RECORD = REPO / "results" / "h200_frepo10_paper_width.json"


@pytest.fixture(scope="module")
def queue():
    return campaign.read_queue()


def test_committed_queue_lists_the_pending_cells_in_priority_order(queue):
    order = list(dict.fromkeys(c["experiment"] for c in queue["cells"]))
    assert order == list(campaign.EXPERIMENTS)
    done = campaign.done_cells()
    assert ("frepo_cifar10_jpeg_10_resnet18", "full") in done  # the row that has run at full scale
    assert campaign.pending(queue, done) == queue["cells"]  # nothing queued is done already
    for experiment in order:
        cells = [c for c in queue["cells"] if c["experiment"] == experiment]
        assert [c["cell"] for c in cells] == list(campaign.CELL_ORDER)  # teacher first, then the main comparison
        assert {c["cell"] for c in cells if c["needs"] == "teacher"} == {"no_dp", "full"}  # the KD cells
        assert all(c["flops"] >= c["steps"] * c["flops_per_step"] for c in cells)
    resnet50 = {c["cell"]: c for c in queue["cells"] if c["experiment"] == "frepo_cifar10_jpeg_10_resnet50"}
    assert resnet50["full"]["network"] == "resnet50" and resnet50["full"]["width"] == 64
    assert resnet50["full"]["steps"] == 4000 and resnet50["baseline"]["steps"] == 1000
    assert resnet50["full"]["estimate_s"] > resnet50["baseline"]["estimate_s"]
    mtt = {c["cell"]: c for c in queue["cells"] if c["experiment"] == "mtt_cifar10_jpeg_1_resnet18"}
    assert mtt["teacher"]["role"] == "import" and mtt["teacher"]["steps"] == 0  # the published teacher, scored


def _broken(queue, change):
    q = copy.deepcopy(queue)
    change(q)
    return q


@pytest.mark.parametrize("change, field", [
    (lambda q: q.update(extra=1), "'extra'"),
    (lambda q: q.pop("cost_model"), "'cost_model'"),
    (lambda q: q.update(schema=2), "'schema'"),
    (lambda q: q["cost_model"].update(rate_flops=0), "'cost_model'"),
    (lambda q: q["cells"][0].update(experiment="frepo_cifar10_jpeg_10_nonet"), "'cells[0].experiment'"),
    (lambda q: q["cells"][0].update(cell="dp_kd"), "'cells[0].cell'"),
    (lambda q: q["cells"].append(dict(q["cells"][0])), "cell'"),
    (lambda q: q["cells"][0].update(role="score"), "'cells[0].role'"),
    (lambda q: q["cells"].pop(0), "'cells[1].needs'"),  # a KD cell whose teacher is not listed before it
    (lambda q: q["cells"][0].update(steps=-1), "'cells[0].steps'"),
    (lambda q: q["cells"][0].update(estimate_s=float("nan")), "'cells[0].estimate_s'"),
    (lambda q: q["cells"][0].pop("flops"), "'cells[0].flops'"),
])
def test_a_bad_queue_is_one_error_naming_the_file_and_field(queue, tmp_path, change, field):
    path = tmp_path / "queue.json"
    path.write_text(json.dumps(_broken(queue, change)))
    with pytest.raises(campaign.CampaignError, match=re.escape(f"{path}: field ") + ".*" + re.escape(field)):
        campaign.read_queue(path)


def test_an_unreadable_queue_is_an_error(tmp_path):
    (tmp_path / "queue.json").write_text("{")
    with pytest.raises(campaign.CampaignError, match="not JSON"):
        campaign.read_queue(tmp_path / "queue.json")
    with pytest.raises(campaign.CampaignError, match="cannot be read"):
        campaign.read_queue(tmp_path / "absent.json")
    assert campaign.main(["check", "--queue", str(tmp_path / "queue.json")]) == 2


def _record(experiment, cells, **scale):
    record = results_record.read_record(PAPER_RECORD)
    record["experiment"] = experiment
    record["cells"] = [c for c in record["cells"] if c["cell"] in cells]
    record["scale"].update(scale)
    return record


def test_done_markers_are_paper_scale_cells_with_accuracies_in_results(queue, tmp_path):
    experiment = "frepo_cifar10_jpeg_10_vgg11"
    results_record.write_record(tmp_path / "vgg.json", _record(experiment, {"teacher", "baseline"}))
    results_record.write_record(tmp_path / "vgg_w16.json", _record(experiment, {"full"}, width=16))  # not the paper's
    diverged = _record(experiment, {"no_kd"})
    diverged["cells"][0].update(final_test_accuracy=None, diverged={"epoch": 3, "step": 3, "seeds": [0]})
    results_record.write_record(tmp_path / "vgg_diverged.json", diverged)
    done = campaign.done_cells(tmp_path)
    assert (
        set(done) == {(experiment, "teacher"), (experiment, "baseline")} and done[(experiment, "teacher")] == "vgg.json"
    )
    left = [(c["experiment"], c["cell"]) for c in campaign.pending(queue, done)]
    assert (experiment, "baseline") not in left and (experiment, "full") in left and (experiment, "no_kd") in left
    assert set(campaign.done_cells(tmp_path, paper_scale=False)) >= {(experiment, "full")}


def test_a_cell_starts_only_if_its_estimate_fits(queue):
    cells = {c["cell"]: c for c in queue["cells"] if c["experiment"] == "frepo_cifar10_jpeg_10_alexnet"}
    q = dict(queue, cells=[cells[n] for n in ("teacher", "baseline", "full", "no_dp_kd")])
    t, b, f, n = (cells[k]["estimate_s"] for k in ("teacher", "baseline", "full", "no_dp_kd"))
    units, skipped = campaign.plan(q, {}, t + b + n + 1)  # the Full does not fit; the smaller cell after it does
    assert [[c["cell"] for c in u] for u in units] == [["baseline"], ["no_dp_kd"]]
    assert [(s["cell"], s["reason"]) for s in skipped] == [
        ("teacher", "deferred: starts with its experiment's first KD cell"),  # not trained for nothing
        ("full", f"estimate {t + f:.0f} s (with its teacher, which this workdir lacks) > {t + n + 1:.0f} s left")]
    units, skipped = campaign.plan(q, {}, t + b + f + n + 1)
    assert [[c["cell"] for c in u] for u in units] == [["baseline"], ["teacher", "full"], ["no_dp_kd"]]
    assert [s["cell"] for s in skipped] == ["teacher"]
    units, skipped = campaign.plan(q, {}, 0.5 * min(t, b, n))
    assert not units and [s["cell"] for s in skipped] == ["teacher", "baseline", "full", "no_dp_kd"]
    alone = dict(q, cells=[cells["teacher"], cells["baseline"]])  # no KD cell left: the teacher runs alone
    assert [[c["cell"] for c in u] for u in campaign.plan(alone, {}, t + b + 1)[0]] == [["teacher"], ["baseline"]]


def test_a_kd_cell_brings_its_teacher_unless_the_workdir_has_it(queue):
    experiment = "frepo_cifar10_jpeg_10_alexnet"
    cells = {c["cell"]: c for c in queue["cells"] if c["experiment"] == experiment}
    done = {(experiment, "teacher"): "r.json", (experiment, "baseline"): "r.json"}  # recorded, but not on this machine
    q = dict(queue, cells=[cells["teacher"], cells["full"]])
    t, f = cells["teacher"]["estimate_s"], cells["full"]["estimate_s"]
    units, _ = campaign.plan(q, done, t + f + 1)
    assert [[c["cell"] for c in u] for u in units] == [["teacher", "full"]]
    units, skipped = campaign.plan(q, done, f + 0.5 * t)
    assert not units and "with its teacher" in skipped[0]["reason"]
    units, _ = campaign.plan(q, done, f + 1, finished_here={(experiment, "teacher")})
    assert [[c["cell"] for c in u] for u in units] == [["full"]]


def test_one_cell_may_end_in_a_following_call(queue):
    cells = {c["cell"]: c for c in queue["cells"] if c["experiment"] == "frepo_cifar10_jpeg_10_resnet50"}
    q = dict(queue, cells=[cells["teacher"], cells["full"], cells["baseline"]])
    t, f = cells["teacher"]["estimate_s"], cells["full"]["estimate_s"]
    assert f + t > 560  # longer than one call
    units, skipped = campaign.plan(q, {}, 560, next_s=300)
    assert [[c["cell"] for c in u] for u in units] == [["teacher", "full"]]  # the baseline waits: no time left
    assert [s["cell"] for s in skipped] == ["teacher", "baseline"]
    units, skipped = campaign.plan(q, {}, 560)  # without a following call the Full never starts
    assert [[c["cell"] for c in u] for u in units] == [["baseline"]]
    assert [s["cell"] for s in skipped] == ["teacher", "full"]


def test_toy_estimates_are_divided_by_the_toy_epoch_divisor(queue):
    cell = queue["cells"][0]
    assert campaign.cell_estimate(cell, toy=True) == cell["estimate_s"] / campaign.TOY["epoch_divisor"]


def test_cost_model_is_floored_by_the_launch_bound_step():
    model = campaign.CostModel(rate_flops=1e12, min_step_s=0.01, overhead_s=5.0)
    assert model.seconds(1e9, 100, 0.0, 0) == pytest.approx(5.0 + 100 * 0.01)
    assert model.seconds(1e11, 100, 2e12, 2) == pytest.approx(5.0 + 100 * 0.1 + 4.0)


@pytest.mark.parametrize("bf16", [False, True])
def test_measurement_preset_seeds_and_dtypes(bf16):
    (group,) = run_all.gpu_campaign_plan(bf16=bf16)
    labels = [c.label for c in group.cells]
    expected = ["jax_s1", "jax_s5", "jax_s16", "jax_s32", "torch_cl"]
    if bf16:
        expected += ["jax_s1_bf16", "jax_s5_bf16", "jax_s16_bf16", "jax_s32_bf16", "torch_cl_bf16"]
    assert labels == expected
    by_label = {c.label: c for c in group.cells}
    assert by_label["torch_cl"].config["channels_last"] and by_label["torch_cl"].config["device"] == "cuda"
    assert all(c.config["steps_per_call"] == run_all.CAMPAIGN_STEPS_PER_CALL for c in group.cells if c.lib == "jax")
    if bf16:
        assert by_label["jax_s32_bf16"].config["compute_dtype"] == "bfloat16"
        assert by_label["torch_cl_bf16"].config["autocast"] == "bfloat16"
    assert group.scaling[0] == ("jax_s1", ["jax_s5", "jax_s16", "jax_s32"], "torch_cl")
