"""Expression building blocks every family shares: library-size normalisation, highly variable genes and
PCA, on matrices (observations x genes, dense or sparse).

scanpy's PCA is used (exact parity with a reference tool is not the point there); :func:`pca` never
densifies a sparse matrix: scanpy's sparse PCA centres implicitly (ARPACK on the centred operator). :func:`hvg_seurat_v3` is Seurat v3's
variance-stabilised selection written out (scanpy's ``flavor='seurat_v3'`` needs scikit-misc's loess,
which experimat does not depend on).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from experimat._errors import InvalidInputError


def normalize_total(
    X: Any, *, target_sum: float | None = 1e4, log1p: bool = True, totals: np.ndarray | None = None
) -> tuple[Any, float]:
    """Scale each row to ``target_sum`` counts (``None``: the median of the non-zero row totals, as
    scanpy's ``pp.normalize_total``), then ``log(1 + x)`` when ``log1p``; returns ``(float32 matrix of
    the input's kind, target used)``. Rows without counts stay zero. ``totals``: each row's library
    size when it is not the row sum of ``X`` (``X`` a subset of the genes).

    Written out rather than calling scanpy: scanpy 1.11's numba kernels cost a JIT compilation in every
    new (worker) process and were 4x slower per call on a 3000 x 3000 sparse matrix.
    """
    import scipy.sparse as sp

    X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
    total = np.asarray(X.sum(1) if totals is None else totals, dtype=np.float64).ravel()
    if target_sum is None:
        pos = total[total > 0]
        target = float(np.median(pos)) if pos.size else 1.0
    else:
        target = float(target_sum)
    scale = np.divide(target, total, out=np.zeros_like(total, dtype=np.float64), where=total > 0).astype(np.float32)
    if sp.issparse(X):
        out = sp.csr_matrix(sp.diags(scale) @ X, dtype=np.float32)
        if log1p:
            out.data = np.log1p(out.data)
    else:
        out = X * scale[:, None]
        if log1p:
            out = np.log1p(out)
    return out, target


def top_variance_genes(X: Any, n_top_genes: int | None) -> np.ndarray:
    """Sorted indices of the ``n_top_genes`` columns of largest variance (``None`` or more than there
    are: all columns); sparse matrices are not densified."""
    import scipy.sparse as sp

    n_genes = X.shape[1]
    if n_top_genes is None or n_top_genes >= n_genes:
        return np.arange(n_genes)
    if sp.issparse(X):
        mean = np.asarray(X.mean(0)).ravel()
        var = np.asarray(X.multiply(X).mean(0)).ravel() - mean**2
    else:
        var = np.asarray(X).var(0)
    return np.sort(np.argsort(-var)[:n_top_genes])


def pca(X: Any, n_comps: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of the column-centred ``X``: ``(scores float32 (n, n_comps), variance ratio)``.

    ``n_comps`` is capped at ``min(X.shape) - 1``. Sparse input is centred implicitly (scanpy's sparse
    PCA, ARPACK); dense input uses the randomised solver above 500 rows and columns, else the full SVD.
    Signs follow scikit-learn's ``svd_flip`` (deterministic for a given input and seed).
    """
    import scanpy as sc
    import scipy.sparse as sp

    n_comps = min(int(n_comps), min(X.shape) - 1)
    if n_comps < 1:
        raise InvalidInputError(f"PCA needs at least 2 observations and 2 genes; got {X.shape}.")
    if sp.issparse(X):
        solver = "arpack"
        X = sp.csr_matrix(X)
    else:
        X = np.asarray(X)
        solver = "randomized" if min(X.shape) > 500 else "full"
    scores, _, ratio, _ = sc.pp.pca(X, n_comps=n_comps, zero_center=True, svd_solver=solver, random_state=seed,
                                    return_info=True)
    return np.asarray(scores, dtype=np.float32), np.asarray(ratio, dtype=np.float64)


def hvg_seurat_v3(X: Any, n_top_genes: int, *, span: float = 0.3) -> np.ndarray:
    """Indices of the ``n_top_genes`` most variable genes of raw counts ``X`` (cells x genes).

    Variance-stabilised selection in the manner of Seurat v3 (Stuart et al. 2019), without scikit-misc:
    ``log10(variance)`` is regressed on ``log10(mean)`` by a local quadratic fit with tricube weights
    (``span`` of the genes, evaluated on a grid and interpolated), the counts are standardised by the
    fitted standard deviation and clipped at ``sqrt(n_cells)``, and genes are ranked by the variance of
    the standardised values. Genes with zero variance are never selected.
    """
    import scipy.sparse as sp

    X = sp.csr_matrix(X, dtype=np.float32)
    n, g = X.shape
    mean = np.asarray(X.mean(0)).ravel().astype(np.float64)
    sq = np.asarray(X.multiply(X).mean(0)).ravel().astype(np.float64)
    var = (sq - mean**2) * n / max(n - 1, 1)
    ok = var > 0
    if n_top_genes >= int(ok.sum()):
        return np.flatnonzero(ok)
    lm, lv = np.log10(mean[ok]), np.log10(var[ok])
    grid = np.quantile(lm, np.linspace(0, 1, 101))
    k = max(int(np.ceil(span * lm.size)), 3)
    fit_grid = np.empty_like(grid)
    for i, x0 in enumerate(grid):
        d = np.abs(lm - x0)
        idx = np.argpartition(d, k - 1)[:k]
        h = max(d[idx].max(), 1e-12)
        w = (1 - (d[idx] / h) ** 3) ** 3
        A = np.vstack([np.ones(k), lm[idx] - x0, (lm[idx] - x0) ** 2]).T * np.sqrt(w)[:, None]
        coef = np.linalg.lstsq(A, lv[idx] * np.sqrt(w), rcond=None)[0]
        fit_grid[i] = coef[0]
    grid_u, first = np.unique(grid, return_index=True)
    expected_sd = np.zeros(g)
    expected_sd[ok] = np.sqrt(10 ** np.interp(lm, grid_u, fit_grid[first]))
    clip = np.sqrt(n)
    # variance of clip((x - mean) / sd, max=sqrt(n)), computed on the sparse matrix
    Xc = X.tocsc()
    stdvar = np.zeros(g)
    for j in np.flatnonzero(ok):
        vals = Xc.data[Xc.indptr[j] : Xc.indptr[j + 1]].astype(np.float64)
        sd = expected_sd[j]
        zs = np.minimum((vals - mean[j]) / sd, clip)
        zero = min(-mean[j] / sd, clip)
        n_zero = n - vals.size
        s1 = zs.sum() + n_zero * zero
        s2 = (zs**2).sum() + n_zero * zero**2
        stdvar[j] = (s2 - s1**2 / n) / max(n - 1, 1)
    stdvar[~ok] = -np.inf
    top = np.argsort(-stdvar, kind="stable")[:n_top_genes]
    return np.sort(top)


def _block_stats(X: Any, bounds: np.ndarray, scale: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-block gene means ``(B, G)`` and inverse standard deviations (1 without ``scale``; 0 for
    genes constant within a block)."""
    import scipy.sparse as sp

    means, inv_sd = [], []
    for lo, hi in itertools.pairwise(bounds):
        block = X[lo:hi]
        mean = np.asarray(block.mean(0), dtype=np.float64).ravel()
        means.append(mean)
        if scale:
            sq = block.multiply(block).mean(0) if sp.issparse(block) else np.square(block, dtype=np.float64).mean(0)
            sd = np.sqrt(np.maximum(np.asarray(sq, dtype=np.float64).ravel() - mean**2, 0.0))
            inv_sd.append(np.divide(1.0, sd, out=np.zeros_like(sd), where=sd > 1e-12))
        else:
            inv_sd.append(np.ones_like(mean))
    return np.vstack(means), np.vstack(inv_sd)


def block_pca(
    X: Any,
    n_comps: int,
    *,
    blocks: Sequence[int] | np.ndarray | None = None,
    scale: bool = False,
    seed: int = 0,
    exact_max: int = 1000,
    n_iter: int = 6,
    fit_max: int | None = None,
) -> np.ndarray:
    """PCA scores (float32, ``n x n_comps``) of ``X`` with each gene centred (and, with ``scale``,
    divided by its standard deviation) within each block of rows ``blocks[i]:blocks[i+1]``.

    Centring within blocks (per section or sample) removes additive section effects before one joint
    PCA; one block is ordinary centred PCA. Sparse ``X`` is never densified: the centred, scaled matrix
    is only applied to thin matrices (``X_b (S_b Q) - 1 (mu_b S_b Q)``), so memory is the input plus
    ``(n + G) x (n_comps + 20)``. Exact (the eigendecomposition of the ``G x G`` covariance, formed
    sparsely) when the genes are at most ``exact_max``; otherwise the randomised SVD of Halko, Martinsson & Tropp (SIAM Rev. 53:217, 2011) with
    ``n_iter`` power iterations, seeded. No ``n x n`` matrix is formed. Signs: the largest loading of
    each component is positive.

    ``fit_max``: with more rows than this, the components are fitted on a seeded uniform sample of
    ``fit_max`` rows and every row is projected on them (:func:`sketch_block_pca`).
    """
    import scipy.sparse as sp

    n, g = X.shape
    n_comps = int(min(n_comps, n - 1, g))
    if n_comps < 1:
        raise InvalidInputError(f"PCA needs at least 2 observations and 1 gene; got {X.shape}.")
    if fit_max is not None and n > fit_max:
        return sketch_block_pca(X, n_comps, fit_max=fit_max, blocks=blocks, scale=scale, seed=seed,
                                exact_max=exact_max, n_iter=n_iter)
    X = sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    bounds = np.asarray([0, n] if blocks is None else blocks, dtype=np.int64)
    mu, s = _block_stats(X, bounds, scale)
    right, _ = _operators(X, bounds, mu, s)
    if g <= exact_max:
        cov = np.zeros((g, g))
        for b, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            gram = X[lo:hi].T @ X[lo:hi]
            gram = gram.toarray() if sp.issparse(gram) else np.asarray(gram)
            cov += s[b][:, None] * (gram - (hi - lo) * np.outer(mu[b], mu[b])) * s[b][None, :]
        _, vecs = np.linalg.eigh(cov)
        comps = vecs[:, ::-1][:, :n_comps]
    else:
        comps = _randomised_axes(X, bounds, mu, s, n_comps, seed, n_iter)
    top = np.abs(comps).argmax(0)
    signs = np.sign(comps[top, np.arange(comps.shape[1])])
    comps = comps * np.where(signs == 0, 1.0, signs)
    return right(comps).astype(np.float32)


#: rows converted to float64 at once by :func:`sketch_block_pca` (memory ~ this x the row's entries)
_SKETCH_CHUNK = 50_000


def _chunks(lo: int, hi: int) -> list[tuple[int, int]]:
    return [(a, min(a + _SKETCH_CHUNK, hi)) for a in range(lo, hi, _SKETCH_CHUNK)]


def _as64(X: Any) -> Any:
    import scipy.sparse as sp

    return sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.asarray(X, dtype=np.float64)


def _chunked_block_stats(X: Any, bounds: np.ndarray, scale: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_block_stats` accumulated over chunks of rows (float64 sums; ``X`` never copied whole)."""
    import scipy.sparse as sp

    means, inv_sd = [], []
    for lo, hi in itertools.pairwise(bounds):
        total, sq = np.zeros(X.shape[1]), np.zeros(X.shape[1])
        for a, b in _chunks(lo, hi):
            part = _as64(X[a:b])
            total += np.asarray(part.sum(0)).ravel()
            sq += np.asarray(part.multiply(part).sum(0) if sp.issparse(part) else np.square(part).sum(0)).ravel()
        mean = total / max(hi - lo, 1)
        means.append(mean)
        if scale:
            sd = np.sqrt(np.maximum(sq / max(hi - lo, 1) - mean**2, 0.0))
            inv_sd.append(np.divide(1.0, sd, out=np.zeros_like(sd), where=sd > 1e-12))
        else:
            inv_sd.append(np.ones_like(mean))
    return np.vstack(means), np.vstack(inv_sd)


def sketch_block_pca(
    X: Any,
    n_comps: int,
    *,
    fit_max: int,
    blocks: Sequence[int] | np.ndarray | None = None,
    scale: bool = False,
    seed: int = 0,
    exact_max: int = 1000,
    n_iter: int = 6,
) -> np.ndarray:
    """:func:`block_pca` with the components fitted on a sample of rows and applied to all of them.

    The gene means (and standard deviations, with ``scale``) of each block are those of all its rows
    (one pass over chunks of rows); the components are the principal axes of a seeded uniform sample
    of ``fit_max`` rows, centred and scaled by them (exact eigendecomposition of the ``G x G``
    covariance up to ``exact_max`` genes, else the randomised SVD of Halko, Martinsson & Tropp 2011 on
    the sample, as :func:`block_pca`); every row's scores are its centred, scaled values times the
    components, computed by chunks of rows. This is the sketch-then-project PCA of atlas-scale
    single-cell analysis (Seurat v5's sketching, Hao et al., Nat. Biotechnol. 42:293, 2024): the
    leading axes of a 500,000 x 3,000 matrix are estimated from 50,000 rows with an error of the
    order of ``1/sqrt(fit_max)`` of the spectral gaps, at a tenth of the passes' cost, and the
    input is never copied whole. Same signs rule as :func:`block_pca`.
    """
    n, g = X.shape
    n_comps = int(min(n_comps, n - 1, g))
    bounds = np.asarray([0, n] if blocks is None else blocks, dtype=np.int64)
    mu, s = _chunked_block_stats(X, bounds, scale)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(int(fit_max), n), replace=False))
    sample = _as64(X[rows])
    sample_bounds = np.searchsorted(rows, bounds)
    if g <= exact_max:
        cov = np.zeros((g, g))
        for b, (lo, hi) in enumerate(itertools.pairwise(sample_bounds)):
            part = sample[lo:hi]
            gram = part.T @ part
            gram = gram.toarray() if hasattr(gram, "toarray") else np.asarray(gram)
            col = np.asarray(part.sum(0)).ravel()
            cross = np.outer(mu[b], col)
            centred = gram - cross - cross.T + (hi - lo) * np.outer(mu[b], mu[b])
            cov += s[b][:, None] * centred * s[b][None, :]
        comps = np.linalg.eigh(cov)[1][:, ::-1][:, :n_comps]
    else:
        comps = _randomised_axes(sample, sample_bounds, mu, s, n_comps, seed, n_iter)
    top = np.abs(comps).argmax(0)
    signs = np.sign(comps[top, np.arange(comps.shape[1])])
    comps = comps * np.where(signs == 0, 1.0, signs)
    out = np.empty((n, n_comps), dtype=np.float32)
    for b, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        sq = s[b][:, None] * comps
        shift = mu[b] @ sq
        for a, c in _chunks(lo, hi):
            out[a:c] = np.asarray(_as64(X[a:c]) @ sq) - shift[None, :]
    return out


def _operators(X: Any, bounds: np.ndarray, mu: np.ndarray, s: np.ndarray):
    """``(right, left)``: the products ``Xc @ Q`` and ``Xc.T @ P`` of ``X`` centred by ``mu`` and scaled by
    ``s`` within the blocks of rows ``bounds``, without forming ``Xc`` (sparse stays sparse)."""
    n, g = X.shape

    def right(Q: np.ndarray) -> np.ndarray:  # centred/scaled X @ Q
        out = np.empty((n, Q.shape[1]))
        for b, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            sq = s[b][:, None] * Q
            out[lo:hi] = X[lo:hi] @ sq - (mu[b] @ sq)[None, :]
        return out

    def left(P: np.ndarray) -> np.ndarray:  # (centred/scaled X).T @ P
        out = np.zeros((g, P.shape[1]))
        for b, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            Pb = P[lo:hi]
            out += s[b][:, None] * (np.asarray(X[lo:hi].T @ Pb) - np.outer(mu[b], Pb.sum(0)))
        return out

    return right, left


def _randomised_axes(X, bounds, mu, s, n_comps, seed, n_iter) -> np.ndarray:
    """The ``n_comps`` leading right singular vectors of ``X`` centred by ``mu`` and scaled by ``s`` within
    the blocks of rows ``bounds`` (randomised SVD, ``n_iter`` power iterations, one BLAS thread)."""
    from threadpoolctl import threadpool_limits

    g = X.shape[1]
    right, left = _operators(X, bounds, mu, s)
    rng = np.random.default_rng(seed)
    # thin QRs: one BLAS thread (a thread pool is many times slower for these on a busy machine)
    with threadpool_limits(1, user_api="blas"):
        Q = np.linalg.qr(right(rng.standard_normal((g, min(n_comps + 20, g)))))[0]
        for _ in range(n_iter):
            Q = np.linalg.qr(right(np.linalg.qr(left(Q))[0]))[0]
        _, _, vt = np.linalg.svd(left(Q).T, full_matrices=False)
    return vt[:n_comps].T
