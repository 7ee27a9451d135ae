"""Safe reading of torch.save zip files (distill_jax.formats.torch_pickle).

torch is not installed: ``write_torch_file`` below builds torch-format archives by hand
(protocol-2 pickle with GLOBAL opcodes naming torch's rebuild functions and storage
persistent ids, raw little-endian storages), the way ``torch.save`` lays them out. The
other test modules reuse it.
"""
import collections
import contextlib
import io
import itertools
import pickle
import sys
import types
import zipfile

import chex
import ml_dtypes
import numpy as np
import pytest

from distill_jax.formats import torch_pickle
from distill_jax.formats.torch_pickle import TorchFileError, UnsafePickleError, load_torch_file

# --------------------------------------------------------------------------------------
# A hand-made torch.save writer (test side only)
# --------------------------------------------------------------------------------------

STORAGE_NAMES = {
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float32"): "FloatStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("int16"): "ShortStorage",
    np.dtype("int8"): "CharStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}
_keys = itertools.count()


class FakeStorage:
    """A storage: flat elements, a device name and a key (the archive member name)."""

    def __init__(self, flat, location="cpu"):
        self.flat = np.ascontiguousarray(flat).reshape(-1)
        self.location = location
        self.key = str(next(_keys))


class FakeTensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage, offset, size, stride, requires_grad=False):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)
        self.requires_grad = requires_grad

    def __reduce_ex__(self, protocol):
        utils = sys.modules["torch._utils"]
        args = (self.storage, self.offset, self.size, self.stride, self.requires_grad, collections.OrderedDict())
        return utils._rebuild_tensor_v2, args


class FakeParameter:
    """Pickles as torch._utils._rebuild_parameter(tensor, requires_grad, hooks)."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce_ex__(self, protocol):
        return sys.modules["torch._utils"]._rebuild_parameter, (self.tensor, True, collections.OrderedDict())


def tensor(array, location="cpu"):
    """A contiguous tensor holding ``array`` (C order strides, in elements)."""
    array = np.asarray(array)
    strides = tuple(s // array.itemsize for s in array.strides) if array.ndim else ()
    if not array.flags["C_CONTIGUOUS"]:
        array = np.ascontiguousarray(array)
        strides = tuple(s // array.itemsize for s in array.strides)
    return FakeTensor(FakeStorage(array, location), 0, array.shape, strides)


@contextlib.contextmanager
def _fake_torch_modules():
    """Install stub 'torch' / 'torch._utils' modules so pickle can name their globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
        def stub(*args):  # never called: only its name goes into the pickle
            raise AssertionError("stub")
        stub.__module__, stub.__name__, stub.__qualname__ = "torch._utils", name, name
        setattr(utils, name, stub)
    for name in STORAGE_NAMES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield torch
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def torch_pickle_bytes(obj):
    """(data.pkl bytes, {key: storage}) for ``obj`` as torch.save pickles it."""
    storages = {}
    with _fake_torch_modules() as torch:

        class Pickler(pickle.Pickler):
            def persistent_id(self, value):
                if isinstance(value, FakeStorage):
                    storages[value.key] = value
                    storage_class = getattr(torch, STORAGE_NAMES[value.flat.dtype])
                    return ("storage", storage_class, value.key, value.location, value.flat.size)
                return None

        buffer = io.BytesIO()
        Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue(), storages


def write_torch_file(path, obj, prefix="archive", byteorder=None, payload=None):
    """Write ``obj`` as a torch.save zip; ``payload`` replaces data.pkl (crafted files)."""
    data_pkl, storages = torch_pickle_bytes(obj)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", data_pkl if payload is None else payload)
        if byteorder is not None:
            archive.writestr(f"{prefix}/byteorder", byteorder)
        for key, storage in storages.items():
            flat = storage.flat.byteswap() if byteorder == "big" else storage.flat
            archive.writestr(f"{prefix}/data/{key}", flat.tobytes())
        archive.writestr(f"{prefix}/version", "3\n")
    return path


# --------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------


def test_round_trip_nested_containers_and_gpu_locations(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    labels = np.array([3, 1], dtype=np.int64)
    weights = rng.normal(size=(6, 2)).astype(np.float32)
    state = collections.OrderedDict(
        [("layer.weight", FakeParameter(tensor(weights, "cuda:0"))), ("layer.bias", tensor(np.zeros(6, np.float32)))]
    )
    obj = {
        "data": [[tensor(images, "cuda:0"), tensor(labels, "cuda:1")]],
        "state_dict": state,
        "epoch": 7,
        "name": "x",
        "lr": 0.5,
    }
    loaded = load_torch_file(write_torch_file(tmp_path / "a.pt", obj))

    assert loaded["epoch"] == 7 and loaded["name"] == "x" and loaded["lr"] == 0.5
    got_images, got_labels = loaded["data"][0]
    assert got_images.dtype == np.float32 and got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert isinstance(loaded["state_dict"], collections.OrderedDict)
    assert list(loaded["state_dict"]) == ["layer.weight", "layer.bias"]
    np.testing.assert_array_equal(loaded["state_dict"]["layer.weight"], weights)
    assert isinstance(loaded["state_dict"]["layer.weight"], np.ndarray)


def test_strided_views_sharing_one_storage(tmp_path):
    storage = FakeStorage(np.arange(30, dtype=np.float32))
    views = {
        "transposed": FakeTensor(storage, 4, (3, 2), (1, 5)),
        "offset_row": FakeTensor(storage, 10, (2, 4), (4, 1)),
        "scalar": FakeTensor(storage, 29, (), ()),
        "empty": FakeTensor(storage, 0, (0, 3), (3, 1)),
    }
    loaded = load_torch_file(write_torch_file(tmp_path / "v.pt", views))

    def by_index(offset, size, stride):  # independent reference: element by element
        out = np.empty(size, np.float32)
        for index in np.ndindex(*size):
            out[index] = storage.flat[offset + sum(i * s for i, s in zip(index, stride, strict=True))]
        return out

    for name, view in views.items():
        expected = by_index(view.offset, view.size, view.stride)
        chex.assert_shape(loaded[name], view.size)
        np.testing.assert_array_equal(loaded[name], expected)
    assert loaded["transposed"].flags["C_CONTIGUOUS"] and loaded["transposed"].flags["OWNDATA"]
    np.testing.assert_array_equal(loaded["transposed"], [[4, 9], [5, 10], [6, 11]])


@pytest.mark.parametrize("dtype", list(STORAGE_NAMES), ids=lambda d: STORAGE_NAMES[d])
def test_every_storage_dtype(tmp_path, dtype):
    values = np.array([0, 1, 2, 3, 4, 5], dtype=np.float64)
    array = (values % 2 == 1) if dtype == np.bool_ else values.astype(dtype)
    loaded = load_torch_file(write_torch_file(tmp_path / "d.pt", {"t": tensor(array.reshape(2, 3))}))["t"]
    assert loaded.dtype == dtype
    np.testing.assert_array_equal(loaded, array.reshape(2, 3))


def test_big_endian_storages(tmp_path):
    array = np.array([[1.5, -2.25], [3.0, 1e-3]], dtype=np.float32)
    loaded = load_torch_file(write_torch_file(tmp_path / "be.pt", tensor(array), byteorder="big"))
    np.testing.assert_array_equal(loaded, array)
    assert loaded.dtype.isnative


def test_numpy_scalars_and_bytes_as_dc_results_store_them(tmp_path):
    obj = {"accs_all_exps": {"ConvNet": [np.float64(0.25), np.float32(0.5), np.int64(3)]}, "raw": b"\x00\xff"}
    loaded = load_torch_file(write_torch_file(tmp_path / "res.pt", obj))
    accs = loaded["accs_all_exps"]["ConvNet"]
    assert accs == [0.25, 0.5, 3]
    assert [type(a) for a in accs] == [np.float64, np.float32, np.int64]
    assert loaded["raw"] == b"\x00\xff"


# --------------------------------------------------------------------------------------
# Refusing code execution
# --------------------------------------------------------------------------------------


def _global_call_pickle(module, name, arg):
    """Protocol-2 pickle calling module.name(arg), written opcode by opcode."""
    encoded = arg.encode()
    return (
        b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n"
        + b"X" + len(encoded).to_bytes(4, "little") + encoded + b"\x85R."
    )


def test_code_running_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = _global_call_pickle("os", "system", f"touch {marker}")
    # Control: the payload is live, a plain pickle.loads does run it.
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()

    path = write_torch_file(tmp_path / "evil.pt", {}, payload=payload)
    with pytest.raises(UnsafePickleError) as info:
        load_torch_file(path)
    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message and "'os.system'" in message
    assert (info.value.module, info.value.name) == ("os", "system")


@pytest.mark.parametrize(
    "module, name",
    [
        ("builtins", "eval"),
        ("posix", "system"),
        ("torch", "load"),
        ("torch.storage", "_load_from_bytes"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("collections", "namedtuple"),
        ("torch._utils", "_rebuild_tensor_v2.__globals__"),
    ],
)
def test_other_globals_are_refused(tmp_path, module, name):
    path = write_torch_file(tmp_path / "g.pt", {}, payload=_global_call_pickle(module, name, "x"))
    with pytest.raises(UnsafePickleError, match=f"{module}.{name}".replace(".", r"\.")):
        load_torch_file(path)


def test_refused_global_nested_after_real_tensors(tmp_path):
    obj = {"a": tensor(np.ones(2, np.float32))}
    data_pkl, _ = torch_pickle_bytes(obj)
    evil = _global_call_pickle("os", "system", "true")[2:-1]  # without PROTO and STOP
    # Replace STOP by: pop the dict, then run the call.
    payload = data_pkl[:-1] + b"0" + evil + b"."
    path = write_torch_file(tmp_path / "n.pt", obj, payload=payload)
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        load_torch_file(path)


def test_build_on_an_allowed_global_cannot_patch_it(tmp_path):
    # GLOBAL torch._utils._rebuild_tensor_v2, then BUILD with slot state {'function': print}
    # would swap the rebuilder if the stand-in accepted attributes.
    payload = (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"
        b"N}X\x08\x00\x00\x00functionctorch._utils\n_rebuild_parameter\ns\x86b."
    )
    path = write_torch_file(tmp_path / "b.pt", {}, payload=payload)
    with pytest.raises(TorchFileError, match="corrupt or unsupported"):
        load_torch_file(path)
    # A fresh, normal file still loads correctly afterwards.
    loaded = load_torch_file(write_torch_file(tmp_path / "ok.pt", tensor(np.arange(3, dtype=np.int64))))
    np.testing.assert_array_equal(loaded, [0, 1, 2])


def test_object_numpy_dtype_is_refused(tmp_path):
    payload = b"\x80\x02cnumpy\ndtype\nX\x01\x00\x00\x00O\x89\x88\x87R."
    path = write_torch_file(tmp_path / "o.pt", {}, payload=payload)
    with pytest.raises(TorchFileError, match="refusing numpy dtype"):
        load_torch_file(path)


def test_allow_list_is_what_the_unpickler_accepts():
    assert ("torch._utils", "_rebuild_tensor_v2") in torch_pickle.ALLOWED_GLOBALS
    assert ("torch", "FloatStorage") in torch_pickle.ALLOWED_GLOBALS
    assert not any(module in ("builtins", "os", "posix", "subprocess") for module, _ in torch_pickle.ALLOWED_GLOBALS)


# --------------------------------------------------------------------------------------
# Broken files
# --------------------------------------------------------------------------------------


def test_truncated_zip_names_the_file(tmp_path):
    good = write_torch_file(tmp_path / "full.pt", tensor(np.arange(1000, dtype=np.float32)))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(TorchFileError, match=f"{cut}.*(truncated|corrupt)"):
        load_torch_file(cut)


def test_corrupted_storage_bytes_fail_crc(tmp_path):
    path = write_torch_file(tmp_path / "c.pt", tensor(np.arange(64, dtype=np.float32)))
    raw = bytearray(path.read_bytes())
    position = raw.find(np.arange(64, dtype=np.float32).tobytes()[8:40])
    raw[position] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(TorchFileError, match=f"{path}.*(truncated or corrupt)"):
        load_torch_file(path)


def test_not_a_zip_and_legacy_pickle(tmp_path):
    garbage = tmp_path / "g.pt"
    garbage.write_bytes(b"hello world")
    with pytest.raises(TorchFileError, match="not a zip archive"):
        load_torch_file(garbage)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(TorchFileError, match="legacy"):
        load_torch_file(legacy)
    with pytest.raises(TorchFileError, match="no such file"):
        load_torch_file(tmp_path / "missing.pt")


def test_missing_data_pkl(tmp_path):
    path = tmp_path / "z.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/version", "3\n")
    with pytest.raises(TorchFileError, match="data.pkl"):
        load_torch_file(path)


def test_missing_or_short_storage(tmp_path):
    obj = tensor(np.arange(8, dtype=np.float32))
    data_pkl, storages = torch_pickle_bytes(obj)
    (key,) = storages
    missing = tmp_path / "missing.pt"
    with zipfile.ZipFile(missing, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
    with pytest.raises(TorchFileError, match=f"archive/data/{key}' is missing"):
        load_torch_file(missing)
    short = tmp_path / "short.pt"
    with zipfile.ZipFile(short, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr(f"archive/data/{key}", np.arange(5, dtype=np.float32).tobytes())
    with pytest.raises(TorchFileError, match="has 20 bytes, expected 32"):
        load_torch_file(short)


def test_view_beyond_its_storage(tmp_path):
    path = write_torch_file(tmp_path / "o.pt", FakeTensor(FakeStorage(np.zeros(6, np.float32)), 2, (2, 3), (3, 1)))
    with pytest.raises(TorchFileError, match="reaches element 7"):
        load_torch_file(path)


def test_truncated_pickle_stream(tmp_path):
    obj = {"a": tensor(np.ones(3, np.float32))}
    data_pkl, _ = torch_pickle_bytes(obj)
    path = write_torch_file(tmp_path / "t.pt", obj, payload=data_pkl[: len(data_pkl) // 2])
    with pytest.raises(TorchFileError, match=f"{path}: data.pkl is corrupt"):
        load_torch_file(path)


# --------------------------------------------------------------------------------------
# The real shared files
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, image_count, label_shape, label_dtype",
    [
        ("cifar10_1_frepo", 10, (10, 10), np.float32),
        ("cifar10_10_frepo", 100, (100, 10), np.float32),
        ("cifar10_1_mtt", 10, (10,), np.int64),
    ],
)
def test_shared_distilled_files(shared_data, name, image_count, label_shape, label_dtype):
    folder = shared_data / "distilled" / name
    images = load_torch_file(folder / "images_best.pt")
    labels = load_torch_file(folder / "labels_best.pt")
    assert images.dtype == np.float32 and images.shape == (image_count, 3, 32, 32)
    assert labels.dtype == label_dtype and labels.shape == label_shape
    assert np.all(np.isfinite(images))
    if label_dtype == np.int64:
        np.testing.assert_array_equal(labels, np.arange(10))
    else:  # learned vectors, grouped by class: the argmax follows the class order
        np.testing.assert_array_equal(labels.argmax(axis=1), np.repeat(np.arange(10), image_count // 10))


def test_shared_teacher_checkpoint(shared_data):
    content = load_torch_file(shared_data / "teachers" / "cifar10_1_mtt_convnet" / "checkpoint_best.pth")
    assert set(content) == {"state_dict", "epoch"} and isinstance(content["epoch"], int)
    shapes = {key: value.shape for key, value in content["state_dict"].items()}
    assert shapes["features.0.weight"] == (128, 3, 3, 3)
    assert shapes["features.4.weight"] == shapes["features.8.weight"] == (128, 128, 3, 3)
    assert shapes["features.1.weight"] == shapes["features.9.bias"] == (128,)
    assert shapes["classifier.weight"] == (10, 2048) and shapes["classifier.bias"] == (10,)
    assert len(shapes) == 14
    assert all(v.dtype == np.float32 for v in content["state_dict"].values())


# --------------------------------------------------------------------------------------
# Bounds on what a file may make the reader allocate (issue 11.6)
# --------------------------------------------------------------------------------------

_LIMITED_CHILD = """
import importlib, json, resource, sys, time
sys.path[:0] = {paths!r}
module, _, name = {function!r}.partition(":")
load = getattr(importlib.import_module(module), name)
from distill_jax.errors import InputFileError
with open("/proc/self/status") as handle:
    vm = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + {headroom}, resource.getrlimit(resource.RLIMIT_AS)[1]))
start = time.perf_counter()
try:
    load({path!r})
    outcome, message = "loaded", ""
except InputFileError as err:
    outcome, message = "refused", f"{{type(err).__name__}}: {{err}}"
except BaseException as err:
    outcome, message = "escaped", f"{{type(err).__module__}}.{{type(err).__name__}}: {{err}}"
print(json.dumps({{"outcome": outcome, "message": message, "seconds": time.perf_counter() - start}}))
"""


def load_in_limited_process(function, path, headroom=256 << 20, cap=None):
    """Call ``function`` ('module:name') on ``path`` in a fresh Python whose address space may
    grow only ``headroom`` bytes past its size after imports (RLIMIT_AS): an unbounded
    allocation shows as a MemoryError there instead of taking this machine's memory.
    Returns {'outcome': 'loaded' | 'refused' | 'escaped', 'message', 'seconds'}."""
    import json
    import os
    import pathlib
    import subprocess

    here = pathlib.Path(__file__).resolve().parent
    code = _LIMITED_CHILD.format(
        paths=[str(here.parent), str(here)], function=function, headroom=headroom, path=str(path)
    )
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_JAX_MAX_ARRAY_BYTES"}
    if cap is not None:
        env["DISTILL_JAX_MAX_ARRAY_BYTES"] = str(cap)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("size, rule", [((25_000, 25_000), "more than twice"), ((100_000, 100_000), "over the cap")])
def test_stride0_huge_tensor_is_refused_quickly_naming_the_file(tmp_path, size, rule):
    # A few hundred bytes declaring 2.5 GB (under the default 4 GiB cap) or 40 GB over a
    # one-element storage: today's reader copied the view (2.4 GB) or died in MemoryError.
    path = write_torch_file(tmp_path / "bomb.pt", FakeTensor(FakeStorage(np.zeros(1, np.float32)), 0, size, (0, 0)))
    assert path.stat().st_size < 1024
    result = load_in_limited_process("distill_jax.formats.torch_pickle:load_torch_file", path)
    assert result["outcome"] == "refused", result
    assert result["message"].startswith(f"TorchFileError: {path}: storage ") and rule in result["message"]
    assert result["seconds"] < 1.0


def test_declared_size_over_the_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_JAX_MAX_ARRAY_BYTES", str(1 << 20))
    big = write_torch_file(tmp_path / "big.pt", tensor(np.zeros(300_000, np.float32)))  # 1.2 MB storage
    with pytest.raises(
        TorchFileError,
        match=rf"{big}: storage 'archive/data/\d+' declares 300000 x float32 = 1200000 bytes, over the cap of 1048576",
    ):
        load_torch_file(big)
    # A storage under the cap viewed (stride 0 on a new axis) as a tensor over it.
    storage = FakeStorage(np.zeros(200_000, np.float32))  # 800 kB
    view = write_torch_file(tmp_path / "view.pt", FakeTensor(storage, 0, (2, 200_000), (0, 1)))
    with pytest.raises(TorchFileError, match=rf"{view}: storage \d+: tensor .* would take 1600000 bytes, over the cap"):
        load_torch_file(view)
    monkeypatch.delenv("DISTILL_JAX_MAX_ARRAY_BYTES")
    assert load_torch_file(view).shape == (2, 200_000)  # the same file under the default cap


def test_views_may_not_repeat_a_storage_without_bound(tmp_path):
    # Each view fits the cap; together they would take 64x the file's storage.
    storage = FakeStorage(np.zeros(1 << 16, np.float32))  # 256 kB
    views = [FakeTensor(storage, 0, (1 << 16,), (1,)) for _ in range(64)]
    path = write_torch_file(tmp_path / "repeat.pt", views)
    with pytest.raises(TorchFileError, match=f"{path}: .*more than twice that plus 1 MiB"):
        load_torch_file(path)
    shared = write_torch_file(tmp_path / "tied.pt", views[:2])  # a tied weight saved twice is fine
    assert [v.shape for v in load_torch_file(shared)] == [(1 << 16,), (1 << 16,)]


def test_storage_bytes_must_equal_the_declared_size(tmp_path):
    obj = tensor(np.arange(8, dtype=np.float32))
    data_pkl, storages = torch_pickle_bytes(obj)
    (key,) = storages
    long = tmp_path / "long.pt"
    with zipfile.ZipFile(long, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr(f"archive/data/{key}", np.arange(9, dtype=np.float32).tobytes())
    with pytest.raises(TorchFileError, match="has 36 bytes, expected 32"):
        load_torch_file(long)


def test_pickle_memo_index_bomb_is_refused(tmp_path):
    # LONG_BINPUT 2**28: CPython's unpickler zero-fills a memo of 2 x 2**28 slots (4 GiB) for
    # these 8 bytes. The pre-scan refuses it before the unpickler runs.
    path = write_torch_file(tmp_path / "memo.pt", {}, payload=b"\x80\x02]r\x00\x00\x00\x10.")
    result = load_in_limited_process("distill_jax.formats.torch_pickle:load_torch_file", path)
    assert result["outcome"] == "refused", result
    assert f"{path}: data.pkl opcode LONG_BINPUT" in result["message"] and result["seconds"] < 1.0


def test_member_reaching_past_the_end_of_the_archive_is_refused(tmp_path):
    # A compressed size past the end of the file (one flipped directory byte) made zipfile ask
    # the OS for that many bytes at once.
    path = write_torch_file(tmp_path / "cd.pt", tensor(np.arange(4, dtype=np.float32)))
    raw = bytearray(path.read_bytes())
    entry = raw.find(b"archive/data.pkl", raw.find(b"PK\x01\x02")) - 46  # data.pkl's central directory entry
    assert raw[entry:entry + 4] == b"PK\x01\x02"
    raw[entry + 20:entry + 24] = (1 << 30).to_bytes(4, "little")  # its compressed size
    path.write_bytes(bytes(raw))
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(TorchFileError, match=f"{path}: .*past the end of the"):
            load_torch_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_memory_error_becomes_torch_file_error(tmp_path):
    # A valid 24 MB tensor, under the cap, in a process allowed 24 MB more: the MemoryError
    # names the file instead of escaping.
    path = write_torch_file(tmp_path / "large.pt", tensor(np.zeros(6 << 20, np.float32)))
    result = load_in_limited_process("distill_jax.formats.torch_pickle:load_torch_file", path, headroom=24 << 20)
    assert result["outcome"] == "refused", result
    assert (
        result["message"].startswith(f"TorchFileError: {path}: ") and "out of memory (MemoryError)" in result["message"]
    )


def test_torch_file_error_is_an_input_file_error():
    from distill_jax.errors import InputFileError

    assert issubclass(TorchFileError, InputFileError) and issubclass(UnsafePickleError, InputFileError)
    assert issubclass(TorchFileError, ValueError)


# --------------------------------------------------------------------------------------
# tar.gz archives under the zip rules (BoundedTarGz)
# --------------------------------------------------------------------------------------


def _gz_tar(path, blocks: bytes):
    import gzip

    path.write_bytes(gzip.compress(blocks))
    return path


def _tar_header(name: bytes, size: int, kind: bytes = b"0") -> bytes:
    header = bytearray(512)
    header[0:len(name)] = name
    header[100:108] = b"0000644\0"
    header[124:136] = b"%011o\0" % size
    header[156:157] = kind
    header[257:263] = b"ustar\0"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def test_tar_entry_asking_for_more_than_the_cap_at_once_is_refused(tmp_path, monkeypatch):
    # A GNU long-name entry declaring 100 MB: tarfile reads its whole declared size in one call.
    monkeypatch.setenv("DISTILL_JAX_MAX_ARRAY_BYTES", str(1 << 20))
    path = _gz_tar(tmp_path / "a.tar.gz", _tar_header(b"././@LongLink", 100 << 20, b"L") + b"x" * 512)
    with pytest.raises(TorchFileError, match=rf"{path}: an entry at byte 512 of the tar stream asks for 104857600 "
                                             r"bytes at once, over the cap of 1048576 bytes"):
        torch_pickle.BoundedTarGz(path, TorchFileError)


def test_tar_member_reads_follow_the_zip_rules(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    data = {name: rng.integers(0, 256, 3000, dtype=np.uint8).tobytes() for name in ("a", "b")}
    blocks = b"".join(_tar_header(name.encode(), len(raw)) + raw + bytes(-len(raw) % 512) for name, raw in data.items())
    path = _gz_tar(tmp_path / "t.tar.gz", blocks + bytes(1024))
    with torch_pickle.BoundedTarGz(path, TorchFileError) as archive:
        assert archive.names() == ["a", "b"] and archive.read("a") == data["a"] and archive.read("b", 3000) == data["b"]
        with pytest.raises(TorchFileError, match=rf"{path}: member 'a' has 3000 bytes, expected 10 bytes"):
            archive.read("a", 10)
        with pytest.raises(TorchFileError, match=rf"{path}: member 'c' is missing"):
            archive.read("c")
    monkeypatch.setenv("DISTILL_JAX_MAX_ARRAY_BYTES", "2000")
    with torch_pickle.BoundedTarGz(path, TorchFileError) as archive:
        with pytest.raises(
            TorchFileError, match=rf"{path}: archive member 'a' declares 3000 bytes uncompressed, over the cap of 2000"
        ):
            archive.read("a")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(path.read_bytes()[:40])
    with pytest.raises(TorchFileError, match=rf"{cut}: not a readable tar.gz archive"):
        torch_pickle.BoundedTarGz(cut, TorchFileError)
