"""Shared plotting helpers: our figure class and style, colour keys, palettes, colour limits.

matplotlib is imported inside functions only, so that ``import experimat.pl`` stays cheap.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experimat._errors import InvalidInputError, KeyNotFoundError, MissingSlotError
from experimat._keys import Key
from experimat.methods._checks import get_matrix, resolve_genes
from experimat.pl._style import STYLE

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.figure import Figure

#: grey of spots whose value is missing (NaN or a category without a colour)
NA_COLOR = "#d3d3d3"

_QUANTILE = re.compile(r"^p(\d+(?:\.\d*)?)$")


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A new :class:`~experimat.pl._figure.ExperimatFigure` (constrained layout, not registered with pyplot)."""
    import matplotlib as mpl

    from experimat.pl._figure import ExperimatFigure

    with mpl.rc_context(STYLE):
        fig = ExperimatFigure(figsize=figsize, layout="constrained")
    return fig


def style_context():
    import matplotlib as mpl

    return mpl.rc_context(STYLE)


def check_figsize(figsize: Any) -> tuple[float, float] | None:
    if figsize is None:
        return None
    try:
        w, h = (float(v) for v in figsize)
    except (TypeError, ValueError):
        raise InvalidInputError(f"figsize must be a pair (width, height) in inches; got {figsize!r}.") from None
    if not (w > 0 and h > 0 and np.isfinite(w) and np.isfinite(h)):
        raise InvalidInputError(f"figsize must be positive; got {figsize!r}.")
    return w, h


def split_integrated(samples: dict[str, AnnData]) -> dict[str, AnnData]:
    """One panel per section for integrated data (``run_on_samples=None``, or a merged modality).

    A single AnnData that holds several samples (``obs['sample']`` with more than one value,
    written by :meth:`~experimat.Experiment.merge`) is split into ``{sample: view}`` in the
    order of ``uns['merge']['samples']``, so spatial plots lay the sections out side by side,
    one panel each with the sample name as title and the sample's own image from
    ``uns['spatial'][sample]`` when present, instead of drawing all sections on top of each other.
    """
    if len(samples) != 1:
        return samples
    adata = next(iter(samples.values()))
    if "sample" not in adata.obs.columns:
        return samples
    col = adata.obs["sample"].astype(str)
    present = list(dict.fromkeys(col))
    if len(present) < 2:
        return samples
    merge = adata.uns.get("merge")
    order = [str(s) for s in merge.get("samples", [])] if isinstance(merge, Mapping) else []
    names = [s for s in order if s in set(present)] + [s for s in present if s not in set(order)]
    values = col.to_numpy()
    return {s: adata[values == s] for s in names}


def as_adata_dict(adatas: Any, *, what: str = "adatas", split_samples: bool = False) -> dict[str, AnnData]:
    """``{name: AnnData}`` from one AnnData or a mapping of them.

    ``split_samples``: integrated data (several samples in one AnnData) becomes one entry per
    sample (:func:`split_integrated`); spatial plots set it, embeddings such as UMAP do not.
    """
    if split_samples:
        return split_integrated(as_adata_dict(adatas, what=what))
    from anndata import AnnData

    if isinstance(adatas, AnnData):
        spatial = adatas.uns.get(Key.SPATIAL)
        name = next(iter(spatial)) if isinstance(spatial, Mapping) and len(spatial) == 1 else ""
        return {str(name): adatas}
    if isinstance(adatas, Mapping):
        if not adatas:
            raise InvalidInputError(f"{what} is empty; pass one AnnData or a non-empty {{sample: AnnData}} dict.")
        out = {}
        for name, ad in adatas.items():
            if not isinstance(ad, AnnData):
                raise InvalidInputError(f"{what}[{name!r}] is a {type(ad).__name__}, not an AnnData.")
            out[str(name)] = ad
        return out
    raise InvalidInputError(f"{what} must be an AnnData or a {{sample: AnnData}} dict; got {type(adatas).__name__}.")


def as_key_list(value: Any, what: str) -> list[Any]:
    if value is None:
        return [None]
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) or isinstance(value, (pd.Index, np.ndarray)):
        items = list(value)
        if not items:
            raise InvalidInputError(f"{what} is an empty list; give a key or None.")
        return items
    raise InvalidInputError(f"{what} must be a string, a list of strings or None; got {value!r}.")


# --------------------------------------------------------------------------------------- colour keys
class ColorValues:
    """The values of one colour key in one sample."""

    def __init__(self, key: str | None, kind: str, values: Any, label: str) -> None:
        self.key, self.kind, self.values, self.label = key, kind, values, label

    @property
    def categorical(self) -> bool:
        return self.kind == "categorical"


def _obsm_column(adata: AnnData, obsm_key: str, column: str) -> tuple[np.ndarray, str]:
    value = adata.obsm[obsm_key]
    if isinstance(value, pd.DataFrame):
        cols = [str(c) for c in value.columns]
        if column not in cols:
            raise KeyNotFoundError(
                f"column of obsm[{obsm_key!r}]", column, difflib.get_close_matches(column, cols, n=5) or cols
            )
        arr = value.iloc[:, cols.index(column)].to_numpy()
    else:
        arr2 = np.asarray(value)
        if arr2.ndim != 2:
            raise InvalidInputError(f"obsm[{obsm_key!r}] must be 2-D to take a column from it; got {arr2.shape}.")
        try:
            j = int(column)
        except ValueError:
            raise KeyNotFoundError(
                f"column of obsm[{obsm_key!r}] (an array: give an index)", column, range(arr2.shape[1])
            ) from None
        if not -arr2.shape[1] <= j < arr2.shape[1]:
            raise KeyNotFoundError(f"column of obsm[{obsm_key!r}]", column, range(arr2.shape[1]))
        arr = arr2[:, j]
    return np.asarray(arr, dtype=np.float64), f"{obsm_key}:{column}"


def _unknown_color(adata: AnnData, key: str) -> KeyNotFoundError:
    candidates = [str(c) for c in adata.obs.columns] + [str(v) for v in adata.var_names]
    if "gene" in adata.var.columns:
        candidates += [str(v) for v in adata.var["gene"].astype(str)]
    for k, v in adata.obsm.items():
        if isinstance(v, pd.DataFrame):
            candidates += [f"{k}:{c}" for c in v.columns]
    close = difflib.get_close_matches(key, candidates, n=8, cutoff=0.5)
    if not close:  # case-insensitive prefix matches help with gene symbols
        low = key.lower()
        close = [c for c in candidates if c.lower().startswith(low[:3])][:8]
    return KeyNotFoundError(
        "colour key",
        key,
        close,
        hint=(
            "(close matches among obs columns, genes and obsm columns are shown; a colour key is an obs column, "
            "a gene symbol or id, or '<obsm key>:<column>')"
        ),
    )


def color_values(adata: AnnData, key: str | None, *, layer: str | None = None) -> ColorValues:
    """Resolve a colour key: an obs column, ``"<obsm key>:<column>"``, or a gene symbol/id."""
    if key is None:
        return ColorValues(None, "none", None, "")
    if not isinstance(key, str):
        raise InvalidInputError(f"a colour key must be a string; got {key!r}.")
    if ":" in key:
        obsm_key, column = key.rsplit(":", 1)
        if obsm_key in adata.obsm:
            vals, label = _obsm_column(adata, obsm_key, column)
            return ColorValues(key, "continuous", vals, label)
    if key in adata.obs.columns:
        col = adata.obs[key]
        if (
            isinstance(col.dtype, pd.CategoricalDtype)
            or col.dtype == object
            or pd.api.types.is_bool_dtype(col)
            or (pd.api.types.is_string_dtype(col))
        ):
            cat = col if isinstance(col.dtype, pd.CategoricalDtype) else col.astype("category")
            return ColorValues(key, "categorical", cat, key)
        if pd.api.types.is_numeric_dtype(col):
            return ColorValues(key, "continuous", col.to_numpy(dtype=np.float64, na_value=np.nan), key)
        raise InvalidInputError(f"obs column {key!r} has dtype {col.dtype}, which cannot be used as a colour.")
    try:
        (gene,) = resolve_genes(adata, key)
    except KeyNotFoundError:
        raise _unknown_color(adata, key) from None
    X = get_matrix(adata, layer)
    j = adata.var_names.get_loc(gene)
    col = X[:, j]
    col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
    label = key if key == gene else f"{key} ({gene})"
    return ColorValues(key, "continuous", np.asarray(col, dtype=np.float64).ravel(), label)


# --------------------------------------------------------------------------------------- palettes
def _natural_key(s: str) -> tuple:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s) if t)


def union_categories(columns: Sequence[pd.Series]) -> list[str]:
    """The union of the categories of several categorical columns (strings, natural order)."""
    seen: dict[str, None] = {}
    for col in columns:
        cats = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else pd.unique(col.dropna())
        for c in cats:
            seen.setdefault(str(c), None)
    return sorted(seen, key=_natural_key)


def make_palette(categories: Sequence[str], palette: Any = None) -> dict[str, Any]:
    """``{category: RGBA}`` for ``categories`` from a colormap name, a list of colours or a dict."""
    from matplotlib import colormaps
    from matplotlib.colors import to_rgba

    n = len(categories)
    if isinstance(palette, Mapping):
        pal = {str(k): v for k, v in palette.items()}
        missing = [c for c in categories if c not in pal]
        if missing:
            raise InvalidInputError(
                f"palette has no colour for categories {missing[:10]}; give a colour for every category."
            )
        try:
            return {c: to_rgba(pal[c]) for c in categories}
        except ValueError as e:
            raise InvalidInputError(f"invalid colour in palette: {e}") from None
    if palette is None:
        palette = "tab10" if n <= 10 else "tab20" if n <= 20 else None
        if palette is None:
            cmap = colormaps["turbo"]
            return {c: cmap(i / max(n - 1, 1)) for i, c in enumerate(categories)}
    if isinstance(palette, str):
        if palette not in colormaps:
            close = difflib.get_close_matches(palette, list(colormaps), n=5)
            raise KeyNotFoundError("palette (matplotlib colormap)", palette, close)
        cmap = colormaps[palette]
        listed = getattr(cmap, "colors", None)
        if listed is not None and len(listed) >= n:
            return {c: to_rgba(listed[i]) for i, c in enumerate(categories)}
        return {c: cmap(i / max(n - 1, 1)) for i, c in enumerate(categories)}
    if isinstance(palette, Sequence):
        if len(palette) < n:
            raise InvalidInputError(f"palette has {len(palette)} colours for {n} categories; give at least {n}.")
        try:
            return {c: to_rgba(palette[i]) for i, c in enumerate(categories)}
        except ValueError as e:
            raise InvalidInputError(f"invalid colour in palette: {e}") from None
    raise InvalidInputError(f"palette must be a colormap name, a list of colours or a dict; got {palette!r}.")


# --------------------------------------------------------------------------------------- colour limits
def color_limit(value: Any, data: np.ndarray, name: str) -> float | None:
    """``vmin``/``vmax`` from a number, None (data min/max) or a quantile string like ``'p99'``."""
    finite = data[np.isfinite(data)] if data is not None else np.array([])
    if value is None:
        if finite.size == 0:
            return None
        return float(finite.min() if name == "vmin" else finite.max())
    if isinstance(value, str):
        m = _QUANTILE.match(value.strip())
        if not m or not 0.0 <= float(m.group(1)) <= 100.0:
            raise InvalidInputError(
                f"{name}={value!r} is not a number or a quantile like 'p99' or 'p99.5' (percent, 0-100)."
            )
        if finite.size == 0:
            return None
        return float(np.percentile(finite, float(m.group(1))))
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        if not np.isfinite(value):
            raise InvalidInputError(f"{name} must be finite; got {value!r}.")
        return float(value)
    raise InvalidInputError(f"{name} must be a number, None or a quantile string like 'p99'; got {value!r}.")


def norm_for(values: np.ndarray, vmin: Any, vmax: Any):
    from matplotlib.colors import Normalize

    lo = color_limit(vmin, values, "vmin")
    hi = color_limit(vmax, values, "vmax")
    if lo is None or hi is None:
        lo, hi = 0.0, 1.0
    if hi < lo:
        raise InvalidInputError(f"vmin ({lo:g}) is larger than vmax ({hi:g}).")
    if hi == lo:
        hi = lo + 1e-9 if lo == 0 else lo + abs(lo) * 1e-9
    return Normalize(vmin=lo, vmax=hi)


def get_cmap(cmap: Any):
    from matplotlib import colormaps
    from matplotlib.colors import Colormap

    if isinstance(cmap, Colormap):
        return cmap
    if not isinstance(cmap, str) or cmap not in colormaps:
        close = difflib.get_close_matches(str(cmap), list(colormaps), n=5)
        raise KeyNotFoundError("colormap", cmap, close)
    return colormaps[cmap]


def missing_slot(what: str, key: str, available: Sequence[Any], fix: str) -> MissingSlotError:
    return MissingSlotError(f"{what} {key!r} not found; available: {list(available)}. {fix}")
