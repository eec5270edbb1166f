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


class LocalNull:
    """Null of the raw concentration score at each expression level, for the p-values.

    The raw score's null changes fast with the expressing fraction ``p`` where a gene's mixture changes
    character: below ~d + 2 expressing cells (near-singular covariances), where the number of mixture
    components ``K`` steps up (20-80 of 700 cells on pbmc68k_reduced) and at the top of the range. A null
    smoothed over a fixed width in ``p`` misses those changes (1 % to 18 % of permuted genes significant
    at 0.05 depending on ``p``). Here, for a query gene at ``x = log10 p`` with ``K`` components:

    - pseudo-genes are weighted by a Gaussian kernel in ``x`` times ``lam ** |K - K_i|`` (the mixed
      discrete/continuous product kernel of Li & Racine: mostly those with the same ``K``); the bandwidth
      is the smallest of :data:`_BANDWIDTHS` (at least ``h_min``) whose weights sum to ``n_eff``;
    - the centre is the weighted local-linear fit of the raw score in ``x`` (no bias from the null's
      slope in ``x``, unlike a kernel mean, which matters at the ends of the range);
    - the spread comes from weighted quantiles of the pseudo-genes' leave-one-out residuals:
      ``scale = (q_hi - q50) / 1.645``, where ``q_hi`` is the residual quantile at level
      ``L (n + 1) / n`` (``n``: Kish effective number of weights, ``L`` = :attr:`_LEVEL` = 0.96): a new
      null draw exceeds the ``j``-th smallest of ``n`` null draws with probability ``1 - j / (n + 1)``,
      so the plain quantile (``j = L n``) is exceeded ~``1 - L + 1 / n`` of the time and
      ``j = L (n + 1)`` keeps it at ``1 - L`` however few pseudo-genes lie nearby. ``L`` is set a point
      above 0.95 as a margin: on permuted pbmc68k_reduced genes, 0.95 gave 4-6 % significant at 0.05 by
      level (mean of 12 runs), 0.96 keeps every level below 5 %.
    """

    #: target upper-tail mass at the 0.05 threshold (a margin below 0.05: with a few dozen pseudo-genes
    #: near a level, the local null's remaining error still moves the rate by about a percent)
    _LEVEL = 0.96
    _BANDWIDTHS = np.array([0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.45, 0.7, 1.0, 2.0, 5.0])

    def __init__(self, log_frac, raw, k, *, lam: float = 0.1, n_eff: float = 40.0, h_min: float = 0.05):
        ok = np.isfinite(raw) & np.isfinite(log_frac)
        if int(ok.sum()) < 5:
            raise InvalidInputError("too few null pseudo-genes could be scored to calibrate LOCAT.")
        self.x, self.y, self.k = (np.asarray(a, np.float64)[ok] for a in (log_frac, raw, k))
        self.lam, self.n_eff, self.h_min = lam, n_eff, h_min
        # leave-one-out residuals (y_i minus the fit without i: (y_i - fit_i) / (1 - H_ii), H_ii the weight of
        # y_i in its own fit): the spread of a new null score about the fitted centre, which in-sample
        # residuals understate
        fit, w, lin, s0, s2, det = self._centre(self.x, self.k)
        h_ii = np.diag(w) * np.where(lin, s2 / np.where(lin, det, 1.0), 1.0 / s0)
        res = (self.y - fit) / np.maximum(1.0 - h_ii, 0.05)
        self.order = np.argsort(res, kind="stable")
        self.res_sorted = res[self.order]

    def _weights(self, x0, k0):
        dx = x0[:, None] - self.x[None, :]
        kf = self.lam ** np.abs(k0[:, None] - self.k[None, :])
        w = np.zeros_like(dx)
        done = np.zeros(x0.size, dtype=bool)
        for h in self._BANDWIDTHS[self._BANDWIDTHS >= self.h_min]:
            rows = np.flatnonzero(~done)  # only the queries still without enough neighbours
            if rows.size == 0:
                break
            wh = np.exp(-0.5 * (dx[rows] / h) ** 2) * kf[rows]
            take = (wh.sum(axis=1) >= self.n_eff) | (h == self._BANDWIDTHS[-1])
            w[rows[take]] = wh[take]
            done[rows[take]] = True
        return w + 1e-300, dx

    def _centre(self, x0, k0):
        w, dx = self._weights(x0, k0)
        s0, s1, s2 = w.sum(1), (w * dx).sum(1), (w * dx**2).sum(1)
        t0, t1 = w @ self.y, (w * dx) @ self.y
        det = s0 * s2 - s1**2
        lin = det > 1e-9 * s0 * np.maximum(s2, 1e-300)
        return np.where(lin, (s2 * t0 - s1 * t1) / np.where(lin, det, 1.0), t0 / s0), w, lin, s0, s2, det

    def center_scale(self, log_frac, k):
        """Centre and scale of the null at each query (``log10 p``, components)."""
        x0 = np.asarray(log_frac, np.float64)
        k0 = np.asarray(k, np.float64)
        centre, scale = np.empty(x0.size), np.empty(x0.size)
        for s0 in range(0, x0.size, 1024):
            sl = slice(s0, s0 + 1024)
            mu, w = self._centre(x0[sl], k0[sl])[:2]
            n_e = w.sum(1) ** 2 / (w**2).sum(1)
            level = np.minimum(self._LEVEL * (n_e + 1.0) / n_e, 0.995)
            c = np.cumsum(w[:, self.order], axis=1)
            c /= c[:, -1:]
            q50 = self.res_sorted[np.argmax(c >= 0.5, axis=1)]
            q_hi = self.res_sorted[np.argmax(c >= level[:, None], axis=1)]
            centre[sl] = mu + q50
            scale[sl] = np.maximum((q_hi - q50) / 1.6448536, 1e-12)
        return centre, scale


def combine(raw, m, k, sens, p_dep, null: NullModel, local: LocalNull, n_cells: int) -> dict[str, np.ndarray]:
    """z-scores and p-values of the real genes: the z-score against the smooth null, the concentration
    p-value against the local null, Cauchy combination with the depletion p-value, then the reference's
    size and sensitivity penalties."""
    from scipy.special import ndtr  # the normal upper tail as scipy.stats.norm.sf, without importing scipy.stats

    log_frac = np.log10(m / n_cells)
    centre, scale = null.center_scale(log_frac)
    z = (raw - centre) / scale
    centre_l, scale_l = local.center_scale(log_frac, k)
    p_conc = safe_p(ndtr(-(raw - centre_l) / scale_l))
    p_dep = safe_p(p_dep)
    p_c = cauchy_combine(p_dep, p_conc)
    h_size = safe_p(1.0 - np.exp(-1.0 / (m + 1.0)))
    h_sens = safe_p(1.0 - (sens + 1e-9))
    p_final = 1.0 - (1.0 - p_c) * (1.0 - 0.05 * h_size) * (1.0 - 0.12 * h_sens)
    return {
        "zscore": z, "sens_score": sens, "depletion_pval": p_dep, "concentration_pval": p_conc,
        "h_size": h_size, "h_sens": h_sens, "pval": smooth_q(safe_p(p_final)),
    }  # fmt: skip
