"""Leiden clustering with a resolution search for a given number of domains, and the
neighbour-majority refinement of DeepST."""

from __future__ import annotations

import warnings

import numpy as np

from experimat._errors import ExperimatWarning
from experimat._optional import import_optional

from ._graph import knn_indices


def knn_igraph(emb: np.ndarray, k: int = 15):
    """Undirected, unweighted kNN graph of the embedding as an :class:`igraph.Graph`."""
    ig = import_optional("igraph", purpose="Leiden clustering")
    n = emb.shape[0]
    ind, _ = knn_indices(emb, k)
    rows = np.repeat(np.arange(n), ind.shape[1])
    a, b = np.minimum(rows, ind.ravel()), np.maximum(rows, ind.ravel())
    edges = np.unique(np.column_stack([a, b]), axis=0)
    return ig.Graph(n=n, edges=edges.tolist(), directed=False)


def leiden(graph, resolution: float, seed: int) -> np.ndarray:
    """Leiden (RB configuration model) memberships, clusters numbered by decreasing size."""
    la = import_optional("leidenalg", purpose="Leiden clustering")
    part = la.find_partition(
        graph, la.RBConfigurationVertexPartition, resolution_parameter=float(resolution), seed=int(seed), n_iterations=2
    )
    return np.asarray(part.membership, dtype=np.int64)


def leiden_n_clusters(
    emb: np.ndarray, n_clusters: int, *, seed: int, k: int = 15, max_steps: int = 30
) -> tuple[np.ndarray, float, bool]:
    """Search the Leiden resolution that gives exactly ``n_clusters`` clusters.

    Bisection on the resolution (the number of clusters grows with it), then a scan around the
    bracket. When no resolution tried gives exactly ``n_clusters``, the closest is kept and an
    :class:`ExperimatWarning` says so.

    Returns ``(labels, resolution, exact)``.
    """
    graph = knn_igraph(emb, k)
    tried: dict[float, np.ndarray] = {}

    def run(res: float) -> int:
        res = round(float(res), 6)
        if res not in tried:
            tried[res] = leiden(graph, res, seed)
        return int(tried[res].max()) + 1

    lo, hi = 0.01, 1.0
    steps = 0
    while run(hi) < n_clusters and hi < 64:
        lo, hi = hi, hi * 2
        steps += 1
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
    if found is None:  # non-monotone region: scan the bracket
        for res in np.linspace(max(lo - 0.1, 0.005), hi + 0.1, 21):
            if run(res) == n_clusters:
                found = res
                break
    if found is not None:
        res = round(float(found), 6)
        return tried[res], res, True
    best = min(tried, key=lambda r: (abs(int(tried[r].max()) + 1 - n_clusters), r))
    got = int(tried[best].max()) + 1
    warnings.warn(
        f"no Leiden resolution gave exactly {n_clusters} domains; using resolution {best:.4g} with {got} domains "
        "(the closest found). More epochs or a different n_domains may help.",
        ExperimatWarning,
        stacklevel=3,
    )
    return tried[best], best, False


def refine_labels(coords: np.ndarray, labels: np.ndarray, n_neighbors: int = 6) -> np.ndarray:
    """DeepST's refinement: a spot takes the majority label of its ``n_neighbors`` nearest spots when
    fewer than half of them share its label and more than half share the majority label."""
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    ind, _ = knn_indices(coords, n_neighbors)
    k = ind.shape[1]
    if k == 0:
        return labels.copy()
    n_lab = int(labels.max()) + 1
    counts = np.zeros((n, n_lab), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), k), labels[ind].ravel()), 1)
    own = counts[np.arange(n), labels]
    major = counts.argmax(1)
    change = (own < k / 2) & (counts[np.arange(n), major] > k / 2)
    out = labels.copy()
    out[change] = major[change]
    return out
