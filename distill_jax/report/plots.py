"""PNG figures: a config's keep-rate and learning-rate schedules, a run's test-accuracy curves.

matplotlib with the Agg backend (no display needed); figures are written to a temporary
name and renamed, like every other output.
"""
from __future__ import annotations

import pathlib

import numpy as np

from distill_jax import atomic
from distill_jax.optim import schedules
from distill_jax.training import workdir_io


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    if not workdir_io.is_writer():  # one set of files per run, from process 0
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic.write_with_path(path, lambda tmp: fig.savefig(tmp, dpi=100))


def schedule_curves(config, steps_per_epoch: int = 1, points: int = 2000):
    """(epochs, learning rates, keep rates) sampled over the run; keep rate 1 without DropPath."""
    if steps_per_epoch < 1:
        raise ValueError(f"plots.schedule_curves: steps_per_epoch must be >= 1, got {steps_per_epoch}")
    lr, keep = schedules.from_config(config.train, steps_per_epoch)
    total = config.train.epochs * steps_per_epoch
    steps = np.unique(np.linspace(0, total - 1, min(points, total)).astype(np.int64))
    epochs = steps / steps_per_epoch
    lrs = np.asarray(lr(steps))
    keeps = np.asarray(keep(np.floor(epochs))) if keep is not None else np.ones_like(epochs)
    return epochs, lrs, keeps


def plot_schedules(config, path, steps_per_epoch: int = 1) -> pathlib.Path:
    """Keep rate and learning rate against the epoch, one panel each."""
    plt = _pyplot()
    epochs, lrs, keeps = schedule_curves(config, steps_per_epoch)
    fig, (ax_keep, ax_lr) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    ax_keep.step(epochs, keeps, where="post")
    ax_keep.set_ylabel("keep rate p")
    ax_keep.set_ylim(0, 1.05)
    ax_lr.plot(epochs, lrs)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    fig.suptitle(f"{config.model.name}: {config.train.optimizer}, {config.train.lr_schedule}, "
                 f"DropPath schedule {'on' if config.train.keep_rate.enabled else 'off'}")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_accuracy(results: dict, path, title: str = "") -> pathlib.Path:
    """Test accuracy per evaluation: one thin line per seed and their mean, thick."""
    history = results.get("history") or []
    if not history:
        raise ValueError("plots.plot_accuracy: the run has no evaluations in its history")
    plt = _pyplot()
    epochs = np.array([h["epoch"] for h in history])
    curves = np.array([h["test_accuracy"] for h in history])  # (evals, seeds)
    fig, ax = plt.subplots(figsize=(7, 4))
    seeds = results.get("seeds") or list(range(curves.shape[1]))
    for i in range(curves.shape[1]):
        ax.plot(epochs, curves[:, i], lw=0.8, alpha=0.6, marker=".", label=f"seed {seeds[i]}")
    ax.plot(epochs, curves.mean(axis=1), lw=2.2, color="k", label="mean")
    return _finish_accuracy_plot(plt, fig, ax, title or "test accuracy per seed", path)


def _finish_accuracy_plot(plt, fig, ax, title: str, path) -> pathlib.Path:
    """Axis labels, legend and grid of an accuracy-per-epoch plot; writes it and closes the figure."""
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_experiment(cell_records, path, title: str = "") -> pathlib.Path:
    """Mean test accuracy of every cell against its epoch, error bars = std over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for rec in cell_records:
        history = rec.get("history") or []
        if history:
            curves = np.array([h["test_accuracy"] for h in history], dtype=np.float64)
            std = curves.std(axis=1, ddof=1) if curves.shape[1] > 1 else np.zeros(len(curves))
            ax.errorbar([h["epoch"] for h in history], curves.mean(axis=1), yerr=std, marker="o", capsize=3,
                        label=rec["label"])
            drawn += 1
        elif rec.get("final_accuracy"):  # a published network scored once: a horizontal reference
            ax.axhline(rec["final_accuracy"]["mean"], ls="--", color="grey", label=rec["label"])
            drawn += 1
    if not drawn:
        plt.close(fig)
        raise ValueError("plots.plot_experiment: no cell has evaluations to draw")
    return _finish_accuracy_plot(plt, fig, ax, title or "test accuracy, mean ± std over seeds", path)


def plot_grouped_bars(groups, series: dict, path, *, reference=None, ylabel: str = "", title: str = "") -> pathlib.Path:
    """Bars of each series (name -> [(mean, std)] per group) side by side in every group, with ± std
    error bars; `reference` = (value, label) draws a horizontal line (a NaN mean draws no bar)."""
    if not groups or not series:
        raise ValueError("plots.plot_grouped_bars: nothing to draw")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(groups) + 2), 4))
    x = np.arange(len(groups))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        if len(values) != len(groups):
            plt.close(fig)
            raise ValueError(
                f"plots.plot_grouped_bars: series {name!r} has {len(values)} values for {len(groups)} groups"
            )
        means = np.array([v[0] for v in values], dtype=np.float64)
        stds = np.array([v[1] for v in values], dtype=np.float64)
        ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=name)
    if reference is not None:
        ax.axhline(reference[0], ls="--", color="black", label=reference[1])
    ax.set_xticks(x)
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_label_distribution(probabilities: np.ndarray, class_names, path, title: str = "") -> pathlib.Path:
    """Learned labels as the soft targets a student sees: one row per image, one column per
    class (a heatmap), with each image's argmax class marked."""
    plt = _pyplot()
    probabilities = np.asarray(probabilities, np.float64)
    n, k = probabilities.shape
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.35 * k), min(12, 1.5 + 0.12 * n)))
    shown = ax.imshow(probabilities, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.scatter(probabilities.argmax(1), np.arange(n), marker="|", color="white", s=12)
    if k <= 20:
        ax.set_xticks(range(k), [str(c) for c in class_names][:k], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("image")
    ax.set_title(title or "learned labels (soft targets)", fontsize=9)
    fig.colorbar(shown, ax=ax, fraction=0.04)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_scale_curves(panels: dict, path, *, title: str = "", xlabel: str = "fraction of the schedule (epoch / epochs)",
                      ylabel: str = "test accuracy (%)", empty_note: str = "no evaluations",
                      references: dict | None = None) -> pathlib.Path:
    """One panel per entry of `panels` (panel title -> {series label: (x, curves)}), one line per
    series: the mean over seeds of `curves` (evaluations, seeds) against `x`, shaded from the
    lowest to the highest seed. `x` None draws a final-only series (a network scored once) as a
    dashed horizontal line at its mean. A panel without series says `empty_note`. Series keep one
    colour across panels, so a scale reads the same everywhere. `references` (panel title ->
    (value, label)) draws a dotted black line in that panel (e.g. a published number)."""
    if not panels:
        raise ValueError("plots.plot_scale_curves: no panels to draw")
    plt = _pyplot()
    names = list(dict.fromkeys(label for series in panels.values() for label in series))
    colours = {label: f"C{i % 10}" for i, label in enumerate(names)}
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, (panel, series) in zip(axes.flat, panels.items(), strict=False):
        for label, (x, curves) in series.items():
            curves = np.asarray(curves, dtype=np.float64).reshape(len(curves), -1) if len(curves) else np.zeros((0, 1))
            if x is None:
                ax.axhline(float(curves.mean()), ls="--", color=colours[label], label=label)
                continue
            x = np.asarray(x, dtype=np.float64)
            if len(x) != len(curves):
                plt.close(fig)
                raise ValueError(f"plots.plot_scale_curves: panel {panel!r}, series {label!r}: {len(x)} x values "
                                 f"for {len(curves)} evaluations")
            ax.plot(x, curves.mean(axis=1), marker="o", ms=3, color=colours[label], label=label)
            ax.fill_between(x, curves.min(axis=1), curves.max(axis=1), color=colours[label], alpha=0.2, lw=0)
        if panel in (references or {}):
            value, ref_label = references[panel]
            ax.axhline(value, ls=":", color="black", label=ref_label)
        if not series:
            ax.text(0.5, 0.5, empty_note, ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_title(panel, fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.grid(alpha=0.3)
        if series or panel in (references or {}):
            ax.legend(fontsize=7)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for i, ax in enumerate(axes.flat[:len(panels)]):
        if i + cols >= len(panels):  # the lowest panel of its column
            ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
