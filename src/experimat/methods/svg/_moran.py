"""Moran's I for every gene: p-values from the exact permutation moments (Pearson type III), the normal
approximations (normality, randomisation) or Monte Carlo permutations."""

from __future__ import annotations

import numpy as np
from scipy import sparse, special

from experimat._errors import InvalidInputError
from experimat.methods._graph import row_normalize, spatial_graph


def spatial_weights(adata, xy: np.ndarray, *, neighbors: str, n_neighbors: int, transformation: str):
    """Spatial weights matrix (the shared graph of :mod:`experimat.methods._graph`, row-standardised for
    ``transformation='r'``) and the kind of graph used."""
    W, used = spatial_graph(adata, xy, kind=neighbors, n_neighbors=n_neighbors)
    if transformation == "r":
        W = row_normalize(W)
    return sparse.csr_matrix(W), used


def moran_moments(W: sparse.csr_matrix) -> dict[str, float]:
    """S0, S1, S2 of a weights matrix."""
    S0 = float(W.sum())
    Wt = W + W.T
    S1 = 0.5 * float(Wt.multiply(Wt).sum())
    S2 = float(((np.asarray(W.sum(1)).ravel() + np.asarray(W.sum(0)).ravel()) ** 2).sum())
    return {"S0": S0, "S1": S1, "S2": S2}


def moran_i(Z: np.ndarray, W: sparse.csr_matrix, S0: float) -> np.ndarray:
    """Moran's I of each column of ``Z`` (spots × genes, centred)."""
    n = Z.shape[0]
    num = np.einsum("ij,ij->j", Z, W @ Z)
    den = np.einsum("ij,ij->j", Z, Z)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (n / S0) * num / den


def auto_min_spots(W: sparse.spmatrix, *, pairs: float = 2.0, floor: int = 10) -> int:
    """Smallest ``k`` (at least ``floor``) such that ``k`` random spots hold ``pairs`` neighbouring
    pairs in expectation: ``k (k - 1) / 2 · d / (n - 1) >= pairs`` with ``d`` the mean number of
    neighbours of the (symmetrised) graph."""
    n = W.shape[0]
    A = (abs(W) + abs(W.T)) > 0
    d = max(float(A.sum() - A.diagonal().sum()) / n, 1e-12)
    k = int(np.ceil(0.5 * (1.0 + np.sqrt(1.0 + 8.0 * pairs * (n - 1) / d))))
    return max(floor, k)


def _norm_sf(z: np.ndarray, alternative: str) -> np.ndarray:
    if alternative == "greater":
        return special.ndtr(-z)
    if alternative == "less":
        return special.ndtr(z)
    return 2.0 * special.ndtr(-np.abs(z))


def spatial_svg_moran(
    adata,
    *,
    layer: str | None = None,
    spatial_key: str = "spatial",
    neighbors: str = "auto",
    n_neighbors: int = 6,
    transformation: str = "r",
    alternative: str = "greater",
    null: str = "pearson3",
    n_perms: int = 0,
    min_spots: int | None = None,
    seed: int | None = None,
    alpha: float = 0.05,
    n_svg: int | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
    key_added: str = "moran",
):
    """Moran's I spatial autocorrelation of every gene.

    ``I = (n / S0) Σ_ij w_ij z_i z_j / Σ_i z_i²`` with ``z`` the centred expression. Weights come
    from the Visium hexagonal neighbours (``obs['array_row']``, ``obs['array_col']``), the 8
    surrounding bins of a square grid (Visium HD) or from
    the ``n_neighbors`` nearest spots, row-standardised by default (as squidpy). p-values are
    analytic under normality or randomisation (Cliff & Ord), optionally also from permutations of
    the spots, and Benjamini–Hochberg adjusted. The default p-value (``null="pearson3"``) is the
    upper tail of a Pearson type III distribution matched to the exact mean, variance and
    skewness of ``I`` over all permutations of the spots (given the gene's values; see
    :mod:`experimat.methods.svg._perm`): it is calibrated under the null "spot locations
    exchangeable" also for sparse, skewed genes, where the normal approximations give too many
    small p-values. Genes with a value above their minimum in fewer than ``min_spots`` spots get
    NaN (their permutation distribution is too discrete for any smooth approximation).

    Parameters
    ----------
    adata
        AnnData with spots in ``obs``.
    layer
        Layer to test (``None``: ``adata.X``); usually log-normalised expression.
    spatial_key
        ``obsm`` key of the coordinates (used for the kNN graph).
    neighbors
        ``"auto"`` (hexagonal when Visium array coordinates are present, the square grid when
        the array coordinates are not a hexagonal lattice — Visium HD bins — else kNN),
        ``"hex"``, ``"grid"`` or ``"knn"``.
    n_neighbors
        Neighbours per spot for the kNN graph (symmetrised).
    transformation
        ``"r"`` (row-standardised weights) or ``"b"`` (binary).
    alternative
        ``"greater"`` (positive autocorrelation: spatially variable), ``"two-sided"`` or ``"less"``.
    null
        Which p-value fills ``pval``: ``"pearson3"`` (permutation moments, default),
        ``"normality"`` or ``"randomisation"`` (Cliff & Ord's normal approximations; all three are
        reported as ``pval_p3``, ``pval_norm`` and ``pval_rand``). With ``n_perms > 0`` the Monte
        Carlo permutation p-value fills ``pval``. Only ``"pearson3"`` is one-sided by construction
        (``alternative="greater"``); with other alternatives it gives the matching tail.
    n_perms
        Number of spot permutations (0: none).
    min_spots
        Genes with a value above their minimum (for counts and log-normalised data: expressed) in
        fewer spots get NaN p-values; the count is reported as ``n_spots``. ``None``: the
        smallest number of spots among which about two neighbouring pairs are expected by chance
        (:func:`auto_min_spots`; 13 for 260 spots with 6 nearest neighbours, 27 for 1,000 Visium
        spots, about 60 for 5,000), at least 10: below it ``I`` takes only a few distinct values
        under permutations and no smooth approximation is uniform.
    seed
        Seed of the permutations (``None``: ``em.settings.seed``).
    alpha
        Adjusted p-value threshold for ``.svg``.
    n_svg
        Mark at most this many top-ranked significant genes in ``.svg`` (``None``: all).
    chunk_size
        Genes per chunk (sparse input is densified one chunk at a time).
    progress
        Show a progress bar over chunks.
    key_added
        Prefix of the result columns and the ``uns`` key.

    Returns
    -------
    DataFrame indexed by ``var_names`` with ``gene`` (the symbol, when ``var['gene']`` exists), ``I``, ``expected_I``, ``var_I_norm``, ``var_I_rand``,
    ``skew_I`` (permutation skewness), ``pval_p3``, ``pval_norm``, ``pval_rand`` (``pval_sim`` with
    permutations), ``pval``, ``padj``, ``svg``, ``rank``, ``n_spots``; written to ``adata.var`` as
    ``{key_added}.<column>``. Constant genes get NaN; genes below ``min_spots`` get NaN p-values.

    Examples
    --------
    >>> import experimat as em, scanpy as sc
    >>> from experimat.methods.svg import spatial_svg_moran
    >>> adata = em.datasets.synthetic_svg(1000, 200)
    >>> sc.pp.normalize_total(adata); sc.pp.log1p(adata)
    >>> res = spatial_svg_moran(adata, progress=False)
    >>> res.sort_values("rank").head()
    """
    import pandas as pd

    from experimat._logging import ProgressBar, logger
    from experimat._settings import settings
    from experimat.methods._checks import check_choice, get_matrix, store_params

    from ._common import as_csc_or_dense, chunk_size_for, coordinates, dense_chunk, gene_chunks, with_gene_symbols
    from ._gp import _finish_ranking, write_var
    from ._perm import kernel_invariants_sparse, moment_weights, pearson3_logsf, permutation_moments, power_sums
    from ._stats import bh_adjust

    check_choice("neighbors", neighbors, ("auto", "hex", "grid", "knn"))
    check_choice("transformation", transformation, ("r", "b"))
    check_choice("alternative", alternative, ("greater", "two-sided", "less"))
    check_choice("null", null, ("pearson3", "normality", "randomisation"))
    if n_perms < 0:
        raise InvalidInputError(f"n_perms must be >= 0; got {n_perms}.")
    if min_spots is not None and min_spots < 0:
        raise InvalidInputError(f"min_spots must be >= 0 (or None: automatic); got {min_spots}.")
    xy = coordinates(adata, spatial_key)
    X = as_csc_or_dense(get_matrix(adata, layer))
    n, G = X.shape
    W, used = spatial_weights(adata, xy, neighbors=neighbors, n_neighbors=n_neighbors, transformation=transformation)
    mom = moran_moments(W)
    if min_spots is None:
        min_spots = auto_min_spots(W)
    weights = moment_weights([kernel_invariants_sparse(W)])
    S0, S1, S2 = mom["S0"], mom["S1"], mom["S2"]
    if S0 <= 0:
        raise InvalidInputError("the spatial graph has no edges; check the coordinates or use neighbors='knn'.")
    start = logger.info(f"Moran's I on {n} spots x {G} genes ({used} neighbours)")
    EI = -1.0 / (n - 1)
    var_norm = (n**2 * S1 - n * S2 + 3 * S0**2) / ((n**2 - 1) * S0**2) - EI**2
    rng = np.random.default_rng(settings.seed if seed is None else seed)
    perms = [rng.permutation(n) for _ in range(n_perms)]
    I = np.full(G, np.nan)  # noqa: E741
    b2 = np.full(G, np.nan)
    skew = np.full(G, np.nan)
    mean_p, var_p = np.full(G, np.nan), np.full(G, np.nan)
    n_spots = np.zeros(G, dtype=np.int64)
    count_ge = np.zeros(G)
    cs = chunk_size or chunk_size_for(n, budget_elems=2_000_000)
    chunks = list(gene_chunks(G, cs))
    with ProgressBar(len(chunks), "Moran's I", disable=not (progress and settings.progress)) as bar:
        for c in chunks:
            Z = dense_chunk(X, c)
            n_spots[c] = (Z > Z.min(0)).sum(0)
            Z = Z - Z.mean(0)
            m2 = (Z**2).mean(0)
            const = m2 <= 1e-24 * np.maximum(1.0, np.abs(Z).max(0) ** 2)
            Ic = moran_i(Z, W, S0)
            Ic[const] = np.nan
            I[c] = Ic
            with np.errstate(divide="ignore", invalid="ignore"):
                b2[c] = (Z**4).mean(0) / m2**2
            # exact permutation moments of the numerator zᵀ W z, scaled to I (zᵀz is invariant)
            ps = power_sums(Z.T)
            mq, vq, sk = permutation_moments(ps, n, weights)
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = (n / S0) / ps[:, 0]
                mean_p[c], var_p[c], skew[c] = mq[:, 0] * scale, vq[:, 0] * scale**2, sk[:, 0]
            for perm in perms:
                Ip = moran_i(Z[perm], W, S0)
                if alternative == "greater":
                    count_ge[c] += Ip >= Ic
                elif alternative == "less":
                    count_ge[c] += Ip <= Ic
                else:
                    count_ge[c] += np.abs(Ip - EI) >= np.abs(Ic - EI)
            bar.update()
    var_rand = (
        n * ((n**2 - 3 * n + 3) * S1 - n * S2 + 3 * S0**2) - b2 * ((n**2 - n) * S1 - 2 * n * S2 + 6 * S0**2)
    ) / ((n - 1) * (n - 2) * (n - 3) * S0**2) - EI**2
    with np.errstate(invalid="ignore", divide="ignore"):
        p_norm = _norm_sf((I - EI) / np.sqrt(var_norm), alternative)
        p_rand = _norm_sf((I - EI) / np.sqrt(var_rand), alternative)
        x = (I - mean_p) / np.sqrt(var_p)
    if alternative == "greater":
        p_p3 = np.exp(pearson3_logsf(x, skew))
    elif alternative == "less":
        p_p3 = np.exp(pearson3_logsf(-x, -skew))
    else:
        p_p3 = np.minimum(1.0, 2.0 * np.minimum(np.exp(pearson3_logsf(x, skew)), np.exp(pearson3_logsf(-x, -skew))))
    few = n_spots < min_spots
    p_p3[few] = p_norm[few] = p_rand[few] = np.nan
    res = pd.DataFrame(index=adata.var_names.copy())
    res["I"] = I
    res["expected_I"] = EI
    res["var_I_norm"] = var_norm
    res["var_I_rand"] = var_rand
    res["skew_I"] = skew
    res["pval_p3"] = p_p3
    res["pval_norm"] = p_norm
    res["pval_rand"] = p_rand
    if n_perms:
        res["pval_sim"] = np.where(np.isfinite(I) & ~few, (count_ge + 1.0) / (n_perms + 1.0), np.nan)
        res["pval"] = res["pval_sim"]
    else:
        res["pval"] = {"pearson3": p_p3, "normality": p_norm, "randomisation": p_rand}[null]
    res["padj"] = bh_adjust(res["pval"].to_numpy())
    score = I if alternative != "less" else -I
    if alternative == "two-sided":
        score = np.abs(I - EI)
    _finish_ranking(res, score=score, sig=res["padj"].to_numpy() < alpha, n_svg=n_svg)
    res["n_spots"] = n_spots
    write_var(adata, res, key_added)
    store_params(
        adata,
        key_added,
        dict(
            layer=layer,
            spatial_key=spatial_key,
            neighbors=used,
            n_neighbors=n_neighbors,
            transformation=transformation,
            alternative=alternative,
            null=null,
            n_perms=n_perms,
            min_spots=min_spots,
            seed=seed,
            alpha=alpha,
            n_svg=n_svg,
            method="moran",
        ),
    )
    logger.info(f"Moran's I: {int(res['svg'].sum())} genes at padj < {alpha}", time=start)
    return with_gene_symbols(res, adata)
