"""The panel renderer behind every spot plot: image layer, spot layer, colours, legends, grid.

Coordinates are full-resolution pixels (``obsm['spatial']``) whatever image is drawn: an image is
placed with its scale factor, so axis limits mean the same for ``hires`` and ``lowres``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experimat._errors import InvalidInputError, KeyNotFoundError, MissingSlotError
from experimat._keys import Key
from experimat.methods._checks import get_coordinates, get_obsm
from experimat.methods._image import parse_channels, resolve_image, select_channels, spatial_library

from ._utils import (
    NA_COLOR,
    ColorValues,
    check_figsize,
    color_values,
    get_cmap,
    make_palette,
    new_figure,
    norm_for,
    style_context,
    union_categories,
)

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: options of ``plot_embeddings`` with their defaults
EMBEDDING_DEFAULTS: dict[str, Any] = {
    "visible": True,
    "basis": Key.SPATIAL,
    "color": None,
    "ptsize": None,
    "cmap": "viridis",
    "vmin": None,
    "vmax": None,
    "palette": None,
    "alpha": 1.0,
    "legend": True,
    "layer": None,
    "na_color": NA_COLOR,
}


def embedding_options(plot_embeddings: Mapping[str, Any] | None, **defaults: Any) -> dict[str, Any]:
    opts = {**EMBEDDING_DEFAULTS, **defaults}
    if plot_embeddings is None:
        return opts
    if not isinstance(plot_embeddings, Mapping):
        raise InvalidInputError(
            f"plot_embeddings must be a dict of options {sorted(EMBEDDING_DEFAULTS)}; got {type(plot_embeddings).__name__}."
        )
    unknown = [k for k in plot_embeddings if k not in EMBEDDING_DEFAULTS]
    if unknown:
        raise KeyNotFoundError("plot_embeddings option", unknown[0], sorted(EMBEDDING_DEFAULTS))
    opts.update(plot_embeddings)
    alpha = opts["alpha"]
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha must be a number in [0, 1]; got {alpha!r}.")
    ptsize = opts["ptsize"]
    if ptsize is not None and (not isinstance(ptsize, (int, float)) or isinstance(ptsize, bool) or ptsize <= 0):
        raise InvalidInputError(f"ptsize must be a positive number (marker area in points^2) or None; got {ptsize!r}.")
    return opts


@dataclass
class Panel:
    sample: str
    color: str | None
    title: str


def is_spatial_basis(basis: str) -> bool:
    return basis == Key.SPATIAL or basis.startswith(Key.SPATIAL)


def _basis_coordinates(adata: AnnData, basis: str) -> np.ndarray:
    if is_spatial_basis(basis):
        return get_coordinates(adata, basis)[:, :2]
    key = basis
    if key not in adata.obsm and f"X_{key}" in adata.obsm:
        key = f"X_{key}"
    if key not in adata.obsm:
        raise MissingSlotError(
            f"embedding {basis!r} not found in obsm; available obsm keys: {list(adata.obsm.keys())}. "
            "Compute it first (e.g. scanpy.tl.umap writes obsm['X_umap'])."
        )
    xy = get_obsm(adata, key, min_dims=2)[:, :2].astype(np.float64)
    return xy


def check_range(value: Any, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a pair (min, max) in full-resolution pixels; got {value!r}.") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo >= hi:
        raise InvalidInputError(f"{name} must be (min, max) with min < max; got {value!r}.")
    return lo, hi


def _spot_diameter(adata: AnnData, sample: str, library_id: str | None) -> float | None:
    spatial = adata.uns.get(Key.SPATIAL)
    if not isinstance(spatial, Mapping) or not spatial:
        return None
    try:
        _, entry = spatial_library(adata, library_id, sample=sample)
    except (InvalidInputError, KeyNotFoundError):
        return None
    d = (entry.get("scalefactors") or {}).get("spot_diameter_fullres")
    try:
        d = float(d)
    except (TypeError, ValueError):
        return None
    return d if np.isfinite(d) and d > 0 else None


@dataclass
class _Image:
    array: np.ndarray
    extent: tuple[float, float, float, float]  # left, right, bottom, top in full-resolution pixels
    full: tuple[float, float, float, float]  # extent of the whole image (for range checks)
    key: str


def _load_image(
    adata: AnnData, sample: str, channels: Any, library_id: str | None, xr: tuple | None, yr: tuple | None
) -> _Image:
    res = resolve_image(adata, channels, library_id=library_id, sample=sample)
    used, img, s = res.key, res.image, res.scalefactor
    h, w = img.shape[:2]
    # pixel (i, j) of the image is centred on full-resolution point (j / s, i / s), as in scanpy
    full = (-0.5 / s, (w - 0.5) / s, (h - 0.5) / s, -0.5 / s)
    for rng, name, lo, hi, axis in ((xr, "xrange", full[0], full[1], "x"), (yr, "yrange", full[3], full[2], "y")):
        if rng is not None and (rng[1] <= lo or rng[0] >= hi):
            raise InvalidInputError(
                f"{name}={tuple(rng)} lies outside the image {used!r} of sample {sample!r}, which spans {axis} from "
                f"{lo:.0f} to {hi:.0f} (full-resolution pixels, the unit of obsm['spatial'])."
            )
    c0, c1, r0, r1 = 0, w, 0, h
    if xr is not None:
        c0 = max(0, math.floor(xr[0] * s)) if xr[0] > 0 else 0
        c1 = min(w, math.ceil(xr[1] * s) + 1)
    if yr is not None:
        r0 = max(0, math.floor(yr[0] * s)) if yr[0] > 0 else 0
        r1 = min(h, math.ceil(yr[1] * s) + 1)
    crop = select_channels(img[r0:r1, c0:c1], res.channels, used)
    extent = ((c0 - 0.5) / s, (c1 - 0.5) / s, (r1 - 0.5) / s, (r0 - 0.5) / s)
    return _Image(crop, extent, full, used)


def _resolve_values(
    adatas: Mapping[str, AnnData], panels: list[Panel], layer: str | None, resolver: Callable | None
) -> dict[tuple[str, str | None], ColorValues]:
    out: dict[tuple[str, str | None], ColorValues] = {}
    for p in panels:
        k = (p.sample, p.color)
        if k in out:
            continue
        ad = adatas[p.sample]
        out[k] = resolver(p.sample, ad, p.color) if resolver is not None else color_values(ad, p.color, layer=layer)
    return out


def grid_layout(samples: Sequence[str], colors: Sequence[str | None], ncols: int | None) -> list[list[Panel | None]]:
    """Rows of panels: samples x colours; a single sample or colour wraps into ``ncols`` columns."""

    def title(s: str, c: str | None) -> str:
        parts = [x for x in (s if len(samples) > 1 or c is None else "", c or "") if x]
        return ": ".join(parts)

    if ncols is not None and (not isinstance(ncols, (int, np.integer)) or isinstance(ncols, bool) or ncols < 1):
        raise InvalidInputError(f"ncols must be a positive integer or None; got {ncols!r}.")
    if len(samples) > 1 and len(colors) > 1:
        return [[Panel(s, c, title(s, c)) for c in colors] for s in samples]
    flat = [Panel(s, c, title(s, c)) for s in samples for c in colors]
    n = len(flat)
    nc = ncols or min(n, 4)
    rows: list[list[Panel | None]] = []
    for i in range(0, n, nc):
        row: list[Panel | None] = list(flat[i : i + nc])
        row += [None] * (nc - len(row))
        rows.append(row)
    return rows


def render(
    adatas: Mapping[str, AnnData],
    rows: list[list[Panel | None]],
    *,
    opts: Mapping[str, Any],
    channels: Any = None,
    library_id: str | None = None,
    xrange: Any = None,
    yrange: Any = None,
    figsize: Any = None,
    share_scale: bool = False,
    img_cmap: Any = "gray",
    img_alpha: float = 1.0,
    palettes: Mapping[str, Mapping[str, Any]] | None = None,
    resolver: Callable[[str, AnnData, str | None], ColorValues] | None = None,
    panel_size: tuple[float, float] = (4.0, 3.6),
) -> Figure:
    """Draw a grid of panels (one AnnData sample and one colour key each) and return the figure."""
    from matplotlib.colors import to_rgba

    basis = opts["basis"]
    spatial, xr, yr, figsize = _check_render_options(basis, channels, img_alpha, xrange, yrange, figsize)
    show_spots = bool(opts["visible"])
    panels = [p for row in rows for p in row if p is not None]
    cmap = get_cmap(opts["cmap"]).with_extremes(bad=opts["na_color"])
    values = _resolve_values(adatas, panels, opts["layer"], resolver) if show_spots else {}
    palettes, shared_norms = _color_scales(panels, values, opts, palettes, share_scale)

    nrows, ncols = len(rows), max(len(r) for r in rows)
    if figsize is None:
        figsize = (panel_size[0] * ncols, panel_size[1] * nrows)
    with style_context():
        fig = new_figure(figsize)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        shared: dict[str | None, list] = {}  # colour key -> [mappable, axes] of a shared colour bar
        for i, row in enumerate(rows):
            for j in range(ncols):
                ax = axes[i, j]
                panel = row[j] if j < len(row) else None
                if panel is None:
                    ax.set_axis_off()
                    continue
                adata = adatas[panel.sample]
                xy = _basis_coordinates(adata, basis)
                image = None
                if channels is not None:
                    image = _load_image(adata, panel.sample, channels, library_id, xr, yr)
                    _draw_image(ax, image, img_cmap, img_alpha)
                diameter = _spot_diameter(adata, panel.sample, library_id) if spatial else None
                if spatial and image is None:
                    _check_spots_in_range(xy, xr, yr, panel.sample)
                if show_spots:
                    cv = values[(panel.sample, panel.color)]
                    norm = shared_norms.get(panel.color)
                    mappable = _draw_spots(ax, xy, cv, opts, diameter=diameter, palette=palettes.get(panel.color),
                                           cmap=cmap, norm=norm, to_rgba=to_rgba)
                    if cv.kind == "continuous" and opts["legend"]:
                        if norm is not None:
                            entry = shared.setdefault(panel.color, [None, []])
                            entry[0] = mappable  # the colour bar of the last panel (all share the norm)
                            entry[1].append(ax)
                        else:
                            fig.colorbar(mappable, ax=ax, shrink=0.7, pad=0.02)
                    elif cv.kind == "categorical" and opts["legend"]:
                        _legend(ax, cv, palettes[panel.color])
                _set_limits(ax, xy, image, diameter, xr, yr, spatial, show_spots)
                _style_axes(ax, panel.title, basis, spatial)
        for mappable, axs in shared.values():
            fig.colorbar(mappable, ax=axs, shrink=0.7, pad=0.02)
    return fig


def _check_render_options(basis: Any, channels: Any, img_alpha: Any, xrange: Any, yrange: Any,
                          figsize: Any) -> tuple[bool, tuple | None, tuple | None, Any]:
    """Validate the drawing options before any work: ``(spatial basis?, xrange, yrange, figsize)``."""
    if not isinstance(basis, str):
        raise InvalidInputError(f"basis must be an obsm key such as 'spatial' or 'X_umap'; got {basis!r}.")
    spatial = is_spatial_basis(basis)
    if channels is not None and not spatial:
        raise InvalidInputError(f"channels (an image) can only be drawn with basis='spatial', not {basis!r}.")
    if channels is not None:
        parse_channels(channels)
    if not 0.0 <= float(img_alpha) <= 1.0:
        raise InvalidInputError(f"img_alpha must be in [0, 1]; got {img_alpha!r}.")
    xr, yr = check_range(xrange, "xrange"), check_range(yrange, "yrange")
    if (xr is not None or yr is not None) and not spatial:
        raise InvalidInputError("xrange/yrange are full-resolution pixel ranges and need basis='spatial'.")
    return spatial, xr, yr, check_figsize(figsize)


def _color_scales(panels: list[Panel], values: Mapping[tuple[str, str | None], ColorValues], opts: Mapping[str, Any],
                  palettes: Mapping[str, Mapping[str, Any]] | None, share_scale: bool) -> tuple[dict, dict]:
    """Per colour key: a palette (categorical, shared by all samples) or a shared norm (continuous,
    with ``share_scale``). Returns ``(palettes, norms)``."""
    palettes = dict(palettes or {})
    shared_norms: dict[str | None, Any] = {}
    for color in dict.fromkeys(p.color for p in panels):
        vals = [v for (s, c), v in values.items() if c == color]
        kinds = {v.kind for v in vals}
        if len(kinds) > 1:
            raise InvalidInputError(
                f"colour key {color!r} is categorical in some samples and numeric in others; make the obs column "
                "the same type in every sample."
            )
        if kinds == {"categorical"}:
            palettes[color] = make_palette(union_categories([v.values for v in vals]), palettes.get(color, opts["palette"]))
        elif kinds == {"continuous"} and share_scale:
            shared_norms[color] = norm_for(np.concatenate([v.values for v in vals]), opts["vmin"], opts["vmax"])
    return palettes, shared_norms


def _draw_image(ax, image: _Image, img_cmap: Any, img_alpha: float) -> None:
    ax.imshow(
        image.array,
        extent=image.extent,
        origin="upper",
        cmap=get_cmap(img_cmap) if image.array.ndim == 2 else None,
        alpha=float(img_alpha),
        interpolation="antialiased",
        zorder=0,
    )


def _style_axes(ax, title: str, basis: str, spatial: bool) -> None:
    """Title, no ticks; embeddings get axis labels (``UMAP1`` / ``UMAP2``)."""
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if not spatial:
        name = basis[2:] if basis.startswith("X_") else basis
        ax.set_xlabel(f"{name.upper()}1")
        ax.set_ylabel(f"{name.upper()}2")


def _check_spots_in_range(xy: np.ndarray, xr: tuple | None, yr: tuple | None, sample: str) -> None:
    if xr is None and yr is None:
        return
    inside = np.ones(len(xy), dtype=bool)
    if xr is not None:
        inside &= (xy[:, 0] >= xr[0]) & (xy[:, 0] <= xr[1])
    if yr is not None:
        inside &= (xy[:, 1] >= yr[0]) & (xy[:, 1] <= yr[1])
    if not inside.any():
        raise InvalidInputError(
            f"no spot of sample {sample!r} lies within xrange={xr}, yrange={yr}; spots span x "
            f"{xy[:, 0].min():.0f}-{xy[:, 0].max():.0f} and y {xy[:, 1].min():.0f}-{xy[:, 1].max():.0f} "
            "(full-resolution pixels)."
        )


#: spot layers with more spots are rasterised (vector PDFs of 500,000 Visium HD bins stay small and fast)
RASTERIZE_ABOVE = 20_000


def _draw_spots(
    ax: Axes, xy: np.ndarray, cv: ColorValues, opts: Mapping[str, Any], *, diameter, palette, cmap, norm, to_rgba
):
    from ._spot_raster import draw_spot_raster, use_raster

    if use_raster(len(xy), diameter, opts):  # hundreds of thousands of spots: one aggregated image
        return draw_spot_raster(ax, xy, cv, opts, diameter=diameter, palette=palette, cmap=cmap, norm=norm, to_rgba=to_rgba)
    artist = _draw_spots_artist(ax, xy, cv, opts, diameter=diameter, palette=palette, cmap=cmap, norm=norm, to_rgba=to_rgba)
    if len(xy) > RASTERIZE_ABOVE:
        artist.set_rasterized(True)
    return artist


def _draw_spots_artist(
    ax: Axes, xy: np.ndarray, cv: ColorValues, opts: Mapping[str, Any], *, diameter, palette, cmap, norm, to_rgba
):
    from matplotlib.collections import EllipseCollection

    n = len(xy)
    order = np.arange(n)
    face = None
    array = None
    if cv.kind == "none":
        face = np.tile(to_rgba("#5b6e8c"), (n, 1))
    elif cv.kind == "rgba":
        face = np.asarray(cv.values, dtype=float)
    elif cv.kind == "categorical":
        na = to_rgba(opts["na_color"])
        cat = pd.Categorical(cv.values)
        table = np.array([palette.get(str(c), na) for c in cat.categories] + [na], dtype=float).reshape(-1, 4)
        face = table[cat.codes]  # code -1 (missing) picks the last row, na_color
    else:
        vals = np.asarray(cv.values, dtype=np.float64)
        if norm is None:
            norm = norm_for(vals, opts["vmin"], opts["vmax"])
        # NaN first, then ascending, so that high values are drawn on top
        order = np.lexsort((vals, ~np.isnan(vals)))
        array = vals[order]
    xy = xy[order]
    if face is not None:
        face = face[order]
        face[:, 3] = face[:, 3] * float(opts["alpha"])
    ptsize = opts["ptsize"]
    if ptsize is None and diameter is not None:
        # circles of the spot's true diameter in data units: right at any figure size and zoom
        coll = EllipseCollection(
            np.full(n, diameter),
            np.full(n, diameter),
            np.zeros(n),
            units="xy",
            offsets=xy,
            offset_transform=ax.transData,
            linewidths=0,
        )
        coll.set_zorder(2)
        if array is not None:
            coll.set_array(array)
            coll.set_cmap(cmap)
            coll.set_norm(norm)
            coll.set_alpha(float(opts["alpha"]))
        else:
            coll.set_facecolor(face)
        ax.add_collection(coll, autolim=False)
        return coll
    size = float(ptsize) if ptsize is not None else float(min(120000.0 / max(n, 1), 40.0))
    if array is not None:
        return ax.scatter(
            xy[:, 0],
            xy[:, 1],
            c=array,
            s=size,
            cmap=cmap,
            norm=norm,
            linewidths=0,
            alpha=float(opts["alpha"]),
            plotnonfinite=True,
            zorder=2,
        )
    return ax.scatter(xy[:, 0], xy[:, 1], c=face, s=size, linewidths=0, zorder=2)


def _legend(ax: Axes, cv: ColorValues, palette: Mapping[str, Any]) -> None:
    from matplotlib.lines import Line2D

    present = {str(v) for v in pd.unique(cv.values.astype(object)) if not pd.isna(v)}
    cats = [c for c in palette if c in present]
    handles = [Line2D([], [], marker="o", linestyle="", color=palette[c], markersize=6, label=c) for c in cats]
    if handles:
        ax.legend(
            handles=handles,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
            ncols=max(1, math.ceil(len(handles) / 16)),
            title=cv.label,
            handletextpad=0.2,
        )


def _set_limits(
    ax: Axes, xy: np.ndarray, image: _Image | None, diameter: float | None, xr, yr, spatial: bool, show_spots: bool
) -> None:
    if not spatial:
        return
    if show_spots and len(xy):
        lo, hi = xy.min(0), xy.max(0)
        pad = max(diameter or 0.0, 0.03 * float(max(hi - lo))) if len(xy) > 1 else (diameter or 1.0)
        x0, x1, y0, y1 = lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad
    elif image is not None:
        x0, x1, y1, y0 = image.full
    else:
        x0, x1, y0, y1 = 0.0, 1.0, 0.0, 1.0
    if xr is not None:
        x0, x1 = xr
    if yr is not None:
        y0, y1 = yr
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)  # image convention: y grows downwards
