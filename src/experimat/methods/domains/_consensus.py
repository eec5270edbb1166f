"""Seed-stable domains: a consensus of several seeded runs by relabelling and voting.

Each run's labels are matched to a reference run by the maximum-overlap one-to-one assignment of
their contingency table (Hungarian algorithm), and every spot takes the label most runs give it
(Dudoit & Fridlyand, Bioinformatics 19:1090, 2003, "BagClust1"; Ayad & Kamel 2008 on relabelling
and voting cluster ensembles). The reference is the medoid run: the one with the highest mean
adjusted Rand index to the others, so that the consensus does not depend on the order of the
runs. Memory is spots x domains; no spots x spots co-association matrix is formed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def run_seeds(seed: int, n_runs: int) -> list[int]:
    """Seeds of the ``n_runs`` runs of a consensus, derived from ``seed`` (the first is ``seed`` itself)."""
    extra = np.random.SeedSequence(int(seed)).generate_state(max(n_runs - 1, 0), dtype=np.uint32)
    return [int(seed)] + [int(s) % (2**31 - 1) for s in extra]


def _codes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, codes = np.unique(np.asarray(labels), return_inverse=True)
    return values, codes.astype(np.int64)


def _contingency(a: np.ndarray, b: np.ndarray, ka: int, kb: int) -> np.ndarray:
    table = np.zeros((ka, kb), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    return table


def _ari(table: np.ndarray) -> float:
    n = table.sum()

    def comb2(x):
        return (x * (x - 1) / 2.0).sum()

    sum_ij = comb2(table.astype(np.float64))
    sum_a = comb2(table.sum(1).astype(np.float64))
    sum_b = comb2(table.sum(0).astype(np.float64))
    expected = sum_a * sum_b / (n * (n - 1) / 2.0) if n > 1 else 0.0
    top = (sum_a + sum_b) / 2.0
    return float((sum_ij - expected) / (top - expected)) if top != expected else 1.0


def pairwise_ari(runs: Sequence[np.ndarray]) -> np.ndarray:
    """Adjusted Rand index between every pair of label vectors (a symmetric matrix, 1 on the diagonal)."""
    coded = [_codes(r)[1] for r in runs]
    sizes = [int(c.max()) + 1 for c in coded]
    m = len(coded)
    out = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            out[i, j] = out[j, i] = _ari(_contingency(coded[i], coded[j], sizes[i], sizes[j]))
    return out


def _match(codes: np.ndarray, ref: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A run's labels (``codes`` 0..kr-1) matched one-to-one onto ``ref``'s labels 0..k-1 by maximum overlap
    (Hungarian algorithm): ``(mapping, rows, cols)``, ``mapping[c]`` the matched label of ``c`` (-1: none)."""
    from scipy.optimize import linear_sum_assignment

    kr = int(codes.max()) + 1
    rows, cols = linear_sum_assignment(-_contingency(codes, ref, kr, k))
    mapping = np.full(kr, -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping, rows, cols


def run_support(runs: Sequence[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Per spot, the fraction of ``runs`` whose label, matched one-to-one to ``labels`` (:func:`_match`), is the
    spot's label."""
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1
    agree = np.zeros(labels.shape[0])
    for run in runs:
        codes = _codes(run)[1]
        agree += _match(codes, labels, k)[0][codes] == labels
    return agree / len(runs)


def consensus_labels(runs: Sequence[np.ndarray], probs: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, dict]:
    """Relabel every run onto the medoid run and take each spot's majority label.

    Parameters
    ----------
    runs
        Label vectors of the same spots, one per run (any hashable labels).
    probs
        Optional soft assignments, one spots x domains matrix per run, whose column ``c`` is the
        probability of label ``c`` of that run (``runs[i]`` then holds column indices).

    Returns
    -------
    ``(labels, info)``: integer labels ``0..k-1`` numbered by decreasing size, and ``info`` with the
    mean pairwise ARI between the runs (``run_agreement``), the medoid run's index and, per spot,
    the fraction of runs agreeing with the consensus (``support``). With ``probs``, ``info['prob']``
    is the runs' mean soft assignment relabelled the same way (spots x k, columns in the order of
    ``labels``; the probability of a run's label that matches no consensus label is dropped and each
    row renormalised).
    """
    valued = [_codes(r) for r in runs]
    coded = [c for _, c in valued]
    n = coded[0].shape[0]
    m = len(coded)
    ari = pairwise_ari(coded) if m > 1 else np.ones((1, 1))
    mean_ari = (ari.sum(1) - 1.0) / max(m - 1, 1)
    medoid = int(np.argmax(mean_ari))
    ref = coded[medoid]
    k = int(ref.max()) + 1
    votes = np.zeros((n, k), dtype=np.float64)
    soft = np.zeros((n, k), dtype=np.float64) if probs is not None else None
    for i, codes in enumerate(coded):
        mapping, rows, cols = _match(codes, ref, k)
        mapped = mapping[codes]
        ok = mapped >= 0  # labels of a run with more domains than the reference abstain
        # the medoid breaks ties: its vote counts a little more
        votes[np.nonzero(ok)[0], mapped[ok]] += 1.0 + (1e-3 if i == medoid else 0.0)
        if soft is not None:
            columns = np.asarray(valued[i][0], dtype=np.int64)
            soft[:, cols] += np.asarray(probs[i], dtype=np.float64)[:, columns[rows]]
    raw = votes.argmax(1)
    labels = _by_size(raw)
    support = np.floor(votes[np.arange(n), raw]) / m
    pairs = ari[np.triu_indices(m, 1)]
    info = {"run_agreement": float(pairs.mean()) if m > 1 else 1.0, "medoid": medoid, "support": support}
    if soft is not None:
        order = np.zeros(int(labels.max()) + 1, dtype=np.int64)
        order[labels] = raw  # consensus label -> column of the medoid's numbering
        prob = soft[:, order]
        info["prob"] = prob / np.maximum(prob.sum(1, keepdims=True), 1e-300)
    return labels, info


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..k-1 by decreasing size (ties: by first occurrence)."""
    values, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values))
    return rank[np.searchsorted(values, labels)]
