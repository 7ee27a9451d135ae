"""Mode dispatch: every mode a config may name runs a function of (config, workdir); any other
mode is refused in one line before any work."""
import inspect

import pytest

from distill_jax import config as config_lib
from distill_jax import launcher, modes
from distill_jax.training import loop


@pytest.mark.parametrize("mode", config_lib.CHOICES["mode"])
def test_every_mode_a_config_may_name_dispatches_to_a_function_of_config_and_workdir(mode):
    function = modes.mode_function(mode)
    assert callable(function)
    inspect.signature(function).bind("config", "workdir")  # TypeError if it cannot be called as fn(config, workdir)


def test_the_training_modes_run_the_training_loop():
    assert {modes.mode_function(mode) for mode in ("train", "teacher", "student")} == {loop.train_and_evaluate}


def test_an_unknown_mode_is_one_line_and_exit_code_2_before_any_work(tmp_path, capsys):
    config = config_lib.default_config()
    config.mode = "fly"
    workdir = tmp_path / "run"
    assert launcher.launch(lambda: config, workdir) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config field 'mode' = 'fly'" in err
    assert all(repr(mode) in err for mode in config_lib.CHOICES["mode"])  # the allowed modes are listed
    assert not workdir.exists()


def test_mode_function_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="unknown mode 'fly'; allowed modes: .*'train'"):
        modes.mode_function("fly")
