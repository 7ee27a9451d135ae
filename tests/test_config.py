"""Config validation: unknown fields and bad values stop the run with a clear message."""
import pathlib
import subprocess
import sys

import pytest

from distill_jax import config as config_lib
from distill_jax import errors
from distill_jax.errors import ConfigError
from distill_jax.experiments import registry, reproduce
from distill_jax.report.results_record import Role

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_default_config_is_valid():
    config_lib.validate(config_lib.default_config())


@pytest.mark.parametrize(
    "path", sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py"), ids=lambda p: p.name
)
def test_every_shipped_config_is_valid(path):
    config = config_lib.load_config_file(path)
    if config.data.source == "distilled":
        assert config.data.distilled_path
    config_lib.validate(config)


def test_unknown_field_is_named_with_allowed_siblings():
    config = config_lib.default_config()
    config.unlock()
    config.train.learnig_rate = 0.1
    with pytest.raises(ConfigError, match=r"train\.learnig_rate.*learning_rate"):
        config_lib.validate(config)


def test_bad_choice_names_field_and_allowed_values():
    config = config_lib.default_config()
    config.train.optimizer = "adagrad"
    with pytest.raises(ConfigError, match=r"train\.optimizer.*'adagrad'.*lion"):
        config_lib.validate(config)


def test_out_of_range_value():
    config = config_lib.default_config()
    config.train.kd.alpha = 1.5
    with pytest.raises(ConfigError, match=r"train\.kd\.alpha.*\[0\.0, 1\.0\]"):
        config_lib.validate(config)


def test_option_the_network_does_not_take():
    config = config_lib.default_config()
    config.model.name = "convnet"
    config.model.improved_shortcut = True
    with pytest.raises(ConfigError, match=r"model\.improved_shortcut.*convnet"):
        config_lib.validate(config)


def test_unknown_network_name():
    config = config_lib.default_config()
    config.model.name = "resnet19"
    with pytest.raises(ConfigError, match=r"model\.name.*resnet18"):
        config_lib.validate(config)


def test_keep_rate_schedule_needs_droppath_network():
    config = config_lib.default_config()
    config.train.keep_rate.enabled = True
    with pytest.raises(ConfigError, match=r"model\.droppath"):
        config_lib.validate(config)


def test_kd_without_teacher_says_how_to_train_one():
    config = config_lib.default_config()
    config.train.kd.enabled = True
    with pytest.raises(ConfigError, match=r"teacher_path.*train a teacher"):
        config_lib.validate(config)


def test_unknown_augment_op():
    config = config_lib.default_config()
    config.train.augment.ops = "flip,jitter"
    with pytest.raises(ConfigError, match=r"jitter.*allowed ops"):
        config_lib.validate(config)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        config_lib.load_config_file("/nonexistent/config.py")


def _launch_default_with(tmp_path, override: str) -> subprocess.CompletedProcess:
    """The launcher on configs/default.py with one command-line override."""
    command = [sys.executable, str(ROOT / "launch" / "main.py"), "--config", str(ROOT / "configs" / "default.py"),
               "--workdir", str(tmp_path), override]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_command_line_override_of_unknown_field_fails(tmp_path):
    out = _launch_default_with(tmp_path, "--config.train.nonexistent=3")
    assert out.returncode != 0
    assert "nonexistent" in out.stderr


def test_command_line_bad_value_fails_with_message(tmp_path):
    out = _launch_default_with(tmp_path, "--config.train.lr_schedule=linear")
    assert out.returncode != 0
    assert "train.lr_schedule" in out.stderr and "warmup_cosine" in out.stderr


def test_config_error_has_one_home_in_errors():
    """Validation raises `errors.ConfigError`; `distill_jax.config` keeps no second name for it."""
    config = config_lib.default_config()
    config.num_seeds = 0
    with pytest.raises(ConfigError, match=r"num_seeds.*\[1, inf\]") as err:
        config_lib.validate(config)
    assert type(err.value) is errors.ConfigError and isinstance(err.value, errors.UserError)
    assert not hasattr(config_lib, "ConfigError")


def test_an_experiment_validates_every_cell_before_the_first_runs(tmp_path):
    """The cells an experiment builds are checked before any cell runs: a bad last cell stops
    the reproduction before the first cell loads data or writes its directory."""
    first = config_lib.default_config()
    first.data.dataset, first.data.data_dir = "npz", str(tmp_path / "no_data")  # would fail to load, not validate
    last = config_lib.default_config()
    last.train.optimizer = "adagrad"
    cells = [registry.Cell("first", "first", first, Role.TEACHER), registry.Cell("last", "last", last, Role.STUDENT)]
    workdir = tmp_path / "work"
    workdir.mkdir()
    with pytest.raises(ConfigError, match=r"train\.optimizer.*'adagrad'"):
        reproduce.run_cells(cells, workdir, config_lib.default_config().reproduce, "test experiment")
    assert list(workdir.iterdir()) == []
