"""LOCAT's background density ``f0``: a Gaussian mixture of all cells, its size chosen by BIC."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._prep import cluster_means, principal_splits


@dataclass
class Background:
    k: int  # components chosen by BIC
    logf0: np.ndarray  # (n,) log density at every cell
    cell_labels: np.ndarray  # (n,) most likely component of every cell


def fit_background(
    emb: np.ndarray,
    centres: np.ndarray,
    atom_sums: Any,
    bw: np.ndarray,
    reg: float,
    max_components: int | None,
    n_starts: int = 10,
) -> Background:
    """Fit the background mixture on the atoms (NumPy, on the host: a few fits on a few hundred atoms are
    cheaper than compiling them) for 1..10 components (extended up to 30 while the BIC minimum is at the
    upper end; or 1..``max_components``) and keep the BIC-best.

    Every candidate starts from the deterministic principal-direction partition of the atoms into as many
    clusters (:func:`principal_splits`; the partitions are nested, one pass gives them all). The chosen
    size is refitted from ``n_starts`` deterministic starts (that partition, then
    :func:`farthest_first_starts`) and ``f0`` averages their densities; no step depends on a seed.
    """
    from . import _gmm

    n, d = emb.shape
    agg = atom_sums(bw[None, :].astype(np.float32)).astype(np.float64)
    s_bg, mean_bg, scat_bg = (o[0] for o in _gmm.group_stats_np(agg, centres))
    bw_norm = bw / bw.sum()
    k_cap = max_components if max_components is not None else min(30, max(1, n // 10))
    levels = principal_splits(mean_bg, s_bg, k_cap, levels=True)  # (k', a)
    k_cap = min(k_cap, levels.shape[0])
    bic_cost = d * (d + 3) / 2

    def fit(ks: np.ndarray):
        k_slots = int(ks.max())
        mu0 = np.zeros((ks.size, k_slots, d))
        for r, k in enumerate(ks):
            mu0[r, :k] = cluster_means(mean_bg, s_bg, levels[k - 1], k)
        act = np.arange(k_slots)[None, :] < ks[:, None]
        pi, mu, chol = _gmm.fit_grouped_batch_np(
            mu0, s_bg, mean_bg, scat_bg, act, float(np.float32(reg)), max_iter=150, tol=1e-5
        )
        lp = _gmm.batch_logpdf_np(emb, pi, mu, chol, act)  # (rows, n)
        return lp, (pi, mu, chol, act)

    lo, hi = 1, (k_cap if max_components is not None else min(10, k_cap))
    all_k, all_ll, fits = [], [], {}
    while True:
        ks = np.arange(lo, hi + 1)
        lp, prm = fit(ks)
        for r, k in enumerate(ks):
            fits[int(k)] = (lp[r], tuple(p_[r] for p_ in prm))
        all_k.extend(ks.tolist())
        all_ll.extend((lp @ bw_norm).tolist())
        bic = bic_cost * np.asarray(all_k) * np.log(n) - 2.0 * n * np.asarray(all_ll)
        k_best = int(np.asarray(all_k)[int(np.argmin(bic))])
        if max_components is not None or k_best < hi - 1 or hi >= k_cap:
            break
        lo, hi = hi + 1, min(hi + 5, k_cap)
    # the chosen size from n_starts deterministic starts: f0 averages their densities (a smoother density
    # than one fit, as the reference's average over random starts), the labels come from the best fit
    mu0 = farthest_first_starts(mean_bg, s_bg, k_best, n_starts - 1)
    mu0 = np.concatenate([cluster_means(mean_bg, s_bg, levels[k_best - 1], k_best)[None], mu0])
    act = np.ones((mu0.shape[0], k_best), dtype=bool)
    pi, mu, chol = _gmm.fit_grouped_batch_np(
        mu0, s_bg, mean_bg, scat_bg, act, float(np.float32(reg)), max_iter=150, tol=1e-5
    )
    lp = _gmm.batch_logpdf_np(emb, pi, mu, chol, act)  # (starts, n)
    best = int(np.argmax(lp @ bw_norm))
    top = lp.max(axis=0)
    return Background(
        k=k_best,
        logf0=top + np.log(np.mean(np.exp(lp - top[None, :]), axis=0)),
        cell_labels=_gmm.component_argmax_np(emb, mu[best], chol[best], act[best]),
    )


def farthest_first_starts(x: np.ndarray, w: np.ndarray, k: int, n: int) -> np.ndarray:
    """``n`` deterministic sets of ``k`` initial centres ``(n, k, d)`` among the weighted points ``x``.

    Start ``j`` begins at the heaviest point of cluster ``j`` of the principal-direction partition into
    ``n`` clusters and adds, ``k - 1`` times, the point with the largest ``w * D^2`` (``D``: distance to
    the nearest centre so far): the deterministic counterpart of k-means++'s ``w * D^2`` sampling, with
    different first centres leading to different local optima of EM.
    """
    d = x.shape[1]
    if n <= 0:
        return np.zeros((0, k, d))
    part = principal_splits(x, w, n)
    firsts = [int(np.flatnonzero(part == c)[np.argmax(w[part == c])]) for c in range(int(part.max()) + 1)]
    out = np.zeros((n, k, d))
    for j in range(n):
        c = x[firsts[j % len(firsts)]]
        out[j, 0] = c
        d2 = np.sum((x - c) ** 2, axis=1)
        for i in range(1, k):
            c = x[int(np.argmax(w * d2))]
            out[j, i] = c
            d2 = np.minimum(d2, np.sum((x - c) ** 2, axis=1))
    return out
