"""The one neighbour search and spatial graph of the methods: lattices (Visium hex, square bins), kNN
and radius graphs, as sparse matrices with the weightings the methods need.

Built once per call and handed to the method that uses it (as squidpy's ``gr.spatial_neighbors``
builds the graph that ``gr.spatial_autocorr`` reads). Every graph is an ``n x n``
:class:`scipy.sparse.csr_matrix` without self-loops; row ``i`` holds the neighbours of observation ``i``.

- :func:`knn` — the exact k-nearest-neighbour search (self excluded, also with duplicate points), by
  KD-tree (coordinates) or blocked brute force (embeddings).
- :func:`knn_graph` — kNN weights: ``"binary"``, ``"mean"`` (``1/k``, a row average), ``"distance"``,
  ``"gaussian"`` (Hotspot's kernel, width the distance to the ``k/3``-th neighbour, rows summing
  to 1) or ``"umap"`` (UMAP's fuzzy connectivities, as ``scanpy.pp.neighbors``); directed, or
  symmetrised (union for binary weights, fuzzy union for UMAP's).
- :func:`radius_pairs` / :func:`radius_graph` — pairs closer than a radius, with their distances.
- :func:`lattice_graph` — the binary adjacency of array coordinates: the Visium hexagon or the 8
  touching bins of a square grid.
- :func:`spatial_graph` — picks the lattice from ``obs['array_row'/'array_col']`` or a kNN graph.
- :func:`row_normalize` — row-stochastic weights (``transformation='r'`` of the SVG tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from experimat._errors import InvalidInputError

if TYPE_CHECKING:
    from anndata import AnnData

#: neighbour steps ``(d_row, d_col)`` of the supported lattices
LATTICE_STEPS: dict[str, tuple[tuple[int, int], ...]] = {
    "hex": ((0, 2), (0, -2), (1, 1), (1, -1), (-1, 1), (-1, -1)),  # Visium: (r, c ± 2), (r ± 1, c ± 1)
    "grid": ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)),  # square bins (queen)
}


def knn(points: np.ndarray, k: int, *, search: Literal["kdtree", "brute"] = "kdtree") -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices ``(n, k')`` of each point's ``k' = min(k, n - 1)`` nearest other points,
    nearest first, ties by index (exact). A point is never its own neighbour, even where points coincide.

    ``search="kdtree"`` (coordinates, few dimensions) or ``"brute"`` (embeddings with tens of
    dimensions, where a KD-tree degrades): squared distances by blocks of matrix products, memory
    ``block x n``, never ``n x n``.
    """
    pts = np.asarray(points, dtype=np.float64)
    n = pts.shape[0]
    k = min(int(k), n - 1)
    if k < 1:
        raise InvalidInputError(f"a neighbour graph needs at least 2 points and k >= 1; got {n} points, k={k}.")
    if search == "brute":
        dist, idx = _brute_knn(pts, k + 1)
    elif search == "kdtree":
        from scipy.spatial import cKDTree

        dist, idx = cKDTree(pts).query(pts, k=k + 1)
        dist, idx = np.atleast_2d(dist), np.atleast_2d(idx)
    else:
        raise InvalidInputError(f"search must be 'kdtree' or 'brute'; got {search!r}.")
    is_self = idx == np.arange(n)[:, None]
    # drop the point itself where the search returned it, else the farthest of the k + 1
    drop = np.where(is_self.any(1), is_self.argmax(1), k)
    keep = np.ones_like(is_self)
    keep[np.arange(n), drop] = False
    dist, idx = dist[keep].reshape(n, k), idx[keep].reshape(n, k)
    order = np.lexsort((idx, dist), axis=1)  # ties by index: independent of the search's traversal
    return np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)


#: from this many points on, :func:`_brute_knn` selects each row's nearest among candidates under a bound
#: (:func:`_bounded_knn`) instead of partially sorting whole rows (the same neighbours, up to exact ties)
_BOUNDED_MIN = 20_000
#: evenly spaced columns whose k-th smallest squared distance bounds a row's k-th smallest
_BOUND_COLUMNS = 2_048


def _brute_knn(pts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest points (the point itself included) by blocked matrix products."""
    n = pts.shape[0]
    if n >= _BOUNDED_MIN and k < _BOUND_COLUMNS:
        from threadpoolctl import threadpool_limits

        # small products: one BLAS thread (a thread pool spinning on a busy machine made it 3x slower)
        with threadpool_limits(1, user_api="blas"):
            return _bounded_knn(pts, k)
    sq = (pts * pts).sum(1)
    dist = np.empty((n, k))
    idx = np.empty((n, k), dtype=np.int64)
    step = max(1, 4_000_000 // n)
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        d2 = sq[lo:hi, None] - 2.0 * pts[lo:hi] @ pts.T + sq[None, :]
        d2[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf  # the point itself first
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(d2, part, 1)
        order = np.argsort(top, axis=1, kind="stable")
        idx[lo:hi] = np.take_along_axis(part, order, 1)
        dist[lo:hi] = np.sqrt(np.maximum(np.take_along_axis(top, order, 1), 0.0))
    return dist, idx


def _bounded_knn(pts: np.ndarray, k: int, rows_per_block: int = 256, cols_per_block: int = 2_048):
    """:func:`_brute_knn` for many points: the ``k``-th smallest squared distance from a row to
    :data:`_BOUND_COLUMNS` evenly spaced points bounds its ``k``-th smallest to all (so no neighbour
    is missed); blocks of rows x columns small enough for the CPU cache keep only the entries under
    the bound, and each row's ``k`` smallest are sorted out of those (about ``k n / 2048`` per row).
    The partial sort of every whole row is avoided: 31 s instead of 84 s for 50,000 points in 28
    dimensions (one thread, loaded machine), the same neighbours (distances equal up to rounding)."""
    n = pts.shape[0]
    sq = (pts * pts).sum(1)
    subset = np.linspace(0, n - 1, _BOUND_COLUMNS).astype(np.int64)
    dist = np.empty((n, k))
    idx = np.empty((n, k), dtype=np.int64)
    for lo in range(0, n, rows_per_block):
        hi = min(lo + rows_per_block, n)
        a2 = 2.0 * pts[lo:hi]
        d2s = sq[lo:hi, None] - a2 @ pts[subset].T + sq[None, subset]
        d2s[subset[None, :] == np.arange(lo, hi)[:, None]] = -np.inf
        bound = np.partition(d2s, k - 1, axis=1)[:, k - 1]
        r_all, c_all, v_all = [], [], []
        for c0 in range(0, n, cols_per_block):
            c1 = min(c0 + cols_per_block, n)
            d2 = sq[lo:hi, None] - a2 @ pts[c0:c1].T + sq[None, c0:c1]
            if c0 < hi and lo < c1:  # the point itself first
                own = np.arange(max(lo, c0), min(hi, c1))
                d2[own - lo, own - c0] = -np.inf
            r, c = np.nonzero(d2 <= bound[:, None])
            r_all.append(r)
            c_all.append(c + c0)
            v_all.append(d2[r, c])
        rows, cols, vals = np.concatenate(r_all), np.concatenate(c_all), np.concatenate(v_all)
        order = np.lexsort((cols, vals, rows))
        counts = np.bincount(rows, minlength=hi - lo)
        pick = order[np.repeat(np.cumsum(counts) - counts, k) + np.tile(np.arange(k), hi - lo)]
        idx[lo:hi] = cols[pick].reshape(-1, k)
        dist[lo:hi] = np.sqrt(np.maximum(vals[pick].reshape(-1, k), 0.0))
    return dist, idx


def _from_knn(dist: np.ndarray, idx: np.ndarray, values: np.ndarray) -> sparse.csr_matrix:
    n, k = idx.shape
    W = sparse.csr_matrix((values.ravel(), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    W.sort_indices()  # canonical column order: products sum in the same order however the graph was built
    return W


def knn_graph(
    points: np.ndarray,
    k: int,
    *,
    weights: Literal["binary", "mean", "distance", "gaussian", "umap"] = "binary",
    symmetric: bool = False,
    search: Literal["kdtree", "brute"] = "kdtree",
) -> sparse.csr_matrix:
    """k-nearest-neighbour graph of ``points`` (``k`` capped at ``n - 1``).

    ``weights``: ``"binary"`` (1), ``"mean"`` (``1/k``: ``W @ x`` is the neighbours' mean),
    ``"distance"`` (Euclidean distance), ``"gaussian"`` (``exp(-d^2 / sigma_i^2)`` with ``sigma_i`` the
    distance to the ``max(k // 3, 1)``-th neighbour, rows normalised to sum 1, as Hotspot), ``"umap"``
    (:func:`umap_weights`, the neighbourhood of ``k + 1`` points counting the point itself).
    ``symmetric``: union with the transpose (an edge in either direction) for binary weights, the
    fuzzy union ``A + A.T - A * A.T`` for UMAP's. ``search``: as :func:`knn` (``"brute"`` for
    embeddings).
    """
    dist, idx = knn(points, k, search=search)
    k = idx.shape[1]
    if weights == "binary":
        w = np.ones_like(dist)
    elif weights == "mean":
        w = np.full_like(dist, 1.0 / k)
    elif weights == "distance":
        w = dist
    elif weights == "gaussian":
        sigma = dist[:, max(k // 3, 1) - 1]
        sigma = np.where(sigma > 0, sigma, np.maximum(dist.max(1), 1e-12))
        w = np.exp(-(dist**2) / sigma[:, None] ** 2)
        w = w / np.maximum(w.sum(1, keepdims=True), 1e-300)
    elif weights == "umap":
        w = umap_weights(dist)
    else:
        raise InvalidInputError(
            f"weights must be 'binary', 'mean', 'distance', 'gaussian' or 'umap'; got {weights!r}."
        )
    W = _from_knn(dist, idx, w)
    if symmetric:
        if weights == "binary":
            W = sparse.csr_matrix(((W + W.T) > 0).astype(np.float64))
        elif weights == "umap":
            W = sparse.csr_matrix(W + W.T - W.multiply(W.T))
            W.eliminate_zeros()
        else:
            raise InvalidInputError("symmetric=True is defined for binary and UMAP weights only.")
    return W


def umap_weights(dist: np.ndarray, *, n_iter: int = 64) -> np.ndarray:
    """UMAP's smooth kNN weights ``exp(-(d_ij - rho_i) / sigma_i)`` of sorted neighbour distances
    ``dist`` (``n x k``, self excluded): ``rho_i`` is the distance to the nearest neighbour and
    ``sigma_i`` is found by bisection so that a row's weights sum to ``log2(k + 1)``; ``sigma_i`` is at
    least ``1e-3`` times the row's mean distance (the mean of all distances where ``rho_i = 0``)."""
    dist = np.asarray(dist, dtype=np.float64)
    target = np.log2(dist.shape[1] + 1)
    rho = dist[:, :1]
    excess = np.maximum(dist - rho, 0.0)
    lo = np.zeros(len(dist))
    hi = np.full(len(dist), np.inf)
    mid = np.ones(len(dist))
    for _ in range(n_iter):
        high = np.exp(-excess / mid[:, None]).sum(1) > target
        hi = np.where(high, mid, hi)
        lo = np.where(high, lo, mid)
        mid = np.where(np.isinf(hi), mid * 2.0, (lo + hi) / 2.0)
    floor = 1e-3 * np.where(rho[:, 0] > 0, dist.mean(1), dist.mean())
    return np.exp(-excess / np.maximum(mid, floor)[:, None])


def radius_pairs(points: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``i < j`` of points at most ``radius`` apart (``(m, 2)`` indices) and their squared
    distances."""
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64)
    pairs = cKDTree(pts).query_pairs(float(radius), output_type="ndarray")
    return pairs, ((pts[pairs[:, 0]] - pts[pairs[:, 1]]) ** 2).sum(1)


def radius_graph(points: np.ndarray, radius: float) -> sparse.csr_matrix:
    """Symmetric graph of the pairs closer than ``radius`` (``<=``), weighted by their distance."""
    n = np.asarray(points).shape[0]
    pairs, d2 = radius_pairs(points, radius)
    d = np.sqrt(d2)
    rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0]])
    return sparse.csr_matrix((np.concatenate([d, d]), (rows, cols)), shape=(n, n))


def is_hex_array(array_row: np.ndarray, array_col: np.ndarray) -> bool:
    """Whether array coordinates are a Visium hexagonal lattice (``row + col`` even everywhere);
    Visium HD square bins (every ``(row, col)``) are not."""
    return bool(((np.asarray(array_row, dtype=np.int64) + np.asarray(array_col, dtype=np.int64)) % 2 == 0).all())


def lattice_graph(
    array_row: np.ndarray, array_col: np.ndarray, *, kind: Literal["hex", "grid"] = "hex"
) -> sparse.csr_matrix:
    """Binary adjacency of array coordinates: ``kind="hex"`` the 6 neighbours of a Visium spot,
    ``"grid"`` the 8 touching bins of a square grid (Visium HD). Missing positions have no edge."""
    if kind not in LATTICE_STEPS:
        raise InvalidInputError(f"kind must be one of {sorted(LATTICE_STEPS)}; got {kind!r}.")
    r = np.asarray(array_row, dtype=np.int64)
    c = np.asarray(array_col, dtype=np.int64)
    n = r.size
    span = int(c.max() - c.min() + 10)
    key = (r - r.min() + 2) * span + (c - c.min() + 4)
    order = np.argsort(key)
    skey = key[order]
    rows, cols = [], []
    for dr, dc in LATTICE_STEPS[kind]:
        q = key + dr * span + dc
        pos = np.clip(np.searchsorted(skey, q), 0, n - 1)
        hit = skey[pos] == q
        rows.append(np.flatnonzero(hit))
        cols.append(order[pos[hit]])
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    W = sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    W.data[:] = 1.0
    return W


def spatial_graph(
    adata: AnnData,
    xy: np.ndarray,
    *,
    kind: Literal["auto", "hex", "grid", "knn"] = "auto",
    n_neighbors: int = 6,
) -> tuple[sparse.csr_matrix, str]:
    """Binary spatial adjacency of the observations and the kind used.

    ``"auto"``: the hexagon (Visium) or the square grid (Visium HD) when ``obs['array_row']`` and
    ``obs['array_col']`` exist, else the symmetrised kNN graph of ``xy`` with ``n_neighbors``.
    """
    has_array = {"array_row", "array_col"} <= set(adata.obs.columns)
    if kind == "auto":
        kind = ("hex" if is_hex_array(adata.obs["array_row"], adata.obs["array_col"]) else "grid") if has_array else "knn"
    if kind in LATTICE_STEPS:
        if not has_array:
            raise InvalidInputError(
                f"neighbors={kind!r} needs obs['array_row'] and obs['array_col'] (array / bin grid coordinates); "
                "use neighbors='knn' for other layouts."
            )
        return lattice_graph(adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy(), kind=kind), kind
    if kind != "knn":
        raise InvalidInputError(f"neighbors must be 'auto', 'hex', 'grid' or 'knn'; got {kind!r}.")
    return knn_graph(xy, n_neighbors, symmetric=True), kind


def row_normalize(W: sparse.spmatrix) -> sparse.csr_matrix:
    """Rows scaled to sum 1 (rows without neighbours stay zero)."""
    deg = np.asarray(W.sum(1)).ravel()
    inv = np.divide(1.0, deg, out=np.zeros_like(deg, dtype=np.float64), where=deg > 0)
    return sparse.csr_matrix(sparse.diags(inv) @ W)


def nn_distance(points: np.ndarray) -> float:
    """Median distance from each point to its nearest other point (coincident points ignored; 1.0 when
    all coincide)."""
    d, _ = knn(points, 1)
    d = d[:, 0]
    d = d[d > 0]
    return float(np.median(d)) if d.size else 1.0
