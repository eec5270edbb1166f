"""Figures and tables of LOCAT results: the top genes per group and the grid of chosen genes.

They read the columns :func:`experimat.methods.locat.locat` writes (``var['locat.*']``) and never
modify the AnnData.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experimat._compat import renamed_options
from experimat._errors import InvalidInputError, MissingSlotError
from experimat.methods._checks import check_positive_int

from ._methods import _prefix, _split
from ._render import Panel, embedding_options, render
from ._utils import as_adata_dict

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.figure import Figure

_LOCAT_COLUMNS = ("zscore", "pval", "is_conc_sig", "is_depl_sig", "is_joint_sig")


@renamed_options(key="locat_key")
def locat_top_genes(
    adata: AnnData, locat_key: str = "locat", n_top: int = 4, *, symbols: bool = True
) -> tuple[list[str], list[str]]:
    """Top concentrated-only genes and top concentrated-and-depleted genes by LOCAT z-score.

    Parameters
    ----------
    adata
        AnnData with LOCAT's ``var`` columns.
    locat_key
        Prefix of the LOCAT var columns (LOCAT's ``key_added``). Deprecated alias: ``key=``.
    n_top
        Number of genes in each list.
    symbols
        Return gene symbols when ``var`` has a symbol column (as the LOCAT table's index: the first of
        ``gene``, ``gene_symbol``, ``gene_symbols``, ``symbol``, ``gene_name``, ``feature_name``; the var
        name where a symbol is missing); ``False``: var names (ids).

    Returns
    -------
    ``(concentrated only, concentrated and depleted)`` gene names, highest z-score first.
    """
    from experimat.methods.locat._locat import gene_symbols

    missing = [f"{locat_key}.{c}" for c in _LOCAT_COLUMNS if f"{locat_key}.{c}" not in adata.var.columns]
    if missing:
        raise MissingSlotError(
            f"var columns {missing} not found; run LOCAT first (it writes var['{locat_key}.zscore'], "
            f"var['{locat_key}.pval'] and the var['{locat_key}.is_*_sig'] flags)."
        )
    var = adata.var
    z = var[f"{locat_key}.zscore"].to_numpy(dtype=float)
    p = var[f"{locat_key}.pval"].to_numpy(dtype=float)
    conc = var[f"{locat_key}.is_conc_sig"].to_numpy(dtype=bool)
    depl = var[f"{locat_key}.is_depl_sig"].to_numpy(dtype=bool)
    joint = var[f"{locat_key}.is_joint_sig"].to_numpy(dtype=bool)

    def top(mask: np.ndarray) -> list[str]:
        idx = np.flatnonzero(mask & np.isfinite(z))
        order = np.lexsort((p[idx], -z[idx]))  # highest z first, then smallest p
        names = gene_symbols(adata) if symbols else adata.var_names
        return [str(names[i]) for i in idx[order][:n_top]]

    return top(conc & ~depl & ~joint), top(joint)


def _locat_gene_rows(genes: Any) -> list[tuple[str, list[str]]] | None:
    """``genes=`` of :func:`plot_locat` as ``[(row label, [gene, ...]), ...]``."""
    if genes is None:
        return None

    def names(v: Any) -> list[Any]:
        if isinstance(v, str):
            return [v]
        return list(v) if isinstance(v, (Sequence, pd.Index, np.ndarray)) else []

    if isinstance(genes, Mapping):
        rows = [(str(k), names(v)) for k, v in genes.items()]
    else:
        rows = [("", names(genes))]
    if not rows or any(not g or any(not isinstance(x, str) for x in g) for _, g in rows):
        raise InvalidInputError(
            "genes must be a non-empty list of gene names, or {row label: [gene names]} with non-empty lists; "
            f"got {genes!r}."
        )
    return rows


@renamed_options(key="locat_key")
def plot_locat(
    adata: AnnData | Mapping[str, AnnData],
    locat_key: str = "locat",
    *,
    basis: str = "X_umap",
    n_top: int = 4,
    genes: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    layer: str | None = None,
    cmap: str = "viridis",
    vmax: float | str | None = "p99",
    ptsize: float | None = None,
    channels: str | Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
    library_id: str | None = None,
) -> Figure:
    """LOCAT grid: expression of the top concentrated genes (first row) and top concentrated-and-
    depleted genes (second row) on an embedding, or of the user's own gene lists (``genes=``).

    Parameters
    ----------
    adata
        One AnnData or ``{sample: AnnData}`` (two rows per sample) with ``var[f"{locat_key}.zscore"]``,
        ``.pval``, ``.is_conc_sig``, ``.is_depl_sig`` and ``.is_joint_sig``.
    locat_key
        Prefix of the LOCAT var columns. Deprecated alias: ``key=``.
    basis
        ``"X_umap"`` (any obsm embedding) or ``"spatial"``.
    n_top
        Genes per row, ranked by z-score (ties: smaller p-value first). Ignored with ``genes``.
    genes
        The genes to draw instead of the top ones: a list (one row) or ``{row label: [genes]}``
        (one row per list, e.g. ``{"concentrated": [...], "conc. + depleted": [...]}``). Gene
        symbols or ids (as :func:`plot_spatial`'s colour keys). Panel titles give the symbol and,
        when LOCAT was run, its z-score; the LOCAT columns are then not required.
    layer
        Expression layer (None: ``X``).
    cmap, vmax, ptsize, channels, figsize, library_id
        As in :func:`plot_spatial` (``channels`` only with ``basis="spatial"``).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = em.pl.plot_locat(adata, basis="X_umap", n_top=4)  # doctest: +SKIP
    >>> fig = em.pl.plot_locat(adata, genes={"B cells": ["CD79A", "MS4A1"], "T cells": ["CD3E"]})  # doctest: +SKIP
    """
    n_top = check_positive_int("n_top", n_top)
    chosen = _locat_gene_rows(genes)
    samples = as_adata_dict(adata, what="adata", split_samples=_split(basis))
    if chosen is not None:
        n_top = max(len(g) for _, g in chosen)
    rows: list[list[Panel | None]] = []
    empty: list[tuple[int, str]] = []
    for name, ad in samples.items():
        if chosen is None:
            conc, joint = locat_top_genes(ad, locat_key, n_top, symbols=False)
            lists = [(conc, "concentrated"), (joint, "conc. + depleted")]
        else:
            from experimat.methods._checks import resolve_genes

            lists = [(resolve_genes(ad, g), label) for label, g in chosen]
        z = ad.var[f"{locat_key}.zscore"] if f"{locat_key}.zscore" in ad.var.columns else None
        from experimat.methods.locat._locat import gene_symbols

        sym = pd.Series(gene_symbols(ad), index=ad.var_names)
        for names, label in lists:
            if not names:
                empty.append((len(rows), f"{_prefix(name, len(samples))}no significant {label} genes"))
            row: list[Panel | None] = []
            for g in names:
                detail = ", ".join(x for x in (label, "" if z is None else f"z={float(z[g]):.1f}") if x)
                row.append(Panel(name, g, f"{_prefix(name, len(samples))}{sym[g]}" + (f"\n{detail}" if detail else "")))
            rows.append(row + [None] * (n_top - len(row)))
    opts = embedding_options({"basis": basis, "cmap": cmap, "vmax": vmax, "ptsize": ptsize, "layer": layer})
    fig = render(
        samples, rows, opts=opts, channels=channels, library_id=library_id, figsize=figsize, panel_size=(3.4, 3.2)
    )
    grid = fig.axes[: len(rows) * n_top]
    for r, text in empty:
        ax = grid[r * n_top]
        ax.text(0.0, 0.5, text, transform=ax.transAxes, ha="left", va="center")
    return fig


# --------------------------------------------------------------------------------------- deconvolution
