"""One run per workdir (workdir_io.WorkdirLock): an OS lock (flock) held for the run's life.

Many processes starting at the same instant on one workdir: exactly one holds it; a holder in
another PID namespace or on another host (its PID means nothing here) still holds it; a run
killed with SIGKILL frees it at once. The contenders are forked processes (only the lock code
runs in them).
"""
import multiprocessing
import os
import signal
import socket

import pytest

from distill_jax.training import workdir_io

CONTENDERS = 20
ROUNDS = 20


def _contend(workdir, rounds, start, attempted, released, results):
    """Each round: wait for all, try the lock at once, report, wait until all have tried,
    release (the winner), wait for all again."""
    for round_ in range(rounds):
        start.wait()
        lock = workdir_io.WorkdirLock(workdir)
        try:
            lock.__enter__()
            results.put((round_, os.getpid(), "won", ""))
        except workdir_io.WorkdirInUseError as err:
            results.put((round_, os.getpid(), "lost", str(err)))
        except BaseException as err:  # noqa: BLE001 - reported to the test
            results.put((round_, os.getpid(), "error", repr(err)))
        attempted.wait()
        lock.__exit__(None, None, None)
        released.wait()


def test_simultaneous_starts_give_exactly_one_holder(tmp_path):
    ctx = multiprocessing.get_context("fork")
    start, attempted, released = (ctx.Barrier(CONTENDERS) for _ in range(3))
    results = ctx.Queue()
    workers = [ctx.Process(target=_contend, args=(tmp_path, ROUNDS, start, attempted, released, results))
               for _ in range(CONTENDERS)]
    for w in workers:
        w.start()
    try:
        outcomes = [results.get(timeout=120) for _ in range(CONTENDERS * ROUNDS)]
    finally:
        for w in workers:
            w.join(timeout=60)
            if w.is_alive():
                w.kill()
    assert all(w.exitcode == 0 for w in workers)
    assert [o for o in outcomes if o[2] == "error"] == []
    rounds = [[o for o in outcomes if o[0] == round_] for round_ in range(ROUNDS)]
    assert [len(these) for these in rounds] == [CONTENDERS] * ROUNDS
    winners = [[pid for _, pid, kind, _ in these if kind == "won"] for these in rounds]
    assert [len(w) for w in winners] == [1] * ROUNDS, "holders per round"
    host = socket.gethostname()
    for these, (winner,) in zip(rounds, winners, strict=True):
        for _, _, kind, message in these:
            if kind == "lost":
                assert f"workdir {tmp_path} in use by PID {winner} on {host}" in message, message
    assert not (tmp_path / workdir_io.LOCK_FILE).exists()  # the last holder removed it


def _hold(workdir, ready, stop, note=None):
    lock = workdir_io.WorkdirLock(workdir).__enter__()
    if note is not None:  # what a holder in another PID namespace or on another host writes
        (workdir / workdir_io.LOCK_FILE).write_text(note)
    ready.set()
    stop.wait(120)
    lock.__exit__(None, None, None)


def test_a_holder_whose_pid_means_nothing_here_still_holds_it(tmp_path):
    """Another container or host on a shared file system: its PID is no process of this PID
    namespace, and the lock is held all the same."""
    ctx = multiprocessing.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path, ready, stop, "4194000 build-host-7\n"))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(workdir_io.WorkdirInUseError, match="in use by PID 4194000 on build-host-7"):
            workdir_io.WorkdirLock(tmp_path).__enter__()
        assert (tmp_path / workdir_io.LOCK_FILE).read_text() == "4194000 build-host-7\n"  # left as the holder wrote it
    finally:
        stop.set()
        holder.join(60)
    assert holder.exitcode == 0
    with workdir_io.WorkdirLock(tmp_path) as lock:  # released: free again
        assert lock.held


def test_a_run_killed_with_sigkill_frees_the_workdir(tmp_path, caplog):
    ctx = multiprocessing.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path, ready, stop))
    holder.start()
    assert ready.wait(60)
    with pytest.raises(workdir_io.WorkdirInUseError, match=f"in use by PID {holder.pid} on "):
        workdir_io.WorkdirLock(tmp_path).__enter__()
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(60)
    assert holder.exitcode == -signal.SIGKILL
    assert (tmp_path / workdir_io.LOCK_FILE).is_file()  # left behind by the killed run
    with caplog.at_level("WARNING"), workdir_io.WorkdirLock(tmp_path) as lock:
        assert lock.held
        assert (tmp_path / workdir_io.LOCK_FILE).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    assert f"taking over the lock of PID {holder.pid} on {socket.gethostname()}, which ended without releasing it" \
        in caplog.text
    assert not (tmp_path / workdir_io.LOCK_FILE).exists()


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    with workdir_io.WorkdirLock(tmp_path):
        with pytest.raises(workdir_io.WorkdirInUseError, match=f"in use by PID {os.getpid()}"):
            workdir_io.WorkdirLock(tmp_path).__enter__()
    with workdir_io.WorkdirLock(tmp_path) as again:
        assert again.held


def test_only_the_writer_process_takes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir_io, "is_writer", lambda: False)
    with workdir_io.WorkdirLock(tmp_path / "run") as lock:
        assert not lock.held and not (tmp_path / "run").exists()


@pytest.mark.parametrize("make, expected", [
    (lambda d: (d.write_text("x"), d)[1], "is a file, not a folder"),
    (lambda d: (d.write_text("x"), d / "sub")[1], "which is a file, not a folder"),
    (lambda d: d / ("n" * 256), "(256 bytes, in"),
])
def test_unusable_workdirs_are_named(tmp_path, make, expected):
    workdir = make(tmp_path / "w")
    with pytest.raises(workdir_io.UnusableWorkdirError, match=expected.replace("(", r"\(")):
        workdir_io.WorkdirLock(workdir).__enter__()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["w"] if (tmp_path / "w").exists() else [])
