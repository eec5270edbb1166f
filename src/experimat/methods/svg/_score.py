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

import numpy as np

from experimat._compat import deprecated_alias
from experimat._errors import InvalidInputError
from experimat._keys import Key
from experimat.methods._checks import counts_input

from ._score_core import _core, calibrated_logp, null_statistics
from ._stats import cauchy_combine_log

__all__ = ["calibrated_logp", "cauchy_combine_log", "spatial_svg_score", "spatial_svg_spatialde"]

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
    block_size: float | str | None = "auto",
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
    block_size
        Test pseudo-spots: the counts (and size factors) of the spots in square blocks of this many
        spot spacings summed, each block at the mean position of its spots. ``"auto"`` (default): no
        blocks up to :data:`MAX_SCORE_SPOTS` (20,000) spots; above, the smallest block size 2, 4, 8, …
        that leaves at most :data:`MAX_SCORE_BLOCKS` (5,000) blocks (Visium HD: 16 × 16 bins of 8 µm at
        500,000 bins; 4 × 4 at 50,000). The
        kernels' cost is linear in the (pseudo-)spots times their rank, and the rank a kernel needs
        grows with the spots, so whole Visium HD sections are only tractable in blocks; patterns wider
        than a block keep their power (summed counts: more counts per test unit), patterns finer than
        a block are not seen. ``None``: never.
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
    ``n_spots`` (with blocks: blocks where the gene is expressed). Written to ``adata.var`` as ``{key_added}.<column>``;
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
    from scipy import sparse

    from experimat._logging import logger
    from experimat._settings import settings
    from experimat.methods._checks import check_choice, check_counts, get_matrix, store_params

    from ._common import as_csc_or_dense, coordinates, pick_device, with_gene_symbols, write_var

    check_choice("obs_dist", obs_dist, ("negative_binomial", "normal"))
    if min_spots < 0 or n_null < 0:
        raise InvalidInputError(f"min_spots and n_null must be >= 0; got {min_spots} and {n_null}.")
    xy = coordinates(adata, spatial_key)
    X = get_matrix(adata, layer)
    if obs_dist == "negative_binomial":
        check_counts(X, layer=layer)
    X = as_csc_or_dense(X)
    kernels = _kernel_list(default_kernel_space(xy) if kernel_space is None else kernel_space)
    n_obs, G = X.shape
    sf = _size_factors(adata, X, sizefactors) if obs_dist == "negative_binomial" else np.ones(n_obs)
    size, B = _pseudo_spots(xy, block_size)
    if B is not None:  # sums of counts and of size factors per block, at the blocks' mean positions
        counts = np.asarray(B.sum(1)).ravel()
        Xb = B @ X if obs_dist == "negative_binomial" else sparse.diags(1.0 / counts) @ (B @ X)  # normal: block means
        X, xy, sf = as_csc_or_dense(Xb), (B @ xy) / counts[:, None], B @ sf
        if kernel_space is None:
            kernels = _kernel_list(default_kernel_space(xy))
    n = X.shape[0]
    device = pick_device(use_gpu)
    start = logger.info(f"SpatialDE2 score tests on {n_obs} spots x {G} genes{f' in {n} blocks of {size:g}' if B is not None else ''}, "
                        f"{len(kernels)} kernels ({device})")  # fmt: skip
    kern = _kernel_factors(xy, kernels, use_cache=use_cache, device=device)
    seed_used = settings.seed if seed is None else seed
    rng = np.random.default_rng(seed_used)
    n_spots = _n_spots(X, obs_dist)
    out = _score_genes(X, sf, kern, n_spots=n_spots, obs_dist=obs_dist, min_spots=min_spots, n_null=n_null, rng=rng,
                       chunk_size=chunk_size, device=device, show=progress and settings.progress)  # fmt: skip
    logp = out["logp"]
    T, logT, _ = cauchy_combine_log(logp, truncate=n_null > 0)
    pval = np.exp(calibrated_logp(T, logT, out["null_T"], rng)) if out["null_T"] is not None else cauchy_combine_log(logp)[2]
    names = np.array([_kernel_name(*k) for k in kernels], dtype=object)
    res = _score_table(adata, logp, pval=pval, T=T, logT=logT, names=names, n_spots=n_spots,
                       disp=out["disp"] if obs_dist == "negative_binomial" else None, n_svg=n_svg, alpha=alpha)  # fmt: skip
    write_var(adata, res, key_added)
    adata.varm[f"{key_added}.kernel_pvals"] = np.exp(logp)
    params = dict(layer=layer, spatial_key=spatial_key, kernel_space=kernel_space,
                  sizefactors=sizefactors if sizefactors is None or isinstance(sizefactors, str) else "<array>",
                  obs_dist=obs_dist, n_svg=n_svg, alpha=alpha, min_spots=min_spots, n_null=n_null,
                  block_size=block_size, seed=seed_used, method="spatialde2")  # fmt: skip
    store_params(adata, key_added, params, kernels=[str(x) for x in names], n_tested=int(np.isfinite(logp).any(1).sum()),
                 **({"block_size_used": size, "n_blocks": n} if B is not None else {}))  # fmt: skip
    logger.info(f"SpatialDE2 score tests: {int(res['svg'].sum())} SVGs at padj < {alpha}", time=start)
    return with_gene_symbols(res, adata)


#: spots above which ``block_size="auto"`` tests blocks of spots (pseudo-spots)
MAX_SCORE_SPOTS = 20_000
#: the most blocks ``block_size="auto"`` leaves
MAX_SCORE_BLOCKS = 5_000


def _pseudo_spots(xy: np.ndarray, block_size):
    """The block size used and the blocks × spots membership matrix (``None``: the spots themselves)."""
    from scipy import sparse

    from experimat.methods._graph import nn_distance

    from ._common import block_membership

    n = xy.shape[0]
    if block_size is None or (isinstance(block_size, str) and block_size == "auto" and n <= MAX_SCORE_SPOTS):
        return None, None
    spacing = nn_distance(xy)
    if isinstance(block_size, str):
        if block_size != "auto":
            raise InvalidInputError(f"block_size must be None, 'auto' or a number of spot spacings; got {block_size!r}.")
        size = 2.0
        while block_membership(xy, size, spacing)[1].shape[0] > MAX_SCORE_BLOCKS:
            size *= 2.0
    else:
        size = float(block_size)
        if not np.isfinite(size) or size < 1.0:
            raise InvalidInputError(f"block_size (spot spacings per block side) must be >= 1; got {block_size!r}.")
    code, cells = block_membership(xy, size, spacing)
    return size, sparse.csr_matrix((np.ones(n), (code, np.arange(n))), shape=(cells.shape[0], n))


def _kernel_factors(xy, kernels, *, use_cache: bool, device: str) -> dict:
    """Low-rank factors of all kernels side by side (``U``, ``lam``), the one-hot map of their columns to kernels
    and the kernel-side permutation moment weights."""
    from experimat._logging import logger

    from ._kernels import lowrank_factor
    from ._perm import moment_weights

    Us, lams, seg, invs = [], [], [], []
    for k, (name, v) in enumerate(kernels):
        U, lam = lowrank_factor(xy, name, v, use_cache=use_cache, device=device)
        Us.append(U)
        lams.append(lam)
        seg.append(np.full(lam.size, k))
        invs.append(_invariants(xy, name, v, U, lam, use_cache=use_cache))
    lam_all = np.concatenate(lams)
    onehot = np.zeros((lam_all.size, len(kernels)))
    onehot[np.arange(lam_all.size), np.concatenate(seg)] = 1.0
    logger.debug(f"kernel ranks: {[u.shape[1] for u in Us]}")
    return dict(U=np.concatenate(Us, axis=1), lam=lam_all, onehot=onehot, weights=moment_weights(invs), K=len(kernels))


def _score_genes(X, sf, kern, *, n_spots, obs_dist, min_spots, n_null, rng, chunk_size, device, show) -> dict:
    """Per-kernel Pearson III log p-values and NB dispersions of all genes in chunks, and the Cauchy statistics of
    ``n_null`` permuted genes (``None`` without)."""
    import jax
    import jax.numpy as jnp

    from experimat._logging import ProgressBar

    from ._common import chunk_size_for, dense_chunk, gene_chunks
    from ._gp_fit import _bucket
    from ._perm import pearson3_logp, permutation_moments

    n, G = X.shape
    cs = chunk_size or chunk_size_for(n, budget_elems=4_000_000, minimum=64)
    core = _core(obs_dist, kern["K"])
    logp = np.full((G, kern["K"]), np.nan)
    disp = np.full(G, np.nan)
    with jax.enable_x64(True):
        dev = jax.devices(device)[0]
        Ud, lamd, ohd, sfd = (jax.device_put(jnp.asarray(a), dev) for a in (kern["U"], kern["lam"], kern["onehot"], sf))
        chunks = list(gene_chunks(G, cs))
        with ProgressBar(len(chunks), "SpatialDE2 score tests", disable=not show) as bar:
            for c in chunks:
                Y = dense_chunk(X, c).T
                g = Y.shape[0]
                gp = min(_bucket(g), cs) if g < cs else g
                if gp != g:
                    Y = np.concatenate([Y, np.zeros((gp - g, n))], axis=0)
                Q, S, valid, a = core(jax.device_put(jnp.asarray(Y), dev), sfd, Ud, lamd, ohd)
                Q, S, valid, a = np.asarray(Q)[:g], np.asarray(S)[:g], np.asarray(valid)[:g], np.asarray(a)[:g]
                lp = pearson3_logp(Q, *permutation_moments(S, n, kern["weights"]))
                lp[~valid | (n_spots[c] < min_spots)] = np.nan
                logp[c] = lp
                disp[c] = np.where(valid, a, np.nan)
                bar.update()
        tested = np.flatnonzero(np.isfinite(logp).any(1))
        null_T = None
        if n_null and tested.size:
            null_T = null_statistics(
                X, tested, n_null=n_null, rng=rng, cs=cs, dev=dev, sfd=sfd, Ud=Ud, lamd=lamd, ohd=ohd,
                obs_dist=obs_dist, n_kernels=kern["K"], weights=kern["weights"],
            )  # fmt: skip
    return dict(logp=logp, disp=disp, null_T=null_T)


def _score_table(adata, logp, *, pval, T, logT, names, n_spots, disp, n_svg, alpha):
    import pandas as pd

    from ._stats import bh_adjust

    all_nan = ~np.isfinite(logp).any(1)
    best = np.argmin(np.where(np.isfinite(logp), logp, np.inf), axis=1)
    res = pd.DataFrame(index=adata.var_names.copy())
    res["pval"] = pval
    res["padj"] = bh_adjust(pval)
    res["stat"] = T
    res["kernel"] = pd.Series(np.where(all_nan, None, names[best]), index=res.index, dtype="string")
    res["pval_min_kernel"] = np.where(all_nan, np.nan, np.exp(np.min(np.where(np.isfinite(logp), logp, 0.0), axis=1)))
    if disp is not None:
        res["dispersion"] = disp
    res["n_spots"] = n_spots
    # rank by the combined statistic (log scale, stable for the strongest genes)
    score = np.where(np.isfinite(logT), logT, np.where(np.isfinite(T), -1e300, np.nan))
    _finish_ranking_by_score(res, score=score, n_svg=n_svg, alpha=alpha)
    cols = ["pval", "padj", "svg", "rank", "stat", "kernel", "pval_min_kernel"]
    return res[[*cols, *(["dispersion"] if disp is not None else []), "n_spots"]]


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


spatial_svg_spatialde = deprecated_alias(spatial_svg_score, "spatial_svg_spatialde")
