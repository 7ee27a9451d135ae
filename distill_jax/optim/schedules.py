"""Keep-rate and learning-rate schedules (docs/method.md §2.4, §2.6).

Every schedule is a pure function of the step (or epoch) written in jnp, so it
can run inside ``jax.jit`` with a traced step (the keep rate is a traced value
of the train step: changing it must not recompile), serve as an optax
schedule, and also accept Python / numpy ints or arrays of steps (handy for
plots). Outputs are float32 jnp arrays with the step's shape.

Everything is expressed in epochs, so a scaled-down run keeps the structure:
a 40-epoch run with 5-epoch periods goes through the same phases as the
4000-epoch run with 500-epoch periods.

First-step convention: warm-ups start from exactly 0 at step 0 ("from 0",
docs/method.md §2.6), so the very first update of a warm-up schedule (and of each
periodic restart) has learning rate 0; it still feeds the optimiser's moments.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import jax.numpy as jnp

__all__ = [
    "keep_rate_schedule",
    "keep_rate_phase_starts",
    "constant",
    "step_decay",
    "warmup_cosine",
    "periodic_warmup_cosine",
    "make_lr_schedule",
    "LR_SCHEDULE_KINDS",
]

Schedule = Callable[..., jnp.ndarray]

LR_SCHEDULE_KINDS = ("constant", "step", "warmup_cosine", "periodic")


def _fail(func: str, message: str) -> None:
    raise ValueError(f"schedules.py {func}: {message}")


def _check_number(func: str, name: str, value, *, low=None, high=None, low_open=False) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        _fail(func, f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        _fail(func, f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        _fail(func, f"{name} must be <= {high}, got {value}")


def _as_float(x) -> jnp.ndarray:
    return jnp.asarray(x, dtype=jnp.float32)


# --------------------------------------------------------------------------- keep rate


def _num_drop_periods(keep_step: float, min_keep: float) -> int:
    # round() absorbs float noise such as (1 - 0.5) / 0.1 = 4.999...
    return int(round((1.0 - min_keep) / keep_step))


def _check_keep_args(func, total_epochs, period_epochs, keep_step, min_keep, final_keep) -> int:
    _check_number(func, "total_epochs", total_epochs, low=0, low_open=True)
    _check_number(func, "period_epochs", period_epochs, low=0, low_open=True)
    _check_number(func, "keep_step", keep_step, low=0, low_open=True)
    _check_number(func, "min_keep", min_keep, low=0, high=1, low_open=True)
    _check_number(func, "final_keep", final_keep, low=0, high=1, low_open=True)
    n_drops = _num_drop_periods(keep_step, min_keep)
    phase3_start = period_epochs * (n_drops + 1)
    if phase3_start >= total_epochs:
        _fail(
            func,
            f"the three phases do not fit in total_epochs={total_epochs}: phase 1 ({period_epochs} epochs) "
            f"and {n_drops} drop periods of {period_epochs} epochs put phase 3 at epoch {phase3_start}; "
            f"total_epochs must be greater than that",
        )
    return n_drops


def keep_rate_schedule(
    total_epochs: float,
    period_epochs: float = 500,
    keep_step: float = 0.1,
    min_keep: float = 0.5,
    final_keep: float = 0.8,
) -> Schedule:
    """Three-phase DropPath keep rate p(epoch) of docs/method.md §2.4.

    Phase 1, epochs [0, period): p = 1. Phase 2: the k-th following period
    (k = 1..n, n = round((1 - min_keep) / keep_step)) has p = 1 - k*keep_step,
    never below min_keep. Phase 3, from period*(n+1) to the end (and beyond):
    p = final_keep. ``epoch`` may be fractional (step / steps_per_epoch).
    Defaults are the ResNet-18 setting; ResNet-50 uses keep_step=0.13,
    min_keep=0.35.
    """
    n_drops = _check_keep_args(
        "keep_rate_schedule", total_epochs, period_epochs, keep_step, min_keep, final_keep
    )

    def keep_rate(epoch):
        epoch = _as_float(epoch)
        period_index = jnp.floor(epoch / period_epochs)
        dropped = jnp.maximum(1.0 - period_index * keep_step, min_keep)
        p = jnp.where(period_index <= n_drops, dropped, final_keep)
        return jnp.where(period_index < 1, 1.0, p).astype(jnp.float32)

    return keep_rate


def keep_rate_phase_starts(
    total_epochs: float,
    period_epochs: float = 500,
    keep_step: float = 0.1,
    min_keep: float = 0.5,
    final_keep: float = 0.8,
) -> list[float]:
    """Epochs at which each constant-keep-rate phase begins, 0 included.

    Same arguments as ``keep_rate_schedule``; these are the restart points of
    the periodic learning rate. ResNet-18 setting: [0, 500, ..., 3000].
    """
    n_drops = _check_keep_args(
        "keep_rate_phase_starts", total_epochs, period_epochs, keep_step, min_keep, final_keep
    )
    return [k * period_epochs for k in range(n_drops + 2)]


# --------------------------------------------------------------------------- learning rate


def constant(peak: float) -> Schedule:
    """lr = peak at every step."""
    _check_number("constant", "peak", peak, low=0)

    def schedule(step):
        return jnp.full(jnp.shape(step), peak, dtype=jnp.float32)

    return schedule


def step_decay(
    peak: float, total_steps: int, decay_at_fraction: float = 0.5, factor: float = 0.1
) -> Schedule:
    """Baseline schedule: peak, then peak*factor from step total*fraction on.

    With 1000 epochs the decay takes effect at the first step of epoch 500.
    """
    _check_number("step_decay", "peak", peak, low=0)
    _check_number("step_decay", "total_steps", total_steps, low=0, low_open=True)
    _check_number("step_decay", "decay_at_fraction", decay_at_fraction, low=0, high=1)
    _check_number("step_decay", "factor", factor, low=0)
    decay_step = decay_at_fraction * total_steps

    def schedule(step):
        step = _as_float(step)
        return jnp.where(step < decay_step, peak, peak * factor).astype(jnp.float32)

    return schedule


def _warmup_cosine_curve(t, peak, total, warmup):
    """Linear 0 -> peak over [0, warmup], cosine peak -> 0 over [warmup, total], 0 after."""
    ramp = t / max(warmup, 1e-30)
    decay_progress = jnp.clip((t - warmup) / (total - warmup), 0.0, 1.0)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * decay_progress))
    lr = jnp.where(t < warmup, ramp, cosine)
    return (peak * jnp.where(t < 0, 0.0, lr)).astype(jnp.float32)


def warmup_cosine(peak: float, total_steps: int, warmup_fraction: float = 0.1) -> Schedule:
    """Linear warm-up from exactly 0 at step 0 to peak over the first
    ``warmup_fraction`` of training, then cosine to 0 at ``total_steps``
    (0 afterwards)."""
    _check_number("warmup_cosine", "peak", peak, low=0)
    _check_number("warmup_cosine", "total_steps", total_steps, low=0, low_open=True)
    _check_number("warmup_cosine", "warmup_fraction", warmup_fraction, low=0, high=1)
    if warmup_fraction >= 1:
        _fail("warmup_cosine", f"warmup_fraction must be < 1 to leave room for the cosine, got {warmup_fraction}")
    warmup_steps = warmup_fraction * total_steps

    def schedule(step):
        return _warmup_cosine_curve(_as_float(step), peak, total_steps, warmup_steps)

    return schedule


def periodic_warmup_cosine(
    peak: float,
    steps_per_epoch: float,
    phase_start_epochs: Sequence[float],
    total_epochs: float,
    cycle_epochs: float = 1000,
    warmup_epochs: float = 100,
) -> Schedule:
    """Learning rate restarted at every keep-rate phase start (docs/method.md §2.6).

    At ``e`` epochs into a phase the lr is that of a ``cycle_epochs``-long
    warm-up + cosine (warm-up from 0 over ``warmup_epochs``, cosine to 0 at
    ``cycle_epochs``), cut where the next phase starts. With 500-epoch phases
    each ends near 0.587 x peak; the last 1000-epoch phase is one full cycle
    ending at 0. A phase longer than the cycle stays at 0 after it. Epoch 0
    always starts a phase (it is added to ``phase_start_epochs`` if missing).
    Stepped per iteration: epoch = step / steps_per_epoch.
    """
    func = "periodic_warmup_cosine"
    _check_number(func, "peak", peak, low=0)
    _check_number(func, "steps_per_epoch", steps_per_epoch, low=0, low_open=True)
    _check_number(func, "total_epochs", total_epochs, low=0, low_open=True)
    _check_number(func, "cycle_epochs", cycle_epochs, low=0, low_open=True)
    _check_number(func, "warmup_epochs", warmup_epochs, low=0)
    if warmup_epochs >= cycle_epochs:
        _fail(func, f"warmup_epochs ({warmup_epochs}) must be < cycle_epochs ({cycle_epochs})")
    for s in phase_start_epochs:
        _check_number(func, "phase_start_epochs entries", s, low=0)
    starts = [float(s) for s in phase_start_epochs]
    if any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
        _fail(func, f"phase_start_epochs must be strictly increasing, got {list(phase_start_epochs)}")
    if starts and starts[-1] >= total_epochs:
        _fail(func, f"phase_start_epochs must lie before total_epochs={total_epochs}, got {list(phase_start_epochs)}")
    if not starts or starts[0] != 0.0:
        starts = [0.0] + starts
    starts_array = jnp.asarray(starts, dtype=jnp.float32)

    def schedule(step):
        epoch = _as_float(step) / steps_per_epoch
        started = epoch[..., None] >= starts_array
        current_start = jnp.max(jnp.where(started, starts_array, 0.0), axis=-1)
        offset = epoch - current_start
        return _warmup_cosine_curve(offset, peak, cycle_epochs, warmup_epochs)

    return schedule


_KIND_OPTIONS = {
    "constant": set(),
    "step": {"decay_at_fraction", "factor"},
    "warmup_cosine": {"warmup_fraction"},
    "periodic": {"phase_start_epochs", "cycle_epochs", "warmup_epochs"},
}
_ALL_OPTIONS = set().union(*_KIND_OPTIONS.values())


def make_lr_schedule(
    kind: str,
    peak: float,
    steps_per_epoch: float,
    total_epochs: float,
    *,
    total_steps: float | None = None,
    **options,
) -> Schedule:
    """Per-iteration lr schedule by name ('constant', 'step', 'warmup_cosine', 'periodic').

    Options: step -> decay_at_fraction, factor; warmup_cosine -> warmup_fraction;
    periodic -> phase_start_epochs (required, e.g. ``keep_rate_phase_starts``),
    cycle_epochs, warmup_epochs (scale these with the run length). A config
    may pass the options of every kind at once: those the chosen kind does not
    use are ignored, while a name no kind knows is an error (a typo).
    ``total_steps``, if given, must equal steps_per_epoch * total_epochs.
    """
    func = "make_lr_schedule"
    if kind not in _KIND_OPTIONS:
        _fail(func, f"unknown schedule kind {kind!r}; allowed: {list(LR_SCHEDULE_KINDS)}")
    unknown = set(options) - _ALL_OPTIONS
    if unknown:
        _fail(func, f"unknown option(s) {sorted(unknown)}; allowed: {sorted(_ALL_OPTIONS)}")
    _check_number(func, "steps_per_epoch", steps_per_epoch, low=0, low_open=True)
    _check_number(func, "total_epochs", total_epochs, low=0, low_open=True)
    derived_total = steps_per_epoch * total_epochs
    if total_steps is not None and not math.isclose(total_steps, derived_total):
        _fail(
            func,
            f"total_steps={total_steps} disagrees with steps_per_epoch * total_epochs = "
            f"{steps_per_epoch} * {total_epochs} = {derived_total}",
        )
    used = {k: v for k, v in options.items() if k in _KIND_OPTIONS[kind]}
    if kind == "constant":
        return constant(peak)
    if kind == "step":
        return step_decay(peak, derived_total, **used)
    if kind == "warmup_cosine":
        return warmup_cosine(peak, derived_total, **used)
    if "phase_start_epochs" not in used:
        _fail(func, "kind 'periodic' needs phase_start_epochs (see keep_rate_phase_starts)")
    return periodic_warmup_cosine(peak, steps_per_epoch, total_epochs=total_epochs, **used)


def from_config(t, steps_per_epoch: int):
    """The learning-rate schedule (of the step) and keep-rate schedule (of the epoch, None without
    DropPath) that the config section `train` (`t`) describes."""
    keep = None
    phase_starts = [0]
    if t.keep_rate.enabled:
        kr = t.keep_rate
        keep = keep_rate_schedule(t.epochs, period_epochs=kr.period_epochs, keep_step=kr.step,
                                            min_keep=kr.min, final_keep=kr.final)
        phase_starts = keep_rate_phase_starts(t.epochs, period_epochs=kr.period_epochs, keep_step=kr.step,
                                                        min_keep=kr.min, final_keep=kr.final)
    options = {
        "constant": {},
        "step": {"decay_at_fraction": t.decay_at_fraction},
        "warmup_cosine": {"warmup_fraction": t.warmup_fraction},
        "periodic": {"phase_start_epochs": phase_starts, "cycle_epochs": t.cycle_epochs,
                     "warmup_epochs": t.warmup_epochs},
    }[t.lr_schedule]
    lr = make_lr_schedule(t.lr_schedule, t.learning_rate, steps_per_epoch, t.epochs, **options)
    return lr, keep
