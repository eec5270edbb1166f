"""Preconditions and result bookkeeping shared by all methods (the method contract).

Every method is ``func(adata, *, layer=None, key_added="<method>", ...) -> result``; it reads
its inputs through these helpers so that errors are uniform and name the fix, and it records
its parameters with :func:`store_params`.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import InvalidInputError, KeyNotFoundError, MissingSlotError, NotCountsError
from .._keys import Key

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


#: annotation names :func:`check_option_types` understands, with what they accept
_SIMPLE_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int, np.integer), "an integer"),
    "float": ((int, float, np.integer, np.floating), "a number"),
    "bool": ((bool, np.bool_), "True or False"),
    "str": ((str,), "a string"),
    "None": ((type(None),), "None"),
    "os.PathLike": ((str, Path), "a path"),
    "Path": ((str, Path), "a path"),
}

#: options that name a slot a method writes (checked by :func:`check_key`)
KEY_OPTIONS = ("key_added", "refined_key_added")


def _split_union(annotation: str) -> list[str]:
    """``'str | Sequence[str] | None'`` -> its members (a ``|`` inside brackets does not split)."""
    parts, depth, cur = [], 0, ""
    for ch in str(annotation):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return [p for p in parts if p]


_SEQUENCE_TYPES = ("Sequence", "list", "Iterable", "Collection")


def _member_accepts(member: str, value: Any) -> tuple[bool, str] | None:
    """Whether ``value`` fits one member of a union (None: this annotation is not understood)."""
    import pandas as pd

    if member in _SIMPLE_TYPES:
        types, what = _SIMPLE_TYPES[member]
        if member in ("int", "float") and isinstance(value, (bool, np.bool_)):
            return False, what  # True is not a number of epochs
        return isinstance(value, types), what
    if member in ("dict", "Mapping") or member.startswith(("dict[", "Mapping[")):
        return isinstance(value, Mapping), "a dict"
    if member in ("np.ndarray", "numpy.ndarray"):
        return isinstance(value, np.ndarray), "an array"
    head, _, inner = member.partition("[")
    inner = inner[:-1] if inner.endswith("]") else inner
    if head in _SEQUENCE_TYPES and inner in _SIMPLE_TYPES:
        what = f"a list of {_SIMPLE_TYPES[inner][1].removeprefix('an ').removeprefix('a ')}s"
        seq = isinstance(value, (list, tuple, np.ndarray, pd.Index, pd.Series)) or (head == "Iterable" and isinstance(value, range))
        if not seq or isinstance(value, str):
            return False, what
        items = list(value) if len(value) <= 10_000 else list(value[:10_000])
        return all(bool(_member_accepts(inner, v) and _member_accepts(inner, v)[0]) for v in items), what
    if head == "tuple" and inner:
        members = [m.strip() for m in inner.split(",")]
        if not all(m in _SIMPLE_TYPES for m in members):
            return None
        what = f"a pair ({', '.join(members)})" if len(members) == 2 else f"a tuple ({', '.join(members)})"
        if not isinstance(value, (list, tuple)) or len(value) != len(members):
            return False, what
        return all(_member_accepts(m, v)[0] for m, v in zip(members, value, strict=True)), what
    return None


def _accepts(annotation: str, value: Any) -> tuple[bool, str] | None:
    """Whether ``value`` fits an annotation such as ``'int | None'`` or ``'str | Sequence[str] | None'``
    (None: the annotation names a type this check does not know, so nothing is decided)."""
    verdicts = [_member_accepts(m, value) for m in _split_union(annotation)]
    if not verdicts or any(v is None for v in verdicts):
        return None
    return any(v[0] for v in verdicts), " or ".join(v[1] for v in verdicts)


def check_option_types(name: str, func: Any, options: Mapping[str, Any]) -> None:
    """Refuse option values whose type contradicts the method's annotation (``int``, ``float | None``, ...)."""
    import inspect

    params = inspect.signature(func).parameters
    for opt, value in options.items():
        p = params.get(opt)
        if p is None or p.annotation is p.empty or (value is None and p.default is None):
            continue
        verdict = _accepts(p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", ""), value)
        if verdict is None or verdict[0]:
            continue
        example = f" (the default is {p.default!r})" if p.default is not p.empty else ""
        raise InvalidInputError(f"{name}(): {opt} must be {verdict[1]}, not {value!r} ({type(value).__name__}){example}.")


#: options that mean the same in every method, with the values that make sense: (minimum, strict, what)
OPTION_RULES: dict[str, tuple[float, bool, str]] = {
    "seed": (0, False, "a non-negative integer or None"),
    "lr": (0, True, "a positive number (e.g. 1e-3)"),
    "n_top_genes": (1, False, "an integer >= 1 or None"),
    "n_comps": (1, False, "an integer >= 1"),
    "n_pcs": (1, False, "an integer >= 1 or None"),
    "n_neighbors": (1, False, "an integer >= 1"),
    "bins": (1, False, "an integer >= 1"),
    "batch_size": (1, False, "an integer >= 1 or None"),
    "max_epochs": (0, False, "an integer >= 0"),
    "n_clusters": (1, False, "an integer >= 1"),
    "n_domains": (1, False, "an integer >= 1"),
    "n_patterns": (1, False, "an integer >= 1"),
    "n_latent": (1, False, "an integer >= 1"),
    "n_hidden": (1, False, "an integer >= 1"),
    "n_layers": (1, False, "an integer >= 1"),
    "n_restarts": (1, False, "an integer >= 1"),
    "n_quantiles": (1, False, "an integer >= 1"),
    "n_components": (1, False, "an integer >= 1 or None"),
    "n_dims": (1, False, "an integer >= 1 or None"),
    "n_top": (1, False, "an integer >= 1"),
    "max_iter": (1, False, "an integer >= 1"),
    "epochs": (0, False, "an integer >= 0"),
    "pre_epochs": (0, False, "an integer >= 0"),
    "target_sum": (0, True, "a positive number or None"),
    "resolution": (0, True, "a positive number or None"),
    "tol": (0, False, "a number >= 0"),
    "max_tile_mb": (0, True, "a positive number"),
    "chunk_size": (1, False, "an integer >= 1 or None"),
    "n_runs": (1, False, "an integer >= 1"),
}


#: attribute holding ``{option: Interval}`` on a function decorated with :func:`option_ranges`
RANGES_ATTR = "__experimat_ranges__"


class Interval:
    """A range of sensible values written as in mathematics: ``"[0, 1]"``, ``"(0, 1)"``, ``"[0, inf)"``."""

    __slots__ = ("high", "high_closed", "low", "low_closed", "text")

    def __init__(self, text: str) -> None:
        t = text.strip()
        if len(t) < 5 or t[0] not in "[(" or t[-1] not in "])" or "," not in t:
            raise ValueError(f"not an interval: {text!r} (write e.g. '[0, 1]' or '(0, inf)')")
        lo, hi = (v.strip() for v in t[1:-1].split(","))
        self.low, self.high = float(lo), float(hi)
        self.low_closed, self.high_closed = t[0] == "[", t[-1] == "]"
        self.text = t

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return bool(above and below)

    def outside(self) -> float:
        """A value outside the interval (for tests)."""
        return self.low - 1.0 if math.isfinite(self.low) else self.high + 1.0

    def __repr__(self) -> str:
        return f"Interval({self.text!r})"


def _numbers(value: Any) -> list[float] | None:
    """The numbers of an option value (a number, or a tuple/list of numbers); None when it holds none."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return None
    if isinstance(value, (int, float, np.number)):
        return [float(value)]
    if isinstance(value, (tuple, list)) and value and all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) for v in value
    ):
        return [float(v) for v in value]
    return None


def check_option_values(name: str, options: Mapping[str, Any], ranges: Mapping[str, Interval] | None = None,
                        defaults: Mapping[str, Any] | None = None) -> None:
    """Refuse NaN numbers, values outside the sense of the options in :data:`OPTION_RULES` and values
    outside a method's declared ranges (:func:`option_ranges`; ``defaults`` are named in the message)."""
    for opt, value in options.items():
        if isinstance(value, (float, np.floating)) and math.isnan(value):
            raise InvalidInputError(f"{name}(): {opt} is NaN; pass a number (or leave the default).")
        interval = (ranges or {}).get(opt)
        numbers = _numbers(value)
        if interval is not None and numbers is not None and not all(v in interval for v in numbers):
            hint = f" (the default is {defaults[opt]!r})" if defaults and opt in defaults else ""
            raise InvalidInputError(f"{name}(): {opt} must lie in {interval.text}, not {value!r}; pass a value in that range{hint}.")
        rule = OPTION_RULES.get(opt)
        if rule is None or value is None or isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            continue
        minimum, strict, what = rule
        if value < minimum or (strict and value == minimum):
            raise InvalidInputError(f"{name}(): {opt} must be {what}, not {value!r}.")


def option_ranges(**intervals: str):
    """Declare the sensible values of a method's numeric options: ``@option_ranges(alpha="[0, inf)", p="(0, 1)")``.

    A value outside (``alpha=-1``, a probability of 1.5) is refused with an :class:`InvalidInputError` before
    any work: by the runner's checks when the method is called through an accessor, and by the decorated
    function itself when it is called directly (which also applies :data:`OPTION_RULES`, e.g. ``n_clusters >= 1``).
    Tuple options (``radius_quantiles=(0.001, 0.1)``) have each element checked.
    """
    import functools
    import inspect

    rules = {opt: Interval(text) for opt, text in intervals.items()}

    def decorate(func):
        params = inspect.signature(func).parameters
        unknown = set(rules) - set(params)
        if unknown:
            raise TypeError(f"option_ranges on {func.__name__}: no option(s) {sorted(unknown)}")
        merged = {**getattr(func, RANGES_ATTR, {}), **rules}
        defaults = {k: p.default for k, p in params.items() if p.default is not p.empty}

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check_option_values(func.__name__, kwargs, merged, defaults)
            return func(*args, **kwargs)

        setattr(wrapper, RANGES_ATTR, merged)
        return wrapper

    return decorate


def check_key(option: str, value: Any) -> None:
    """A slot name a method writes: a non-empty string without ``/`` that does not start with ``.``."""
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidInputError(f"{option} must be a string naming the result, not {value!r} ({type(value).__name__}).")
    problem = None
    if not value.strip():
        problem = "is empty"
    elif "/" in value:
        problem = "contains '/' (a project file cannot hold such a key)"
    elif value.startswith("."):
        problem = "starts with '.'"
    elif value != value.strip():
        problem = "has leading or trailing spaces"
    elif re.search(r"[\x00-\x1f\x7f]", value):
        problem = "contains control characters"
    if problem:
        raise InvalidInputError(f"{option}={value!r} {problem}; choose a name such as 'svg' or 'svg_run2'.")


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
