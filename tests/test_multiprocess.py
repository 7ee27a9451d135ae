"""A real multi-process run: two processes on this machine, joined by `jax.distributed`
(CPU collectives, gloo), train one run together in a shared workdir.

Their results must be those of a one-process run over the same number of devices (the
processes only split the devices, not the maths: the same accuracies and losses, parameters
equal up to rounding), and the workdir must hold one run's files: process 0 writes them all,
process 1 changes nothing (an audit hook watches its file operations; no second metrics line
per step, no second TensorBoard event file, no lock). Every run is a subprocess of this file
(`python tests/test_multiprocess.py worker ...`): the device count and the distributed client
are fixed before JAX starts, which pytest's own process has already done.
"""
import collections
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from distill_jax.training import loop, sharding
from helpers import synthetic_data, tiny_run_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICES_PER_PROCESS = 2
NUM_PROCESSES = 2
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir, out, *, devices: int, process_id: int = 0, num_processes: int = 1, port: int = 0):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, __file__, "worker", str(process_id), str(num_processes), str(port), str(workdir), str(out)]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs) -> list[str]:
    """Waits for every process (killing all at the deadline); their outputs, or a failure showing them."""
    deadline = time.monotonic() + TIMEOUT_S
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"runs did not finish in {TIMEOUT_S} s:\n" + "\n---\n".join(p.communicate()[0] for p in procs))
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, f"a run failed (exit {p.returncode}):\n{text}"
    return outputs


def test_mesh_takes_the_same_devices_from_every_process():
    """A multi-process mesh needs devices of every process (each feeds its own), equally many."""
    Device = collections.namedtuple("Device", "id process_index")
    devices = [Device(i, i // 4) for i in range(8)]  # 2 processes x 4 devices
    assert sharding.mesh_layout(devices, 8)[0] == devices
    assert sharding.mesh_layout(devices, 6)[0] == devices[0:3] + devices[4:7]
    assert sharding.mesh_layout(devices, 10)[0] == [devices[0], devices[4]]  # not 5 of process 0's
    assert sharding.mesh_layout(devices[:4], 6)[0] == devices[:3]  # one process: any divisor
    with pytest.raises(sharding.MeshError, match="2 processes"):
        sharding.mesh_layout(devices, 5)[0]


def test_two_processes_train_together_as_one_and_only_process_0_writes(tmp_path):
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    port = _free_port()
    procs = [_start(shared, tmp_path / f"out_{i}.json", devices=DEVICES_PER_PROCESS, process_id=i,
                    num_processes=NUM_PROCESSES, port=port) for i in range(NUM_PROCESSES)]
    procs.append(_start(alone, tmp_path / "out_alone.json", devices=DEVICES_PER_PROCESS * NUM_PROCESSES))
    logs = _finish(procs)
    outs = [json.loads((tmp_path / f"out_{i}.json").read_text()) for i in range(NUM_PROCESSES)]
    reference = json.loads((tmp_path / "out_alone.json").read_text())

    # one run, computed by both processes, equal to the one-process run on as many devices
    assert [o["process"] for o in outs] == [[i, NUM_PROCESSES] for i in range(NUM_PROCESSES)]
    assert all(len(o["results"]["devices"]) == DEVICES_PER_PROCESS * NUM_PROCESSES for o in outs)
    for results in [o["results"] for o in outs] + [json.loads((shared / "results.json").read_text())]:
        assert results["finished"] is True
        _assert_same_history(results["history"], reference["results"]["history"])
        assert results["final_accuracy"] == reference["results"]["final_accuracy"]
    _assert_same_state(_restore_state(shared), _restore_state(alone))

    # one set of files, all from process 0: process 1 changed nothing (checkpoints included:
    # Orbax lets the primary process write replicated host arrays) and took no lock
    assert outs[1]["writes"] == []
    assert any(w.endswith("/metrics.jsonl") for w in outs[0]["writes"])  # the watch sees writes
    assert sorted(p.name for p in shared.iterdir()) == sorted(p.name for p in alone.iterdir()) == [
        "checkpoints", "config.json", "metrics.jsonl", "model.json", "results.json", "tb", "train_set.png"]
    steps = [json.loads(line)["step"] for line in (shared / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(line)["step"] for line in (alone / "metrics.jsonl").read_text().splitlines()]
    events = sorted(str(p.relative_to(shared / "tb").parent) for p in (shared / "tb").rglob("events.*"))
    assert events == [".", "seed_0", "seed_1"]  # one event file per writer: process 1 opened none
    assert sorted(p.name for p in (shared / "checkpoints").iterdir()) == ["2", "4"]
    assert not [p for p in shared.rglob("*") if "tmp" in p.name.lower()]
    # process 0 logs the results; process 1 computes them quietly
    assert "final test accuracy" in logs[0] and "final test accuracy" not in logs[1]


def _assert_same_history(history, expected):
    assert [(h["epoch"], h["step"], h["test_accuracy"]) for h in history] == [
        (h["epoch"], h["step"], h["test_accuracy"]) for h in expected]
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in expected], rel=1e-5)


def _restore_state(workdir):
    manager = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "meta"))
    return manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


def _assert_same_state(state, expected):
    """Equal up to rounding: the gradient of a convolution's bias before batch norm is zero but
    for rounding, gloo's cross-process sums round otherwise than one process's, and Adam's
    normalisation magnifies that noise (to ~1e-4 in these biases and the batch-norm means
    after them); the other arrays agree to ~1e-9."""
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3, err_msg=jax.tree_util.keystr(path))


def _worker(process_id: int, num_processes: int, port: int, workdir: str, out: str) -> None:
    """One process of the run: joins the others (if any), trains two epochs, reports the results
    and what it wrote into the workdir."""
    if num_processes > 1:
        jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=120)
    logging.getLogger().setLevel(logging.INFO)  # as the launcher logs
    logging.getLogger("absl").setLevel(logging.WARNING)
    writes = _watch_writes(pathlib.Path(workdir))
    results = loop.train_and_evaluate(tiny_run_config(**{"train.epochs": 2}), workdir, data=synthetic_data())
    pathlib.Path(out).write_text(json.dumps({"process": [jax.process_index(), jax.process_count()],
                                             "results": results, "writes": writes}))


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _watch_writes(workdir: pathlib.Path) -> list[str]:
    """The file changes (open for writing, rename, remove, mkdir) this process makes under
    `workdir` from Python, as 'event path' lines, recorded by an audit hook."""
    root = str(workdir.resolve())
    seen = []

    def hook(event, args):
        if event not in ("open", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.chmod"):
            return
        path = args[0]
        if not isinstance(path, (str, bytes, os.PathLike)):
            return
        path = os.path.abspath(os.fsdecode(path))
        if not path.startswith(root):
            return
        if event == "open":
            mode, flags = args[1], args[2]
            if not ((isinstance(mode, str) and set(mode) & set("wax+")) or (flags or 0) & _WRITE_FLAGS):
                return
        seen.append(f"{event} {path}")

    sys.addaudithook(hook)
    return seen


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:  # tests/ is sys.path[0]: helpers imports
    _worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6])
