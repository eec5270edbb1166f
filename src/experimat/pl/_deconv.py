"""Figures of the deconvolution workflows (cell2location and DestVI tutorials).

Reference gene filter (2-D histogram with the cutoffs), reference QC (reconstruction and
signatures vs cluster means), NMF colocation loadings (dot plot), DestVI automatic-threshold
diagnostics, gamma-space (spatial PCA) maps and the volcano plot of a DE table. Each takes one
AnnData or ``{sample: AnnData}`` (one row of panels per sample, as the accessors pass them), never
modifies it, and returns a :class:`matplotlib.figure.Figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experimat._compat import renamed_options
from experimat._errors import InvalidInputError, KeyNotFoundError, MissingSlotError
from experimat._keys import Key

from ._utils import as_adata_dict, check_figsize, new_figure, style_context

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.figure import Figure


def _rows(adatas: Any, what: str) -> dict[str, AnnData]:
    from anndata import AnnData

    if isinstance(adatas, AnnData):
        return {"": adatas}
    return as_adata_dict(adatas, what=what)


def _prefix(name: str) -> str:
    return f"{name}: " if name else ""


# ------------------------------------------------------------------------------------ gene filter
def plot_gene_filter(
    adatas: Any,
    *,
    layer: str | None = "counts",
    cell_count_cutoff: float = 15,
    cell_percentage_cutoff2: float = 0.05,
    nonz_mean_cutoff: float = 1.12,
    bins: int = 100,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """The gene-selection plot of the cell2location tutorial (``plot_gene_filter``).

    A 2-D histogram of all detected genes: number of cells expressing the gene (log10, x) against
    the mean count in the cells that express it (log10, y), with the cutoffs of
    :func:`~experimat.methods.deconv.cell2location.filter_genes` as lines; genes right of the
    percentage cutoff, or right of the cell-count cutoff and above the mean cutoff, are kept.

    Parameters
    ----------
    adatas
        Single-cell reference AnnData with raw counts, or ``{sample: AnnData}`` (one panel each).
    layer, cell_count_cutoff, cell_percentage_cutoff2, nonz_mean_cutoff, bins
        As in :func:`~experimat.methods.deconv.cell2location.gene_filter_histogram`.
    figsize
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = em.pl.plot_gene_filter(adata_ref, cell_count_cutoff=5, cell_percentage_cutoff2=0.03)  # doctest: +SKIP
    """
    from matplotlib.colors import LogNorm

    from experimat.methods.deconv.cell2location import gene_filter_histogram

    rows = _rows(adatas, "adatas")
    figsize = check_figsize(figsize) or (4.8 * len(rows), 4.2)
    with style_context():
        fig = new_figure(figsize)
        axes = fig.subplots(1, len(rows), squeeze=False)[0]
        for ax, (name, ad) in zip(axes, rows.items()):
            h = gene_filter_histogram(
                ad,
                layer=layer,
                cell_count_cutoff=cell_count_cutoff,
                cell_percentage_cutoff2=cell_percentage_cutoff2,
                nonz_mean_cutoff=nonz_mean_cutoff,
                bins=bins,
            )
            hist = np.where(h["hist"] > 0, h["hist"], np.nan)
            mesh = ax.pcolormesh(h["x_edges"], h["y_edges"], hist.T, norm=LogNorm(), cmap="viridis")
            fig.colorbar(mesh, ax=ax, label="genes")
            ax.axvline(h["x_cutoff"], color="tab:red", lw=1, label=f"cells >= {cell_count_cutoff:g}")
            ax.axvline(h["x_cutoff2"], color="tab:orange", lw=1, label=f"cells >= {cell_percentage_cutoff2:.0%}")
            ax.axhline(h["y_cutoff"], color="tab:red", lw=1, ls="--", label=f"non-zero mean >= {nonz_mean_cutoff:g}")
            ax.set_xlabel("log10(number of cells expressing the gene)")
            ax.set_ylabel("log10(mean non-zero count)")
            n_det = int(np.isfinite(h["log10_n_cells"]).sum())
            ax.set_title(f"{_prefix(name)}{h['n_selected']} of {n_det} detected genes kept")
            ax.legend(frameon=False, fontsize="small", loc="upper left")
    return fig


# ------------------------------------------------------------------------------------ reference QC
def plot_reference_qc(
    adatas: Any,
    *,
    reference: Any,
    labels_key: str = "cell_type",
    layer: str | None = "counts",
    bins: int = 80,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """QC of reference signatures, as cell2location's ``RegressionModel.plot_QC``.

    Left: reconstruction accuracy, a 2-D histogram of each cell's observed counts against its
    type's signature scaled to the cell's total count over the signature genes. Right: the
    signatures against the mean normalised count per cell type (cells scaled to the median total),
    one point per gene and type; for ``cluster_mean`` signatures the points lie on the diagonal,
    for ``nb_regression`` the departures show what the regression corrected (batch, background).

    Parameters
    ----------
    adatas
        The single-cell reference (AnnData or ``{sample: AnnData}``) the signatures were fitted on.
    reference
        :class:`~experimat.methods.deconv.cell2location.ReferenceSignatures` or a genes x types DataFrame.
    labels_key
        obs column with the cell types.
    layer
        Layer with raw counts (``None``: ``X``).
    bins
        Bins per axis of the reconstruction histogram.
    figsize
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = em.pl.plot_reference_qc(adata_ref, reference=sig, labels_key="cell_type")  # doctest: +SKIP
    """
    import scipy.sparse as sp
    from matplotlib.colors import LogNorm

    from experimat.methods._checks import get_matrix, get_obs_column
    from experimat.methods.deconv.cell2location import ReferenceSignatures

    sig = reference.signatures if isinstance(reference, ReferenceSignatures) else reference
    if not isinstance(sig, pd.DataFrame):
        raise InvalidInputError(
            f"reference must be ReferenceSignatures or a genes x types DataFrame, not {type(reference).__name__}."
        )
    rows = _rows(adatas, "adatas")
    figsize = check_figsize(figsize) or (9.0, 4.0 * len(rows))
    with style_context():
        fig = new_figure(figsize)
        axes = fig.subplots(len(rows), 2, squeeze=False)
        for row, (name, ad) in enumerate(rows.items()):
            labels = get_obs_column(ad, labels_key).astype(str).to_numpy()
            types = [t for t in sig.columns.astype(str) if t in set(labels)]
            genes = [g for g in sig.index.astype(str) if g in ad.var_names]
            if not types or not genes:
                raise InvalidInputError(
                    f"{_prefix(name)}the reference shares {len(types)} cell types (obs[{labels_key!r}]) and "
                    f"{len(genes)} genes with the data; plot the reference the signatures were fitted on."
                )
            X = get_matrix(ad, layer)
            X = sp.csr_matrix(X)[:, ad.var_names.get_indexer(genes)]
            S = sig.loc[genes, types].to_numpy(dtype=np.float64)
            keep = np.isin(labels, types)
            code = pd.Categorical(labels[keep], categories=types).codes
            Xk = X[np.flatnonzero(keep)]
            tot = np.asarray(Xk.sum(1)).ravel()
            prof = S[:, code].T  # cells x genes
            expected = prof * (tot / np.maximum(prof.sum(1), 1e-12))[:, None]
            obs = np.log10(1 + Xk.toarray().ravel())
            exp_ = np.log10(1 + expected.ravel())
            top = float(max(obs.max(), exp_.max(), 1e-3))
            ax = axes[row, 0]
            h = ax.hist2d(exp_, obs, bins=bins, range=[[0, top], [0, top]], norm=LogNorm(), cmin=1, cmap="viridis")
            fig.colorbar(h[3], ax=ax, label="entries")
            ax.plot([0, top], [0, top], color="black", lw=0.8, ls="--")
            ax.set_xlabel("expected count, log10(1 + x)")
            ax.set_ylabel("observed count, log10(1 + x)")
            ax.set_title(f"{_prefix(name)}reconstruction accuracy")
            # signatures vs cluster means of median-normalised counts
            allx = sp.csr_matrix(get_matrix(ad, layer))[np.flatnonzero(keep)]
            full = np.asarray(allx.sum(1)).ravel()
            scale = np.median(full[full > 0]) / np.maximum(full, 1.0)
            norm = sp.csr_matrix(Xk.multiply(scale[:, None]))
            onehot = sp.csr_matrix((np.ones(code.size), (np.arange(code.size), code)), shape=(code.size, len(types)))
            means = np.asarray((norm.T @ onehot).todense()) / np.maximum(np.bincount(code, minlength=len(types)), 1)
            ax = axes[row, 1]
            x, y = means.ravel(), S.ravel()
            ok = (x > 0) & (y > 0)
            ax.scatter(x[ok], y[ok], s=3, alpha=0.4, color="tab:blue", rasterized=True)
            lo, hi = float(min(x[ok].min(), y[ok].min())), float(max(x[ok].max(), y[ok].max()))
            ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.set_yscale("log")
            r = float(np.corrcoef(np.log(x[ok]), np.log(y[ok]))[0, 1]) if ok.sum() > 1 else float("nan")
            ax.set_xlabel("mean normalised count per cell type")
            ax.set_ylabel("signature (expected count per cell)")
            ax.set_title(f"{_prefix(name)}signatures vs cluster means (r = {r:.3f})")
    return fig


# ------------------------------------------------------------------------------- NMF colocation
def _loadings(ad: AnnData, n_factors: int | None, key: str) -> tuple[int, pd.DataFrame]:
    entry = ad.uns.get(key)
    if not isinstance(entry, Mapping) or "loadings" not in entry:
        raise MissingSlotError(
            f"uns[{key!r}]['loadings'] not found; uns keys: {list(ad.uns.keys())}. Run colocation_nmf first "
            "(or pass key= its key_added)."
        )
    tables = entry["loadings"]
    avail = sorted(int(k) for k in tables)
    if n_factors is None:
        n_factors = avail[0]
    if str(n_factors) not in tables:
        raise KeyNotFoundError("number of factors", str(n_factors), [str(a) for a in avail])
    df = tables[str(n_factors)]
    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame(df)
    return int(n_factors), df


@renamed_options(key="nmf_key")
def plot_colocation_loadings(
    adatas: Any,
    n_factors: int | None = None,
    *,
    nmf_key: str = "colocation_nmf",
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Dot plot of the NMF colocation loadings (cell2location's ``plot_cell_type_loadings``).

    One dot per cell type (rows) and factor (columns): size and colour are the fraction of the
    type's abundance explained by the factor (rows sum to 1). Cell types are ordered by the factor
    that explains most of them.

    Parameters
    ----------
    adatas
        AnnData (or ``{sample: AnnData}``) after
        :func:`~experimat.methods.deconv.cell2location.colocation_nmf`.
    n_factors
        Which fit to show (default: the smallest number of factors fitted).
    nmf_key
        ``key_added`` of ``colocation_nmf``. Deprecated alias: ``key=``.
    figsize
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = em.pl.plot_colocation_loadings(adata_vis, n_factors=5)  # doctest: +SKIP
    """
    rows = _rows(adatas, "adatas")
    tables = {name: _loadings(ad, n_factors, nmf_key) for name, ad in rows.items()}
    n_types = max(df.shape[0] for _, df in tables.values())
    n_fact = max(df.shape[1] for _, df in tables.values())
    figsize = check_figsize(figsize) or (1.2 + 0.55 * n_fact * len(rows) + 2.0, 1.0 + 0.3 * n_types)
    with style_context():
        fig = new_figure(figsize)
        axes = fig.subplots(1, len(rows), squeeze=False)[0]
        for ax, (name, (n, df)) in zip(axes, tables.items()):
            best = df.to_numpy().argmax(1)
            order = np.lexsort((-df.to_numpy().max(1), best))
            df = df.iloc[order]
            yy, xx = np.meshgrid(np.arange(df.shape[0]), np.arange(df.shape[1]), indexing="ij")
            v = df.to_numpy(dtype=float)
            sc = ax.scatter(xx.ravel(), yy.ravel(), s=10 + 240 * v.ravel(), c=v.ravel(), cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(df.shape[1]), [str(c) for c in df.columns], rotation=90)
            ax.set_yticks(range(df.shape[0]), [str(i) for i in df.index])
            ax.set_xlim(-0.6, df.shape[1] - 0.4)
            ax.set_ylim(df.shape[0] - 0.4, -0.6)
            ax.set_xlabel("factor")
            ax.set_ylabel("cell type")
            ax.set_title(f"{_prefix(name)}NMF colocation, {n} factors")
        fig.colorbar(sc, ax=list(axes), label="share of the cell type's abundance")
    return fig


# --------------------------------------------------------------------------- DestVI diagnostics
@renamed_options(key="destvi_key")
def plot_proportion_thresholds(
    adatas: Any,
    ct_list: Sequence[str] | str | None = None,
    *,
    destvi_key: str = "destvi",
    ncols: int = 4,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Diagnostic of DestVI's automatic proportion thresholds, one panel per cell type.

    The spatial autocorrelation Z score of ``p * (p > t)`` (scaled to a maximum of 1) at each
    candidate threshold ``t`` (points), its smoothing spline (line), and the primary (steepest
    descent) and secondary (first inflection) thresholds, as drawn by the DestVI utilities.
    Needs :func:`~experimat.methods.deconv.destvi.automatic_proportion_threshold` to have run.

    Parameters
    ----------
    adatas
        Deconvolved spots (AnnData or ``{sample: AnnData}``: one row of panels per sample).
    ct_list
        Cell types to show (default: every type with a stored curve).
    destvi_key
        ``key_added`` of the deconvolution. Deprecated alias: ``key=``.
    ncols
        Panels per row.
    figsize
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> thr = automatic_proportion_threshold(spots)  # doctest: +SKIP
    >>> fig = em.pl.plot_proportion_thresholds(spots)  # doctest: +SKIP
    """
    rows = _rows(adatas, "adatas")
    panels = []
    for name, ad in rows.items():
        curves = (ad.uns.get(destvi_key) or {}).get("threshold_curves") if isinstance(ad.uns.get(destvi_key), Mapping) else None
        if not isinstance(curves, Mapping) or not curves:
            raise MissingSlotError(
                f"{_prefix(name)}uns[{destvi_key!r}]['threshold_curves'] not found; run automatic_proportion_threshold "
                "(destvi_key= the deconvolution's key_added) first."
            )
        cts = list(curves) if ct_list is None else ([ct_list] if isinstance(ct_list, str) else list(ct_list))
        for ct in cts:
            if ct not in curves:
                raise KeyNotFoundError("cell type with a threshold curve", ct, list(curves))
            panels.append((name, ct, curves[ct]))
    if not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise InvalidInputError(f"ncols must be a positive integer; got {ncols!r}.")
    nc = min(ncols, len(panels))
    nr = int(np.ceil(len(panels) / nc))
    figsize = check_figsize(figsize) or (3.4 * nc, 2.9 * nr)
    with style_context():
        fig = new_figure(figsize)
        axes = fig.subplots(nr, nc, squeeze=False).ravel()
        for ax, (name, ct, c) in zip(axes, panels):
            t = np.asarray(c["threshold"], dtype=float)
            ax.scatter(t, np.asarray(c["z"], dtype=float), s=8, color="tab:blue", label="Z score")
            if len(c.get("spline", [])):
                ax.plot(t, np.asarray(c["spline"], dtype=float), color="black", lw=1.2, label="spline")
            ax.axvline(float(c["primary"]), color="tab:red", lw=1, label="primary")
            ax.axvline(float(c["secondary"]), color="tab:orange", lw=1, ls="--", label="secondary")
            ax.set_xlabel("proportion threshold")
            ax.set_ylabel("autocorrelation Z (scaled)")
            ax.set_title(f"{_prefix(name)}{ct}")
        for ax in axes[len(panels) :]:
            ax.set_axis_off()
        axes[0].legend(frameon=False, fontsize="small")
    return fig


@renamed_options(key="destvi_key")
def plot_gamma_space(
    adatas: Any,
    *,
    ct: str,
    destvi_key: str = "destvi",
    spatial_key: str = Key.SPATIAL,
    size: float = 12.0,
    cmap: str = "coolwarm",
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Spatial maps of a cell type's gamma-space axes (DestVI's spatial PCA), one panel per axis.

    Spots above the type's threshold are coloured by their coordinate on each axis (from
    :func:`~experimat.methods.deconv.destvi.explore_gamma_space`); the others are grey. The
    titles give the share of gamma variance of each axis and its top genes in each direction.

    Parameters
    ----------
    adatas
        Deconvolved spots (AnnData or ``{sample: AnnData}``: one row per sample).
    ct
        Cell type given to ``explore_gamma_space``.
    destvi_key
        ``key_added`` of the deconvolution. Deprecated alias: ``key=``.
    spatial_key
        obsm key of the coordinates.
    size
        Marker size.
    cmap
        Colour map of the axis coordinates.
    figsize
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> res = explore_gamma_space(spots, reference=ref, ct="Astro", threshold=0.1)  # doctest: +SKIP
    >>> fig = em.pl.plot_gamma_space(spots, ct="Astro")  # doctest: +SKIP
    """
    from matplotlib.colors import TwoSlopeNorm

    rows = _rows(adatas, "adatas")
    data = {}
    for name, ad in rows.items():
        k = f"{destvi_key}.spca.{ct}"
        if k not in ad.obsm:
            raise MissingSlotError(
                f"{_prefix(name)}obsm[{k!r}] not found; run explore_gamma_space(adata, reference=..., ct={ct!r}) first."
            )
        if spatial_key not in ad.obsm:
            raise MissingSlotError(f"{_prefix(name)}obsm[{spatial_key!r}] (coordinates) not found.")
        proj = ad.obsm[k]
        proj = proj if isinstance(proj, pd.DataFrame) else pd.DataFrame(np.asarray(proj))
        info = (((ad.uns.get(destvi_key) or {}).get("spca") or {}).get(ct) or {}) if isinstance(ad.uns.get(destvi_key), Mapping) else {}
        data[name] = (np.asarray(ad.obsm[spatial_key], dtype=float)[:, :2], proj, info)
    n_ax = max(p.shape[1] for _, p, _ in data.values())
    figsize = check_figsize(figsize) or (4.2 * n_ax, 3.9 * len(rows))
    with style_context():
        fig = new_figure(figsize)
        axes = fig.subplots(len(rows), n_ax, squeeze=False)
        for r, (name, (xy, proj, info)) in enumerate(data.items()):
            expl = list(info.get("explained_variance", []))
            genes = info.get("genes", {}) or {}
            for j, axis in enumerate(proj.columns):
                ax = axes[r, j]
                v = proj[axis].to_numpy(dtype=float)
                ok = np.isfinite(v)
                ax.scatter(xy[~ok, 0], xy[~ok, 1], s=size, color="lightgrey", linewidths=0)
                lim = float(np.abs(v[ok]).max()) if ok.any() else 1.0
                sc = ax.scatter(xy[ok, 0], xy[ok, 1], c=v[ok], s=size, cmap=cmap,
                                norm=TwoSlopeNorm(0.0, -lim or -1.0, lim or 1.0), linewidths=0)
                fig.colorbar(sc, ax=ax, label=str(axis))
                ax.set_aspect("equal")
                ax.invert_yaxis()
                ax.set_xticks([])
                ax.set_yticks([])
                pct = f" ({expl[j]:.0f} % of variance)" if j < len(expl) else ""
                pos = ", ".join(list(genes.get(f"{axis}.positive", []))[:3])
                neg = ", ".join(list(genes.get(f"{axis}.negative", []))[:3])
                extra = f"\n+ {pos}\n- {neg}" if pos or neg else ""
                ax.set_title(f"{_prefix(name)}{ct} {axis}{pct}{extra}", fontsize="small")
    return fig


# ------------------------------------------------------------------------------------- volcano
@renamed_options(key="de_key")
def plot_volcano(
    de: Any,
    de_key: str | None = None,
    *,
    lfc_col: str = "log2FC",
    p_col: str = "padj",
    gene_col: str = "gene",
    alpha: float = 0.05,
    min_lfc: float = 0.5,
    n_labels: int = 10,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Volcano plot of a differential-expression table: log2 fold change against -log10 adjusted p.

    Genes with ``p_col < alpha`` and ``|lfc_col| >= min_lfc`` are coloured (up red, down blue) and
    the ``n_labels`` most significant of them are named.

    Parameters
    ----------
    de
        A DataFrame with ``lfc_col`` and ``p_col`` (genes as index or in ``gene_col``), e.g. from
        :func:`~experimat.methods.deconv.destvi.de_genes_destvi`; or an AnnData / ``{sample: AnnData}``
        whose ``uns[de_key]['de_results']`` holds one (``de_genes_destvi(..., key_added=de_key)``).
    de_key
        ``uns`` key of the stored table (AnnData input only). Deprecated alias: ``key=``.
    lfc_col, p_col, gene_col
        Columns of the table.
    alpha, min_lfc
        Significance and effect-size cutoffs (drawn as dashed lines).
    n_labels
        Significant genes to name.
    figsize
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd, experimat as em
    >>> de = pd.DataFrame({"log2FC": [2.0, -1.5, 0.1], "padj": [1e-6, 1e-3, 0.8]}, index=["A", "B", "C"])
    >>> fig = em.pl.plot_volcano(de)
    """
    from anndata import AnnData

    if isinstance(de, pd.DataFrame):
        tables = {"": de}
    elif isinstance(de, AnnData) or (isinstance(de, Mapping) and de and all(isinstance(v, AnnData) for v in de.values())):
        if de_key is None:
            raise InvalidInputError("plot_volcano on an AnnData needs de_key= (the key_added of de_genes_destvi).")
        tables = {}
        for name, ad in _rows(de, "de").items():
            entry = ad.uns.get(de_key)
            if not isinstance(entry, Mapping) or "de_results" not in entry:
                raise MissingSlotError(
                    f"{_prefix(name)}uns[{de_key!r}]['de_results'] not found; run de_genes_destvi(..., key_added={de_key!r})."
                )
            tables[name] = pd.DataFrame(entry["de_results"])
    else:
        raise InvalidInputError(f"de must be a DataFrame or an AnnData (with de_key=); got {type(de).__name__}.")
    for t in tables.values():
        missing = [c for c in (lfc_col, p_col) if c not in t.columns]
        if missing:
            raise KeyNotFoundError("DE table column", missing[0], [str(c) for c in t.columns])
    if not (0 < alpha < 1):
        raise InvalidInputError(f"alpha must be in (0, 1); got {alpha!r}.")
    figsize = check_figsize(figsize) or (4.8 * len(tables), 4.2)
    with style_context():
        fig = new_figure(figsize)
        axes = fig.subplots(1, len(tables), squeeze=False)[0]
        for ax, (name, t) in zip(axes, tables.items()):
            genes = t[gene_col].astype(str).to_numpy() if gene_col in t.columns else t.index.astype(str).to_numpy()
            lfc = t[lfc_col].to_numpy(dtype=float)
            p = t[p_col].to_numpy(dtype=float)
            floor = np.nanmin(p[p > 0]) / 10 if (p > 0).any() else 1e-300
            y = -np.log10(np.clip(p, floor, 1.0))
            sig = (p < alpha) & (np.abs(lfc) >= min_lfc)
            up, down = sig & (lfc > 0), sig & (lfc < 0)
            ax.scatter(lfc[~sig], y[~sig], s=6, color="lightgrey", linewidths=0, label="not significant")
            ax.scatter(lfc[up], y[up], s=8, color="tab:red", linewidths=0, label=f"up ({int(up.sum())})")
            ax.scatter(lfc[down], y[down], s=8, color="tab:blue", linewidths=0, label=f"down ({int(down.sum())})")
            ax.axhline(-np.log10(alpha), color="black", lw=0.6, ls="--")
            for v in (-min_lfc, min_lfc):
                ax.axvline(v, color="black", lw=0.6, ls="--")
            for i in np.flatnonzero(sig)[np.argsort(p[sig], kind="stable")][:n_labels]:
                ax.annotate(genes[i], (lfc[i], y[i]), fontsize="x-small", xytext=(2, 2), textcoords="offset points")
            ax.set_xlabel("log2 fold change")
            ax.set_ylabel(f"-log10({p_col})")
            ax.set_title(f"{_prefix(name)}{int(sig.sum())} of {len(t)} genes significant")
            ax.legend(frameon=False, fontsize="small")
    return fig
