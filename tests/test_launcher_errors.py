"""User errors end a launch with one line and exit code 2; bugs keep their traceback.

Each case runs `launch/main.py` as a user would (a subprocess), so the absl flag parsing and
the config loading are part of what is tested.
"""
import errno
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from distill_jax import errors, launcher

ROOT = pathlib.Path(__file__).resolve().parents[1]


def launch(*args, workdir):
    return subprocess.run([sys.executable, str(ROOT / "launch" / "main.py"), *args, f"--workdir={workdir}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("args, expected", [
    (["--config=configs/nope.py"], "No such file or directory: 'configs/nope.py'"),
    (["--config=configs/paper.py:resnet19,frepo,cifar10,10,full"], "test network 'resnet19' is not known"),
    (["--config=configs/fashion_mnist_ipc10.py", "--config.model.nope=3"], "an override names no config field"),
    # checked from the config alone, before any data is looked for (the data_dir does not exist)
    (["--config=configs/fashion_mnist_ipc10.py", "--config.model.width=0", "--config.data.data_dir=/nonexistent"],
     "config field 'model.width' = 0; allowed range: [1, inf]"),
    (["--config=configs/paper.py:resnet18,frepo,cifar10_jpeg,10,full", "--config.train.epochs=100",
      "--config.data.data_dir=/nonexistent"], "the three phases do not fit in total_epochs=100"),
    (["--config=configs/paper.py:resnet18,frepo,cifar10_jpeg,10,full", "--config.train.keep_rate.step=0.0"],
     "'train.keep_rate.step' = 0.0"),
    (["--config=configs/reproduce.py:nope_cifar10_10_resnet18"], "distillation method 'nope' is not known"),
    (["--config=configs/fashion_mnist_ipc10.py", "--config.data.dataset=cifar10_jpeg",
      "--config.data.data_dir=/nonexistent"], "/nonexistent/cifar10_jpeg_train.npz not found"),
    (["--config=configs/fashion_mnist_ipc10.py", "--num_processes=2", "--process_id=1"],
     "flags --num_processes --process_id need --distributed"),
    (["--config=configs/fashion_mnist_ipc10.py", "--distributed", "--num_processes=2", "--process_id=2"],
     "flag --process_id = 2; expected 0 to 1"),
    (["--config=configs/fashion_mnist_ipc10.py", "--distributed", "--num_processes=0"],
     "flag --num_processes = 0; expected at least 1"),
])
def test_user_errors_are_one_line_with_exit_code_2(tmp_path, args, expected):
    result = launch(*args, workdir=tmp_path / "run")
    assert result.returncode == errors.USER_ERROR_EXIT, result.stderr[-2000:]
    lines = error_lines(result)
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_corrupt_dataset_file_is_named_in_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    buffer = tmp_path / "good.npz"
    np.savez(buffer, image=np.zeros((4, 32, 32, 3), np.uint8), label=np.zeros(4, np.int64))
    (data / "cifar10_jpeg_train.npz").write_bytes(buffer.read_bytes()[:100])  # truncated
    result = launch("--config=configs/fashion_mnist_ipc10.py", "--config.data.dataset=cifar10_jpeg",
                    f"--config.data.data_dir={data}", workdir=tmp_path / "run")
    assert result.returncode == errors.USER_ERROR_EXIT and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert str(data / "cifar10_jpeg_train.npz") in error_lines(result)[0]


def test_verbose_shows_the_traceback(tmp_path):
    result = launch("--config=configs/fashion_mnist_ipc10.py", "--config.model.width=0", "--verbose",
                    workdir=tmp_path / "run")
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_user_error_message_kinds():
    assert errors.user_error_message(errors.UserError("a\n  b")) == "a; b"
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/results.json")
    assert errors.user_error_message(full).startswith("disk full while writing /runs/x/results.json")
    assert "out of memory" in errors.user_error_message(MemoryError())
    assert errors.user_error_message(FileNotFoundError(errno.ENOENT, "No such file", "/x")) == "No such file: /x"
    assert errors.user_error_message(ZeroDivisionError("bug")) is None  # a bug keeps its traceback


def test_a_diverging_run_exits_non_zero_without_a_final_accuracy(tmp_path):
    result = launch(
        "--config=configs/fashion_mnist_ipc10.py",
        "--config.train.optimizer=sgd",
        "--config.train.learning_rate=1e38",
        "--config.train.lr_schedule=constant",
        "--config.train.epochs=4",
        "--config.model.width=4",
        "--config.num_seeds=1",
        "--config.log_every_steps=1",
        workdir=tmp_path / "run",
    )
    assert result.returncode == errors.DIVERGED_EXIT, result.stderr[-2000:]
    assert "diverged at step" in result.stderr and "final test accuracy" not in result.stdout


def test_a_missing_flag_is_named_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "main.py"), "--config=configs/fashion_mnist_ipc10.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == errors.USER_ERROR_EXIT and "Traceback" not in result.stderr
    assert error_lines(result) == [
        "error: flags: flag --workdir=None: Flag --workdir must have a value other than None."
    ]


def test_distributed_flags_reach_jax_distributed_initialize(monkeypatch, tmp_path):
    """--coordinator_address, --num_processes and --process_id are passed on as given; the ones
    not given are left for JAX to find in the cluster environment."""
    seen = []

    class Stop(Exception):
        pass

    def fake_initialize(**kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(launcher.jax.distributed, "initialize", fake_initialize)
    settings = launcher.distributed_settings(
        {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": None}, True)
    with pytest.raises(Stop):
        launcher.launch(lambda: None, tmp_path, distributed=True, distributed_settings=settings)
    assert seen == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 4}]
    with pytest.raises(Stop):
        launcher.launch(lambda: None, tmp_path, distributed=True)
    assert seen[-1] == {}


# ---------------------------------------------------------------- unusable workdirs and config files

LONG_NAME = "n" * 256  # one byte over the 255 a name may have


@pytest.mark.parametrize("make, expected", [
    (lambda d: (d.write_text("x"), d)[1], "error: workdir {w} is a file, not a folder"),
    (lambda d: (d.write_text("x"), d / "run")[1], "error: workdir {w} runs through {d}, which is a file, not a folder"),
    (lambda d: d / LONG_NAME, "error: workdir name 'nnnnnnnnnnnnnnnnnnnnnnnn...' (256 bytes, in {d}) is too long: "
                              "a name on this file system has at most 255 bytes"),
])
def test_an_unusable_workdir_is_one_line(tmp_path, make, expected):
    d = tmp_path / "w"
    workdir = make(d)
    result = launch("--config=configs/fashion_mnist_ipc10.py", workdir=workdir)
    assert result.returncode == errors.USER_ERROR_EXIT and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith(expected.format(w=workdir, d=d)), result.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == (["w"] if d.exists() else [])
    assert not d.exists() or d.read_text() == "x"  # the file is left as it was


@pytest.mark.parametrize("new", [False, True], ids=["existing", "new"])
def test_a_read_only_workdir_is_one_line(tmp_path, new):
    """Root writes through folder permissions, so as root the workdir's folder is made read-only
    by a read-only bind mount in a private mount namespace (the rest of the machine does not see
    it); any other user gets a folder without write permission."""
    folder = tmp_path / "ro"
    folder.mkdir()
    workdir = folder / "run" if new else folder
    argv = [sys.executable, str(ROOT / "launch" / "main.py"), "--config=configs/fashion_mnist_ipc10.py",
            f"--workdir={workdir}"]
    if os.geteuid() == 0:
        if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
            pytest.skip("a read-only file system for root needs a private mount namespace (unshare -m), refused here")
        argv = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"',
                str(folder), *argv]
        why = "is on a read-only file system"
    else:
        folder.chmod(0o555)
        why = "is not writable by this user"
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    folder.chmod(0o755)
    assert result.returncode == errors.USER_ERROR_EXIT and "Traceback" not in result.stderr, result.stderr[-2000:]
    where = f"workdir {workdir}: the folder {folder} it goes in" if new else f"workdir {workdir}"
    assert error_lines(result) == [f"error: {where} {why}; give a workdir that can be written"]
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("body, expected", [
    ("X = 1\n", "config file {f} defines no get_config() function; expected one that returns the config"),
    ("def get_config():\n    config = 1\n", "config file {f}: get_config() returned None (NoneType); expected a "
                                              "ConfigDict (is its return statement missing?)"),
])
def test_a_config_file_that_gives_no_config_is_one_line(tmp_path, body, expected):
    config_file = tmp_path / "my_config.py"
    config_file.write_text(body)
    result = launch(f"--config={config_file}", workdir=tmp_path / "run")
    assert result.returncode == errors.USER_ERROR_EXIT, result.stderr[-2000:]
    assert result.stderr.splitlines() == error_lines(result)  # nothing else on stderr
    assert len(error_lines(result)) == 1, result.stderr
    assert error_lines(result)[0].startswith("error: cannot load the config given by --config: "
                                             + expected.format(f=config_file)), result.stderr
    assert not (tmp_path / "run").exists()
