"""The permutation null of the SpatialDE GP test: LLRs of genes whose spots were permuted, pooled by kurtosis,
with generalised-Pareto tails (``spatial_svg_gp(null="permutation")``)."""

from __future__ import annotations

import numpy as np

from ._gp_fit import _AT_BOUNDARY, const_ll, scan_kernels, to_device

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


