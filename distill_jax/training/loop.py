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
from distill_jax.data import augment, pipeline
from distill_jax.data import grid as image_grid
from distill_jax.optim import make_optimizer, schedules
from distill_jax.training import accuracy as accuracy_lib
from distill_jax.training import metrics as metrics_lib
from distill_jax.training import multi_seed, runlife, sharding, steps, teacher, workdir_io
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
    mesh = sharding.make_mesh(batch_size, num_seeds=config.num_seeds)

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
    init_keys, step_keys = multi_seed.seed_keys(seeds)
    sample = jnp.asarray(data.train_images[:1])
    init = jax.jit(jax.vmap(lambda k: steps.init_state(model, optimizer, jax.random.wrap_key_data(k), sample)))
    state = sharding.shard_seeds(init(init_keys), mesh)
    step_keys = sharding.shard_seeds(step_keys, mesh)
    test_accuracy = accuracy_lib.make_accuracy(model, mesh)

    restored = run.resume(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state), inputs=inputs)
    history, start_epoch = [], 0
    if restored is not None:
        step, state, history = restored
        state = sharding.shard_seeds(state, mesh)
        start_epoch = step // steps_per_epoch
        report("resuming at epoch %d (step %d)", start_epoch, step)
    run.accept({workdir_io.MODEL_FILE: {"name": config.model.name, "num_classes": data.num_classes,
                                        "options": models.network_options(config)}})
    if workdir_io.is_writer() and not (workdir / workdir_io.TRAIN_SET_GRID).exists():  # what this run trains on (once)
        image_grid.save_set_grid(workdir / workdir_io.TRAIN_SET_GRID, data.train_images, data.train_labels,
                                 data.preprocessing, data.num_classes)
    diverged = None

    report("training %s x %d seeds on %d devices: %d images, batch %d, %d epochs (%d steps)",
           config.model.name, len(seeds), mesh.size, num_train, batch_size, t.epochs, total_steps)
    report("%s", sharding.describe_layout(mesh, len(seeds), batch_size, len(jax.devices())))
    end_epoch = min(t.epochs, t.stop_after_epochs) if t.stop_after_epochs else t.epochs
    start_step, end_step = start_epoch * steps_per_epoch, end_epoch * steps_per_epoch

    def keep_rate_of(epoch: int) -> float:
        return float(keep_schedule(epoch)) if keep_schedule is not None else 1.0

    def host_work_after(step: int) -> bool:  # a log line, an evaluation or a checkpoint: the device call ends there
        if runlife.due(step, config.log_every_steps, total_steps):
            return True
        epoch, rest = divmod(step, steps_per_epoch)
        return rest == 0 and (runlife.due(epoch, config.eval_every_epochs, t.epochs)
                              or runlife.due(epoch, config.checkpoint_every_epochs, end_epoch))

    calls = multi_seed.stretches(start_step, end_step, host_work_after, max_steps=t.steps_per_call)
    length = max((last - first for first, last in calls), default=1)
    chunk = multi_seed.make_chunk(train_step, mesh, length)
    train_data = sharding.replicate({"image": data.train_images, "label": data.train_labels}, mesh)
    orders = {}  # epoch -> (seeds, num_train) data orders, for the epochs of the current call

    writer = run.metrics(seeds, start_step)
    timer = runlife.StepTimer(end_step, start_step)
    epoch_losses, epoch_used = [], []  # each step's (seeds,) values in the current epoch
    for first, last in calls:
        call_orders = np.zeros((length, len(seeds), batch_size), np.int32)
        keep_rates = np.ones((length,), np.float32)
        for j, step in enumerate(range(first, last)):
            epoch, i = divmod(step, steps_per_epoch)
            if epoch not in orders:
                orders = {epoch: epoch_orders(seeds, epoch, num_train)}
            call_orders[j] = orders[epoch][:, i * batch_size:(i + 1) * batch_size]
            keep_rates[j] = keep_rate_of(epoch)
        state, logged = chunk(state, train_data, sharding.place(call_orders, sharding.stepped_batch_sharding(mesh)),
                              sharding.replicate(keep_rates, mesh), np.int32(last - first), step_keys,
                              teacher_variables)
        if timer.step(last, state):  # the first call runs one step and compiles: timed apart, not in images/s
            report("compiled and ran the first step in %.1f s", timer.compile_seconds)
        logged = {k: v[:last - first] for k, v in sharding.to_host(logged).items()}
        for j, step in enumerate(range(first, last)):
            if step % steps_per_epoch == 0:  # a call may span epochs: each keeps its own steps
                epoch_losses, epoch_used = [], []
            epoch_losses.append(logged["loss"][j])
            if "keep_rate_used" in logged:
                epoch_used.append(logged["keep_rate_used"][j])
        epoch = (last - 1) // steps_per_epoch
        keep_rate = keep_rate_of(epoch)
        if runlife.due(last, config.log_every_steps, total_steps):
            finite = np.isfinite(logged["loss"][-1]) & sharding.to_host(_all_finite(state["params"]))
            if not finite.all():
                diverged = {
                    "epoch": epoch + 1,
                    "step": last,
                    "seeds": [s for s, ok in zip(seeds, finite, strict=True) if not ok],
                }
                logging.error("diverged at step %d (epoch %d): non-finite loss or parameters for seed(s) %s; "
                              "stopping", last, epoch + 1, diverged["seeds"])
                break
            timed, seconds = timer.lap()
            losses, accs = logged["loss"][-1], 100 * logged["accuracy"][-1]
            speed = timed * batch_size * len(seeds) / seconds if timed else None
            scalars = {"epoch": epoch + 1, "lr": float(lr_schedule(last - 1)), "keep_rate": keep_rate,
                       "images_per_s": speed, "loss_mean": float(losses.mean()),
                       "train_accuracy_mean": float(accs.mean())}
            if "keep_rate_used" in logged:
                scalars["keep_rate_used"] = float(logged["keep_rate_used"][-1].mean())
            writer.write(last, scalars, {"loss": losses, "train_accuracy": accs})
            extra = f" keep_rate_used {scalars['keep_rate_used']:.3f}" if "keep_rate_used" in logged else ""
            report("step %d/%d epoch %d loss %.4f train_acc %.1f%% lr %.3g keep_rate %.2f%s %s images/s %s",
                   last, total_steps, epoch + 1, losses.mean(), accs.mean(), scalars["lr"],
                   keep_rate, extra, f"{speed:.1f}" if speed else "-", timer.line())
        if last % steps_per_epoch:
            continue
        done = epoch + 1
        if runlife.due(done, config.eval_every_epochs, t.epochs):
            with timer.paused():  # no step time: images/s and seconds_per_step count training alone
                acc = test_accuracy(state, data.test_images, data.test_labels, config.data.eval_batch_size)
            entry = {"epoch": done, "step": last, "train_loss": float(np.mean([loss.mean() for loss in epoch_losses])),
                     "keep_rate": keep_rate, "test_accuracy": [float(a) for a in acc]}
            if epoch_used:
                entry["keep_rate_used"] = float(np.mean([u.mean() for u in epoch_used]))
            history.append(entry)
            writer.write(last, {"epoch": done, "test_accuracy_mean": float(np.mean(acc))}, {"test_accuracy": acc})
            report("epoch %d test accuracy %s (mean %.2f%%) %s", done,
                   " ".join(f"{a:.2f}" for a in acc), float(np.mean(acc)), timer.line())
        if runlife.due(done, config.checkpoint_every_epochs, end_epoch):
            with timer.paused():
                run.save(last, state, {"epoch": done, "history": history})

    finished = not diverged and history and history[-1]["epoch"] == t.epochs
    final = history[-1]["test_accuracy"] if finished else []
    results = run.finish(
        {
            "finished": bool(finished),
            "diverged": diverged,
            "config": config.to_dict(),
            "data": data.description,
            "preprocessing": data.preprocessing.recipe
            if hasattr(data.preprocessing, "recipe")
            else str(data.preprocessing),
            "seeds": seeds,
            "inputs": inputs,
            "history": history,
            "final_accuracy": metrics_lib.summarize(final) if finished else None,
            "devices": [str(d) for d in mesh.devices.flat],
            "mesh": sharding.layout(mesh),
            "conv": model.conv,  # the convolution implementation config.model.conv resolved to (models.resolve_conv)
        # this process's wall time: compiling (with the first step), then per step after it (evaluations
        # and checkpoints left out); a resumed run times only its own part
        "timing": {"compile_seconds": timer.compile_seconds, "seconds_per_step": timer.seconds_per_step()},
        }
    )
    fa = results["final_accuracy"]
    if diverged:
        logging.error("diverged: no final accuracy (results.json records where)")
    elif fa is None:
        report("stopped at epoch %d of %d (train.stop_after_epochs); rerun with the same workdir to resume",
               end_epoch, t.epochs)
    else:
        report("final test accuracy (last epoch, %d seeds): %.2f ± %.2f%%", len(seeds), fa["mean"], fa["std"])
    return results
