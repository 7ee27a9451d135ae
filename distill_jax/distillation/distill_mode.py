"""`run_distillation(config, workdir)`: mode 'distill', the edge where state and I/O live.

Loads the real training split in the distiller's pixel space, builds one pure jitted
step (DM or FRePo), runs it with progress lines, checkpoints (Orbax) and a PNG grid of the
images at every checkpoint, resumes exactly from the newest checkpoint of `workdir`, and
finally writes the set in the project's own format:

* `distilled.npz` (`save_distilled`): images in the distiller's pixel space, labels
  (class indices for DM, learned label vectors for FRePo), the preprocessing recipe name;
* `distilled.preprocessing.npz`: the fitted transform itself (`Preprocessing.save`), so
  the exact pixel space travels with the set (the training loop refits the same recipe
  on the same split, which gives the same transform);
* `images/step_<step>.png`, `results.json`, `config.json`, `checkpoints/`.

The run's life in its workdir (identity and lock, resume, what is due when, closing, the results
record) is `training.runlife`'s, shared with the training loop.
"""
from __future__ import annotations

import pathlib
from typing import Optional

import jax
import numpy as np
from PIL import Image

from distill_jax import models
from distill_jax.data import augment
from distill_jax.data import grid as image_grid
from distill_jax.distillation import common, dm, frepo
from distill_jax.distillation.common import DEFAULT_MODEL
from distill_jax.errors import ConfigError
from distill_jax.formats.distilled import DistilledSet, save_distilled
from distill_jax.training import runlife, workdir_io
from distill_jax.training.runlife import report

DEFAULT_PREPROCESSING = {"dm": "standardize", "frepo": "zca_frepo"}
DISPLAY_NAME = {"dm": "DM", "frepo": "FRePo"}
SOURCE_NAME = {"dm": "dc", "frepo": "frepo"}  # the distilled-set 'source' ('dc' covers DC, DSA and DM)
OUTPUT_NAME = "distilled.npz"
PREPROCESSING_NAME = "distilled.preprocessing.npz"
IMAGES_DIR = "images"  # the set's grid at every checkpoint: images/step_<step>.png

_STEP_CACHE: dict = {}  # (method, network, settings, optimiser) -> jitted functions: one compile per process


def _augment_ops(config) -> tuple[str, ...]:
    ops = tuple(o for o in config.distill.augment_ops.split(",") if o)
    for op in ops:
        if op not in augment.DSA_OPS:
            raise ConfigError(f"config field 'distill.augment_ops' names '{op}'; allowed ops: {augment.DSA_OPS}")
    if len(set(ops)) != len(ops):
        raise ConfigError(f"config field 'distill.augment_ops' = {config.distill.augment_ops!r} repeats an op")
    if config.distill.augment_k > len(ops):
        raise ConfigError(f"config field 'distill.augment_k' = {config.distill.augment_k} exceeds the "
                          f"{len(ops)} ops listed in 'distill.augment_ops'")
    return ops


def pixel_space(config) -> str:
    """The preprocessing recipe a distillation runs in: `data.preprocessing`, or the method's own for 'auto'."""
    return (
        DEFAULT_PREPROCESSING[config.distill.method]
        if config.data.preprocessing == "auto"
        else config.data.preprocessing
    )


def _network(config) -> tuple[str, dict]:
    d = config.distill
    name = DEFAULT_MODEL[d.method] if d.model == "auto" else d.model
    options = {k: d[k] for k in ("width", "depth", "norm") if d.get(k) is not None}
    return name, options


def step_settings(config, num_classes: int):
    """(static step settings, image optimiser hyper-parameters) of the configured method: the one
    reading of a config's `distill` section into what the pure step takes (checked augmentation
    ops; FRePo's `flip_double` on at 1 image per class unless set), for the mode and for anyone
    building the same step."""
    d = config.distill
    ops, k = _augment_ops(config), d.augment_k
    if d.method == "dm":
        return (dm.DMSettings(num_classes, d.ipc, d.dm.real_per_class, ops, k),
                ("sgd", float(d.dm.learning_rate), float(d.dm.momentum)))
    f = d.frepo
    flip = bool(common.optional(f.flip_double, d.ipc == 1))
    settings = frepo.FRePoSettings(num_classes, f.real_batch_size, f.pool_size, f.max_online_updates,
                                   float(f.kernel_reg), flip, bool(f.learn_labels), ops, k)
    return settings, (f.optimizer, float(f.learning_rate), float(f.online_learning_rate))


def _compiled(method: str, model_name: str, options: dict, settings, hyper: tuple):
    """The jitted step (state donated) and state initialiser for one configuration, built once."""
    key = (method, model_name, tuple(sorted(options.items())), settings, hyper)
    if key in _STEP_CACHE:
        return _STEP_CACHE[key]
    model = models.build_model(model_name, settings.num_classes, **options)
    if method == "dm":
        optimizer = dm.make_dm_optimizer(hyper[1], hyper[2])
        step = dm.make_dm_step(model, optimizer, settings)
        init = jax.jit(lambda images, labels, key: dm.init_dm_state(images, optimizer))
    else:
        optimizer = frepo.make_label_image_optimizer(hyper[0], hyper[1])
        online = frepo.make_online_optimizer(hyper[2])
        step = frepo.make_frepo_step(model, optimizer, online, settings)
        init = jax.jit(lambda images, labels, key: frepo.init_frepo_state(model, optimizer, online, settings,
                                                                          images, labels, key))
    _STEP_CACHE[key] = (jax.jit(step, donate_argnums=0), init)
    return _STEP_CACHE[key]


def _real_arrays(method: str, real: common.RealData, device) -> dict:
    if method == "dm":
        arrays = {"images": real.images, "class_start": real.class_start, "class_count": real.class_count}
    else:
        arrays = {"images": real.images, "labels": real.labels.astype(np.int32)}
    return jax.device_put(arrays, device)


def run_distillation(config, workdir: str | pathlib.Path, *, real: Optional[common.RealData] = None) -> dict:
    """Distils `config.data.dataset` with `config.distill`; returns (and writes) results.json's content.

    `real` replaces loading the training split (tests pass tiny in-memory data); it must
    already be in the method's pixel space. Rerunning with the same workdir resumes from
    the newest checkpoint; `distill.stop_after_steps` ends a time slot early. `config` must be
    valid (`distill_jax.config.validate`, which the launcher and the experiments run).
    """
    with runlife.Run(config, workdir) as run:  # a finished run may be extended by raising distill.steps
        done = run.finished_results()
        if done is not None and _stands(run, done):  # its set (students record its digest) and all: nothing is written
            report("%s already finished %d steps; nothing to do (raise distill.steps to continue it)", run.workdir,
                   done["steps"])
            return done
        return _distill(run, real)


def _stands(run: runlife.Run, done: dict) -> bool:
    """Whether the finished distillation `done` (its results.json) reached `distill.steps` with this
    config and its set is there."""
    return (done.get("steps", 0) >= run.config.distill.steps and (run.workdir / OUTPUT_NAME).is_file()
            and not workdir_io.config_differences(done.get("config") or {}, run.config, run.defaults))


def _grid_path(workdir: pathlib.Path, step: int) -> pathlib.Path:
    return workdir / IMAGES_DIR / f"step_{step:07d}.png"


def _logged_grids(workdir: pathlib.Path, last_step: int):
    """The image grids saved up to `last_step` (`_grid_path`), for the metrics writer to log again
    when it rebuilds TensorBoard's events on resume."""
    def grids():
        for path in sorted((workdir / IMAGES_DIR).glob("step_*.png")):
            step = int(path.stem.split("_")[1])
            if step <= last_step:
                with Image.open(path) as image:
                    yield "distilled_images", step, np.asarray(image), path.stat().st_mtime
    return grids


def _distill(run: runlife.Run, real) -> dict:
    config, workdir = run.config, run.workdir
    d = config.distill
    recipe = pixel_space(config)
    model_name, options = _network(config)
    try:
        models.build_model(model_name, 1, **options)
    except ValueError as err:
        raise ConfigError(f"config fields 'distill.model/width/depth/norm': {err}") from None
    if real is None:
        real = common.load_real_data(config.data.dataset, config.data.data_dir, recipe)
    elif real.preprocessing.recipe != recipe:
        raise common.DistillationError(f"run_distillation: the real data given is in pixel space "
                                       f"{real.preprocessing.recipe!r} but this run distils in {recipe!r}")
    settings, hyper = step_settings(config, real.num_classes)
    step_fn, init_fn = _compiled(d.method, model_name, options, settings, hyper)

    base_key = jax.random.key(config.seed)
    images, classes = common.initial_images(real, d.ipc, d.init, config.seed)
    labels = np.asarray(common.centred_one_hot(classes, real.num_classes), np.float32)
    # A fresh state and a restored one are placed alike, so the jitted step sees the same
    # input shardings either way and is compiled once per process.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state = jax.device_put(init_fn(images, labels, jax.random.fold_in(base_key, 1)), device)
    step_key = jax.random.fold_in(base_key, 2)

    restored = run.resume(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state))
    start, history = 0, []
    if restored is not None:
        start, state, history = restored
        state = jax.device_put(state, device)
        report("resuming distillation at step %d", start)
    run.accept()

    real_arrays = _real_arrays(d.method, real, device)
    end = min(d.steps, d.stop_after_steps) if d.stop_after_steps else d.steps
    report("distilling %s with %s (%s %s): %d classes x %d images per class, %d steps, preprocessing %s",
           config.data.dataset, d.method, model_name, options or "", real.num_classes, d.ipc, d.steps, recipe)
    writer = run.metrics([config.seed], start, images=_logged_grids(workdir, start))
    timer = runlife.StepTimer(end, start)
    window_losses = []
    for t in range(start, end):
        state, metrics = step_fn(state, real_arrays, step_key)
        window_losses.append(metrics["loss"])
        done = t + 1
        timer.step(done, state)  # the first call compiles: kept out of the seconds per step
        if runlife.due(done, config.log_every_steps, end):
            loss = float(np.mean([float(v) for v in window_losses]))
            if not np.isfinite(loss):
                raise common.DistillationError(
                    f"distillation loss is {loss} at step {done} ({d.method}); lower the learning rate"
                    + (" or raise distill.frepo.kernel_reg" if d.method == "frepo" else ""))
            timed, elapsed = timer.lap()
            seconds = elapsed / timed if timed else None
            history.append({"step": done, "loss": loss, "seconds_per_step": seconds})
            writer.write(done, {"loss": loss, "seconds_per_step": seconds})
            report(
                "distill %s step %d/%d loss %.6g %s %s",
                d.method,
                done,
                d.steps,
                loss,
                f"{seconds:.3f} s/step"
                if seconds is not None
                else f"(first step, compile {timer.compile_seconds:.1f} s)",
                timer.line(),
            )
            window_losses = []
        if runlife.due(done, d.checkpoint_every_steps, end):
            with timer.paused():  # checkpoint time is not step time
                run.save(done, state, {"history": history})
                if workdir_io.is_writer():  # only process 0 writes
                    grid = image_grid.save_set_grid(_grid_path(workdir, done), np.asarray(state["images"]), classes,
                                                    real.preprocessing, real.num_classes)
                    writer.image("distilled_images", grid, done)
    run.close()
    return _finish(run, state, classes, real, recipe, model_name, options, history, max(end, start), timer)


def _finish(run: runlife.Run, state, classes, real, recipe, model_name, options, history, final_step,
            timer: runlife.StepTimer) -> dict:
    config, workdir = run.config, run.workdir
    d = config.distill
    finished = final_step >= d.steps
    output = workdir / OUTPUT_NAME
    seconds_per_step = timer.seconds_per_step()
    results = {
        "finished": finished, "method": d.method, "dataset": config.data.dataset, "ipc": d.ipc,
        "num_classes": real.num_classes, "steps": final_step, "steps_planned": d.steps,
        "model": {"name": model_name, "options": options}, "preprocessing": recipe,
        "seconds_per_step": seconds_per_step, "compile_seconds": timer.compile_seconds,
        "final_loss": history[-1]["loss"] if history else None, "history": history,
        "config": config.to_dict(),
    }
    if not finished:
        results["summary"] = (f"distillation stopped at step {final_step} of {d.steps} (distill.stop_after_steps); "
                              "run the same command again to resume")
        return run.finish(results)
    labels = classes if d.method == "dm" else np.asarray(state["labels"], np.float32)
    provenance = {
        "format": "distill_jax", "source": SOURCE_NAME[d.method], "method": d.method, "path": str(output.resolve()),
        "sha256": {}, "dataset": config.data.dataset, "ipc": d.ipc, "steps": final_step, "seed": config.seed,
        "model": model_name, "model_options": options, "preprocessing_file": PREPROCESSING_NAME,
        "notes": f"distilled by distill_jax ({d.method}) from {real.description}",
    }
    if workdir_io.is_writer():  # only process 0 writes; the others wait, since a later cell may read the set at once
        save_distilled(DistilledSet(np.asarray(state["images"]), labels, real.num_classes, recipe, provenance), output)
        real.preprocessing.save(workdir / PREPROCESSING_NAME)
    workdir_io.wait_for_writer("distilled set written")
    results.update({"distilled_path": str(output), "preprocessing_path": str(workdir / PREPROCESSING_NAME)})
    speed = f"{seconds_per_step:.3f} s/step" if seconds_per_step is not None else "speed not measured"
    results["summary"] = (
        f"distilled {config.data.dataset} with {DISPLAY_NAME[d.method]}: {d.ipc} image(s) per class x "
        f"{real.num_classes} classes, {final_step} steps ({speed}), final loss {results['final_loss']:.4g}\n"
        f"set: {output} (preprocessing {recipe}); train a ConvNet on it with\n"
        f"  python launch/main.py --config configs/fashion_mnist_ipc10.py --workdir {workdir}/eval "
        f"--config.data.dataset={config.data.dataset} --config.data.source=distilled "
        f"--config.data.distilled_path={output}"
    )
    return run.finish(results)
