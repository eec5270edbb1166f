"""The SpatialDE Gaussian-process test (Svensson, Teichmann & Stegle, Nature Methods 2018).

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


# ---------------------------------------------------------------------------------------------- public


def _prepare_expression(X, *, normalize: str, min_counts: int, layer: str | None):
    """Tested gene indices and a function mapping a gene chunk to model-ready expression.

    ``normalize="anscombe"``: NaiveDE's variance stabilisation ``log(y + 1 / (2 φ))`` followed by
    regressing out log total counts (limma's ``removeBatchEffect``, the intercept kept), as the
    SpatialDE README does. ``normalize="none"``: the values are used as they are.
    """
    from experimat._errors import InvalidInputError
    from experimat.methods._checks import check_counts

    from ._common import column_sums, dense_chunk, row_sums

    n = X.shape[0]
    s, sq = column_sums(X)
    if normalize == "none":
        idx = np.arange(X.shape[1])
        return idx, (lambda cols: dense_chunk(X, cols)), {}
    check_counts(X, layer=layer)
    idx = np.flatnonzero(s >= min_counts)
    if idx.size == 0:
        raise InvalidInputError(f"no gene has >= min_counts={min_counts} counts; lower min_counts.")
    total = row_sums(X[:, idx])
    if (total <= 0).any():
        raise InvalidInputError(
            f"{int((total <= 0).sum())} spots have no counts in the tested genes; remove empty spots first "
            "(e.g. sc.pp.filter_cells(adata, min_counts=1))."
        )
    mean = s[idx] / n
    var = (sq[idx] - n * mean**2) / (n - 1)
    phi = anscombe_phi(mean, var)
    offset = 1.0 / (2.0 * phi) if phi > 0 else 1.0
    lt = np.log(total)
    ltc = lt - lt.mean()
    denom = float(ltc @ ltc)

    def transform(cols):
        Z = np.log(dense_chunk(X, cols) + offset)
        if denom > 0:
            beta = (ltc @ Z) / denom
            Z = Z - lt[:, None] * beta[None, :]
        return Z

    return idx, transform, {"phi": phi, "offset": offset}


def spatial_svg_gp(
    adata,
    *,
    layer: str | None = "counts",
    spatial_key: str = "spatial",
    normalize: str = "anscombe",
    kernel_space: dict | None = None,
    min_counts: int = 3,
    model_search: bool = True,
    alpha: float = 0.05,
    n_svg: int | None = None,
    use_cache: bool = True,
    use_gpu: bool = True,
    progress: bool = True,
    key_added: str = "spatialde_gp",
):
    """The original SpatialDE Gaussian-process test for spatially variable genes.

    Svensson, Teichmann & Stegle (Nature Methods 2018). Counts are variance-stabilised
    (NaiveDE's Anscombe-type ``log(y + 1/(2φ))``) and log total counts regressed out, as in the
    SpatialDE README. Each gene is then fitted with a Gaussian process
    ``y ~ N(μ, s²(K_l + δ I))`` for squared-exponential kernels ``K_l`` over a log grid of 10
    lengthscales spanning the spot distances, the noise ratio ``δ`` maximised per gene (all genes
    at once in JAX, after one eigendecomposition per kernel). The best lengthscale is compared with
    the constant model by a likelihood-ratio χ²₁ test; q-values are Storey's as SpatialDE computes
    them. With ``model_search``, significant genes are also fitted with periodic and linear kernels
    and the model with the lowest BIC is reported (SpatialDE's ``model_search``).

    Parameters
    ----------
    adata
        AnnData with spots in ``obs`` and genes in ``var``.
    layer
        Layer holding raw counts (``None`` for ``adata.X``). With ``normalize="none"`` any
        already normalised values.
    spatial_key
        ``obsm`` key of the spot coordinates.
    normalize
        ``"anscombe"`` (counts; stabilise + regress out log total counts, as SpatialDE's README) or
        ``"none"`` (use the values as they are).
    kernel_space
        Kernels of the test, SpatialDE style: ``{"SE": [lengthscales]}``; default 10 lengthscales
        log-spaced between half the smallest and twice the largest spot distance. The null model is
        always SpatialDE's constant model.
    min_counts
        Genes with fewer total counts are not tested (their p-values are NaN); SpatialDE's pipeline
        uses 3. Ignored with ``normalize="none"``.
    model_search
        Classify significant genes (q < ``alpha``) as ``SE``, ``PER`` (periodic) or ``linear`` by BIC.
    alpha
        q-value threshold for ``.svg`` and the model search.
    n_svg
        Mark at most this many top-ranked significant genes in ``.svg`` (``None``: all).
    use_cache
        Keep kernel eigendecompositions for later calls on the same coordinates.
    use_gpu
        Use a GPU through JAX when one is visible; otherwise run on CPU.
    progress
        Show a progress bar over kernels.
    key_added
        Prefix of the result columns and the ``uns`` key.

    Returns
    -------
    DataFrame indexed by ``var_names`` with columns ``pval``, ``qval`` (Storey, as SpatialDE),
    ``padj`` (Benjamini–Hochberg), ``svg``, ``rank`` (1 = most significant), ``l`` (lengthscale
    of the best SE kernel), ``fsv`` (fraction of spatial variance), ``llr``, ``bic`` and ``model``.
    The same columns are written to ``adata.var`` as ``{key_added}.<column>`` and the parameters
    to ``adata.uns[key_added]['params']``.

    Examples
    --------
    >>> import experimat as em
    >>> from experimat.methods.svg import spatial_svg_gp
    >>> adata = em.datasets.synthetic_svg(400, 200, n_spatial=20)
    >>> res = spatial_svg_gp(adata, layer="counts", progress=False)
    >>> res.sort_values("rank").head()
    """
    import pandas as pd

    from experimat._logging import logger
    from experimat._logging import progress as _progress
    from experimat._settings import settings
    from experimat.methods._checks import check_choice, get_matrix, store_params

    from ._common import as_csc_or_dense, chunk_size_for, coordinates, gene_chunks, pick_device
    from ._kernels import cached_factor, l_limits
    from ._stats import bh_adjust, chi2_sf, storey_qvalue

    params = dict(
        layer=layer,
        spatial_key=spatial_key,
        normalize=normalize,
        kernel_space=kernel_space,
        min_counts=min_counts,
        model_search=model_search,
        alpha=alpha,
        n_svg=n_svg,
        method="spatialde",
    )
    check_choice("normalize", normalize, ("anscombe", "none"))
    xy = coordinates(adata, spatial_key)
    X = as_csc_or_dense(get_matrix(adata, layer))
    device = pick_device(use_gpu)
    start = logger.info(f"SpatialDE GP test on {X.shape[0]} spots x {X.shape[1]} genes ({device})")
    idx, transform, prep = _prepare_expression(X, normalize=normalize, min_counts=min_counts, layer=layer)
    n = xy.shape[0]
    l_min, l_max = l_limits(xy)
    if kernel_space is None:
        kernel_space = {"SE": np.logspace(np.log10(l_min), np.log10(l_max), 10)}
    unknown = set(kernel_space) - {"SE", "const"}
    if unknown:
        from experimat._errors import InvalidInputError

        raise InvalidInputError(f"kernel_space keys for the GP test must be 'SE' (and 'const'); got {sorted(unknown)}.")
    lengthscales = [float(v) for v in np.atleast_1d(kernel_space["SE"])]

    chunks = list(gene_chunks(idx.size, chunk_size_for(n)))
    cached = idx.size * n <= 50_000_000
    const = np.empty(idx.size)
    Zs = []
    for c in chunks:
        Z = transform(idx[c])
        const[c] = const_ll(Z)
        if cached:
            Zs.append(to_device(Z, device=device))

    def get_chunk(i):
        return Zs[i] if cached else to_device(transform(idx[chunks[i]]), device=device)

    best_ll = np.full(idx.size, -np.inf)
    best_ld = np.full(idx.size, np.nan)
    best_l = np.full(idx.size, np.nan)
    best_fsv = np.full(idx.size, np.nan)
    show = progress and settings.progress
    for ls in _progress(lengthscales, description="SpatialDE kernels", disable=not show):
        U, S, gower = cached_factor(xy, "SE", ls, use_cache=use_cache, device=device)
        for i, c in enumerate(chunks):
            fit = fit_kernel(get_chunk(i), U, S, device=device)
            better = fit["max_ll"] > best_ll[c]
            sl = np.arange(c.start, c.stop)[better]
            best_ll[sl] = fit["max_ll"][better]
            best_ld[sl] = fit["log_delta"][better]
            best_l[sl] = ls
            best_fsv[sl] = gower / (gower + np.exp(fit["log_delta"][better]))
    llr = best_ll - const
    ok = np.isfinite(llr)
    pv = np.where(ok, chi2_sf(np.where(ok, llr, 0.0), 1.0), np.nan)
    bic = -2.0 * best_ll + 4.0 * np.log(n)
    model = np.where(ok, "SE", None).astype(object)
    qv = storey_qvalue(pv)

    if model_search:
        sig = np.flatnonzero(ok & (qv < alpha))
        if sig.size:
            ms_space = [("PER", float(p), 4) for p in np.logspace(np.log10(l_min), np.log10(l_max), 10)]
            ms_space.append(("linear", None, 3))
            Zsig = transform(idx[sig])
            best_bic = bic[sig].copy()
            for name, p, M in ms_space:
                U, S, _ = cached_factor(xy, name, p, use_cache=use_cache, device=device)
                fit = fit_kernel(Zsig, U, S, device=device)
                b = -2.0 * fit["max_ll"] + M * np.log(n)
                better = b < best_bic
                best_bic[better] = b[better]
                model[sig[better]] = name

    G = adata.n_vars
    res = pd.DataFrame(index=adata.var_names.copy())
    full = lambda v, fill=np.nan, dtype=np.float64: _scatter(G, idx, v, fill, dtype)  # noqa: E731
    res["pval"] = full(pv)
    res["qval"] = full(qv)
    res["padj"] = full(bh_adjust(pv))
    res["l"] = full(np.where(ok, best_l, np.nan))
    res["fsv"] = full(np.where(ok, best_fsv, np.nan))
    res["llr"] = full(np.where(ok, llr, np.nan))
    res["bic"] = full(np.where(ok, bic, np.nan))
    res["model"] = pd.Series(full(model, None, object), index=res.index, dtype="string")
    _finish_ranking(res, score=res["llr"].to_numpy(), sig=res["qval"].to_numpy() < alpha, n_svg=n_svg)
    write_var(adata, res, key_added)
    store_params(adata, key_added, params, phi=prep.get("phi"), n_tested=int(ok.sum()))
    logger.info(f"SpatialDE GP test: {int(res['svg'].sum())} SVGs at q < {alpha}", time=start)
    return res


def _scatter(G: int, idx: np.ndarray, values, fill, dtype) -> np.ndarray:
    out = np.full(G, fill, dtype=dtype)
    out[idx] = values
    return out


def _finish_ranking(res, *, score: np.ndarray, sig: np.ndarray, n_svg: int | None) -> None:
    """``rank`` (1 = most significant: smallest p, ties broken by the larger ``score``; untested
    genes last) and ``svg`` (significant and among the top ``n_svg``)."""
    p = res["pval"].to_numpy()
    p_key = np.where(np.isfinite(p), p, np.inf)
    s_key = np.where(np.isfinite(score), -score, np.inf)
    order = np.lexsort((s_key, p_key))
    rank = np.empty(len(p), dtype=np.int64)
    rank[order] = np.arange(1, len(p) + 1)
    res["rank"] = rank
    svg = np.asarray(sig, dtype=bool) & np.isfinite(p)
    if n_svg is not None:
        svg &= rank <= n_svg
    res["svg"] = svg


def write_var(adata, res, key_added: str) -> None:
    for col in res.columns:
        adata.var[f"{key_added}.{col}"] = res[col].to_numpy()
