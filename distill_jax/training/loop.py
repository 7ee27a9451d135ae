"""`train_and_evaluate(config, workdir)`: the edge where state and I/O live.

Everything inside the jitted step is pure; this module loads data, builds the network,
optimiser and schedules from the config, trains `num_seeds` networks together in one
vmapped program, evaluates, checkpoints and writes `results.json`.
"""
from __future__ import annotations

import json
import logging
import math
import pathlib
import platform
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import models
from distill_jax.defaults import default_config
from distill_jax.data import augment
from distill_jax.data import grid as image_grid
from distill_jax.data import pipeline
from distill_jax.optim import make_optimizer, schedules
from distill_jax.training import checkpoint as ckpt_lib
from distill_jax.training import metrics as metrics_lib
from distill_jax.training import rundir, sharding, steps, teacher


TRAIN_SET_GRID = "train_set.png"
RESULTS_FILE = "results.json"


def build_augment(config):
    ops = tuple(o for o in config.train.augment.ops.split(",") if o)
    k = config.train.augment.k
    if k == 0 or not ops:
        return None
    return lambda rng, images: augment.augment(rng, images, ops=ops, k=k)


def build_model(config, num_classes: int):
    return models.build_model(config.model.name, num_classes=num_classes,
                              **models.options_from_config(config.model))


def evaluate(eval_fn, state, images, labels, batch_size: int, mesh) -> np.ndarray:
    """Test accuracy of every seed's network, in percent: (num_seeds,)."""
    correct = 0.0
    count = 0.0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        y = labels[start:start + batch_size]
        mask = np.ones(len(x), np.float32)
        pad = batch_size - len(x)
        if pad:
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros((pad,) + y.shape[1:], y.dtype)])
            mask = np.concatenate([mask, np.zeros(pad, np.float32)])
        sums = eval_fn(state["params"], state["batch_stats"], sharding.shard_batch({"image": x, "label": y, "mask": mask}, mesh))
        correct = correct + np.asarray(sums["correct"])
        count = count + np.asarray(sums["count"])
    return 100.0 * correct / count


def epoch_orders(seeds, epoch: int, num_train: int) -> np.ndarray:
    """Each seed's data order in `epoch`, (seeds, num_train): a function of (seed, epoch) only,
    so seeds trained together draw independent batches, a seed trained alone draws the same
    ones, and a resumed run replays them."""
    return np.stack([np.random.default_rng((seed, epoch)).permutation(num_train) for seed in seeds])


def load_teacher(config) -> teacher.Teacher:
    """The KD teacher: a workdir of a finished run (its first seed) or a reference-code .pth,
    with the record of it the student keeps (step and digest)."""
    return teacher.load(config.train.kd.teacher_path, allow_unfinished=bool(config.train.kd.allow_unfinished_teacher))


def finished_results(workdir: pathlib.Path) -> Optional[dict]:
    """The results.json of a run in `workdir` that trained all its epochs, else None."""
    try:
        results = json.loads((workdir / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) and results.get("finished") else None


def report(message: str, *args) -> None:
    """Logs a line of the run's progress or results on the writer process only (`rundir.is_writer`):
    the other processes compute the same numbers, and their lines would only repeat its own."""
    if rundir.is_writer():
        logging.info(message, *args, stacklevel=2)


@jax.jit
def _all_finite(tree) -> jax.Array:
    """Per seed: are all of this seed's arrays finite? (leading axis = seed)"""
    leaves = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves), axis=0)


def train_and_evaluate(config, workdir: str | pathlib.Path, *, data: Optional[pipeline.TrainingData] = None) -> dict:
    """Trains `config.num_seeds` networks as the config says; returns and writes the results.

    A workdir that holds a run of another config, or one trained on other data or another
    teacher (`rundir.check_inputs`), is refused before anything is written, and a live run in
    the same workdir stops this one (`rundir`). A finished run is not trained again: its
    results.json stands, and a rerun changes nothing. A run whose loss or parameters become
    non-finite stops at the next log step with `diverged` in results.json.

    `config` must be valid (`distill_jax.config.validate`): the launcher and the experiments
    validate the configs they run; this loop does not check them again.
    """
    config = rundir.with_absolute_paths(config)
    workdir = pathlib.Path(workdir)
    defaults = default_config()
    rundir.check_identity(workdir, config, defaults)
    with rundir.WorkdirLock(workdir):
        return _train_and_evaluate(config, workdir, data, defaults)


def _train_and_evaluate(config, workdir: pathlib.Path, data, defaults) -> dict:
    data = data if data is not None else pipeline.load_training_data(config.data)

    t = config.train
    num_train = len(data.train_images)
    batch_size = min(t.batch_size, num_train)
    steps_per_epoch = num_train // batch_size
    total_steps = t.epochs * steps_per_epoch
    mesh = sharding.make_mesh(batch_size)
    eval_batch = int(math.ceil(config.data.eval_batch_size / mesh.size) * mesh.size)

    model = build_model(config, data.num_classes)
    lr_schedule, keep_schedule = schedules.from_config(config.train, steps_per_epoch)
    optimizer = make_optimizer(t.optimizer, lr_schedule, t.weight_decay)
    kd = None
    teacher_variables = None
    loaded_teacher = load_teacher(config) if t.kd.enabled else None
    inputs = rundir.run_inputs(data, loaded_teacher.record if loaded_teacher else None)
    done = finished_results(workdir)
    if done is not None:  # finished: its results stand, and nothing is written
        diff = rundir.config_differences(done.get("config") or {}, config, defaults)
        if diff:
            raise rundir.RunConfigError(f"workdir {workdir} holds a finished run with a different config: "
                                        + "; ".join(diff) + ". Use another workdir for another config")
        rundir.check_inputs(done.get("inputs"), inputs, f"workdir {workdir}")
        report("%s already finished (%s); nothing to do. To train it again, use another workdir", workdir,
               RESULTS_FILE)
        return done
    if loaded_teacher is not None:
        kd = steps.KDSettings(loaded_teacher.module, alpha=t.kd.alpha, temperature=t.kd.temperature)
        teacher_variables = sharding.replicate(loaded_teacher.variables, mesh)
    train_step = steps.make_train_step(model, optimizer, augment_fn=build_augment(config), kd=kd)
    eval_step = steps.make_eval_step(model)

    seeds = [config.seed + i for i in range(config.num_seeds)]
    seed_keys = jnp.stack([jax.random.key_data(jax.random.key(s)) for s in seeds])
    init_keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.wrap_key_data(k), 0))(seed_keys)
    step_keys = jax.vmap(lambda k: jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(k), 1)))(seed_keys)
    sample = jnp.asarray(data.train_images[:1])
    init = jax.jit(jax.vmap(lambda k: steps.init_state(model, optimizer, k, sample)))
    repl = sharding.replicated(mesh)
    state = sharding.replicate(init(init_keys), mesh)
    step_keys = sharding.replicate(step_keys, mesh)

    def seeded_step(state, batch, key_data, keep_rate, teacher_vars):
        return train_step(state, batch, jax.random.wrap_key_data(key_data), keep_rate, teacher_vars)

    multi_step = jax.jit(jax.vmap(seeded_step, in_axes=(0, 0, 0, None, None)),
                         out_shardings=(repl, repl), donate_argnums=(0,))
    multi_eval = jax.jit(jax.vmap(eval_step, in_axes=(0, 0, None)), out_shardings=repl)

    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=config.keep_checkpoints)
    writer = None  # the metrics writer, once the run is accepted
    try:
        identity = rundir.identity(config)
        history = []
        start_epoch = 0
        restored = checkpointer.restore_latest(jax.eval_shape(lambda: jax.device_get(state)), identity, defaults, inputs)
        if restored is not None:
            step, state, saved_meta = restored
            state = sharding.replicate(state, mesh)
            start_epoch = step // steps_per_epoch
            history = [h for h in saved_meta.get("history", []) if h["epoch"] <= start_epoch]
            report("resuming at epoch %d (step %d)", start_epoch, step)
        # accepted: only now does the run write into its workdir
        rundir.write_json(workdir / "config.json", config.to_dict())
        rundir.write_json(workdir / "model.json", {"name": config.model.name, "num_classes": data.num_classes,
                                                   "options": models.options_from_config(config.model)})
        if rundir.is_writer() and not (workdir / TRAIN_SET_GRID).exists():  # what this run trains on (once)
            image_grid.save_set_grid(workdir / TRAIN_SET_GRID, data.train_images, data.train_labels, data.preprocessing,
                                     data.num_classes)
        diverged = None

        report("training %s x %d seeds on %d devices: %d images, batch %d, %d epochs (%d steps)",
               config.model.name, len(seeds), mesh.size, num_train, batch_size, t.epochs, total_steps)
        end_epoch = min(t.epochs, t.stop_after_epochs) if t.stop_after_epochs else t.epochs
        writer = metrics_lib.MetricsWriter(workdir, seeds, start_step=start_epoch * steps_per_epoch)
        progress = metrics_lib.Progress(end_epoch * steps_per_epoch, start_epoch * steps_per_epoch)
        last_log, images_since_log = time.perf_counter(), 0
        for epoch in range(start_epoch, end_epoch):
            keep_rate = float(keep_schedule(epoch)) if keep_schedule is not None else 1.0
            orders = epoch_orders(seeds, epoch, num_train)
            train_losses = []
            used_rates = []
            for i in range(steps_per_epoch):
                idx = orders[:, i * batch_size:(i + 1) * batch_size]  # (seeds, batch)
                batch = sharding.shard_seeded_batch({"image": data.train_images[idx], "label": data.train_labels[idx]},
                                                    mesh)
                state, metrics = multi_step(state, batch, step_keys, jnp.float32(keep_rate), teacher_variables)
                train_losses.append(metrics["loss"])
                if "keep_rate_used" in metrics:
                    used_rates.append(metrics["keep_rate_used"])
                global_step = epoch * steps_per_epoch + i + 1
                if progress.timed_since is None:  # the first step compiles: timed apart, not in images/s
                    jax.block_until_ready(state)
                    progress.started(global_step)
                    report("compiled and ran the first step in %.1f s", progress.compile_seconds)
                    last_log = time.perf_counter()
                else:
                    images_since_log += batch_size * len(seeds)
                progress.update(global_step)
                if global_step % config.log_every_steps == 0 or global_step == total_steps:
                    finite = np.isfinite(np.asarray(metrics["loss"])) & np.asarray(_all_finite(state["params"]))
                    if not finite.all():
                        diverged = {"epoch": epoch + 1, "step": global_step,
                                    "seeds": [s for s, ok in zip(seeds, finite) if not ok]}
                        logging.error("diverged at step %d (epoch %d): non-finite loss or parameters for seed(s) %s; "
                                      "stopping", global_step, epoch + 1, diverged["seeds"])
                        break
                    now = time.perf_counter()
                    losses, accs = np.asarray(metrics["loss"]), 100 * np.asarray(metrics["accuracy"])
                    used = metrics.get("keep_rate_used")
                    speed = images_since_log / (now - last_log) if images_since_log else None
                    scalars = {"epoch": epoch + 1, "lr": float(lr_schedule(global_step - 1)), "keep_rate": keep_rate,
                               "images_per_s": speed, "loss_mean": float(losses.mean()),
                               "train_accuracy_mean": float(accs.mean())}
                    if used is not None:
                        scalars["keep_rate_used"] = float(np.asarray(used).mean())
                    writer.write(global_step, scalars, {"loss": losses, "train_accuracy": accs})
                    extra = f" keep_rate_used {scalars['keep_rate_used']:.3f}" if used is not None else ""
                    report("step %d/%d epoch %d loss %.4f train_acc %.1f%% lr %.3g keep_rate %.2f%s %s images/s %s",
                           global_step, total_steps, epoch + 1, losses.mean(), accs.mean(), scalars["lr"],
                           keep_rate, extra, f"{speed:.1f}" if speed else "-", progress.line())
                    last_log, images_since_log = now, 0
            if diverged:
                break
            done = epoch + 1
            if done % config.eval_every_epochs == 0 or done == t.epochs:
                acc = evaluate(multi_eval, state, data.test_images, data.test_labels, eval_batch, mesh)
                mean_loss = float(np.mean([np.asarray(l).mean() for l in train_losses]))
                entry = {"epoch": done, "step": done * steps_per_epoch, "train_loss": mean_loss,
                         "keep_rate": keep_rate, "test_accuracy": [float(a) for a in acc]}
                if used_rates:
                    entry["keep_rate_used"] = float(np.mean([np.asarray(u).mean() for u in used_rates]))
                history.append(entry)
                writer.write(done * steps_per_epoch, {"epoch": done, "test_accuracy_mean": float(np.mean(acc))},
                             {"test_accuracy": acc})
                report("epoch %d test accuracy %s (mean %.2f%%) %s", done,
                       " ".join(f"{a:.2f}" for a in acc), float(np.mean(acc)), progress.line())
            if done % config.checkpoint_every_epochs == 0 or done == end_epoch:
                checkpointer.save(done * steps_per_epoch, state,
                                  {"identity": identity, "inputs": inputs, "epoch": done, "history": history})
    except BaseException:
        rundir.close_after_error(checkpointer, writer)
        raise
    checkpointer.close()
    writer.close()

    finished = not diverged and history and history[-1]["epoch"] == t.epochs
    final = history[-1]["test_accuracy"] if finished else []
    results = {
        "finished": bool(finished),
        "diverged": diverged,
        "config": config.to_dict(),
        "data": data.description,
        "preprocessing": data.preprocessing.recipe if hasattr(data.preprocessing, "recipe") else str(data.preprocessing),
        "seeds": seeds,
        "inputs": inputs,
        "history": history,
        "final_accuracy": metrics_lib.summarize(final) if finished else None,
        "software": {"jax": jax.__version__, "python": platform.python_version()},
        "devices": [str(d) for d in mesh.devices.flat],
        "conv": model.conv,  # the convolution implementation config.model.conv resolved to (models.resolve_conv)
    }
    rundir.write_json(workdir / RESULTS_FILE, results)
    fa = results["final_accuracy"]
    if diverged:
        logging.error("diverged: no final accuracy (results.json records where)")
    elif fa is None:
        report("stopped at epoch %d of %d (train.stop_after_epochs); rerun with the same workdir to resume",
               end_epoch, t.epochs)
    else:
        report("final test accuracy (last epoch, %d seeds): %.2f ± %.2f%%", len(seeds), fa["mean"], fa["std"])
    return results
