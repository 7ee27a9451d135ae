"""Optimisers with the reference code's (PyTorch) semantics (docs/method.md §2.6, §2.7).

Built from optax primitives, each chain reproducing torch's update rule:

- ``lion``:  ``c = b1*m + (1-b1)*g;  p <- p*(1 - lr*wd) - lr*sign(c);
  m <- b2*m + (1-b2)*g`` with betas (0.95, 0.98) by default (the paper's
  values, not optax's (0.9, 0.99)).
- ``adamw``: torch AdamW: ``p <- p*(1 - lr*wd) - lr * m_hat / (sqrt(v_hat) + eps)``,
  betas (0.9, 0.999), eps 1e-8.
- ``sgd``:   torch SGD with L2 in the gradient:
  ``g <- g + wd*p;  buf <- momentum*buf + g;  p <- p - lr*buf`` (momentum 0.9).

Decoupled decay is multiplied by the *current* learning rate (schedule
included), as in torch. ``learning_rate`` is a float or a schedule
``step -> lr`` evaluated at the optimiser's step counter (0 for the first
update).
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Union

import optax

__all__ = ["make_optimizer", "OPTIMIZER_NAMES"]

LearningRate = Union[float, Callable[[Any], Any]]

OPTIMIZER_NAMES = ("lion", "adamw", "sgd")

_ALLOWED_KWARGS = {
    "lion": {"betas", "weight_decay_mask"},
    "adamw": {"betas", "eps", "weight_decay_mask"},
    "sgd": {"momentum", "nesterov", "weight_decay_mask"},
}


def _check_betas(betas, name: str) -> tuple[float, float]:
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(
            f"optimizers.py make_optimizer('{name}'): betas must be two numbers in [0, 1), got {betas}"
        )
    return float(betas[0]), float(betas[1])


def make_optimizer(
    name: str,
    learning_rate: LearningRate,
    weight_decay: float = 0.0,
    **kw,
) -> optax.GradientTransformation:
    """Build the named optimiser ('lion', 'adamw' or 'sgd') with torch semantics.

    Extra keyword arguments: ``betas`` (lion, adamw), ``eps`` (adamw),
    ``momentum`` and ``nesterov`` (sgd), ``weight_decay_mask`` (all; an optax
    mask pytree or callable selecting the leaves that get weight decay; by
    default every leaf does, as in the reference code).
    """
    if name not in OPTIMIZER_NAMES:
        raise ValueError(
            f"optimizers.py make_optimizer: unknown optimiser name {name!r}; allowed: {list(OPTIMIZER_NAMES)}"
        )
    unknown = set(kw) - _ALLOWED_KWARGS[name]
    if unknown:
        raise ValueError(
            f"optimizers.py make_optimizer('{name}'): unknown option(s) {sorted(unknown)}; "
            f"allowed: {sorted(_ALLOWED_KWARGS[name])}"
        )
    if not callable(learning_rate):
        if not isinstance(learning_rate, numbers.Real) or learning_rate < 0:
            raise ValueError(
                f"optimizers.py make_optimizer('{name}'): learning_rate must be a float >= 0 "
                f"or a schedule callable, got {learning_rate!r}"
            )
    if not isinstance(weight_decay, numbers.Real) or weight_decay < 0:
        raise ValueError(
            f"optimizers.py make_optimizer('{name}'): weight_decay must be a float >= 0, got {weight_decay!r}"
        )
    mask = kw.get("weight_decay_mask")
    decay = optax.add_decayed_weights(float(weight_decay), mask=mask)

    if name == "lion":
        b1, b2 = _check_betas(kw.get("betas", (0.95, 0.98)), name)
        # add_decayed_weights after the sign: update = -lr * (sign(c) + wd * p),
        # i.e. p *= 1 - lr*wd then p -= lr*sign(c).
        return optax.chain(
            optax.scale_by_lion(b1=b1, b2=b2),
            decay,
            optax.scale_by_learning_rate(learning_rate),
        )
    if name == "adamw":
        b1, b2 = _check_betas(kw.get("betas", (0.9, 0.999)), name)
        eps = kw.get("eps", 1e-8)
        if not isinstance(eps, numbers.Real) or eps < 0:
            raise ValueError(f"optimizers.py make_optimizer('adamw'): eps must be >= 0, got {eps!r}")
        # optax's m_hat / (sqrt(v_hat) + eps) equals torch's
        # (m / bc1) / (sqrt(v) / sqrt(bc2) + eps).
        return optax.chain(
            optax.scale_by_adam(b1=b1, b2=b2, eps=float(eps)),
            decay,
            optax.scale_by_learning_rate(learning_rate),
        )
    # sgd
    momentum = kw.get("momentum", 0.9)
    if not isinstance(momentum, numbers.Real) or not 0.0 <= momentum < 1.0:
        raise ValueError(
            f"optimizers.py make_optimizer('sgd'): momentum must be in [0, 1), got {momentum!r}"
        )
    nesterov = bool(kw.get("nesterov", False))
    # L2 enters the gradient before the momentum buffer, as torch's SGD does;
    # optax.trace's buffer starts at 0 so the first step's buffer is g, like torch.
    return optax.chain(
        decay,
        optax.trace(decay=float(momentum), nesterov=nesterov),
        optax.scale_by_learning_rate(learning_rate),
    )
