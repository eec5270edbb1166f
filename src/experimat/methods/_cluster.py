"""The one graph clustering of the methods: Leiden on a sparse adjacency, and the search for the
resolution that gives a requested number of clusters.

As scanpy's ``tl.leiden``, :func:`leiden` clusters whatever graph it is given (a kNN graph from
:mod:`experimat.methods._graph`, an embedding's connectivities); the graph is never rebuilt here.
:func:`search_resolution` adds what scanpy lacks: it hits an exact cluster count, by bisection
(``"bisect"``) or by SpaGCN's stepping rule (``"step"``, for parity with the reference), and warns
with the closest count when none matches. ``igraph`` / ``leidenalg`` are imported inside.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
from scipy import sparse

from experimat._errors import ExperimatWarning, InvalidInputError
from experimat._logging import logger
from experimat._optional import import_optional


def to_igraph(adjacency: sparse.spmatrix, *, weighted: bool = True, purpose: str = "Leiden clustering") -> Any:
    """An undirected :class:`igraph.Graph` of a symmetric sparse adjacency (upper triangle, zero
    weights and self-loops dropped); edge weights in ``es['weight']`` when ``weighted``."""
    ig = import_optional("igraph", purpose=purpose)
    A = sparse.triu(sparse.csr_matrix(adjacency), k=1).tocoo()
    keep = A.data != 0
    graph = ig.Graph(n=A.shape[0], edges=list(zip(A.row[keep].tolist(), A.col[keep].tolist())), directed=False)
    if weighted:
        graph.es["weight"] = A.data[keep].astype(np.float64).tolist()
    return graph


def leiden(
    graph: Any,
    *,
    resolution: float = 1.0,
    seed: int = 0,
    n_iterations: int = 2,
    weighted: bool = True,
    purpose: str = "Leiden clustering",
) -> np.ndarray:
    """Leiden memberships (RB configuration model, as scanpy) of a sparse adjacency or an igraph graph.

    ``weighted`` uses the edge weights (``es['weight']`` of an igraph graph) when there are any.
    """
    la = import_optional("leidenalg", purpose=purpose)
    if sparse.issparse(graph):
        graph = to_igraph(graph, weighted=weighted, purpose=purpose)
    weights = "weight" if weighted and "weight" in graph.es.attributes() else None
    part = la.find_partition(
        graph,
        la.RBConfigurationVertexPartition,
        weights=weights,
        resolution_parameter=float(resolution),
        seed=int(seed),
        n_iterations=n_iterations,
    )
    return np.asarray(part.membership, dtype=np.int64)


#: clusterings of more points than this run on a seeded random sample of this many (:func:`clustering_sample`)
SAMPLE_MAX = 50_000


def clustering_sample(n: int, seed: int, max_n: int | None = None) -> np.ndarray | None:
    """Sorted indices of the ``max_n`` points (drawn at random, seeded) a clustering of ``n > max_n``
    points runs on, or ``None`` (all points) up to ``max_n`` (``None``: :data:`SAMPLE_MAX`).

    The size rule of the methods' initial and final clusterings (Leiden on a kNN graph, k-means):
    their cost grows faster than the points (the exact kNN search is quadratic), while the clusters of a
    50,000-point random sample already resolve any domain of more than a few hundred points. The
    remaining points join the sample's clusters (:func:`nearest_centre`, :func:`landmark_vote`).
    """
    max_n = SAMPLE_MAX if max_n is None else int(max_n)
    if n <= max_n:
        return None
    return np.sort(np.random.default_rng(int(seed)).choice(n, size=int(max_n), replace=False))


def nearest_centre(points: np.ndarray, sample: np.ndarray, sample_labels: np.ndarray) -> np.ndarray:
    """Labels of all ``points``: the sample keeps its labels ``0..k-1``, every other point takes the
    label of the nearest centre (mean of the sample's points of a label), as k-means assigns."""
    pts = np.asarray(points, dtype=np.float64)
    sample_labels = np.asarray(sample_labels, dtype=np.int64)
    k = int(sample_labels.max()) + 1
    centres = np.zeros((k, pts.shape[1]))
    np.add.at(centres, sample_labels, pts[sample])
    centres /= np.maximum(np.bincount(sample_labels, minlength=k), 1)[:, None]
    return _assign(pts, centres, np.arange(k), sample, sample_labels)


def landmark_vote(
    points: np.ndarray, sample: np.ndarray, sample_labels: np.ndarray, *, n_landmarks: int = 1000, seed: int = 0
) -> np.ndarray:
    """Labels of all ``points``: the sample keeps its labels ``0..c-1``; every other point takes the label
    of its nearest landmark, a landmark being one of ``n_landmarks`` k-means centres of the sample
    (about 50 sample points each) labelled by the majority of its points (ties: the smaller label).

    Small landmarks follow the shape of clusters that are not convex (a Leiden cluster of a kNN
    graph), which one centre per cluster would not; the work is linear in the points
    (``n x n_landmarks``, by blocks), where a kNN vote over the sample is ``n x sample``.
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    pts = np.asarray(points, dtype=np.float64)
    ref = pts[sample]
    sample_labels = np.asarray(sample_labels, dtype=np.int64)
    m = max(1, min(int(n_landmarks), ref.shape[0]))
    with threadpool_limits(1):
        km = KMeans(m, n_init=1, max_iter=20, random_state=int(seed)).fit(ref)
    c = int(sample_labels.max()) + 1
    tally = np.zeros((m, c), dtype=np.int64)
    np.add.at(tally, (km.labels_, sample_labels), 1)
    return _assign(pts, km.cluster_centers_, tally.argmax(1), sample, sample_labels)


def _assign(pts, centres, centre_labels, sample, sample_labels) -> np.ndarray:
    """Each point's label is that of its nearest centre; the sample keeps its own labels."""
    labels = centre_labels[nearest_index(pts, centres)]
    labels[sample] = sample_labels
    return labels


def nearest_index(x: np.ndarray, centres: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Index of the nearest centre of every point of ``x`` (``|c|^2 - 2 x.c`` in blocks of ``chunk`` points, into one
    reused buffer: allocating a fresh block per step cost more than the product)."""
    cc = np.sum(centres**2, axis=1)
    m2 = -2.0 * centres.T
    out = np.empty(x.shape[0], dtype=np.int64)
    buf = np.empty((min(chunk, x.shape[0]), centres.shape[0]))
    for i in range(0, x.shape[0], chunk):
        xb = x[i : i + chunk]
        b = buf[: xb.shape[0]]
        np.matmul(xb, m2, out=b)
        b += cc
        out[i : i + chunk] = np.argmin(b, axis=1)
    return out


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Cluster labels renumbered 0..k-1 by decreasing size (ties: the smaller old label first)."""
    _, inv = np.unique(np.asarray(labels), return_inverse=True)
    order = np.argsort(-np.bincount(inv), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inv]


def _n(labels: np.ndarray) -> int:
    return len(np.unique(labels))


def _bisect(run, n_clusters: int, max_steps: int, hint: float | None = None) -> float | None:
    """Bracket ``[0.01, 1]`` widened by doubling, then bisection (and a scan where the count is not
    monotone). With ``hint`` (a resolution that gave ``n_clusters`` on a similar graph) the bracket is
    first grown around it (:func:`_bisect_from`); only when that finds none is the plain search run."""
    if hint is not None:
        found = _bisect_from(run, n_clusters, max_steps, float(hint))
        if found is not None:
            return found
    lo, hi = 0.01, 1.0
    steps = 0
    while run(hi) < n_clusters and hi < 64:
        lo, hi = hi, hi * 2
        steps += 1
    return _narrow(run, n_clusters, lo, hi, steps, max_steps)


def _bisect_from(run, n_clusters: int, max_steps: int, hint: float) -> float | None:
    """The bracket grown from ``hint`` (steps of a quarter of it, doubling, within ``[0.01, 64]``)
    until it holds ``n_clusters``, then the bisection of :func:`_narrow` (no scan: the plain search
    follows when this finds none)."""
    hint = min(max(hint, 0.01), 64.0)
    c = run(hint)
    if c == n_clusters:
        return hint
    step, steps = hint / 4, 0
    if c < n_clusters:
        lo, hi = hint, min(hint + step, 64.0)
        while run(hi) < n_clusters and hi < 64:
            step *= 2
            lo, hi = hi, min(hi + step, 64.0)
            steps += 1
    else:
        lo, hi = max(hint - step, 0.01), hint
        while run(lo) > n_clusters and lo > 0.01:
            step *= 2
            lo, hi = max(lo - step, 0.01), lo
            steps += 1
    return _narrow(run, n_clusters, lo, hi, steps, max_steps, scan=False)


def _narrow(run, n_clusters: int, lo: float, hi: float, steps: int, max_steps: int, scan: bool = True) -> float | None:
    """Bisection of the bracket ``[lo, hi]`` for a resolution with ``n_clusters`` (the count grows with
    the resolution), then (``scan``) a scan of the bracket where it is not monotone; ``None`` when none does."""
    found = None
    for res in (lo, hi):
        if run(res) == n_clusters:
            found = res
    while found is None and steps < max_steps:
        mid = (lo + hi) / 2
        c = run(mid)
        steps += 1
        if c == n_clusters:
            found = mid
        elif c < n_clusters:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-4:
            break
    if found is None and scan:  # non-monotone region: scan the bracket
        for res in np.linspace(max(lo - 0.1, 0.005), hi + 0.1, 21):
            if run(res) == n_clusters:
                return float(res)
    return found


def _step(run, n_clusters: int, start: float, step: float, max_steps: int) -> float | None:
    """SpaGCN's search_res: step towards ``n_clusters``, halving the step whenever the count overshoots."""
    res = start
    old = run(res)
    steps = 0
    while old != n_clusters:
        sign = 1 if old < n_clusters else -1
        trial = res + step * sign
        steps += 1
        if trial <= 1e-6:
            step /= 2
        else:
            new = run(trial)
            if new == n_clusters:
                return trial
            if (1 if new < n_clusters else -1) == sign:
                res, old = trial, new
            else:
                step /= 2
        if steps > max_steps:
            return None
    return res


def search_resolution(
    graph: Any,
    n_clusters: int,
    *,
    seed: int = 0,
    strategy: Literal["bisect", "step"] = "bisect",
    start: float = 0.4,
    step: float = 0.1,
    max_steps: int = 30,
    n_iterations: int = 2,
    weighted: bool = True,
    warn: bool = True,
    what: str = "clusters",
    hint: float | None = None,
) -> tuple[np.ndarray, float, bool]:
    """Leiden with the resolution searched to give exactly ``n_clusters`` clusters.

    ``strategy="bisect"``: bracket and bisect the resolution (the count grows with it), then scan the
    bracket where the count is not monotone. ``"step"``: SpaGCN's rule, from ``start`` by ``step``,
    halving the step on overshoot. Each resolution is clustered once (rounded to 6 decimals).
    ``hint`` (``"bisect"`` only): a resolution that gave ``n_clusters`` on a similar graph (another
    seed's run of the same spots); the bracket starts there, which takes one to a few Leiden runs where
    the plain bracket takes several, and the plain search follows when it finds none. The same rule
    decides (a resolution with exactly ``n_clusters``), but it may be another such resolution.

    Returns ``(labels, resolution, exact)``; when no resolution tried gives ``n_clusters``, the closest
    count is returned with ``exact=False`` and (``warn``) an :class:`ExperimatWarning`.
    """
    if not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise InvalidInputError(f"n_clusters must be a positive integer; got {n_clusters!r}.")
    if sparse.issparse(graph):
        graph = to_igraph(graph, weighted=weighted)
    tried: dict[float, np.ndarray] = {}

    def run(res: float) -> int:
        res = round(float(res), 6)
        if res not in tried:
            tried[res] = leiden(graph, resolution=res, seed=seed, n_iterations=n_iterations, weighted=weighted)
            logger.debug(f"    resolution {res:.4g}: {_n(tried[res])} {what}")
        return _n(tried[res])

    if strategy == "bisect":
        found = _bisect(run, int(n_clusters), max_steps, hint)
    elif strategy == "step":
        found = _step(run, int(n_clusters), start, step, max_steps)
    else:
        raise InvalidInputError(f"strategy must be 'bisect' or 'step'; got {strategy!r}.")
    if found is not None:
        res = round(float(found), 6)
        return tried[res], res, True
    best = min(tried, key=lambda r: (abs(_n(tried[r]) - n_clusters), r))
    if warn:
        warnings.warn(
            f"no Leiden resolution gave exactly {n_clusters} {what}; using resolution {best:.4g} with "
            f"{_n(tried[best])} {what} (the closest found).",
            ExperimatWarning,
            stacklevel=2,
        )
    return tried[best], best, False
