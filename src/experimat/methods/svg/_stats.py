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


#: log p-value that stands for a p-value of exactly 0 in :func:`cauchy_combine_log`
LOG_P_FLOOR = -1.0e4


def cauchy_combine_log(logp: np.ndarray, *, truncate: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cauchy combination with equal weights over the last axis, from log p-values.

    Returns the statistic ``T``, ``log T`` computed stably for tiny p-values (used for ranking; NaN
    where ``T <= 0``) and the combined p-value (Cauchy reference; not valid with ``truncate``).
    ``truncate=True`` sets the terms of p-values above 1/2 to 0 (``T >= 0``): large per-kernel
    p-values, which come from the least accurate (lower) tail of the per-kernel approximation,
    then cannot drag the statistic to large negative values. A p-value of exactly 0 (``log p = -inf``: a
    statistic past the end point of its approximating distribution) counts as ``log p =`` :data:`LOG_P_FLOOR`,
    not as missing; ``T`` can then overflow to ``inf`` while ``log T`` stays finite.
    """
    logp = np.where(np.isneginf(logp), LOG_P_FLOOR, logp)
    ok = np.isfinite(logp)
    p = np.exp(logp)
    if truncate:
        p = np.minimum(p, 0.5)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        tiny = ok & (logp < np.log(1e-15))
        t = np.where(tiny, 0.0, np.tan((0.5 - p) * np.pi))
        t = np.where(ok, t, 0.0)
        k_ok = ok.sum(-1)
        moderate = t.sum(-1) / np.maximum(k_ok, 1)
        # tiny p-values: tan((0.5 - p) π) ≈ 1 / (p π); sum them in log space
        lt = np.where(tiny, -logp - np.log(np.pi), -np.inf)
        lmax = lt.max(-1)
        has_tiny = np.isfinite(lmax)
        lsum = lmax + np.log(np.where(tiny, np.exp(lt - np.where(has_tiny, lmax, 0.0)[..., None]), 0.0).sum(-1))
        log_t_tiny = lsum - np.log(np.maximum(k_ok, 1))
        T = np.where(has_tiny, np.exp(log_t_tiny) + moderate, moderate)
        logT = np.where(has_tiny, np.logaddexp(log_t_tiny, np.log(np.maximum(moderate, 1e-300))), np.log(T))
        logT = np.where(has_tiny & (moderate < 0), log_t_tiny, logT)
        pval = np.where(has_tiny, np.exp(-logT) / np.pi, cauchy_pvalue(T))
    T = np.where(k_ok > 0, T, np.nan)
    pval = np.where(k_ok > 0, np.clip(pval, 0.0, 1.0), np.nan)
    logT = np.where((k_ok > 0) & (T > 0), logT, np.nan)
    return T, logT, pval
