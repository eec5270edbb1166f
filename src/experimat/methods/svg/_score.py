"""SpatialDE2-style score tests (Kats, Vento-Tormo & Stegle, SpatialDE2, bioRxiv 2021).

Null model per gene: a negative-binomial GLM ``y_i ~ NB(s_i exp(β), α)`` with size factors
``s_i`` (counts), or a normal model (normalised values). For each kernel ``K`` of the kernel
space, the score statistic of a spatial random effect is the quadratic form ``Q = rᵀ K r`` of the
null model's standardised (Pearson) residuals ``r``. At the maximum-likelihood intercept ``r`` is
orthogonal to ``v ∝ √w`` (the GLM working weights), so under the null ``Cov(r) ≈ P = I - v vᵀ``
and ``Q`` is matched to a scaled χ² (Satterthwaite) with ``E Q = tr(P K)`` and
``Var Q = 2 tr(P K P K) + Σ_i γ_i K_ii²``, where ``γ_i`` is the excess kurtosis of the residuals
(negative binomial: ``6α + 1/Var(y_i)``; normal: estimated per gene) — without that term sparse,
low-count genes get far too small p-values. Kernels are held as low-rank factors ``K = U diag(λ) Uᵀ``, so all
moments cost O(n R) per gene. Per-kernel p-values are combined by the Cauchy combination test.
Genes are processed in chunks (sparse input is densified one chunk at a time).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from experimat._errors import InvalidInputError

_NB_ITER = 4


@cache
def _core(obs_dist: str, n_kernels: int):
    import jax
    import jax.numpy as jnp

    def moments(r, V, U, lam, onehot, kurt_term):
        B = r @ U  # (g, R)
        Q = (B**2 * lam[None, :]) @ onehot  # (g, K)
        a2 = (V @ U) ** 2 if V.ndim == 2 else jnp.broadcast_to(((V @ U) ** 2)[None, :], B.shape)
        lam_k = lam @ onehot
        lam2_k = (lam**2) @ onehot
        va = (a2 * lam[None, :]) @ onehot
        va2 = (a2 * (lam**2)[None, :]) @ onehot
        E = lam_k[None, :] - va
        # Var(rᵀAr) = 2 tr(A²) + Σ_i γ_i A_ii² for independent entries with excess kurtosis γ_i
        Var = 2.0 * (lam2_k[None, :] - 2.0 * va2 + va**2) + kurt_term
        return Q, E, Var

    def nb(Y, sf, U, lam, onehot, diag2):
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
        denom = 1.0 + alpha[:, None] * mu
        r = (Y - mu) / jnp.sqrt(mu * denom)
        sw = jnp.sqrt(mu / denom)
        V = sw / jnp.linalg.norm(sw, axis=1, keepdims=True)
        # standardise by the residuals' own scale (the moment estimate of α need not make it 1)
        scale = jnp.sqrt((r**2).sum(1, keepdims=True) / max(n - 1, 1))
        r = jnp.where(valid[:, None], r / jnp.where(valid[:, None], scale, 1.0), 0.0)
        # excess kurtosis of a negative-binomial count: 6 α + 1 / Var(y)
        gamma = jnp.where(valid[:, None], 6.0 * alpha[:, None] + 1.0 / (mu * denom), 0.0)
        Q, E, Var = moments(r, V, U, lam, onehot, gamma @ diag2)
        return Q, E, Var, valid, alpha

    def normal(Y, sf, U, lam, onehot, diag2):
        n = Y.shape[1]
        m = Y.mean(1, keepdims=True)
        sd = Y.std(1, keepdims=True)
        valid = sd[:, 0] > 1e-12 * (1.0 + jnp.abs(m[:, 0]))
        r = jnp.where(valid[:, None], (Y - m) / jnp.where(valid[:, None], sd, 1.0), 0.0)
        V = jnp.full((n,), 1.0 / np.sqrt(n))
        gamma = jnp.where(valid, (r**4).mean(1) - 3.0, 0.0)  # empirical excess kurtosis per gene
        Q, E, Var = moments(r, V, U, lam, onehot, gamma[:, None] * diag2.sum(0)[None, :])
        return Q, E, Var, valid, jnp.zeros(Y.shape[0])

    return jax.jit(nb if obs_dist == "negative_binomial" else normal)


def satterthwaite_logp(Q: np.ndarray, E: np.ndarray, V: np.ndarray) -> np.ndarray:
    """log p-values of ``Q`` matched to ``c χ²_df`` (``c = V / 2E``, ``df = 2E² / V``); the far
    tail uses the asymptotic expansion of the incomplete gamma function instead of underflowing."""
    from scipy import special

    with np.errstate(divide="ignore", invalid="ignore"):
        c = V / (2.0 * E)
        df = 2.0 * E**2 / V
        a = df / 2.0
        x = np.maximum(Q, 0.0) / (2.0 * c)
        p = special.gammaincc(a, x)
        logp = np.log(p)
        tail = ~(p > 1e-290)
        if tail.any():
            at, xt = a[tail], x[tail]
            logp[tail] = -xt + (at - 1.0) * np.log(xt) - special.gammaln(at) + np.log1p((at - 1.0) / xt)
    bad = ~(np.isfinite(E) & np.isfinite(V) & (E > 0) & (V > 0) & np.isfinite(Q))
    logp[bad] = np.nan
    return np.minimum(logp, 0.0)


def cauchy_combine_log(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cauchy combination with equal weights over the last axis, from log p-values.

    Returns the statistic ``T``, ``log T`` computed stably for tiny p-values (used for ranking; NaN
    where ``T <= 0``) and the combined p-value.
    """
    from ._stats import cauchy_pvalue

    ok = np.isfinite(logp)
    p = np.exp(logp)
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


def default_kernel_space(xy: np.ndarray) -> dict[str, list[float] | bool]:
    """SE lengthscales and periods from the spot spacing and the tissue extent."""
    from ._kernels import nn_distance

    d = nn_distance(xy)
    span = float(np.ptp(xy, axis=0).max())
    lo, hi = 1.5 * d, max(span / 3.0, 4.0 * d)
    return {
        "SE": [float(v) for v in np.geomspace(lo, hi, 5)],
        "PER": [float(v) for v in np.geomspace(4.0 * d, max(span / 2.0, 8.0 * d), 3)],
        "linear": True,
    }


def _kernel_list(kernel_space: dict) -> list[tuple[str, float | None]]:
    valid = {"SE", "PER", "linear"}
    unknown = set(kernel_space) - valid
    if unknown:
        raise InvalidInputError(
            f"unknown kernel_space keys {sorted(unknown)}; valid keys: {sorted(valid)} "
            "(e.g. {'SE': [lengthscales], 'PER': [periods], 'linear': True})."
        )
    out: list[tuple[str, float | None]] = []
    for name in ("SE", "PER"):
        vals = kernel_space.get(name)
        if vals is None or vals is False:
            continue
        for v in np.atleast_1d(np.asarray(vals, dtype=np.float64)):
            if not np.isfinite(v) or v <= 0:
                raise InvalidInputError(f"kernel_space[{name!r}] values must be positive; got {v}.")
            out.append((name, float(v)))
    if kernel_space.get("linear"):
        out.append(("linear", None))
    if not out:
        raise InvalidInputError("kernel_space holds no kernel.")
    return out


def _kernel_name(name: str, v: float | None) -> str:
    return name if v is None else f"{name}({v:.4g})"


def spatial_svg_spatialde(
    adata,
    *,
    layer: str | None = "counts",
    spatial_key: str = "spatial",
    kernel_space: dict | None = None,
    sizefactors=None,
    obs_dist: str = "negative_binomial",
    use_cache: bool = True,
    use_gpu: bool = True,
    progress: bool = True,
    n_svg: int | None = 500,
    alpha: float = 0.05,
    chunk_size: int | None = None,
    key_added: str = "spatialde",
):
    """Spatially variable genes by SpatialDE2-style score tests (fast; the default SVG method).

    A null model without space is fitted per gene — negative binomial with size factors for
    raw counts (``obs_dist="negative_binomial"``), or normal for normalised values
    (``obs_dist="normal"``). For each kernel (squared-exponential at several lengthscales,
    periodic, linear) the score statistic of a spatial random effect on the standardised
    residuals is tested against its moment-matched (Satterthwaite) χ² distribution, and the
    per-kernel p-values are combined by the Cauchy combination test. p-values are adjusted by
    Benjamini–Hochberg; genes are ranked by the combined statistic. Sparse matrices are processed
    in gene chunks without densifying the whole matrix.

    Parameters
    ----------
    adata
        AnnData with spots in ``obs`` and genes in ``var``.
    layer
        Layer with raw counts (``obs_dist="negative_binomial"``) or normalised values
        (``obs_dist="normal"``); ``None`` for ``adata.X``.
    spatial_key
        ``obsm`` key of the spot coordinates.
    kernel_space
        ``{"SE": [lengthscales], "PER": [periods], "linear": True}`` in coordinate units; any key
        may be left out. Default: 5 SE lengthscales from 1.5× the spot spacing to a third of the
        tissue extent, 3 periods from 4× the spacing to half the extent, and the linear kernel.
        ``PER`` is the positive-definite periodic kernel ``Σ_axes cos(2π Δ / p)``.
    sizefactors
        Per-spot size factors for the negative-binomial null: ``None`` (total counts), an ``obs``
        column name, or an array of length ``n_obs``.
    obs_dist
        ``"negative_binomial"`` (raw counts; checked) or ``"normal"``.
    use_cache
        Keep kernel factorisations for later calls on the same coordinates.
    use_gpu
        Use a GPU through JAX when one is visible; otherwise run on CPU (results agree).
    progress
        Show a progress bar over gene chunks.
    n_svg
        Mark at most this many top-ranked significant genes in ``.svg`` (``None``: all).
    alpha
        Adjusted p-value threshold for ``.svg``.
    chunk_size
        Genes per chunk (default: about 4 million matrix entries per chunk).
    key_added
        Prefix of the result columns and the ``uns`` key.

    Returns
    -------
    DataFrame indexed by ``var_names`` with columns ``pval`` (Cauchy-combined), ``padj``
    (Benjamini–Hochberg), ``svg``, ``rank`` (1 = largest combined statistic), ``stat`` (Cauchy
    statistic), ``kernel`` (the kernel with the smallest p-value), ``pval_min_kernel`` and
    ``dispersion`` (negative binomial only). Written to ``adata.var`` as ``{key_added}.<column>``;
    parameters and the kernels to ``adata.uns[key_added]``; per-kernel p-values to
    ``adata.varm[f"{key_added}.kernel_pvals"]``.

    Examples
    --------
    >>> import experimat as em
    >>> from experimat.methods.svg import spatial_svg_spatialde
    >>> adata = em.datasets.synthetic_svg(1000, 500, n_spatial=50)
    >>> res = spatial_svg_spatialde(adata, layer="counts", progress=False)
    >>> adata.var[["spatialde.padj", "spatialde.svg", "spatialde.rank"]].head()
    """
    import jax
    import jax.numpy as jnp
    import pandas as pd

    from experimat._logging import ProgressBar, logger
    from experimat._settings import settings
    from experimat.methods._checks import check_choice, check_counts, get_matrix, store_params

    from ._common import as_csc_or_dense, chunk_size_for, coordinates, dense_chunk, gene_chunks, pick_device
    from ._gp import _bucket, write_var
    from ._kernels import lowrank_factor
    from ._stats import bh_adjust

    params = dict(
        layer=layer,
        spatial_key=spatial_key,
        kernel_space=kernel_space,
        sizefactors=sizefactors if sizefactors is None or isinstance(sizefactors, str) else "<array>",
        obs_dist=obs_dist,
        n_svg=n_svg,
        alpha=alpha,
        method="spatialde2",
    )
    check_choice("obs_dist", obs_dist, ("negative_binomial", "normal"))
    xy = coordinates(adata, spatial_key)
    X = get_matrix(adata, layer)
    n, G = X.shape
    if obs_dist == "negative_binomial":
        check_counts(X, layer=layer)
    X = as_csc_or_dense(X)
    sf = _size_factors(adata, X, sizefactors) if obs_dist == "negative_binomial" else np.ones(n)
    kspace = default_kernel_space(xy) if kernel_space is None else kernel_space
    kernels = _kernel_list(kspace)
    device = pick_device(use_gpu)
    start = logger.info(f"SpatialDE2 score tests on {n} spots x {G} genes, {len(kernels)} kernels ({device})")
    Us, lams, seg = [], [], []
    for k, (name, v) in enumerate(kernels):
        U, lam = lowrank_factor(xy, name, v, use_cache=use_cache, device=device)
        Us.append(U)
        lams.append(lam)
        seg.append(np.full(lam.size, k))
    U_all = np.concatenate(Us, axis=1)
    lam_all = np.concatenate(lams)
    seg = np.concatenate(seg)
    onehot = np.zeros((lam_all.size, len(kernels)))
    onehot[np.arange(lam_all.size), seg] = 1.0
    diag2 = ((U_all**2 * lam_all[None, :]) @ onehot) ** 2  # (n, K): squared kernel diagonals
    logger.debug(f"kernel ranks: {[u.shape[1] for u in Us]}")

    cs = chunk_size or chunk_size_for(n, budget_elems=4_000_000, minimum=64)
    core = _core(obs_dist, len(kernels))
    logp = np.full((G, len(kernels)), np.nan)
    disp = np.full(G, np.nan)
    show = progress and settings.progress
    with jax.enable_x64(True):
        dev = jax.devices(device)[0]
        Ud = jax.device_put(jnp.asarray(U_all), dev)
        lamd = jax.device_put(jnp.asarray(lam_all), dev)
        ohd = jax.device_put(jnp.asarray(onehot), dev)
        d2d = jax.device_put(jnp.asarray(diag2), dev)
        sfd = jax.device_put(jnp.asarray(sf), dev)
        chunks = list(gene_chunks(G, cs))
        with ProgressBar(len(chunks), "SpatialDE2 score tests", disable=not show) as bar:
            for c in chunks:
                Y = dense_chunk(X, c).T  # (g, n)
                g = Y.shape[0]
                gp = min(_bucket(g), cs) if g < cs else g
                if gp != g:
                    Y = np.concatenate([Y, np.zeros((gp - g, n))], axis=0)
                Q, E, V, valid, a = core(jax.device_put(jnp.asarray(Y), dev), sfd, Ud, lamd, ohd, d2d)
                Q, E, V = np.asarray(Q)[:g], np.asarray(E)[:g], np.asarray(V)[:g]
                lp = satterthwaite_logp(Q, E, V)
                lp[~np.asarray(valid)[:g]] = np.nan
                logp[c] = lp
                if obs_dist == "negative_binomial":
                    disp[c] = np.where(np.asarray(valid)[:g], np.asarray(a)[:g], np.nan)
                bar.update()
    T, logT, pval = cauchy_combine_log(logp)
    names = np.array([_kernel_name(*k) for k in kernels], dtype=object)
    all_nan = ~np.isfinite(logp).any(1)
    best = np.argmin(np.where(np.isfinite(logp), logp, np.inf), axis=1)
    res = pd.DataFrame(index=adata.var_names.copy())
    res["pval"] = pval
    res["padj"] = bh_adjust(pval)
    res["stat"] = T
    res["kernel"] = pd.Series(np.where(all_nan, None, names[best]), index=res.index, dtype="string")
    res["pval_min_kernel"] = np.where(all_nan, np.nan, np.exp(np.min(np.where(np.isfinite(logp), logp, 0.0), axis=1)))
    if obs_dist == "negative_binomial":
        res["dispersion"] = disp
    # rank by the combined statistic (log scale, stable for the strongest genes)
    score = np.where(np.isfinite(logT), logT, np.where(np.isfinite(T), -1e300, np.nan))
    _finish_ranking_by_score(res, score=score, n_svg=n_svg, alpha=alpha)
    res = res[
        [
            "pval",
            "padj",
            "svg",
            "rank",
            "stat",
            "kernel",
            "pval_min_kernel",
            *(["dispersion"] if obs_dist == "negative_binomial" else []),
        ]
    ]
    write_var(adata, res, key_added)
    adata.varm[f"{key_added}.kernel_pvals"] = np.exp(logp)
    store_params(adata, key_added, params, kernels=[str(x) for x in names], n_tested=int((~all_nan).sum()))
    logger.info(f"SpatialDE2 score tests: {int(res['svg'].sum())} SVGs at padj < {alpha}", time=start)
    return res


def _finish_ranking_by_score(res, *, score: np.ndarray, n_svg: int | None, alpha: float) -> None:
    """``rank`` by the combined statistic (descending; untestable genes last) and ``svg``."""
    key = np.where(np.isfinite(score), -score, np.inf)
    p = res["pval"].to_numpy()
    order = np.lexsort((np.where(np.isfinite(p), p, np.inf), key))
    rank = np.empty(len(key), dtype=np.int64)
    rank[order] = np.arange(1, len(key) + 1)
    res["rank"] = rank
    svg = (res["padj"].to_numpy() < alpha) & np.isfinite(p)
    if n_svg is not None:
        svg &= rank <= n_svg
    res["svg"] = svg


def _size_factors(adata, X, sizefactors) -> np.ndarray:
    from ._common import row_sums

    n = X.shape[0]
    if sizefactors is None:
        sf = row_sums(X)
    elif isinstance(sizefactors, str):
        from experimat.methods._checks import get_obs_column

        sf = np.asarray(get_obs_column(adata, sizefactors), dtype=np.float64)
    else:
        sf = np.asarray(sizefactors, dtype=np.float64).ravel()
        if sf.shape[0] != n:
            raise InvalidInputError(f"sizefactors has length {sf.shape[0]}; expected n_obs={n}.")
    if not np.all(np.isfinite(sf)) or (sf <= 0).any():
        raise InvalidInputError(
            f"size factors must be positive and finite; {int((~(sf > 0)).sum())} spots have zero/negative/NaN values "
            "(with sizefactors=None: spots without counts). Remove empty spots first (sc.pp.filter_cells(adata, min_counts=1))."
        )
    return sf / np.exp(np.mean(np.log(sf)))
