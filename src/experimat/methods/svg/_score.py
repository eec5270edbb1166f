"""SpatialDE2-style score tests (Kats, Vento-Tormo & Stegle, SpatialDE2, bioRxiv 2021).

Null model per gene: a negative-binomial GLM ``y_i ~ NB(s_i exp(β), α)`` with size factors
``s_i`` (counts), or a normal model (normalised values). For each kernel ``K`` of the kernel
space, the score statistic of a spatial random effect is the quadratic form ``Q = cᵀ K c`` of the
null model's centred, standardised (Pearson) residuals ``c``.

p-values are calibrated under the null "spot locations exchangeable": the residuals are
functions of each spot's own data and of permutation-invariant fits, so permuting the spots
permutes ``c``. The exact mean, variance and skewness of ``Q`` over all permutations of ``c``
(:mod:`experimat.methods.svg._perm`; kernel side once per kernel, gene side from the power sums
of ``c``, O(n) per gene) give a Pearson type III p-value per kernel. The per-kernel p-values are
combined by the Cauchy combination test (Liu & Xie 2020), whose level is only approximate for
dependent tests, so the combined statistic is finally referred to a sample of ``n_null`` null
statistics of randomly chosen genes with independently permuted residuals
(:func:`calibrated_logp`). Kernels are held as low-rank factors ``K = U diag(λ) Uᵀ``, so each gene
costs O(n R). Genes are processed in chunks (sparse input is densified one chunk at a time).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from experimat._compat import deprecated_alias
from experimat._errors import InvalidInputError
from experimat._keys import Key
from experimat.methods._checks import counts_input

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


def cauchy_combine_log(logp: np.ndarray, *, truncate: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cauchy combination with equal weights over the last axis, from log p-values.

    Returns the statistic ``T``, ``log T`` computed stably for tiny p-values (used for ranking; NaN
    where ``T <= 0``) and the combined p-value (Cauchy reference; not valid with ``truncate``).
    ``truncate=True`` sets the terms of p-values above 1/2 to 0 (``T >= 0``): large per-kernel
    p-values, which come from the least accurate (lower) tail of the per-kernel approximation,
    then cannot drag the statistic to large negative values.
    """
    from ._stats import cauchy_pvalue

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


def default_kernel_space(xy: np.ndarray) -> dict[str, list[float] | bool]:
    """SE lengthscales and periods from the spot spacing and the tissue extent."""
    from experimat.methods._graph import nn_distance

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


@counts_input("layer", when=lambda o: o.get("obs_dist") == "negative_binomial")
def spatial_svg_score(
    adata,
    *,
    layer: str | None = "counts",
    spatial_key: str = Key.SPATIAL,
    kernel_space: dict | None = None,
    sizefactors=None,
    obs_dist: str = "negative_binomial",
    use_cache: bool = True,
    use_gpu: bool = True,
    progress: bool = True,
    n_svg: int | None = 500,
    alpha: float = 0.05,
    chunk_size: int | None = None,
    min_spots: int = 10,
    n_null: int = 10_000,
    seed: int | None = None,
    key_added: str = "spatialde",
):
    """Spatially variable genes by SpatialDE2-style score tests (fast; the default SVG method).

    A null model without space is fitted per gene — negative binomial with size factors for
    raw counts (``obs_dist="negative_binomial"``), or normal for normalised values
    (``obs_dist="normal"``). For each kernel (squared-exponential at several lengthscales,
    periodic, linear) the score statistic of a spatial random effect on the centred, standardised
    residuals is tested against a Pearson type III distribution matched to its exact first three
    moments over permutations of the spots; the per-kernel p-values are combined by the Cauchy
    combination test and the combined statistic is calibrated against ``n_null`` permuted genes,
    so that p-values are uniform when spot locations carry no information. p-values are adjusted
    by Benjamini–Hochberg; genes are ranked by the combined statistic. Sparse matrices are
    processed in gene chunks without densifying the whole matrix.

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
    min_spots
        Genes expressed (count > 0; ``obs_dist="normal"``: above their minimum) in fewer spots
        are not tested (NaN p-value; the count is the ``n_spots`` column).
    n_null
        Permuted genes (random tested genes, each with its own permutation of the residuals) whose
        Cauchy statistics calibrate the combined p-values; ``0`` keeps the plain Cauchy
        combination p-value (approximate).
    seed
        Seed of the permutations and of the choice of null genes (``None``: ``em.settings.seed``).
    key_added
        Prefix of the result columns and the ``uns`` key.

    Returns
    -------
    DataFrame indexed by ``var_names`` with columns ``gene`` (the symbol, when ``var['gene']``
    exists), ``pval`` (Cauchy-combined), ``padj``
    (Benjamini–Hochberg), ``svg``, ``rank`` (1 = largest combined statistic), ``stat`` (Cauchy
    statistic), ``kernel`` (the kernel with the smallest p-value), ``pval_min_kernel`` (per-kernel Pearson III), ``dispersion`` (negative binomial only) and
    ``n_spots``. Written to ``adata.var`` as ``{key_added}.<column>``;
    parameters and the kernels to ``adata.uns[key_added]``; per-kernel p-values to
    ``adata.varm[f"{key_added}.kernel_pvals"]``.

    Examples
    --------
    >>> import experimat as em
    >>> from experimat.methods.svg import spatial_svg_score
    >>> adata = em.datasets.synthetic_svg(1000, 500, n_spatial=50)
    >>> res = spatial_svg_score(adata, layer="counts", progress=False)
    >>> adata.var[["spatialde.padj", "spatialde.svg", "spatialde.rank"]].head()
    """
    import jax
    import jax.numpy as jnp
    import pandas as pd

    from experimat._logging import ProgressBar, logger
    from experimat._settings import settings
    from experimat.methods._checks import check_choice, check_counts, get_matrix, store_params

    from ._common import (
        as_csc_or_dense,
        chunk_size_for,
        coordinates,
        dense_chunk,
        gene_chunks,
        pick_device,
        with_gene_symbols,
        write_var,
    )
    from ._gp_fit import _bucket
    from ._kernels import lowrank_factor
    from ._perm import moment_weights, pearson3_logp, permutation_moments
    from ._stats import bh_adjust

    params = dict(
        layer=layer,
        spatial_key=spatial_key,
        kernel_space=kernel_space,
        sizefactors=sizefactors if sizefactors is None or isinstance(sizefactors, str) else "<array>",
        obs_dist=obs_dist,
        n_svg=n_svg,
        alpha=alpha,
        min_spots=min_spots,
        n_null=n_null,
        seed=seed,
        method="spatialde2",
    )
    check_choice("obs_dist", obs_dist, ("negative_binomial", "normal"))
    if min_spots < 0 or n_null < 0:
        raise InvalidInputError(f"min_spots and n_null must be >= 0; got {min_spots} and {n_null}.")
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
    Us, lams, seg, invs = [], [], [], []
    for k, (name, v) in enumerate(kernels):
        U, lam = lowrank_factor(xy, name, v, use_cache=use_cache, device=device)
        Us.append(U)
        lams.append(lam)
        seg.append(np.full(lam.size, k))
        invs.append(_invariants(xy, name, v, U, lam, use_cache=use_cache))
    U_all = np.concatenate(Us, axis=1)
    lam_all = np.concatenate(lams)
    seg = np.concatenate(seg)
    onehot = np.zeros((lam_all.size, len(kernels)))
    onehot[np.arange(lam_all.size), seg] = 1.0
    weights = moment_weights(invs)
    logger.debug(f"kernel ranks: {[u.shape[1] for u in Us]}")

    cs = chunk_size or chunk_size_for(n, budget_elems=4_000_000, minimum=64)
    core = _core(obs_dist, len(kernels))
    logp = np.full((G, len(kernels)), np.nan)
    disp = np.full(G, np.nan)
    n_spots = _n_spots(X, obs_dist)
    show = progress and settings.progress
    with jax.enable_x64(True):
        dev = jax.devices(device)[0]
        Ud = jax.device_put(jnp.asarray(U_all), dev)
        lamd = jax.device_put(jnp.asarray(lam_all), dev)
        ohd = jax.device_put(jnp.asarray(onehot), dev)
        sfd = jax.device_put(jnp.asarray(sf), dev)

        def run_chunk(Y):
            g = Y.shape[0]
            gp = min(_bucket(g), cs) if g < cs else g
            if gp != g:
                Y = np.concatenate([Y, np.zeros((gp - g, n))], axis=0)
            Q, S, valid, a = core(jax.device_put(jnp.asarray(Y), dev), sfd, Ud, lamd, ohd)
            Q, S, valid, a = np.asarray(Q)[:g], np.asarray(S)[:g], np.asarray(valid)[:g], np.asarray(a)[:g]
            mean, var, skew = permutation_moments(S, n, weights)
            lp = pearson3_logp(Q, mean, var, skew)
            lp[~valid] = np.nan
            return lp, valid, a

        chunks = list(gene_chunks(G, cs))
        with ProgressBar(len(chunks), "SpatialDE2 score tests", disable=not show) as bar:
            for c in chunks:
                lp, valid, a = run_chunk(dense_chunk(X, c).T)
                lp[n_spots[c] < min_spots] = np.nan
                logp[c] = lp
                if obs_dist == "negative_binomial":
                    disp[c] = np.where(valid, a, np.nan)
                bar.update()
        tested = np.flatnonzero(np.isfinite(logp).any(1))
        T, logT, _ = cauchy_combine_log(logp, truncate=n_null > 0)
        null_T = None
        rng = np.random.default_rng(settings.seed if seed is None else seed)
        if n_null and tested.size:
            null_T = _null_statistics(
                X, tested, n_null=n_null, rng=rng, cs=cs, dev=dev, sfd=sfd,
                Ud=Ud, lamd=lamd, ohd=ohd, obs_dist=obs_dist, n_kernels=len(kernels), weights=weights,
            )  # fmt: skip
    pval = np.exp(calibrated_logp(T, logT, null_T, rng)) if null_T is not None else cauchy_combine_log(logp)[2]
    names = np.array([_kernel_name(*k) for k in kernels], dtype=object)
    all_nan = ~np.isfinite(logp).any(1)
    best = np.argmin(np.where(np.isfinite(logp), logp, np.inf), axis=1)
    res = pd.DataFrame(index=adata.var_names.copy())
    res["pval"] = pval
    res["padj"] = bh_adjust(pval)
    res["n_spots"] = n_spots
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
            "n_spots",
        ]
    ]
    write_var(adata, res, key_added)
    adata.varm[f"{key_added}.kernel_pvals"] = np.exp(logp)
    store_params(adata, key_added, params, kernels=[str(x) for x in names], n_tested=int((~all_nan).sum()))
    logger.info(f"SpatialDE2 score tests: {int(res['svg'].sum())} SVGs at padj < {alpha}", time=start)
    return with_gene_symbols(res, adata)


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


def _n_spots(X, obs_dist: str) -> np.ndarray:
    """Spots where each gene is expressed (counts > 0; ``normal``: values above the gene's minimum)."""
    from scipy import sparse

    from ._common import dense_chunk, gene_chunks

    if obs_dist == "negative_binomial":
        if sparse.issparse(X):
            return np.asarray((X > 0).sum(0)).ravel()
        return (np.asarray(X) > 0).sum(0)
    out = np.empty(X.shape[1], dtype=np.int64)
    for c in gene_chunks(X.shape[1], 4096):
        Z = dense_chunk(X, c)
        out[c] = (Z > Z.min(0)).sum(0)
    return out


def _invariants(xy, name, v, U, lam, *, use_cache: bool) -> dict[str, float]:
    """Kernel-side permutation invariants of one low-rank kernel (cached with its factor)."""
    from ._kernels import _CACHE, _cache_key, _cache_put
    from ._perm import INVARIANTS, kernel_invariants_lowrank

    key = _cache_key(xy, "perm-invariants", name, v, U.shape[1], float(lam.sum()))
    if use_cache and key in _CACHE:
        _CACHE.move_to_end(key)
        return dict(zip(INVARIANTS, _CACHE[key][0].tolist(), strict=True))
    inv = kernel_invariants_lowrank(U, lam)
    if use_cache:
        _cache_put(key, (np.array([inv[k] for k in INVARIANTS]),))
    return inv


def _null_statistics(X, tested, *, n_null, rng, cs, dev, sfd, Ud, lamd, ohd, obs_dist, n_kernels, weights):
    """Cauchy statistics of ``n_null`` genes whose residuals were each permuted independently
    (genes drawn at random from the tested ones, with repeats when there are fewer)."""
    import jax
    import jax.numpy as jnp

    from ._common import dense_chunk
    from ._gp_fit import _bucket
    from ._perm import pearson3_logp, permutation_moments, power_sums

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
    return out[np.isfinite(out)]


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
    ok = np.isfinite(T)
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


#: the SpatialDE2-style score test under its former name
spatial_svg_spatialde = deprecated_alias(spatial_svg_score, "spatial_svg_spatialde")
