"""Weighted Gaussian mixtures fitted by EM in JAX, with a static maximum number of components.

Every fit has ``k_max`` component slots; ``active`` (bool, ``(k_max,)``) switches slots on, so
mixtures with different numbers of components share one compiled kernel and can be ``vmap``-ed
over genes (or over initialisations and candidate component counts for the background).
Points carry non-negative weights; padded points have weight 0 and do not influence the fit.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

_NEG = -1e30
#: XLA's CPU backend spends most of its compile time optimising these small linear-algebra loops
#: (~5x longer compiles for no faster runs); level 0 keeps compiles short. Ignored on GPU.
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _log_gauss(x, mu, chol):
    """log N(x | mu_k, L_k L_k^T) for points ``(m, d)`` and components ``(k, d)``, ``(k, d, d)``."""
    d = x.shape[-1]
    eye = jnp.eye(d, dtype=x.dtype)
    linv = jax.vmap(lambda L: jax.scipy.linalg.solve_triangular(L, eye, lower=True))(chol)  # (k, d, d)
    # z_mk = L_k^{-1} (x_m - mu_k) = L_k^{-1} x_m - L_k^{-1} mu_k
    z = jnp.einsum("md,ked->mke", x, linv) - jnp.einsum("kd,ked->ke", mu, linv)[None]
    maha = jnp.sum(z * z, axis=-1)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)  # (k,)
    return -0.5 * (maha + logdet[None, :] + d * jnp.log(2.0 * jnp.pi))


def mixture_logpdf(x, pi, mu, chol, active):
    """log of the mixture density at ``x`` (``(m,)``) and the per-component log densities."""
    comp = _log_gauss(x, mu, chol)
    logpi = jnp.where(active & (pi > 0), jnp.log(jnp.maximum(pi, 1e-38)), _NEG)
    return jax.scipy.special.logsumexp(comp + logpi[None, :], axis=1), comp


def _kmeanspp(key, x, w, active):
    """Weighted k-means++ seeding (one candidate per step); inactive slots get any centre."""
    _m, _ = x.shape
    k_max = active.shape[0]
    logw = jnp.where(w > 0, jnp.log(jnp.maximum(w, 1e-38)), _NEG)
    keys = jax.random.split(key, k_max)
    first = jax.random.categorical(keys[0], logw)
    c0 = x[first]
    d2 = jnp.sum((x - c0) ** 2, axis=1)
    centers = jnp.zeros((k_max, x.shape[1]), x.dtype).at[0].set(c0)

    def body(i, carry):
        centers, d2 = carry
        logits = jnp.where(w > 0, logw + jnp.log(jnp.maximum(d2, 1e-30)), _NEG)
        idx = jax.random.categorical(keys[i], logits)
        c = x[idx]
        centers = centers.at[i].set(c)
        d2 = jnp.minimum(d2, jnp.sum((x - c) ** 2, axis=1))
        return centers, d2

    centers, _ = jax.lax.fori_loop(1, k_max, body, (centers, d2))
    return centers


@partial(jax.jit, static_argnames=("max_iter",))
def fit_gmm(key, x, w, active, reg_covar, *, max_iter=200, tol=1e-5):
    """Fit one weighted GMM.

    Parameters
    ----------
    key : PRNG key for the k-means++ initialisation.
    x : ``(m, d)`` points; w : ``(m,)`` non-negative weights (need not be normalised).
    active : ``(k_max,)`` bool, which component slots are used.
    reg_covar : added to every covariance diagonal.

    Returns
    -------
    ``(pi, mu, chol, mean_loglik)`` where ``mean_loglik`` is the weighted mean log density.
    """
    _m, d = x.shape
    k_max = active.shape[0]
    wsum = jnp.sum(w)
    wn = w / jnp.where(wsum > 0, wsum, 1.0)
    eye = jnp.eye(d, dtype=x.dtype)
    mu0 = _kmeanspp(key, x, wn, active)
    n_active = jnp.maximum(jnp.sum(active), 1)
    pi0 = jnp.where(active, 1.0 / n_active, 0.0).astype(x.dtype)
    chol0 = jnp.broadcast_to(eye, (k_max, d, d))

    def step(state):
        i, pi, mu, chol, ll_old, _ = state
        logp, comp = mixture_logpdf(x, pi, mu, chol, active)
        logpi = jnp.where(active & (pi > 0), jnp.log(jnp.maximum(pi, 1e-38)), _NEG)
        resp = jnp.exp(comp + logpi[None, :] - logp[:, None])  # (m, k)
        ll = jnp.sum(wn * logp)
        r = resp * wn[:, None]
        nk = jnp.sum(r, axis=0)  # (k,)
        nk_safe = jnp.where(nk > 1e-12, nk, 1.0)
        mu_new = (r.T @ x) / nk_safe[:, None]
        diff = x[:, None, :] - mu_new[None, :, :]
        cov = jnp.einsum("mk,mki,mkj->kij", r, diff, diff) / nk_safe[:, None, None]
        cov = cov + reg_covar * eye[None]
        ok = (nk > 1e-12) & active
        cov = jnp.where(ok[:, None, None], cov, eye[None])
        mu_new = jnp.where(ok[:, None], mu_new, mu)
        chol_new = jnp.linalg.cholesky(cov)
        # a numerically failed Cholesky (NaN) falls back to the previous factor
        bad = ~jnp.all(jnp.isfinite(chol_new), axis=(1, 2))
        chol_new = jnp.where(bad[:, None, None], chol, chol_new)
        pi_new = jnp.where(ok, nk, 0.0)
        pi_new = pi_new / jnp.maximum(jnp.sum(pi_new), 1e-38)
        delta = jnp.abs(ll - ll_old)
        return i + 1, pi_new, mu_new, chol_new, ll, delta

    def cond(state):
        i, *_, delta = state
        return (i < max_iter) & (delta > tol)

    init = (0, pi0, mu0, chol0, jnp.asarray(-jnp.inf, x.dtype), jnp.asarray(jnp.inf, x.dtype))
    _, pi, mu, chol, _, _ = jax.lax.while_loop(cond, step, init)
    logp, _ = mixture_logpdf(x, pi, mu, chol, active)
    ll = jnp.sum(wn * logp)
    return pi, mu, chol, ll


def fit_gmm_batch(keys, x, w, active, reg_covar, *, max_iter=200, tol=1e-5):
    """``fit_gmm`` vmapped over a leading batch axis of ``keys``, ``x``, ``w`` and ``active``."""
    return _get_fit_batch()(keys, x, w, active, reg_covar, max_iter=max_iter, tol=tol)


def _fit_batch_impl(keys, x, w, active, reg_covar, *, max_iter=200, tol=1e-5):
    f = partial(fit_gmm, max_iter=max_iter, tol=tol)
    return jax.vmap(f, in_axes=(0, 0, 0, 0, None))(keys, x, w, active, reg_covar)


def jit_for(fun, static_argnames=()):
    """``jax.jit`` with short CPU compiles (see :data:`CPU_COMPILER_OPTIONS`)."""
    opts = CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(fun, static_argnames=static_argnames, compiler_options=opts)


_fit_batch = None


def _get_fit_batch():
    global _fit_batch
    if _fit_batch is None:
        _fit_batch = jit_for(_fit_batch_impl, static_argnames=("max_iter",))
    return _fit_batch


@jax.jit
def batch_logpdf(x, pi, mu, chol, active):
    """Mixture log densities of shared points ``x`` ``(n, d)`` under a batch of mixtures."""
    return jax.vmap(lambda p, m_, c, a: mixture_logpdf(x, p, m_, c, a)[0])(pi, mu, chol, active)
