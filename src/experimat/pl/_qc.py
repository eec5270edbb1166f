"""Quality-control plots of model fits (deconvolution): training history, reconstruction, totals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experimat._compat import renamed_options
from experimat._errors import InvalidInputError, MissingSlotError

from ._utils import check_figsize, make_palette, new_figure, style_context

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _history_series(history: Any, where: str) -> dict[str, np.ndarray]:
    if isinstance(history, pd.DataFrame):
        series = {str(c): history[c].to_numpy(dtype=float) for c in history.columns}
    elif isinstance(history, Mapping):
        series = {}
        for k, v in history.items():
            arr = np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=float).ravel()
            series[str(k)] = arr
    else:
        arr = np.asarray(history, dtype=float)
        if arr.ndim == 1:
            series = {"loss": arr}
        elif arr.ndim == 2:
            series = {f"loss {i}": arr[:, i] for i in range(arr.shape[1])}
        else:
            raise InvalidInputError(f"{where}: a training history must be 1-D or 2-D; got shape {arr.shape}.")
    series = {k: v for k, v in series.items() if v.size}
    if not series:
        raise InvalidInputError(f"{where}: the training history is empty.")
    return series


@renamed_options(key="model_key")
def plot_training_history(
    history_or_adata: Any,
    model_key: str = "cell2location",
    *,
    iter_start: int | None = None,
    log: bool = False,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Loss per epoch/iteration: all of it, and from ``iter_start`` on (to see convergence).

    Parameters
    ----------
    history_or_adata
        A history (``{name: values}`` such as ``{"elbo_train": [...]}``, a DataFrame, or an array),
        an AnnData whose ``uns[model_key]['training_history']`` holds one, or ``{sample: AnnData}`` (one
        row per sample).
    model_key
        ``uns`` key of the model run (``key_added`` of the method). Deprecated alias: ``key=``.
    iter_start
        First iteration of the right panel (default: 20 % of the run).
    log
        Log-scaled y axis (the losses must be positive).
    figsize
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import experimat as em
    >>> fig = em.pl.plot_training_history({"elbo_train": [10.0, 5.0, 3.0, 2.5, 2.4]})
    """
    from anndata import AnnData

    if isinstance(history_or_adata, AnnData):
        sources = {"": history_or_adata}
    elif (
        isinstance(history_or_adata, Mapping)
        and history_or_adata
        and all(isinstance(v, AnnData) for v in history_or_adata.values())
    ):
        sources = dict(history_or_adata)
    else:
        sources = {"": None}
    histories = {}
    for name, ad in sources.items():
        if ad is None:
            histories[name] = _history_series(history_or_adata, "history")
            continue
        entry = ad.uns.get(model_key)
        if not isinstance(entry, Mapping) or "training_history" not in entry:
            raise MissingSlotError(
                f"uns[{model_key!r}]['training_history'] not found{f' in sample {name!r}' if name else ''}; uns keys: "
                f"{list(ad.uns.keys())}. Train the model first, or pass model_key= the method's key_added."
            )
        histories[name] = _history_series(entry["training_history"], f"uns[{model_key!r}]['training_history']")
    if iter_start is not None and (not isinstance(iter_start, (int, np.integer)) or iter_start < 0):
        raise InvalidInputError(f"iter_start must be a non-negative integer; got {iter_start!r}.")
    figsize = check_figsize(figsize) or (8.0, 3.2 * len(histories))
    with style_context():
        fig = new_figure(figsize)
        axes = fig.subplots(len(histories), 2, squeeze=False)
        for row, (name, series) in enumerate(histories.items()):
            n = max(len(v) for v in series.values())
            start = iter_start if iter_start is not None else int(0.2 * n)
            start = min(start, max(n - 2, 0))
            for col, first in enumerate((0, start)):
                ax = axes[row, col]
                for label, v in series.items():
                    it = np.arange(len(v))
                    ax.plot(it[first:], v[first:], label=label, lw=1.2)
                ax.set_xlabel("iteration")
                ax.set_ylabel("loss")
                if log:
                    ax.set_yscale("log")
                prefix = f"{name}: " if name else ""
                ax.set_title(f"{prefix}{'all iterations' if col == 0 else f'from iteration {first}'}")
                if len(series) > 1:
                    ax.legend(frameon=False)
    return fig


def _as_dense_1d(x: Any) -> np.ndarray:
    if hasattr(x, "toarray"):
        x = x.toarray()
    return np.asarray(x, dtype=float).ravel()


def plot_reconstruction(
    observed: Any,
    expected: Any,
    *,
    bins: int = 100,
    max_values: int = 5_000_000,
    figsize: tuple[float, float] | None = (4.5, 4.0),
) -> Figure:
    """2-D histogram of observed vs model-expected counts (log10(1 + x)), with the diagonal.

    Parameters
    ----------
    observed, expected
        Arrays (dense or sparse) of the same shape, e.g. spots x genes counts and the model's
        expected counts.
    bins
        Histogram bins per axis.
    max_values
        Larger inputs are thinned by a regular stride to this many entries (noted in the title).
    figsize
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, experimat as em
    >>> mu = np.random.default_rng(0).gamma(2.0, 2.0, size=(50, 20))
    >>> fig = em.pl.plot_reconstruction(np.random.default_rng(1).poisson(mu), mu)
    """
    from matplotlib.colors import LogNorm

    shape_o = getattr(observed, "shape", np.shape(observed))
    shape_e = getattr(expected, "shape", np.shape(expected))
    if tuple(shape_o) != tuple(shape_e):
        raise InvalidInputError(f"observed {tuple(shape_o)} and expected {tuple(shape_e)} must have the same shape.")
    if not isinstance(bins, (int, np.integer)) or bins < 2:
        raise InvalidInputError(f"bins must be an integer >= 2; got {bins!r}.")
    o, e = _as_dense_1d(observed), _as_dense_1d(expected)
    if o.size == 0:
        raise InvalidInputError("observed and expected are empty.")
    if (o < 0).any() or (e < 0).any():
        raise InvalidInputError("observed and expected must be non-negative (counts and expected counts).")
    note = ""
    if o.size > max_values:
        step = int(np.ceil(o.size / max_values))
        o, e = o[::step], e[::step]
        note = f", every {step}th value"
    lo, le = np.log10(1.0 + o), np.log10(1.0 + e)
    ok = np.isfinite(lo) & np.isfinite(le)
    lo, le = lo[ok], le[ok]
    r = float(np.corrcoef(lo, le)[0, 1]) if lo.size > 1 and lo.std() > 0 and le.std() > 0 else float("nan")
    with style_context():
        fig = new_figure(check_figsize(figsize) or (4.5, 4.0))
        ax = fig.add_subplot()
        top = float(max(lo.max(), le.max(), 1e-3))
        h = ax.hist2d(le, lo, bins=bins, range=[[0, top], [0, top]], norm=LogNorm(), cmin=1, cmap="viridis")
        ax.plot([0, top], [0, top], color="black", lw=0.8, ls="--")
        ax.set_xlabel("expected, log10(1 + x)")
        ax.set_ylabel("observed, log10(1 + x)")
        ax.set_title(f"reconstruction (r = {r:.3f}{note})")
        ax.set_aspect("equal", adjustable="box")
        fig.colorbar(h[3], ax=ax, shrink=0.8, label="entries")
    return fig


def plot_totals_per_batch(
    observed_totals: Sequence[float] | np.ndarray,
    expected_totals: Sequence[float] | np.ndarray,
    batch: Sequence[Any] | np.ndarray,
    *,
    palette: Any = None,
    figsize: tuple[float, float] | None = (5.5, 4.0),
) -> Figure:
    """Observed vs expected total counts (per spot or cell), coloured by batch, log-log, with the diagonal.

    Parameters
    ----------
    observed_totals, expected_totals
        1-D arrays of equal length (e.g. total counts per spot and the model's expected totals).
    batch
        Batch label of each entry; the legend gives each batch's median observed/expected ratio.
    palette
        Batch colours (colormap name, list, or dict); None picks tab10/tab20.
    figsize
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, experimat as em
    >>> fig = em.pl.plot_totals_per_batch(np.array([10.0, 20, 30, 40]), np.array([12.0, 18, 33, 39]), ["a", "a", "b", "b"])
    """
    o = np.asarray(observed_totals, dtype=float).ravel()
    e = np.asarray(expected_totals, dtype=float).ravel()
    b = pd.Series(np.asarray(batch, dtype=object).ravel()).astype(str)
    if not (len(o) == len(e) == len(b)):
        raise InvalidInputError(
            f"observed_totals ({len(o)}), expected_totals ({len(e)}) and batch ({len(b)}) must have the same length."
        )
    if len(o) == 0:
        raise InvalidInputError("no totals given.")
    if (o < 0).any() or (e < 0).any() or not (np.isfinite(o).all() and np.isfinite(e).all()):
        raise InvalidInputError("totals must be finite and non-negative.")
    cats = sorted(b.unique())
    pal = make_palette(cats, palette)
    with style_context():
        fig = new_figure(check_figsize(figsize) or (5.5, 4.0))
        ax = fig.add_subplot()
        for c in cats:
            m = (b == c).to_numpy()
            pos = e[m] > 0
            ratio = float(np.median(o[m][pos] / e[m][pos])) if pos.any() else float("nan")
            ax.scatter(e[m] + 1.0, o[m] + 1.0, s=8, color=pal[c], linewidths=0, label=f"{c} (obs/exp {ratio:.2f})")
        bottom, top = float(min(o.min(), e.min())) + 1.0, float(max(o.max(), e.max())) + 1.0
        ax.plot([bottom, top], [bottom, top], color="black", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("expected total + 1")
        ax.set_ylabel("observed total + 1")
        ax.set_title("totals per batch")
        ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5), title="batch")
    return fig
