"""Table of a reproduction that is still running: every finished run so far, nothing trained.

    python scripts/partial_table.py <experiment workdir>

Cells are read from record.json when the cell is complete, else from the finished
seed_*/results.json runs under it (the 'seeds' column then says how many have finished).
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from distill_jax.experiments import recipes, reproduce  # noqa: E402
from distill_jax.report import records, tables  # noqa: E402

ORDER = ("teacher", *recipes.VARIANTS, "dp_kd")
LABELS = {**recipes.VARIANT_LABELS, "teacher": "Teacher / ConvNet", "dp_kd": "DropPath + KD"}


def cell_record(cell_dir: pathlib.Path):
    if (cell_dir / "record.json").is_file():
        return json.loads((cell_dir / "record.json").read_text())
    runs = [json.loads(p.read_text()) for p in sorted(cell_dir.glob("seed_*/results.json"))]
    runs = [r for r in runs if r.get("finished")]
    if not runs:
        return None
    merged = records.merge_seed_results(runs)
    config = runs[0]["config"]
    return {"label": LABELS.get(cell_dir.name, cell_dir.name) + " (partial)",
            "network": reproduce.network_label(config["model"]["name"], config["model"].get("width"),
                                               config["model"].get("norm")),
            "epochs": config["train"]["epochs"], **merged}


def main(workdir: str) -> None:
    root = pathlib.Path(workdir)
    cells = [c for c in ORDER if (root / c).is_dir()]
    recs = [r for r in (cell_record(root / c) for c in cells) if r is not None]
    print(tables.experiment_table(recs))


if __name__ == "__main__":
    main(sys.argv[1])
