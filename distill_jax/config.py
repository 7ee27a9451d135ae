"""Config loading and validation.

Configs are ml_collections `get_config()` files that start from `default_config()` (the
schema, `distill_jax/defaults.py`), anywhere on disk.
`validate` runs before any work: a misspelt field or a value outside its allowed set
stops the run with a message naming the field and what is allowed (`errors.ConfigError`),
instead of being silently ignored hours later. It takes each allowed value from the module that
owns it, every mode's included, so it sits above training and distillation (README, Layout):
the launcher validates the config it launches and `experiments` each cell it builds; training
and distillation take a valid config and read only `defaults`.
"""
from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

from distill_jax import errors, models
from distill_jax.data import augment, pipeline, preprocess
from distill_jax.defaults import MODES, default_config
from distill_jax.distillation import common as distill_common
from distill_jax.distillation import frepo
from distill_jax.optim import OPTIMIZER_NAMES, schedules

# Enumerated fields: dotted name -> allowed values, each taken from the module that owns the rule.
CHOICES = {
    "mode": MODES,
    "data.source": pipeline.SOURCES,
    "data.preprocessing": ("auto",) + preprocess.RECIPES,
    "transfer.preprocessing": ("auto",) + preprocess.RECIPES,
    "model.norm": (None,) + models.NORM_KINDS,
    "model.weight_init": (None,) + models.INIT_KINDS,
    "model.conv": models.CONV_CHOICES,
    "train.optimizer": OPTIMIZER_NAMES,
    "train.lr_schedule": schedules.LR_SCHEDULE_KINDS,
    "train.compute_dtype": models.COMPUTE_DTYPES,
    "distill.method": distill_common.METHODS,
    "distill.init": distill_common.INITS,
    "distill.model": ("auto",) + tuple(sorted(set(distill_common.DEFAULT_MODEL.values()))),
    "distill.norm": (None,) + models.NORM_KINDS,
    "distill.frepo.optimizer": frepo.META_OPTIMIZERS,
    "distill.frepo.flip_double": (None, True, False),
}

# Numeric fields: dotted name -> (low, high) inclusive; None = unbounded.
RANGES = {
    "num_seeds": (1, None),
    "model.width": (1, None),
    "model.depth": (1, None),
    "data.per_class": (0, None),
    "data.label_temperature": (1e-6, None),
    "data.eval_batch_size": (1, None),
    "train.epochs": (1, None),
    "train.batch_size": (1, None),
    "train.stop_after_epochs": (0, None),
    "train.steps_per_call": (0, None),
    "train.learning_rate": (0.0, None),
    "train.weight_decay": (0.0, None),
    "train.warmup_fraction": (0.0, 1.0),
    "train.decay_at_fraction": (0.0, 1.0),
    "train.cycle_epochs": (1, None),
    "train.warmup_epochs": (0, None),
    "train.keep_rate.period_epochs": (1, None),
    "train.keep_rate.step": (0.0, 1.0),
    "train.keep_rate.min": (1e-3, 1.0),
    "train.keep_rate.final": (1e-3, 1.0),
    "train.augment.k": (0, None),
    "train.kd.alpha": (0.0, 1.0),
    "train.kd.temperature": (1e-6, None),
    "eval_every_epochs": (1, None),
    "log_every_steps": (1, None),
    "checkpoint_every_epochs": (1, None),
    "keep_checkpoints": (1, None),
    "distill.ipc": (1, None),
    "distill.steps": (1, None),
    "distill.stop_after_steps": (0, None),
    "distill.width": (1, None),
    "distill.depth": (1, None),
    "distill.augment_k": (0, None),
    "distill.checkpoint_every_steps": (1, None),
    "distill.dm.real_per_class": (1, None),
    "distill.dm.learning_rate": (0.0, None),
    "distill.dm.momentum": (0.0, 1.0),
    "distill.frepo.real_batch_size": (1, None),
    "distill.frepo.learning_rate": (0.0, None),
    "distill.frepo.pool_size": (1, None),
    "distill.frepo.max_online_updates": (1, None),
    "distill.frepo.online_learning_rate": (0.0, None),
    "distill.frepo.kernel_reg": (0.0, None),
}


def load_config_file(path: str | pathlib.Path) -> ml_collections.ConfigDict:
    """Imports a config file and returns its `get_config()`, or `get_config(arg)` for "file.py:arg"
    (the same convention as ml_collections' `--config file.py:arg`). A file without a callable
    `get_config`, or whose `get_config` returns anything but a ConfigDict, is an `errors.ConfigError`."""
    arg = None
    if not pathlib.Path(path).is_file() and ":" in str(path):
        path, arg = str(path).split(":", 1)
    path = pathlib.Path(path)
    if not path.is_file():
        raise errors.ConfigError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - a config file's own error, reported with its name
        raise errors.ConfigError(f"config file {path} cannot be loaded: {type(err).__name__}: {err}") from err
    if not callable(getattr(module, "get_config", None)):
        raise errors.ConfigError(f"config file {path} defines no get_config() function; expected one that returns the "
                                 "config (a ConfigDict, e.g. distill_jax.config.default_config() with fields changed)")
    config = module.get_config() if arg is None else module.get_config(arg)
    if not isinstance(config, ml_collections.ConfigDict):
        raise errors.ConfigError(
            f"config file {path}: get_config() returned {_short(config)} ({type(config).__name__}); "
            "expected a ConfigDict (is its return statement missing?)"
        )
    return config


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _flatten(cfg, prefix=""):
    out = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every field against the default schema; returns the config unchanged."""
    schema = _flatten(default_config())
    fields = _flatten(config)
    for name in fields:
        if name not in schema:
            parent = name.rsplit(".", 1)[0] + "." if "." in name else ""
            siblings = sorted(n[len(parent):] for n in schema if n.startswith(parent) and "." not in n[len(parent):])
            raise errors.ConfigError(f"unknown config field '{name}'; fields allowed here: {', '.join(siblings)}")
    for name, allowed in CHOICES.items():
        if name in fields and fields[name] not in allowed:
            raise errors.ConfigError(f"config field '{name}' = {fields[name]!r}; allowed values: {allowed}")
    for name, (low, high) in RANGES.items():
        value = fields.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise errors.ConfigError(f"config field '{name}' = {value!r}; expected a number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise errors.ConfigError(
                f"config field '{name}' = {value!r}; allowed range: [{low}, {high if high is not None else 'inf'}]"
            )
    _validate_model(config)
    _validate_combinations(config)
    _validate_schedules(config)
    return config


def _validate_model(config):
    if config.model.name not in models.MODEL_NAMES:
        raise errors.ConfigError(
            f"config field 'model.name' = {config.model.name!r}; allowed values: {models.MODEL_NAMES}"
        )
    for option, value in models.options_from_config(config.model).items():
        try:
            models.check_options(config.model.name, {option: value})
        except ValueError as err:
            raise errors.ConfigError(f"config field 'model.{option}' = {value!r}: {err}") from None


def _validate_schedules(config):
    """The keep-rate phases must fit the epochs and the lr schedule must be buildable: both are
    known from the config alone, so they are checked before any data is loaded."""
    t = config.train
    if t.keep_rate.enabled:
        kr = t.keep_rate
        if kr.step <= 0:
            raise errors.ConfigError(f"config field 'train.keep_rate.step' = {kr.step!r}; the keep rate must drop by a "
                                     "step > 0 each period (disable train.keep_rate for a constant rate)")
        try:
            starts = schedules.keep_rate_phase_starts(t.epochs, period_epochs=kr.period_epochs, keep_step=kr.step,
                                                      min_keep=kr.min, final_keep=kr.final)
        except ValueError as err:
            raise errors.ConfigError(f"config fields 'train.keep_rate.*' and 'train.epochs': {err}") from None
        if starts[-1] >= t.epochs:
            raise errors.ConfigError(
                f"config fields 'train.keep_rate.*': the schedule's phases start at epochs {starts}, but "
                f"train.epochs = {t.epochs} ends before the last (final-rate) phase; give at least "
                f"{starts[-1] + 1} epochs or a shorter train.keep_rate.period_epochs")
    if t.lr_schedule == "periodic" and t.warmup_epochs > t.cycle_epochs:
        raise errors.ConfigError(
            f"config field 'train.warmup_epochs' = {t.warmup_epochs} exceeds 'train.cycle_epochs' = "
            f"{t.cycle_epochs}: the warm-up must fit in one cycle"
        )


def _validate_combinations(config):
    if config.data.source == "distilled" and not config.data.distilled_path:
        raise errors.ConfigError(
            "config field 'data.distilled_path' is empty but data.source = 'distilled'; give the set's path"
        )
    if config.data.get("preprocessing_path") and not pathlib.Path(config.data.preprocessing_path).is_file():
        raise errors.ConfigError(
            f"config field 'data.preprocessing_path' = {config.data.preprocessing_path!r}: no such file "
            "(a fitted transform saved by distill_jax.data.preprocess; \"\" fits one on the training split)"
        )
    if config.train.keep_rate.enabled and not config.model.get("droppath"):
        raise errors.ConfigError("config field 'train.keep_rate.enabled' is True but 'model.droppath' is not: "
                                 "the keep-rate schedule needs a network with DropPath blocks")
    if config.train.kd.enabled and not config.train.kd.teacher_path:
        raise errors.ConfigError("config field 'train.kd.teacher_path' is empty but train.kd.enabled = True; "
                                 "train a teacher first (mode 'train' with the teacher's config) and give its workdir")
    ops = [o for o in config.train.augment.ops.split(",") if o]
    for op in ops:
        if op not in augment.DSA_OPS:
            raise errors.ConfigError(f"config field 'train.augment.ops' names '{op}'; allowed ops: {augment.DSA_OPS}")
    if config.train.augment.k > len(ops):
        raise errors.ConfigError(
            f"config field 'train.augment.k' = {config.train.augment.k} exceeds the {len(ops)} ops listed in "
            "'train.augment.ops'"
        )
