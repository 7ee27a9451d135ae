"""The launch of one run from a config file: `python launch/main.py --config FILE --workdir DIR
[--config.field=value ...]`, or `distill-jax run` with the same flags from a pip install.

Logs the devices and a summary of the config, validates it, hands over to the mode
(`distill_jax.modes`), and turns user errors into one line with exit code 2. With
`--distributed`, process 0 logs and prints the run; the others log only warnings and errors.
Where no cluster environment (TPU pod, SLURM, Open MPI) tells JAX who is who, pass
`--coordinator_address`, `--num_processes` and `--process_id` with it.
"""
import logging
import sys
from typing import Optional

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from distill_jax import errors, modes, paths
from distill_jax.config import load_config_file, validate
from distill_jax.errors import ConfigError
from distill_jax.training.workdir_io import CONFIG_FILE, RESULTS_FILE, check_workdir, is_writer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.json.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host TPU/GPU).")
flags.DEFINE_string("coordinator_address", None, "With --distributed: host:port of process 0 (default: from the "
                    "cluster environment or JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "With --distributed: how many processes take part (default: from the "
                     "cluster environment).")
flags.DEFINE_integer("process_id", None, "With --distributed: this process's index, 0 to num_processes - 1 "
                     "(default: from the cluster environment).")
flags.DEFINE_bool("verbose", False, "Log the whole config, and show tracebacks of user errors.")
flags.mark_flags_as_required(["config", "workdir"])


DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id")


def distributed_settings(values: dict, distributed: bool) -> dict:
    """The arguments of `jax.distributed.initialize` that the flags give (None: JAX finds them);
    a user error if they are given without --distributed, or the process id is out of range."""
    given = {k: v for k, v in values.items() if v is not None}
    if given and not distributed:
        raise errors.UserError(f"flags --{' --'.join(given)} need --distributed")
    n, i = given.get("num_processes"), given.get("process_id")
    if n is not None and n < 1:
        raise errors.UserError(f"flag --num_processes = {n}; expected at least 1")
    if i is not None and (i < 0 or (n is not None and i >= n)):
        raise errors.UserError(f"flag --process_id = {i}; expected 0 to {'num_processes - 1' if n is None else n - 1}")
    return given


def launch_from_flags(argv):
    """absl's main: launches with the parsed flags (exits with the launch's code)."""
    del argv
    try:
        settings = distributed_settings({k: FLAGS[k].value for k in DISTRIBUTED_FLAGS}, FLAGS.distributed)
    except errors.UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(errors.USER_ERROR_EXIT)
    exit_code = launch(lambda: FLAGS.config, FLAGS.workdir, verbose=FLAGS.verbose, distributed=FLAGS.distributed,
                       distributed_settings=settings)
    if exit_code:
        sys.exit(exit_code)


def launch(get_config, workdir, *, verbose: bool = False, distributed: bool = False,
           distributed_settings: Optional[dict] = None, config_source: str = "the config given by --config") -> int:
    """Validates the config that `get_config()` returns and runs its mode in `workdir`; prints the
    result (process 0) and returns the exit code: 0, 2 for a user error (one line on stderr, a
    traceback with `verbose`), 3 for a diverged run. `launch/main.py`, `distill-jax run` and
    `distill-jax transfer` all launch through here; `config_source` names where the config came
    from in a loading error; `distributed_settings` (`distributed_settings()`) go to
    `jax.distributed.initialize`."""
    # Orbax and other libraries log every checkpoint step through absl at INFO; keep ours.
    logging.getLogger("absl").setLevel(logging.WARNING)

    # Reproductions run many cells with identical programs: cache compiled XLA programs on disk.
    jax.config.update("jax_compilation_cache_dir", str(paths.xla_cache()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    if distributed:
        jax.distributed.initialize(**(distributed_settings or {}))
    logging.info("JAX %s, process %d of %d, devices: %s", jax.__version__, jax.process_index(),
                 jax.process_count(), jax.devices())
    if not is_writer():  # every process runs the same run: its lines once, from process 0
        logging.getLogger().setLevel(logging.WARNING)
    try:
        try:
            loaded = get_config()
            loaded.keys()  # a lazily loaded config raises its loading error on first use
        except Exception as err:  # noqa: BLE001 - a missing file, a syntax error, a bad get_config argument
            raise ConfigError(f"cannot load {config_source}: {err}") from err
        if not isinstance(loaded, ml_collections.ConfigDict):
            raise ConfigError(f"cannot load {config_source}: it gave a {type(loaded).__name__}; expected a ConfigDict")
        config = validate(loaded)
        if is_writer():  # before any work: a workdir that cannot hold the run's files
            check_workdir(workdir)
        if verbose:
            logging.info("config:\n%s", config)
        elif config.mode in ("reproduce", "transfer"):  # the cells build their own configs (each cell's config.json)
            logging.info("config (mode %s, seed %d, %d seeds):\n%s", config.mode, config.seed, config.num_seeds,
                         config[config.mode] if config.mode == "transfer" else config.reproduce)
        else:
            logging.info("mode %s, %s on %s; the whole config goes to %s/%s (--verbose logs it)",
                         config.mode, config.model.name, config.data.dataset, workdir, CONFIG_FILE)
        results = modes.run(config, workdir)
    except Exception as err:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        message = errors.user_error_message(err)
        if message is None or verbose:
            raise
        print(f"error: {message}", file=sys.stderr)
        return errors.USER_ERROR_EXIT
    if results.get("diverged"):
        d = results["diverged"]
        print(f"diverged at step {d['step']} (epoch {d['epoch']}), seed(s) {d['seeds']}: non-finite loss or "
              f"parameters; no final accuracy (see {workdir}/{RESULTS_FILE})", file=sys.stderr)
        return errors.DIVERGED_EXIT
    if not is_writer():
        return 0
    if "summary" in results:
        print(results["summary"])
    elif results.get("final_accuracy") is None:
        print("stopped before the last epoch; run the same command again to resume")
    else:
        fa = results["final_accuracy"]
        print(f"final test accuracy (last epoch, {len(fa['per_seed'])} seeds): {fa['mean']:.2f} ± {fa['std']:.2f} %")
    print(f"results in {workdir}")
    return 0


def parse_flags(argv):
    """absl's flag parsing, with a bad config file, config argument or override (`--config.x=y`
    naming no field) reported as one line instead of absl's traceback dump."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # ml_collections' warnings while loading: the error below says it all
    try:
        return FLAGS(argv)
    except Exception as err:  # noqa: BLE001 - flags.Error, or the config module's own error
        if "--verbose" in argv:
            raise
        message = config_file_error(argv)  # the config file itself, in the package's words
        if message is not None:
            message = f"cannot load the config given by --config: {message}"
        else:
            message = _flags_error_message(err)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(errors.USER_ERROR_EXIT)
    finally:
        absl_logger.setLevel(level)


def _flags_error_message(err: Exception) -> str:
    cause = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    message = errors.user_error_message(cause)
    if message is None:  # the config loader reports a config file's error as text: keep its last line
        lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        message = lines[-1] if lines else type(cause).__name__
    if isinstance(cause, (KeyError, AttributeError)):
        message = f"an override names no config field: {message}"
    if cause is err and "--config" not in str(err):  # another flag: e.g. a missing --workdir
        return f"flags: {message}"
    return f"cannot load the config given by --config: {message}"


def config_file_error(argv) -> str | None:
    """Why the config file that `--config` names in `argv` cannot give a config (no such file, no
    get_config(), get_config() returning no ConfigDict, a user error raised by it), as one line;
    None when it loads, or when no --config is given (then the flags' own error says what is wrong)."""
    path = None
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
    if path is None:
        return None
    try:
        load_config_file(path)
    except errors.UserError as err:
        return errors.user_error_message(err)
    except Exception:  # noqa: BLE001 - the flags' error reports it
        return None
    return None


def setup_logging(*, replace: bool = False) -> None:
    """INFO lines with the time. `replace`: for launches outside absl's `app.run` (the
    `distill-jax` subcommands), whose root logger may hold absl's pre-flag-parsing handler,
    which drops INFO."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=replace)


def main(argv=None) -> None:
    """Runs a launch as `python launch/main.py ...` or `distill-jax run ...` does (exits)."""
    setup_logging()
    app.run(launch_from_flags, argv=argv, flags_parser=parse_flags)
