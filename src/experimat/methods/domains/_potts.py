"""Spatially coherent domain labels: the model's soft assignment with a Potts prior over the spot lattice.

A hidden Markov random field (Besag, J. R. Stat. Soc. B 48:259, 1986; as in BayesSpace, Zhao et al.,
Nat. Biotechnol. 39:1375, 2021, and Giotto's HMRF, Zhu et al., Nat. Biotechnol. 36:1183, 2018): each
spot's label ``l_i`` maximises

    sum_i log q_i(l_i) + (beta / d) * sum_{i~j} [l_i == l_j]

where ``q`` is the clustering model's soft assignment, ``i~j`` the pairs of adjacent spots of the
same section and ``d`` the lattice's typical number of neighbours (4 for ST, 6 for Visium), so that
``beta`` is the log-probability bonus of a label that all of a spot's neighbours share, whatever
the array. The maximum is found by iterated conditional modes (ICM, Besag 1986), spots updated one
at a time in a fixed order starting from the model's labels; each update cannot lower the objective,
so the sweeps stop at a local maximum. A spot changes label only where the model is unsure (its
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
    """
    labels = np.asarray(labels, dtype=np.int64).copy()
    if beta <= 0 or adjacency.nnz == 0:
        return labels, 0
    adj = sparse.csr_matrix(adjacency)
    degree = np.diff(adj.indptr)
    weight = float(beta) / float(np.median(degree[degree > 0]))
    logp = np.log(np.clip(np.asarray(prob, dtype=np.float64), 1e-12, None))
    indptr, indices = adj.indptr, adj.indices
    k = logp.shape[1]
    sweeps = 0
    while sweeps < max_sweeps:
        sweeps += 1
        changed = 0
        for i in range(labels.shape[0]):
            nbr = indices[indptr[i] : indptr[i + 1]]
            if nbr.size == 0:
                continue
            score = logp[i] + weight * np.bincount(labels[nbr], minlength=k)
            best = int(np.argmax(score))
            if score[best] > score[labels[i]]:  # ties keep the current label
                labels[i] = best
                changed += 1
        if changed == 0:
            break
    return labels, sweeps


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
