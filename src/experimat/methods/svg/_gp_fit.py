"""Maximum-likelihood fits of the SpatialDE Gaussian-process model (Svensson, Teichmann & Stegle, Nature Methods 2018).

For each kernel ``K = U diag(S) Uᵀ`` (one eigendecomposition), the log-likelihood of
``y ~ N(μ 1, s²_t (K + δ I))`` with ``μ`` and ``s²_t`` profiled out is a function of the noise
ratio ``δ`` alone and costs O(n) per gene once ``Uᵀ y`` is known. We maximise it over
``log δ ∈ [-10, 20]`` for all genes at once: a grid of 121 values (two matrix products per
kernel) refined by the parabola through the best grid point and its neighbours, in JAX.
"""

from __future__ import annotations

from functools import cache

import numpy as np

LOG_DELTA_BOUNDS = (-10.0, 20.0)
N_GRID = 121
_LOG2PI = float(np.log(2.0 * np.pi))


@cache
def _fitter(n: int, n_grid: int):
    import jax
    import jax.numpy as jnp

    grid = np.linspace(*LOG_DELTA_BOUNDS, n_grid)

    def ll_from(A, B, C, logdet):
        sum1 = A - B**2 / C
        return -0.5 * (n * _LOG2PI + n * jnp.log(sum1 / n) + logdet + n)

    def fit(Y, U, S):
        UTy = Y @ U  # (G, n)
        UT1 = U.sum(0)
        g = jnp.asarray(grid)
        d = jnp.exp(g)
        W = 1.0 / (S[None, :] + d[:, None])  # (D, n)
        Y2 = UTy**2
        Y1 = UTy * UT1[None, :]
        u2 = UT1**2
        # keep the products out of the dot fusion so that XLA calls its BLAS-backed matmul
        Y2, Y1, W = jax.lax.optimization_barrier((Y2, Y1, W))
        A = Y2 @ W.T
        B = Y1 @ W.T
        C = W @ u2
        logdet = jnp.log(S[None, :] + d[:, None]).sum(1)
        llg = ll_from(A, B, C[None, :], logdet[None, :])
        llg = jnp.where(jnp.isfinite(llg), llg, -jnp.inf)
        k = jnp.argmax(llg, axis=1)
        ll_grid = jnp.take_along_axis(llg, k[:, None], 1)[:, 0]

        # parabolic vertex through the best grid point and its two neighbours: with a grid step
        # of 0.25 in log δ its value is within ~1e-2 of the 1-D maximum of the log-likelihood
        km = jnp.clip(k - 1, 0, n_grid - 1)
        kp = jnp.clip(k + 1, 0, n_grid - 1)
        f0 = jnp.take_along_axis(llg, km[:, None], 1)[:, 0]
        f2 = jnp.take_along_axis(llg, kp[:, None], 1)[:, 0]
        h = float(grid[1] - grid[0])
        curv = f0 - 2.0 * ll_grid + f2
        interior = (k > 0) & (k < n_grid - 1) & jnp.isfinite(f0) & jnp.isfinite(f2) & (curv < 0)
        safe = jnp.where(interior, curv, -1.0)
        step = jnp.where(interior, 0.5 * (f0 - f2) / safe, 0.0)  # in grid steps, within [-1/2, 1/2]
        ll = jnp.where(interior, ll_grid - 0.125 * (f0 - f2) ** 2 / safe, ll_grid)
        x = g[k] + h * step
        return ll, x

    return jax.jit(fit)


def to_device(Y: np.ndarray, *, device: str = "cpu"):
    """Genes × spots float64 device array of ``Y`` (spots × genes), padded to a bucket size of
    genes so that few distinct shapes get compiled; returns ``(array, n_genes)``."""
    import jax
    import jax.numpy as jnp

    n, G = Y.shape
    Gp = _bucket(G)
    Yp = np.zeros((Gp, n))
    Yp[:G] = Y.T
    with jax.enable_x64(True):
        return jax.device_put(jnp.asarray(Yp), jax.devices(device)[0]), G


def fit_kernel(Yd, U: np.ndarray, S: np.ndarray, *, device: str = "cpu") -> dict[str, np.ndarray]:
    """Maximum-likelihood fits of all genes for one kernel ``K = U diag(S) Uᵀ``.

    ``Yd`` is ``(device array, n_genes)`` from :func:`to_device` (or a spots × genes ndarray).
    Returns ``max_ll`` and ``log_delta`` (the maximising log noise ratio) per gene.
    """
    import jax
    import jax.numpy as jnp

    if isinstance(Yd, np.ndarray):
        Yd = to_device(Yd, device=device)
    Ydev, G = Yd
    n = U.shape[0]
    with jax.enable_x64(True):
        dev = jax.devices(device)[0]
        Ud = jax.device_put(jnp.asarray(U, dtype=jnp.float64), dev)
        Sd = jax.device_put(jnp.asarray(S, dtype=jnp.float64), dev)
        ll, x = _fitter(n, N_GRID)(Ydev, Ud, Sd)
        return {"max_ll": np.asarray(ll)[:G], "log_delta": np.asarray(x)[:G]}


def _bucket(G: int) -> int:
    b = 64
    while b < G:
        b *= 2
    return b


def const_ll(Y: np.ndarray) -> np.ndarray:
    """SpatialDE's constant (no spatial covariance) model log-likelihood, with the variance
    estimated with ``ddof=1`` exactly as SpatialDE 1.x does."""
    n = Y.shape[0]
    var = Y.var(0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ss = ((Y - Y.mean(0)) ** 2).sum(0)
        return -0.5 * (n * np.log(var) + ss / var + n * _LOG2PI)


def anscombe_phi(mean: np.ndarray, var: np.ndarray) -> float:
    """NaiveDE's overdispersion ``φ`` from the least-squares fit ``var ≈ μ + φ μ²`` over genes."""
    ok = np.isfinite(mean) & np.isfinite(var)
    m, v = mean[ok], var[ok]
    return float(np.sum(m**2 * (v - m)) / np.sum(m**4))


def scan_kernels(get_chunk, chunks, xy, lengthscales, *, use_cache, device, show=False):
    """Best SE kernel per gene: ``max_ll``, ``log_delta``, lengthscale ``l`` and ``fsv``.

    ``get_chunk(i)`` returns the device array of gene chunk ``i`` (see :func:`to_device`).
    """
    from experimat._logging import progress as _progress

    from ._kernels import cached_factor

    G = chunks[-1].stop if chunks else 0
    out = {k: np.full(G, np.nan) for k in ("log_delta", "l", "fsv")}
    out["max_ll"] = np.full(G, -np.inf)
    for ls in _progress(lengthscales, description="SpatialDE kernels", disable=not show):
        U, S, gower = cached_factor(xy, "SE", ls, use_cache=use_cache, device=device)
        for i, c in enumerate(chunks):
            fit = fit_kernel(get_chunk(i), U, S, device=device)
            better = fit["max_ll"] > out["max_ll"][c]
            sl = np.arange(c.start, c.stop)[better]
            out["max_ll"][sl] = fit["max_ll"][better]
            out["log_delta"][sl] = fit["log_delta"][better]
            out["l"][sl] = ls
            out["fsv"][sl] = gower / (gower + np.exp(fit["log_delta"][better]))
    return out


#: genes whose best noise ratio sits at the upper bound have no spatial variance at all
_AT_BOUNDARY = LOG_DELTA_BOUNDS[1] - 1e-6
