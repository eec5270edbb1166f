"""The SpatialDE Gaussian-process test (Svensson, Teichmann & Stegle, Nature Methods 2018): expression
preparation (NaiveDE's stabilisation), the kernel scan of :mod:`._gp_fit`, χ² or permutation p-values
(:mod:`._gp_null`) and SpatialDE's model search."""

from __future__ import annotations

import numpy as np

from experimat._keys import Key
from experimat.methods._checks import counts_input

from ._gp_fit import anscombe_phi, const_ll, fit_kernel, scan_kernels, to_device

__all__ = ["MAX_SPOTS", "N_NULL", "anscombe_phi", "spatial_svg_gp"]

N_NULL = 60_000
#: largest number of spots the GP test accepts by default: it eigendecomposes one dense spots x spots
#: kernel per lengthscale (O(n³) time, 8 n² bytes each; 10,000 spots: 0.8 GB and about a minute per kernel)
MAX_SPOTS = 10_000




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
    spatial_key: str = Key.SPATIAL,
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
    from experimat._logging import logger
    from experimat._settings import settings
    from experimat.methods._checks import check_choice, get_matrix, store_params

    from ._common import as_csc_or_dense, coordinates, pick_device, with_gene_symbols, write_var
    from ._stats import chi2_sf, storey_qvalue

    check_choice("normalize", normalize, ("anscombe", "none"))
    check_choice("null", null, ("chi2", "permutation"))
    _check_size(adata.n_obs, max_spots)
    xy = coordinates(adata, spatial_key)
    lengthscales, l_range = _lengthscales(xy, kernel_space)
    X = as_csc_or_dense(get_matrix(adata, layer))
    device = pick_device(use_gpu)
    seed_used = settings.seed if seed is None else seed
    start = logger.info(f"SpatialDE GP test on {X.shape[0]} spots x {X.shape[1]} genes ({device})")
    candidates = None
    if genes is not None:
        from experimat.methods._checks import resolve_genes

        candidates = np.unique(adata.var_names.get_indexer(resolve_genes(adata, genes)))
    idx, transform, prep = _prepare_expression(
        X, normalize=normalize, min_counts=min_counts, layer=layer, candidates=candidates
    )
    n = xy.shape[0]
    const, scan = _scan_genes(idx, transform, xy, lengthscales, use_cache=use_cache, device=device,
                              show=progress and settings.progress)  # fmt: skip
    llr = scan["max_ll"] - const
    ok = np.isfinite(llr)
    if null == "chi2":
        pv = np.where(ok, chi2_sf(np.where(ok, llr, 0.0), 1.0), np.nan)
    else:
        from ._gp_null import _permutation_pvalues

        pv = np.full(idx.size, np.nan)
        pv[ok] = _permutation_pvalues(np.flatnonzero(ok), llr, scan["log_delta"], idx, transform, xy, lengthscales,
                                      n_null=n_null, seed=seed_used, use_cache=use_cache, device=device)  # fmt: skip
    bic = -2.0 * scan["max_ll"] + 4.0 * np.log(n)
    qv = storey_qvalue(pv)
    model = np.where(ok, "SE", None).astype(object)
    if model_search:
        sig = np.flatnonzero(ok & (qv < alpha))
        model[sig] = _model_search(transform(idx[sig]), bic[sig], model[sig], xy, l_range,
                                   use_cache=use_cache, device=device)  # fmt: skip
    res = _result_table(adata, idx, ok, pv=pv, qv=qv, llr=llr, bic=bic, model=model, scan=scan, alpha=alpha, n_svg=n_svg)
    write_var(adata, res, key_added)
    params = dict(layer=layer, spatial_key=spatial_key, genes=None if genes is None else "<list>", normalize=normalize,
                  kernel_space=kernel_space, min_counts=min_counts, model_search=model_search, null=null, n_null=n_null,
                  alpha=alpha, n_svg=n_svg, seed=seed_used, max_spots=max_spots, method="spatialde")  # fmt: skip
    store_params(adata, key_added, params, phi=prep.get("phi"), n_tested=int(ok.sum()))
    logger.info(f"SpatialDE GP test: {int(res['svg'].sum())} SVGs at q < {alpha}", time=start)
    return with_gene_symbols(res, adata)


def _check_size(n_obs: int, max_spots: int | None) -> None:
    """Refuse samples above ``max_spots`` (before any work), naming the scalable tests."""
    if max_spots is not None and n_obs > max_spots:
        from experimat._errors import InvalidInputError

        raise InvalidInputError(
            f"the SpatialDE GP test is cubic in spots and holds dense spots x spots kernels: {n_obs:,} spots "
            f"exceed max_spots={max_spots:,} (about {8 * n_obs**2 / 1e9:.0f} GB per kernel). Use the scalable "
            "tests spatial_svg_moran (Moran's I) or spatial_svg_score (score test), or subsample the spots; "
            "max_spots=None lifts the limit."
        )


def _lengthscales(xy: np.ndarray, kernel_space: dict | None) -> tuple[list[float], tuple[float, float]]:
    """The SE lengthscales of the test (default: 10 log-spaced over SpatialDE's range) and that range."""
    from ._kernels import l_limits

    l_min, l_max = l_limits(xy)
    if kernel_space is None:
        kernel_space = {"SE": np.logspace(np.log10(l_min), np.log10(l_max), 10)}
    unknown = set(kernel_space) - {"SE", "const"}
    if unknown:
        from experimat._errors import InvalidInputError

        raise InvalidInputError(f"kernel_space keys for the GP test must be 'SE' (and 'const'); got {sorted(unknown)}.")
    return [float(v) for v in np.atleast_1d(kernel_space["SE"])], (l_min, l_max)


def _scan_genes(idx, transform, xy, lengthscales, *, use_cache, device, show):
    """Constant-model log-likelihoods and the best SE kernel of every tested gene (chunks kept on the device when
    they are small enough, else prepared again for each kernel)."""
    from ._common import chunk_size_for, gene_chunks

    n = xy.shape[0]
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

    return const, scan_kernels(get_chunk, chunks, xy, lengthscales, use_cache=use_cache, device=device, show=show)


def _model_search(Z, bic, model, xy, l_range, *, use_cache, device):
    """SpatialDE's model search: the periodic (10 periods) or linear kernel replaces SE where its BIC is lower."""
    from ._kernels import cached_factor

    n = xy.shape[0]
    model = model.copy()
    if not Z.shape[1]:
        return model
    space = [("PER", float(p), 4) for p in np.logspace(np.log10(l_range[0]), np.log10(l_range[1]), 10)]
    space.append(("linear", None, 3))
    best = bic.copy()
    for name, p, n_params in space:
        U, S, _ = cached_factor(xy, name, p, use_cache=use_cache, device=device)
        b = -2.0 * fit_kernel(Z, U, S, device=device)["max_ll"] + n_params * np.log(n)
        better = b < best
        best[better] = b[better]
        model[better] = name
    return model


def _result_table(adata, idx, ok, *, pv, qv, llr, bic, model, scan, alpha, n_svg):
    import pandas as pd

    from ._common import finish_ranking
    from ._stats import bh_adjust

    G = adata.n_vars
    res = pd.DataFrame(index=adata.var_names.copy())
    full = lambda v, fill=np.nan, dtype=np.float64: _scatter(G, idx, v, fill, dtype)  # noqa: E731
    res["pval"] = full(pv)
    res["qval"] = full(qv)
    res["padj"] = full(bh_adjust(pv))
    res["l"] = full(np.where(ok, scan["l"], np.nan))
    res["fsv"] = full(np.where(ok, scan["fsv"], np.nan))
    res["llr"] = full(np.where(ok, llr, np.nan))
    res["bic"] = full(np.where(ok, bic, np.nan))
    res["model"] = pd.Series(full(model, None, object), index=res.index, dtype="string")
    finish_ranking(res, score=res["llr"].to_numpy(), sig=res["qval"].to_numpy() < alpha, n_svg=n_svg)
    return res


def _scatter(G: int, idx: np.ndarray, values, fill, dtype) -> np.ndarray:
    out = np.full(G, fill, dtype=dtype)
    out[idx] = values
    return out
