"""Launcher: `python launch/main.py --config configs/<file>.py --workdir <dir> [--config.field=value ...]`.

Logs the devices and the resolved config, then hands over to the library.
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.json.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host TPU/GPU).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    import jax

    # Orbax and other libraries log every checkpoint step through absl at INFO; keep ours.
    logging.getLogger("absl").setLevel(logging.WARNING)

    from distill_jax.config import ConfigError, validate
    from distill_jax.run import run

    # Reproductions run many cells with identical programs: cache compiled XLA programs on disk.
    jax.config.update("jax_compilation_cache_dir", os.environ.get(
        "DISTILL_JAX_XLA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "distill_jax", "xla")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    if FLAGS.distributed:
        jax.distributed.initialize()
    logging.info("JAX %s, process %d of %d, devices: %s", jax.__version__, jax.process_index(),
                 jax.process_count(), jax.devices())
    try:
        config = validate(FLAGS.config)
    except ConfigError as err:
        sys.exit(f"config error: {err}")
    if config.mode == "reproduce":  # the cells build their own configs (each cell's config.json); show what applies
        logging.info("config (mode reproduce, seed %d, %d seeds):\n%s", config.seed, config.num_seeds, config.reproduce)
    else:
        logging.info("config:\n%s", config)
    results = run(config, FLAGS.workdir)
    if "summary" in results:
        print(results["summary"])
    elif results.get("final_accuracy") is None:
        print("stopped before the last epoch; run the same command again to resume")
    else:
        fa = results["final_accuracy"]
        print(f"final test accuracy (last epoch, {len(fa['per_seed'])} seeds): {fa['mean']:.2f} ± {fa['std']:.2f} %")
    print(f"results in {FLAGS.workdir}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    app.run(main)
