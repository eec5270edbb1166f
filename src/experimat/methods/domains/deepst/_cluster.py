"""Leiden clustering with a resolution search for a given number of domains (the reference's
domains), the stable mode's k-means on several runs' embeddings, and the neighbour-majority
refinement of DeepST."""

from __future__ import annotations

import numpy as np

from experimat.methods import _cluster
from experimat.methods._cluster import to_igraph
from experimat.methods._graph import knn_graph
from experimat.methods.domains._consensus import run_support  # noqa: F401 (DeepST's consensus support)

from ._graph import knn_indices

#: k-means starts of the stable mode's domains (:func:`kmeans_domains`), at most :data:`KMEANS_BUDGET`
#: start-points in all (200 starts up to 10,000 spots, 40 at 50,000) and at least :data:`KMEANS_MIN_INITS`
KMEANS_INITS, KMEANS_BUDGET, KMEANS_MIN_INITS = 200, 2_000_000, 10


def knn_igraph(emb: np.ndarray, k: int = 15):
    """Undirected, unweighted kNN graph of the embedding as an :class:`igraph.Graph`."""
    return to_igraph(knn_graph(emb, k, symmetric=True, search="brute"), weighted=False)


def leiden(graph, resolution: float, seed: int) -> np.ndarray:
    """Leiden (RB configuration model) memberships of the unweighted graph."""
    return _cluster.leiden(graph, resolution=resolution, seed=seed, weighted=False)


def initial_clusters(z: np.ndarray, k: int, resolution: float, seed: int) -> np.ndarray:
    """DeepST's initial DEC clusters: Leiden at ``resolution`` on the ``k``-NN graph of ``z``. Above
    :data:`experimat.methods._cluster.SAMPLE_MAX` spots, of a random sample of that many (seeded), the
    others joining the nearest cluster centre (the DEC layer starts from the centres only)."""
    sample = _cluster.clustering_sample(z.shape[0], seed)
    if sample is None:
        return leiden(knn_igraph(z, k), resolution, seed)
    labels = leiden(knn_igraph(z[sample], k), resolution, seed)
    return _cluster.nearest_centre(z, sample, np.unique(labels, return_inverse=True)[1])


def leiden_n_clusters(
    emb: np.ndarray, n_clusters: int, *, seed: int, k: int = 15, max_steps: int = 30
) -> tuple[np.ndarray, float, bool]:
    """Search the Leiden resolution that gives exactly ``n_clusters`` clusters on the kNN graph of
    ``emb`` (:func:`experimat.methods._cluster.search_resolution`, bisection); when none does, the
    closest is kept with an :class:`ExperimatWarning`. Returns ``(labels, resolution, exact)``.

    Above :data:`experimat.methods._cluster.SAMPLE_MAX` spots the search clusters a random sample of
    that many (seeded) and every other spot takes the domain of its nearest landmark (small k-means
    cells of the sample, :func:`experimat.methods._cluster.landmark_vote`): the exact kNN graph of all
    spots would cost their number squared.
    """
    sample = _cluster.clustering_sample(emb.shape[0], seed)
    graph = knn_graph(emb if sample is None else emb[sample], k, symmetric=True, search="brute")
    labels, resolution, exact = _cluster.search_resolution(
        to_igraph(graph, weighted=False), n_clusters, seed=seed, strategy="bisect", max_steps=max_steps,
        weighted=False, what="domains",
    )
    if sample is not None:
        labels = _cluster.landmark_vote(emb, sample, np.unique(labels, return_inverse=True)[1], seed=seed)
    return labels, resolution, exact


def kmeans_domains(embeddings: list[np.ndarray], n_clusters: int, *, seed: int) -> tuple[np.ndarray, int]:
    """The stable mode's domains: k-means with ``n_clusters`` centres on the runs' embeddings of the
    same spots side by side (one point per spot, each run's coordinates a block), the best of
    ``n_init`` k-means++ starts drawn from ``seed``. Returns ``(labels, n_init)``.

    k-means rather than Leiden with a resolution search: on the pre-trained embeddings of the
    muscle samples, Leiden's cut at 8 domains moved with each run's training noise (seed-to-seed ARI
    0.65-0.67 on one run's embedding, 0.64-0.69 on 2 runs' joint kNN graph) where k-means's best of
    200 starts on the same embeddings did not (0.98), and it needs no search (issue 19,
    benchmarks/domains.py).
    :data:`KMEANS_INITS` starts, fewer on many points (``n_init * points`` at most
    :data:`KMEANS_BUDGET`, at least :data:`KMEANS_MIN_INITS`): fewer starts left the muscle samples'
    solution to chance (Vis7B 0.78-0.87 with 50 starts on the 200-epoch embeddings, 0.84-0.95 with
    200). Above :data:`experimat.methods._cluster.SAMPLE_MAX` spots the centres are fitted on a
    seeded sample of that many and every spot joins its nearest centre."""
    from sklearn.cluster import KMeans

    joined = np.hstack(embeddings) if len(embeddings) > 1 else np.asarray(embeddings[0])
    sample = _cluster.clustering_sample(joined.shape[0], seed)
    fit = joined if sample is None else joined[sample]
    n_init = int(max(KMEANS_MIN_INITS, min(KMEANS_INITS, KMEANS_BUDGET // fit.shape[0])))
    km = KMeans(n_clusters, n_init=n_init, random_state=int(seed)).fit(fit)
    if sample is None:
        return km.labels_.astype(np.int64), n_init
    return _cluster.nearest_index(joined, km.cluster_centers_), n_init


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
