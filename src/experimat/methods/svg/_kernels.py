"""Spatial covariance kernels, their eigendecompositions and a small factorisation cache."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

#: factorisations kept between calls when ``use_cache=True`` (key: coordinates + kernel)
_CACHE: OrderedDict[str, tuple[np.ndarray, ...]] = OrderedDict()
_CACHE_MAX_BYTES = 1_500_000_000


def clear_cache() -> None:
    """Forget all cached kernel factorisations."""
    _CACHE.clear()


def _cache_key(X: np.ndarray, *parts: object) -> str:
    h = hashlib.sha1(np.ascontiguousarray(X, dtype=np.float64).tobytes())
    h.update(repr(parts).encode())
    return h.hexdigest()


def _cache_put(key: str, value: tuple[np.ndarray, ...]) -> None:
    _CACHE[key] = value
    _CACHE.move_to_end(key)
    total = sum(a.nbytes for v in _CACHE.values() for a in v)
    while total > _CACHE_MAX_BYTES and len(_CACHE) > 1:
        _, old = _CACHE.popitem(last=False)
        total -= sum(a.nbytes for a in old)


def sq_dists(X: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (clipped at 0), as SpatialDE computes them."""
    X = np.asarray(X, dtype=np.float64)
    xsq = np.sum(X**2, 1)
    r2 = -2.0 * X @ X.T + (xsq[:, None] + xsq[None, :])
    return np.clip(r2, 0.0, np.inf)


def l_limits(X: np.ndarray) -> tuple[float, float]:
    """SpatialDE's lengthscale range: half the smallest and twice the largest spot distance."""
    r2 = sq_dists(X)
    r2 = r2[r2 > 1e-8]
    return float(np.sqrt(r2.min()) / 2.0), float(np.sqrt(r2.max()) * 2.0)


def se_kernel(X: np.ndarray, lengthscale: float) -> np.ndarray:
    """Squared-exponential kernel ``exp(-d² / (2 l²))``."""
    return np.exp(-np.clip(sq_dists(X), 1e-12, np.inf) / (2.0 * lengthscale**2))


def linear_kernel(X: np.ndarray) -> np.ndarray:
    """SpatialDE's linear kernel ``X Xᵀ / max``."""
    X = np.asarray(X, dtype=np.float64)
    K = X @ X.T
    return K / K.max()


def cosine_kernel(X: np.ndarray, period: float) -> np.ndarray:
    """SpatialDE's periodic ("PER") kernel ``cos(2π d / p)`` (not positive definite in 2-D;
    negative eigenvalues are clipped at 0 by :func:`factor`, as SpatialDE does)."""
    return np.cos(2.0 * np.pi * np.sqrt(np.clip(sq_dists(X), 1e-12, np.inf)) / period)


def gower_factor(K: np.ndarray) -> float:
    """Gower scaling factor ``tr(P K P) / (n - 1)`` with ``P`` the centring matrix."""
    n = K.shape[0]
    return float((np.trace(K) - K.sum() / n) / (n - 1))


def factor(K: np.ndarray, *, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition ``K = U diag(S) Uᵀ`` (float64); negative eigenvalues clipped at 0.

    On CPU LAPACK's divide-and-conquer ``syevd`` (SciPy) is used, which is much faster than XLA's
    CPU eigensolver; on a GPU, JAX's.
    """
    if device == "cpu":
        from scipy import linalg

        # small problems: one BLAS thread (multi-threaded LAPACK is slower there, and much
        # slower on a busy machine)
        with _blas_threads(1 if K.shape[0] <= 2000 else None):
            S, U = linalg.eigh(np.asarray(K, dtype=np.float64), driver="evd", check_finite=False)
    else:
        import jax
        import jax.numpy as jnp

        with jax.enable_x64(True):
            Kd = jax.device_put(jnp.asarray(K, dtype=jnp.float64), jax.devices(device)[0])
            S, U = jnp.linalg.eigh(Kd)
            S, U = np.asarray(S), np.asarray(U)
    return U, np.clip(S, 0.0, None)


@contextmanager
def _blas_threads(n: int | None):
    """Limit BLAS threads inside the block when threadpoolctl is installed (else a no-op)."""
    if n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


def kernel_matrix(X: np.ndarray, model: str, param: float | None) -> np.ndarray:
    if model == "SE":
        return se_kernel(X, float(param))
    if model == "PER":
        return cosine_kernel(X, float(param))
    if model == "linear":
        return linear_kernel(X)
    raise ValueError(model)


def cached_factor(
    X: np.ndarray, model: str, param: float | None, *, use_cache: bool, device: str
) -> tuple[np.ndarray, np.ndarray, float]:
    """(U, S, Gower factor) of one SpatialDE kernel, from the cache when allowed."""
    key = _cache_key(X, "full", model, param)
    if use_cache and key in _CACHE:
        _CACHE.move_to_end(key)
        U, S, gower = _CACHE[key]
        return U, S, float(gower)
    K = kernel_matrix(X, model, param)
    U, S = factor(K, device=device)
    gower = gower_factor(K)
    if use_cache:
        _cache_put(key, (U, S, np.asarray(gower)))
    return U, S, gower


# ---------------------------------------------------------------- low-rank kernels (score test)


def lowrank_factor(
    X: np.ndarray,
    model: str,
    param: float | None,
    *,
    use_cache: bool,
    device: str,
    tol: float = 1e-3,
    max_exact: int = 2000,
    n_landmarks: int = 1000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal ``U`` (n × R) and eigenvalues ``λ`` (R) with ``K ≈ U diag(λ) Uᵀ``.

    ``SE``: exact eigendecomposition up to ``max_exact`` spots (Nyström with ``n_landmarks``
    landmarks above), keeping eigenvalues ≥ ``tol`` × the largest. ``PER``: the positive
    definite periodic kernel ``Σ_axes cos(2π Δ_axis / p)`` (rank 2 per axis). ``linear``: centred
    coordinates (rank = number of axes).
    """
    key = _cache_key(X, "lowrank", model, param, tol, max_exact, n_landmarks, seed)
    if use_cache and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    if model == "SE":
        if n <= max_exact:
            U, S = factor(se_kernel(X, float(param)), device=device)
        else:
            rng = np.random.default_rng(seed)
            idx = np.sort(rng.choice(n, size=n_landmarks, replace=False))
            Kmm = se_kernel(X[idx], float(param))
            Um, Sm = factor(Kmm, device=device)
            keep = Sm > tol * Sm.max()
            Um, Sm = Um[:, keep], Sm[keep]
            xsq = np.sum(X**2, 1)
            zsq = xsq[idx]
            r2 = np.clip(-2.0 * X @ X[idx].T + xsq[:, None] + zsq[None, :], 0, None)
            Knm = np.exp(-r2 / (2.0 * float(param) ** 2))
            Phi = Knm @ (Um / np.sqrt(Sm))  # K ≈ Φ Φᵀ
            # orthonormalise through the small Gram matrix ΦᵀΦ = V diag(S) Vᵀ: U = Φ V S^{-1/2}
            V, S = factor(Phi.T @ Phi, device=device)
            ok = S > 1e-12 * S.max()
            U = (Phi @ V[:, ok]) / np.sqrt(S[ok])
            S = S[ok]
        keep = S >= tol * S.max()
        U, S = U[:, keep], S[keep]
    elif model == "PER":
        feats = []
        for a in range(X.shape[1]):
            ang = 2.0 * np.pi * X[:, a] / float(param)
            feats += [np.cos(ang), np.sin(ang)]
        U, S = _orthonormal(np.column_stack(feats))
    elif model == "linear":
        Xc = X - X.mean(0)
        U, S = _orthonormal(Xc / np.abs(Xc).max())
    else:
        raise ValueError(model)
    U = np.ascontiguousarray(U)
    if use_cache:
        _cache_put(key, (U, S))
    return U, S


def _orthonormal(Phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    U, sv, _ = np.linalg.svd(Phi, full_matrices=False)
    keep = sv > 1e-10 * sv.max()
    return U[:, keep], sv[keep] ** 2
