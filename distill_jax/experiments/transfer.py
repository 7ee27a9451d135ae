"""Mode 'transfer': how badly a distilled set overfits to the network that made it, and how much
the method recovers, network by network.

For any set the readers take, the set's training network is the KD teacher (trained here on
the set with the teacher recipe, a reference-code `.pth`, or a run of this package), and every
network of a pool trains on the set twice: with the Baseline recipe and with the Full recipe
(docs/method.md §2.7). Each cell is an ordinary reproduce cell (resumable, skipped when finished,
refused when its directory holds another config). The report is a table per network (Baseline,
Full, gain, gap to the training network; mean ± std and per seed) and a grouped bar chart; the
workdir also gets the pool's results record (`results_record.json`, `distill_jax.report.results_record`).

A network without DropPath blocks (the ConvNets) cannot take the Full recipe whole: its "Full"
cell is the recipe without DropPath (w/o DP: Lion, KD, 1000 epochs), and the table says so.
The ViT is an extension beyond the paper and is labelled as such.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Optional

import numpy as np

from distill_jax import models
from distill_jax.experiments import recipes, registry, reproduce
from distill_jax.formats.distilled import load_distilled
from distill_jax.report import plots, records, results_record, tables
from distill_jax.report.results_record import Role
from distill_jax.training import saved_runs, workdir_io

DEFAULT_POOL = ("convnet", "resnet18", "resnet50", "vgg11", "alexnet", "vit")
RECIPES = ("baseline", "full")
EXTENSIONS = {"vit": "extension beyond the paper"}  # networks the paper did not evaluate


class TransferError(recipes.ExperimentError):
    """The transfer config does not describe a runnable pool."""


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    """What a transfer run trains: the set, its source and pixel space, the pool and widths."""
    set_path: str
    dataset: str
    source: str
    preprocessing: str
    set_format: str
    preprocessing_field: str  # transfer.preprocessing as configured ('auto' or a recipe)
    networks: tuple
    widths: dict
    teacher: str


def parse_networks(text: str, where: str = "transfer.networks") -> tuple:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise TransferError(f"config field '{where}' is empty; name networks from {models.MODEL_NAMES}")
    for name in names:
        recipes.check_choice(name, models.MODEL_NAMES, "network", f"config field '{where}'")
    if len(set(names)) != len(names):
        raise TransferError(f"config field '{where}' = {text!r} names a network twice")
    return names


def parse_widths(text: str, where: str = "transfer.widths") -> dict:
    """'resnet18:16,vit:64' -> {'resnet18': 16, 'vit': 64}."""
    widths = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        name, _, value = item.partition(":")
        try:
            width = int(value)
        except ValueError:
            width = 0
        if width < 1 or name not in models.MODEL_NAMES:
            raise TransferError(f"config field '{where}': {item!r} is not <network>:<width> with a network of "
                                f"{models.MODEL_NAMES} and a width >= 1")
        widths[name] = width
    return widths


def transfer_config(set_path: str, dataset: str, *, networks=DEFAULT_POOL, num_seeds: int = 3, teacher: str = "",
                    widths: str = "", set_source: str = "", preprocessing: str = "auto", scale=None,
                    name: str = ""):
    """The config of mode 'transfer' for one set (what `distill-jax transfer` and
    `configs/transfer.py` launch); `scale` is a `registry.Scale` (None: the paper's schedule)."""
    c = recipes.base_config(dataset, num_seeds)
    c.mode = "transfer"
    t = c.transfer
    t.set_path, t.set_source, t.preprocessing, t.teacher, t.name = (
        str(set_path),
        set_source,
        preprocessing,
        str(teacher),
        name,
    )
    t.networks = networks if isinstance(networks, str) else ",".join(networks)
    t.widths = widths
    scale = scale or registry.Scale()
    settings = c.reproduce
    settings.epoch_divisor, settings.lr_multiplier, settings.width = (
        scale.epoch_divisor,
        scale.lr_multiplier,
        scale.width,
    )
    settings.teacher_width, settings.evals = scale.teacher_width, scale.evals
    return c


def published_transfer_config(set_name: str, **kwargs):
    """`transfer_config` for a set published with the paper ('<method>_<dataset>_<ipc>', e.g.
    frepo_cifar10_jpeg_10) in the data root: its pixel space, and its published teacher where one
    exists (MTT), else a teacher trained here."""
    parts = set_name.split("_")
    try:
        method, ipc, dataset = parts[0], int(parts[-1]), "_".join(parts[1:-1])
    except (IndexError, ValueError):
        raise TransferError(f"published set {set_name!r} is not of the form <method>_<dataset>_<ipc>, "
                            "e.g. frepo_cifar10_jpeg_10") from None
    where = f"published set {set_name!r}"
    recipes.check_choice(method, recipes.METHODS, "distillation method", where)
    recipes.check_choice(dataset, recipes.DATASETS, "dataset", where)
    recipes.check_choice(ipc, recipes.IPCS, "images per class", where)
    teacher = recipes.default_teacher_path(method, dataset, ipc)
    kwargs.setdefault("teacher", teacher if teacher.endswith(".pth") else "")
    kwargs.setdefault("name", set_name)
    return transfer_config(recipes.distilled_path(method, dataset, ipc), dataset,
                           preprocessing=recipes.REFERENCE_SET_PREPROCESSING[method], set_source=method, **kwargs)


def pool_spec(config) -> PoolSpec:
    """Reads `config.transfer` and the set's own record (its source and pixel space)."""
    t = config.transfer
    if not t.set_path:
        raise TransferError("config field 'transfer.set_path' is empty; give a distilled set "
                            "(any file or folder `distill-jax inspect` reads)")
    options = {"format": t.set_format} if t.set_format else {}
    dset = load_distilled(t.set_path, **options)
    source = t.set_source or dset.provenance.get("source") or "user"
    preprocessing = dset.preprocessing if t.preprocessing == "auto" else t.preprocessing
    networks = parse_networks(t.networks)
    widths = parse_widths(t.widths)
    unknown = sorted(set(widths) - set(networks))
    if unknown:
        raise TransferError(f"config field 'transfer.widths' sets {unknown}, which 'transfer.networks' does not name")
    return PoolSpec(str(t.set_path), config.data.dataset, source, preprocessing, t.set_format, t.preprocessing,
                    networks, widths, str(t.teacher))


def _set_data(c, spec: PoolSpec, preprocessing: str):
    """The set as every cell reads it; 'auto' stays 'auto' (the set's record decides when the run
    loads it), so a cell equals the same run made by other experiments."""
    recipes.use_own_set(c, spec.dataset, spec.set_path)
    c.data.preprocessing = preprocessing
    c.data.distilled_format = spec.set_format


def _family(source: str) -> str:
    """The distiller's network family: ConvNet-FRePo for FRePo sets, the instance-norm ConvNet otherwise."""
    return "frepo" if source == "frepo" else "mtt"


def _width(spec: PoolSpec, name: str, scale: registry.Scale) -> int:
    return spec.widths.get(name, scale.width if name not in ("convnet", "vit") else 0)


def network_cell(spec: PoolSpec, name: str, recipe: str, teacher_path: str, scale: registry.Scale,
                 num_seeds: int) -> registry.Cell:
    """One network of the pool with the Baseline or Full recipe, norm by the set's source."""
    c = recipes.base_config(spec.dataset, num_seeds)
    c.mode = "student"
    _set_data(c, spec, spec.preprocessing_field)
    c.model.name = name
    options = models.model_options(name)
    if "norm" in options:
        c.model.norm = models.norm_for_set(spec.source)
    if name.startswith("convnet") and recipes.convnet_depth(spec.dataset) != 3:  # 4 on 64-px images
        c.model.depth = recipes.convnet_depth(spec.dataset)
    has_droppath = "droppath" in options
    variant = recipe if (recipe == "baseline" or has_droppath) else "no_dp"
    recipes.apply_variant(c, variant, name, teacher_path)
    if not has_droppath:
        c.model.droppath = None  # not an option of this network
    label = f"{name} {recipes.VARIANT_LABELS[recipe]}"
    if variant != recipe:
        label += " (no DropPath blocks: w/o DP)"
    if name in EXTENSIONS:
        label += f" [{EXTENSIONS[name]}]"
    c = recipes.scale_config(c, epoch_divisor=scale.epoch_divisor, lr_multiplier=scale.lr_multiplier,
                             width=0, evals=scale.evals)
    width = _width(spec, name, scale)
    if width:
        c.model.width = width
    return registry.Cell(f"{name}_{recipe}", label, c, Role.STUDENT)


def teacher_cell(spec: PoolSpec, workdir: pathlib.Path, scale: registry.Scale, num_seeds: int, *,
                 split_seeds: bool = False, seed: int = 0):
    """(cell, the path students read as KD teacher) for the set's training network; a teacher
    trained here with split seeds is read from its first seed's run, as in `registry`."""
    c = recipes.base_config(spec.dataset, num_seeds)
    _set_data(c, spec, spec.preprocessing_field)
    c = recipes.teacher_recipe(c, _family(spec.source), spec.dataset)
    if not spec.teacher:
        c = recipes.scale_config(c, epoch_divisor=scale.epoch_divisor, lr_multiplier=scale.lr_multiplier,
                                 width=spec.widths.get(c.model.name, scale.teacher_width), evals=scale.evals)
        label = f"Training network ({c.model.name}, trained here on the set, final epoch)"
        return registry.Cell("teacher", label, c, Role.TEACHER), registry.teacher_dir(workdir, split_seeds, seed)
    source = pathlib.Path(spec.teacher)
    c.mode, c.num_seeds = "evaluate", 1
    c.evaluate.path = spec.teacher
    if saved_runs.is_reference_file(source):
        label = f"Training network (imported {source.name}, as its publisher kept it)"
        return registry.Cell("teacher", label, c, Role.IMPORT), str(workdir / "teacher")
    model_file = source / workdir_io.MODEL_FILE
    if not model_file.is_file():
        raise TransferError(f"config field 'transfer.teacher' = {spec.teacher!r}: neither a .pth file nor the "
                            f"workdir of a run of this package (no {model_file})")
    saved = json.loads(model_file.read_text())
    c.model.name = saved["name"]
    for option, value in saved.get("options", {}).items():
        c.model[option] = value
    return registry.Cell("teacher", f"Training network (run {source})", c, Role.SCORE), str(source)


def transfer_cells(config, workdir) -> tuple[PoolSpec, list]:
    """The teacher cell, then Baseline and Full of every network of the pool."""
    spec = pool_spec(config)
    scale = registry.Scale.from_config(config)
    workdir = pathlib.Path(workdir)
    teacher, teacher_path = teacher_cell(spec, workdir, scale, config.num_seeds,
                                         split_seeds=bool(config.reproduce.split_seeds), seed=config.seed)
    cells = [teacher]
    for name in spec.networks:
        for recipe in RECIPES:
            cells.append(network_cell(spec, name, recipe, teacher_path, scale, config.num_seeds))
    for cell in cells:
        cell.config.seed = config.seed
    return spec, cells


def _records_by_cell(cell_records: list[dict]) -> dict:
    """Records by cell name; a cell run afresh in `<cell>.<hash>` (reproduce.fresh_cell_dir) counts as `<cell>`."""
    return {rec["cell"].split(".")[0]: rec for rec in cell_records}


def _per_seed(acc: Optional[dict]) -> str:
    return ", ".join(f"{a:.2f}" for a in acc["per_seed"]) if acc else "not finished"


def _difference(a: Optional[dict], b: Optional[dict]) -> str:
    return f"{a['mean'] - b['mean']:+.2f}" if a and b else "n/a"


def transfer_table(cell_records: list[dict], networks: tuple) -> str:
    """Per network: Baseline, Full, gain (Full - Baseline), and each one's gap to the training network."""
    by_cell = _records_by_cell(cell_records)
    teacher = by_cell.get("teacher")
    t_acc = teacher["final_accuracy"] if teacher else None
    rows = []
    for name in networks:
        base, full = by_cell.get(f"{name}_baseline"), by_cell.get(f"{name}_full")
        b_acc = base["final_accuracy"] if base else None
        f_acc = full["final_accuracy"] if full else None
        label = (full or base or {}).get("network", name)
        if any("(partial)" in (rec or {}).get("label", "") for rec in (base, full)):
            label += " (partial: seeds still training)"
        if full and "no DropPath" in full["label"]:
            label += "; Full without DropPath"
        if name in EXTENSIONS:
            label += f" ({EXTENSIONS[name]})"
        rows.append([label, tables.format_mean_std(b_acc), tables.format_mean_std(f_acc), _difference(f_acc, b_acc),
                     _difference(b_acc, t_acc), _difference(f_acc, t_acc), _per_seed(b_acc), _per_seed(f_acc)])
    header = ["network", "Baseline", "Full", "gain", "Baseline - training net", "Full - training net",
              "Baseline per seed", "Full per seed"]
    teacher_line = (f"Training network: {teacher['label']}, {teacher['network']}: "
                    f"{tables.format_mean_std(t_acc)} (per seed {_per_seed(t_acc)}).\n\n" if teacher else "")
    return teacher_line + tables.markdown_table(header, rows)


def plot_transfer(cell_records: list[dict], networks: tuple, path, title: str = "") -> pathlib.Path:
    """Grouped bars (Baseline, Full) with ± std error bars per network; the training network as a line."""
    by_cell = _records_by_cell(cell_records)

    def stat(cell: str):
        acc = (by_cell.get(cell) or {}).get("final_accuracy")
        return (acc["mean"], acc["std"]) if acc else (np.nan, 0.0)

    bars = {recipe: [stat(f"{n}_{recipe}") for n in networks] for recipe in RECIPES}
    teacher = (by_cell.get("teacher") or {}).get("final_accuracy")
    return plots.plot_grouped_bars(list(networks), {recipes.VARIANT_LABELS[r]: v for r, v in bars.items()}, path,
                                   reference=(teacher["mean"], "training network") if teacher else None,
                                   ylabel="final test accuracy (%)", title=title)


def run_transfer(config, workdir, *, data_cache: Optional[dict] = None) -> dict:
    """Runs the pool (teacher first) and writes transfer.md, transfer.png and transfer.json."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec, cells = transfer_cells(config, workdir)
    settings = config.reproduce
    title = config.transfer.name or pathlib.Path(spec.set_path).name
    cells = reproduce.select_cells(reproduce.inherit_fields(cells, config), settings, f"transfer {title}")
    cell_records = reproduce.run_cells(cells, workdir, settings, f"transfer {title}", data_cache)
    table = transfer_table(cell_records, spec.networks) + reproduce.teacher_note(cell_records)
    heading = (f"### Cross-architecture transfer: {title}\n\nSet `{spec.set_path}` (source {spec.source}, "
               f"pixel space {spec.preprocessing}), test split of {spec.dataset}. Final-epoch test accuracy, "
               f"mean ± std (ddof=1) over {config.num_seeds} seed(s); differences are of the means. "
               f"{reproduce.scale_line(settings)}\n\n")
    plot_transfer(cell_records, spec.networks, workdir / "transfer.png", title=title)
    workdir_io.write_text(workdir / "transfer.md", heading + table)
    summary = {"set": dataclasses.asdict(spec), "config": config.to_dict(),
               "cells": reproduce.cell_summaries(cell_records), "command": results_record.command_line(),
               "software": records.software_versions(), "device": records.device_description()}
    workdir_io.write_json(workdir / "transfer.json", summary)
    if workdir_io.is_writer():  # the record reads back the files only process 0 wrote
        results_record.write_record(workdir / results_record.AUTO_FILE,
                                    results_record.from_workdir(workdir, summary_file="transfer.json"))
    return {**summary, "table": table, "summary": heading + table}
