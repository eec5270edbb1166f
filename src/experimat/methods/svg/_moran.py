"""Moran's I for every gene: p-values from the exact permutation moments (Pearson type III), the normal
approximations (normality, randomisation) or Monte Carlo permutations; optionally combined over coarse-grained
neighbourhoods at several scales.

Sparse expression is never densified (unless Monte Carlo permutations are asked for): per gene the statistic
``zᵀ W z`` of the centred values ``z = x - m`` is ``xᵀ W x - m (xᵀ W 1 + 1ᵀ W x) + m² 1ᵀ W 1`` and the power sums
``Σ z^k`` come from the non-zero entries, so a chunk of genes costs O(nnz · neighbours).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse, special

from experimat._errors import InvalidInputError
from experimat._keys import Key
from experimat.methods._graph import lattice_graph, nn_distance, row_normalize, spatial_graph

#: blocks that the coarsest automatic scale keeps at least (fewer blocks: little left to compare)
MIN_BLOCKS = 36
#: non-zero entries of a chunk of sparse genes
CHUNK_NNZ = 2_000_000


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


# ---------------------------------------------------------------- coarse-grained scales


@dataclass
class BlockScale:
    """Spots grouped into square blocks of ``size`` spot spacings; the kernel ``K = B M Bᵀ`` with ``B`` the
    membership and ``M`` the block adjacency with self-loops (a 3 × 3 window of blocks)."""

    size: float
    membership: sparse.csr_matrix  # blocks × spots
    M: sparse.csr_matrix  # blocks × blocks
    counts: np.ndarray  # spots per block

    def min_spots(self, *, pairs: float = 2.0, floor: int = 10) -> int:
        """:func:`auto_min_spots` for this kernel: ``k`` random spots hold ``pairs`` pairs within one window."""
        n = float(self.counts.sum())
        d = max(float(self.counts @ (self.M @ self.counts)) / n - 1.0, 1e-12)  # other spots in a spot's window
        return max(floor, int(np.ceil(0.5 * (1.0 + np.sqrt(1.0 + 8.0 * pairs * (n - 1) / d)))))


def block_scale(xy: np.ndarray, size: float, spacing: float) -> BlockScale:
    """Square blocks of ``size × spacing`` coordinate units (only occupied blocks)."""
    from ._common import block_membership

    code, cells = block_membership(xy, size, spacing)
    nb, n = cells.shape[0], xy.shape[0]
    B = sparse.csr_matrix((np.ones(n), (code, np.arange(n))), shape=(nb, n))
    M = sparse.csr_matrix(lattice_graph(cells[:, 1], cells[:, 0], kind="grid") + sparse.identity(nb))
    return BlockScale(float(size), B, M, np.bincount(code, minlength=nb).astype(np.float64))


def auto_scales(xy: np.ndarray, spacing: float, *, min_blocks: int = MIN_BLOCKS) -> list[float]:
    """Block sizes 4, 8, 16, … spot spacings while at least ``min_blocks`` blocks are occupied."""
    from ._common import block_membership

    out = []
    size = 4.0
    while block_membership(xy, size, spacing)[1].shape[0] >= min_blocks:
        out.append(size)
        size *= 2.0
    return out


def resolve_scales(xy: np.ndarray, scales) -> list[BlockScale]:
    if scales is None:
        return []
    spacing = nn_distance(xy)
    if isinstance(scales, str):
        if scales != "auto":
            raise InvalidInputError(f"scales must be None, 'auto' or block sizes in spot spacings; got {scales!r}.")
        sizes = auto_scales(xy, spacing)
    else:
        sizes = [float(v) for v in np.atleast_1d(np.asarray(scales, dtype=np.float64))]
        if not all(np.isfinite(v) and v >= 1.0 for v in sizes):
            raise InvalidInputError(f"scales (block sizes in spot spacings) must be >= 1; got {list(scales)}.")
    return [block_scale(xy, v, spacing) for v in sizes]


# ---------------------------------------------------------------- per-chunk statistics


@dataclass
class Graph:
    """The spot graph and what the per-gene statistics need of it."""

    W: sparse.csr_matrix
    S0: float
    row_sums: np.ndarray
    col_sums: np.ndarray
    scales: list[BlockScale]


def _col_extrema(v: np.ndarray, indptr: np.ndarray, g: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of a CSC chunk: minimum and maximum over all ``n`` rows (implicit zeros included) and non-zeros."""
    cnt = np.diff(indptr)
    lo, hi = np.zeros(g), np.zeros(g)
    nz = cnt > 0
    if v.size:
        starts = indptr[:-1][nz]
        lo[nz] = np.minimum.reduceat(v, starts)
        hi[nz] = np.maximum.reduceat(v, starts)
    full = cnt >= n
    lo = np.where(full, lo, np.minimum(lo, 0.0))
    hi = np.where(full, hi, np.maximum(hi, 0.0))
    return lo, hi, cnt


def _stats_sparse(X: sparse.csc_matrix, graph: Graph) -> dict[str, np.ndarray]:
    n, g = X.shape
    X = sparse.csc_matrix(X, dtype=np.float64)
    X.sum_duplicates()
    v = X.data
    lo, hi, cnt = _col_extrema(v, X.indptr, g, n)
    col = np.repeat(np.arange(g), cnt)
    m = np.asarray(X.sum(0)).ravel() / n
    n_spots = np.bincount(col, weights=v > lo[col], minlength=g) + np.where(lo < 0.0, n - cnt, 0)
    mc = m[col]
    ps = np.empty((g, 5))
    for k in range(2, 7):
        ps[:, k - 2] = np.bincount(col, weights=(v - mc) ** k - (-mc) ** k, minlength=g) + n * (-m) ** k
    Xr = X.tocsr()
    xWx = np.asarray(Xr.multiply(graph.W @ Xr).sum(0)).ravel()
    num = xWx - m * (Xr.T @ graph.row_sums + Xr.T @ graph.col_sums) + m**2 * graph.S0
    Q = np.empty((g, len(graph.scales)))
    for j, sc in enumerate(graph.scales):
        # block sums s = Bᵀx - m·counts, kept sparse: sᵀMs = SᵀMS - 2 m countsᵀ M S + m² countsᵀ M counts
        Sb = sparse.csr_matrix(sc.membership @ Xr)
        MS = sc.M @ Sb
        Mc = sc.M @ sc.counts
        Q[:, j] = np.asarray(Sb.multiply(MS).sum(0)).ravel() - 2.0 * m * (Sb.T @ Mc) + m**2 * float(sc.counts @ Mc)
    maxabs = np.maximum(np.abs(lo - m), np.abs(hi - m))
    return dict(n_spots=n_spots.astype(np.int64), ps=ps, num=num, Q=Q, maxabs=maxabs)


def _stats_dense(Z: np.ndarray, graph: Graph) -> dict[str, np.ndarray]:
    from ._perm import power_sums

    n_spots = (Z > Z.min(0)).sum(0)
    Z = Z - Z.mean(0)
    Q = np.empty((Z.shape[1], len(graph.scales)))
    for j, sc in enumerate(graph.scales):
        s = sc.membership @ Z
        Q[:, j] = (s * (sc.M @ s)).sum(0)
    num = np.einsum("ij,ij->j", Z, graph.W @ Z)
    return dict(n_spots=n_spots, ps=power_sums(Z.T), num=num, Q=Q, maxabs=np.abs(Z).max(0)), Z


def _chunks(X, chunk_size: int | None, n: int, use_sparse: bool):
    """Gene slices: ``chunk_size`` genes, or automatically about 2 million dense entries per chunk, or (sparse
    statistics) about :data:`CHUNK_NNZ` non-zero entries."""
    from ._common import chunk_size_for, gene_chunks

    G = X.shape[1]
    if chunk_size or not use_sparse:
        yield from gene_chunks(G, chunk_size or chunk_size_for(n, budget_elems=2_000_000))
        return
    cum = X.indptr[1:]
    start = 0
    while start < G:
        stop = int(np.searchsorted(cum, X.indptr[start] + CHUNK_NNZ, side="right"))
        stop = min(max(stop, start + 1), G)
        yield slice(start, stop)
        start = stop


def _moran_pass(X, graph: Graph, weights, *, perms, alternative, chunk_size, progress: bool) -> dict[str, np.ndarray]:
    """All genes in chunks: ``I``, kurtosis, permutation moments of every kernel, the scales' statistics,
    ``n_spots`` and the Monte Carlo counts."""
    from experimat._logging import ProgressBar
    from experimat._settings import settings

    from ._common import dense_chunk
    from ._perm import permutation_moments

    n, G = X.shape
    K = 1 + len(graph.scales)
    out = dict(I=np.full(G, np.nan), b2=np.full(G, np.nan), n_spots=np.zeros(G, dtype=np.int64), count_ge=np.zeros(G),
               Q=np.full((G, K - 1), np.nan), mean=np.full((G, K), np.nan), var=np.full((G, K), np.nan),
               skew=np.full((G, K), np.nan))  # fmt: skip
    use_sparse = sparse.issparse(X) and not perms
    chunks = list(_chunks(X, chunk_size, n, use_sparse))
    with ProgressBar(len(chunks), "Moran's I", disable=not (progress and settings.progress)) as bar:
        for c in chunks:
            if use_sparse:
                st = _stats_sparse(X[:, c], graph)
            else:
                st, Z = _stats_dense(dense_chunk(X, c), graph)
            ps = st["ps"]
            m2 = ps[:, 0] / n
            const = m2 <= 1e-24 * np.maximum(1.0, st["maxabs"] ** 2)
            with np.errstate(divide="ignore", invalid="ignore"):
                Ic = (n / graph.S0) * st["num"] / ps[:, 0]
                out["b2"][c] = (ps[:, 2] / n) / m2**2
            Ic[const] = np.nan
            out["I"][c], out["n_spots"][c], out["Q"][c] = Ic, st["n_spots"], st["Q"]
            mq, vq, sk = permutation_moments(ps, n, weights)  # moments of each kernel's zᵀ K z
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = (n / graph.S0) / ps[:, 0]  # the graph's statistic scaled to I (zᵀz is invariant)
                mq[:, 0], vq[:, 0] = mq[:, 0] * scale, vq[:, 0] * scale**2
            out["mean"][c], out["var"][c], out["skew"][c] = mq, vq, sk
            for perm in perms:
                Ip = moran_i(Z[perm], graph.W, graph.S0)
                if alternative == "greater":
                    out["count_ge"][c] += Ip >= Ic
                elif alternative == "less":
                    out["count_ge"][c] += Ip <= Ic
                else:
                    out["count_ge"][c] += np.abs(Ip + 1.0 / (n - 1)) >= np.abs(Ic + 1.0 / (n - 1))
            bar.update()
    return out


# ---------------------------------------------------------------- p-values and the result table


def _base_pvalues(st: dict, n: int, mom: dict[str, float], alternative: str) -> dict[str, np.ndarray]:
    """Pearson III, normality and randomisation p-values of the spot graph's ``I``."""
    from ._perm import pearson3_logsf

    S0, S1, S2 = mom["S0"], mom["S1"], mom["S2"]
    I, b2 = st["I"], st["b2"]  # noqa: E741
    EI = -1.0 / (n - 1)
    var_norm = (n**2 * S1 - n * S2 + 3 * S0**2) / ((n**2 - 1) * S0**2) - EI**2
    var_rand = (
        n * ((n**2 - 3 * n + 3) * S1 - n * S2 + 3 * S0**2) - b2 * ((n**2 - n) * S1 - 2 * n * S2 + 6 * S0**2)
    ) / ((n - 1) * (n - 2) * (n - 3) * S0**2) - EI**2
    skew = st["skew"][:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        p_norm = _norm_sf((I - EI) / np.sqrt(var_norm), alternative)
        p_rand = _norm_sf((I - EI) / np.sqrt(var_rand), alternative)
        x = (I - st["mean"][:, 0]) / np.sqrt(st["var"][:, 0])
    if alternative == "greater":
        p_p3 = np.exp(pearson3_logsf(x, skew))
    elif alternative == "less":
        p_p3 = np.exp(pearson3_logsf(-x, -skew))
    else:
        p_p3 = np.minimum(1.0, 2.0 * np.minimum(np.exp(pearson3_logsf(x, skew)), np.exp(pearson3_logsf(-x, -skew))))
    return dict(EI=EI, var_norm=var_norm, var_rand=var_rand, p3=p_p3, norm=p_norm, rand=p_rand)


def _scale_logp(st: dict, base_p: np.ndarray) -> np.ndarray:
    """log p-values (genes × (1 + scales)): the spot graph's, then each block scale's Pearson III upper tail."""
    from ._perm import pearson3_logp

    with np.errstate(divide="ignore"):
        base = np.log(base_p)[:, None]
    lp = pearson3_logp(st["Q"], st["mean"][:, 1:], st["var"][:, 1:], st["skew"][:, 1:])
    return np.concatenate([base, lp], axis=1)


def _result_table(adata, st, pv, *, null, n_perms, few, alternative, alpha, n_svg, logp, sizes, scale_min_spots):
    import pandas as pd

    from ._common import finish_ranking
    from ._stats import bh_adjust

    I = st["I"]  # noqa: E741
    res = pd.DataFrame(index=adata.var_names.copy())
    res["I"] = I
    res["expected_I"] = pv["EI"]
    res["var_I_norm"] = pv["var_norm"]
    res["var_I_rand"] = pv["var_rand"]
    res["skew_I"] = st["skew"][:, 0]
    for col in ("p3", "norm", "rand"):
        pv[col][few] = np.nan
        res[f"pval_{col}"] = pv[col]
    score = I if alternative != "less" else -I
    if alternative == "two-sided":
        score = np.abs(I - pv["EI"])
    if n_perms:
        res["pval_sim"] = np.where(np.isfinite(I) & ~few, (st["count_ge"] + 1.0) / (n_perms + 1.0), np.nan)
        res["pval"] = res["pval_sim"]
    elif logp is not None:
        from ._stats import cauchy_combine_log

        logp[few, 0] = np.nan
        for j, ms in enumerate(scale_min_spots):
            logp[st["n_spots"] < ms, j + 1] = np.nan
        _, logT, pval = cauchy_combine_log(logp)
        res["pval"] = pval
        score = np.where(np.isfinite(logT), logT, -np.inf)  # ties of tiny p-values: the larger statistic
        best = np.argmin(np.where(np.isfinite(logp), logp, np.inf), axis=1)
        res["scale"] = np.where(np.isfinite(pval), np.asarray([1.0, *sizes])[best], np.nan)
    else:
        res["pval"] = {"pearson3": pv["p3"], "normality": pv["norm"], "randomisation": pv["rand"]}[null]
    res["padj"] = bh_adjust(res["pval"].to_numpy())
    finish_ranking(res, score=score, sig=res["padj"].to_numpy() < alpha, n_svg=n_svg)
    res["n_spots"] = st["n_spots"]
    return res


def spatial_svg_moran(
    adata,
    *,
    layer: str | None = None,
    spatial_key: str = Key.SPATIAL,
    neighbors: str = "auto",
    n_neighbors: int = 6,
    transformation: str = "r",
    alternative: str = "greater",
    null: str = "pearson3",
    n_perms: int = 0,
    scales=None,
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
        Number of spot permutations (0: none); they need the genes dense, one chunk at a time.
    scales
        Coarse-grained neighbourhoods tested besides the spot graph (``None``, the default: only the
        spot graph, as squidpy's ``spatial_autocorr``). Block sizes in spot spacings (e.g. ``[4, 8, 16]``)
        or ``"auto"`` (4, 8, 16, … while at least 36 blocks are occupied; what Visium HD and other
        sub-cellular layouts need: with ~100 counts per 8 µm bin the neighbouring bins of a gene share
        too few counts for the spot graph to see a domain-wide pattern). At each scale spots are grouped
        into square blocks and the statistic is ``sᵀ M s`` of the block sums ``s`` of the centred
        values over a 3 × 3 window of blocks ``M``; its p-value is the Pearson III tail matched to the
        exact moments over permutations of the *spots* (the same null as the spot graph's). The spot
        graph's p-value (``null``) and the scales' are combined by the Cauchy combination test (Liu &
        Xie 2020, as SPARK-X), which fills ``pval`` (ranked by it); ``scale`` names the block size of
        the smallest p-value (1: the spot graph) and the per-scale p-values go to
        ``varm['{key_added}.scale_pvals']``. ``min_spots`` applies to the spot graph; a block scale
        tests every gene expressed in at least the number of spots among which two pairs are expected to
        share a window by chance (at least 10; recorded as ``uns[key_added]['block_min_spots']``), so
        sparse genes that the spot graph cannot test are tested at the coarser scales. Needs
        ``alternative="greater"`` and ``n_perms=0``.
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
        Genes per chunk (default: about 2 million non-zero entries of sparse input, or 2 million
        entries of dense input, per chunk; sparse input is densified only with ``n_perms``).
    progress
        Show a progress bar over chunks.
    key_added
        Prefix of the result columns and the ``uns`` key.

    Returns
    -------
    DataFrame indexed by ``var_names`` with ``gene`` (the symbol, when ``var['gene']`` exists), ``I``, ``expected_I``, ``var_I_norm``, ``var_I_rand``,
    ``skew_I`` (permutation skewness), ``pval_p3``, ``pval_norm``, ``pval_rand`` (``pval_sim`` with
    permutations), ``pval``, ``padj``, ``svg``, ``rank``, ``n_spots``; written to ``adata.var`` as
    ``{key_added}.<column>`` (with ``scales`` also ``scale``). Constant genes get NaN; genes below ``min_spots`` get NaN p-values.

    Examples
    --------
    >>> import experimat as em, scanpy as sc
    >>> from experimat.methods.svg import spatial_svg_moran
    >>> adata = em.datasets.synthetic_svg(1000, 200)
    >>> sc.pp.normalize_total(adata); sc.pp.log1p(adata)
    >>> res = spatial_svg_moran(adata, progress=False)
    >>> res.sort_values("rank").head()
    """
    from experimat._logging import logger
    from experimat._settings import settings
    from experimat.methods._checks import check_choice, get_matrix, store_params

    from ._common import as_csc_or_dense, coordinates, with_gene_symbols, write_var
    from ._perm import kernel_invariants_sparse, moment_weights

    check_choice("neighbors", neighbors, ("auto", "hex", "grid", "knn"))
    check_choice("transformation", transformation, ("r", "b"))
    check_choice("alternative", alternative, ("greater", "two-sided", "less"))
    check_choice("null", null, ("pearson3", "normality", "randomisation"))
    if n_perms < 0:
        raise InvalidInputError(f"n_perms must be >= 0; got {n_perms}.")
    if min_spots is not None and min_spots < 0:
        raise InvalidInputError(f"min_spots must be >= 0 (or None: automatic); got {min_spots}.")
    if scales is not None and (alternative != "greater" or n_perms):
        raise InvalidInputError("scales are tested one-sided without Monte Carlo permutations: use "
                                "alternative='greater' and n_perms=0 (or scales=None).")  # fmt: skip
    xy = coordinates(adata, spatial_key)
    X = as_csc_or_dense(get_matrix(adata, layer))
    n, G = X.shape
    W, used = spatial_weights(adata, xy, neighbors=neighbors, n_neighbors=n_neighbors, transformation=transformation)
    mom = moran_moments(W)
    if mom["S0"] <= 0:
        raise InvalidInputError("the spatial graph has no edges; check the coordinates or use neighbors='knn'.")
    graph = Graph(W, mom["S0"], np.asarray(W.sum(1)).ravel(), np.asarray(W.sum(0)).ravel(), resolve_scales(xy, scales))
    min_spots = auto_min_spots(W) if min_spots is None else min_spots
    invs = [kernel_invariants_sparse(W)] + [kernel_invariants_sparse(s.M, s.counts) for s in graph.scales]
    sizes = [s.size for s in graph.scales]
    start = logger.info(f"Moran's I on {n} spots x {G} genes ({used} neighbours{f', block scales {sizes}' if sizes else ''})")
    seed_used = settings.seed if seed is None else seed
    rng = np.random.default_rng(seed_used)
    perms = [rng.permutation(n) for _ in range(n_perms)]
    st = _moran_pass(X, graph, moment_weights(invs), perms=perms, alternative=alternative, chunk_size=chunk_size,
                     progress=progress)  # fmt: skip
    pv = _base_pvalues(st, n, mom, alternative)
    few = st["n_spots"] < min_spots
    logp = _scale_logp(st, {"pearson3": pv["p3"], "normality": pv["norm"], "randomisation": pv["rand"]}[null]) if (
        scales is not None) else None  # fmt: skip
    res = _result_table(adata, st, pv, null=null, n_perms=n_perms, few=few, alternative=alternative, alpha=alpha,
                        n_svg=n_svg, logp=logp, sizes=sizes, scale_min_spots=[s.min_spots() for s in graph.scales])  # fmt: skip
    write_var(adata, res, key_added)
    if logp is not None:
        adata.varm[f"{key_added}.scale_pvals"] = np.exp(logp)
    params = dict(layer=layer, spatial_key=spatial_key, neighbors=used, n_neighbors=n_neighbors,
                  transformation=transformation, alternative=alternative, null=null, n_perms=n_perms,
                  scales=scales if scales is None or isinstance(scales, str) else [float(v) for v in np.atleast_1d(scales)],
                  min_spots=min_spots, seed=seed_used, alpha=alpha, n_svg=n_svg, method="moran")  # fmt: skip
    extra = {"block_sizes": sizes, "block_min_spots": [s.min_spots() for s in graph.scales]} if scales is not None else {}
    store_params(adata, key_added, params, **extra)
    logger.info(f"Moran's I: {int(res['svg'].sum())} genes at padj < {alpha}", time=start)
    return with_gene_symbols(res, adata)
