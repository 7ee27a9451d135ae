"""Optimisers and schedules with the reference code's semantics (docs/method.md §2.4, §2.6)."""
from distill_jax.optim.optimizers import OPTIMIZER_NAMES, make_optimizer
from distill_jax.optim.schedules import (
    LR_SCHEDULE_KINDS,
    constant,
    keep_rate_phase_starts,
    keep_rate_schedule,
    make_lr_schedule,
    periodic_warmup_cosine,
    step_decay,
    warmup_cosine,
)

__all__ = [
    "OPTIMIZER_NAMES",
    "make_optimizer",
    "LR_SCHEDULE_KINDS",
    "constant",
    "keep_rate_phase_starts",
    "keep_rate_schedule",
    "make_lr_schedule",
    "periodic_warmup_cosine",
    "step_decay",
    "warmup_cosine",
]
