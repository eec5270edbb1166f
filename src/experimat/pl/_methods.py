"""Figures of the methods' results: SVG patterns, domains, deconvolution, embeddings (LOCAT: ``_locat.py``).

They read the slots the methods write (``obsm['aeh']``, ``obs['spagcn.domain']``,
``var['locat.*']``, ``obsm['cell2location.q05']``) and never modify the AnnData.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experimat._compat import renamed_options
from experimat._errors import InvalidInputError, KeyNotFoundError, MissingSlotError
from experimat._keys import Key

from ._render import Panel, embedding_options, grid_layout, is_spatial_basis, render
from ._utils import ColorValues, as_adata_dict, as_key_list, color_limit, make_palette, union_categories

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.figure import Figure

#: colours of plot_abundance_blend (as cell2location's multi-type plot: colour-blind safe, Okabe-Ito)
BLEND_COLORS = ("#F0E442", "#D55E00", "#56B4E9", "#009E73", "#5A14A5", "#C8C8C8", "#323232")


def _rows_per_sample(per_sample: Mapping[str, list[Panel]], ncols: int | None) -> list[list[Panel | None]]:
    """One sample: its panels wrapped into ``ncols``; several: one row per sample."""
    if ncols is not None and (not isinstance(ncols, (int, np.integer)) or isinstance(ncols, bool) or ncols < 1):
        raise InvalidInputError(f"ncols must be a positive integer or None; got {ncols!r}.")
    lists = [p for p in per_sample.values()]
    if len(lists) == 1:
        flat = lists[0]
        nc = ncols or min(len(flat), 4)
        rows = [list(flat[i : i + nc]) for i in range(0, len(flat), nc)]
    else:
        rows = [list(p) for p in lists]
    width = max(len(r) for r in rows)
    return [r + [None] * (width - len(r)) for r in rows]


def _obsm_frame(adata: AnnData, key: str, sample: str, fix: str) -> pd.DataFrame:
    if key not in adata.obsm:
        raise MissingSlotError(
            f"obsm[{key!r}] not found in sample {sample!r}; available obsm keys: {list(adata.obsm.keys())}. {fix}"
        )
    value = adata.obsm[key]
    if isinstance(value, pd.DataFrame):
        return value
    arr = np.asarray(value)
    if arr.ndim != 2:
        raise InvalidInputError(f"obsm[{key!r}] must be 2-D; got shape {arr.shape}.")
    return pd.DataFrame(arr, index=adata.obs_names, columns=[str(i) for i in range(arr.shape[1])])


def _split(basis: Any) -> bool:
    """Integrated data are drawn one panel per sample on spatial coordinates (not on an embedding, nor on the
    already tiled ``spatial.tiled``)."""
    return isinstance(basis, str) and is_spatial_basis(basis) and basis != "spatial.tiled"


def _prefix(sample: str, n_samples: int) -> str:
    return f"{sample}: " if n_samples > 1 and sample else ""


# --------------------------------------------------------------------------------------- SVG patterns
@renamed_options(key="patterns_key")
def plot_patterns(
    adata: AnnData | Mapping[str, AnnData],
    patterns_key: str = "aeh",
    *,
    channels: str | Sequence[str] | None = None,
    basis: str = Key.SPATIAL,
    cmap: str = "viridis",
    vmin: float | str | None = None,
    vmax: float | str | None = None,
    ptsize: float | None = None,
    ncols: int | None = None,
    figsize: tuple[float, float] | None = None,
    library_id: str | None = None,
) -> Figure:
    """One panel per spatial expression pattern (AEH histology patterns of SpatialDE).

    Parameters
    ----------
    adata
        One AnnData or ``{sample: AnnData}`` (one row per sample).
    patterns_key
        ``obsm[patterns_key]``: a DataFrame (or array) of pattern values per spot, columns ``"0" .. "C-1"``.
        When ``var[f"{patterns_key}.pattern"]`` exists, each title gives the number of genes in the pattern.
        Deprecated alias: ``key=``.
    channels
        Image channels to draw under the spots (see :func:`plot_spatial`), or None.
    basis, cmap, vmin, vmax, ptsize
        Spot layer options as in :func:`plot_spatial` (``vmin``/``vmax`` may be ``'p99'``-style).
    ncols, figsize, library_id
        Grid width for one sample, figure size in inches, ``uns['spatial']`` key.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import experimat as em, pandas as pd, numpy as np
    >>> adata = em.datasets.synthetic_svg(200, 20, n_spatial=5)
    >>> adata.obsm["aeh"] = pd.DataFrame(np.random.rand(200, 3), index=adata.obs_names, columns=["0", "1", "2"])
    >>> fig = em.pl.plot_patterns(adata, patterns_key="aeh")
    """
    samples = as_adata_dict(adata, what="adata", split_samples=_split(basis))
    per_sample = {}
    for name, ad in samples.items():
        frame = _obsm_frame(
            ad, patterns_key, name, "Run the AEH pattern step of the SVG analysis first (it writes obsm['aeh'])."
        )
        counts = None
        membership = f"{patterns_key}.pattern"
        if membership in ad.var.columns:
            counts = ad.var[membership].astype(str).value_counts()
        panels = []
        for c in frame.columns:
            title = f"{_prefix(name, len(samples))}pattern {c}"
            if counts is not None:
                title += f" ({int(counts.get(str(c), 0))} genes)"
            panels.append(Panel(name, f"{patterns_key}:{c}", title))
        per_sample[name] = panels
    opts = embedding_options({"basis": basis, "cmap": cmap, "vmin": vmin, "vmax": vmax, "ptsize": ptsize})
    return render(
        samples,
        _rows_per_sample(per_sample, ncols),
        opts=opts,
        channels=channels,
        library_id=library_id,
        figsize=figsize,
    )


# --------------------------------------------------------------------------------------- domains
@renamed_options(keys="domain_keys")
def plot_domains(
    adata: AnnData | Mapping[str, AnnData],
    domain_keys: str | Sequence[str] = ("spagcn.domain", "spagcn.refined"),
    *,
    channels: str | Sequence[str] | None = None,
    palette: Any = None,
    ptsize: float | None = None,
    legend: bool = True,
    xrange: tuple[float, float] | None = None,
    yrange: tuple[float, float] | None = None,
    figsize: tuple[float, float] | None = None,
    library_id: str | None = None,
) -> Figure:
    """Spatial domain maps, e.g. before and after refinement, side by side (rows: samples).

    One palette covers the union of the categories of every key and sample, so domain ``"3"``
    has the same colour before/after refinement and in every sample.

    Parameters
    ----------
    adata
        One AnnData or ``{sample: AnnData}``.
    domain_keys
        Categorical obs columns of the domains (default SpaGCN's ``spagcn.domain`` and ``spagcn.refined``);
        a key missing from any sample is an error. Deprecated alias: ``keys=``.
    channels
        Image channels under the spots (see :func:`plot_spatial`), or None.
    palette
        Colormap name, list of colours or ``{domain: colour}``; None picks tab10/tab20.
    ptsize, legend, xrange, yrange, figsize, library_id
        As in :func:`plot_spatial`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import experimat as em
    >>> adata = em.datasets.synthetic_domains(300, 3, 50, n_markers_per_domain=5)
    >>> fig = em.pl.plot_domains(adata, domain_keys=["domain"])
    """
    samples = as_adata_dict(adata, what="adata", split_samples=True)
    keys = [k for k in as_key_list(domain_keys, "domain_keys") if k is not None]
    cols = []
    for name, ad in samples.items():
        for k in keys:
            if k not in ad.obs.columns:
                raise KeyNotFoundError(
                    f"obs column (domains) in sample {name!r}",
                    k,
                    [c for c in ad.obs.columns if isinstance(ad.obs[c].dtype, pd.CategoricalDtype)] or ad.obs.columns,
                    hint="Run the domain detection first (e.g. SpaGCN writes obs['spagcn.domain'/'spagcn.refined']).",
                )
            col = ad.obs[k]
            if pd.api.types.is_float_dtype(col):
                raise InvalidInputError(f"obs[{k!r}] holds floats; domains must be categorical labels.")
            cols.append(col.astype("category") if not isinstance(col.dtype, pd.CategoricalDtype) else col)
    shared = make_palette(union_categories(cols), palette)

    def resolver(sample: str, ad: AnnData, key: str | None) -> ColorValues:
        col = ad.obs[key]
        col = col if isinstance(col.dtype, pd.CategoricalDtype) else col.astype(str).astype("category")
        return ColorValues(key, "categorical", col, key or "")

    opts = embedding_options({"ptsize": ptsize, "legend": legend})
    return render(
        samples,
        grid_layout(list(samples), keys, None),
        opts=opts,
        channels=channels,
        library_id=library_id,
        xrange=xrange,
        yrange=yrange,
        figsize=figsize,
        palettes=dict.fromkeys(keys, shared),
        resolver=resolver,
    )


# --------------------------------------------------------------------------------------- LOCAT
def _types_of(samples: Mapping[str, AnnData], key: str, types: Sequence[str] | str | None) -> list[str]:
    frames = {
        name: _obsm_frame(
            ad, key, name, "Run the deconvolution first (cell2location writes obsm['cell2location.q05'])."
        )
        for name, ad in samples.items()
    }
    if types is None:
        return [str(c) for c in next(iter(frames.values())).columns]
    types = [str(t) for t in as_key_list(types, "types") if t is not None]
    for name, fr in frames.items():
        cols = [str(c) for c in fr.columns]
        for t in types:
            if t not in cols:
                import difflib

                raise KeyNotFoundError(
                    f"cell type in obsm[{key!r}] of sample {name!r}", t, difflib.get_close_matches(t, cols, n=5) or cols
                )
    return types


@renamed_options(key="abundance_key")
def plot_abundance(
    adata: AnnData | Mapping[str, AnnData],
    abundance_key: str = "cell2location.q05",
    types: Sequence[str] | str | None = None,
    *,
    channels: str | Sequence[str] | None = None,
    cmap: str = "magma",
    vmin: float | str | None = 0.0,
    vmax: float | str | None = "p99.2",
    share_scale: bool = False,
    ptsize: float | None = None,
    ncols: int | None = None,
    xrange: tuple[float, float] | None = None,
    yrange: tuple[float, float] | None = None,
    figsize: tuple[float, float] | None = None,
    library_id: str | None = None,
) -> Figure:
    """Cell-type abundance maps, one panel per type (rows: samples when several are given).

    Parameters
    ----------
    adata
        One AnnData or ``{sample: AnnData}``.
    abundance_key
        ``obsm[abundance_key]``: a DataFrame of abundances (spots x types), e.g. ``"cell2location.q05"``.
        Deprecated alias: ``key=``.
    types
        Columns to draw (None: all).
    channels
        Image channels under the spots (see :func:`plot_spatial`), or None.
    cmap, vmin, vmax
        Colour scale; the default upper limit is the 99.2 % quantile, as in cell2location's tutorial.
    share_scale
        One colour scale per type over all samples.
    ptsize, ncols, xrange, yrange, figsize, library_id
        As in :func:`plot_spatial`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = em.pl.plot_abundance(adata, "cell2location.q05", types=["astrocytes"])  # doctest: +SKIP
    """
    samples = as_adata_dict(adata, what="adata", split_samples=True)
    type_list = _types_of(samples, abundance_key, types)
    rows = grid_layout(list(samples), [f"{abundance_key}:{t}" for t in type_list], ncols)
    for row in rows:
        for p in row:
            if p is not None:
                p.title = f"{_prefix(p.sample, len(samples))}{p.color.split(':', 1)[1] if p.color else ''}"
    opts = embedding_options({"cmap": cmap, "vmin": vmin, "vmax": vmax, "ptsize": ptsize})
    return render(
        samples,
        rows,
        opts=opts,
        channels=channels,
        library_id=library_id,
        xrange=xrange,
        yrange=yrange,
        figsize=figsize,
        share_scale=share_scale,
    )


def blend_colors(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, colors: Sequence[Any]) -> np.ndarray:
    """RGBA per spot mixing type colours as paint (weighted geometric mean, weights w²).

    ``w = clip((v - lo) / (hi - lo), 0, 1)`` per type; opacity is the largest ``w``, so spots
    without any of the types stay transparent.
    """
    from matplotlib.colors import to_rgb

    rgb = np.array([to_rgb(c) for c in colors], dtype=float)  # (T, 3)
    span = np.where(hi > lo, hi - lo, 1.0)
    w = np.clip((values - lo) / span, 0.0, 1.0)
    w[~np.isfinite(w)] = 0.0
    k = w**2
    total = k.sum(1, keepdims=True)
    logc = np.log(np.clip(rgb, 1.0 / 255.0, 1.0))
    mix = np.exp((k @ logc) / np.where(total > 0, total, 1.0))
    mix[total[:, 0] == 0] = 0.0
    return np.column_stack([np.clip(mix, 0.0, 1.0), w.max(1)])


@renamed_options(key="abundance_key")
def plot_abundance_blend(
    adata: AnnData | Mapping[str, AnnData],
    abundance_key: str = "cell2location.q05",
    types: Sequence[str] | None = None,
    *,
    channels: str | Sequence[str] | None = None,
    colors: Sequence[Any] | None = None,
    vmin: float | str | None = None,
    vmax: float | str | None = "p98",
    ptsize: float | None = None,
    xrange: tuple[float, float] | None = None,
    yrange: tuple[float, float] | None = None,
    figsize: tuple[float, float] | None = None,
    library_id: str | None = None,
) -> Figure:
    """Several cell types blended in one panel per sample, as cell2location's multi-type plot.

    Each type has a colour whose opacity grows with its abundance; a spot's colour mixes the
    types' colours as paint, weighted by the squared scaled abundances. One colour bar per type.

    Parameters
    ----------
    adata
        One AnnData or ``{sample: AnnData}`` (one panel per sample; limits shared by all samples).
    abundance_key
        ``obsm[abundance_key]`` DataFrame of abundances, e.g. ``"cell2location.q05"``. Deprecated alias: ``key=``.
    types
        Up to 7 columns of ``obsm[abundance_key]`` (required when it has more than 7).
    channels
        Image channels under the spots; None draws the spots on a black background.
    colors
        One colour per type; default :data:`BLEND_COLORS` (yellow, orange, blue, green, purple, grey, dark).
    vmin, vmax
        Per-type limits: number, None (data min/max) or a quantile like ``'p98'`` (default, as cell2location).
    ptsize, xrange, yrange, figsize, library_id
        As in :func:`plot_spatial`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = em.pl.plot_abundance_blend(adata, types=["astro", "neuron", "oligo"])  # doctest: +SKIP
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize, to_rgba

    samples = as_adata_dict(adata, what="adata", split_samples=True)
    type_list = _types_of(samples, abundance_key, types)
    if not 1 <= len(type_list) <= len(BLEND_COLORS):
        raise InvalidInputError(
            f"plot_abundance_blend mixes 1 to {len(BLEND_COLORS)} types; got {len(type_list)}. Pass types=[...] "
            "(use plot_abundance for one panel per type)."
        )
    colors = list(colors) if colors is not None else list(BLEND_COLORS[: len(type_list)])
    if len(colors) < len(type_list):
        raise InvalidInputError(f"colors has {len(colors)} entries for {len(type_list)} types.")
    try:
        [to_rgba(c) for c in colors]
    except ValueError as e:
        raise InvalidInputError(f"invalid colour in colors: {e}") from None
    mats = {n: _obsm_frame(ad, abundance_key, n, "")[type_list].to_numpy(dtype=float) for n, ad in samples.items()}
    allv = np.concatenate(list(mats.values()))
    lo = np.array([color_limit(vmin, allv[:, t], "vmin") or 0.0 for t in range(len(type_list))])
    hi = np.array([color_limit(vmax, allv[:, t], "vmax") or 0.0 for t in range(len(type_list))])

    def resolver(sample: str, ad: AnnData, color: str | None) -> ColorValues:
        return ColorValues(color, "rgba", blend_colors(mats[sample], lo, hi, colors), "")

    rows = grid_layout(list(samples), [f"{abundance_key}"], None)
    for row in rows:
        for p in row:
            if p is not None:
                p.title = f"{_prefix(p.sample, len(samples))}{', '.join(type_list)}"
    opts = embedding_options({"ptsize": ptsize, "legend": False})
    if figsize is None:
        figsize = (4.0 * len(rows[0]) + 0.75 * len(type_list), 3.6 * len(rows))
    fig = render(
        samples,
        rows,
        opts=opts,
        channels=channels,
        library_id=library_id,
        xrange=xrange,
        yrange=yrange,
        figsize=figsize,
        resolver=resolver,
    )
    panel_axes = [ax for ax in fig.axes if ax.axison]
    if channels is None:
        for ax in panel_axes:
            ax.set_facecolor("black")
    for t, c in reversed(list(zip(type_list, colors))):  # the first type ends up next to the panels
        rgba = to_rgba(c)
        cm = LinearSegmentedColormap.from_list(f"blend_{t}", [(*rgba[:3], 0.0), (*rgba[:3], 1.0)])
        top = hi[type_list.index(t)]
        bottom = lo[type_list.index(t)]
        sm = ScalarMappable(norm=Normalize(bottom, top if top > bottom else bottom + 1e-9), cmap=cm)
        cb = fig.colorbar(sm, ax=panel_axes, shrink=0.6, fraction=0.03, pad=0.01, extend="max")
        cb.set_label(t)
    return fig


# --------------------------------------------------------------------------------------- embeddings
def plot_embedding(
    adata: AnnData | Mapping[str, AnnData],
    basis: str = "X_umap",
    *,
    color: str | Sequence[str] | None = None,
    layer: str | None = None,
    ptsize: float | None = None,
    cmap: str = "viridis",
    vmin: float | str | None = None,
    vmax: float | str | None = None,
    palette: Any = None,
    legend: bool = True,
    share_scale: bool = False,
    ncols: int | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Scatter of an embedding (UMAP, PCA, ...) coloured like :func:`plot_spatial`.

    Parameters
    ----------
    adata
        One AnnData or ``{sample: AnnData}`` (one panel per sample).
    basis
        obsm key (``"X_umap"``; ``"umap"`` also finds ``X_umap``).
    color
        Obs column, gene symbol/id, ``"<obsm key>:<column>"``, a list of them (one panel each), or None.
    layer, ptsize, cmap, vmin, vmax, palette, legend, share_scale, ncols, figsize
        As in :func:`plot_spatial`'s ``plot_embeddings``; ``ptsize`` defaults to ``min(120000 / n, 40)``.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = em.pl.plot_embedding(adata, "X_umap", color="leiden")  # doctest: +SKIP
    """
    samples = as_adata_dict(adata, what="adata", split_samples=_split(basis))
    opts = embedding_options(
        {
            "basis": basis,
            "color": color,
            "layer": layer,
            "ptsize": ptsize,
            "cmap": cmap,
            "vmin": vmin,
            "vmax": vmax,
            "palette": palette,
            "legend": legend,
        }
    )
    colors = as_key_list(color, "color")
    return render(
        samples, grid_layout(list(samples), colors, ncols), opts=opts, figsize=figsize, share_scale=share_scale
    )
