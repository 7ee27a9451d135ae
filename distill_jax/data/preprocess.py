"""Preprocessing as data: a recipe name plus the arrays fitted on a real training split.

A distilled set lives in the pixel space its distiller used, and the real test split must
go through the *same* transform, fitted on the real training split (docs/method.md §4). Keeping the
fitted transform as a value (saved beside a distilled set, reloaded bit for bit) instead
of recomputing it somewhere else is what keeps those two in step.

Recipes (the names are a contract with configs and other modules); inputs are float
images in [0, 1], NHWC:

- ``'none'``: identity.
- ``'standardize'``: per-channel mean/std of the training split (DC, DSA, DM).
- ``'zca_mtt'``: MTT / the paper's reference code (kornia ``ZCAWhitening(eps=0.1)``):
  no normalisation; ZCA over flattened images with the unbiased covariance,
  ``W = U diag(1/sqrt(S + eps)) U^T`` and ``x' = (x - mean) W``.
- ``'zca_frepo'``: FRePo, KIP, RFAD: per-channel standardisation first, then ZCA on the
  uncentred second moment ``X^T X / N`` with the trace-relative regulariser
  ``lambda = eps * trace(cov) / d``, ``x' = x W``.
- ``'zca_kip'``: as ``'zca_frepo'``, but each standardised image is first centred on its
  own mean and scaled to unit L2 norm (KIP's "layer norm"), when fitting and applying.
  (KIP's extra "rank control" for N < d is not done: real training splits have N > d.)

The flatten order a ZCA matrix was fitted in is stored (``flatten_order``) and used again
when applying it. The default is ``'nchw'`` like the PyTorch reference code, so that
matrices exchanged with it line up; a consistent order gives the same images either way
(ZCA commutes with permuting the features), only a mismatch does harm.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any, Mapping, Optional

import jax.numpy as jnp
import numpy as np

from distill_jax import atomic
from distill_jax.errors import UserError

RECIPES = ("none", "standardize", "zca_mtt", "zca_frepo", "zca_kip")
FLATTEN_ORDERS = ("nchw", "nhwc")
DEFAULT_ZCA_REG = 0.1
FORMAT_NAME = "distill_jax.preprocessing"
FORMAT_VERSION = 1

_STANDARDISED = ("standardize", "zca_frepo", "zca_kip")
_WHITENED = ("zca_mtt", "zca_frepo", "zca_kip")
_ARRAY_FIELDS = ("channel_mean", "channel_std", "zca_mean", "zca_matrix")
FITTED_ON_KEYS = ("dataset", "split", "images_sha256")  # the provenance `fitted_on` records
_CHUNK = 2048  # images per float64 chunk while fitting: bounds memory on 50k-image splits


class PreprocessingError(UserError, ValueError):
    """A preprocessing recipe, its input, or a stored preprocessing record is invalid."""


# --------------------------------------------------------------------------- layout helpers


def _xp(x):
    return np if isinstance(x, np.ndarray) else jnp


def _flatten(x, order: str):
    """(N, H, W, C) -> (N, D) with features in `order`."""
    xp = _xp(x)
    if order == "nchw":
        x = xp.transpose(x, (0, 3, 1, 2))
    return xp.reshape(x, (x.shape[0], -1))


def _unflatten(flat, image_shape, order: str):
    """(N, D) in `order` -> (N, H, W, C)."""
    xp = _xp(flat)
    h, w, c = image_shape
    if order == "nchw":
        return xp.transpose(xp.reshape(flat, (-1, c, h, w)), (0, 2, 3, 1))
    return xp.reshape(flat, (-1, h, w, c))


def _layer_norm(flat):
    """Each row minus its own mean, scaled to unit L2 norm (KIP)."""
    xp = _xp(flat)
    centred = flat - xp.mean(flat, axis=1, keepdims=True)
    norms = xp.linalg.norm(centred, axis=1, keepdims=True)
    return centred / xp.maximum(norms, 1e-12)


# --------------------------------------------------------------------------- the value


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessing:
    """A fitted transform: `recipe` and the float32 arrays it needs (None where unused).

    channel_mean, channel_std: (C,) per-channel statistics of the training split.
    zca_mean: (D,) subtracted before whitening (zeros for the uncentred FRePo/KIP form).
    zca_matrix: (D, D) symmetric whitening matrix acting on rows flattened in `flatten_order`.
    image_norm: zca_kip only: mean L2 norm of the centred training images, used by
        `inverse` in place of each image's own (discarded) norm.
    fitted_on: optional provenance, {'dataset', 'split', 'images_sha256'} (strings): what the
        transform was fitted on, so that a saved one can be checked against the data it is used
        with (`pipeline.load_training_data`, config field `data.preprocessing_path`).
    """

    recipe: str
    image_shape: tuple[int, int, int]
    channel_mean: Optional[np.ndarray] = None
    channel_std: Optional[np.ndarray] = None
    zca_mean: Optional[np.ndarray] = None
    zca_matrix: Optional[np.ndarray] = None
    flatten_order: str = "nchw"
    zca_reg: float = 0.0
    image_norm: float = 1.0
    fitted_on: Optional[Mapping[str, str]] = None

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise PreprocessingError(f"Preprocessing.recipe: unknown recipe {self.recipe!r}; expected one of {RECIPES}")
        if self.flatten_order not in FLATTEN_ORDERS:
            raise PreprocessingError(f"Preprocessing.flatten_order: expected one of {FLATTEN_ORDERS}, "
                                     f"got {self.flatten_order!r}")
        shape = tuple(int(d) for d in self.image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise PreprocessingError(f"Preprocessing.image_shape: expected (H, W, C) of positive ints, "
                                     f"got {self.image_shape!r}")
        object.__setattr__(self, "image_shape", shape)
        c, d = shape[2], int(np.prod(shape))
        expected = {"channel_mean": (c,), "channel_std": (c,), "zca_mean": (d,), "zca_matrix": (d, d)}
        needed = set()
        if self.recipe in _STANDARDISED:
            needed |= {"channel_mean", "channel_std"}
        if self.recipe in _WHITENED:
            needed |= {"zca_mean", "zca_matrix"}
        for field in _ARRAY_FIELDS:
            value = getattr(self, field)
            if field not in needed:
                if value is not None:
                    raise PreprocessingError(f"Preprocessing.{field}: recipe {self.recipe!r} does not use it")
                continue
            if value is None:
                raise PreprocessingError(f"Preprocessing.{field}: recipe {self.recipe!r} needs it")
            value = np.asarray(value, dtype=np.float32)
            if value.shape != expected[field]:
                raise PreprocessingError(f"Preprocessing.{field}: expected shape {expected[field]} for images "
                                         f"{shape}, got {value.shape}")
            if not np.all(np.isfinite(value)):
                raise PreprocessingError(f"Preprocessing.{field}: holds non-finite values")
            object.__setattr__(self, field, value)
        if self.channel_std is not None and np.any(self.channel_std <= 0):
            raise PreprocessingError(f"Preprocessing.channel_std: must be positive, got {self.channel_std}")
        object.__setattr__(self, "zca_reg", float(self.zca_reg))
        object.__setattr__(self, "image_norm", float(self.image_norm))
        if self.fitted_on is not None:
            if not isinstance(self.fitted_on, Mapping) or not all(
                    k in FITTED_ON_KEYS and isinstance(v, str) for k, v in self.fitted_on.items()):
                raise PreprocessingError(f"Preprocessing.fitted_on: expected a mapping of strings "
                                         f"({', '.join(FITTED_ON_KEYS)}), got {self.fitted_on!r}")
            object.__setattr__(self, "fitted_on", dict(self.fitted_on))

    # ---- transform

    def _check_input(self, x, what: str):
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise PreprocessingError(f"Preprocessing.{what}({self.recipe!r}): expected images (N, "
                                     f"{', '.join(map(str, self.image_shape))}) NHWC, got shape {tuple(x.shape)}")

    def apply(self, x):
        """Float images in [0, 1], NHWC -> the recipe's space (float32; numpy in, numpy out; jnp likewise)."""
        xp = _xp(x)
        self._check_input(x, "apply")
        x = xp.asarray(x, dtype=xp.float32)
        if self.recipe == "none":
            return x
        if self.channel_mean is not None:
            x = (x - self.channel_mean) / self.channel_std
        if self.recipe == "standardize":
            return x
        flat = _flatten(x, self.flatten_order)
        if self.recipe == "zca_kip":
            flat = _layer_norm(flat)
        flat = (flat - self.zca_mean) @ xp.asarray(self.zca_matrix)
        return _unflatten(flat, self.image_shape, self.flatten_order)

    def inverse(self, x):
        """Back to [0, 1]-scale pixels for display. Exact up to float error, except zca_kip,
        whose per-image mean and norm are gone: the mean is taken as 0 and the norm as the
        training average."""
        xp = _xp(x)
        self._check_input(x, "inverse")
        x = xp.asarray(x, dtype=xp.float32)
        if self.recipe == "none":
            return x
        if self.recipe in _WHITENED:
            flat = _flatten(x, self.flatten_order) @ xp.asarray(self._zca_inverse) + self.zca_mean
            if self.recipe == "zca_kip":
                flat = flat * np.float32(self.image_norm)
            x = _unflatten(flat, self.image_shape, self.flatten_order)
        if self.channel_mean is not None:
            x = x * self.channel_std + self.channel_mean
        return x

    @functools.cached_property
    def _zca_inverse(self) -> np.ndarray:
        # W is symmetric positive definite (regularised): an LU inverse in float64 is exact enough
        # and several times cheaper than an eigendecomposition of a 3072 x 3072 matrix.
        inverse = np.linalg.inv(self.zca_matrix.astype(np.float64))
        return ((inverse + inverse.T) / 2).astype(np.float32)

    # ---- storage

    def to_dict(self) -> dict[str, Any]:
        """{'meta': JSON-able dict, 'arrays': {name: float32 array}} (unused arrays left out)."""
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "recipe": self.recipe,
                "image_shape": list(self.image_shape), "flatten_order": self.flatten_order,
                "zca_reg": self.zca_reg, "image_norm": self.image_norm}
        if self.fitted_on is not None:
            meta["fitted_on"] = dict(self.fitted_on)
        arrays = {f: getattr(self, f) for f in _ARRAY_FIELDS if getattr(self, f) is not None}
        return {"meta": meta, "arrays": arrays}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], *, where: str = "preprocessing record") -> "Preprocessing":
        """Inverse of `to_dict`; `where` names the source in error messages."""
        if not isinstance(record, Mapping) or "meta" not in record or "arrays" not in record:
            raise PreprocessingError(f"{where}: expected a mapping with 'meta' and 'arrays'")
        meta, arrays = record["meta"], record["arrays"]
        if not isinstance(meta, Mapping) or meta.get("format") != FORMAT_NAME:
            raise PreprocessingError(f"{where}: meta.format must be {FORMAT_NAME!r}, got "
                                     f"{meta.get('format') if isinstance(meta, Mapping) else meta!r}")
        if meta.get("version") != FORMAT_VERSION:
            raise PreprocessingError(f"{where}: meta.version {meta.get('version')!r} is not supported "
                                     f"(expected {FORMAT_VERSION})")
        for key in ("recipe", "image_shape"):
            if key not in meta:
                raise PreprocessingError(f"{where}: meta.{key} is missing")
        unknown = set(arrays) - set(_ARRAY_FIELDS)
        if unknown:
            raise PreprocessingError(f"{where}: unknown arrays {sorted(unknown)}; expected some of {_ARRAY_FIELDS}")
        try:
            return cls(recipe=meta["recipe"], image_shape=tuple(meta["image_shape"]),
                       flatten_order=meta.get("flatten_order", "nchw"), zca_reg=meta.get("zca_reg", 0.0),
                       image_norm=meta.get("image_norm", 1.0), fitted_on=meta.get("fitted_on"),
                       **{f: np.asarray(arrays[f]) for f in _ARRAY_FIELDS if f in arrays})
        except PreprocessingError as exc:
            raise PreprocessingError(f"{where}: {exc}") from None

    def to_npz_entries(self, prefix: str = "preprocessing.") -> dict[str, np.ndarray]:
        """Flat arrays for `np.savez`, meta as a JSON string: lets a distilled set's npz carry it."""
        record = self.to_dict()
        entries = {f"{prefix}meta": np.array(json.dumps(record["meta"]))}
        entries.update({f"{prefix}{k}": v for k, v in record["arrays"].items()})
        return entries

    @classmethod
    def from_npz_entries(cls, entries: Mapping[str, np.ndarray], prefix: str = "preprocessing.", *,
                         where: str = "npz entries") -> "Preprocessing":
        keys = list(entries.keys())
        if f"{prefix}meta" not in keys:
            raise PreprocessingError(f"{where}: no entry {prefix + 'meta'!r}")
        try:
            meta = json.loads(str(np.asarray(entries[f"{prefix}meta"])))
        except json.JSONDecodeError as exc:
            raise PreprocessingError(f"{where}: entry {prefix + 'meta'!r} is not JSON ({exc})") from None
        arrays = {k[len(prefix):]: np.asarray(entries[k]) for k in keys
                  if k.startswith(prefix) and k != f"{prefix}meta"}
        return cls.from_dict({"meta": meta, "arrays": arrays}, where=where)

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Writes an .npz, whole (`atomic.write_with`: a crash leaves no half file)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic.write_with(path, lambda f: np.savez(f, **self.to_npz_entries(prefix="")))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Preprocessing":
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"preprocessing file {path} not found")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return cls.from_npz_entries({k: npz[k] for k in npz.files}, prefix="", where=f"file {path}")
        except (OSError, ValueError) as exc:
            if isinstance(exc, PreprocessingError):
                raise
            raise PreprocessingError(f"file {path}: not a readable npz ({exc})") from exc


def load(path: str | os.PathLike) -> Preprocessing:
    return Preprocessing.load(path)


# --------------------------------------------------------------------------- fitting


def _float64_chunks(x: np.ndarray):
    for start in range(0, len(x), _CHUNK):
        yield x[start:start + _CHUNK].astype(np.float64)


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std (two passes in float64)."""
    count = x.shape[0] * x.shape[1] * x.shape[2]
    mean = sum(c.sum(axis=(0, 1, 2)) for c in _float64_chunks(x)) / count
    var = sum(((c - mean) ** 2).sum(axis=(0, 1, 2)) for c in _float64_chunks(x)) / count
    return mean, np.sqrt(var)


def _whitening_matrix(cov: np.ndarray, reg: float, recipe: str) -> np.ndarray:
    """U diag(1 / sqrt(S + reg)) U^T for the symmetric `cov` = U diag(S) U^T."""
    s, u = np.linalg.eigh(cov)
    s = np.clip(s, 0.0, None)  # rounding can leave tiny negative eigenvalues on a PSD matrix
    if s.min() + reg <= 1e-12 * max(s.max(), 1e-300):
        raise PreprocessingError(f"fit({recipe!r}): the covariance is singular and the regulariser is {reg}; "
                                 "use a positive zca_reg")
    return (u * (1.0 / np.sqrt(s + reg))) @ u.T


def fit(recipe: str, images, *, zca_reg: float = DEFAULT_ZCA_REG, flatten_order: str = "nchw") -> Preprocessing:
    """Fits `recipe` on training images (float, [0, 1], NHWC); float64 inside, float32 stored.

    `zca_reg` is the absolute eigenvalue offset for 'zca_mtt' (MTT's 0.1) and the
    trace-relative factor for 'zca_frepo' / 'zca_kip' (their 0.1).
    """
    if recipe not in RECIPES:
        raise PreprocessingError(f"fit: unknown recipe {recipe!r}; expected one of {RECIPES}")
    if flatten_order not in FLATTEN_ORDERS:
        raise PreprocessingError(f"fit: flatten_order must be one of {FLATTEN_ORDERS}, got {flatten_order!r}")
    x = np.asarray(images)
    if x.ndim != 4:
        raise PreprocessingError(f"fit({recipe!r}): expected images (N, H, W, C), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise PreprocessingError(f"fit({recipe!r}): expected float images in [0, 1], got {x.dtype} "
                                 "(convert uint8 with datasets.to_float)")
    if len(x) < 2:
        raise PreprocessingError(f"fit({recipe!r}): need at least 2 images, got {len(x)}")
    lo, hi = float(x.min()), float(x.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-6 or hi > 1 + 1e-6:
        raise PreprocessingError(f"fit({recipe!r}): expected pixels in [0, 1], got range [{lo}, {hi}]")
    if zca_reg < 0:
        raise PreprocessingError(f"fit({recipe!r}): zca_reg must be >= 0, got {zca_reg}")
    image_shape = tuple(int(d) for d in x.shape[1:])
    if recipe == "none":
        return Preprocessing("none", image_shape, flatten_order=flatten_order)

    mean = std = None
    if recipe in _STANDARDISED:
        mean, std = _channel_stats(x)
        if np.any(std < 1e-12):
            raise PreprocessingError(f"fit({recipe!r}): channel(s) {np.flatnonzero(std < 1e-12).tolist()} are "
                                     "constant over the training images; cannot standardise")
        if recipe == "standardize":
            return Preprocessing("standardize", image_shape, channel_mean=mean, channel_std=std,
                                 flatten_order=flatten_order)

    def standardised_rows():
        for chunk in _float64_chunks(x):
            if mean is not None:
                chunk = (chunk - mean) / std
            yield _flatten(chunk, flatten_order)

    def features():
        for flat in standardised_rows():
            yield _layer_norm(flat) if recipe == "zca_kip" else flat

    n, d = len(x), int(np.prod(image_shape))
    image_norm = 1.0
    # One pass over the data: the sum and the second moment, in float64 (pixels are O(1),
    # so centring afterwards loses nothing that matters at float32 storage precision).
    total, moment = np.zeros(d), np.zeros((d, d))
    for f in features():
        total += f.sum(axis=0)
        moment += f.T @ f
    if recipe == "zca_mtt":
        zca_mean = total / n
        cov = (moment - n * np.outer(zca_mean, zca_mean)) / (n - 1)  # unbiased, as kornia's ZCA
        reg = zca_reg
    else:
        zca_mean = np.zeros(d)
        cov = moment / n  # uncentred, as FRePo/KIP (their data is already channel-standardised)
        reg = zca_reg * np.trace(cov) / d
        if recipe == "zca_kip":
            norms = [np.linalg.norm(f - f.mean(axis=1, keepdims=True), axis=1) for f in standardised_rows()]
            image_norm = float(np.concatenate(norms).mean())
    matrix = _whitening_matrix(cov, reg, recipe)
    return Preprocessing(recipe, image_shape, channel_mean=mean, channel_std=std, zca_mean=zca_mean,
                         zca_matrix=matrix, flatten_order=flatten_order, zca_reg=zca_reg, image_norm=image_norm)
