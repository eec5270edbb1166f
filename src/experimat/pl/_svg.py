"""Figures of the spatially variable gene tests: SpatialDE's FSV–q plot and p-value calibration (QQ) plots."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from experimat._compat import renamed_options
from experimat._errors import InvalidInputError, MissingSlotError

from ._utils import as_adata_dict, check_figsize, new_figure, style_context

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@renamed_options(key="svg_key")
def plot_fsv_q(
    adatas: Any,
    svg_key: str = "spatialde_gp",
    *,
    alpha: float = 0.05,
    label_top: int = 5,
    gene_symbols: str = "gene",
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Fraction of spatial variance against q-value, one panel per sample (SpatialDE's README figure).

    Reads ``var['{svg_key}.fsv']`` and ``var['{svg_key}.qval']`` written by the SpatialDE GP test
    (:func:`experimat.methods.svg.spatial_svg_gp`). The q axis is logarithmic and inverted (most
    significant at the top), with a dashed line at ``alpha``; significant genes are black, the others
    grey, and the ``label_top`` most significant genes are labelled with their symbols.

    Parameters
    ----------
    adatas
        One AnnData or ``{sample: AnnData}``.
    svg_key
        ``key_added`` of the GP test. Deprecated alias: ``key=``.
    alpha
        q-value threshold drawn as a dashed line.
    label_top
        Number of top genes (smallest q) labelled per panel (0: none).
    gene_symbols
        ``var`` column with the gene symbols used for labels (``var_names`` when absent).
    figsize
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import experimat as em
    >>> from experimat.methods.svg import spatial_svg_gp
    >>> adata = em.datasets.synthetic_svg(300, 60, n_spatial=10)
    >>> _ = spatial_svg_gp(adata, layer="counts", progress=False)  # doctest: +SKIP
    >>> fig = em.pl.plot_fsv_q(adata)  # doctest: +SKIP
    """
    samples = as_adata_dict(adatas)
    if not (isinstance(alpha, float | int) and 0 < alpha < 1):
        raise InvalidInputError(f"alpha must be in (0, 1); got {alpha!r}.")
    if not isinstance(label_top, int) or isinstance(label_top, bool) or label_top < 0:
        raise InvalidInputError(f"label_top must be a non-negative integer; got {label_top!r}.")
    for name, a in samples.items():
        missing = [c for c in (f"{svg_key}.fsv", f"{svg_key}.qval") if c not in a.var.columns]
        if missing:
            keys = sorted({c.rsplit(".", 1)[0] for c in a.var.columns if c.endswith(".fsv")})
            raise MissingSlotError(
                f"var{missing} not found in sample {name!r}; run spatial_svg_gp first (GP test results in var: {keys})."
            )
    n = len(samples)
    figsize = check_figsize(figsize) or (4.2 * n, 3.8)
    with style_context():
        fig = new_figure(figsize)
        axes = fig.subplots(1, n, squeeze=False)[0]
        for ax, (name, a) in zip(axes, samples.items()):
            fsv = a.var[f"{svg_key}.fsv"].to_numpy(dtype=float)
            q = a.var[f"{svg_key}.qval"].to_numpy(dtype=float)
            ok = np.isfinite(fsv) & np.isfinite(q)
            qq = np.clip(q, 1e-300, None)
            sig = ok & (q < alpha)
            ax.scatter(fsv[ok & ~sig], qq[ok & ~sig], s=4, c="0.65", lw=0, rasterized=True, label=f"q ≥ {alpha:g}")
            ax.scatter(fsv[sig], qq[sig], s=6, c="black", lw=0, rasterized=True, label=f"q < {alpha:g} ({int(sig.sum())})")
            ax.axhline(alpha, c="black", lw=1, ls="--")
            ax.set_yscale("log")
            ax.invert_yaxis()
            ax.set_xlabel("fraction spatial variance (FSV)")
            ax.set_ylabel("q-value")
            ax.set_title(name or svg_key)
            if label_top:
                labels = a.var[gene_symbols].astype(str).to_numpy() if gene_symbols in a.var.columns else a.var_names.astype(str)
                order = np.flatnonzero(ok)[np.argsort(q[ok], kind="stable")][:label_top]
                for i in order:
                    ax.annotate(labels[i], (fsv[i], qq[i]), xytext=(3, 2), textcoords="offset points", fontsize=7)
            ax.legend(loc="lower right", fontsize=7, frameon=False)
    return fig


def plot_pvalue_qq(
    pvalues: Mapping[str, Any],
    *,
    title: str | None = None,
    band: float = 0.95,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """QQ plot of p-values against the uniform distribution (−log10 scale), one line per test.

    For calibration checks: p-values of genes without spatial structure (e.g. computed after permuting
    the spot coordinates) lie on the diagonal when a test is calibrated, below it when conservative and
    above it when anti-conservative. The grey band is the pointwise ``band`` interval of uniform order
    statistics (Beta distributions) for the largest set of p-values.

    Parameters
    ----------
    pvalues
        ``{label: p-values}``; NaNs are dropped.
    title
        Title of the axes.
    band
        Coverage of the uniform band (0 for none).
    figsize
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, experimat as em
    >>> rng = np.random.default_rng(0)
    >>> fig = em.pl.plot_pvalue_qq({"uniform": rng.random(500), "conservative": rng.random(500) ** 0.5})
    """
    from scipy import stats

    if not isinstance(pvalues, Mapping) or not pvalues:
        raise InvalidInputError("pvalues must be a non-empty {label: p-values} mapping.")
    clean = {}
    for label, p in pvalues.items():
        arr = np.asarray(p, dtype=float).ravel()
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            raise InvalidInputError(f"{label!r}: no finite p-values.")
        if (arr < 0).any() or (arr > 1).any():
            raise InvalidInputError(f"{label!r}: p-values must lie in [0, 1].")
        clean[str(label)] = np.sort(np.clip(arr, 1e-300, 1.0))
    if not 0 <= band < 1:
        raise InvalidInputError(f"band must be in [0, 1); got {band!r}.")
    figsize = check_figsize(figsize) or (4.2, 4.0)
    with style_context():
        fig = new_figure(figsize)
        ax = fig.subplots()
        top = 0.0
        if band:
            m = max(v.size for v in clean.values())
            k = np.arange(1, m + 1)
            lo = stats.beta.ppf((1 - band) / 2, k, m - k + 1)
            hi = stats.beta.ppf(1 - (1 - band) / 2, k, m - k + 1)
            x = -np.log10(k / (m + 1))
            ax.fill_between(x, -np.log10(hi), -np.log10(lo), color="0.85", lw=0, label=f"{band:.0%} band (uniform)")
        for label, p in clean.items():
            m = p.size
            x = -np.log10(np.arange(1, m + 1) / (m + 1))
            y = -np.log10(p)
            ax.plot(x, y, lw=1.4, label=f"{label} (n={m})")
            top = max(top, float(x.max()), float(min(y.max(), 2 * x.max() + 2)))
        ax.plot([0, top], [0, top], c="black", lw=0.8, ls="--")
        ax.set_xlim(0, top * 1.02)
        ax.set_ylim(0, top * 1.02)
        ax.set_xlabel("expected −log10 p (uniform)")
        ax.set_ylabel("observed −log10 p")
        if title:
            ax.set_title(title)
        ax.legend(fontsize=7, frameon=False, loc="upper left")
    return fig
