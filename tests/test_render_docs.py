"""docs/results.md and the README's result table are rendered from results/ (distill_jax.report.render_docs).

The first test is the guard: the committed files must equal a fresh rendering, so a number
reaches the docs only through a record. The others render small templates over records
written here.
"""
import copy
import json
import pathlib
import re

import pytest

from distill_jax import cli
from distill_jax.experiments import compare
from distill_jax.report import paper, render_docs, results_record

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_committed_docs_match_the_records():
    stale = render_docs.stale(REPO)
    assert not stale, f"{', '.join(stale)} differ from results/ and the templates: run `distill-jax render-docs`"


def test_results_page_speaks_to_users_and_carries_the_caveats():
    text = (REPO / render_docs.RESULTS_DOC).read_text()
    assert not re.search(r"session|lease|helper|issue [0-9]|/work/|/tmp/", text, re.IGNORECASE)
    assert paper.DROPPATH_CAVEAT in text and text.count(render_docs.TRANSCRIBED_LABEL) >= 1
    assert "{{" not in text and "}}" not in text
    for figure in re.findall(r"\(figures/([^)]+)\)", text):  # every figure it shows exists
        assert (REPO / "docs" / "figures" / figure).is_file(), figure


def test_every_figure_is_shown_by_the_docs():
    """docs/figures holds only what a page shows or names (no figure left behind by an edit)."""
    text = "\n".join((REPO / page).read_text() for page in (render_docs.RESULTS_DOC, "README.md", "docs/method.md",
                                                            "benchmarks/README.md"))
    figures = sorted(p.name for p in (REPO / "docs" / "figures").iterdir())
    assert figures and [f for f in figures if f"figures/{f}" not in text] == []


def test_compare_reads_the_published_numbers_from_their_one_owner():
    for key, experiment in paper.EXPERIMENTS.items():
        assert {c: v for c, (v, _) in compare.PAPER[key]["cells"].items()} == \
            {c: p.value for c, p in experiment["cells"].items()}


# ----------------------------------------------------------------------------- small renderings

def _record(transcribed: bool, finals: dict) -> dict:
    cells = []
    for name, values in finals.items():
        cells.append({"cell": name, "label": name, "role": "teacher" if name == "teacher" else "student",
                      "network": "resnet18", "width": 8, "norm": "batch", "epochs": 50, "optimizer": "lion",
                      "origin": "trained here", "kd_teacher": None, "seeds": list(range(len(values))),
                      "final_test_accuracy": values,
                      "last_step_train_accuracy": None if transcribed else {"per_seed": [90.0] * len(values),
                                                                            "mean": 90.0},
                      "wall_seconds": None})
    record = {"schema_version": 1, "kind": "reproduce", "experiment": "frepo_cifar10_jpeg_10_resnet18",
              "dataset": "cifar10_jpeg", "scale": None, "config_digest": None if transcribed else "0" * 64,
              "source": {"kind": "transcribed", "from": "docs at commit x", "reason": "the run's workdir was not kept"}
              if transcribed else {"kind": "run"},
              "command": "python launch/main.py --config c.py --workdir runs/x",
              "software": {} if transcribed else {"jax": "0.4"},
              "hardware": {"described": "as stated with the table", "stated": "a CPU"} if transcribed else
              {"described": "at run time", "backend": "cpu", "device_kinds": ["cpu"], "device_count": 1,
               "cpu": {"model": "Some CPU", "family": "6", "model_number": "1", "flags": ["avx2"]}, "cpu_count": 2,
               "machine": "x86_64"},
              "wall_seconds": None, "date": "2026-01-02", "cells": cells}
    return results_record.validate(record)


FINALS = {"teacher": [50.0, 51.0, 52.0], "baseline": [40.0, 41.0, 42.0], "no_dp_kd": [45.0, 46.0, 47.0],
          "no_kd": [44.0, 45.5, 47.5], "full": [55.0, 56.0, 57.0]}
README = "# x\n\nbefore\n\n{begin}\nold table\n{end}\n\nafter\n"


@pytest.fixture
def root(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "docs" / "templates").mkdir(parents=True)
    results_record.write_record(tmp_path / "results" / "old.json", _record(True, FINALS))
    results_record.write_record(tmp_path / "results" / "new.json", _record(False, FINALS))
    (tmp_path / "docs" / "templates" / "results.md").write_text("# Results\n\n{{ table:old }}\n\n{{ table:new }}\n")
    (tmp_path / "docs" / "templates" / "readme_results.md").write_text("{{ mean:new:full }}\n")
    (tmp_path / "docs" / "results.md").write_text("stale\n")
    (tmp_path / "README.md").write_text(README.format(begin=render_docs.BEGIN_MARKER, end=render_docs.END_MARKER))
    return tmp_path


def test_render_writes_both_files_and_only_the_readme_block(root, capsys):
    assert cli.main(["render-docs", "--check", "--root", str(root)]) == 1
    assert "run `distill-jax render-docs`" in capsys.readouterr().err
    assert cli.main(["render-docs", "--root", str(root)]) == 0
    readme = (root / "README.md").read_text()
    assert readme.startswith("# x\n\nbefore\n\n" + render_docs.BEGIN_MARKER) and readme.endswith(
        render_docs.END_MARKER + "\n\nafter\n")
    assert "56.00 ± 1.00" in readme and "old table" not in readme
    page = (root / "docs" / "results.md").read_text()
    assert page.count(render_docs.TRANSCRIBED_LABEL) == 1  # the transcribed record's table only
    old, new = page.split("Record `results/new.json`")[0], page.split("Record `results/old.json`")[1]
    assert render_docs.TRANSCRIBED_LABEL in old and render_docs.TRANSCRIBED_LABEL not in new
    assert (
        "| full | ResNet-18 (width 8, batch norm) | 50 | lion | no KD | 56.00 ± 1.00 "
        "| 55.00, 56.00, 57.00 | 90, 90, 90 |"
        in page
    )
    assert "CIFAR-10 (JPEG) test accuracy (%), **final epoch**" in page and "Some CPU" in page
    assert "```bash\npython launch/main.py --config c.py --workdir runs/x\n```" in page
    assert cli.main(["render-docs", "--check", "--root", str(root)]) == 0


@pytest.mark.parametrize("placeholder, expected", [
    ("{{ diff:new:full-baseline }}", "+15.0"),
    ("{{ diff:new:baseline-full:2 }}", "−15.00"),
    ("{{ order:new:full-baseline }}", "every Full seed above every Baseline seed"),
    ("{{ order:new:no_kd-no_dp_kd }}", "the seeds overlap"),
    ("{{ above:new:baseline-teacher }}", "below"),
    ("{{ xdiff:new:full:old:teacher }}", "+5.0"),
    ("{{ paper:frepo_cifar10_10_resnet18:full }}", "66.6"),
    ("{{ paperdiff:frepo_cifar10_10_resnet18:no_kd-no_dp_kd }}", "−0.9"),  # w/o KD against w/o DP & KD, not Baseline
    ("{{ gap:new:frepo_cifar10_10_resnet18:baseline,full }}", "10.6–20.9"),
    ("{{ params:resnet50:16 }}", "1.49 M"),
    ("{{ params:resnet50:64 }}", "23.5 M"),
    ("{{ labelprob:0.3:10 }}", "0.757"),
])
def test_placeholders_compute_from_records_and_the_published_numbers(root, placeholder, expected):
    ctx = render_docs.Context(render_docs.load_records(root / "results"))
    assert render_docs.render_template(placeholder, ctx) == expected


def test_training_accuracies_print_as_recorded_without_float32_noise(root):
    record = _record(False, {"full": [55.0, 56.0, 57.0]})
    record["cells"][0]["last_step_train_accuracy"] = {"per_seed": [74.0, 53.999996185302734, 97.3], "mean": 75.1}
    results_record.write_record(root / "results" / "noisy.json", record)
    ctx = render_docs.Context(render_docs.load_records(root / "results"))
    assert "| 55.00, 56.00, 57.00 | 74, 54, 97.3 |" in render_docs.render_template("{{ table:noisy }}", ctx)


def test_the_machine_of_a_record_in_words():
    cpu = {"model": "AMD EPYC", "family": "25", "model_number": "1", "flags": ["avx", "avx2", "fma"]}
    assert render_docs.machine_text({"described": "at run time", "backend": "cpu", "device_kinds": ["cpu"],
                                     "device_count": 1, "cpu": cpu, "cpu_count": 2}) == \
        "AMD EPYC, 2 cores (family 25, model 1, AVX2)"
    gpu = {"described": "at run time", "backend": "gpu", "device_kinds": ["NVIDIA H200"], "device_count": 1,
           "cpu": {**cpu, "flags": ["avx2", "avx512f"]}, "cpu_count": 16}
    assert (
        render_docs.machine_text(gpu)
        == "1 × NVIDIA H200 (gpu); host CPU AMD EPYC, 16 cores (family 25, model 1, AVX-512)"
    )
    assert render_docs.machine_text({"described": "as stated with the table", "stated": "a CPU"}) == "a CPU"


def test_orderings_and_scales_tables(root):
    ctx = render_docs.Context(render_docs.load_records(root / "results"))
    text = render_docs.render_template("{{ orderings:new=ours:frepo_cifar10_10_resnet18 }}", ctx)
    assert "| Lion vs AdamW (w/o DP & KD − Baseline) | +5.0, separated | +2.9 |" in text
    assert "| Full − teacher | +5.0, separated | +1.1 |" in text
    scales = render_docs.render_template("{{ scales:old=a,new=b:frepo_cifar10_10_resnet18 }}", ctx)
    assert "| Baseline | 41.00 ± 1.00 | 41.00 ± 1.00 | 61.9 ‡ |" in scales and "† FRePo's own ConvNet" in scales
    assert paper.caveats("x")[-1] == paper.DROPPATH_CAVEAT
    assert render_docs.render_template("{{ caveats:final epoch }}", ctx).count("\n- ") == 2


@pytest.mark.parametrize("template, message", [
    ("a\n{{ colour:new }}", r"template:2: unknown placeholder"),
    ("{{ table:missing }}", r"results/missing\.json: no such record"),
    ("{{ mean:new:nothing }}", r"new\.json: no cell 'nothing'"),
    ("{{ diff:new:full }}", r"expected A-B"),
    ("{{ mean:new }}", r"wrong arguments"),
    ("{{ paper:frepo_cifar10_jpeg_10_resnet18:full }}", r"no published numbers for"),
    ("{{ train:old:full }}", r"no last-step training accuracy"),
    ("{{ table:new", r"no placeholder"),
])
def test_template_errors_name_the_place(root, template, message):
    ctx = render_docs.Context(render_docs.load_records(root / "results"))
    with pytest.raises(render_docs.RenderError, match=message):
        render_docs.render_template(template, ctx)


def test_a_readme_without_its_markers_is_refused(root):
    (root / "README.md").write_text("# x\n")
    with pytest.raises(render_docs.RenderError, match="BEGIN GENERATED"):
        render_docs.render_all(root)


def test_a_record_no_document_shows_is_refused(root):
    results_record.write_record(root / "results" / "orphan.json", _record(False, FINALS))
    with pytest.raises(render_docs.RenderError, match="records no document shows: orphan"):
        render_docs.render_all(root)


def test_a_bad_record_stops_the_rendering_naming_it(root, capsys):
    bad = copy.deepcopy(_record(False, FINALS))
    bad["cells"][0]["final_test_accuracy"] = [1.0]
    (root / "results" / "new.json").write_text(json.dumps(bad))
    assert cli.main(["render-docs", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "new.json" in err and "cells[0].final_test_accuracy" in err
