"""The published numbers this package compares with: one owner, each number with its provenance.

Every number is a CIFAR-10 test accuracy (%) as a paper published it (docs/method.md §7), with
whose number it is, which table (where known), how the epoch was selected, on which data and
over how many runs. None of them is a final-epoch number of this package, and none was
measured on CIFAR-10 (JPEG): a comparison must carry `caveats()`. `compare --paper KEY` and the
rendered docs (`render_docs`) both read them from here.
"""
from __future__ import annotations

import dataclasses

SOURCE_DOC = "docs/method.md §7"
ZHONG_LIU = "Zhong & Liu (arXiv 2309.04195)"
BEST_OVER_TRAINING = "best over training (selected on the test set)"
REAL_CIFAR10 = "CIFAR-10 (the original, not the JPEG copy)"
NOT_STATED = "not stated"


@dataclasses.dataclass(frozen=True)
class Published:
    """One published number and where it comes from."""
    value: float
    who: str = ZHONG_LIU
    table: str = NOT_STATED  # which table of that paper (the project spec does not say)
    selection: str = BEST_OVER_TRAINING
    dataset: str = REAL_CIFAR10
    seeds: str = NOT_STATED  # how many runs the number averages or maximises over
    width: str = "the paper's (full width)"
    note: str = ""  # a qualification a table marks with a footnote


# Zhong & Liu's numbers follow the reference code's protocol: the best test accuracy over training.
PROTOCOL = ("Zhong & Liu's numbers follow the reference code's protocol (best over training, i.e. selected on the "
            "test set; docs/method.md §6), on real CIFAR-10 with full-width networks and the full schedule")
LION_NOTE = ("docs/method.md §7 gives 'Lion instead of AdamW alone (Baseline → w/o DP & KD): 61.9 → 64.8' without "
             "naming the set")
FREPO_TEACHER = "FRePo's own ConvNet (its published number)"
MTT_TEACHER = "the training ConvNet on the MTT set (MTT's own paper: 65.3)"


def _frepo_convnet(value: float) -> Published:
    return Published(value, who="FRePo's authors (Zhou et al.)", selection="final accuracy of FRePo's own protocol",
                     seeds="5 models", note=FREPO_TEACHER)


# Experiment name (`registry.experiment_names()`, real CIFAR-10) -> what it describes, and per cell
# (the teacher, then `recipes.VARIANTS`) its published number.
EXPERIMENTS = {
    "frepo_cifar10_10_resnet18": {
        "describes": "FRePo sets, ResNet-18, IPC 10",
        "cells": {"teacher": _frepo_convnet(65.5),
                  "baseline": Published(61.9, note=LION_NOTE), "no_dp_kd": Published(64.8, note=LION_NOTE),
                  "no_dp": Published(64.0), "no_kd": Published(63.9), "full": Published(66.6)}},
    "frepo_cifar10_50_resnet18": {
        "describes": "FRePo sets, ResNet-18, IPC 50",
        "cells": {"teacher": _frepo_convnet(71.7), "full": Published(74.5)}},
    **{f"mtt_cifar10_10_{net}": {
        "describes": f"MTT sets, IPC 10, {label} Baseline → Full",
        "cells": {"teacher": Published(63.6, note=MTT_TEACHER), "baseline": Published(base), "full": Published(full)}}
       for net, label, base, full in (("resnet18", "ResNet-18", 48.9, 67.4), ("resnet50", "ResNet-50", 28.1, 63.8),
                                      ("alexnet", "AlexNet", 56.9, 68.3), ("vgg11", "VGG-11", 52.6, 67.1))},
}

def compare_view() -> dict:
    """`compare --paper`'s table: key -> {'source': text, 'cells': {cell: (value, note)}}."""
    return {key: {"source": f"{SOURCE_DOC}: {e['describes']}. {PROTOCOL}",
                  "cells": {cell: (p.value, p.note) for cell, p in e["cells"].items()}}
            for key, e in EXPERIMENTS.items()}


def number(key: str, cell: str) -> Published:
    """The published number of `cell` in experiment `key`; KeyError names what exists."""
    if key not in EXPERIMENTS:
        raise KeyError(f"no published numbers for {key!r}; experiments with some: {sorted(EXPERIMENTS)}")
    cells = EXPERIMENTS[key]["cells"]
    if cell not in cells:
        raise KeyError(f"{key!r} has no published number for cell {cell!r}; cells: {sorted(cells)}")
    return cells[cell]


def provenance(p: Published) -> str:
    """'Zhong & Liu (arXiv 2309.04195), table not stated, best over training (...), CIFAR-10 (...),
    runs: not stated'."""
    return (f"{p.who}, table {p.table}, {p.selection}, {p.dataset}, {p.width}, number of runs {p.seeds}"
            f" ({SOURCE_DOC})")


# What the reference code's DropPath does (docs/method.md §8, defect 1), for every comparison of
# DropPath cells with the paper's columns.
DROPPATH_CAVEAT = ("The reference code's DropPath never drops a path (its keep-rate setter never reaches the "
                   "blocks): if the paper's tables came from that code, its \"w/o KD\" and \"Full\" columns trained "
                   "with the schedule's epochs and learning-rate periods but without dropping, so a sign difference "
                   "between our DropPath cells and those columns may be that.")


def caveats(ours: str) -> list[str]:
    """The lines every comparison with the paper carries; `ours` says what our side is (e.g.
    'final epoch on CIFAR-10 (JPEG), mean of 3 seeds')."""
    return [f"Zhong & Liu's numbers are {BEST_OVER_TRAINING}, on {REAL_CIFAR10}, at the paper's widths and "
            f"schedules; how many runs each is over, and which table of the paper it comes from, is {NOT_STATED} in "
            "the project's spec. A teacher's published number may be another paper's, with that paper's protocol "
            "(the provenance table says whose).",
            f"Ours are {ours}.",
            DROPPATH_CAVEAT]
