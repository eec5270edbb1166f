"""Preconditions and result bookkeeping shared by all methods (the method contract).

Every method is ``func(adata, *, layer=None, key_added="<method>", ...) -> result``; it reads
its inputs through these helpers so that errors are uniform and name the fix, and it records
its parameters with :func:`store_params`.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import InvalidInputError, KeyNotFoundError, MissingSlotError, NotCountsError
from .._keys import Key
from ._options import KEY_OPTIONS, RANGES_ATTR, check_key, check_option_types, check_option_values

if TYPE_CHECKING:
    from anndata import AnnData


def check_choice(name: str, value: Any, valid: Iterable[Any]) -> Any:
    """Validate a string option against its valid values (the error lists them)."""
    valid = list(valid)
    if isinstance(value, Enum):
        value = value.value
    if value not in valid:
        raise InvalidInputError(f"invalid {name}={value!r}; valid values: {valid}.")
    return value


def get_matrix(adata: AnnData, layer: str | None = None, *, obsm: str | None = None):
    """The data matrix of ``adata``: ``X``, ``layers[layer]`` or ``obsm[obsm]``.

    Raises :class:`MissingSlotError` listing the available layers when ``layer`` is absent.
    """
    if obsm is not None:
        return get_obsm(adata, obsm)
    if layer is None or layer == "X":
        if adata.X is None:
            raise MissingSlotError(
                f"adata.X is empty; pass layer= one of the available layers: {list(adata.layers.keys())}."
            )
        return adata.X
    if layer not in adata.layers:
        raise MissingSlotError(
            f"layer {layer!r} not found; available layers: {list(adata.layers.keys())} "
            "(or layer=None for adata.X)."
        )
    return adata.layers[layer]


def get_obsm(adata: AnnData, key: str, *, min_dims: int = 1) -> np.ndarray:
    """``adata.obsm[key]`` as a dense float array; the error lists the available keys."""
    if key not in adata.obsm:
        hint = ""
        if key == Key.SPATIAL:
            hint = " Spot coordinates are read into obsm['spatial'] by em.io readers."
        raise MissingSlotError(
            f"obsm key {key!r} not found; available obsm keys: {list(adata.obsm.keys())}.{hint}"
        )
    value = adata.obsm[key]
    arr = np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value)
    if arr.ndim != 2 or arr.shape[1] < min_dims:
        raise InvalidInputError(f"obsm[{key!r}] must be a 2-D array with >= {min_dims} columns; got {arr.shape}.")
    return arr


def get_coordinates(adata: AnnData, spatial_key: str = Key.SPATIAL, *, min_obs: int = 1) -> np.ndarray:
    """Spatial coordinates as float64 ``(n_obs, 2)`` (or 3); NaN/inf rejected."""
    xy = get_obsm(adata, spatial_key, min_dims=2).astype(np.float64, copy=False)
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        names = list(adata.obs_names[bad][:5])
        raise InvalidInputError(
            f"obsm[{spatial_key!r}] has {int(bad.sum())} rows with NaN/inf coordinates (e.g. {names}); "
            "remove those observations first (adata = adata[np.isfinite(adata.obsm[key]).all(1)])."
        )
    if xy.shape[0] < min_obs:
        raise InvalidInputError(f"at least {min_obs} observations are needed; got {xy.shape[0]}.")
    return xy


def get_obs_column(adata: AnnData, key: str) -> Any:
    if key not in adata.obs.columns:
        raise KeyNotFoundError("obs column", key, adata.obs.columns)
    return adata.obs[key]


def is_integer_matrix(X, *, max_check: int = 10_000_000) -> bool:
    """Whether all stored values are non-negative integers (checks up to ``max_check`` values)."""
    data = X.data if hasattr(X, "data") and not isinstance(X, np.ndarray) else np.asarray(X)
    data = np.asarray(data).ravel()
    if data.size > max_check:
        data = data[:: max(1, data.size // max_check)]
    if data.size == 0:
        return True
    if np.issubdtype(data.dtype, np.integer):
        return bool((data >= 0).all())
    if not np.isfinite(data).all():
        return False
    return bool((data >= 0).all() and np.all(data == np.round(data)))


def check_counts(X, *, what: str = "the data", layer: str | None = None) -> None:
    """Raise :class:`NotCountsError` unless ``X`` holds non-negative integers."""
    if not is_integer_matrix(X):
        where = f"layer {layer!r}" if layer else what
        raise NotCountsError(
            f"{where} must hold raw counts (non-negative integers), but has negative, fractional or "
            "non-finite values. Pass the raw counts (e.g. layer='counts'); do not normalise or log-transform them first."
        )


def to_json_safe(value: Any) -> Any:
    """Convert a parameter value into something ``json.dumps`` accepts, losslessly when possible."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else str(f)
    if isinstance(value, Enum):
        return to_json_safe(value.value)
    if isinstance(value, (Path,)):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, np.ndarray):
        if value.size <= 1000:
            return [to_json_safe(v) for v in value.tolist()]
        return f"<array shape={value.shape} dtype={value.dtype}>"
    if isinstance(value, Mapping):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        seq = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [to_json_safe(v) for v in seq]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"<{type(value).__name__} shape={tuple(value.shape)}>"
    return f"<{type(value).__name__}>"


def store_params(adata: AnnData, key_added: str, params: Mapping[str, Any], **extra: Any) -> None:
    """Record a call's parameters in ``adata.uns[key_added]['params']`` (JSON-safe)."""
    entry = adata.uns.get(key_added)
    if not isinstance(entry, dict):
        entry = {}
    entry["params"] = to_json_safe(dict(params))
    for k, v in extra.items():
        entry[k] = v
    adata.uns[key_added] = entry


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def resolve_genes(adata: AnnData, genes: str | Sequence[str], *, gene_symbols: str = "gene") -> list[str]:
    """Map gene names given by users (var_names, Ensembl ids with/without version, or symbols
    in ``var[gene_symbols]``, case-insensitively) to ``var_names``.

    Raises :class:`KeyNotFoundError` listing close matches for unknown names.
    """
    if isinstance(genes, str):
        genes = [genes]
    names = adata.var_names
    index = {n: n for n in names}
    lower: dict[str, str] = {}
    for n in names:
        lower.setdefault(str(n).lower(), n)
        base = str(n).split(".")[0] if str(n).upper().startswith("ENS") else None
        if base:
            lower.setdefault(base.lower(), n)
    if gene_symbols in adata.var.columns:
        for sym, n in zip(adata.var[gene_symbols].astype(str), names, strict=True):
            lower.setdefault(sym.lower(), n)
    out = []
    for g in genes:
        g_str = str(g)
        if g_str in index:
            out.append(index[g_str])
            continue
        key = g_str.lower()
        if key.startswith("ens") and "." in key:
            key = key.split(".")[0]
        if key in lower:
            out.append(lower[key])
            continue
        import difflib

        candidates = [str(n) for n in names]
        if gene_symbols in adata.var.columns:
            candidates += list(adata.var[gene_symbols].astype(str))
        close = difflib.get_close_matches(g_str, candidates, n=5)
        raise KeyNotFoundError("gene", g, close, hint="(close matches shown; genes may be given as symbols or ids)")
    return out


def _column_problem(values: Any) -> tuple[str, Any] | None:
    """How to store an object column that h5ad cannot write as it is (None when it can)."""
    import pandas as pd

    arr = np.asarray(values, dtype=object)
    present = [v for v in arr if not (v is None or v is pd.NA or (isinstance(v, float) and v != v))]
    if not present:
        return "string", pd.array([pd.NA] * len(arr), dtype="string")
    if all(isinstance(v, (str, bytes)) for v in present):
        return None
    if all(isinstance(v, (bool, np.bool_)) for v in present):
        return "boolean", pd.array([None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else bool(v) for v in arr],
                                   dtype="boolean")
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in present):
        return "float", pd.to_numeric(pd.Series(arr), errors="coerce").to_numpy(dtype=np.float64)
    return "mixed", None


def make_columns_writable(adata: AnnData, *, sample: str | None = None) -> None:
    """Give ``obs`` / ``var`` object columns a dtype that h5ad files can hold (in place).

    An all-missing column becomes a nullable string column, booleans with gaps a nullable boolean
    column, numbers with gaps float (NaN). A column mixing strings with other objects cannot be
    stored and raises :class:`InvalidInputError` naming the column and the fix, before anything is
    written.
    """
    where_sample = f"sample {sample!r}: " if sample is not None else ""
    for where in ("obs", "var"):
        df = getattr(adata, where)
        changed = {}
        for col in df.columns:
            if df[col].dtype != object:
                continue
            fix = _column_problem(df[col].to_numpy())
            if fix is None:
                continue
            kind, converted = fix
            if kind == "mixed":
                types = sorted({type(v).__name__ for v in df[col] if v is not None})
                raise InvalidInputError(
                    f"{where_sample}{where} column {col!r} mixes values of types {types}, which a project file cannot "
                    f"store; convert it first, e.g. adata.{where}[{str(col)!r}] = adata.{where}[{str(col)!r}].astype(str)."
                )
            changed[col] = converted
        if changed:
            df = df.copy()
            for col, converted in changed.items():
                df[col] = converted
            setattr(adata, where, df)


# -- checks every registered method gets before any work (the runner calls :func:`preflight`) ------
def counts_input(layer_option: str = "layer", *, when: Any = None):
    """Declare that a method models raw counts read from the layer named by ``layer_option``.

    The runner then refuses negative, fractional or non-finite values before any sample is run
    (and before anything is written). ``when(options) -> bool`` limits the requirement to some
    settings (e.g. a count likelihood but not a Gaussian one).
    """

    def mark(func):
        func.__experimat_counts__ = (layer_option, when)
        return func

    return mark


def check_not_empty(adata: Any, *, sample: str) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InvalidInputError(
            f"sample {sample!r} has {adata.n_obs} observations and {adata.n_vars} genes; methods need at least one of each. "
            "Run the method on the other samples (run_on_samples=[...]) or replace this sample."
        )


def preflight(spec: Any, adata: Any, options: Mapping[str, Any], *, sample: str, writes: bool = True) -> None:
    """Checks of one sample before a method runs: option types, result keys, non-empty data, finite
    coordinates (options named ``spatial_key``) and raw counts (methods marked :func:`counts_input`).

    Everything here raises an experimat error that names the fix, before anything is written."""
    check_option_types(spec.name, spec.func, options)
    ranges = getattr(spec.func, RANGES_ATTR, None)
    defaults = {p.name: p.default for p in spec.options if p.default is not p.empty} if ranges else None
    check_option_values(spec.name, options, ranges, defaults)
    if writes:
        for opt in KEY_OPTIONS:
            if opt in options:
                check_key(opt, options[opt])
    check_not_empty(adata, sample=sample)
    layer = options.get("layer")
    if isinstance(layer, str) and layer != "X" and layer not in adata.layers and "layers/{layer}" not in spec.reads:
        raise MissingSlotError(
            f"{spec.name}: sample {sample!r} has no layer {layer!r}; available layers: {list(adata.layers.keys())} "
            "(or layer=None for adata.X)."
        )
    key = options.get("spatial_key")
    if isinstance(key, str) and key not in adata.obsm:
        raise MissingSlotError(
            f"{spec.name}: sample {sample!r} has no coordinates in obsm[{key!r}]; available obsm keys: "
            f"{list(adata.obsm.keys())}. Pass spatial_key= one of them (em.io readers store spot coordinates in 'spatial')."
        )
    if isinstance(key, str):
        try:
            get_coordinates(adata, key)
        except InvalidInputError as e:
            raise InvalidInputError(f"{spec.name}: sample {sample!r}: {e}") from None
    counts = getattr(spec.func, "__experimat_counts__", None)
    if counts is not None:
        layer_option, when = counts
        if when is None or when(options):
            layer = options.get(layer_option)
            if layer is None or layer == "X" or layer in adata.layers:
                X = get_matrix(adata, layer)
                if not is_integer_matrix(X):
                    where = f"layer {layer!r}" if layer not in (None, "X") else "adata.X"
                    raise NotCountsError(
                        f"{spec.name}: sample {sample!r}: {where} must hold raw counts (non-negative integers) but has "
                        "negative, fractional or non-finite values. Pass the layer with the raw counts (layer='counts'); "
                        "do not normalise or log-transform them first."
                    )
    subsets = getattr(spec.func, "__experimat_subsets__", None)
    if subsets is not None:
        subsets(adata, dict(options), sample=sample)
    check = getattr(spec.func, "__experimat_preflight__", None)
    if check is not None:
        check(adata, dict(options), sample=sample)


def checks_sample(check: Any):
    """Declare a method's own cheap input check of one sample, run by the runner on every chosen sample before
    any work: ``check(adata, options, sample=...)`` raises an experimat error naming the fix (options whose meaning depends
    on the sample, e.g. the name of a boolean ``obs`` column, which ``reads=`` templates cannot express)."""

    def mark(func):
        func.__experimat_preflight__ = check
        return func

    return mark


def subsets_sample(check: Any):
    """Declare that a method removes observations or genes of its sample (a whole-sample replacement).

    The runner then accepts the change of shape: serially the sample is subset in place; a worker
    process sends back the kept ``obs_names``/``var_names`` and the parent subsets its copy the same
    way. ``check(adata, options, sample=...)`` runs on every chosen sample before any work (it must
    refuse, e.g., a filter that would leave no observations), so a refused call changes nothing.
    """

    def mark(func):
        func.__experimat_subsets__ = check
        return func

    return mark


def check_bool(name: str, value: Any) -> bool:
    """``value`` must be True or False (a string such as ``"no"`` would count as true)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"{name} must be True or False, not {value!r} ({type(value).__name__}).")
    return bool(value)


def check_path(name: str, value: Any) -> Path:
    """``value`` must be a path (``str`` or ``os.PathLike``)."""
    import os

    if not isinstance(value, (str, os.PathLike)) or (isinstance(value, str) and not value.strip()):
        raise InvalidInputError(f"{name} must be a path (a string or pathlib.Path), not {value!r} ({type(value).__name__}).")
    return Path(value)
