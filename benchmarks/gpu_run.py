"""The device run's Python side: the fitted transform that travels, the table, the summary.

    scripts/gpu_bundle.sh [gpu_bundle]          # here: builds the folder the device run carries
    scripts/gpu_device_run.sh gpu_bundle        # there: benchmark + table, everything under $OUT

Subcommands (the two scripts call them; each works alone too):

    bundle-transform PACKED.npz       zca_mtt fitted on the CIFAR-10 (JPEG) training split of the data
                                      root (cached: pipeline.fitted_preprocessing), packed
    unpack-transform PACKED.npz OUT.npz   back to a Preprocessing file (bit for bit: sha256 checked)
    table --bundle B --workdir W --out O [--toy] [--cells C] [--width N]
                                      the FRePo IPC 10 ResNet-18 table, cell by cell
    summary --workdir W --out O [--toy] [--cells C]            summary.md (and stdout) from what is under W and O

Why packed: the fitted ZCA matrix is 3072 x 3072 float32 (37.7 MB) and the test split 28.4 MB,
over the 60 MiB the bundle may hold together. The matrix is symmetric up to float rounding
(W = U diag(1/sqrt(S + eps)) U^T): its upper triangle (18.9 MB) plus the few lower entries that
differ from their mirror (22 of 4.7 million for CIFAR-10 (JPEG)) rebuild it exactly.

The table is `reproduce` mode's, for an experiment registered here: the published FRePo IPC 10
set, teacher (ConvNet-FRePo trained here, final epoch), then ResNet-18 Baseline, Full and w/o DP
(Full before w/o DP: if the time limit ends the run early, the table's main comparison is there), at the
paper's widths and epochs, 3 seeds vmapped in one program per cell. Every cell reads the carried
transform (`data.preprocessing_path`), so the training split is never needed. After each cell
the table so far is copied to the out folder; a cell cut off by the time limit is reported with
the epoch it reached, and the same command resumes it from its last checkpoint.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pathlib
import shutil
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

from distill_jax.data import preprocess  # noqa: E402

_WHERE = "benchmarks/gpu_run.py"
EXPERIMENT = "frepo_cifar10_jpeg_10_resnet18"
DEVICE_EXPERIMENT = "gpu_" + EXPERIMENT
# The cells a device run trains by default, in this order (the teacher first: KD reads it; Full
# before w/o DP, so that a run cut short by its time limit still has the table's main comparison). `--cells`
# (GPU_RUN_CELLS in scripts/gpu_device_run.sh) picks others of the experiment, e.g. the two
# without KD, which need no teacher: no_dp_kd,no_kd.
CELLS = ("teacher", "baseline", "full", "no_dp")
DATASET, RECIPE = "cifar10_jpeg", "zca_mtt"
TRANSFORM_NAME = "zca_mtt.npz"
PACKING = "symmetric_upper_v1"
CHECKPOINTS_PER_CELL = 4
# The dry run: every schedule / 100 (the largest divisor that keeps every phase: warm-up 100 -> 1),
# ResNet-18 at width 4, ConvNet-FRePo at width 8, 1 seed, 2 evaluations, 20 test images per class,
# XLA's own convolution (the one the device uses; on CPU it compiles faster than fast_conv at 1 seed).
# Seeds vmapped together are the same program with a longer leading axis: the benchmark's dry run
# and the suite's training tests run several.
TOY = {"epoch_divisor": 100, "width": 4, "teacher_width": 8, "evals": 2, "seeds": 1, "test_per_class": 20,
       "conv": "xla"}
SEEDS = 3


class GpuRunError(RuntimeError):
    """A bundle file is missing or not what it claims to be, or a cell name is not the experiment's."""


def _width(text: str) -> int:
    """`--width`: a whole number >= 0 (0: the paper's width)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"--width {text!r}: expected a whole number >= 0 (0: the paper's width)")
    return int(text)


def parse_cells(text: str) -> tuple:
    """The comma-separated cell names of `--cells`, in the order given; each must be a cell of
    EXPERIMENT, named once."""
    from distill_jax.experiments import registry
    known = [c.name for c in registry.get_experiment(EXPERIMENT, "unused")]
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if not names or unknown or len(set(names)) != len(names):
        raise GpuRunError(f"{_WHERE}: --cells {text!r}: expected distinct names among {known}"
                          + (f"; unknown: {unknown}" if unknown else ""))
    return names


def _cells_argument(text: str) -> tuple:
    """`--cells` for argparse: a bad list is a usage error, said without a traceback."""
    try:
        return parse_cells(text)
    except GpuRunError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# ----------------------------------------------------------------------------------------- the transform

def pack_transform(prep: preprocess.Preprocessing, path: pathlib.Path) -> dict:
    """Writes `prep` with its ZCA matrix as upper triangle + differing lower entries; returns the meta."""
    record = prep.to_dict()
    meta, arrays = dict(record["meta"]), dict(record["arrays"])
    entries = {}
    matrix = arrays.pop("zca_matrix", None)
    if matrix is not None:
        d = matrix.shape[0]
        upper = np.triu_indices(d)
        lower = np.flatnonzero(np.tril(matrix != matrix.T, k=-1))
        entries.update({"packed.upper": matrix[upper], "packed.lower_index": lower.astype(np.int64),
                        "packed.lower_value": matrix.ravel()[lower]})
        meta["packing"] = {"name": PACKING, "dim": d, "zca_matrix_sha256": _sha256(matrix)}
    entries.update({f"array.{k}": v for k, v in arrays.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, meta=np.array(json.dumps(meta)), **entries)
    return meta


def unpack_transform(path: pathlib.Path) -> preprocess.Preprocessing:
    """Inverse of `pack_transform`; the rebuilt ZCA matrix must match its recorded sha256."""
    if not path.is_file():
        raise GpuRunError(f"{_WHERE}: packed transform {path} not found (build the bundle with scripts/gpu_bundle.sh)")
    with np.load(path, allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files}
    meta = json.loads(str(entries.pop("meta")))
    packing = meta.pop("packing", None)
    arrays = {k[len("array."):]: v for k, v in entries.items() if k.startswith("array.")}
    if packing is not None:
        if packing.get("name") != PACKING:
            raise GpuRunError(f"{_WHERE}: {path}: unknown packing {packing.get('name')!r}, expected {PACKING!r}")
        d = int(packing["dim"])
        matrix = np.zeros((d, d), np.float32)
        matrix[np.triu_indices(d)] = entries["packed.upper"]
        low = np.tril_indices(d, k=-1)
        matrix[low] = matrix.T[low]
        matrix.ravel()[entries["packed.lower_index"]] = entries["packed.lower_value"]
        if _sha256(matrix) != packing["zca_matrix_sha256"]:
            raise GpuRunError(f"{_WHERE}: {path}: the rebuilt ZCA matrix does not match its sha256 (damaged file)")
        arrays["zca_matrix"] = matrix
    return preprocess.Preprocessing.from_dict({"meta": meta, "arrays": arrays}, where=f"packed transform {path}")


def bundle_transform(out: pathlib.Path) -> dict:
    """zca_mtt fitted on the data root's CIFAR-10 (JPEG) training split (from the cache when there), packed."""
    from distill_jax.data import datasets, pipeline
    train = datasets.load_dataset(DATASET, "train")
    prep = pipeline.fitted_preprocessing(RECIPE, train.images, dataset=DATASET)
    meta = pack_transform(prep, out)
    if not np.array_equal(unpack_transform(out).zca_matrix, prep.zca_matrix):  # never carry a bad copy
        raise GpuRunError(f"{_WHERE}: {out}: the packed transform does not rebuild the fitted one")
    return meta


# ----------------------------------------------------------------------------------------- the table

def _toy_data_root(bundle_data: pathlib.Path, root: pathlib.Path, per_class: int) -> pathlib.Path:
    """A data root with the first `per_class` test images of each class and the bundle's sets and
    teachers (dry run)."""
    from distill_jax.data import datasets
    test = datasets.load_dataset(DATASET, "test", data_dir=bundle_data)
    keep = np.concatenate([np.flatnonzero(test.labels == c)[:per_class] for c in range(test.info.num_classes)])
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / f"{DATASET}_test.npz", image=test.images[keep], label=test.labels[keep])
    for folder in ("distilled", "teachers"):
        if (bundle_data / folder).is_dir() and not (root / folder).exists():
            shutil.copytree(bundle_data / folder, root / folder)
    return root


def device_builder(cells_of, transform: pathlib.Path, checkpoints: int = CHECKPOINTS_PER_CELL):
    """An experiment builder (registry.register_experiment) for the device: the cells of
    `cells_of(workdir, scale, *, split_seeds, num_seeds, seed)`, each reading the saved `transform` and
    checkpointing `checkpoints` times (a field safe to change: it is no part of a run's identity)."""

    def build(workdir, scale, *, split_seeds, num_seeds, seed):
        cells = cells_of(workdir, scale, split_seeds=split_seeds, num_seeds=num_seeds, seed=seed)
        for cell in cells:
            cell.config.data.preprocessing_path = str(transform)
            if cell.role.trains:
                cell.config.checkpoint_every_epochs = max(1, cell.config.train.epochs // checkpoints)
        return cells

    return build


def register_device_experiment(transform: pathlib.Path, checkpoints: int = CHECKPOINTS_PER_CELL) -> str:
    """Registers DEVICE_EXPERIMENT: EXPERIMENT's cells in their device form (`device_builder`)."""
    from distill_jax.experiments import registry

    def cells_of(workdir, scale, **kw):
        return registry.get_experiment(EXPERIMENT, workdir, scale, **kw)

    registry.register_experiment(DEVICE_EXPERIMENT, device_builder(cells_of, transform, checkpoints))
    return DEVICE_EXPERIMENT


def table_config(toy: bool, width: int = 0):
    """The table's config; `width` (0: the paper's, or the toy's) sets the students' width, as
    `reproduce.width` does on CPU: the same cells as a CPU run at that width, on the device."""
    from distill_jax import config as config_lib
    c = config_lib.default_config()
    c.mode = "reproduce"
    c.num_seeds = TOY["seeds"] if toy else SEEDS
    c.reproduce.experiment = DEVICE_EXPERIMENT
    if toy:
        r = c.reproduce
        r.epoch_divisor, r.width, r.teacher_width, r.evals = (TOY["epoch_divisor"], TOY["width"], TOY["teacher_width"],
                                                              TOY["evals"])
    if width:
        c.reproduce.width = width
    return c


def _progress(out: pathlib.Path, line: str) -> None:
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    with open(out / "progress.txt", "a") as f:
        f.write(f"[{stamp}] {line}\n")
    logging.info("%s", line)


def _write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run_table(bundle: pathlib.Path, workdir: pathlib.Path, out: pathlib.Path, *, toy: bool,
              cells: tuple = CELLS, width: int = 0) -> dict:
    from distill_jax.experiments import reproduce
    workdir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    data_root = bundle / "data"
    if toy:
        os.environ["DISTILL_JAX_CONV"] = TOY["conv"]
        data_root = _toy_data_root(data_root, workdir / "toy_data", TOY["test_per_class"])
    os.environ["DISTILL_JAX_DATA"] = str(data_root.resolve())
    transform = workdir / TRANSFORM_NAME
    if not transform.is_file():
        unpack_transform(bundle / "zca_mtt.packed.npz").save(transform)
    register_device_experiment(transform.resolve(), 2 if toy else CHECKPOINTS_PER_CELL)
    config = table_config(toy, width)
    data_cache: dict = {}
    result = {}
    for k in range(1, len(cells) + 1):
        config.reproduce.cells = ",".join(cells[:k])
        started = time.perf_counter()
        _progress(out, f"table: cell {cells[k - 1]} starts")
        result = reproduce.run_reproduction(config, workdir, data_cache=data_cache)
        _progress(out, f"table: cell {cells[k - 1]} done in {time.perf_counter() - started:.0f} s")
        write_table_outputs(workdir, out, toy=toy, cells=cells)
    return result


def _cell_progress(workdir: pathlib.Path, cell: str) -> dict:
    """How far a cell got (finished: results.json says so; else the last epoch in metrics.jsonl)
    and its last logged training speed."""
    run = workdir / cell
    state = {"cell": cell, "finished": False, "epoch": 0, "epochs": None, "images_per_s": None}
    results = run / "results.json"
    if results.is_file():
        try:
            state["finished"] = bool(json.loads(results.read_text()).get("finished"))
        except ValueError:
            pass
    config = run / "config.json"
    if config.is_file():
        try:
            state["epochs"] = json.loads(config.read_text())["train"]["epochs"]
        except (ValueError, KeyError):
            pass
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            state["epoch"] = max(state["epoch"], int(record.get("epoch", 0)))
            if record.get("images_per_s"):
                state["images_per_s"] = record["images_per_s"]
    return state


def write_table_outputs(workdir: pathlib.Path, out: pathlib.Path, *, toy: bool, cells: tuple = CELLS) -> str:
    """out/table.md (the table of the finished cells, with what is missing said) and out/table.json."""
    progress = [_cell_progress(workdir, c) for c in cells]
    missing = [p for p in progress if not p["finished"]]
    lines = []
    if toy:
        lines.append("**TOY DRY RUN on CPU (schedules / 100, widths 4 and 8, 1 seed, 200 test images): "
                     "checks the machinery, not a result.**\n")
    # a run of some cells names its table after them (table.teacher+baseline.md): the newest is the widest
    tables = sorted(workdir.glob("table*.md"), key=lambda path: path.stat().st_mtime)
    lines.append(tables[-1].read_text() if tables else "(no cell finished)\n")
    if missing:
        lines.append("\n**Partial table**: not finished within the time limit: " + "; ".join(
            f"{p['cell']} (epoch {p.get('epoch', 0)} of {p.get('epochs') or '?'})" for p in missing)
            + ". Rerun the same command on the same machine to resume from the last checkpoint.\n")
    text = "\n".join(lines)
    _write(out / "table.md", text)
    records = {}
    for cell in cells:
        path = workdir / cell / "record.json"
        if path.is_file():
            try:
                records[cell] = json.loads(path.read_text())
            except ValueError:
                pass
    reproduction = workdir / "reproduction.json"
    summary = {"toy": toy, "progress": progress, "records": records,
               "reproduction": json.loads(reproduction.read_text()) if reproduction.is_file() else None}
    _write(out / "table.json", json.dumps(summary, indent=1, default=str))
    return text


# ----------------------------------------------------------------------------------------- the summary

def _bench_lines(path: pathlib.Path) -> list[str]:
    if not path.is_file():
        return ["Benchmark: no results (see bench.txt)."]
    bench = json.loads(path.read_text())
    lines = []
    groups = [g for g in bench.get("groups", []) if not g.get("skipped")]
    if not groups:
        return ["Benchmark: no group ran (see bench.txt)."]
    cells = groups[0]["cells"]
    info = next((c.get("info") for c in cells.values() if c["lib"] == "jax" and c.get("info")), {}) or {}
    torch_cell = cells.get("torch", {})
    torch_state = (f"torch {torch_cell['info'].get('torch')} on {torch_cell['info'].get('device_name')}"
                   if torch_cell.get("info") else f"PyTorch not measured: {torch_cell.get('error', 'no cell')}")
    peak = f"{info['peak_flops'] / 1e12:.3g} TFLOP/s" if info.get("peak_flops") else "unknown"
    lines.append(f"Device: {info.get('device_kind', '?')} (backend {info.get('backend', '?')}); peak {peak} "
                 f"({info.get('source', '?')}, {info.get('precision', '?')}); {torch_state}.")
    rows = {r["cell"]: r for r in bench.get("cells", [])}
    for label in ("jax", "jax_s3", "jax_s5", "jax_s3_grouped", "jax_s5_grouped", "jax_seq5", "torch", "torch_seq5"):
        r = rows.get(label)
        if not r:
            continue
        if r.get("wall_s") is None:
            lines.append(f"  {label:14s} failed: {(r.get('error') or '?')[:120]}")
            continue
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") else "-"
        lines.append(
            f"  {label:14s} {r['model']} batch {r['batch']} x {r['seeds']} seed(s): {1e3 * r['wall_s']:.2f} ms "
            f"a step, {r['images_per_s']:.0f} images/s, MFU {mfu}, compile {r.get('compile_s') or 0:.1f} s"
        )
    lines.append("  (compile times: the preset compiles its cells at once, so each is longer than alone)")
    for s in bench.get("scaling", []):
        vs_jax, vs_torch = s.get("speedup_wall"), s.get("vs_torch_sequential_wall")
        how = " (XLA's grouped convolution)" if s.get("cell", "").endswith("_grouped") else ""
        lines.append(f"  {s['seeds']} seeds vmapped{how} vs one after another: "
                     + (f"{vs_jax:.2f}x faster than JAX ({s['sequential_is']})" if vs_jax else "JAX not measured")
                     + (f", {vs_torch:.2f}x faster than PyTorch" if vs_torch else ", PyTorch not measured"))
    return lines


def write_summary(workdir: pathlib.Path, out: pathlib.Path, *, toy: bool, cells: tuple = CELLS) -> str:
    out.mkdir(parents=True, exist_ok=True)
    head = "# GPU run summary" + (" (TOY DRY RUN on CPU: not results)" if toy else "")
    lines = [head, ""] + _bench_lines(out / "bench.json") + [""]
    table = write_table_outputs(workdir, out, toy=toy, cells=cells) if workdir.is_dir() else "(the table did not start)"
    lines += ["## FRePo IPC 10, ResNet-18 (CIFAR-10 (JPEG))", "", table]
    progress = [_cell_progress(workdir, c) for c in cells] if workdir.is_dir() else []
    if progress:
        lines += ["Cells (training speed: images x seeds per second, last logged):"]
    for p in progress:
        speed = f", {p['images_per_s']:.0f} images/s" if p.get("images_per_s") else ""
        lines.append(f"- {p['cell']}: {'finished' if p['finished'] else 'NOT finished'}, epoch {p['epoch']} of "
                     f"{p['epochs'] or '?'}{speed}")
    log = out / "progress.txt"
    if log.is_file():
        lines += ["", "Timeline (progress.txt):"] + [
            "    " + line for line in log.read_text().splitlines()
            if line.startswith("[") and any(w in line for w in ("benchmark", "table", "setup", "done"))]
    text = "\n".join(lines) + "\n"
    _write(out / "summary.md", text)
    return text


# ----------------------------------------------------------------------------------------- command line

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bundle-transform")
    b.add_argument("packed", type=pathlib.Path)
    u = sub.add_parser("unpack-transform")
    u.add_argument("packed", type=pathlib.Path)
    u.add_argument("out", type=pathlib.Path)
    for name in ("table", "summary"):
        t = sub.add_parser(name)
        if name == "table":
            t.add_argument("--bundle", type=pathlib.Path, required=True)
            t.add_argument("--width", type=_width, default=0,
                           help="the students' width (ResNet-18's first stage; default 0: the paper's)")
        t.add_argument("--workdir", type=pathlib.Path, required=True)
        t.add_argument("--out", type=pathlib.Path, required=True)
        t.add_argument("--toy", action="store_true")
        t.add_argument("--cells", type=_cells_argument, default=CELLS,
                       help=f"comma-separated cells of {EXPERIMENT}, run in this order (default: {','.join(CELLS)})")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                        format="%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S")
    if args.command == "bundle-transform":
        meta = bundle_transform(args.packed)
        print(json.dumps(meta))
    elif args.command == "unpack-transform":
        unpack_transform(args.packed).save(args.out)
    elif args.command == "table":
        run_table(args.bundle, args.workdir, args.out, toy=args.toy, cells=args.cells, width=args.width)
    else:
        print(write_summary(args.workdir, args.out, toy=args.toy, cells=args.cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
