"""Spot weights, expression augmentation and the sparse spatial graph of DeepST.

Everything here is sparse: memory grows linearly with the number of spots (``n * k`` entries),
never as a dense ``n x n`` matrix.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: neighbour pairs whose rows are gathered at once by :func:`spot_weights` (memory ~ this x features)
_BLOCK_ENTRIES = 2_000_000


def knn_indices(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of every point (itself excluded), as ``(indices, distances)``,
    ties by index (:func:`experimat.methods._graph.knn`)."""
    from experimat.methods._graph import knn

    n = points.shape[0]
    if min(int(k), n - 1) < 1:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0))
    dist, idx = knn(points, k, search="kdtree" if points.shape[1] <= 3 else "brute")
    return idx, dist


def _row_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation between rows ``a[i]`` and ``b[i]``."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    num = (a * b).sum(1)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(1)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def spot_weights(
    coords: np.ndarray,
    expr_pcs: np.ndarray,
    image_feats: np.ndarray | None,
    *,
    spatial_k: int = 30,
) -> sp.csr_matrix:
    """DeepST's spot-weight matrix, restricted to the ``spatial_k`` nearest spots.

    ``w_ij = adjacency_ij * max(0, corr(expr_i, expr_j)) * max(0, cos(img_i, img_j))`` for ``j`` among
    the spatial neighbours of ``i`` (the morphology factor only when ``image_feats`` is given); 0
    elsewhere. Returned as a sparse ``n x n`` CSR matrix with ``n * spatial_k`` stored entries.
    """
    n = coords.shape[0]
    ind, _ = knn_indices(coords, spatial_k)
    k = ind.shape[1]
    rows = np.repeat(np.arange(n), k)
    cols = ind.ravel()
    parts = []
    step = max(1, _BLOCK_ENTRIES // max(k, 1))  # spots per block
    for lo in range(0, n, step):
        r, c = rows[lo * k : (lo + step) * k], cols[lo * k : (lo + step) * k]
        w = np.clip(_row_correlation(expr_pcs[r], expr_pcs[c]), 0.0, None)
        if image_feats is not None:
            w = w * np.clip(_row_cosine(image_feats[r], image_feats[c]), 0.0, None)
        parts.append(w)
    w = np.concatenate(parts) if parts else np.zeros(0)
    return sp.csr_matrix((w, (rows, cols)), shape=(n, n))


def top_neighbour_weights(weights: sp.csr_matrix, n_neighbors: int = 3) -> sp.csr_matrix:
    """Keep the ``n_neighbors`` largest weights of each row (ties: the smaller column first), rescaled to
    sum to 1 (rows of zeros stay 0). Vectorised over all rows at once (one sort of the stored entries)."""
    weights = weights.tocsr()
    weights.sort_indices()
    n = weights.shape[0]
    counts = np.diff(weights.indptr)
    rows = np.repeat(np.arange(n), counts)
    d, j = weights.data, weights.indices
    order = np.lexsort((j, -d, rows))  # by row, then decreasing weight, then column
    rank = np.arange(order.size) - np.repeat(weights.indptr[:-1], counts)
    keep = order[rank < n_neighbors]
    r, c, v = rows[keep], j[keep], d[keep]
    total = np.zeros(n, dtype=d.dtype)
    np.add.at(total, r, v)  # in order, in the weights' dtype: each row's sum as before, bit for bit
    ok = total[r] > 0
    r, c, v = r[ok], c[ok], v[ok] / total[r[ok]]
    return sp.csr_matrix((v, (r, c)), shape=(n, n))


def augment_expression(counts, neighbour_weights: sp.csr_matrix, adjacent_weight: float = 0.3):
    """Augmented expression ``X + adjacent_weight * W X`` (sparse stays sparse)."""
    neigh = neighbour_weights @ counts
    if sp.issparse(counts):
        return sp.csr_matrix(counts + adjacent_weight * neigh)
    return np.asarray(counts + adjacent_weight * neigh)


def spatial_graph(coords: np.ndarray, k: int = 12) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Symmetric spatial kNN graph.

    Returns
    -------
    adj_norm
        ``D^-1/2 (A + I) D^-1/2`` (GCN propagation matrix), sparse.
    adj_label
        ``A + I`` as 0/1, sparse (edges the graph decoder reconstructs).
    """
    n = coords.shape[0]
    ind, _ = knn_indices(coords, k)
    rows = np.repeat(np.arange(n), ind.shape[1])
    a = sp.csr_matrix((np.ones(rows.size), (rows, ind.ravel())), shape=(n, n))
    a = ((a + a.T) > 0).astype(np.float64)
    a_label = (a + sp.identity(n, format="csr")).tocsr()
    deg = np.asarray(a_label.sum(1)).ravel()
    dinv = sp.diags(1.0 / np.sqrt(deg))
    adj_norm = (dinv @ a_label @ dinv).tocsr()
    return adj_norm, a_label


def neighbour_mean(coords: np.ndarray, k: int) -> sp.csr_matrix:
    """Row-stochastic sparse operator averaging every spot with its ``k`` nearest spots (equal
    weights; ``k`` = 0 or a single spot: the identity)."""
    from experimat.methods._graph import row_normalize

    n = coords.shape[0]
    ind, _ = knn_indices(coords, k)
    rows = np.repeat(np.arange(n), ind.shape[1])
    a = sp.csr_matrix((np.ones(rows.size), (rows, ind.ravel())), shape=(n, n)) + sp.identity(n, format="csr")
    return row_normalize(a)


def block_diag(mats: list[sp.csr_matrix]) -> sp.csr_matrix:
    return sp.block_diag(mats, format="csr")
