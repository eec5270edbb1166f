"""Spatially coherent domain labels: the model's soft assignment with a Potts prior over the spot lattice.

A hidden Markov random field (Besag, J. R. Stat. Soc. B 48:259, 1986; as in BayesSpace, Zhao et al.,
Nat. Biotechnol. 39:1375, 2021, and Giotto's HMRF, Zhu et al., Nat. Biotechnol. 36:1183, 2018): each
spot's label ``l_i`` maximises

    sum_i log q_i(l_i) + (beta / d) * sum_{i~j} [l_i == l_j]

where ``q`` is the clustering model's soft assignment, ``i~j`` the pairs of adjacent spots of the
same section and ``d`` the lattice's typical number of neighbours (4 for ST, 6 for Visium), so that
``beta`` is the log-probability bonus of a label that all of a spot's neighbours share, whatever
the array. The maximum is found by iterated conditional modes (ICM, Besag 1986) starting from the
model's labels: each spot in turn, in a fixed random order, takes the label of highest score given
its neighbours. Spots that are not adjacent do not affect each other's update, so the spots are
updated a level at a time (:func:`update_levels`: sets of non-adjacent spots whose neighbours earlier
in the order are all in earlier levels), with the same result as one at a time; each update cannot
lower the objective, so the sweeps stop at a local maximum, in time linear in the spots. A spot changes label only where the model is unsure (its
label's log-probability lead is below ``beta``), unlike a majority vote that overrides the model.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

#: spots closer than this multiple of the median nearest-spot distance are neighbours (square arrays:
#: the 4 edge neighbours, not the diagonals at sqrt(2); hexagonal arrays: the 6 neighbours)
NEIGHBOUR_RADIUS = 1.2


def lattice_neighbours(xy: np.ndarray) -> sparse.csr_matrix:
    """Binary adjacency of the spots of one section: pairs closer than :data:`NEIGHBOUR_RADIUS` times
    the median nearest-spot distance."""
    from experimat.methods._graph import nn_distance, radius_graph

    adj = radius_graph(xy, NEIGHBOUR_RADIUS * nn_distance(xy))
    adj.data[:] = 1.0
    return adj


def update_levels(adjacency: sparse.spmatrix, *, seed: int = 0) -> list[np.ndarray]:
    """The spots in the levels of a random visiting order: within a level no two spots are adjacent, and
    visiting the levels in turn is visiting the spots in the order of a random priority (fixed ``seed``).

    Every spot draws a priority; a spot's level is one more than the highest level among its neighbours
    of higher priority (0 when it has none): the levels of the priority order's dependency graph
    (Jones & Plassmann, SIAM J. Sci. Comput. 14:654, 1993, who colour a graph this way). Each level
    is one vectorised pass over the edges still open: a spot joins the current level when it beats the
    priorities of all its neighbours not yet placed. A spot's neighbours of higher priority lie in
    earlier levels and those of lower priority in later ones, so updating a level's spots at once does
    what updating them one at a time in priority order does. The number of levels is that of the longest
    chain of neighbours with falling priorities (about 10-20 on a lattice of 10^4-10^6 spots). Spots
    without neighbours (no stored entry in their row) are in no level; the diagonal orders nothing.
    """
    adj = sparse.csr_matrix(adjacency)
    n = adj.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(adj.indptr))
    cols = adj.indices.astype(np.int64)
    open_ = np.diff(adj.indptr) > 0  # spots without neighbours never join a level
    off = rows != cols
    rows, cols = rows[off], cols[off]
    prio = np.random.default_rng(seed).permutation(n)
    levels = []
    while open_.any():
        keep = open_[rows]
        rows, cols = rows[keep], cols[keep]  # edges of placed spots are not needed again
        beaten = np.bincount(rows[open_[cols] & (prio[cols] > prio[rows])], minlength=n) > 0
        level = np.flatnonzero(open_ & ~beaten)
        open_[level] = False
        levels.append(level)
    return levels


def potts_labels(
    prob: np.ndarray,
    labels: np.ndarray,
    adjacency: sparse.spmatrix,
    beta: float,
    *,
    max_sweeps: int = 20,
) -> tuple[np.ndarray, int]:
    """The ICM maximum of the Potts-prior objective (module docstring), started from ``labels``.

    ``prob``: spots x domains soft assignment (rows sum to 1); ``labels``: the model's labels
    (column indices of ``prob``); ``adjacency``: symmetric binary spot adjacency (block diagonal over
    sections). Returns the labels and the number of sweeps run. ``beta == 0``: ``labels`` unchanged.

    A sweep visits the levels of :func:`update_levels` in turn and updates all spots of a level at
    once: the result is that of updating the spots one at a time in a fixed random order (the level
    order), each change raising the objective. Sweeps stop when none changes a label or after
    ``max_sweeps``. The cost of a sweep is linear in the edges and spots (no Python loop over spots).
    """
    labels = np.asarray(labels, dtype=np.int64).copy()
    if beta <= 0 or adjacency.nnz == 0:
        return labels, 0
    adj = sparse.csr_matrix(adjacency)
    degree = np.diff(adj.indptr)
    weight = float(beta) / float(np.median(degree[degree > 0]))
    logp = np.log(np.clip(np.asarray(prob, dtype=np.float64), 1e-12, None))
    k = logp.shape[1]
    # per level: its spots, and their edges as (position of the spot in the level, neighbour)
    levels = []
    for spots in update_levels(adj):
        sub = adj[spots]
        local = np.repeat(np.arange(spots.size, dtype=np.int64), np.diff(sub.indptr))
        levels.append((spots, local, sub.indices.astype(np.int64), logp[spots]))
    sweeps = 0
    while sweeps < max_sweeps:
        sweeps += 1
        changed = 0
        for spots, local, nbr, lp in levels:
            same = np.bincount(local * k + labels[nbr], minlength=spots.size * k).reshape(spots.size, k)
            score = lp + weight * same
            best = np.argmax(score, axis=1)
            rows = np.arange(spots.size)
            better = score[rows, best] > score[rows, labels[spots]]  # ties keep the current label
            labels[spots[better]] = best[better]
            changed += int(better.sum())
        if changed == 0:
            break
    return labels, sweeps


def potts_objective(prob: np.ndarray, labels: np.ndarray, adjacency: sparse.spmatrix, beta: float) -> float:
    """The objective of the module docstring (``sum_i log q_i(l_i) + (beta / d) sum_{i~j} [l_i == l_j]``, each pair
    once) that :func:`potts_labels` raises."""
    adj = sparse.coo_matrix(sparse.triu(adjacency, k=1))
    degree = np.diff(sparse.csr_matrix(adjacency).indptr)
    labels = np.asarray(labels, dtype=np.int64)
    logp = np.log(np.clip(np.asarray(prob, dtype=np.float64), 1e-12, None))
    fit = float(logp[np.arange(labels.size), labels].sum())
    if beta <= 0 or adj.nnz == 0:
        return fit
    weight = float(beta) / float(np.median(degree[degree > 0]))
    return fit + weight * float(np.sum(labels[adj.row] == labels[adj.col]))


def sections_adjacency(xys: list[np.ndarray]) -> sparse.csr_matrix:
    """The spot lattices of several sections as one block-diagonal adjacency (no pair of spots of two
    sections is adjacent), rows in the order of ``xys``."""
    return sparse.block_diag([lattice_neighbours(xy) for xy in xys], format="csr")


def sections_prior(prob: np.ndarray, labels: np.ndarray, xys: list[np.ndarray], beta: float) -> tuple[np.ndarray, float, int]:
    """:func:`potts_labels` over several sections at once, each on its own spot lattice
    (:func:`sections_adjacency`; ``xys`` in the order of the rows of ``prob``). Returns the labels, the
    fraction of spots relabelled and the number of sweeps."""
    adjacency = sections_adjacency(xys)
    smoothed, sweeps = potts_labels(prob, labels, adjacency, beta)
    return smoothed, float(np.mean(smoothed != labels)), sweeps
