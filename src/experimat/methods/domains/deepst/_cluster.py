"""Leiden clustering with a resolution search for a given number of domains, and the
neighbour-majority refinement of DeepST."""

from __future__ import annotations

import warnings

import numpy as np

from experimat.methods import _cluster
from experimat.methods._cluster import to_igraph
from experimat.methods._graph import knn_graph
from experimat.methods.domains._consensus import run_support  # noqa: F401 (DeepST's consensus support)

from ._graph import knn_indices


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


def run_graphs(embeddings: list[np.ndarray], *, seed: int, k: int = 15) -> tuple[np.ndarray | None, list]:
    """``(sample, graphs)``: the symmetric unweighted ``k``-NN graph of each embedding of the same spots,
    on the spots of a seeded clustering sample above :data:`experimat.methods._cluster.SAMPLE_MAX`
    (``sample`` ``None``: all spots). Computed once for both the runs' own domains and their consensus."""
    sample = _cluster.clustering_sample(embeddings[0].shape[0], seed)
    pts = embeddings if sample is None else [e[sample] for e in embeddings]
    return sample, [knn_graph(e, k, symmetric=True, search="brute") for e in pts]


def leiden_n_clusters(
    emb: np.ndarray, n_clusters: int, *, seed: int, k: int = 15, max_steps: int = 30, graph=None, sample=None,
    hint: float | None = None,
) -> tuple[np.ndarray, float, bool]:
    """Search the Leiden resolution that gives exactly ``n_clusters`` clusters on the kNN graph of
    ``emb`` (:func:`experimat.methods._cluster.search_resolution`, bisection); when none does, the
    closest is kept with an :class:`ExperimatWarning`. Returns ``(labels, resolution, exact)``.

    Above :data:`experimat.methods._cluster.SAMPLE_MAX` spots the search clusters a random sample of
    that many (seeded) and every other spot takes the domain of its nearest landmark (small k-means
    cells of the sample, :func:`experimat.methods._cluster.landmark_vote`): the exact kNN graph of all
    spots would cost their number squared. ``graph`` (with its ``sample``, from :func:`run_graphs`):
    the kNN graph already built. ``hint``: the resolution another run's search found, where the
    bracket starts (:func:`experimat.methods._cluster.search_resolution`).
    """
    if graph is None:
        sample = _cluster.clustering_sample(emb.shape[0], seed)
        graph = knn_graph(emb if sample is None else emb[sample], k, symmetric=True, search="brute")
    labels, resolution, exact = _cluster.search_resolution(
        to_igraph(graph, weighted=False), n_clusters, seed=seed, strategy="bisect", max_steps=max_steps,
        weighted=False, what="domains", hint=hint,
    )
    if sample is not None:
        labels = _cluster.landmark_vote(emb, sample, np.unique(labels, return_inverse=True)[1], seed=seed)
    return labels, resolution, exact


def consensus_graph_clusters(
    embeddings: list[np.ndarray], n_clusters: int, *, seed: int, k: int = 15, max_steps: int = 30, min_runs: int = 1,
    graphs: tuple | None = None, hint: float | None = None,
) -> tuple[np.ndarray, float, bool]:
    """Domains of several runs' embeddings of the same spots: Leiden (resolution searched for
    ``n_clusters``) on the sum of the runs' symmetric kNN graphs, an edge weighted by the number of
    runs in which the two spots are neighbours (the co-association of evidence accumulation, Fred &
    Jain, IEEE TPAMI 27:835, 2005, taken over kNN graphs instead of clusterings, so that memory
    stays ``n * k * runs``). Neighbourhoods that only one run's network happens to form get little
    weight, so the domains depend far less on the seeds than any one run's. With ``min_runs`` > 1
    an edge is kept only when at least that many runs form it (a spot none of whose edges reaches
    that keeps all of its own, so that no spot is cut off); when no resolution gives ``n_clusters``
    on that graph (pieces it cut off), all edges are used. Above
    :data:`experimat.methods._cluster.SAMPLE_MAX` spots, as :func:`leiden_n_clusters`: the graph of a
    seeded sample, the other spots voting by their nearest landmarks in the runs' joined embeddings.
    ``graphs``: ``(sample, graphs)`` of :func:`run_graphs` with this ``seed`` and ``k``, already built;
    ``hint``: a resolution where the search's bracket starts (the runs' own)."""
    import scipy.sparse as sp

    sample, each = run_graphs(embeddings, seed=seed, k=k) if graphs is None else graphs
    graph = sp.csr_matrix(sum(each))
    for g in ([_keep_repeated_edges(graph, min_runs)] if min_runs > 1 else []) + [graph]:
        with warnings.catch_warnings(record=g is not graph):
            labels, resolution, exact = _cluster.search_resolution(
                g, n_clusters, seed=seed, strategy="bisect", max_steps=max_steps, weighted=True, what="domains",
                hint=hint,
            )
        if exact:
            break
    if sample is not None:
        joined = np.hstack(embeddings)
        labels = _cluster.landmark_vote(joined, sample, np.unique(labels, return_inverse=True)[1], seed=seed)
    return labels, resolution, exact


def _keep_repeated_edges(graph, min_runs: int):
    """The edges of the summed kNN graph formed by at least ``min_runs`` runs; a spot left without
    any keeps all of its edges (symmetrically)."""
    import scipy.sparse as sp

    graph = sp.csr_matrix(graph)
    strong = graph.multiply(graph >= min_runs).tocsr()
    strong.eliminate_zeros()
    lonely = np.flatnonzero(np.diff(strong.indptr) == 0)
    if lonely.size:
        mask = sp.diags(np.isin(np.arange(graph.shape[0]), lonely).astype(float))
        rescue = mask @ graph + graph @ mask
        strong = strong.maximum(rescue)
    return sp.csr_matrix(strong)


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
