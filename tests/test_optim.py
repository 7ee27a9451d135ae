"""Optimisers against independent numpy implementations of torch's update rules."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distill_jax.optim import make_optimizer, warmup_cosine

N_STEPS = 6


def _problem(seed=0):
    """Two-leaf params and a fixed sequence of gradients (numpy float64)."""
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))}
    grads = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(N_STEPS)]
    return params, grads


def _run_optax(tx, params, grads, dtype=jnp.float32):
    """The parameters after each update; float64 switches x64 on for this call only."""
    with jax.enable_x64(dtype == jnp.float64):
        params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
        state = tx.init(params)

        @jax.jit
        def step(params, state, g):
            updates, state = tx.update(g, state, params)
            return optax.apply_updates(params, updates), state

        history = []
        for g in grads:
            params, state = step(params, state, jax.tree.map(lambda x: jnp.asarray(x, dtype), g))
            chex.assert_type(jax.tree.leaves(params)[0], dtype)
            history.append(jax.tree.map(np.asarray, params))
    return history


def _lr_at(lr, t):
    """Learning rate at optimiser step t (0 for the first update)."""
    return float(lr(t)) if callable(lr) else lr


# ---- independent torch-rule references (one leaf at a time) ----


def _torch_lion(p, grads, lr, wd, b1=0.95, b2=0.98):
    p, m, out = p.copy(), np.zeros_like(p), []
    for t, g in enumerate(grads):
        c = b1 * m + (1 - b1) * g
        p = p * (1 - _lr_at(lr, t) * wd) - _lr_at(lr, t) * np.sign(c)
        m = b2 * m + (1 - b2) * g
        out.append(p)
    return out


def _torch_adamw(p, grads, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
    p, m, v, out = p.copy(), np.zeros_like(p), np.zeros_like(p), []
    for i, g in enumerate(grads):
        step, rate = i + 1, _lr_at(lr, i)
        p = p * (1 - rate * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v) / np.sqrt(1 - b2**step) + eps
        p = p - rate / (1 - b1**step) * m / denom
        out.append(p)
    return out


def _torch_sgd(p, grads, lr, wd, momentum=0.9, nesterov=False):
    p, buf, out = p.copy(), None, []
    for t, g in enumerate(grads):
        d = g + wd * p
        buf = d.copy() if buf is None else momentum * buf + d
        direction = d + momentum * buf if nesterov else buf
        p = p - _lr_at(lr, t) * direction
        out.append(p)
    return out


REFERENCES = {"lion": _torch_lion, "adamw": _torch_adamw, "sgd": _torch_sgd}


def _compare(name, lr, wd, reference_kw=None, **kw):
    params, grads = _problem()
    history = _run_optax(make_optimizer(name, lr, wd, **kw), params, grads)
    for key in params:
        expected = REFERENCES[name](params[key], [g[key] for g in grads], lr, wd, **(reference_kw or {}))
        for step, (got, want) in enumerate(zip((h[key] for h in history), expected, strict=True)):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=f"{name} {key} step {step}")


@pytest.mark.parametrize("name", ["lion", "adamw", "sgd"])
def test_matches_torch_rule_constant_lr(name):
    # Large lr * wd so a wrongly applied decay would show.
    _compare(name, lr=0.05, wd=0.5)


@pytest.mark.parametrize("name", ["lion", "adamw", "sgd"])
def test_matches_torch_rule_with_schedule(name):
    # Warm-up from 0 over 2 steps then cosine: the first update has lr 0, so
    # the schedule's count must start at 0 exactly like a per-iteration scheduler.
    schedule = warmup_cosine(0.05, total_steps=N_STEPS + 2, warmup_fraction=0.25)
    _compare(name, lr=schedule, wd=0.5)




def _lion_with_decay_misplaced(p, grads, lr, wd, how, b1=0.95, b2=0.98):
    """Lion with the weight decay wrong in one of the ways the spec-setting test must catch."""
    p, m, out = p.copy(), np.zeros_like(p), []
    for g in grads:
        step = lr * np.sign(b1 * m + (1 - b1) * g)
        if how == "not applied":
            p = p - step
        elif how == "without lr (p -= wd * p)":
            p = p * (1 - wd) - step
        elif how == "after the sign step":
            p = (p - step) * (1 - lr * wd)
        m = b2 * m + (1 - b2) * g
        out.append(p)
    return out


def test_lion_spec_setting():
    """The paper's Lion setting, lr 5e-5 and wd 5e-3, where the decay moves p by only lr * wd * p = 2.5e-7 p
    a step: in float32 (resolution 6e-8 relative) over six steps, with the rtol 2e-5 of the other tests,
    a missing decay (1.5e-6 p) would pass. In float64 the rounding is ~1e-16 a step, so atol 1e-13 holds
    the right rule and rejects every misplaced decay by a wide margin:
    not applied: 6 * 2.5e-7 * |p| ~ 1e-6; without lr: 6 * 5e-3 * |p| ~ 3e-2;
    after the sign step: (p - lr s)(1 - lr wd) - (p (1 - lr wd) - lr s) = lr^2 wd s = 1.25e-11 a step."""
    lr, wd, atol = 5e-5, 5e-3, 1e-13
    params, grads = _problem()
    history = _run_optax(make_optimizer("lion", lr, wd), params, grads, jnp.float64)
    for key in params:
        leaf_grads = [g[key] for g in grads]
        expected = _torch_lion(params[key], leaf_grads, lr, wd)  # betas 0.95, 0.98
        for step, (got, want) in enumerate(zip((h[key] for h in history), expected, strict=True)):
            np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=f"lion {key} step {step}")
        for how in ("not applied", "without lr (p -= wd * p)", "after the sign step"):
            wrong = _lion_with_decay_misplaced(params[key], leaf_grads, lr, wd, how)[-1]
            assert np.max(np.abs(wrong - expected[-1])) > 100 * atol, how  # the check above would fail


def test_lion_default_betas_are_not_optax_defaults():
    params, grads = _problem(1)
    ours = _run_optax(make_optimizer("lion", 0.01, 0.0), params, grads)
    optax_defaults = _run_optax(optax.lion(0.01, weight_decay=0.0), params, grads)
    assert not np.allclose(ours[-1]["w"], optax_defaults[-1]["w"])
    explicit = _run_optax(make_optimizer("lion", 0.01, 0.0, betas=(0.95, 0.98)), params, grads)
    chex.assert_trees_all_close(ours[-1], explicit[-1])


def test_lion_custom_betas():
    _compare("lion", lr=0.05, wd=0.1, betas=(0.9, 0.99), reference_kw={"b1": 0.9, "b2": 0.99})


def test_adamw_custom_eps_and_betas():
    _compare(
        "adamw", lr=0.05, wd=0.1, betas=(0.8, 0.9), eps=1e-3, reference_kw={"b1": 0.8, "b2": 0.9, "eps": 1e-3}
    )


def test_sgd_nesterov_and_momentum():
    _compare("sgd", lr=0.05, wd=0.1, momentum=0.5, nesterov=True, reference_kw={"momentum": 0.5, "nesterov": True})


def test_weight_decay_mask_skips_leaves():
    params, grads = _problem(2)
    mask = {"w": True, "b": False}
    history = _run_optax(make_optimizer("lion", 0.05, 0.5, weight_decay_mask=mask), params, grads)
    want_w = _torch_lion(params["w"], [g["w"] for g in grads], 0.05, 0.5)[-1]
    want_b = _torch_lion(params["b"], [g["b"] for g in grads], 0.05, 0.0)[-1]
    np.testing.assert_allclose(history[-1]["w"], want_w, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(history[-1]["b"], want_b, rtol=2e-5, atol=2e-6)


def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match=r"unknown optimiser name 'adam'.*lion.*adamw.*sgd"):
        make_optimizer("adam", 1e-3, 0.0)


def test_unknown_option_rejected():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['momentum'\]"):
        make_optimizer("lion", 1e-3, 0.0, momentum=0.9)


def test_negative_learning_rate_rejected():
    with pytest.raises(ValueError, match="learning_rate must be"):
        make_optimizer("adamw", -1.0, 0.0)


def test_negative_weight_decay_rejected():
    with pytest.raises(ValueError, match="weight_decay must be"):
        make_optimizer("sgd", 0.1, -0.1)


def test_bad_betas_rejected():
    with pytest.raises(ValueError, match="betas must be two numbers"):
        make_optimizer("lion", 0.1, 0.0, betas=(0.9, 1.0))


def test_bad_eps_rejected():
    with pytest.raises(ValueError, match="eps must be"):
        make_optimizer("adamw", 0.1, 0.0, eps=-1.0)


def test_bad_momentum_rejected():
    with pytest.raises(ValueError, match="momentum must be"):
        make_optimizer("sgd", 0.1, 0.0, momentum=1.5)
