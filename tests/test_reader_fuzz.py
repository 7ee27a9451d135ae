"""Fuzzing the file readers, and hostile files built to take memory.

Every reader of a user-supplied file must, for any bytes at all, either load or raise the
project's input error (`distill_jax.errors.InputFileError`, a subclass per reader) naming the
file: never another exception, a hang, or more memory than the array cap allows.

`test_fuzz_readers` builds one small valid file of each format the suite reads (the `.pt`
image/label pair with label vectors and with class indices, a DC/DSA/DM `res_*.pt`, the
reference `.pth` teacher, the project's own npz, a compressed KIP npz, a dataset npz stored and
compressed, a FRePo msgpack checkpoint, the CIFAR-10 binary and CIFAR-100 python archives), then
applies seeded truncations and byte flips, both to the raw file and (for zip and tar.gz files)
to one member re-archived with a valid CRC, so the pickles, npy headers and records inside are
reached too. Distilled sets are summarised as `distill-jax inspect` does, so a flipped label
reaches the per-class counts (the class-count path). It also runs `PROBES`: files built to blow
memory up (one label of 50,000,000, a stored class count of 50,000,000, a CIFAR pickle of
stride-0 arrays, a CIFAR gzip bomb, msgpack files past the cap or with a sparse tail), each of
which must be refused.

The cases run in a child process under `RLIMIT_AS` (the address space it may grow by), with
`tracemalloc` measuring each case's peak, the process's resident peak (VmHWM) measured over all
cases, and an alarm per case against hangs; the cap on any one array is set to `CAP` through
DISTILL_JAX_MAX_ARRAY_BYTES. The counts per format and outcome are printed (`pytest -s`) and
asserted.
"""
from __future__ import annotations

import collections
import io
import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import tarfile
import time
import tracemalloc
import zipfile

import numpy as np

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:  # the worker runs this file as a script
    sys.path.insert(0, str(TESTS))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from distill_jax.errors import InputFileError  # noqa: E402
from test_cifar_archives import _tar as _tar_gz  # noqa: E402 (one archive writer for the tests)

CAP = 64 << 20  # DISTILL_JAX_MAX_ARRAY_BYTES for the fuzz cases
AS_HEADROOM = 1 << 30  # how far the worker's address space may grow past its warmed-up size
RSS_GROWTH = 300 << 20  # how far the worker's resident peak may grow past its warmed-up one
CASE_SECONDS = 10  # a case running longer counts as a hang
SEED = 20240611

# cases per format: (raw truncations, raw flips, member truncations, member flips)
SYNTHETIC_COUNTS = {
    "pt_images": (8, 16, 8, 24),
    "pt_labels": (6, 10, 6, 14),
    "dc_res": (6, 10, 6, 14),
    "teacher_pth": (8, 16, 8, 24),
    "distill_npz": (8, 16, 8, 24),
    "kip_npz_deflate": (6, 12, 6, 16),
    "dataset_npz": (6, 12, 6, 16),
    "dataset_npz_deflate": (6, 12, 6, 16),
    "frepo_msgpack": (20, 40, 0, 0),
    "pt_index_labels": (4, 8, 4, 16),
    "cifar10_binary": (6, 12, 6, 18),
    "cifar100_python": (6, 12, 6, 24),
}
# Files built to take memory (see _probe_files): each must be refused.
PROBES = ("probe_pt_label_50M", "probe_npz_num_classes_50M", "probe_cifar_python_stride0", "probe_cifar_binary_bomb",
          "probe_msgpack_over_cap", "probe_msgpack_sparse_tail")
SHARED_COUNTS = {
    "shared_pt_images": (4, 6, 4, 8),
    "shared_pt_labels": (3, 4, 3, 6),
    "shared_teacher_pth": (4, 6, 4, 8),
}


# --------------------------------------------------------------------------------------
# Loading one case (runs in the worker)
# --------------------------------------------------------------------------------------


def _load(fmt: str, path: str):
    if fmt in ("teacher_pth", "shared_teacher_pth"):
        from distill_jax.formats.torch_import import load_reference_convnet

        return load_reference_convnet(path)
    if fmt.startswith("dataset_npz"):
        from distill_jax.data import datasets

        return datasets.load_dataset("npz", "train", data_dir=path)
    if "cifar" in fmt:  # the archive alone in its folder, the data root
        from distill_jax.data import datasets

        name = "cifar100" if "cifar100" in fmt else "cifar10"
        return [datasets.load_dataset(name, split, data_dir=pathlib.Path(path).parent) for split in ("train", "test")]
    from distill_jax.formats.distilled import load_distilled, summarize_distilled

    return summarize_distilled(load_distilled(path))  # what `inspect` prints: the class counts included


class _Hang(BaseException):
    """Raised by the alarm: a BaseException so no reader's `except Exception` can swallow it."""


def _status_bytes(field: str) -> int:
    """A size from /proc/self/status (VmSize: the address space; VmHWM: the resident peak)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _vm_size() -> int:
    return _status_bytes("VmSize")


def _worker(manifest_path: str, result_path: str) -> None:
    import resource
    import signal

    manifest = json.loads(pathlib.Path(manifest_path).read_text())
    for fmt, path in manifest["seeds"].items():  # imports and lazy set-up before the limit
        _load(fmt, path)
    limit = _vm_size() + AS_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    resident_before = _status_bytes("VmHWM")

    def on_alarm(signum, frame):
        raise _Hang()

    signal.signal(signal.SIGALRM, on_alarm)
    tracemalloc.start()
    results = []
    for case in manifest["cases"]:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        outcome, error = "loaded", ""
        signal.alarm(CASE_SECONDS)
        try:
            _load(case["format"], case["path"])
        except _Hang:
            outcome = "hang"
        except InputFileError as err:
            outcome, error = "refused", f"{type(err).__name__}: {err}"
        except BaseException as err:  # noqa: BLE001 - exactly what the test is looking for
            outcome, error = "escaped", f"{type(err).__module__}.{type(err).__name__}: {err}"
        finally:
            signal.alarm(0)
        results.append({
            **case,
            "outcome": outcome,
            "error": error[:500],
            "seconds": time.perf_counter() - start,
            "peak_bytes": tracemalloc.get_traced_memory()[1] - base,
        })
    growth = _status_bytes("VmHWM") - resident_before
    pathlib.Path(result_path).write_text(json.dumps({"limit": limit, "resident_growth": growth, "results": results}))


# --------------------------------------------------------------------------------------
# Seed files and mutations (run in the test process)
# --------------------------------------------------------------------------------------


def _seed_files(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """One small valid file of each format; pt pairs are folders (the mutated file is inside)."""
    from flax import serialization

    from distill_jax.formats.distilled import DistilledSet, save_distilled
    from test_torch_import import synthetic_state_dict
    from test_torch_pickle import tensor, write_torch_file

    rng = np.random.default_rng(SEED)
    seeds = {}
    root.mkdir(parents=True)
    pair = root / "pair_frepo"
    pair.mkdir()
    images = rng.normal(size=(4, 3, 6, 5)).astype(np.float32)
    write_torch_file(pair / "images_best.pt", tensor(images, "cuda:0"), prefix="images_best")
    write_torch_file(pair / "labels_best.pt", tensor(rng.normal(size=(4, 3)).astype(np.float32)), prefix="labels_best")
    seeds["pt_images"] = seeds["pt_labels"] = pair
    content = {
        "data": [[tensor(images[:2, :1]), tensor(np.array([0, 1]))]],
        "accs_all_exps": {"ConvNet": [np.float64(0.3)]},
    }
    seeds["dc_res"] = write_torch_file(root / "res_DC_toy.pt", content)
    state = synthetic_state_dict(rng, width=4, depth=2, num_classes=5, side=2, batch_norm=True)
    seeds["teacher_pth"] = write_torch_file(
        root / "teacher.pth",
        {"state_dict": collections.OrderedDict((k, tensor(v)) for k, v in state.items()), "epoch": 3},
    )
    dset = DistilledSet(rng.normal(size=(4, 6, 5, 3)), np.array([0, 1, 2, 1]), 3, "zca_frepo", {"source": "frepo"})
    seeds["distill_npz"] = pathlib.Path(save_distilled(dset, root / "own.npz"))
    seeds["kip_npz_deflate"] = root / "kip.npz"
    np.savez_compressed(seeds["kip_npz_deflate"], images=rng.normal(size=(4, 6, 5, 3)).astype(np.float32),
                        labels=np.eye(4, 5, dtype=np.float32))
    for name, save in (("dataset_npz", np.savez), ("dataset_npz_deflate", np.savez_compressed)):
        seeds[name] = root / f"{name}.npz"
        save(seeds[name], image=rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8),
             label=rng.integers(0, 3, 12), class_names=np.array(["a", "b", "c"]))
    tree = {"step": 7, "params": {"x_proto": rng.normal(size=(3, 4, 4, 3)).astype(np.float32),
                                  "y_proto": rng.normal(size=(3, 10)).astype(np.float32)}}
    seeds["frepo_msgpack"] = root / "checkpoint_7"
    seeds["frepo_msgpack"].write_bytes(serialization.msgpack_serialize(tree))
    index_pair = root / "pair_mtt"
    index_pair.mkdir()
    write_torch_file(index_pair / "images_best.pt", tensor(images), prefix="images_best")
    write_torch_file(index_pair / "labels_best.pt", tensor(np.array([0, 2, 1, 2])), prefix="labels_best")
    seeds["pt_index_labels"] = index_pair
    pixels = lambda n: rng.integers(0, 256, (n, 3072), dtype=np.uint8)  # noqa: E731
    members = {
        f"cifar-10-batches-bin/{m}": np.concatenate(
            [rng.integers(0, 10, (3, 1), dtype=np.uint8), pixels(3)], 1
        ).tobytes()
        for m in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]
    }
    members["cifar-10-batches-bin/batches.meta.txt"] = "\n".join(f"class{k}" for k in range(10)).encode()
    (root / "cifar10_binary").mkdir()
    seeds["cifar10_binary"] = _tar_gz(root / "cifar10_binary" / "cifar-10-binary.tar.gz", members)
    members = {
        f"cifar-100-python/{split}": pickle.dumps(
            {
                b"data": pixels(3),
                b"fine_labels": [7, 99, 0],
                b"coarse_labels": [1, 19, 0],
                b"filenames": [b"a", b"b", b"c"],
            },
            protocol=2,
        )
        for split in ("train", "test")
    }
    members["cifar-100-python/meta"] = pickle.dumps({b"fine_label_names": [b"c%d" % k for k in range(100)]}, protocol=2)
    (root / "cifar100_python").mkdir()
    seeds["cifar100_python"] = _tar_gz(root / "cifar100_python" / "cifar-100-python.tar.gz", members)
    return seeds


class _StrideZero:
    """Pickles as numpy.ndarray((50000, 3072), uint8, one byte, 0, strides (0, 0)): 150 MB of view."""

    def __reduce__(self):
        return np.ndarray, ((50000, 3072), np.dtype("u1"), b"\0", 0, (0, 0))


def _probe_files(root: pathlib.Path) -> list[dict]:
    """The hostile files of PROBES, each in its own folder (a few hundred kB on disk)."""
    from distill_jax.formats.distilled import FORMAT_VERSION
    from test_torch_pickle import tensor, write_torch_file

    rng = np.random.default_rng(SEED)
    cases = []

    def folder(name):
        path = root / name
        path.mkdir(parents=True)
        cases.append({"format": name, "kind": "probe", "folder": str(path)})
        return path

    pair = folder("probe_pt_label_50M")
    write_torch_file(
        pair / "images_best.pt", tensor(rng.normal(size=(26, 3, 32, 32)).astype(np.float32)), prefix="images_best"
    )
    write_torch_file(pair / "labels_best.pt", tensor(np.where(np.arange(26) == 3, 50_000_000, np.arange(26) % 10)),
                     prefix="labels_best")
    cases[-1]["path"] = str(pair)
    metadata = {"format": "distill_jax", "format_version": FORMAT_VERSION, "num_classes": 50_000_000,
                "preprocessing": "none", "label_kind": "index", "image_layout": "NHWC", "provenance": {}}
    npz = folder("probe_npz_num_classes_50M") / "set.npz"
    np.savez(npz, images=rng.uniform(size=(20, 32, 32, 3)).astype(np.float32), labels=np.arange(20) % 10,
             metadata=np.array(json.dumps(metadata)))
    cases[-1]["path"] = str(npz)
    batches = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    members = {f"cifar-10-batches-py/{m}": pickle.dumps({b"data": _StrideZero(), b"labels": [0] * 50000}, protocol=2)
               for m in batches}
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {b"label_names": [b"c%d" % k for k in range(10)]}, protocol=2
    )
    path = _tar_gz(folder("probe_cifar_python_stride0") / "cifar-10-python.tar.gz", members)
    cases[-1]["path"] = str(path)
    zeros = bytes(3073 * 6500)  # 20 MB of zero records a member, under the cap: ~120 MB from a ~120 kB archive
    members = {f"cifar-10-batches-bin/{m}.bin": zeros for m in batches}
    members["cifar-10-batches-bin/batches.meta.txt"] = b"\n".join(b"c%d" % k for k in range(10))
    path = _tar_gz(folder("probe_cifar_binary_bomb") / "cifar-10-binary.tar.gz", members)
    cases[-1]["path"] = str(path)
    over = folder("probe_msgpack_over_cap") / "checkpoint_1"
    with open(over, "wb") as handle:
        handle.truncate(1_500_000_000)  # sparse: no disk space
    cases[-1]["path"] = str(over)
    tail = folder("probe_msgpack_sparse_tail") / "checkpoint_2"
    tree = {"params": {"x_proto": np.zeros((2, 4, 4, 3), np.float32), "y_proto": np.eye(2, 3, dtype=np.float32)}}
    from flax import serialization

    tail.write_bytes(serialization.msgpack_serialize(tree))
    with open(tail, "r+b") as handle:
        handle.truncate(CAP // 2)  # a valid checkpoint, then ~32 MB of zeros: under the cap
    cases[-1]["path"] = str(tail)
    assert [case["format"] for case in cases] == list(PROBES)
    return cases


def _mutated_file(fmt: str, seed: pathlib.Path) -> pathlib.Path:
    """The file a case mutates: inside a pair folder, the images or labels file."""
    if fmt.endswith("pt_images"):
        return seed / "images_best.pt"
    if fmt.endswith(("pt_labels", "pt_index_labels")):
        return seed / "labels_best.pt"
    return seed


def _flip(data: bytes, rng, positions=None) -> bytes:
    out = bytearray(data)
    count = int(rng.choice([1, 2, 4, 16]))
    for _ in range(count):
        where = int(rng.integers(0, len(out))) if positions is None else int(rng.choice(positions))
        out[where] ^= int(rng.integers(1, 256))
    return bytes(out)


def _rezip(data: bytes, rng, kind: str) -> bytes:
    """Mutate one member of a zip and write the archive again (valid CRCs, same compression)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    # Prefer what is parsed before any CRC check: the pickle, and the npy headers.
    weights = np.array([4.0 if info.filename.endswith((".pkl", ".npy")) else 1.0 for info, _ in members])
    chosen = int(rng.choice(len(members), p=weights / weights.sum()))
    info, payload = members[chosen]
    if kind == "truncate":
        payload = payload[: int(rng.integers(0, max(len(payload), 1)))]
    elif info.filename.endswith(".npy") and rng.random() < 0.6:
        payload = _flip(payload, rng, positions=range(min(len(payload), 128)))  # the header
    else:
        payload = _flip(payload, rng) if payload else payload
    members[chosen] = (info, payload)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, payload in members:
            archive.writestr(info.filename, payload, compress_type=info.compress_type)
    return buffer.getvalue()


def _retar(data: bytes, rng, kind: str) -> bytes:
    """Mutate one member of a tar.gz and write the archive again (valid gzip CRC)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        members = [(info.name, archive.extractfile(info).read()) for info in archive.getmembers()]
    chosen = int(rng.integers(0, len(members)))
    name, payload = members[chosen]
    if kind == "truncate":
        payload = payload[: int(rng.integers(0, max(len(payload), 1)))]
    elif name.endswith(".bin") and rng.random() < 0.6:
        payload = _flip(payload, rng, positions=range(0, len(payload), 3073))  # the label bytes
    else:
        payload = _flip(payload, rng) if payload else payload
    members[chosen] = (name, payload)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _make_cases(seeds: dict[str, pathlib.Path], counts: dict, root: pathlib.Path, seed: int) -> list[dict]:
    cases = []
    for fmt_index, (fmt, (raw_cut, raw_flip, member_cut, member_flip)) in enumerate(counts.items()):
        rng = np.random.default_rng([seed, fmt_index])
        source = seeds[fmt]
        original = _mutated_file(fmt, source).read_bytes()
        plan = [
            ("truncate", raw_cut),
            ("flip", raw_flip),
            ("member_truncate", member_cut),
            ("member_flip", member_flip),
        ]
        number = 0
        for kind, count in plan:
            for _ in range(count):
                if kind == "truncate":
                    data = original[: int(rng.integers(0, len(original)))]
                elif kind == "flip":
                    data = _flip(original, rng)
                elif fmt.startswith("cifar"):
                    data = _retar(original, rng, kind.split("_")[1])
                else:
                    data = _rezip(original, rng, kind.split("_")[1])
                folder = root / f"{fmt}-{number:03d}"
                number += 1
                if source.is_dir():  # a pair: copy the folder, replace one file
                    shutil.copytree(source, folder / source.name)
                    target = folder / source.name
                    _mutated_file(fmt, target).write_bytes(data)
                else:
                    folder.mkdir()
                    target = folder / source.name
                    target.write_bytes(data)
                cases.append({"format": fmt, "kind": kind, "path": str(target), "folder": str(folder)})
    return cases


def _run_worker(tmp_path: pathlib.Path, seeds: dict, cases: list[dict], timeout: float) -> dict:
    """Run the cases in a child process (it inherits DISTILL_JAX_MAX_ARRAY_BYTES)."""
    manifest = tmp_path / "manifest.json"
    result = tmp_path / "result.json"
    manifest.write_text(json.dumps({"seeds": {k: str(v) for k, v in seeds.items()}, "cases": cases}))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one host device is enough here
    process = subprocess.run([sys.executable, __file__, str(manifest), str(result)], env=env,
                             capture_output=True, text=True, timeout=timeout)
    assert process.returncode == 0, f"fuzz worker failed ({process.returncode}):\n{process.stderr[-4000:]}"
    return json.loads(result.read_text())


def _check(report: dict, title: str) -> None:
    results = report["results"]
    table = collections.defaultdict(collections.Counter)
    for case in results:
        table[case["format"]][case["outcome"]] += 1
    lines = [f"{title}: {len(results)} cases (RLIMIT_AS {report['limit'] >> 20} MiB, cap {CAP >> 20} MiB, "
             f"resident peak grew {report['resident_growth'] / 2**20:.0f} MiB)"]
    for fmt, outcomes in table.items():
        lines.append(
            f"  {fmt:22s} {sum(outcomes.values()):4d} tried: "
            + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        )
    slowest = max(results, key=lambda case: case["seconds"])
    biggest = max(results, key=lambda case: case["peak_bytes"])
    lines.append(f"  slowest case {slowest['seconds']:.2f} s ({slowest['format']}), largest peak "
                 f"{biggest['peak_bytes'] / 2**20:.1f} MiB ({biggest['format']})")
    print("\n".join(lines))

    bad = []
    for case in results:
        label = f"{case['format']} {case['kind']} {case['path']}"
        if case["outcome"] in ("escaped", "hang"):
            bad.append(f"{label}: {case['outcome']} {case['error']}")
        elif case["outcome"] == "refused":
            if case["folder"] not in case["error"]:
                bad.append(f"{label}: the error does not name the file: {case['error']}")
            if "MemoryError" in case["error"] or "out of memory" in case["error"]:
                bad.append(f"{label}: hit the memory limit: {case['error']}")
        if case["peak_bytes"] > CAP:
            bad.append(f"{label}: peak {case['peak_bytes']} bytes > cap {CAP}")
        if case["kind"] == "probe" and case["outcome"] != "refused":
            bad.append(f"{label}: a hostile file was not refused ({case['outcome']})")
    if report["resident_growth"] > RSS_GROWTH:
        bad.append(f"the worker's resident peak grew by {report['resident_growth']} bytes (> {RSS_GROWTH})")
    assert not bad, f"{len(bad)} of {len(results)} cases broke a rule:\n" + "\n".join(bad[:40])


def test_fuzz_readers(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_JAX_MAX_ARRAY_BYTES", str(CAP))
    start = time.perf_counter()
    seeds = _seed_files(tmp_path / "seeds")
    cases = _make_cases(seeds, SYNTHETIC_COUNTS, tmp_path / "cases", SEED) + _probe_files(tmp_path / "probes")
    report = _run_worker(tmp_path, seeds, cases, timeout=300)
    _check(report, "reader fuzz (synthetic files and probes)")
    outcomes = collections.Counter(case["outcome"] for case in report["results"])
    assert len(cases) >= 400 and outcomes["loaded"] > 0 and outcomes["refused"] > 0
    by_format = collections.defaultdict(collections.Counter)
    for case in report["results"]:
        by_format[case["format"]][case["outcome"]] += 1
    for fmt in ("cifar10_binary", "cifar100_python", "pt_index_labels"):  # the mutations reach both outcomes
        assert by_format[fmt]["loaded"] > 0 and by_format[fmt]["refused"] > 0, (fmt, by_format[fmt])
    print(f"  total {time.perf_counter() - start:.1f} s")


def test_fuzz_shared_files(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("DISTILL_JAX_MAX_ARRAY_BYTES", str(CAP))
    start = time.perf_counter()
    pair = tmp_path / "seeds" / "cifar10_1_mtt"
    shutil.copytree(shared_data / "distilled" / "cifar10_1_mtt", pair)
    teacher = tmp_path / "seeds" / "checkpoint_best.pth"
    shutil.copy(shared_data / "teachers" / "cifar10_1_mtt_convnet" / "checkpoint_best.pth", teacher)
    seeds = {"shared_pt_images": pair, "shared_pt_labels": pair, "shared_teacher_pth": teacher}
    cases = _make_cases(seeds, SHARED_COUNTS, tmp_path / "cases", SEED + 1)
    report = _run_worker(tmp_path, seeds, cases, timeout=300)
    _check(report, "reader fuzz (shared files)")
    print(f"  total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
