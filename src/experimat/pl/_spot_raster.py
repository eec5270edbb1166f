"""Spot layers of hundreds of thousands of spots drawn as one image (Visium HD bins, imaging cells).

Above :data:`AGGREGATE_ABOVE` spots of known diameter, the spots are binned on a square grid
whose cell is the spot diameter (a Visium HD bin falls in one cell of its own) and drawn with
``imshow``: a continuous value is the mean of the spots in the cell, a category the most frequent
one, fixed colours their mean. Circles of 500,000 bins cover less than a screen pixel each and
blend with the tissue image behind them; the image is resampled by matplotlib (antialiased) to
the output resolution, so the pattern stays readable at any size, the file is a raster, and
drawing takes about a second. Cells without spots are transparent (the tissue image shows).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: spot layers with more spots (and a known diameter) are drawn as one aggregated image
AGGREGATE_ABOVE = 100_000
#: the grid has at most this many cells per side (coarser cells above)
MAX_CELLS = 4000
#: gid of the image artist (tests and benchmarks find the spot layer by it)
GID = "experimat-spot-raster"


def _grid(xy: np.ndarray, diameter: float) -> tuple[np.ndarray, int, int, tuple[float, float, float, float]]:
    lo = xy.min(0) - diameter / 2
    span = xy.max(0) + diameter / 2 - lo
    cell = max(float(diameter), float(span.max()) / MAX_CELLS)
    nx, ny = max(1, math.ceil(span[0] / cell)), max(1, math.ceil(span[1] / cell))
    ix = np.minimum(((xy[:, 0] - lo[0]) / cell).astype(np.int64), nx - 1)
    iy = np.minimum(((xy[:, 1] - lo[1]) / cell).astype(np.int64), ny - 1)
    extent = (lo[0], lo[0] + nx * cell, lo[1] + ny * cell, lo[1])  # left, right, bottom, top (y down, as the image)
    return iy * nx + ix, nx, ny, extent


def _mean_rgba(flat: np.ndarray, face: np.ndarray, n_cells: int) -> np.ndarray:
    count = np.bincount(flat, minlength=n_cells)
    out = np.zeros((n_cells, 4))
    for k in range(4):
        out[:, k] = np.bincount(flat, weights=face[:, k], minlength=n_cells)
    out[count > 0] /= count[count > 0, None]
    return out


def _majority(flat: np.ndarray, codes: np.ndarray, n_cells: int) -> np.ndarray:
    """The most frequent code per cell (-2 where the cell is empty; -1 stands for missing values)."""
    key, counts = np.unique(flat * (codes.max(initial=0) + 2) + (codes + 1), return_counts=True)
    cell, code = np.divmod(key, codes.max(initial=0) + 2)
    best = np.lexsort((-counts, cell))  # per cell, the largest count first
    first = np.ones(best.size, dtype=bool)
    first[1:] = cell[best][1:] != cell[best][:-1]
    out = np.full(n_cells, -2, dtype=np.int64)
    out[cell[best][first]] = code[best][first] - 1
    return out


def draw_spot_raster(ax: Axes, xy: np.ndarray, cv, opts, *, diameter: float, palette, cmap, norm, to_rgba):
    """Draw the spots as one aggregated image (see the module docstring); returns the image artist."""
    from .._errors import InvalidInputError
    from ._utils import norm_for

    flat, nx, ny, extent = _grid(np.asarray(xy, dtype=np.float64), float(diameter))
    n_cells = nx * ny
    alpha = float(opts["alpha"])
    if cv.kind == "continuous":
        vals = np.asarray(cv.values, dtype=np.float64)
        ok = np.isfinite(vals)
        total = np.bincount(flat[ok], weights=vals[ok], minlength=n_cells)
        count = np.bincount(flat[ok], minlength=n_cells)
        grid = np.full(n_cells, np.nan)
        grid[count > 0] = total[count > 0] / count[count > 0]
        if norm is None:
            norm = norm_for(vals, opts["vmin"], opts["vmax"])
        image = np.ma.masked_invalid(grid.reshape(ny, nx))
        return ax.imshow(image, cmap=cmap, norm=norm, extent=extent, origin="upper", interpolation="antialiased",
                         alpha=alpha, zorder=2, gid=GID, aspect="equal")
    n = len(flat)
    if cv.kind == "categorical":
        cat = pd.Categorical(cv.values)
        na = to_rgba(opts["na_color"])
        table = np.array([palette.get(str(c), na) for c in cat.categories] + [na], dtype=float).reshape(-1, 4)
        best = _majority(flat, np.asarray(cat.codes, dtype=np.int64), n_cells)
        rgba = np.zeros((n_cells, 4))
        rgba[best >= -1] = table[best[best >= -1]]  # code -1 (missing) picks the last row, na_color
    elif cv.kind in ("rgba", "none"):
        face = np.asarray(cv.values, dtype=float) if cv.kind == "rgba" else np.tile(to_rgba("#5b6e8c"), (n, 1))
        rgba = _mean_rgba(flat, face, n_cells)
    else:
        raise InvalidInputError(f"cannot draw colour values of kind {cv.kind!r} as an image.")
    rgba[:, 3] *= alpha
    return ax.imshow(rgba.reshape(ny, nx, 4), extent=extent, origin="upper", interpolation="antialiased", zorder=2,
                     gid=GID, aspect="equal")


def use_raster(n: int, diameter: Any, opts) -> bool:
    """Whether a spot layer of ``n`` spots is drawn by :func:`draw_spot_raster`."""
    return n > AGGREGATE_ABOVE and diameter is not None and opts.get("ptsize") is None
