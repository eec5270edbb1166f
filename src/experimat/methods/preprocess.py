"""Preprocessing every pipeline needs: QC metrics, normalisation, PCA, neighbours/UMAP, smoothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._compat import renamed_options
from .._errors import InvalidInputError
from .._keys import Key
from ._checks import (
    check_counts,
    check_positive_int,
    counts_input,
    get_coordinates,
    get_matrix,
    store_params,
    subsets_sample,
)

if TYPE_CHECKING:
    from anndata import AnnData


def _gene_symbols(adata: AnnData) -> pd.Index:
    return pd.Index(adata.var["gene"].astype(str)) if "gene" in adata.var else adata.var_names.astype(str)


@counts_input("layer")
def qc_metrics(adata: AnnData, *, layer: str | None = "counts", mito_prefix: str = "mt-", key_added: str = "qc") -> pd.DataFrame:
    """Per-observation quality metrics from raw counts.

    Writes ``obs['{key_added}.total_counts']``, ``obs['{key_added}.n_genes']`` and
    ``obs['{key_added}.pct_mito']`` (genes whose symbol starts with ``mito_prefix``,
    case-insensitively), and ``var['{key_added}.n_obs']`` / ``var['{key_added}.total_counts']``.

    Parameters
    ----------
    adata
        Observations x genes.
    layer
        Layer holding raw counts (``None``: ``X``).
    mito_prefix
        Prefix of mitochondrial gene symbols (``"mt-"`` mouse, ``"MT-"`` human; case-insensitive).
    key_added
        Prefix of the written columns.

    Returns
    -------
    The per-observation metrics as a DataFrame.

    Examples
    --------
    >>> expm.spatial_bin.qc_metrics(run_on_samples=True)  # doctest: +SKIP
    """
    X = get_matrix(adata, layer)
    check_counts(X, layer=layer)
    import scipy.sparse as sp

    if sp.issparse(X):  # per-row and per-column sums of the stored values: no boolean copy, no CSC sort
        X = sp.csr_matrix(X)
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
        pos = X.data > 0
        total = np.bincount(rows, weights=X.data, minlength=X.shape[0])
        n_genes = np.bincount(rows[pos], minlength=X.shape[0])
        n_obs = np.bincount(X.indices[pos], minlength=X.shape[1])
        gene_total = np.bincount(X.indices, weights=X.data, minlength=X.shape[1])
        if X.dtype.kind in "iub":  # integer counts keep integer sums, as X.sum() gives
            total, gene_total = total.astype(np.int64), gene_total.astype(np.int64)
        del rows, pos
    else:
        total, n_genes = np.asarray(X.sum(1)).ravel(), np.asarray((X > 0).sum(1)).ravel()
        n_obs, gene_total = np.asarray((X > 0).sum(0)).ravel(), np.asarray(X.sum(0)).ravel()
    mito = np.asarray(_gene_symbols(adata).str.lower().str.startswith(mito_prefix.lower()), dtype=bool)
    mito_counts = np.asarray(X[:, mito].sum(1)).ravel() if mito.any() else np.zeros_like(total)
    pct = np.where(total > 0, 100.0 * mito_counts / np.maximum(total, 1), 0.0)
    df = pd.DataFrame(
        {f"{key_added}.total_counts": total, f"{key_added}.n_genes": n_genes, f"{key_added}.pct_mito": pct}, index=adata.obs_names
    )
    for c in df.columns:
        adata.obs[c] = df[c].to_numpy()
    adata.var[f"{key_added}.n_obs"] = n_obs
    adata.var[f"{key_added}.total_counts"] = gene_total
    store_params(adata, key_added, {"layer": layer, "mito_prefix": mito_prefix, "n_mito_genes": int(mito.sum())})
    return df


@counts_input("layer")
def normalize(
    adata: AnnData, *, layer: str | None = "counts", target_sum: float | None = 1e4, log1p: bool = True, key_added: str = "lognorm"
) -> None:
    """Library-size normalisation (+ ``log1p``) of raw counts into ``layers[key_added]``.

    Parameters
    ----------
    adata
        Observations x genes.
    layer
        Layer holding raw counts (``None``: ``X``).
    target_sum
        Counts per observation after scaling (``None``: the median total).
    log1p
        Apply ``log(1 + x)`` after scaling.
    key_added
        Output layer (default ``"lognorm"``, the layer the domain methods read).

    Examples
    --------
    >>> expm.spatial_bin.normalize(run_on_samples=True)  # doctest: +SKIP
    """
    from ._expression import normalize_total

    X = get_matrix(adata, layer)
    check_counts(X, layer=layer)
    out, target = normalize_total(X, target_sum=target_sum, log1p=log1p)
    adata.layers[key_added] = out
    store_params(adata, key_added, {"layer": layer, "target_sum": target, "log1p": log1p})


def pca(
    adata: AnnData, *, layer: str | None = "lognorm", n_comps: int = 50, n_top_genes: int | None = 2000, seed: int | None = None,
    key_added: str = "X_pca",
) -> None:
    """PCA of (highly variable genes of) a normalised layer into ``obsm[key_added]``.

    Parameters
    ----------
    adata
        Observations x genes.
    layer
        Normalised (log) expression layer.
    n_comps
        Number of principal components (capped at ``min(n_obs, n_genes) - 1``).
    n_top_genes
        Use the genes with the largest variance of ``layer`` (``None``: all genes).
    seed
        Random seed of the solver (randomised SVD, or ARPACK's start vector for sparse layers).
    key_added
        Output obsm key; the explained variance ratio and the genes used go to ``uns[key_added]``.

    A sparse layer is never densified: it is centred implicitly (scanpy's sparse PCA).

    Examples
    --------
    >>> expm.rna.pca(run_on_samples=True, n_comps=30)  # doctest: +SKIP
    """
    from .._settings import settings
    from ._expression import pca as pca_scores
    from ._expression import top_variance_genes

    X = get_matrix(adata, layer)
    check_positive_int("n_comps", n_comps)
    n_comps = min(n_comps, min(adata.shape) - 1)
    if n_comps < 1:
        raise InvalidInputError(f"PCA needs at least 2 observations and 2 genes; got {adata.shape}.")
    genes = top_variance_genes(X, n_top_genes)
    rs = settings.seed if seed is None else seed
    adata.obsm[key_added], ratio = pca_scores(X[:, genes], n_comps, seed=rs)  # sparse stays sparse
    store_params(adata, key_added, {"layer": layer, "n_comps": n_comps, "n_top_genes": n_top_genes, "seed": rs},
                 variance_ratio=ratio, genes=np.asarray(adata.var_names[genes]).astype(str))


@renamed_options(use_rep="obsm_key")
def neighbors_umap(
    adata: AnnData, *, obsm_key: str = "X_pca", n_neighbors: int = 15, n_pcs: int | None = None, seed: int | None = None,
    key_added: str = "X_umap",
) -> None:
    """k-nearest-neighbour graph (``obsp['connectivities']``/``['distances']``) and UMAP (``obsm[key_added]``).

    Parameters
    ----------
    adata
        AnnData with the representation in ``obsm[obsm_key]``.
    obsm_key
        ``obsm`` key of the representation the neighbours are searched in (e.g. ``"X_pca"`` from
        ``pca``). Deprecated alias: ``use_rep=``.
    n_neighbors
        Neighbours per cell or spot.
    n_pcs
        Leading columns of the representation used (``None``: all).
    seed
        Seed of UMAP (``None``: ``em.settings.seed``).
    key_added
        ``obsm`` key of the UMAP coordinates.

    Examples
    --------
    >>> expm.rna.neighbors_umap(run_on_samples=True)  # doctest: +SKIP
    """
    import scanpy as sc

    from .._settings import settings

    if obsm_key not in adata.obsm:
        raise InvalidInputError(f"obsm[{obsm_key!r}] not found (available: {list(adata.obsm)}); run pca first.")
    rs = settings.seed if seed is None else seed
    sc.pp.neighbors(adata, use_rep=obsm_key, n_neighbors=n_neighbors, n_pcs=n_pcs, random_state=rs)
    sc.tl.umap(adata, random_state=rs)
    if key_added != "X_umap":
        adata.obsm[key_added] = adata.obsm.pop("X_umap")
    store_params(adata, key_added, {"obsm_key": obsm_key, "n_neighbors": n_neighbors, "n_pcs": n_pcs, "seed": rs})


def spatial_smooth(
    adata: AnnData, *, layer: str | None = "lognorm", spatial_key: str = Key.SPATIAL, n_neighbors: int = 6, alpha: float = 0.5,
    n_iter: int = 1, key_added: str = "smoothed",
) -> Any:
    """Denoise expression by diffusion over the spatial k-nearest-neighbour graph.

    Each iteration replaces ``x`` by ``(1 - alpha) x + alpha * mean(x of the k nearest spots)``.
    Deterministic; its cost grows with ``n_iter`` (used as the CPU-bound example of the runner
    benchmark).

    Parameters
    ----------
    adata
        Spots x genes with coordinates in ``obsm[spatial_key]``.
    layer
        Input layer (``None``: ``X``).
    spatial_key
        obsm key of the coordinates.
    n_neighbors
        Neighbours per spot (6 = the Visium hexagon).
    alpha
        Weight of the neighbour mean, in [0, 1].
    n_iter
        Diffusion steps.
    key_added
        Output layer.

    Examples
    --------
    >>> expm.spatial_bin.spatial_smooth(run_on_samples=True, n_iter=2)  # doctest: +SKIP
    """
    import scipy.sparse as sp

    from ._graph import knn_graph

    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha must be in [0, 1]; got {alpha}.")
    check_positive_int("n_iter", n_iter)
    xy = get_coordinates(adata, spatial_key, min_obs=2)
    k = min(check_positive_int("n_neighbors", n_neighbors), adata.n_obs - 1)
    W = knn_graph(xy, k, weights="mean")  # W @ x: the mean of the k nearest spots
    X = get_matrix(adata, layer)
    X = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    out = X.astype(np.float64)
    for _ in range(n_iter):
        out = (1.0 - alpha) * out + alpha * (W @ out)
    adata.layers[key_added] = out.astype(np.float32)
    store_params(adata, key_added, {"layer": layer, "spatial_key": spatial_key, "n_neighbors": k, "alpha": alpha, "n_iter": n_iter})
    return float(np.abs(out - X).mean())


# ---------------------------------------------------------------------------------------------
# filtering (scanpy's sc.pp.filter_cells / sc.pp.filter_genes, several thresholds at once)


def _check_threshold(name: str, value: Any, *, percent: bool = False) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) or not np.isfinite(value) or value < 0:
        raise InvalidInputError(f"{name} must be a number >= 0 or None; got {value!r}.")
    if percent and value > 100:
        raise InvalidInputError(f"{name} is a percentage (0-100); got {value!r}.")


def _cell_mask(adata: AnnData, options: dict[str, Any]) -> tuple[np.ndarray, dict[str, int]]:
    names = ("min_counts", "min_genes", "max_counts", "max_genes", "max_pct_mt")
    for n in names:
        _check_threshold(n, options.get(n), percent=n == "max_pct_mt")
    if all(options.get(n) is None for n in names):
        raise InvalidInputError(f"filter_cells needs at least one threshold: {', '.join(names)}.")
    X = get_matrix(adata, options.get("layer", "counts"))
    total = np.asarray(X.sum(1), dtype=np.float64).ravel()
    n_genes = np.asarray((X > 0).sum(1)).ravel()
    keep = np.ones(adata.n_obs, dtype=bool)
    removed: dict[str, int] = {}

    def apply(name: str, ok: np.ndarray) -> None:
        nonlocal keep
        removed[name] = int((~ok).sum())
        keep &= ok

    if options.get("min_counts") is not None:
        apply("min_counts", total >= options["min_counts"])
    if options.get("max_counts") is not None:
        apply("max_counts", total <= options["max_counts"])
    if options.get("min_genes") is not None:
        apply("min_genes", n_genes >= options["min_genes"])
    if options.get("max_genes") is not None:
        apply("max_genes", n_genes <= options["max_genes"])
    if options.get("max_pct_mt") is not None:
        prefix = str(options.get("mito_prefix", "mt-")).lower()
        mito = np.asarray(_gene_symbols(adata).str.lower().str.startswith(prefix), dtype=bool)
        mt = np.asarray(X[:, mito].sum(1), dtype=np.float64).ravel() if mito.any() else np.zeros_like(total)
        pct = np.where(total > 0, 100.0 * mt / np.maximum(total, 1e-300), 0.0)
        apply("max_pct_mt", pct <= options["max_pct_mt"])
    return keep, removed


def _gene_mask(adata: AnnData, options: dict[str, Any]) -> tuple[np.ndarray, dict[str, int]]:
    names = ("min_cells", "min_counts", "max_cells", "max_counts")
    for n in names:
        _check_threshold(n, options.get(n))
    if all(options.get(n) is None for n in names):
        raise InvalidInputError(f"filter_genes needs at least one threshold: {', '.join(names)}.")
    import scipy.sparse as sp

    X = get_matrix(adata, options.get("layer", "counts"))
    Xc = X.tocsc() if sp.issparse(X) else X
    total = np.asarray(Xc.sum(0), dtype=np.float64).ravel()
    n_cells = np.asarray((Xc > 0).sum(0)).ravel()
    keep = np.ones(adata.n_vars, dtype=bool)
    removed: dict[str, int] = {}
    for name, ok in (
        ("min_cells", None if options.get("min_cells") is None else n_cells >= options["min_cells"]),
        ("max_cells", None if options.get("max_cells") is None else n_cells <= options["max_cells"]),
        ("min_counts", None if options.get("min_counts") is None else total >= options["min_counts"]),
        ("max_counts", None if options.get("max_counts") is None else total <= options["max_counts"]),
    ):
        if ok is not None:
            removed[name] = int((~ok).sum())
            keep &= ok
    return keep, removed


def _refuse_empty(kind: str, what: str, keep: np.ndarray, removed: dict[str, int], sample: str | None) -> None:
    if not keep.any():
        detail = ", ".join(f"{k} removes {v}" for k, v in removed.items())
        where = "the data" if sample is None else f"sample {sample!r}"
        raise InvalidInputError(
            f"{kind} would remove all {keep.size} {what} of {where} ({detail}); nothing was changed. "
            "Loosen the thresholds (look at expm.<modality>.qc_metrics() first), or leave this sample out with "
            "run_on_samples=[...]."
        )


def _check_integrated(kind: str, sample: str) -> None:
    if sample == "integrated":
        raise InvalidInputError(
            f"{kind} removes observations or genes of a sample; run it per sample (run_on_samples=True or a list), "
            "not on the integrated data (run_on_samples=None)."
        )


def _precheck_cells(adata: AnnData, options: dict[str, Any], *, sample: str) -> None:
    _check_integrated("filter_cells", sample)
    _refuse_empty("filter_cells", "observations", *_cell_mask(adata, options), sample)


def _precheck_genes(adata: AnnData, options: dict[str, Any], *, sample: str) -> None:
    _check_integrated("filter_genes", sample)
    _refuse_empty("filter_genes", "genes", *_gene_mask(adata, options), sample)


@subsets_sample(_precheck_cells)
@counts_input("layer")
def filter_cells(
    adata: AnnData, *, layer: str | None = "counts", min_counts: float | None = None, min_genes: int | None = None,
    max_counts: float | None = None, max_genes: int | None = None, max_pct_mt: float | None = None, mito_prefix: str = "mt-",
    key_added: str = "filter_cells",
) -> pd.Series:
    """Remove observations (cells, spots, bins) that fail quality thresholds; the sample is subset in place.

    Same rules as scanpy's ``sc.pp.filter_cells`` (an observation is kept when its total counts is
    ``>= min_counts`` and ``<= max_counts`` and its number of detected genes is ``>= min_genes``
    and ``<= max_genes``), here several at once, plus ``max_pct_mt``: the percentage of counts in
    genes whose symbol (``var['gene']``, else the name) starts with ``mito_prefix``
    (case-insensitive), kept when ``<=`` the threshold. All are computed from the raw counts of
    ``layer``. Every layer, ``obsm``/``obsp`` entry and column is subset with the observations.

    A filter that would remove every observation of a chosen sample is refused before any sample
    is changed. ``uns[key_added]`` records the parameters, the number kept and removed, and the
    number removed by each threshold.

    Parameters
    ----------
    adata
        Observations x genes.
    layer
        Layer holding raw counts (``None``: ``X``).
    min_counts, max_counts
        Bounds on the total counts of an observation.
    min_genes, max_genes
        Bounds on the number of genes with a count > 0.
    max_pct_mt
        Largest percentage (0-100) of mitochondrial counts.
    mito_prefix
        Prefix of mitochondrial gene symbols (``"mt-"`` mouse, ``"MT-"`` human; case-insensitive).
    key_added
        ``uns`` key of the record.

    Returns
    -------
    Boolean Series over the observations before filtering: ``True`` for the kept ones.

    Examples
    --------
    >>> expm.spatial_bin.filter_cells(min_counts=500, min_genes=200, max_pct_mt=20, run_on_samples=True)  # doctest: +SKIP
    """
    options = {"layer": layer, "min_counts": min_counts, "min_genes": min_genes, "max_counts": max_counts,
               "max_genes": max_genes, "max_pct_mt": max_pct_mt, "mito_prefix": mito_prefix}
    return _apply_filter(adata, "filter_cells", options, key_added)


@subsets_sample(_precheck_genes)
@counts_input("layer")
def filter_genes(
    adata: AnnData, *, layer: str | None = "counts", min_cells: int | None = None, min_counts: float | None = None,
    max_cells: int | None = None, max_counts: float | None = None, key_added: str = "filter_genes",
) -> pd.Series:
    """Remove genes that fail detection thresholds; the sample is subset in place.

    Same rules as scanpy's ``sc.pp.filter_genes`` (a gene is kept when it has a count > 0 in
    ``>= min_cells`` and ``<= max_cells`` observations and its total counts is ``>= min_counts``
    and ``<= max_counts``), several at once, computed from the raw counts of ``layer``, per
    sample. Every layer, ``varm`` entry and ``var`` column is subset with the genes.

    A filter that would remove every gene of a chosen sample is refused before any sample is
    changed. ``uns[key_added]`` records the parameters and the numbers kept and removed.

    Parameters
    ----------
    adata
        Observations x genes.
    layer
        Layer holding raw counts (``None``: ``X``).
    min_cells, max_cells
        Bounds on the number of observations in which the gene is detected.
    min_counts, max_counts
        Bounds on the gene's total counts.
    key_added
        ``uns`` key of the record.

    Returns
    -------
    Boolean Series over the genes before filtering: ``True`` for the kept ones.

    Examples
    --------
    >>> expm.spatial_bin.filter_genes(min_cells=10, run_on_samples=True)  # doctest: +SKIP
    """
    options = {"layer": layer, "min_cells": min_cells, "min_counts": min_counts, "max_cells": max_cells, "max_counts": max_counts}
    return _apply_filter(adata, "filter_genes", options, key_added)


def _apply_filter(adata: AnnData, name: str, options: dict[str, Any], key_added: str) -> pd.Series:
    """Shared body of filter_cells (obs) and filter_genes (var): mask, refuse an empty result,
    subset in place, record; returns the kept-mask over the names before filtering."""
    cells = name == "filter_cells"
    check_counts(get_matrix(adata, options["layer"]), layer=options["layer"])
    keep, removed = (_cell_mask if cells else _gene_mask)(adata, options)
    _refuse_empty(name, "observations" if cells else "genes", keep, removed, None)
    out = pd.Series(keep, index=(adata.obs_names if cells else adata.var_names).copy(), name="kept")
    if not keep.all():
        (adata._inplace_subset_obs if cells else adata._inplace_subset_var)(keep)
    store_params(adata, key_added, options, n_kept=int(keep.sum()), n_removed=int((~keep).sum()), removed_by=removed)
    return out
