"""`train_and_evaluate(config, workdir)`: the edge where state and I/O live.

Everything inside the jitted step is pure; this module loads data, builds the network,
optimiser and schedules from the config, trains `num_seeds` networks together in one
vmapped program, evaluates, checkpoints and writes `results.json`. The run's life in its
workdir (identity and lock, resume, what is due when, closing, the results record) is
`runlife`'s, shared with the distiller; this module decides what to train, log and record.
"""
from __future__ import annotations

import logging
import pathlib
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import models
from distill_jax.data import augment
from distill_jax.data import grid as image_grid
from distill_jax.data import pipeline
from distill_jax.optim import make_optimizer, schedules
from distill_jax.training import accuracy as accuracy_lib
from distill_jax.training import metrics as metrics_lib
from distill_jax.training import runlife, sharding, steps, teacher, workdir_io
from distill_jax.training.runlife import report


def build_augment(config):
    ops = tuple(o for o in config.train.augment.ops.split(",") if o)
    k = config.train.augment.k
    if k == 0 or not ops:
        return None
    return lambda rng, images: augment.augment(rng, images, ops=ops, k=k)


def build_model(config, num_classes: int):
    return models.build_model(config.model.name, num_classes=num_classes, **models.network_options(config))


def epoch_orders(seeds, epoch: int, num_train: int) -> np.ndarray:
    """Each seed's data order in `epoch`, (seeds, num_train): a function of (seed, epoch) only,
    so seeds trained together draw independent batches, a seed trained alone draws the same
    ones, and a resumed run replays them."""
    return np.stack([np.random.default_rng((seed, epoch)).permutation(num_train) for seed in seeds])


def load_teacher(config) -> teacher.Teacher:
    """The KD teacher: a workdir of a finished run (its first seed) or a reference-code .pth,
    with the record of it the student keeps (step and digest)."""
    return teacher.load(config.train.kd.teacher_path, allow_unfinished=bool(config.train.kd.allow_unfinished_teacher))


@jax.jit
def _all_finite(tree) -> jax.Array:
    """Per seed: are all of this seed's arrays finite? (leading axis = seed)"""
    leaves = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves), axis=0)


def train_and_evaluate(config, workdir: str | pathlib.Path, *, data: Optional[pipeline.TrainingData] = None) -> dict:
    """Trains `config.num_seeds` networks as the config says; returns and writes the results.

    A workdir that holds a run of another config, or one trained on other data or another
    teacher (`workdir_io.check_inputs`), is refused before anything is written, and a live run in
    the same workdir stops this one (`workdir_io`). A finished run is not trained again: its
    results.json stands, and a rerun changes nothing. A run whose loss or parameters become
    non-finite stops at the next log step with `diverged` in results.json.

    `config` must be valid (`distill_jax.config.validate`): the launcher and the experiments
    validate the configs they run; this loop does not check them again.
    """
    with runlife.Run(config, workdir) as run:
        return _train_and_evaluate(run, data)


def _train_and_evaluate(run: runlife.Run, data) -> dict:
    config, workdir = run.config, run.workdir
    data = data if data is not None else pipeline.load_training_data(config.data)

    t = config.train
    num_train = len(data.train_images)
    batch_size = min(t.batch_size, num_train)
    steps_per_epoch = num_train // batch_size
    total_steps = t.epochs * steps_per_epoch
    mesh = sharding.make_mesh(batch_size)

    model = build_model(config, data.num_classes)
    lr_schedule, keep_schedule = schedules.from_config(config.train, steps_per_epoch)
    optimizer = make_optimizer(t.optimizer, lr_schedule, t.weight_decay)
    kd = None
    teacher_variables = None
    loaded_teacher = load_teacher(config) if t.kd.enabled else None
    inputs = workdir_io.run_inputs(data, loaded_teacher.record if loaded_teacher else None)
    done = run.finished_results()
    if done is not None:  # finished: its results stand, and nothing is written
        diff = workdir_io.config_differences(done.get("config") or {}, config, run.defaults)
        if diff:
            raise workdir_io.RunConfigError(f"workdir {workdir} holds a finished run with a different config: "
                                        + "; ".join(diff) + ". Use another workdir for another config")
        workdir_io.check_inputs(done.get("inputs"), inputs, f"workdir {workdir}")
        report("%s already finished (%s); nothing to do. To train it again, use another workdir", workdir,
               workdir_io.RESULTS_FILE)
        return done
    if loaded_teacher is not None:
        kd = steps.KDSettings(loaded_teacher.module, alpha=t.kd.alpha, temperature=t.kd.temperature)
        teacher_variables = sharding.replicate(loaded_teacher.variables, mesh)
    train_step = steps.make_train_step(model, optimizer, augment_fn=build_augment(config), kd=kd)

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
    test_accuracy = accuracy_lib.make_accuracy(model, mesh)

    restored = run.resume(jax.eval_shape(lambda: jax.device_get(state)), inputs=inputs)
    history, start_epoch = [], 0
    if restored is not None:
        step, state, history = restored
        state = sharding.replicate(state, mesh)
        start_epoch = step // steps_per_epoch
        report("resuming at epoch %d (step %d)", start_epoch, step)
    run.accept({workdir_io.MODEL_FILE: {"name": config.model.name, "num_classes": data.num_classes,
                                    "options": models.options_from_config(config.model)}})
    if workdir_io.is_writer() and not (workdir / workdir_io.TRAIN_SET_GRID).exists():  # what this run trains on (once)
        image_grid.save_set_grid(workdir / workdir_io.TRAIN_SET_GRID, data.train_images, data.train_labels,
                                 data.preprocessing, data.num_classes)
    diverged = None

    report("training %s x %d seeds on %d devices: %d images, batch %d, %d epochs (%d steps)",
           config.model.name, len(seeds), mesh.size, num_train, batch_size, t.epochs, total_steps)
    end_epoch = min(t.epochs, t.stop_after_epochs) if t.stop_after_epochs else t.epochs
    writer = run.metrics(seeds, start_epoch * steps_per_epoch)
    timer = runlife.StepTimer(end_epoch * steps_per_epoch, start_epoch * steps_per_epoch)
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
            if timer.step(global_step, state):  # the first step compiles: timed apart, not in images/s
                report("compiled and ran the first step in %.1f s", timer.compile_seconds)
            if runlife.due(global_step, config.log_every_steps, total_steps):
                finite = np.isfinite(np.asarray(metrics["loss"])) & np.asarray(_all_finite(state["params"]))
                if not finite.all():
                    diverged = {"epoch": epoch + 1, "step": global_step,
                                "seeds": [s for s, ok in zip(seeds, finite) if not ok]}
                    logging.error("diverged at step %d (epoch %d): non-finite loss or parameters for seed(s) %s; "
                                  "stopping", global_step, epoch + 1, diverged["seeds"])
                    break
                timed, seconds = timer.lap()
                losses, accs = np.asarray(metrics["loss"]), 100 * np.asarray(metrics["accuracy"])
                used = metrics.get("keep_rate_used")
                speed = timed * batch_size * len(seeds) / seconds if timed else None
                scalars = {"epoch": epoch + 1, "lr": float(lr_schedule(global_step - 1)), "keep_rate": keep_rate,
                           "images_per_s": speed, "loss_mean": float(losses.mean()),
                           "train_accuracy_mean": float(accs.mean())}
                if used is not None:
                    scalars["keep_rate_used"] = float(np.asarray(used).mean())
                writer.write(global_step, scalars, {"loss": losses, "train_accuracy": accs})
                extra = f" keep_rate_used {scalars['keep_rate_used']:.3f}" if used is not None else ""
                report("step %d/%d epoch %d loss %.4f train_acc %.1f%% lr %.3g keep_rate %.2f%s %s images/s %s",
                       global_step, total_steps, epoch + 1, losses.mean(), accs.mean(), scalars["lr"],
                       keep_rate, extra, f"{speed:.1f}" if speed else "-", timer.line())
        if diverged:
            break
        done = epoch + 1
        if runlife.due(done, config.eval_every_epochs, t.epochs):
            acc = test_accuracy(state, data.test_images, data.test_labels, config.data.eval_batch_size)
            mean_loss = float(np.mean([np.asarray(l).mean() for l in train_losses]))
            entry = {"epoch": done, "step": done * steps_per_epoch, "train_loss": mean_loss,
                     "keep_rate": keep_rate, "test_accuracy": [float(a) for a in acc]}
            if used_rates:
                entry["keep_rate_used"] = float(np.mean([np.asarray(u).mean() for u in used_rates]))
            history.append(entry)
            writer.write(done * steps_per_epoch, {"epoch": done, "test_accuracy_mean": float(np.mean(acc))},
                         {"test_accuracy": acc})
            report("epoch %d test accuracy %s (mean %.2f%%) %s", done,
                   " ".join(f"{a:.2f}" for a in acc), float(np.mean(acc)), timer.line())
        if runlife.due(done, config.checkpoint_every_epochs, end_epoch):
            run.save(done * steps_per_epoch, state, {"epoch": done, "history": history})

    finished = not diverged and history and history[-1]["epoch"] == t.epochs
    final = history[-1]["test_accuracy"] if finished else []
    results = run.finish({
        "finished": bool(finished),
        "diverged": diverged,
        "config": config.to_dict(),
        "data": data.description,
        "preprocessing": data.preprocessing.recipe if hasattr(data.preprocessing, "recipe") else str(data.preprocessing),
        "seeds": seeds,
        "inputs": inputs,
        "history": history,
        "final_accuracy": metrics_lib.summarize(final) if finished else None,
        "devices": [str(d) for d in mesh.devices.flat],
        "conv": model.conv,  # the convolution implementation config.model.conv resolved to (models.resolve_conv)
    })
    fa = results["final_accuracy"]
    if diverged:
        logging.error("diverged: no final accuracy (results.json records where)")
    elif fa is None:
        report("stopped at epoch %d of %d (train.stop_after_epochs); rerun with the same workdir to resume",
               end_epoch, t.epochs)
    else:
        report("final test accuracy (last epoch, %d seeds): %.2f ± %.2f%%", len(seeds), fa["mean"], fa["std"])
    return results
