"""The distill-jax command line (distill_jax.cli)."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from distill_jax import cli
from test_torch_pickle import tensor, write_torch_file

JSON_KEYS = {
    "format",
    "num_images",
    "image_shape",
    "label_kind",
    "num_classes",
    "class_counts",
    "value_range",
    "preprocessing",
}


@pytest.fixture
def toy_set(tmp_path):
    """A 4-image reference-code pair (NCHW 3x5x2): classes [0, 1, 1, 2], pixels k / 120 for k = 0..119."""
    images = (np.arange(4 * 3 * 5 * 2, dtype=np.float32) / 120).reshape(4, 3, 5, 2)
    folder = tmp_path / "toy_mtt"
    folder.mkdir()
    write_torch_file(folder / "images_best.pt", tensor(images))
    write_torch_file(folder / "labels_best.pt", tensor(np.array([0, 1, 1, 2], dtype=np.int64)))
    return folder, images


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inspect_json(toy_set, capsys):
    folder, images = toy_set
    code, out, err = run(["inspect", folder, "--json"], capsys)
    assert code == 0 and err == ""
    summary = json.loads(out)
    assert JSON_KEYS <= set(summary)
    assert summary["format"] == "pt_pair" and summary["num_images"] == 4
    assert summary["image_shape"] == [5, 2, 3] and summary["label_kind"] == "index"
    assert summary["num_classes"] == 3 and summary["class_counts"] == [1, 2, 1]
    assert summary["preprocessing"] == "zca_mtt"
    value_range = summary["value_range"]
    assert value_range["min"] == 0.0 and value_range["max"] == pytest.approx(119 / 120)
    assert value_range["mean"] == pytest.approx(59.5 / 120)
    assert value_range["std"] == pytest.approx(np.std(np.arange(120) / 120), rel=1e-6)
    assert set(summary["sha256"]) == {"images_best.pt", "labels_best.pt"}


def test_inspect_text(toy_set, capsys):
    folder, _ = toy_set
    code, out, _ = run(["inspect", folder, "--preprocessing", "none"], capsys)
    assert code == 0
    lines = dict(line.split(":", 1) for line in out.splitlines() if not line.startswith(" "))
    assert lines["format"].strip() == "pt_pair (source: mtt)"
    assert lines["images"].strip() == "4 x 5x2x3 (NHWC float32)"
    assert lines["labels"].strip() == "index, 3 classes"
    assert lines["class counts"].strip() == "1 2 1"
    assert lines["preprocessing"].strip() == "none"
    assert "images_best.pt" in out and "labels_best.pt" in out


def test_convert_then_inspect(toy_set, tmp_path, capsys):
    folder, images = toy_set
    target = tmp_path / "toy.npz"
    code, out, _ = run(["convert", folder, target, "--preprocessing", "standardize"], capsys)
    assert code == 0 and str(target) in out and target.is_file()
    code, out, _ = run(["inspect", target, "--json"], capsys)
    summary = json.loads(out)
    assert summary["format"] == "distill_jax" and summary["source"] == "mtt"
    assert summary["preprocessing"] == "standardize" and summary["class_counts"] == [1, 2, 1]
    with np.load(target) as archive:
        np.testing.assert_array_equal(archive["images"], np.transpose(images, (0, 2, 3, 1)))


def test_bad_input_exits_nonzero_without_traceback(tmp_path, capsys):
    code, out, err = run(["inspect", tmp_path / "nowhere"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("distill-jax: error: ") and "nowhere" in err and "Traceback" not in err


def test_unsafe_file_is_reported(tmp_path, capsys):
    folder = tmp_path / "evil"
    folder.mkdir()
    write_torch_file(folder / "images_best.pt", {}, payload=b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.")
    write_torch_file(folder / "labels_best.pt", tensor(np.arange(2)))
    code, _, err = run(["inspect", folder], capsys)
    assert code == 2 and "refusing to load global 'os.system'" in err and "Traceback" not in err


def test_option_not_for_this_format(toy_set, capsys):
    folder, _ = toy_set
    code, _, err = run(["inspect", folder, "--experiment", "1"], capsys)
    assert code == 2 and "['experiment'] do not apply to format 'pt_pair'" in err


def test_usage_errors_and_help(capsys):
    assert run([], capsys)[0] == 2
    code, _, err = run(["inspect", "x", "--format", "nope"], capsys)
    assert code == 2 and "invalid choice" in err
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "inspect" in out and "convert" in out


def test_new_subcommands_plug_in(monkeypatch, capsys):
    def register_hello(subparsers):
        parser = subparsers.add_parser("hello", help="greet")
        parser.add_argument("--name", default="world")
        parser.set_defaults(handler=lambda args: print(f"hello {args.name}") or 3)

    monkeypatch.setattr(cli, "SUBCOMMANDS", cli.SUBCOMMANDS + [register_hello])
    assert run(["hello", "--name", "lead"], capsys)[:2] == (3, "hello lead\n")
    assert "greet" in cli.build_parser().format_help()


def test_installed_console_script(toy_set):
    folder, _ = toy_set
    script = pathlib.Path(sys.executable).parent / "distill-jax"
    assert script.is_file(), f"console script {script} is not installed (pip install -e .)"
    result = subprocess.run(
        [str(script), "inspect", str(folder), "--json"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["class_counts"] == [1, 2, 1]
    failed = subprocess.run(
        [str(script), "inspect", str(folder / "missing")], capture_output=True, text=True, timeout=120
    )
    assert failed.returncode == 2 and "Traceback" not in failed.stderr and "missing" in failed.stderr


@pytest.mark.parametrize(
    "name, label_kind, count",
    [("cifar10_1_mtt", "index", 10), ("cifar10_1_frepo", "vector", 10), ("cifar10_10_frepo", "vector", 100)],
)
def test_inspect_shared_sets(shared_data, capsys, name, label_kind, count):
    code, out, _ = run(["inspect", shared_data / "distilled" / name, "--json"], capsys)
    summary = json.loads(out)
    assert code == 0 and summary["num_images"] == count and summary["image_shape"] == [32, 32, 3]
    assert summary["label_kind"] == label_kind and summary["class_counts"] == [count // 10] * 10
