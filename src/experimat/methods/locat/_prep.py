"""LOCAT's inputs: the cell landscape's geometry, k-means atoms, per-gene cell weights and the
permuted null pseudo-genes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from experimat.methods._cluster import nearest_index

#: share of the neighbours' mean in an expressing cell's weight (``knn_mode="connectivity"``); on
#: pbmc68k_reduced, against three reference seeds, 0.5 / 0.75 / 0.95 / 1.0 gave Spearman rho of z-scores
#: 0.64-0.68 / 0.66-0.69 / 0.68-0.72 / 0.66-0.71 (1.0 also drops isolated expressing cells from the sample)
NEIGHBOUR_SHARE = 0.95


@dataclass
class Geometry:
    """Neighbours of every cell in the standardised embedding and what LOCAT derives from them."""

    dist: np.ndarray  # (n, k) distances to the nearest other cells
    ind: np.ndarray  # (n, k) their indices
    reg: float  # covariance regularisation used
    close: sp.csr_matrix  # cells within 3x the mean nearest-neighbour distance of each other


def geometry(emb: np.ndarray, n_neighbors: int, reg_covar: float | None) -> Geometry:
    # scipy's k-d tree rather than scikit-learn's: the same exact neighbours, and a first call does not pay for
    # importing scikit-learn (~0.5 s, with scipy.stats another ~0.5 s; see benchmarks/locat_speed.py)
    from scipy.spatial import cKDTree

    n, d = emb.shape
    k_geo = min(max(n_neighbors, 50) + 1, n)
    dist, ind = cKDTree(emb).query(emb, k=k_geo)
    dist, ind = dist[:, 1:], ind[:, 1:]
    pos = np.where(dist > 0, dist, np.inf)
    nearest = np.min(pos, axis=1)
    min_dist = float(np.mean(nearest[np.isfinite(nearest)])) if np.isfinite(pos).any() else 1.0
    reg = max((min_dist ** (2 / d)) / 6, 1e-4) if reg_covar is None else float(reg_covar)
    reg = max(reg, 1e-6)  # float32 EM needs a floor
    close = sp.csr_matrix(
        ((dist < 3.0 * min_dist).ravel().astype(np.float64), (np.repeat(np.arange(n), ind.shape[1]), ind.ravel())),
        shape=(n, n),
    )
    close.eliminate_zeros()
    return Geometry(dist, ind, reg, close)


def atoms(emb: np.ndarray, n_atoms: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Group cells into ``n_atoms`` k-means atoms of the embedding; every cell is its own atom when
    ``n_atoms`` is None or not smaller than the number of cells. Returns the atom of each cell and
    the atom centres.

    k-means (Lloyd's algorithm, :func:`lloyd`) starts from the deterministic principal-direction partition
    (:func:`principal_splits`) instead of random k-means++ seeds, so the atoms, and every fit on them, do not change with the
    seed (random seeding changed the atoms, and through them the genes' mixture fits, from run to run).
    """
    n = emb.shape[0]
    if n_atoms is None or n_atoms >= n:
        return np.arange(n), emb.copy()
    lab0 = principal_splits(emb, np.ones(n), n_atoms)
    k0 = int(lab0.max()) + 1
    used, lab = np.unique(lloyd(emb, cluster_means(emb, np.ones(n), lab0, k0)), return_inverse=True)
    centres = np.zeros((used.size, emb.shape[1]))
    np.add.at(centres, lab, emb)
    centres /= np.bincount(lab, minlength=used.size)[:, None]
    return lab.astype(np.int64), centres


#: cells per atom of the background fit (:func:`background_atoms`); pbmc68k_reduced has 2.7 per k-means atom
CELLS_PER_BACKGROUND_ATOM = 3.0
#: most pieces a k-means atom is split into for the background fit
_MAX_BACKGROUND_SPLIT = 4


def background_atoms(emb: np.ndarray, atom: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Finer atoms for the background mixture: each k-means atom split by principal directions
    (:func:`principal_splits`) into ``s = clip(round(n / (3 a)), 1, 4)`` pieces (``a`` atoms, ``n`` cells),
    so the background is fitted on about :data:`CELLS_PER_BACKGROUND_ATOM` cells per atom whatever the data
    size (``s = 1``, the atoms themselves, up to ~1,150 cells at 256 atoms).

    A mixture fitted on atoms cannot place a component finer than an atom; with 12 cells per atom
    (Zeisel, 3,005 cells) BIC kept 10 background components where the cells support 14-16, and the
    coarser ``f0`` moved the concentration scores away from the reference's (fitted on all cells):
    Spearman rho of z 0.44-0.53 against 0.67-0.71 with split atoms (``benchmarks/locat.py``). The genes'
    mixtures stay on the k-means atoms (their cost grows with the atoms; the background is fitted once,
    on the host). Splitting is deterministic and costs one small eigendecomposition per atom.
    """
    n, n_at = emb.shape[0], centres.shape[0]
    s = int(np.clip(round(n / (CELLS_PER_BACKGROUND_ATOM * n_at)), 1, _MAX_BACKGROUND_SPLIT))
    if s == 1:
        return atom, centres
    order = np.argsort(atom, kind="stable")
    bounds = np.searchsorted(atom[order], np.arange(n_at + 1))
    new = np.empty_like(atom)
    nxt = 0
    for j in range(n_at):
        idx = order[bounds[j] : bounds[j + 1]]
        sub = principal_splits(emb[idx], np.ones(idx.size), s)
        new[idx] = sub + nxt
        nxt += int(sub.max()) + 1 if idx.size else 0
    counts = np.bincount(new, minlength=nxt).astype(np.float64)
    out = np.zeros((nxt, emb.shape[1]))
    np.add.at(out, new, emb)
    return new, out / counts[:, None]


def lloyd(x: np.ndarray, init: np.ndarray, *, max_iter: int = 100, tol: float = 1e-4) -> np.ndarray:
    """k-means labels of the points ``x`` by Lloyd's algorithm from the centres ``init``.

    Stops when no label changes or the centres move by at most ``tol`` times the mean per-axis variance
    of ``x`` in total squared distance (scikit-learn's rule), after at most ``max_iter`` steps; the
    labels returned are those of the final centres. An empty cluster is moved, as in scikit-learn, to
    the point farthest from its own centre (taken out of that point's cluster's mean); a cluster that is
    still empty keeps its centre (the caller drops clusters left empty).
    """
    if x.shape[0] * init.shape[0] > 4_000_000:
        # many thin products (inner dimension d): one BLAS thread runs them ~4x faster than a pool on a loaded
        # machine (200,000 cells x 256 atoms: 0.2 s instead of 0.8 s per step) and costs little when idle
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            return _lloyd(x, init, max_iter, tol)
    return _lloyd(x, init, max_iter, tol)


def _lloyd(x: np.ndarray, init: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """The iterations of :func:`lloyd`."""
    k = init.shape[0]
    tol_abs = tol * float(np.mean(np.var(x, axis=0)))
    centres = np.array(init, dtype=np.float64)
    labels = nearest_index(x, centres)
    for _ in range(max_iter):
        counts = np.bincount(labels, minlength=k).astype(np.float64)
        sums = np.stack([np.bincount(labels, weights=x[:, j], minlength=k) for j in range(x.shape[1])], axis=1)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            far = np.argsort(-np.sum((x - centres[labels]) ** 2, axis=1), kind="stable")[: empty.size]
            for c, i in zip(empty, far, strict=False):
                sums[labels[i]] -= x[i]
                counts[labels[i]] -= 1.0
                sums[c], counts[c] = x[i], 1.0
        new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1.0)[:, None], centres)
        shift = float(np.sum((new - centres) ** 2))
        centres = new
        new_labels = nearest_index(x, centres)
        if np.array_equal(new_labels, labels) or shift <= tol_abs:
            return new_labels
        labels = new_labels
    return labels


def principal_splits(x, w, k, *, levels=False):
    """Deterministic divisive partition of weighted points into ``k`` clusters.

    Principal direction divisive partitioning (Boley 1998): starting from one cluster, the cluster
    with the largest weighted sum of squares about its weighted mean is split at that mean along its
    first principal axis, until there are ``k`` clusters (or none can be split: fewer than two
    points of positive weight, or all at one place). No random numbers are involved, so the
    partition depends on the points and weights only; it serves as the start of k-means (atoms) and
    of EM (background mixtures) in place of randomly seeded k-means++.

    Parameters
    ----------
    x : ``(n, d)`` points; w : ``(n,)`` non-negative weights; k : number of clusters.
    levels : also return the partitions into 1..k clusters.

    Returns
    -------
    ``(n,)`` cluster labels in ``0..k'-1`` (``k' <= k``), or with ``levels`` a ``(k', n)`` array whose row
    ``j`` is the partition into ``j + 1`` clusters.
    """
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n = x.shape[0]
    lab = np.zeros(n, np.int64)
    rows = [lab.copy()] if levels else None

    def candidate(idx):
        """Weighted sum of squares of a cluster and the mask of its points on the far side of the split."""
        ww = w[idx]
        tot = ww.sum()
        if idx.size < 2 or np.count_nonzero(ww > 0) < 2:
            return -np.inf, None
        c = x[idx] - (ww @ x[idx]) / tot
        cov = (c * ww[:, None]).T @ c
        sse = float(np.trace(cov))
        if not sse > 0:
            return -np.inf, None
        _, vec = np.linalg.eigh(cov)
        side = c @ vec[:, -1] > 0
        if not (ww[side].sum() > 0 and ww[~side].sum() > 0):
            return -np.inf, None
        return sse, side

    members = [np.arange(n)]
    cands = [candidate(members[0])]
    while len(members) < k:
        j = int(np.argmax([c[0] for c in cands]))
        sse, side = cands[j]
        if not np.isfinite(sse):
            break
        idx = members[j]
        members[j], new = idx[~side], idx[side]
        members.append(new)
        lab[new] = len(members) - 1
        cands[j] = candidate(members[j])
        cands.append(candidate(new))
        if levels:
            rows.append(lab.copy())
    return np.stack(rows) if levels else lab


def cluster_means(x, w, labels, k):
    """``(k, d)`` weighted means of the clusters ``labels`` (0 for an empty or weightless cluster)."""
    tot = np.bincount(labels, weights=w, minlength=k)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, w[:, None] * x)
    return sums / np.where(tot > 0, tot, 1.0)[:, None]


def _smoothed(X: sp.csc_matrix, C: sp.csr_matrix | None) -> sp.csc_matrix:
    """Cell weights of the columns of ``X`` on their expressing cells: with the neighbour operator ``C``
    ``(1 - s) x + s (C x)`` with ``s`` = :data:`NEIGHBOUR_SHARE`, mostly the neighbour-graph-weighted mean
    value of the cell's neighbours (zeros included: the local mean expression around the cell, a
    denoised version of its own value; the small own share keeps isolated expressing cells in the
    gene's sample); else 1."""
    if C is None:
        W = X.copy()
        W.data = np.ones_like(W.data)
    else:
        pattern = X.copy()
        pattern.data = np.ones_like(pattern.data)
        W = sp.csc_matrix((1 - NEIGHBOUR_SHARE) * X + NEIGHBOUR_SHARE * sp.csc_matrix(C @ X).multiply(pattern))
    W.eliminate_zeros()
    return W


def neighbour_operator(geo: Geometry, knn_mode: str, n_neighbors: int) -> sp.csr_matrix | None:
    """Row-normalised Gaussian weights of each cell's ``n_neighbors`` neighbours (``knn_mode="connectivity"``)."""
    if knn_mode != "connectivity":
        return None
    n = geo.ind.shape[0]
    kk = min(n_neighbors, geo.ind.shape[1])
    di, ii = geo.dist[:, :kk], geo.ind[:, :kk]
    sig = np.maximum(di[:, -1:], 1e-12)
    cw = np.exp(-((di / sig) ** 2))
    cw = cw / np.maximum(cw.sum(axis=1, keepdims=True), 1e-12)
    return sp.csr_matrix((cw.ravel(), (np.repeat(np.arange(n), kk), ii.ravel())), shape=(n, n))


def item_weights(
    X: sp.csc_matrix, eligible: np.ndarray, C: sp.csr_matrix | None, n_null: int, rng: np.random.Generator
) -> tuple[sp.csc_matrix, np.ndarray]:
    """Cell weights of the items LOCAT scores: the eligible genes, then ``n_null`` permuted pseudo-genes.

    Pseudo-genes copy real eligible genes, each with its values permuted across cells (so their weights
    look like real genes' weights): a quarter at evenly spaced quantiles of the number of expressing
    cells ``m`` (where most genes are), the rest at evenly spaced values of ``log m`` over the tested
    range (the gene with the nearest ``m``), so that the null is resolved at every expression level,
    also where few genes lie and where it changes fastest (few expressing cells). Returns the
    ``cells x items`` weights (CSC) and each item's gene index (-1: pseudo-gene).
    """
    n = X.shape[0]
    Wi = _smoothed(X, C)[:, eligible]
    items_gene = eligible.astype(int)
    if eligible.size:
        n_expr = np.diff(X.indptr)
        order = eligible[np.argsort(n_expr[eligible], kind="stable")]
        n_q = n_null // 4
        picks_q = order[np.minimum((np.arange(n_q) + 0.5) / n_q * order.size, order.size - 1).astype(int)]
        log_m = np.log(n_expr[order].astype(np.float64))
        targets = np.linspace(log_m[0], log_m[-1], n_null - n_q)
        hi = np.minimum(np.searchsorted(log_m, targets), order.size - 1)
        lo = np.maximum(hi - 1, 0)
        val = np.where(np.abs(targets - log_m[lo]) <= np.abs(log_m[hi] - targets), log_m[lo], log_m[hi])
        # the gene with the nearest m; one of them at random where several genes have that m
        first, last = np.searchsorted(log_m, val, "left"), np.searchsorted(log_m, val, "right")
        picks = np.concatenate([picks_q, order[first + rng.integers(0, last - first)]])
        Xp = X[:, picks].tocsc()
        # the gene's values permuted across cells: its expressing cells' values go to m cells drawn at random
        # without replacement (the image of its expressing cells under a random permutation)
        counts = np.diff(Xp.indptr)
        rows = np.concatenate([rng.choice(n, int(c), replace=False) for c in counts])
        Xn = sp.csc_matrix((Xp.data, (rows, np.repeat(np.arange(picks.size), counts))), shape=(n, picks.size))
        Wi = sp.hstack([Wi, _smoothed(Xn, C)], format="csc")
        items_gene = np.concatenate([items_gene, np.full(picks.size, -1)])
    Wi.sort_indices()
    return Wi, items_gene


def n_components(
    Wi: sp.csc_matrix, close: sp.csr_matrix, bg_labels: np.ndarray, k_bg: int, k_max: int | None = None
) -> np.ndarray:
    """Components of each item's mixture by the reference's rule: how many background components hold 95 %
    of the expressing cells that have an expressing neighbour nearby (components holding < 5 such cells
    ignored), ``floor(sqrt(k + 1)) + 1``, capped by the background size, cells/5 and ``k_max``."""
    n = Wi.shape[0]
    m_arr = np.diff(Wi.indptr)
    E = Wi.copy()
    E.data = np.ones_like(E.data)
    near = (close @ E).tocsc()
    near.data = (near.data > 0).astype(np.float64)
    incl = E.multiply(near).tocsc()
    incl.eliminate_zeros()
    onehot = sp.csr_matrix((np.ones(n), (bg_labels, np.arange(n))), shape=(k_bg, n))
    counts = np.asarray((onehot @ incl).todense())  # (k_bg, items)
    n_counts = counts.sum(axis=0)
    c = np.where(counts < 5, 0.0, counts)
    tot = c.sum(axis=0)
    frac = -np.sort(-(c / np.where(tot > 0, tot, 1.0)), axis=0)  # each item's shares, largest first
    k95 = np.argmax(np.cumsum(frac, axis=0) > 0.95, axis=0) + 1
    est = np.floor(np.sqrt(k95 + 1.0)) + 1.0
    ncomp = np.maximum(1.0, np.minimum(np.minimum(float(k_bg), n_counts / 5.0), est)).astype(int)
    ncomp[(m_arr <= 5) | (tot < 10)] = 1
    return ncomp if k_max is None else np.minimum(ncomp, k_max)
