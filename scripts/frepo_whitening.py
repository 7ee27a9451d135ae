"""Which whitening do the published FRePo sets live in? Settle it by measurement.

Training on a distilled set does not depend on the test-time transform, so the script
trains ConvNet-FRePo once (several seeds, one program) on the set, then evaluates the same
networks on the real test split put through each candidate transform fitted on the real
training split. The candidate under which the networks score best is the set's space.
(This picks a preprocessing by test accuracy; it is a format question, not a model choice.)

    python scripts/frepo_whitening.py --set <data root>/distilled/cifar10_10_frepo --workdir runs/frepo_white
"""
import argparse
import json
import logging
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from distill_jax import config as config_lib  # noqa: E402
from distill_jax.data import datasets, pipeline  # noqa: E402
from distill_jax.training import accuracy, loop, metrics, sharding, workdir_io  # noqa: E402

CANDIDATES = ("zca_frepo", "zca_kip", "zca_mtt", "standardize", "none")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", required=True)
    p.add_argument("--dataset", default="cifar10_jpeg")
    p.add_argument("--workdir", required=True)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)

    c = config_lib.default_config()
    c.mode = "teacher"
    c.num_seeds = args.seeds
    c.data.source = "distilled"
    c.data.dataset = args.dataset
    c.data.distilled_path = args.set
    c.data.preprocessing = "zca_frepo"  # test-time only; training sees the set as published
    c.model.name = "convnet_frepo"
    c.model.width = args.width
    c.train.epochs = args.epochs
    c.train.optimizer = "adamw"
    c.train.learning_rate = 1e-3
    c.train.weight_decay = 5e-4
    c.train.lr_schedule = "warmup_cosine"
    c.train.augment.k = 2
    c.eval_every_epochs = args.epochs
    c.checkpoint_every_epochs = args.epochs
    workdir = pathlib.Path(args.workdir)
    results = loop.train_and_evaluate(c, workdir)

    manager = ocp.CheckpointManager(workdir.resolve() / workdir_io.CHECKPOINT_DIR, item_names=("state", "meta"))
    state = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    real_train = datasets.load_dataset(args.dataset, "train")
    real_test = datasets.load_dataset(args.dataset, "test")
    model = loop.build_model(c, real_train.info.num_classes)
    mesh = sharding.make_mesh(500)
    test_accuracy = accuracy.make_accuracy(model, mesh)
    state = sharding.replicate(state, mesh)
    table = {}
    for recipe in CANDIDATES:
        prep = pipeline.fitted_preprocessing(recipe, real_train.images)
        test = np.asarray(prep.apply(datasets.to_float(real_test.images)), np.float32)
        acc = test_accuracy(state, test, real_test.labels, 500)
        table[recipe] = metrics.summarize(acc)
        logging.info("%-12s test accuracy %.2f ± %.2f  (per seed %s)", recipe, table[recipe]["mean"],
                     table[recipe]["std"], " ".join(f"{a:.2f}" for a in acc))
    out = {"set": args.set, "dataset": args.dataset, "model": f"convnet_frepo width {args.width}",
           "epochs": args.epochs, "seeds": args.seeds, "accuracy_by_test_transform": table,
           "training_final_accuracy_zca_frepo": results["final_accuracy"]}
    workdir_io.write_json(workdir / "whitening.json", out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
