"""The jitted parts of the score tests (residuals of the null model, quadratic forms, power sums) and the
calibration of the Cauchy-combined statistic against permuted genes."""

from __future__ import annotations

from functools import cache

import numpy as np

_NB_ITER = 4


@cache
def _core(obs_dist: str, n_kernels: int, with_stats: bool = True):
    """Jitted per-chunk function: centred residuals -> (Q per kernel, power sums S2..S6, valid,
    dispersion), or (centred residuals, valid) with ``with_stats=False``."""
    import jax
    import jax.numpy as jnp

    def quad(C, U, lam, onehot):
        B = C @ U  # (g, R)
        return (B**2 * lam[None, :]) @ onehot  # (g, K)

    def psums(C):
        C2 = C * C
        C3 = C2 * C
        return jnp.stack([C2.sum(1), C3.sum(1), (C2 * C2).sum(1), (C3 * C2).sum(1), (C3 * C3).sum(1)], axis=1)

    def nb_resid(Y, sf):
        n = Y.shape[1]
        tot = Y.sum(1)
        valid = (tot > 0) & (Y.max(1) > Y.min(1))
        beta = jnp.log(jnp.where(valid, tot, 1.0) / sf.sum())
        mu = sf[None, :] * jnp.exp(beta)[:, None]

        def disp(mu):
            a = (((Y - mu) ** 2 - mu).sum(1)) / ((mu**2).sum(1) + 1e-300)
            return jnp.clip(a * n / max(n - 1, 1), 1e-8, 1e6)

        alpha = disp(mu)
        for _ in range(_NB_ITER):
            denom = 1.0 + alpha[:, None] * mu
            score = ((Y - mu) / denom).sum(1)
            info = (mu / denom).sum(1)
            beta = beta + score / info
            mu = sf[None, :] * jnp.exp(beta)[:, None]
            alpha = disp(mu)
        r = (Y - mu) / jnp.sqrt(mu * (1.0 + alpha[:, None] * mu))
        r = r - r.mean(1, keepdims=True)
        # unit scale (p-values are scale free; keeps the power sums in range)
        sd = jnp.sqrt((r**2).mean(1, keepdims=True))
        C = jnp.where(valid[:, None], r / jnp.where(valid[:, None], sd, 1.0), 0.0)
        return C, valid, alpha

    def normal_resid(Y, sf):
        m = Y.mean(1, keepdims=True)
        sd = Y.std(1, keepdims=True)
        valid = sd[:, 0] > 1e-12 * (1.0 + jnp.abs(m[:, 0]))
        C = jnp.where(valid[:, None], (Y - m) / jnp.where(valid[:, None], sd, 1.0), 0.0)
        return C, valid, jnp.zeros(Y.shape[0])

    resid = nb_resid if obs_dist == "negative_binomial" else normal_resid

    def full(Y, sf, U, lam, onehot):
        C, valid, alpha = resid(Y, sf)
        return quad(C, U, lam, onehot), psums(C), valid, alpha

    def only_resid(Y, sf):
        C, valid, _ = resid(Y, sf)
        return C, valid

    return jax.jit(full if with_stats else only_resid)


@cache
def _quad_stats():
    import jax

    def f(C, U, lam, onehot):
        B = C @ U
        return (B**2 * lam[None, :]) @ onehot

    return jax.jit(f)


def null_statistics(X, tested, *, n_null, rng, cs, dev, sfd, Ud, lamd, ohd, obs_dist, n_kernels, weights):
    """Cauchy statistics of ``n_null`` genes whose residuals were each permuted independently
    (genes drawn at random from the tested ones, with repeats when there are fewer)."""
    import jax
    import jax.numpy as jnp

    from ._common import dense_chunk
    from ._gp_fit import _bucket
    from ._perm import pearson3_logp, permutation_moments, power_sums
    from ._stats import cauchy_combine_log

    reps = int(np.ceil(n_null / tested.size))
    pool = np.concatenate([rng.permutation(tested) for _ in range(reps)])[:n_null]
    genes, inverse = np.unique(pool, return_inverse=True)
    resid = _core(obs_dist, n_kernels, with_stats=False)
    quad = _quad_stats()
    n = sfd.shape[0]
    out = np.empty(pool.size)
    order = np.argsort(inverse, kind="stable")
    for s in range(0, pool.size, cs):
        idx = order[s : s + cs]
        uniq, pos = np.unique(inverse[idx], return_inverse=True)
        Y = dense_chunk(X, genes[uniq]).T
        g = Y.shape[0]
        gp = min(_bucket(g), cs) if g < cs else g
        if gp != g:
            Y = np.concatenate([Y, np.zeros((gp - g, n))], axis=0)
        C, _ = resid(jax.device_put(jnp.asarray(Y), dev), sfd)
        C = rng.permuted(np.asarray(C)[:g][pos], axis=1)
        Q = np.asarray(quad(jax.device_put(jnp.asarray(C), dev), Ud, lamd, ohd))
        mean, var, skew = permutation_moments(power_sums(C), n, weights)
        out[idx] = cauchy_combine_log(pearson3_logp(Q, mean, var, skew), truncate=True)[0]
    return out[~np.isnan(out)]  # T = inf (per-kernel p-values far below 1e-300) is a valid, extreme statistic


#: null statistics beyond which the calibrated p-value follows the Cauchy tail
MIN_TAIL = 50


def calibrated_logp(T: np.ndarray, logT: np.ndarray, null_T: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """log p-values of (truncated) Cauchy statistics against a sample of ``N`` null statistics.

    ``p = (#{null > T} + U (1 + #{null = T})) / (1 + N)`` with ``U`` uniform (ties, mostly the
    atom at ``T = 0`` where every kernel has p > 1/2, are broken at random so that p-values are
    uniform there too) up to the ``MIN_TAIL``-th largest null statistic ``t*``; beyond it the
    Cauchy tail scaled to match there, ``p = p(t*) · p_C(T) / p_C(t*)`` with ``p_C`` the Cauchy
    combination p-value (``≈ 1 / (π T)``), so that the strongest genes keep distinct p-values.
    The Cauchy combination of dependent p-values is only approximately valid at moderate levels;
    this mapping makes it exact under the permutation null, up to the sampling error of the null.
    """
    from ._stats import cauchy_pvalue

    null = np.sort(null_T)
    N = null.size
    out = np.full(T.shape, np.nan)
    ok = ~np.isnan(T)  # T = inf: far into the tail, where log T (finite) takes over
    k = min(MIN_TAIL, N)
    t_star = null[N - k]
    Tk = T[ok]
    greater = N - np.searchsorted(null, Tk, side="right")
    ties = np.searchsorted(null, Tk, side="right") - np.searchsorted(null, Tk, side="left")
    lp = np.log((greater + rng.uniform(size=Tk.size) * (1.0 + ties)) / (1.0 + N))

    def log_pc(t, lt):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(t > 1e12, -lt - np.log(np.pi), np.log(cauchy_pvalue(t)))

    far = Tk > t_star
    if far.any() and t_star > 0:
        base = np.log(k / (1.0 + N)) - log_pc(np.array(t_star), np.log(t_star))
        lp[far] = np.minimum(lp[far], base + log_pc(Tk[far], logT[ok][far]))
    out[ok] = lp
    return np.minimum(out, 0.0)
