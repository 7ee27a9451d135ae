"""Keep-rate and learning-rate schedules at the epochs docs/method.md §2.4 / §2.6 name."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.optim import schedules as S

PEAK = 5e-5
# Cosine value where a 500-epoch phase ends: 400 of the 900 cosine epochs done.
PHASE_END_FRACTION = 0.5 * (1 + math.cos(math.pi * 400 / 900))  # 0.58682


# ----------------------------------------------------------------- keep rate

R18_EXPECTED = {
    0: 1.0, 250: 1.0, 499: 1.0, 499.9: 1.0,
    500: 0.9, 999: 0.9, 1000: 0.8, 1500: 0.7, 2000: 0.6,
    2500: 0.5, 2999: 0.5, 2999.9: 0.5,
    3000: 0.8, 3500: 0.8, 3999: 0.8,
}
R50_EXPECTED = {
    0: 1.0, 499: 1.0, 500: 0.87, 1000: 0.74, 1500: 0.61, 2000: 0.48,
    2500: 0.35, 2999: 0.35, 3000: 0.8, 3999: 0.8,
}


def _r50(total=4000, period=500):
    return S.keep_rate_schedule(total, period, keep_step=0.13, min_keep=0.35, final_keep=0.8)


@pytest.mark.parametrize("epoch,expected", sorted(R18_EXPECTED.items()))
def test_keep_rate_resnet18(epoch, expected):
    keep = S.keep_rate_schedule(4000, 500)
    np.testing.assert_allclose(float(keep(epoch)), expected, atol=1e-6)


@pytest.mark.parametrize("epoch,expected", sorted(R50_EXPECTED.items()))
def test_keep_rate_resnet50(epoch, expected):
    np.testing.assert_allclose(float(_r50()(epoch)), expected, atol=1e-6)


def test_keep_rate_accepts_python_numpy_and_arrays():
    keep = S.keep_rate_schedule(4000)
    assert float(keep(np.int64(2500))) == pytest.approx(0.5)
    assert float(keep(np.float32(1000.0))) == pytest.approx(0.8)
    epochs = np.array(sorted(R18_EXPECTED), dtype=np.float32)
    values = keep(epochs)
    assert values.shape == epochs.shape and values.dtype == jnp.float32
    np.testing.assert_allclose(values, [R18_EXPECTED[k] for k in sorted(R18_EXPECTED)], atol=1e-6)


def test_keep_rate_traced_inside_jit_without_retracing():
    keep = S.keep_rate_schedule(4000)
    traces = []

    @jax.jit
    def f(epoch):
        traces.append(1)
        return keep(epoch)

    got = [float(f(jnp.asarray(e, jnp.float32))) for e in (0.0, 600.0, 2600.0, 3100.0)]
    np.testing.assert_allclose(got, [1.0, 0.9, 0.5, 0.8], atol=1e-6)
    assert len(traces) == 1


def test_keep_rate_scaled_down_has_same_structure():
    small, big = S.keep_rate_schedule(40, 5), S.keep_rate_schedule(4000, 500)
    epochs = np.arange(0, 40, 0.5)
    np.testing.assert_allclose(small(epochs), big(epochs * 100), atol=1e-6)
    assert S.keep_rate_phase_starts(40, 5) == [0, 5, 10, 15, 20, 25, 30]


def test_keep_rate_phase_starts():
    assert S.keep_rate_phase_starts(4000, 500) == [0, 500, 1000, 1500, 2000, 2500, 3000]
    assert S.keep_rate_phase_starts(4000, 500, keep_step=0.13, min_keep=0.35) == [
        0, 500, 1000, 1500, 2000, 2500, 3000,
    ]
    # The keep rate really changes at every listed start.
    keep = S.keep_rate_schedule(4000)
    starts = S.keep_rate_phase_starts(4000)
    for s in starts[1:]:
        assert float(keep(s)) != float(keep(s - 1))


def test_keep_rate_never_below_min():
    # 0.3 / 0.2 rounds to 2 drops: 0.8 then max(0.6, 0.7) = 0.7.
    keep = S.keep_rate_schedule(100, 10, keep_step=0.2, min_keep=0.7, final_keep=0.9)
    np.testing.assert_allclose([float(keep(e)) for e in (5, 15, 25, 35)], [1.0, 0.8, 0.7, 0.9], atol=1e-6)


def test_keep_rate_phases_must_fit():
    with pytest.raises(ValueError, match="keep_rate_schedule: the three phases do not fit in total_epochs=3000"):
        S.keep_rate_schedule(3000, 500)


def test_keep_rate_phase_starts_phases_must_fit():
    with pytest.raises(ValueError, match="keep_rate_phase_starts: the three phases do not fit"):
        S.keep_rate_phase_starts(30, 5)


def test_keep_rate_rejects_non_positive_period():
    with pytest.raises(ValueError, match="period_epochs must be > 0"):
        S.keep_rate_schedule(4000, 0)


def test_keep_rate_rejects_min_keep_above_one():
    with pytest.raises(ValueError, match="min_keep must be <= 1"):
        S.keep_rate_schedule(4000, min_keep=1.5)


def test_keep_rate_rejects_zero_keep_step():
    with pytest.raises(ValueError, match="keep_step must be > 0"):
        S.keep_rate_schedule(4000, keep_step=0.0)


def test_keep_rate_rejects_bad_final_keep():
    with pytest.raises(ValueError, match="final_keep must be > 0"):
        S.keep_rate_schedule(4000, final_keep=0.0)


# ----------------------------------------------------------------- step decay and warm-up cosine


def test_step_decay_at_epoch_500_of_1000():
    spe = 3
    lr = S.make_lr_schedule("step", PEAK, steps_per_epoch=spe, total_epochs=1000)
    assert float(lr(0)) == pytest.approx(PEAK)
    assert float(lr(500 * spe - 1)) == pytest.approx(PEAK)
    assert float(lr(500 * spe)) == pytest.approx(0.1 * PEAK)
    assert float(lr(1000 * spe - 1)) == pytest.approx(0.1 * PEAK)


def test_step_decay_options():
    lr = S.step_decay(1.0, 100, decay_at_fraction=0.25, factor=0.5)
    np.testing.assert_allclose(lr(np.array([0, 24, 25, 99])), [1.0, 1.0, 0.5, 0.5])


def test_step_decay_rejects_fraction_above_one():
    with pytest.raises(ValueError, match="step_decay: decay_at_fraction must be <= 1"):
        S.step_decay(1.0, 100, decay_at_fraction=2.0)


def test_constant_schedule():
    lr = S.make_lr_schedule("constant", PEAK, 2, 10)
    np.testing.assert_allclose(lr(np.arange(20)), np.full(20, PEAK, np.float32))
    assert float(lr(7)) == pytest.approx(PEAK)


def test_warmup_cosine_values():
    total = 1000
    lr = S.warmup_cosine(1.0, total)
    assert float(lr(0)) == 0.0  # exactly 0 at the very first step
    assert float(lr(50)) == pytest.approx(0.5)
    assert float(lr(100)) == pytest.approx(1.0)
    assert float(lr(550)) == pytest.approx(0.5, abs=1e-6)  # half-way down the cosine
    assert float(lr(total)) == pytest.approx(0.0, abs=1e-7)
    assert float(lr(total + 10)) == pytest.approx(0.0, abs=1e-7)


def test_warmup_cosine_matches_numpy_reference():
    steps = np.arange(0, 300)
    lr = S.make_lr_schedule("warmup_cosine", 2.0, steps_per_epoch=3, total_epochs=100)
    warm = 30.0
    expected = np.where(
        steps < warm, 2.0 * steps / warm, 2.0 * 0.5 * (1 + np.cos(np.pi * (steps - warm) / (300 - warm)))
    )
    np.testing.assert_allclose(lr(steps), expected, rtol=1e-5, atol=1e-6)


def test_warmup_cosine_rejects_full_warmup():
    with pytest.raises(ValueError, match="warmup_fraction must be < 1"):
        S.warmup_cosine(1.0, 100, warmup_fraction=1.0)


def test_warmup_cosine_rejects_non_positive_total():
    with pytest.raises(ValueError, match="warmup_cosine: total_steps must be > 0"):
        S.warmup_cosine(1.0, 0)


# ----------------------------------------------------------------- periodic


def _numpy_periodic(step, peak, spe, starts, cycle=1000.0, warm=100.0):
    """Direct restatement of docs/method.md §2.6, one step at a time."""
    epoch = step / spe
    start = max(s for s in starts if s <= epoch)
    e = epoch - start
    if e < warm:
        return peak * e / warm
    return peak * 0.5 * (1 + math.cos(math.pi * min((e - warm) / (cycle - warm), 1.0)))


def _spec_periodic(spe=2):
    starts = S.keep_rate_phase_starts(4000, 500)
    return S.make_lr_schedule("periodic", PEAK, spe, 4000, phase_start_epochs=starts), starts


def test_periodic_named_points():
    spe = 2
    lr, starts = _spec_periodic(spe)
    assert float(lr(0)) == 0.0
    assert float(lr(100 * spe)) == pytest.approx(PEAK)  # end of the first warm-up
    assert float(lr(50 * spe)) == pytest.approx(PEAK / 2)
    for start in starts[:-1]:
        # restart to 0 at each phase start, peak 100 epochs later ...
        assert float(lr(start * spe)) == 0.0
        assert float(lr((start + 100) * spe)) == pytest.approx(PEAK, rel=1e-5)
        # ... and the last step of a 500-epoch phase sits near 0.587 x peak.
        last = lr((start + 500) * spe - 1)
        assert float(last) == pytest.approx(PEAK * PHASE_END_FRACTION, rel=2e-3)
        assert 0.58 * PEAK < float(last) < 0.59 * PEAK
    # The last 1000-epoch phase is one full warm-up + cosine down to ~0.
    assert float(lr(3000 * spe)) == 0.0
    assert float(lr(3100 * spe)) == pytest.approx(PEAK, rel=1e-5)
    assert float(lr(3550 * spe)) == pytest.approx(PEAK / 2, rel=1e-4)
    assert float(lr(4000 * spe - 1)) < 1e-5 * PEAK


def test_periodic_matches_numpy_reference_everywhere():
    spe = 1
    lr, starts = _spec_periodic(spe)
    steps = np.arange(0, 4000 * spe)
    expected = [_numpy_periodic(int(s), PEAK, spe, starts) for s in steps]
    np.testing.assert_allclose(lr(steps), expected, rtol=1e-4, atol=1e-6 * PEAK)


def test_periodic_traced_inside_jit():
    lr, _ = _spec_periodic(2)
    traces = []

    @jax.jit
    def f(step):
        traces.append(1)
        return lr(step)

    for step in (0, 200, 999, 1000, 7999):
        np.testing.assert_allclose(f(jnp.asarray(step, jnp.int32)), lr(step), rtol=1e-6)
    assert len(traces) == 1


def test_periodic_scaled_down_has_same_structure():
    small = S.periodic_warmup_cosine(1.0, 4, S.keep_rate_phase_starts(40, 5), 40, cycle_epochs=10, warmup_epochs=1)
    big = S.periodic_warmup_cosine(1.0, 4, S.keep_rate_phase_starts(4000, 500), 4000)
    steps = np.arange(0, 40 * 4)
    np.testing.assert_allclose(small(steps), big(steps * 100), rtol=1e-5, atol=1e-7)


def test_periodic_adds_epoch_zero_start():
    with_zero = S.periodic_warmup_cosine(1.0, 1, [0, 50], 100, cycle_epochs=60, warmup_epochs=10)
    without = S.periodic_warmup_cosine(1.0, 1, [50], 100, cycle_epochs=60, warmup_epochs=10)
    steps = np.arange(100)
    np.testing.assert_allclose(with_zero(steps), without(steps))


def test_periodic_rejects_unsorted_starts():
    with pytest.raises(ValueError, match="phase_start_epochs must be strictly increasing"):
        S.periodic_warmup_cosine(1.0, 1, [0, 500, 500], 4000)


def test_periodic_rejects_start_after_end():
    with pytest.raises(ValueError, match="phase_start_epochs must lie before total_epochs"):
        S.periodic_warmup_cosine(1.0, 1, [0, 4000], 4000)


def test_periodic_rejects_negative_start():
    with pytest.raises(ValueError, match="phase_start_epochs entries must be >= 0"):
        S.periodic_warmup_cosine(1.0, 1, [-1, 500], 4000)


def test_periodic_rejects_warmup_longer_than_cycle():
    with pytest.raises(ValueError, match=r"warmup_epochs \(100\) must be < cycle_epochs \(50\)"):
        S.periodic_warmup_cosine(1.0, 1, [0], 4000, cycle_epochs=50)


def test_periodic_rejects_non_positive_steps_per_epoch():
    with pytest.raises(ValueError, match="steps_per_epoch must be > 0"):
        S.periodic_warmup_cosine(1.0, 0, [0], 4000)


# ----------------------------------------------------------------- make_lr_schedule errors


def test_make_lr_schedule_unknown_kind():
    with pytest.raises(ValueError, match=r"unknown schedule kind 'cosine'.*constant.*step.*warmup_cosine.*periodic"):
        S.make_lr_schedule("cosine", 1.0, 1, 10)


def test_make_lr_schedule_unknown_option():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['warmup_fractoin'\]"):
        S.make_lr_schedule("step", 1.0, 1, 10, warmup_fractoin=0.1)


def test_make_lr_schedule_ignores_options_of_other_kinds():
    # A config passes every schedule field; each kind takes only its own.
    everything = dict(
        warmup_fraction=0.2, decay_at_fraction=0.3, factor=0.5,
        phase_start_epochs=[0, 5], cycle_epochs=8, warmup_epochs=2,
    )
    steps = np.arange(0, 40)
    cases = {
        "constant": S.constant(1.0),
        "step": S.step_decay(1.0, 40, decay_at_fraction=0.3, factor=0.5),
        "warmup_cosine": S.warmup_cosine(1.0, 40, warmup_fraction=0.2),
        "periodic": S.periodic_warmup_cosine(1.0, 4, [0, 5], 10, cycle_epochs=8, warmup_epochs=2),
    }
    for kind, direct in cases.items():
        lr = S.make_lr_schedule(kind, 1.0, steps_per_epoch=4, total_epochs=10, total_steps=40, **everything)
        np.testing.assert_allclose(lr(steps), direct(steps), err_msg=kind)


def test_make_lr_schedule_rejects_inconsistent_total_steps():
    with pytest.raises(ValueError, match="total_steps=50 disagrees with steps_per_epoch"):
        S.make_lr_schedule("warmup_cosine", 1.0, steps_per_epoch=4, total_epochs=10, total_steps=50)


def test_make_lr_schedule_periodic_needs_starts():
    with pytest.raises(ValueError, match="needs phase_start_epochs"):
        S.make_lr_schedule("periodic", 1.0, 1, 10)


def test_make_lr_schedule_rejects_negative_peak():
    with pytest.raises(ValueError, match="peak must be >= 0"):
        S.make_lr_schedule("constant", -1.0, 1, 10)
