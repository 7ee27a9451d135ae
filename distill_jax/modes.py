"""Mode dispatch: `config.mode` names what a launch does.

Modes are looked up lazily ("module:function") so that a launch imports only what it uses.
Each mode function has the signature `fn(config, workdir) -> dict` and writes its own
results into `workdir`.
"""
from __future__ import annotations

import importlib

# Mode -> its function. The names are the schema's (`distill_jax.defaults.MODES`, what the config
# allows; tests/test_modes.py checks that both name the same modes).
MODES = {
    "train": "distill_jax.training.loop:train_and_evaluate",      # any network on real or distilled data
    "teacher": "distill_jax.training.loop:train_and_evaluate",    # the training network (ConvNet) of a distilled set
    "student": "distill_jax.training.loop:train_and_evaluate",    # a test network with the method's parts
    "distill": "distill_jax.distillation.distill_mode:run_distillation", # produce a distilled set (FRePo, DM)
    "evaluate": "distill_jax.evaluate:run_evaluation",            # accuracy of saved networks on a test split
    "reproduce": "distill_jax.experiments.reproduce:run_reproduction",  # every cell of an experiment, and its table
    "transfer": "distill_jax.experiments.transfer:run_transfer",  # a pool of networks on one set: Baseline vs Full
}


def mode_function(mode: str):
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; allowed modes: {tuple(MODES)}")
    module_name, function_name = MODES[mode].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def run(config, workdir) -> dict:
    """Runs `config.mode` with `config` in `workdir`."""
    return mode_function(config.mode)(config, workdir)
