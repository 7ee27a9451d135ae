"""Markdown tables of experiments: final-epoch accuracy as mean ± std over seeds.

Best-over-training numbers pick the epoch by looking at the test set; they appear only when
asked for, and then in a column whose header says so.
"""
from __future__ import annotations

from typing import Sequence

BEST_HEADER = "best over training (%), selected on the test set"


def format_mean_std(summary: dict | None, digits: int = 2) -> str:
    """'63.41 ± 0.87' from a {'mean', 'std'} record; '—' when the run has not finished."""
    if not summary:
        return "—"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; every row must have one cell per header column."""
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"tables.markdown_table: row {i} has {len(row)} cells, the header {len(header)}")
    clean = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(clean(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def experiment_table(cell_records: Sequence[dict], *, show_best: bool = False) -> str:
    """One row per cell: label, network, seeds, epochs, final test accuracy mean ± std, per-seed values."""
    header = ["cell", "network", "seeds", "epochs", "final test acc. (%)", "per seed"]
    if show_best:
        header.append(BEST_HEADER)
    rows = []
    for rec in cell_records:
        final = rec.get("final_accuracy")
        per_seed = ", ".join(f"{a:.2f}" for a in final["per_seed"]) if final else "not finished"
        shown = format_mean_std(final)
        if rec.get("diverged"):
            d = rec["diverged"]
            shown, per_seed = "diverged", f"diverged at epoch {d['epoch']} (seed(s) {', '.join(map(str, d['seeds']))})"
        row = [rec["label"], rec.get("network", ""), str(len(rec.get("seeds") or [])), str(rec.get("epochs", "")),
               shown, per_seed]
        if show_best:
            row.append(format_mean_std(rec.get("best_over_training")))
        rows.append(row)
    return markdown_table(header, rows)
