"""Downstream analyses and QC-plot data of a cell2location mapping."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experimat._compat import renamed_options
from experimat._errors import InvalidInputError, MissingSlotError
from experimat._logging import logger
from experimat._optional import import_optional
from experimat._settings import settings
from experimat.methods._checks import check_positive_int, get_matrix, get_obsm, store_params

from ._reference import ReferenceSignatures

if TYPE_CHECKING:
    from anndata import AnnData


def _fit_entry(adata: AnnData, key_added: str) -> Mapping[str, Any]:
    entry = adata.uns.get(key_added)
    if not isinstance(entry, Mapping) or "posterior" not in entry or "genes" not in entry:
        raise MissingSlotError(
            f"uns[{key_added!r}] holds no cell2location fit; run deconvolve_cell2location(adata, ..., "
            f"key_added={key_added!r}) first."
        )
    return entry


@renamed_options(key_added="cell2location_key")
def training_history(adata: AnnData, *, cell2location_key: str = "cell2location") -> np.ndarray:
    """The loss (negative ELBO) per epoch of a fit, for the training-history plot.

    Parameters
    ----------
    adata
        AnnData fitted by :func:`deconvolve_cell2location`.
    cell2location_key
        ``key_added`` of the cell2location fit. Deprecated alias: ``key_added=``.

    Returns
    -------
    1-D float array, one value per epoch.

    Examples
    --------
    >>> h = training_history(adata_vis)  # doctest: +SKIP
    """
    entry = adata.uns.get(cell2location_key)
    if not isinstance(entry, Mapping) or "training_history" not in entry:
        raise MissingSlotError(f"uns[{cell2location_key!r}]['training_history'] not found; run deconvolve_cell2location first.")
    return np.asarray(entry["training_history"], dtype=np.float64)


def _expected(adata: AnnData, key_added: str, summary: str = "means") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(mu spots x genes with background, batch codes, genes) under the posterior summary of w_sf."""
    entry = _fit_entry(adata, key_added)
    post = entry["posterior"]
    w = get_obsm(adata, f"{key_added}.{summary}")
    cs = np.asarray(post["cell_state"], dtype=np.float64)
    codes = _batch_codes(adata, entry)
    mu = ((w @ cs) * np.asarray(post["m_g"])[None, :] + np.asarray(post["s_g_gene_add"])[codes]) * np.asarray(
        post["detection_y_s"]
    )[:, None]
    return mu, codes, [str(g) for g in entry["genes"]]


def _batch_codes(adata: AnnData, entry: Mapping[str, Any]) -> np.ndarray:
    bk = entry.get("batch_key")
    cats = [str(c) for c in entry.get("batch_categories", ["all"])]
    if bk is None or bk not in adata.obs:
        return np.zeros(adata.n_obs, dtype=np.int64)
    return pd.Categorical(adata.obs[bk].astype(str), categories=cats).codes.astype(np.int64)


def _observed(adata: AnnData, genes: list[str], layer: str | None) -> np.ndarray:
    X = get_matrix(adata, layer)[:, adata.var_names.get_indexer(genes)]
    return np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)


@renamed_options(key_added="cell2location_key")
def reconstruction_qc(
    adata: AnnData,
    *,
    cell2location_key: str = "cell2location",
    layer: str | None = "counts",
    bins: int = 50,
) -> dict[str, Any]:
    """Observed counts vs the model's expected counts, for the reconstruction-accuracy 2-D histogram.

    Parameters
    ----------
    adata
        AnnData fitted by :func:`deconvolve_cell2location`.
    cell2location_key
        ``key_added`` of the cell2location fit. Deprecated alias: ``key_added=``.
    layer
        Layer with the counts the model was fitted on.
    bins
        Bins per axis of the 2-D histogram of ``log10(1 + x)``.

    Returns
    -------
    dict with ``observed`` and ``expected`` (spots x mapped genes), ``hist``/``x_edges``/``y_edges``
    (histogram of log10(1 + observed) on x vs log10(1 + expected) on y), ``pearson_log`` (correlation
    of the log values) and ``genes``.

    Examples
    --------
    >>> qc = reconstruction_qc(adata_vis)  # doctest: +SKIP
    >>> plt.pcolormesh(qc["x_edges"], qc["y_edges"], np.log1p(qc["hist"].T))  # doctest: +SKIP
    """
    check_positive_int("bins", bins)
    mu, _, genes = _expected(adata, cell2location_key, "means")
    obs = _observed(adata, genes, layer)
    lx, ly = np.log10(1 + obs).ravel(), np.log10(1 + mu).ravel()
    hist, xe, ye = np.histogram2d(lx, ly, bins=bins)
    r = float(np.corrcoef(lx, ly)[0, 1]) if lx.std() > 0 and ly.std() > 0 else float("nan")
    return {
        "observed": obs,
        "expected": mu,
        "hist": hist,
        "x_edges": xe,
        "y_edges": ye,
        "pearson_log": r,
        "genes": genes,
    }


@renamed_options(key_added="cell2location_key")
def totals_qc(adata: AnnData, *, cell2location_key: str = "cell2location", layer: str | None = "counts") -> pd.DataFrame:
    """Per-spot totals for the "expected vs observed totals per batch" QC plot.

    Parameters
    ----------
    adata
        AnnData fitted by :func:`deconvolve_cell2location`.
    cell2location_key
        ``key_added`` of the cell2location fit. Deprecated alias: ``key_added=``.
    layer
        Layer with the counts the model was fitted on.

    Returns
    -------
    DataFrame indexed by ``obs_names`` with ``batch``, ``observed_total`` and ``expected_total``
    (over the mapped genes), ``total_abundance`` (sum of posterior mean abundances) and
    ``detection_y_s`` (per-spot detection efficiency).

    Examples
    --------
    >>> df = totals_qc(adata_vis)  # doctest: +SKIP
    >>> for b, d in df.groupby("batch"): plt.scatter(d.observed_total, d.expected_total)  # doctest: +SKIP
    """
    entry = _fit_entry(adata, cell2location_key)
    mu, codes, genes = _expected(adata, cell2location_key, "means")
    obs = _observed(adata, genes, layer)
    cats = [str(c) for c in entry.get("batch_categories", ["all"])]
    return pd.DataFrame(
        {
            "batch": pd.Categorical.from_codes(codes, categories=cats),
            "observed_total": obs.sum(1),
            "expected_total": mu.sum(1),
            "total_abundance": get_obsm(adata, f"{cell2location_key}.means").sum(1),
            "detection_y_s": np.asarray(entry["posterior"]["detection_y_s"], dtype=np.float64),
        },
        index=adata.obs_names.copy(),
    )


@renamed_options(key_added="cell2location_key")
def expected_expression_per_type(
    adata: AnnData,
    reference: ReferenceSignatures | pd.DataFrame | None = None,
    *,
    cell2location_key: str = "cell2location",
    summary: str = "q05",
    genes: Sequence[str] | None = None,
    cell_types: Sequence[str] | None = None,
) -> dict[str, pd.DataFrame]:
    """Expected counts contributed by each cell type in each spot (cell-type-specific expression).

    ``mu_{s,g,f} = w_{s,f} g_{f,g} m_g y_s`` (background excluded), as cell2location's
    ``compute_expected_per_cell_type``; by default with the 5 % quantile of the abundances
    (confidently present cells), as in the tutorial.

    Parameters
    ----------
    adata
        AnnData fitted by :func:`deconvolve_cell2location`.
    reference
        Signatures to use (``None``: those stored with the fit, over the mapped genes).
    cell2location_key
        ``key_added`` of the cell2location fit. Deprecated alias: ``key_added=``.
    summary
        Posterior summary of the abundances: ``"means"`` or a quantile the fit wrote (``"q05"``, ``"q95"``,
        ``"q50"`` with ``quantiles=(0.05, 0.5, 0.95)``, ...).
    genes
        Genes to return (default: all mapped genes).
    cell_types
        Cell types to return (default: all).

    Returns
    -------
    ``{cell_type: DataFrame spots x genes}`` of expected counts.

    Examples
    --------
    >>> per_type = expected_expression_per_type(adata_vis, genes=["Gfap", "Snap25"])  # doctest: +SKIP
    >>> per_type["Astro"]["Gfap"]  # doctest: +SKIP
    """
    if not isinstance(summary, str) or not (summary == "means" or re.fullmatch(r"q\d+(\.\d+)?", summary)):
        raise InvalidInputError(
            f"summary must be 'means' or a posterior quantile such as 'q05' / 'q50' / 'q95'; got {summary!r}."
        )
    entry = _fit_entry(adata, cell2location_key)
    post = entry["posterior"]
    mapped = [str(g) for g in entry["genes"]]
    names = [str(f) for f in entry["factor_names"]]
    if reference is None:
        cs = pd.DataFrame(np.asarray(post["cell_state"], dtype=np.float64).T, index=mapped, columns=names)
    else:
        cs = reference.signatures if isinstance(reference, ReferenceSignatures) else reference
        cs = cs.reindex(index=mapped)
        missing_types = [f for f in names if f not in cs.columns]
        if missing_types or cs.isna().any().any():
            raise InvalidInputError(
                f"reference does not match the fit (missing types {missing_types[:5]} or genes); "
                "pass the signatures used for the mapping or reference=None."
            )
        cs = cs[names]
    genes = mapped if genes is None else list(genes)
    unknown = [g for g in genes if g not in cs.index]
    if unknown:
        raise InvalidInputError(f"genes {unknown[:10]} were not mapped by this fit; mapped genes: {mapped[:10]}...")
    types = names if cell_types is None else list(cell_types)
    bad = [t for t in types if t not in names]
    if bad:
        raise InvalidInputError(f"unknown cell types {bad}; valid: {names}.")
    w = pd.DataFrame(get_obsm(adata, f"{cell2location_key}.{summary}"), columns=names)
    m_g = pd.Series(np.asarray(post["m_g"], dtype=np.float64), index=mapped)[genes].to_numpy()
    y_s = np.asarray(post["detection_y_s"], dtype=np.float64)
    sub = cs.loc[genes]
    return {
        t: pd.DataFrame(
            np.outer(w[t].to_numpy() * y_s, sub[t].to_numpy() * m_g), index=adata.obs_names.copy(), columns=genes
        )
        for t in types
    }


@renamed_options(key="abundance_key")
def region_cluster(
    adata: AnnData,
    *,
    abundance_key: str = "cell2location.q05",
    n_neighbors: int = 15,
    resolution: float = 1.1,
    seed: int | None = None,
    key_added: str = "region_cluster",
) -> pd.Series:
    """Tissue regions: Leiden clustering of spots on their cell abundances (q05 by default).

    As in the cell2location tutorial: a k-nearest-neighbour graph on the abundances (exact,
    Euclidean, symmetrised, unweighted), then Leiden (leidenalg, RB configuration model) at
    ``resolution``.

    Parameters
    ----------
    adata
        AnnData with abundances in ``obsm[abundance_key]``.
    abundance_key
        ``obsm`` key of the abundances. Deprecated alias: ``key=``.
    n_neighbors
        Neighbours of the kNN graph.
    resolution
        Leiden resolution (higher: more regions).
    seed
        Random seed (``None``: ``em.settings.seed``).
    key_added
        obs column of the regions (categorical); parameters in ``uns[key_added]['params']``.

    Returns
    -------
    Categorical Series of region labels indexed by ``obs_names``.

    Examples
    --------
    >>> regions = region_cluster(adata_vis, resolution=1.1)  # doctest: +SKIP
    """
    check_positive_int("n_neighbors", n_neighbors)
    seed = settings.seed if seed is None else seed
    params = {"abundance_key": abundance_key, "n_neighbors": n_neighbors, "resolution": resolution, "seed": seed}
    ab = get_obsm(adata, abundance_key).astype(np.float64)
    if not np.isfinite(ab).all():
        raise InvalidInputError(f"obsm[{abundance_key!r}] has non-finite values.")
    if adata.n_obs <= n_neighbors:
        raise InvalidInputError(
            f"n_neighbors ({n_neighbors}) must be smaller than the number of spots ({adata.n_obs})."
        )
    from experimat.methods._cluster import leiden, relabel_by_size
    from experimat.methods._graph import knn_graph

    import_optional("igraph", purpose="region_cluster")
    import_optional("leidenalg", purpose="region_cluster")
    graph = knn_graph(ab, n_neighbors, symmetric=True)  # symmetrised, unweighted kNN graph of the abundances
    # relabel by size (0 = largest region) for stable names
    labels = relabel_by_size(leiden(graph, resolution=resolution, seed=seed, purpose="region_cluster"))
    order = np.unique(labels)
    cats = [str(i) for i in range(order.size)]
    result = pd.Series(pd.Categorical([str(v) for v in labels], categories=cats), index=adata.obs_names.copy())
    adata.obs[key_added] = result
    store_params(adata, key_added, params, n_regions=int(order.size))
    logger.info(f"region_cluster: {order.size} regions")
    return result


def _match_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Pearson correlation of the columns of ``a`` and ``b`` after optimal matching."""
    from scipy.optimize import linear_sum_assignment

    k = a.shape[1]
    c = np.corrcoef(a.T, b.T)[:k, k:]
    c = np.nan_to_num(c, nan=0.0)
    r, col = linear_sum_assignment(-c)
    return float(c[r, col].mean())


@renamed_options(key="abundance_key")
def colocation_nmf(
    adata: AnnData,
    *,
    abundance_key: str = "cell2location.means",
    n_factors: int | Iterable[int] = range(5, 11),
    n_restarts: int = 5,
    max_iter: int = 1000,
    seed: int | None = None,
    key_added: str = "colocation_nmf",
) -> dict[int, dict[str, Any]]:
    """Cell-type colocation: NMF of the abundances into co-located cell-type groups.

    For each number of factors, NMF (scikit-learn, coordinate descent) is fitted from
    ``n_restarts`` random starts; the restart with the lowest reconstruction error is kept, and the
    stability is the mean (over the other restarts) of the matched-factor Pearson correlation of
    the cell-type loadings with those of the kept fit (1 = identical factors every time).
    Loadings are reported as in cell2location: the fraction of each cell type's abundance in
    each factor (rows sum to 1); location factors are scaled accordingly.

    Parameters
    ----------
    adata
        AnnData with abundances in ``obsm[abundance_key]``.
    abundance_key
        ``obsm`` key of the abundances. Deprecated alias: ``key=``.
    n_factors
        Number(s) of factors to fit.
    n_restarts
        Random restarts per number of factors.
    max_iter
        NMF iterations.
    seed
        Random seed (``None``: ``em.settings.seed``).
    key_added
        Location factors go to ``obsm[f"{key_added}.{n}"]`` (spots x factors), loadings and
        stability to ``uns[key_added]``.

    Returns
    -------
    ``{n: {"loadings": DataFrame types x factors, "factors": DataFrame spots x factors,
    "stability": float, "reconstruction_error": float}}``.

    Examples
    --------
    >>> res = colocation_nmf(adata_vis, n_factors=range(5, 9), n_restarts=5)  # doctest: +SKIP
    >>> res[6]["loadings"].round(2)  # doctest: +SKIP
    """
    import_optional("sklearn", purpose="colocation_nmf")
    from sklearn.decomposition import NMF

    seed = settings.seed if seed is None else seed
    ns = [n_factors] if isinstance(n_factors, (int, np.integer)) else list(n_factors)
    if not ns:
        raise InvalidInputError("n_factors is empty; give an int or a range such as range(5, 11).")
    for n in ns:
        check_positive_int("n_factors", n)
    check_positive_int("n_restarts", n_restarts)
    ab = get_obsm(adata, abundance_key).astype(np.float64)
    if (ab < 0).any() or not np.isfinite(ab).all():
        raise InvalidInputError(f"obsm[{abundance_key!r}] must be finite and non-negative.")
    val = adata.obsm[abundance_key]
    types = [str(c) for c in val.columns] if hasattr(val, "columns") else [f"type{i}" for i in range(ab.shape[1])]
    results: dict[int, dict[str, Any]] = {}
    uns: dict[str, Any] = {"loadings": {}, "stability": {}, "reconstruction_error": {}}
    for n in ns:
        if n > min(ab.shape):
            raise InvalidInputError(f"n_factors={n} exceeds min(n_spots, n_cell_types) = {min(ab.shape)}.")
        fits = []
        for r in range(n_restarts):
            model = NMF(n_components=n, init="random", random_state=int(seed) + 1000 * n + r, max_iter=max_iter)
            W = model.fit_transform(ab)
            fits.append((model.reconstruction_err_, W, model.components_))
        best = int(np.argmin([f[0] for f in fits]))
        err, W, H = fits[best]
        others = [_match_corr(H.T, f[2].T) for i, f in enumerate(fits) if i != best]
        stability = float(np.mean(others)) if others else 1.0
        # loadings: share of each cell type's total abundance explained by each factor
        contrib = H * W.sum(0)[:, None]  # factors x types
        frac = contrib / np.maximum(contrib.sum(0, keepdims=True), 1e-300)
        names = [f"factor{i}" for i in range(n)]
        loadings = pd.DataFrame(frac.T, index=types, columns=names)
        factors = pd.DataFrame(W * H.sum(1)[None, :], index=adata.obs_names.copy(), columns=names)
        adata.obsm[f"{key_added}.{n}"] = factors
        uns["loadings"][str(n)] = loadings
        uns["stability"][str(n)] = stability
        uns["reconstruction_error"][str(n)] = float(err)
        results[int(n)] = {
            "loadings": loadings,
            "factors": factors,
            "stability": stability,
            "reconstruction_error": float(err),
        }
    store_params(
        adata,
        key_added,
        {"abundance_key": abundance_key, "n_factors": ns, "n_restarts": n_restarts, "max_iter": max_iter, "seed": seed},
        **uns,
    )
    return results
