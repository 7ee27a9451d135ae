"""Mode dispatch."""
import pytest

from distill_jax import config as config_lib
from distill_jax import run
from distill_jax.training import loop


def test_every_mode_in_config_choices_is_dispatchable():
    assert set(config_lib.CHOICES["mode"]) == set(run.MODES)
    assert run.mode_function("train") is loop.train_and_evaluate


def test_unknown_mode():
    with pytest.raises(ValueError, match="allowed modes"):
        run.mode_function("fly")
