"""LOCAT's calibration and combination: the permuted-gene null of the concentration score, the
Cauchy combination of the two tests and the reference's penalties."""

from __future__ import annotations

import numpy as np

from experimat._errors import InvalidInputError

_EPS_P = 1e-15


def safe_p(p):
    p = np.asarray(p, dtype=np.float64)
    return np.clip(np.where(np.isfinite(p), p, 1.0 - _EPS_P), _EPS_P, 1.0 - _EPS_P)


def cauchy_combine(p1, p2):
    """Cauchy combination (Liu & Xie 2020) of two p-values with equal weights, elementwise."""
    p1, p2 = safe_p(p1), safe_p(p2)
    t = 0.5 * (np.tan((0.5 - p1) * np.pi) + np.tan((0.5 - p2) * np.pi))
    return safe_p(0.5 - np.arctan(t) / np.pi)


def cauchy_combine_rows(p):
    """Cauchy combination with equal weights of the p-values in each row of ``p`` ``(genes, k)``."""
    p = safe_p(p)
    t = np.mean(np.tan((0.5 - p) * np.pi), axis=1)
    return safe_p(0.5 - np.arctan(t) / np.pi)


def smooth_q(x):
    """The reference's smooth squashing of p-values above 0.99 (keeps the order, stays < 1)."""
    return np.where(x <= 0.99, x, 1 - 0.01 / (1 + 100 * (x - 0.99) + 10000 * (x - 0.99) ** 2))


class NullModel:
    """Null of the raw concentration score as a smooth function of log10(expressing fraction).

    Centre and scale come from kernel-weighted quantiles of the permuted pseudo-genes' scores:
    ``centre = q50``, ``scale = (q95 - q50) / 1.645``. The test is one-sided, so the scale is
    read from the upper half of the null, which the lower tail (pseudo-genes that happened to get
    fewer mixture components) does not inflate.
    """

    def __init__(self, log_frac: np.ndarray, raw: np.ndarray, bandwidth: float = 0.3):
        ok = np.isfinite(raw) & np.isfinite(log_frac)
        if int(ok.sum()) < 5:
            raise InvalidInputError("too few null pseudo-genes could be scored to calibrate LOCAT.")
        o = np.argsort(raw[ok], kind="stable")
        self.x = log_frac[ok][o]
        self.y = raw[ok][o]
        self.h = bandwidth

    def _quantiles(self, log_frac, qs):
        e = np.asarray(log_frac, float)
        out = np.empty((len(qs), e.size))
        for s0 in range(0, e.size, 2048):
            ee = e[s0 : s0 + 2048]
            k = np.exp(-0.5 * ((ee[:, None] - self.x[None, :]) / self.h) ** 2) + 1e-12
            c = np.cumsum(k, axis=1)
            c /= c[:, -1:]
            for i, q in enumerate(qs):
                j = np.argmax(c >= q, axis=1)
                out[i, s0 : s0 + 2048] = self.y[j]
        return out

    def center_scale(self, log_frac):
        q50, q95 = self._quantiles(log_frac, (0.5, 0.95))
        return q50, np.maximum((q95 - q50) / 1.6448536, 1e-12)


def combine(raw, m, sens, p_dep, null: NullModel, n_cells: int) -> dict[str, np.ndarray]:
    """z-scores and p-values of the real genes: concentration against the null, Cauchy combination with
    the depletion p-value, then the reference's size and sensitivity penalties."""
    from scipy.stats import norm

    centre, scale = null.center_scale(np.log10(m / n_cells))
    z = (raw - centre) / scale
    p_conc = safe_p(norm.sf(z))
    p_dep = safe_p(p_dep)
    p_c = cauchy_combine(p_dep, p_conc)
    h_size = safe_p(1.0 - np.exp(-1.0 / (m + 1.0)))
    h_sens = safe_p(1.0 - (sens + 1e-9))
    p_final = 1.0 - (1.0 - p_c) * (1.0 - 0.05 * h_size) * (1.0 - 0.12 * h_sens)
    return {
        "zscore": z, "sens_score": sens, "depletion_pval": p_dep, "concentration_pval": p_conc,
        "h_size": h_size, "h_sens": h_sens, "pval": smooth_q(safe_p(p_final)),
    }  # fmt: skip
