"""The ``distill-jax`` command line.

Each subcommand is registered by a ``register_<name>(subparsers)`` function listed in
``SUBCOMMANDS``: it adds its parser and sets ``handler`` (``args -> exit code``).
To add a subcommand, write such a function and append it to ``SUBCOMMANDS``.
Expected failures (bad files, bad options: `errors.user_error_message`) are printed as one
line on stderr with exit code 2, without a traceback (``--verbose`` shows it).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from distill_jax import errors, launcher
from distill_jax.data import pipeline
from distill_jax.experiments import compare, registry, transfer
from distill_jax.formats.distilled import FORMATS, PREPROCESSING, load_distilled, save_distilled, summarize_distilled
from distill_jax.report import render_docs, results_record, show

PROG = "distill-jax"


def _format_text(summary: dict) -> str:
    height, width, channels = summary["image_shape"]
    value = summary["value_range"]
    lines = [
        f"path:          {summary['path']}",
        f"format:        {summary['format']} (source: {summary['source']})",
        f"images:        {summary['num_images']} x {height}x{width}x{channels} (NHWC float32)",
        f"labels:        {summary['label_kind']}, {summary['num_classes']} classes",
        f"class counts:  {' '.join(str(c) for c in summary['class_counts'])}",
        f"value range:   min {value['min']:.6g}  max {value['max']:.6g}  "
        f"mean {value['mean']:.6g}  std {value['std']:.6g}",
        f"preprocessing: {summary['preprocessing']}",
    ]
    for index, (name, digest) in enumerate(sorted(summary["sha256"].items())):
        lines.append(f"{'sha256:' if index == 0 else '':<15}{digest}  {name}")
    if summary.get("notes"):
        lines.append(f"notes:         {summary['notes']}")
    return "\n".join(lines)


def _load_options(args: argparse.Namespace) -> dict:
    options = {}
    if getattr(args, "preprocessing", None) is not None:
        options["preprocessing"] = args.preprocessing
    if getattr(args, "source", None) is not None:
        options["source"] = args.source
    if getattr(args, "experiment", None) is not None:
        options["experiment"] = args.experiment
    return options


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default=None, help="force a format instead of auto-detecting it")
    parser.add_argument("--source", default=None, help="distillation method, where the format cannot tell (e.g. frepo)")
    parser.add_argument("--experiment", type=int, default=None, help="experiment index of a DC/DSA/DM res_*.pt")


def run_inspect(args: argparse.Namespace) -> int:
    dset = load_distilled(args.path, format=args.format, **_load_options(args))
    pipeline.check_claimed_dataset(dset)
    summary = summarize_distilled(dset)
    print(json.dumps(summary, sort_keys=True) if args.json else _format_text(summary))
    return 0


def register_inspect(subparsers) -> None:
    parser = subparsers.add_parser("inspect", help="describe a distilled set", description="Describe a distilled set.")
    parser.add_argument("path", help="file or folder of a distilled set")
    _add_source_options(parser)
    parser.add_argument("--preprocessing", choices=PREPROCESSING, default=None, help="override the pixel space")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_inspect)


def run_convert(args: argparse.Namespace) -> int:
    dset = load_distilled(args.src, format=args.format, **_load_options(args))
    written = save_distilled(dset, args.dst)
    print(f"wrote {dset.num_images} images ({dset.label_kind} labels, {dset.preprocessing}) to {written}")
    return 0


def register_convert(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="write a distilled set in distill_jax's own npz format",
        description="Read a distilled set in any supported format and write distill_jax's npz.",
    )
    parser.add_argument("src", help="file or folder of a distilled set")
    parser.add_argument("dst", help="output .npz path")
    _add_source_options(parser)
    parser.add_argument("--preprocessing", choices=PREPROCESSING, default=None, help="declare the pixel space")
    parser.set_defaults(handler=run_convert)


def run_show(args: argparse.Namespace) -> int:
    options = _load_options(args)
    options.pop("preprocessing", None)  # show_set's own argument: the pixel space to undo
    shown = show.show_set(args.path, args.out, dataset=args.dataset, data_dir=args.data_dir,
                          preprocessing=args.preprocessing, format=args.format, **options)
    print(f"drew {shown['images']} images ({shown['label_kind']} labels) to {shown['out']}, un-doing "
          f"{shown['preprocessing']} with {shown['inverse_of']}"
          + (f"; learned labels: {shown['labels_out']}" if "labels_out" in shown else ""))
    return 0


def register_show(subparsers) -> None:
    parser = subparsers.add_parser(
        "show", help="draw a distilled set as an image grid (rows = classes)",
        description="Draw any readable set as a grid of images with class names, mapped back to display pixels "
                    "(the inverse of its preprocessing, fitted on the matching real training split in the data root).")
    parser.add_argument("path", help="file or folder of a distilled set")
    parser.add_argument("--out", default="grid.png", help="output PNG (learned labels also get <out>_labels.png)")
    parser.add_argument("--dataset", default=None, help="the real dataset the set's pixel space was fitted on "
                                                          "(default: guessed from the image shape and classes)")
    parser.add_argument("--data-dir", default=None, help="folder of that dataset (default: the data root)")
    _add_source_options(parser)
    parser.add_argument("--preprocessing", choices=PREPROCESSING, default=None, help="override the pixel space")
    parser.set_defaults(handler=run_show)


def launch_command(flags: Sequence[str]) -> int:
    """`distill-jax run FLAGS...`: a launch with the launcher's absl flags (as launch/main.py)."""
    try:
        launcher.main([f"{PROG} run", *flags])
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


def register_run(subparsers) -> None:
    """Listed for --help only: `main` hands `run` and everything after it to the launcher,
    whose flags (--config, --config.field=value, ...) argparse cannot parse."""
    subparsers.add_parser(
        "run", help="train, distil, evaluate or reproduce from a config file (as launch/main.py)",
        description="distill-jax run --config FILE.py[:arg] --workdir DIR [--config.field=value ...] "
                    "[--distributed [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]] [--verbose]",
        add_help=False)


def run_transfer(args: argparse.Namespace) -> int:
    """Builds mode 'transfer''s config from the arguments and launches it like `distill-jax run`."""
    scale = registry.Scale(args.epoch_divisor, args.lr_multiplier, args.width, args.teacher_width, args.evals)
    if args.set_path.startswith("published:"):
        build = lambda: transfer.published_transfer_config(  # noqa: E731
            args.set_path.split(":", 1)[1], networks=args.networks, num_seeds=args.seeds, widths=args.widths,
            scale=scale, **({"teacher": args.teacher} if args.teacher is not None else {}))
    else:
        if not args.dataset:
            print(f"{PROG} transfer: error: --dataset is required (the real test split the set is scored on)",
                  file=sys.stderr)
            return errors.USER_ERROR_EXIT
        build = lambda: transfer.transfer_config(  # noqa: E731
            args.set_path, args.dataset, networks=args.networks, num_seeds=args.seeds, teacher=args.teacher or "",
            widths=args.widths, set_source=args.source or "", scale=scale)

    def config():
        c = build()
        c.reproduce.split_seeds = args.split_seeds
        if args.data_dir:
            c.data.data_dir = args.data_dir
        return c

    launcher.setup_logging(replace=True)
    return launcher.launch(config, args.workdir, verbose=args.verbose,
                           config_source="the config built from the transfer arguments")


def register_transfer(subparsers) -> None:
    parser = subparsers.add_parser(
        "transfer", help="train a pool of networks on a set, Baseline vs the method",
        description="Cross-architecture report for one distilled set: its training network (the KD teacher), then "
                    "every network of the pool with the Baseline and the Full recipe; writes transfer.md and "
                    "transfer.png in the workdir. Resumable: rerun the same command.")
    parser.add_argument(
        "set_path",
        metavar="SET",
        help="a distilled set (file or folder), or published:<method>_<dataset>_<ipc> "
        "for a set of the paper in the data root",
    )
    parser.add_argument("--workdir", required=True, help="where the cells and the report go")
    parser.add_argument("--dataset", default="", help="the real dataset whose test split scores the networks")
    parser.add_argument("--networks", default=",".join(transfer.DEFAULT_POOL), help="comma-separated pool")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell")
    parser.add_argument("--teacher", default=None, help="the training network: a .pth or a run's workdir "
                        "(default: trained here on the set; a published MTT set uses its published teacher)")
    parser.add_argument("--source", default=None, help="the method that made the set, where its record cannot tell")
    parser.add_argument("--widths", default="", help="per-network widths, e.g. resnet18:16,vit:64")
    parser.add_argument("--width", type=int, default=0, help="width of the other test networks (0: the paper's)")
    parser.add_argument("--teacher-width", type=int, default=0, help="width of a teacher trained here (0: the paper's)")
    parser.add_argument("--epoch-divisor", type=int, default=1, help="divide every schedule's epochs (same phases)")
    parser.add_argument("--lr-multiplier", type=float, default=1.0, help="multiply the peak learning rates")
    parser.add_argument("--evals", type=int, default=0, help="evaluations per run (0: every 100 epochs / divisor)")
    parser.add_argument("--split-seeds", action="store_true", help="one program per seed (faster on CPU)")
    parser.add_argument(
        "--data-dir", default="", help="the data root (default: $DISTILL_JAX_DATA, else the user cache)"
    )
    parser.set_defaults(handler=run_transfer)


def run_compare(args: argparse.Namespace) -> int:
    labels = None if args.labels is None else args.labels.split(",")
    done = compare.write_comparison(args.workdirs, args.out, labels=labels, paper=args.paper)
    print(done["markdown"])
    print(f"wrote {done['files']['md']}, {done['files']['png']} and {done['files']['json']}")
    return 0


def register_compare(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="one experiment run at several scales, side by side (table, orderings, curves)",
        description="Read experiment workdirs of `reproduce` (the folders holding the cell dirs), one per scale, as "
                    "they stand (unfinished cells from their finished seeds), and write compare.md (final test "
                    "accuracy and last-step training accuracy per cell and scale, the ablation's orderings with "
                    "their seed spreads), compare.png (test accuracy against epoch / epochs) and compare.json.")
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="an experiment workdir, one per scale")
    parser.add_argument("--labels", default=None, help="comma-separated column labels, one per workdir "
                        "(default: the scale, e.g. 'epochs/5, lr ×5, width 16')")
    parser.add_argument("--out", required=True, help="folder for compare.md, compare.png and compare.json")
    parser.add_argument("--paper", default=None, metavar="KEY", help="add the paper's published numbers of this "
                        f"experiment (docs/method.md §7): one of {', '.join(sorted(compare.PAPER))}")
    parser.set_defaults(handler=run_compare)


def run_record(args: argparse.Namespace) -> int:
    record = results_record.from_workdir(args.workdir, command=args.command)
    written = results_record.write_record(args.out, record)
    print(f"wrote {written}: {record['kind']} {record['experiment']}, {len(record['cells'])} cell(s), "
          f"config digest {record['config_digest'][:12]}")
    return 0


def register_record(subparsers) -> None:
    parser = subparsers.add_parser(
        "record", help="write the results record of a finished workdir (what results/ keeps)",
        description="Read a finished workdir (a reproduce experiment, a transfer pool, or a single training run) "
                    "and write its results record: per cell and seed the final test accuracy and the last step's "
                    "training accuracy, the cells' networks and recipes, the config digest, software, hardware, "
                    "wall time, date and command (distill_jax.report.results_record).")
    parser.add_argument("workdir", metavar="WORKDIR", help="the finished workdir")
    parser.add_argument("--out", required=True, help="the record file to write, e.g. results/NAME.json")
    parser.add_argument("--command", default=None, help="the command that produced the workdir, where the workdir "
                        "does not store one (a single training run)")
    parser.set_defaults(handler=run_record)


def register_render_docs(subparsers) -> None:
    parser = subparsers.add_parser(
        "render-docs", help="render docs/results.md and the README's result table from results/",
        description="Render docs/results.md (from docs/templates/results.md) and the block of README.md between its "
                    "GENERATED markers (from docs/templates/readme_results.md), every number from the records in "
                    "results/ and the published numbers of distill_jax.report.paper.")
    render_docs.add_arguments(parser)
    parser.set_defaults(handler=render_docs.run)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [register_inspect, register_convert, register_show,
                                                                register_run, register_transfer, register_compare,
                                                                register_record, register_render_docs]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Train networks on distilled datasets (JAX/Flax).")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of an input error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in SUBCOMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (usage errors and bad input: 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        return launch_command(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help or a usage error: argparse already printed
        return int(exit_request.code or 0) if not isinstance(exit_request.code, str) else 2
    try:
        return int(args.handler(args))
    except Exception as err:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        message = errors.user_error_message(err)
        if message is None or getattr(args, "verbose", False):
            raise
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return errors.USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
