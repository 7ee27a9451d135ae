"""Distilled-set readers, the DistilledSet type and the project's own format."""
import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest
from flax import serialization

from distill_jax.formats.distilled import (
    DEFAULT_PREPROCESSING,
    DistilledFormatError,
    DistilledSet,
    detect_format,
    load_distilled,
    restore_msgpack,
    save_distilled,
    summarize_distilled,
)
from test_torch_pickle import tensor, write_torch_file

RNG = np.random.default_rng(0)


def _nchw(n=4, c=3, h=6, w=5):
    return RNG.normal(size=(n, c, h, w)).astype(np.float32)


def _nhwc_of(nchw):
    return np.transpose(nchw, (0, 2, 3, 1))


def _write_pair(folder, images, labels):
    folder.mkdir(parents=True, exist_ok=True)
    write_torch_file(folder / "images_best.pt", tensor(images, "cuda:0"), prefix="images_best")
    write_torch_file(folder / "labels_best.pt", tensor(labels, "cuda:0"), prefix="labels_best")
    return folder


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# --------------------------------------------------------------------------------------
# DistilledSet
# --------------------------------------------------------------------------------------


def test_distilled_set_properties_and_counts():
    images = RNG.normal(size=(5, 4, 4, 3)).astype(np.float32)
    index = DistilledSet(images, np.array([0, 2, 2, 1, 2]), 4, "none", {})
    assert index.label_kind == "index" and index.num_images == 5 and index.image_shape == (4, 4, 3)
    np.testing.assert_array_equal(index.class_counts(), [1, 1, 3, 0])
    vectors = np.eye(3, dtype=np.float32)[[2, 2, 0, 1, 2]] * 0.7 - 0.1
    vector = DistilledSet(images.astype(np.float64), vectors, 3, "zca_frepo", {})
    assert vector.label_kind == "vector" and vector.images.dtype == np.float32
    np.testing.assert_array_equal(vector.class_counts(), [1, 1, 3])


def test_distilled_set_is_frozen_and_read_only():
    images = np.zeros((1, 2, 2, 1), np.float32)
    dset = DistilledSet(images, np.array([0]), 1, "none", {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        dset.num_classes = 2
    with pytest.raises(ValueError):
        dset.images[0, 0, 0, 0] = 1.0
    images[0, 0, 0, 0] = 5.0  # the set holds its own copy
    assert dset.images[0, 0, 0, 0] == 0.0


# --------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------


def test_mtt_pair_reader(tmp_path):
    images, labels = _nchw(), np.array([0, 1, 2, 1], dtype=np.int64)
    folder = _write_pair(tmp_path / "cifar_toy_mtt", images, labels)
    dset = load_distilled(folder)
    np.testing.assert_array_equal(dset.images, _nhwc_of(images))
    np.testing.assert_array_equal(dset.labels, labels)
    assert dset.labels.dtype == np.int64 and dset.num_classes == 3 and dset.label_kind == "index"
    assert dset.preprocessing == "zca_mtt"
    provenance = dset.provenance
    assert provenance["format"] == "pt_pair" and provenance["source"] == "mtt"
    assert provenance["path"] == str(folder)
    assert provenance["sha256"] == {
        "images_best.pt": _sha(folder / "images_best.pt"),
        "labels_best.pt": _sha(folder / "labels_best.pt"),
    }
    # The same set through the images_*.pt file, with more classes than the labels show.
    again = load_distilled(folder / "images_best.pt", num_classes=10)
    assert again.num_classes == 10
    np.testing.assert_array_equal(again.images, dset.images)


def test_pair_with_label_vectors_and_frepo_name_heuristic(tmp_path):
    images, labels = _nchw(), RNG.normal(size=(4, 3)).astype(np.float32)
    folder = _write_pair(tmp_path / "cifar_1_frepo", images, labels)
    dset = load_distilled(folder)
    # the reference-code layout is in the reference code's ZCA space, whatever the source
    assert dset.provenance["source"] == "frepo" and dset.preprocessing == "zca_mtt"
    assert dset.label_kind == "vector" and dset.num_classes == 3
    np.testing.assert_array_equal(dset.labels, labels)
    assert "guessed from the name" in dset.provenance["notes"]
    # Overrides: another source, or an explicit pixel space.
    assert load_distilled(folder, source="mtt").preprocessing == "zca_mtt"
    assert load_distilled(folder, preprocessing="none").preprocessing == "none"
    # Without 'frepo' in the name the layout means MTT, even with label vectors.
    other = _write_pair(tmp_path / "anonymous", images, labels)
    assert load_distilled(other).provenance["source"] == "mtt"
    assert load_distilled(other, source="frepo").preprocessing == "zca_mtt"


def test_dc_res_reader_selects_experiment(tmp_path):
    runs = [(_nchw(n=2, c=1), np.array([0, 1])), (_nchw(n=2, c=1), np.array([1, 0]))]
    content = {
        "data": [[tensor(x), tensor(y)] for x, y in runs],
        "accs_all_exps": {"ConvNet": [np.float64(0.31), np.float64(0.33)]},
    }
    path = write_torch_file(tmp_path / "res_DC_MNIST_ConvNet_1ipc.pt", content)
    assert detect_format(path) == "dc_res"
    for experiment, (x, y) in enumerate(runs):
        dset = load_distilled(path, experiment=experiment)
        np.testing.assert_array_equal(dset.images, _nhwc_of(x))
        np.testing.assert_array_equal(dset.labels, y)
        assert dset.preprocessing == "standardize" and dset.image_shape == (6, 5, 1)
        assert dset.provenance["source"] == "dc"
    with pytest.raises(DistilledFormatError, match=r"res_DC.*field 'data\[2\]'.*out of range"):
        load_distilled(path, experiment=2)


def _msgpack(path, tree):
    path.write_bytes(serialization.msgpack_serialize(tree))
    return path


def test_flax_msgpack_frepo_and_rcig(tmp_path):
    x, y = RNG.normal(size=(3, 4, 4, 3)).astype(np.float32), RNG.normal(size=(3, 10)).astype(np.float32)
    frepo = _msgpack(tmp_path / "checkpoint_500", {"step": 500, "params": {"x_proto": x, "y_proto": y}})
    assert detect_format(frepo) == "flax_msgpack"
    dset = load_distilled(frepo)
    np.testing.assert_array_equal(dset.images, x)
    np.testing.assert_array_equal(dset.labels, y)
    assert dset.provenance["source"] == "frepo" and dset.preprocessing == "zca_frepo" and dset.num_classes == 10

    x_ema = x + 1.0
    rcig = _msgpack(
        tmp_path / "rcig.msgpack",
        {"params": {"x_proto": x, "y_proto": y}, "ema_average": {"params": {"x_proto": x_ema, "y_proto": y}}},
    )
    dset = load_distilled(rcig)
    assert dset.provenance["source"] == "rcig"
    np.testing.assert_array_equal(dset.images, x_ema)
    assert "ema_average/params/x_proto" in dset.provenance["notes"]
    np.testing.assert_array_equal(load_distilled(rcig, source="frepo").images, x)


def test_npz_readers_and_layout_detection(tmp_path):
    x_nhwc = RNG.normal(size=(4, 8, 8, 3)).astype(np.float32)
    y = RNG.normal(size=(4, 5)).astype(np.float32)
    np.savez(tmp_path / "frepo.npz", image=x_nhwc, label=y)
    np.savez(tmp_path / "kip.npz", images=x_nhwc, labels=y)
    np.savez(tmp_path / "rfad.npz", images=np.transpose(x_nhwc, (0, 3, 1, 2)), labels=y)
    for name, source in (("frepo", "frepo"), ("kip", "kip"), ("rfad", "rfad")):
        path = tmp_path / f"{name}.npz"
        assert detect_format(path) == f"{name}_npz"
        dset = load_distilled(path)
        np.testing.assert_array_equal(dset.images, x_nhwc)
        np.testing.assert_array_equal(dset.labels, y)
        assert dset.provenance["source"] == source and dset.preprocessing == DEFAULT_PREPROCESSING[source]


def test_ambiguous_layout_needs_explicit_format(tmp_path):
    cube = RNG.normal(size=(2, 3, 3, 3)).astype(np.float32)  # NHWC or NCHW?
    path = tmp_path / "cube.npz"
    np.savez(path, images=cube, labels=np.eye(2, dtype=np.float32))
    with pytest.raises(DistilledFormatError, match="cannot tell KIP.*format='kip_npz'"):
        load_distilled(path)
    np.testing.assert_array_equal(load_distilled(path, format="kip_npz").images, cube)
    np.testing.assert_array_equal(load_distilled(path, format="rfad_npz").images, np.transpose(cube, (0, 2, 3, 1)))


# --------------------------------------------------------------------------------------
# The project's own format
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("label_kind", ["index", "vector"])
def test_own_format_round_trip(tmp_path, label_kind):
    images = _nchw()
    labels = np.array([0, 1, 2, 2]) if label_kind == "index" else RNG.normal(size=(4, 3)).astype(np.float32)
    original = load_distilled(_write_pair(tmp_path / "set_frepo", images, labels))
    target = tmp_path / "out" / "set.npz"
    target.parent.mkdir()
    assert save_distilled(original, target) == str(target)
    assert os.listdir(target.parent) == ["set.npz"]  # the temporary file was renamed away

    assert detect_format(target) == "distill_jax"
    back = load_distilled(target)
    np.testing.assert_array_equal(back.images, original.images)
    np.testing.assert_array_equal(back.labels, original.labels)
    assert back.labels.dtype == original.labels.dtype
    assert (back.num_classes, back.preprocessing, back.label_kind) == (3, "zca_mtt", label_kind)
    assert back.provenance["format"] == "distill_jax" and back.provenance["source"] == "frepo"
    assert back.provenance["derived_from"] == original.provenance
    assert back.provenance["sha256"] == {"set.npz": _sha(target)}
    with np.load(target, allow_pickle=False) as archive:
        metadata = json.loads(str(archive["metadata"][()]))
    assert metadata["format_version"] == 1 and metadata["num_classes"] == 3


def test_save_overwrites_atomically_and_refuses_bad_provenance(tmp_path):
    dset = DistilledSet(np.zeros((1, 2, 2, 1), np.float32), np.array([0]), 2, "none", {"path": "x"})
    target = tmp_path / "s.npz"
    save_distilled(dset, target)
    bad = DistilledSet(dset.images, dset.labels, 2, "none", {"blob": object()})
    with pytest.raises(DistilledFormatError, match="field 'provenance' is not JSON"):
        save_distilled(bad, target)
    assert load_distilled(target).num_classes == 2 and os.listdir(tmp_path) == ["s.npz"]


def test_own_format_newer_version_is_refused(tmp_path):
    meta = {"format": "distill_jax", "format_version": 99, "num_classes": 1, "preprocessing": "none"}
    path = tmp_path / "future.npz"
    np.savez(
        path,
        images=np.zeros((1, 2, 2, 1), np.float32),
        labels=np.zeros(1, np.int64),
        metadata=np.array(json.dumps(meta)),
    )
    with pytest.raises(DistilledFormatError, match="format_version"):
        load_distilled(path)


# --------------------------------------------------------------------------------------
# Errors: each names the file and the field
# --------------------------------------------------------------------------------------


def test_truncated_files(tmp_path):
    np.savez(
        tmp_path / "full.npz",
        images=RNG.normal(size=(50, 8, 8, 3)).astype(np.float32),
        labels=np.eye(50, dtype=np.float32)[:, :10],
    )
    cut = tmp_path / "cut.npz"
    cut.write_bytes((tmp_path / "full.npz").read_bytes()[:3000])
    with pytest.raises(DistilledFormatError, match=f"{cut}: truncated or corrupt npz"):
        load_distilled(cut, format="kip_npz")
    folder = _write_pair(tmp_path / "pair", _nchw(), np.array([0, 1, 0, 1]))
    images = folder / "images_best.pt"
    images.write_bytes(images.read_bytes()[:200])
    with pytest.raises(DistilledFormatError, match=f"{images}: .*truncated"):
        load_distilled(folder)
    checkpoint = tmp_path / "c.msgpack"
    checkpoint.write_bytes(
        serialization.msgpack_serialize({"params": {"x_proto": np.zeros((2, 4, 4, 3), np.float32)}})[:40]
    )
    with pytest.raises(DistilledFormatError, match=f"{checkpoint}: truncated or corrupt msgpack"):
        load_distilled(checkpoint)


def test_wrong_image_rank_and_layout(tmp_path):
    folder = tmp_path / "rank"
    folder.mkdir()
    write_torch_file(folder / "images_best.pt", tensor(np.zeros((4, 3, 8), np.float32)))
    write_torch_file(folder / "labels_best.pt", tensor(np.arange(4)))
    with pytest.raises(DistilledFormatError, match=r"images_best.pt: field 'images': expected a rank-4 NCHW"):
        load_distilled(folder)
    nhwc = _write_pair(tmp_path / "nhwc", np.zeros((2, 8, 8, 3), np.float32), np.arange(2))
    with pytest.raises(DistilledFormatError, match=r"field 'images': expected NCHW .* \(is it NHWC\?\)"):
        load_distilled(nhwc)


def test_label_count_mismatch(tmp_path):
    folder = _write_pair(tmp_path / "count", _nchw(n=4), np.arange(3))
    with pytest.raises(DistilledFormatError, match=r"labels_best.pt: field 'labels': label count 3 != image count 4"):
        load_distilled(folder)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels(tmp_path, bad):
    images = _nchw()
    images[1, 2, 3, 4] = bad
    folder = _write_pair(tmp_path / "nan", images, np.arange(4))
    with pytest.raises(DistilledFormatError, match=r"images_best.pt: field 'images': 1 pixel\(s\) are NaN or infinite"):
        load_distilled(folder)


def test_labels_out_of_range(tmp_path):
    folder = _write_pair(tmp_path / "range", _nchw(), np.array([0, 1, 5, -1]))
    with pytest.raises(
        DistilledFormatError, match=r"labels_best.pt: field 'labels': class indices must lie in \[0, 10\)"
    ):
        load_distilled(folder, num_classes=10)
    np.savez(tmp_path / "k.npz", images=np.zeros((2, 4, 4, 3), np.float32), labels=np.zeros((2, 3), np.float32))
    with pytest.raises(
        DistilledFormatError, match=r"k.npz: field 'labels': label vectors have 3 entries, expected num_classes=10"
    ):
        load_distilled(tmp_path / "k.npz", num_classes=10)
    np.savez(tmp_path / "n.npz", images=np.zeros((2, 4, 4, 3), np.float32), labels=np.full((2, 3), np.nan, np.float32))
    with pytest.raises(DistilledFormatError, match=r"n.npz: field 'labels': label vectors hold NaN"):
        load_distilled(tmp_path / "n.npz")


def test_unknown_formats_and_options(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    with pytest.raises(DistilledFormatError, match=f"{text}: unknown format"):
        load_distilled(text)
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(DistilledFormatError, match=r"other.npz: unknown format: npz keys \['weights'\]"):
        load_distilled(tmp_path / "other.npz")
    with pytest.raises(DistilledFormatError, match=r"unknown format 'bogus'"):
        load_distilled(text, format="bogus")
    with pytest.raises(DistilledFormatError, match=f"{tmp_path}: unknown format: a folder needs images_best.pt"):
        load_distilled(tmp_path)
    np.savez(tmp_path / "kip.npz", images=np.zeros((2, 4, 4, 3), np.float32), labels=np.eye(2, dtype=np.float32))
    with pytest.raises(DistilledFormatError, match=r"option\(s\) \['experiment'\] do not apply to format 'kip_npz'"):
        load_distilled(tmp_path / "kip.npz", experiment=1)
    with pytest.raises(DistilledFormatError, match=r"field 'preprocessing': expected one of"):
        load_distilled(tmp_path / "kip.npz", preprocessing="zca")


def test_missing_label_file_and_field(tmp_path):
    folder = tmp_path / "half"
    folder.mkdir()
    write_torch_file(folder / "images_best.pt", tensor(_nchw()))
    with pytest.raises(DistilledFormatError, match=r"labels_best.pt: field 'labels': file is missing"):
        load_distilled(folder)
    np.savez(tmp_path / "frepo.npz", image=np.zeros((2, 4, 4, 3), np.float32), label=np.eye(2, dtype=np.float32))
    np.savez(tmp_path / "broken.npz", image=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(DistilledFormatError, match=r"broken.npz: field 'label' is missing"):
        load_distilled(tmp_path / "broken.npz", format="frepo_npz")
    checkpoint = _msgpack(tmp_path / "checkpoint_1", {"params": {"w": np.zeros(3, np.float32)}})
    with pytest.raises(DistilledFormatError, match=r"checkpoint_1: field 'params/x_proto'"):
        load_distilled(checkpoint)


def test_unsafe_pickle_in_a_distilled_file_is_reported(tmp_path):
    folder = _write_pair(tmp_path / "evil", _nchw(), np.arange(4))
    payload = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R."
    write_torch_file(folder / "labels_best.pt", {}, prefix="labels_best", payload=payload)
    with pytest.raises(DistilledFormatError, match=r"labels_best.pt: refusing to load global 'os.system'"):
        load_distilled(folder)


# --------------------------------------------------------------------------------------
# The real shared sets
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, count, label_kind, source, preprocessing",
    [
        ("cifar10_1_mtt", 10, "index", "mtt", "zca_mtt"),
        ("cifar10_1_frepo", 10, "vector", "frepo", "zca_mtt"),
        ("cifar10_10_frepo", 100, "vector", "frepo", "zca_mtt"),
    ],
)
def test_shared_sets(shared_data, name, count, label_kind, source, preprocessing):
    from distill_jax.formats.torch_pickle import load_torch_file

    folder = shared_data / "distilled" / name
    dset = load_distilled(folder)
    assert dset.images.shape == (count, 32, 32, 3) and dset.num_classes == 10
    assert (dset.label_kind, dset.provenance["source"], dset.preprocessing) == (label_kind, source, preprocessing)
    np.testing.assert_array_equal(dset.class_counts(), [count // 10] * 10)
    raw = load_torch_file(folder / "images_best.pt")
    np.testing.assert_array_equal(dset.images[:, 5, 7, :], raw[:, :, 5, 7])
    sums = dict(line.split()[::-1] for line in (shared_data / "SHA256SUMS").read_text().splitlines())
    for file, digest in dset.provenance["sha256"].items():
        assert sums[f"distilled/{name}/{file}"] == digest
    summary = summarize_distilled(dset)
    assert summary["value_range"]["min"] == pytest.approx(float(raw.min()))
    assert summary["value_range"]["std"] == pytest.approx(float(raw.astype(np.float64).std()), rel=1e-6)


# --------------------------------------------------------------------------------------
# Bounds on what a file may make the reader allocate (issue 11.6)
# --------------------------------------------------------------------------------------


def _npz_with_header(path, shape, data=b"\0" * 16, key="images"):
    """An npz whose array `key` has an npy header declaring `shape` over `data` bytes."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{key}.npy", header.getvalue() + data)
        labels = io.BytesIO()
        np.save(labels, np.eye(2, dtype=np.float32))
        archive.writestr("labels.npy", labels.getvalue())
    return path


def test_distilled_format_error_is_an_input_file_error():
    from distill_jax.errors import InputFileError

    assert issubclass(DistilledFormatError, InputFileError) and issubclass(DistilledFormatError, ValueError)


def test_deflate_bomb_npz_is_refused(tmp_path):
    # 6.3 MB of zeros deflate to ~6 kB (1000:1); numpy inflated whatever the member declared.
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, images=np.zeros((512, 32, 32, 3), np.float32), labels=np.eye(512, 10, dtype=np.float32))
    assert path.stat().st_size < 64 << 10
    with pytest.raises(
        DistilledFormatError,
        match=rf"{path}: archive member 'images.npy' inflates \d+ compressed bytes to 6291584 .*zip bomb",
    ):
        load_distilled(path, format="kip_npz")
    # Real pixels deflate far less and still load.
    np.savez_compressed(
        tmp_path / "real.npz",
        images=RNG.normal(size=(64, 32, 32, 3)).astype(np.float32),
        labels=np.eye(64, 10, dtype=np.float32),
    )
    assert load_distilled(tmp_path / "real.npz", format="kip_npz").num_images == 64


def test_npz_member_over_the_cap_is_refused(tmp_path, monkeypatch):
    np.savez(
        tmp_path / "big.npz", images=np.zeros((32, 32, 32, 3), np.float32), labels=np.eye(32, 10, dtype=np.float32)
    )
    monkeypatch.setenv("DISTILL_JAX_MAX_ARRAY_BYTES", str(64 << 10))
    # The zip directory already says too much (checked before opening the member) ...
    with pytest.raises(
        DistilledFormatError,
        match=r"big.npz: archive member 'images.npy' declares 393344 bytes uncompressed, over the cap of 65536",
    ):
        load_distilled(tmp_path / "big.npz", format="kip_npz")
    # ... or, just over, the npy header does (checked before reading the data).
    np.savez(tmp_path / "over.npz", images=np.zeros((6, 32, 32, 3), np.float32), labels=np.eye(6, 10, dtype=np.float32))
    with pytest.raises(
        DistilledFormatError,
        match=r"over.npz: array 'images.npy' declares shape \(6, 32, 32, 3\) of float32 = 73728 bytes, "
        r"over the cap of 65536",
    ):
        load_distilled(tmp_path / "over.npz", format="kip_npz")


def test_npy_header_declaring_more_than_its_member_is_refused(tmp_path):
    # numpy allocates what the header declares (here 384 TB: MemoryError) before reading.
    path = _npz_with_header(tmp_path / "huge.npz", (1_000_000, 1_000_000, 32, 3))
    with pytest.raises(
        DistilledFormatError,
        match=r"huge.npz: array 'images.npy' declares shape \(1000000, 1000000, 32, 3\) of float32 = \d+ bytes, "
        r"over the cap",
    ):
        load_distilled(path, format="kip_npz")
    path = _npz_with_header(tmp_path / "short.npz", (2, 4, 4, 3))
    with pytest.raises(
        DistilledFormatError,
        match=r"short.npz: array 'images.npy' declares shape \(2, 4, 4, 3\) of float32 = 384 bytes "
        r"but the member holds 16",
    ):
        load_distilled(path, format="kip_npz")


def test_msgpack_array_over_the_cap_is_refused(tmp_path, monkeypatch):
    x = np.zeros((100, 32, 32, 3), np.float32)  # 1.2 MB
    path = _msgpack(tmp_path / "checkpoint_1", {"params": {"x_proto": x, "y_proto": np.eye(100, 10, dtype=np.float32)}})
    monkeypatch.setenv("DISTILL_JAX_MAX_ARRAY_BYTES", str(1 << 20))
    # The file is decoded whole, so the file itself is held to the cap first, before it is read ...
    with pytest.raises(DistilledFormatError, match=rf"{path}: {path.stat().st_size} bytes; a msgpack checkpoint is "
                       r"decoded whole, so it may take at most the cap of 1048576 bytes"):
        load_distilled(path)
    # ... and each array inside a payload too.
    with pytest.raises(
        DistilledFormatError,
        match=r"x: an array declares shape \(100, 32, 32, 3\) of float32 = 1228800 bytes, over the cap of 1048576",
    ):
        restore_msgpack(path.read_bytes(), "x")
    # An ndarray entry whose declared shape does not match its bytes.
    import msgpack

    entry = msgpack.ExtType(1, msgpack.packb(((10**6, 10**6), "float32", b"\0" * 16), use_bin_type=True))
    odd = tmp_path / "odd.msgpack"
    odd.write_bytes(msgpack.packb({"params": {"x_proto": entry, "y_proto": entry}}, use_bin_type=True))
    with pytest.raises(
        DistilledFormatError,
        match=rf"{odd}: an array declares shape \(1000000, 1000000\) of float32 = 4000000000000 bytes, over the cap",
    ):
        load_distilled(odd)


def test_msgpack_nested_container_headers_stay_bounded(tmp_path):
    # 1000 nested array headers, each declaring as many entries as the file has bytes: msgpack
    # preallocates every list before noticing the data is missing (~80 MB for this 256 kB file).
    import tracemalloc

    size = 256 << 10
    payload = b"".join(b"\xdd" + size.to_bytes(4, "big") for _ in range(1000))
    path = tmp_path / "nested.msgpack"
    path.write_bytes(payload + b"\xc0" * (size - len(payload)))
    tracemalloc.start()
    try:
        with pytest.raises(DistilledFormatError, match=f"{path}: truncated or corrupt msgpack checkpoint"):
            load_distilled(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak} bytes"


def test_msgpack_prototypes_must_be_arrays(tmp_path):
    ragged = _msgpack(tmp_path / "ragged.msgpack", {"params": {"x_proto": [[1.0, 2.0], [3.0]], "y_proto": [0, 1]}})
    with pytest.raises(
        DistilledFormatError, match=r"ragged.msgpack: field 'params/x_proto': expected an image tensor, got list"
    ):
        load_distilled(ragged)


def test_memory_error_becomes_distilled_format_error(tmp_path, monkeypatch):
    from distill_jax.formats import distilled

    np.savez(tmp_path / "k.npz", images=np.zeros((2, 4, 4, 3), np.float32), labels=np.eye(2, dtype=np.float32))

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(distilled, "read_npz", out_of_memory)  # the file reader, as the formats call it
    with pytest.raises(DistilledFormatError, match=r"k.npz: ran out of memory \(MemoryError\)"):
        load_distilled(tmp_path / "k.npz")


def test_restore_msgpack_reads_what_flax_writes(monkeypatch):
    # The bounded decoder must give flax.serialization.msgpack_restore's tree for valid files,
    # chunked arrays (flax splits arrays over MAX_CHUNK_SIZE) and bfloat16 included.
    import flax.serialization as flax_serialization
    import jax
    import ml_dtypes

    from distill_jax.formats.distilled import restore_msgpack

    tree = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.ones(2, ml_dtypes.bfloat16),
        "c": np.float64(1.5),
        "d": 3,
        "e": "text",
        "f": [1, 2, [3, 4]],
        "g": complex(1, 2),
        "h": {"i": np.array(True), "j": np.zeros((0, 4), np.int8), "k": np.arange(30, dtype=np.int64).reshape(5, 6)},
    }
    monkeypatch.setattr(flax_serialization, "MAX_CHUNK_SIZE", 64)  # 'k' (240 bytes) is written in chunks
    payload = serialization.msgpack_serialize(tree)
    assert b"__msgpack_chunked_array__" in payload
    expected, got = serialization.msgpack_restore(payload), restore_msgpack(payload, "x")
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
    for want, have in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got), strict=True):
        assert type(have) is type(want)
        if isinstance(want, np.ndarray):
            assert have.dtype == want.dtype and have.shape == want.shape
            np.testing.assert_array_equal(have, want)
        else:
            assert have == want


# --------------------------------------------------------------------------------------
# A class count is bounded (at most distill_jax.errors.MAX_CLASSES = 65536): it sizes the
# per-class counts `inspect` prints and the grid `show` draws, so one label must not set it.
# --------------------------------------------------------------------------------------


def _traced_peak(function):
    import tracemalloc

    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_one_label_of_fifty_million_is_refused_naming_the_labels_file(tmp_path):
    labels = np.array([0, 1, 50_000_000, 1])
    folder = _write_pair(tmp_path / "pair", _nchw(), labels)

    def load():
        with pytest.raises(DistilledFormatError, match=rf"{folder / 'labels_best.pt'}: field 'labels': class index "
                                                       r"50000000, expected class indices in \[0, 65536\)"):
            summarize_distilled(load_distilled(folder))

    assert _traced_peak(load) < 8 << 20  # a bincount over 50,000,000 classes alone takes 400 MB


def test_own_format_num_classes_of_fifty_million_is_refused(tmp_path):
    path = tmp_path / "own.npz"
    metadata = {"format": "distill_jax", "format_version": 1, "num_classes": 50_000_000, "preprocessing": "none",
                "label_kind": "index", "image_layout": "NHWC", "provenance": {}}
    np.savez(
        path,
        images=np.zeros((2, 4, 4, 3), np.float32),
        labels=np.array([0, 1]),
        metadata=np.array(json.dumps(metadata)),
    )

    def load():
        with pytest.raises(DistilledFormatError, match=rf"{path}: field 'metadata.num_classes': 50000000 classes, "
                                                       r"expected a number of classes in \[1, 65536\]"):
            summarize_distilled(load_distilled(path))

    assert _traced_peak(load) < 8 << 20


def test_class_count_option_label_vectors_and_the_type_are_bounded(tmp_path):
    folder = _write_pair(tmp_path / "pair", _nchw(), np.array([0, 1, 2, 1]))
    with pytest.raises(DistilledFormatError, match=r"field 'num_classes': 70000 classes, expected .*\[1, 65536\]"):
        load_distilled(folder, num_classes=70_000)
    wide = tmp_path / "kip.npz"
    np.savez(wide, images=np.zeros((1, 4, 4, 3), np.float32), labels=np.zeros((1, 70_000), np.float32))
    with pytest.raises(DistilledFormatError, match=rf"{wide}: field 'labels \(label vector length\)': 70000 classes"):
        load_distilled(wide)
    with pytest.raises(DistilledFormatError, match=r"field 'num_classes': 70000 classes"):
        DistilledSet(np.zeros((1, 4, 4, 3)), np.array([0]), 70_000, "none")
    assert DistilledSet(np.zeros((1, 4, 4, 3)), np.array([0]), 65_536, "none").class_counts().shape == (65_536,)


# --------------------------------------------------------------------------------------
# msgpack checkpoints are decoded whole: the file is held to the cap before it is read, and
# read once (no second copy of what follows the checkpoint's data).
# --------------------------------------------------------------------------------------


def test_msgpack_file_over_the_cap_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_1"
    with open(path, "wb") as handle:
        handle.truncate(64 << 20)  # sparse: 64 MB of zeros on no disk space
    monkeypatch.setenv("DISTILL_JAX_MAX_ARRAY_BYTES", str(1 << 20))

    def load():
        with pytest.raises(DistilledFormatError, match=rf"{path}: 67108864 bytes; a msgpack checkpoint is decoded "
                                                       r"whole, so it may take at most the cap of 1048576 bytes"):
            load_distilled(path)

    assert _traced_peak(load) < 1 << 20


def test_msgpack_bytes_after_the_checkpoint_are_neither_read_nor_copied(tmp_path):
    tree = {
        "params": {
            "x_proto": RNG.normal(size=(2, 4, 4, 3)).astype(np.float32),
            "y_proto": np.eye(2, 3, dtype=np.float32),
        }
    }
    path = _msgpack(tmp_path / "checkpoint_2", tree)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size + (64 << 20))  # a valid checkpoint, then 64 MB of (sparse) zeros

    # Resident memory of a fresh process (the decoder's buffer is sized to the file up front, but
    # only the pages written take memory): the whole file held, then its tail copied again, was 128 MB.
    import subprocess
    import sys

    # (VmHWM, the peak of this process image: ru_maxrss would carry the forking parent's over exec.)
    probe = (
        "import sys\n"
        "from distill_jax.formats.distilled import DistilledFormatError, load_distilled\n"
        "def peak():\n    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
        "before = peak()\n"
        "try:\n    load_distilled(sys.argv[1])\nexcept DistilledFormatError as err:\n    print(err)\n"
        "print(peak() - before)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=120)
    message, growth_kib = done.stdout.strip().splitlines()
    assert int(growth_kib) < 16 << 10, f"peak resident memory grew by {growth_kib} KiB"
    assert (
        message == f"{path}: 67108864 bytes after the checkpoint's data (expected one msgpack object filling the file)"
    )


def test_msgpack_checkpoint_read_in_blocks_equals_flax(tmp_path):
    # Larger than the 1 MiB blocks the reader feeds the decoder: an array spans several.
    tree = {"step": 3, "params": {"x_proto": RNG.normal(size=(200, 32, 32, 3)).astype(np.float32),
                                  "y_proto": RNG.normal(size=(200, 10)).astype(np.float32)}}
    path = _msgpack(tmp_path / "checkpoint_3", tree)
    assert path.stat().st_size > 2 << 20
    dset = load_distilled(path)
    np.testing.assert_array_equal(dset.images, tree["params"]["x_proto"])
    np.testing.assert_array_equal(dset.labels, tree["params"]["y_proto"])
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 100)
    with pytest.raises(DistilledFormatError, match=rf"{path}: truncated or corrupt msgpack checkpoint \(the file ends"):
        load_distilled(path)
