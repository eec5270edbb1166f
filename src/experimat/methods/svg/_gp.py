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

from experimat.methods._checks import counts_input

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
N_NULL = 60_000
#: largest number of spots the GP test accepts by default: it eigendecomposes one dense spots x spots
#: kernel per lengthscale (O(n³) time, 8 n² bytes each; 10,000 spots: 0.8 GB and about a minute per kernel)
MAX_SPOTS = 10_000
N_KURTOSIS_BINS = 12
MIN_PER_BIN = 2_000
MIN_TAIL = 10


def permutation_null_pvalues(
    llr: np.ndarray,
    boundary: np.ndarray,
    kurtosis: np.ndarray,
    null_llr: np.ndarray,
    null_boundary: np.ndarray,
    null_kurtosis: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """p-values of LLRs from a pooled permutation null, stratified by kurtosis.

    Under permuted coordinates the distribution of a gene's LLR depends on the gene through the
    shape of its values, mainly their kurtosis (sparse genes have heavy tails). Genes are put in
    kurtosis bins (quantiles); within a bin, the p-value is the empirical tail probability among
    the bin's null LLRs, ``(1 + #{null >= t}) / (1 + N)``, and beyond the ``MIN_TAIL``-th largest
    null LLR a generalised Pareto tail fitted to the exceedances over the 95th percentile (Knijnenburg et al., Bioinformatics 2009;
    shape clipped at 0, i.e. at most exponentially light, which errs on the conservative side).
    Genes at the no-spatial-variance boundary (a point mass, LLR = its minimum) get the randomised
    p-value ``1 - π U`` with ``π`` the bin's null boundary mass, so that p-values are exactly
    uniform under the null instead of piling up at 1.

    The null holds the same number of permuted LLRs of every tested gene and a permutation leaves
    a gene's kurtosis (so its bin) unchanged, so the null of a bin is the mixture of its genes' own
    null distributions and the p-value of a gene drawn at random is uniform under the null, however
    few genes a call tests (each gene's own p-value is not exactly uniform when the genes' null
    distributions differ; the kurtosis bins reduce that difference).
    """
    from scipy import stats

    n_bins = int(max(1, min(N_KURTOSIS_BINS, null_llr.size // MIN_PER_BIN)))
    edges = np.quantile(null_kurtosis, np.linspace(0, 1, n_bins + 1))
    bin_of = lambda k: np.clip(np.searchsorted(edges[1:-1], k, side="right"), 0, n_bins - 1)  # noqa: E731
    b, nb = bin_of(kurtosis), bin_of(null_kurtosis)
    p = np.full(llr.shape, np.nan)
    for k in range(n_bins):
        m, nm = b == k, nb == k
        nul = null_llr[nm]
        pi = float(null_boundary[nm].mean())
        srt = np.sort(nul)
        t = llr[m]
        pk = (1.0 + nul.size - np.searchsorted(srt, t, side="left")) / (1.0 + nul.size)
        pos = nul[~null_boundary[nm]]
        if pos.size >= 1_000:
            u = float(np.quantile(pos, 0.95))
            exc = pos[pos > u] - u
            shape, _, scale = stats.genpareto.fit(exc, floc=0.0)
            shape = max(shape, 0.0)
            if shape == 0.0:
                scale = float(exc.mean())
            frac = exc.size / nul.size
            # the empirical tail where it holds at least MIN_TAIL null values, the fitted tail beyond
            hi = t > max(u, srt[-MIN_TAIL])
            pk[hi] = np.maximum(frac * stats.genpareto.sf(t[hi] - u, shape, scale=scale), 1e-300)
        at_b = boundary[m]
        pk[at_b] = 1.0 - pi * rng.random(int(at_b.sum()))
        p[m] = pk
    return p


# ---------------------------------------------------------------------------------------------- public


def _prepare_expression(X, *, normalize: str, min_counts: int, layer: str | None, candidates: np.ndarray | None = None):
    """Tested gene indices and a function mapping a gene chunk to model-ready expression.

    ``normalize="anscombe"``: NaiveDE's variance stabilisation ``log(y + 1 / (2 φ))`` followed by
    regressing out log total counts (limma's ``removeBatchEffect``, the intercept kept), as the
    SpatialDE README does. ``normalize="none"``: the values are used as they are.

    ``candidates`` (column indices; default all genes) restricts the tested genes; the overdispersion ``φ`` is
    estimated on the tested genes (as ``NaiveDE.stabilize`` on them), the total counts always come from all genes
    with at least ``min_counts`` counts (SpatialDE's ``sample_info['total_counts']``: the sums of its gene-filtered
    count table), so a gene's model does not depend on which others are tested.
    """
    from experimat._errors import InvalidInputError
    from experimat.methods._checks import check_counts

    from ._common import column_sums, dense_chunk, row_sums

    n = X.shape[0]
    s, sq = column_sums(X)
    cand = np.arange(X.shape[1]) if candidates is None else np.asarray(candidates, dtype=np.int64)
    if normalize == "none":
        return cand, (lambda cols: dense_chunk(X, cols)), {}
    check_counts(X, layer=layer)
    idx = cand[s[cand] >= min_counts]
    if idx.size == 0:
        raise InvalidInputError(f"no tested gene has >= min_counts={min_counts} counts; lower min_counts.")
    total = row_sums(X[:, np.flatnonzero(s >= min_counts)])
    if (total <= 0).any():
        raise InvalidInputError(
            f"{int((total <= 0).sum())} spots have no counts; remove empty spots first "
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


@counts_input("layer", when=lambda o: o.get("normalize") != "none")
def spatial_svg_gp(
    adata,
    *,
    layer: str | None = "counts",
    spatial_key: str = "spatial",
    genes: str | list[str] | None = None,
    normalize: str = "anscombe",
    kernel_space: dict | None = None,
    min_counts: int = 3,
    model_search: bool = True,
    null: str = "chi2",
    n_null: int = N_NULL,
    alpha: float = 0.05,
    n_svg: int | None = None,
    use_cache: bool = True,
    use_gpu: bool = True,
    progress: bool = True,
    seed: int | None = None,
    max_spots: int | None = MAX_SPOTS,
    key_added: str = "spatialde_gp",
):
    """The original SpatialDE Gaussian-process test for spatially variable genes.

    Svensson, Teichmann & Stegle (Nature Methods 2018). Counts are variance-stabilised
    (NaiveDE's Anscombe-type ``log(y + 1/(2φ))``) and log total counts regressed out, as in the
    SpatialDE README. Each gene is then fitted with a Gaussian process
    ``y ~ N(μ, s²(K_l + δ I))`` for squared-exponential kernels ``K_l`` over a log grid of 10
    lengthscales spanning the spot distances, the noise ratio ``δ`` maximised per gene (all genes
    at once in JAX, after one eigendecomposition per kernel). The best lengthscale is compared with
    the constant model by a likelihood-ratio χ²₁ test (``null="chi2"``, as SpatialDE) or by a
    permutation null (``null="permutation"``, calibrated); q-values are Storey's as SpatialDE
    computes them. With ``model_search``, significant genes are also fitted with periodic and linear kernels
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
    genes
        Test only these genes (``var_names``, Ensembl ids or symbols; default: all). The total
        counts regressed out still come from all genes with at least ``min_counts`` counts, as in
        SpatialDE's pipeline, so a gene's
        statistics do not depend on which other genes are tested (only the overdispersion ``φ``
        of the stabilisation, estimated on the tested genes as ``NaiveDE.stabilize`` does, and
        the q-values, computed over the tested genes). Other genes get NaN.
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
    null
        How the LLR becomes a p-value. ``"chi2"``: SpatialDE's χ²₁ likelihood-ratio test; it
        reproduces SpatialDE's published results but is conservative by construction (the
        noise ratio lies on the boundary for genes without spatial variance, and the test
        ignores the maximum over lengthscales): with permuted coordinates about 0.8 % of genes
        have p < 0.05 on the mouse olfactory bulb. ``"permutation"``: the LLR of every gene is
        compared with LLRs of genes whose spot order was permuted (about ``n_null`` of them,
        stratified by kurtosis, generalised-Pareto tails; see
        :func:`permutation_null_pvalues`); p-values are uniform under the null, so the test is
        more powerful (it finds 5× more genes than the published run on the mouse olfactory
        bulb). It costs about ``n_null / n_genes`` more kernel scans and draws random numbers
        (``seed``).
    n_null
        Number of permuted-gene LLRs for ``null="permutation"`` (at least one permutation of
        all tested genes).
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
    seed
        Seed of the permutations and of the randomised p-values of boundary genes with
        ``null="permutation"`` (``None``: ``em.settings.seed``). Calls with the same seed draw the
        same random numbers whatever their genes, so separate calls whose p-values are to be
        independent (e.g. blocks of genes, samples) need different seeds; the multi-sample
        accessors derive one per sample.
    max_spots
        Refuse samples with more spots (default :data:`MAX_SPOTS` = 10,000): the test is cubic in
        spots and holds dense spots x spots kernels. Above it use the scalable tests
        (``spatial_svg_moran``, ``spatial_svg_score``). ``None`` lifts the limit.
    key_added
        Prefix of the result columns and the ``uns`` key.

    Returns
    -------
    DataFrame indexed by ``var_names`` with columns ``gene`` (the symbol, when ``var['gene']``
    exists, e.g. after gene-id harmonisation), ``pval``, ``qval`` (Storey, as SpatialDE),
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
    from experimat._settings import settings
    from experimat.methods._checks import check_choice, get_matrix, store_params

    from ._common import (
        as_csc_or_dense,
        chunk_size_for,
        coordinates,
        finish_ranking,
        gene_chunks,
        pick_device,
        with_gene_symbols,
        write_var,
    )
    from ._kernels import cached_factor, l_limits
    from ._stats import bh_adjust, chi2_sf, storey_qvalue

    params = dict(
        layer=layer,
        spatial_key=spatial_key,
        genes="<list>" if genes is not None else None,
        normalize=normalize,
        kernel_space=kernel_space,
        min_counts=min_counts,
        model_search=model_search,
        null=null,
        n_null=n_null,
        alpha=alpha,
        n_svg=n_svg,
        method="spatialde",
    )
    check_choice("normalize", normalize, ("anscombe", "none"))
    check_choice("null", null, ("chi2", "permutation"))
    if max_spots is not None and adata.n_obs > max_spots:
        from experimat._errors import InvalidInputError

        raise InvalidInputError(
            f"the SpatialDE GP test is cubic in spots and holds dense spots x spots kernels: {adata.n_obs:,} spots "
            f"exceed max_spots={max_spots:,} (about {8 * adata.n_obs**2 / 1e9:.0f} GB per kernel). Use the scalable "
            "tests spatial_svg_moran (Moran's I) or spatial_svg_score (score test), or subsample the spots; "
            "max_spots=None lifts the limit."
        )
    xy = coordinates(adata, spatial_key)
    X = as_csc_or_dense(get_matrix(adata, layer))
    device = pick_device(use_gpu)
    start = logger.info(f"SpatialDE GP test on {X.shape[0]} spots x {X.shape[1]} genes ({device})")
    candidates = None
    if genes is not None:
        from experimat.methods._checks import resolve_genes

        candidates = np.unique(adata.var_names.get_indexer(resolve_genes(adata, genes)))
    idx, transform, prep = _prepare_expression(
        X, normalize=normalize, min_counts=min_counts, layer=layer, candidates=candidates
    )
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

    show = progress and settings.progress
    scan = scan_kernels(get_chunk, chunks, xy, lengthscales, use_cache=use_cache, device=device, show=show)
    best_ll, best_l, best_fsv = scan["max_ll"], scan["l"], scan["fsv"]
    llr = best_ll - const
    ok = np.isfinite(llr)
    if null == "chi2":
        pv = np.where(ok, chi2_sf(np.where(ok, llr, 0.0), 1.0), np.nan)
    else:
        pv = np.full(idx.size, np.nan)
        pv[ok] = _permutation_pvalues(
            np.flatnonzero(ok),
            llr,
            scan["log_delta"],
            idx,
            transform,
            xy,
            lengthscales,
            n_null=n_null,
            seed=settings.seed if seed is None else seed,
            use_cache=use_cache,
            device=device,
        )
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
    finish_ranking(res, score=res["llr"].to_numpy(), sig=res["qval"].to_numpy() < alpha, n_svg=n_svg)
    write_var(adata, res, key_added)
    store_params(adata, key_added, params, phi=prep.get("phi"), n_tested=int(ok.sum()))
    logger.info(f"SpatialDE GP test: {int(res['svg'].sum())} SVGs at q < {alpha}", time=start)
    return with_gene_symbols(res, adata)


def _permutation_pvalues(tested, llr, log_delta, idx, transform, xy, lengthscales, *, n_null, seed, use_cache, device):
    """p-values of ``llr[tested]`` from LLRs of the same genes with their spots permuted.

    Permuting a gene's values over spots is the same as permuting the coordinates and keeps the
    kernel eigendecompositions; each gene gets its own permutation so that the null sample is not
    one correlated draw."""
    from experimat._logging import logger
    from experimat.methods._checks import check_positive_int

    from ._common import chunk_size_for, gene_chunks

    check_positive_int("n_null", n_null)
    rng = np.random.default_rng(seed)
    n = xy.shape[0]
    G = tested.size
    n_perm = max(1, int(np.ceil(n_null / G)))
    logger.debug(f"permutation null: {n_perm} permutation(s) of {G} genes")
    kurt = np.empty(G)
    null_llr, null_b, null_k = [], [], []
    size = chunk_size_for(n)
    for start in range(0, G, size):
        cols = tested[start : start + size]
        Z = transform(idx[cols])
        kurt[start : start + cols.size] = _kurtosis(Z)
    for _ in range(n_perm):
        genes = tested if n_perm > 1 or G <= n_null else np.sort(rng.choice(tested, n_null, replace=False))
        perm_chunks = list(gene_chunks(genes.size, size))
        seeds = rng.integers(0, 2**63, size=len(perm_chunks))
        keep_on_device = genes.size * n <= 50_000_000
        const = np.empty(genes.size)
        kz = np.empty(genes.size)
        cache: dict[int, object] = {}

        def get_chunk(
            i, genes=genes, perm_chunks=perm_chunks, seeds=seeds, cache=cache, keep=keep_on_device, const=const, kz=kz
        ):
            if i in cache:
                return cache[i]
            c = perm_chunks[i]
            # every gene gets its own permutation: null LLRs of co-expressed genes stay independent
            Z = np.random.default_rng(seeds[i]).permuted(transform(idx[genes[c]]), axis=0)
            const[c], kz[c] = const_ll(Z), _kurtosis(Z)
            Zd = to_device(Z, device=device)
            if keep:
                cache[i] = Zd
            return Zd

        scan = scan_kernels(get_chunk, perm_chunks, xy, lengthscales, use_cache=use_cache, device=device)
        null_llr.append(scan["max_ll"] - const)
        null_b.append(scan["log_delta"] >= _AT_BOUNDARY)
        null_k.append(kz)
    null_llr, null_b, null_k = map(np.concatenate, (null_llr, null_b, null_k))
    keep = np.isfinite(null_llr)
    return permutation_null_pvalues(
        llr[tested], log_delta[tested] >= _AT_BOUNDARY, kurt, null_llr[keep], null_b[keep], null_k[keep], rng
    )


def _kurtosis(Z: np.ndarray) -> np.ndarray:
    c = Z - Z.mean(0)
    m2 = (c**2).mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m2 > 0, (c**4).mean(0) / m2**2, 0.0)


def _scatter(G: int, idx: np.ndarray, values, fill, dtype) -> np.ndarray:
    out = np.full(G, fill, dtype=dtype)
    out[idx] = values
    return out
