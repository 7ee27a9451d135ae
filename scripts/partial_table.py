"""Table of a reproduction or transfer pool that is still running: every finished run so far,
nothing trained.

    python scripts/partial_table.py <experiment workdir>
    python scripts/partial_table.py <transfer workdir> --transfer convnet,resnet18,vgg11

Cells are read from record.json when the cell is complete, else from the finished
seed_*/results.json runs under it (the 'seeds' column then says how many have finished):
`distill_jax.experiments.compare.cell_record`, which `distill-jax compare` reads with too.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from distill_jax.experiments import recipes, transfer  # noqa: E402
from distill_jax.experiments.compare import cell_record  # noqa: E402
from distill_jax.report import tables  # noqa: E402

ORDER = ("teacher", *recipes.VARIANTS, "dp_kd")


def main(workdir: str, pool: str = "") -> None:
    root = pathlib.Path(workdir)
    if pool:
        networks = transfer.parse_networks(pool, "--transfer")
        names = ["teacher"] + [f"{n}_{r}" for n in networks for r in transfer.RECIPES]
        recs = [r for r in (cell_record(root / c) for c in names if (root / c).is_dir()) if r is not None]
        print(transfer.transfer_table(recs, networks))
        return
    cells = [c for c in ORDER if (root / c).is_dir()]
    recs = [r for r in (cell_record(root / c) for c in cells) if r is not None]
    print(tables.experiment_table(recs))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--transfer" else "")
