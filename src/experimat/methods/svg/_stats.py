"""Multiple-testing and p-value helpers shared by the SVG tests (numpy only)."""

from __future__ import annotations

import numpy as np
from scipy import special


def bh_adjust(pvals: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values; NaN stays NaN and is not counted.

    ``padj_(i) = min_{j >= i} m p_(j) / j`` — the cumulative minimum taken from the largest
    p-value backwards, capped at 1.
    """
    p = np.asarray(pvals, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv, kind="mergesort")
    ranked = pv[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adj = np.empty(m)
    adj[order] = np.minimum(ranked, 1.0)
    out[ok] = adj
    return out


def storey_qvalue(pvals: np.ndarray) -> np.ndarray:
    """Storey q-values as SpatialDE 1.x computes them.

    ``pi0`` is the proportion ``#(p > 0.89) / (0.11 m)`` (SpatialDE's cubic interpolating spline
    through ``#(p > λ) / (m (1 - λ))`` evaluated at its last knot λ = 0.89), capped at 1, and set
    to 1 when fewer than 100 p-values are tested. NaN p-values are not counted.
    """
    p = np.asarray(pvals, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    if m < 100:
        pi0 = 1.0
    else:
        lam = np.arange(0, 0.90, 0.01)[-1]
        pi0 = min(1.0, float((pv > lam).sum()) / (m * (1.0 - lam)))
    order = np.argsort(pv, kind="mergesort")
    ranked = pi0 * m * pv[order] / np.arange(1, m + 1)
    ranked[-1] = min(ranked[-1], 1.0)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty(m)
    q[order] = ranked
    out[ok] = q
    return out


def chi2_sf(x: np.ndarray, df: np.ndarray | float) -> np.ndarray:
    """Upper tail of the χ² distribution (vectorised, accurate far into the tail)."""
    x = np.asarray(x, dtype=np.float64)
    return special.gammaincc(np.asarray(df, dtype=np.float64) / 2.0, np.maximum(x, 0.0) / 2.0)


def cauchy_statistic(pvals: np.ndarray, weights: np.ndarray | None = None, axis: int = -1) -> np.ndarray:
    """Cauchy combination statistic ``T = Σ w_k tan((0.5 - p_k) π)`` (Liu & Xie 2020).

    Tiny p-values use the asymptote ``1 / (p π)`` so the statistic keeps ordering the strongest
    genes instead of overflowing. NaN p-values are ignored (weights renormalised).
    """
    p = np.asarray(pvals, dtype=np.float64)
    p = np.moveaxis(p, axis, -1)
    k = p.shape[-1]
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    ok = np.isfinite(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p < 1e-15, 1.0 / (np.maximum(p, 1e-300) * np.pi), np.tan((0.5 - p) * np.pi))
    t = np.where(ok, t, 0.0)
    wsum = (ok * w).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = (t * w).sum(-1) / wsum
    return np.where(wsum > 0, stat, np.nan)


def cauchy_pvalue(stat: np.ndarray) -> np.ndarray:
    """p-value of a Cauchy combination statistic, stable for large statistics."""
    t = np.asarray(stat, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(t > 1.0, np.arctan(1.0 / t) / np.pi, 0.5 - np.arctan(t) / np.pi)
    return p
