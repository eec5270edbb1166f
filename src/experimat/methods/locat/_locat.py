"""LOCAT: genes concentrated in one region of a cell landscape and depleted elsewhere (JAX).

A re-implementation of the method of the ``locat`` package (Kluger lab), written from its
description and source; it differs where noted (calibrated nulls, cross-fitted depletion,
deterministic starts). The landscape is an embedding (PCA, UMAP, or spatial coordinates)
standardised per axis. Steps (each a function of its own module):

1. **Atoms** (:func:`._prep.atoms`): cells are grouped into ``n_atoms`` k-means atoms, started from a
   deterministic principal-direction partition.
2. **Background** (:func:`._background.fit_background`): the density of all cells, ``f0``, is a Gaussian
   mixture whose number of components is chosen by BIC over 1..``max_components``; every candidate is
   fitted by EM from the principal-direction partition of the atoms into that many clusters; the chosen
   size is refitted from ``n_bootstrap_inits`` deterministic starts and ``f0`` averages their densities.
   Where the k-means atoms hold more than ~4.5 cells each, the background is fitted on finer atoms (each
   atom split by principal directions into up to 4 pieces, :func:`._prep.background_atoms`), since a
   mixture on atoms cannot place a component finer than an atom.
3. **Per gene** (:func:`._genes.score_items`, in memory-sized batches, ``jax.vmap`` over genes): a
   weighted mixture ``f1`` over the expressing cells (weights from expression, see ``knn_mode``); its
   number of components follows the reference rule (:func:`._prep.n_components`: how many background
   components hold 95 % of the expressing cells that have an expressing neighbour within 3x the mean
   nearest-neighbour distance, ``floor(sqrt(k + 1)) + 1``, capped by the background size and
   cells/5 and ``max_gene_components``); its covariances carry a conjugate prior that pulls components of
   few cells towards a
   broad shape (``covariance_prior``). EM starts from weighted farthest-first centres on the gene's atoms
   (:func:`._genes.initial_centres`, the deterministic counterpart of k-means++).
4. **Concentration** (:mod:`._null`): the weighted mean over expressing cells of the likelihood-ratio
   score ``sqrt(p)(1 - sqrt(p)) (f1 - f0) / (f1 + f0)`` (``p``: expressing fraction) is compared with
   ``n_null_genes`` permuted pseudo-genes (real genes with their values permuted across cells, so their
   weights look like real genes' weights; a quarter placed at quantiles of the genes' ``p``, the rest
   evenly in log ``p``). A pseudo-gene needs no depletion scan, so it takes the rows of a gene's
   depletion refits: ``1 + n_splits`` pseudo-genes cost one gene. Two nulls are read from them:

   - ``zscore`` (the ranking): standardised against the null smoothed over 0.3 decades of ``p`` (centre
     q50, scale (q95 - q50) / 1.645 of kernel-weighted quantiles), as the reference standardises by
     random pseudo-genes at seven fractions interpolated between them (its z varies smoothly with
     ``p``; narrower or local nulls ranked genes less like it: Spearman rho 0.60-0.66 against 0.68-0.73
     on pbmc68k_reduced);
   - ``concentration_pval`` (the test): against the null at the gene's own level
     (:class:`._null.LocalNull`: local-linear centre in log ``p``, mostly from pseudo-genes with the
     same number of components, spread from leave-one-out residual quantiles corrected for the number
     of pseudo-genes nearby), because the null changes fast where a mixture changes character (few
     expressing cells, a step in components, the top of the range), which the smooth null misses
     (1 % to 18 % of permuted genes significant at 0.05 by level with it).

   So ``concentration_pval`` is not a function of ``zscore`` alone; genes of one expression level are
   ordered alike by both.
5. **Depletion**: the expressing cells are split at random in two halves; ``f1`` refitted on half A
   defines, for each ``lambda`` in ``rc_lambda_values``, the region ``f0 > lambda f1``. The number of
   half-B cells in that region (among cells not in A) is compared with its hypergeometric expectation
   under random placement (lower tail); regions holding < 10 % of the cells or < 3 expected B cells are
   skipped, the smallest p over the scan is Sidak corrected. This is repeated for ``n_splits``
   independent halvings and the p-values are Cauchy-combined (valid under their dependence), which
   removes most of the run-to-run variation of one random split. Cross-fitting makes this test valid
   under permutation (the reference tests the same cells it fitted, which makes almost every gene
   significant).
6. **Combination** as the reference: Cauchy combination of the two p-values, then
   ``pval = 1 - (1 - p_cauchy)(1 - 0.05 h_size)(1 - 0.12 h_sens)`` squashed above 0.99. The sensitivity
   penalty bounds ``pval`` below by ``0.12 (1 - sens_score)``, so broadly expressed genes
   (``sens_score`` < 0.6) are rarely jointly significant at 0.05 even when both tests are.

**Run-to-run stability.** The atoms, the background and every gene's EM start are deterministic
functions of the data (no seed); only the permuted null pseudo-genes and the depletion halvings are
random. The reference seeds k-means++ and its bootstrap fits at random, and two of its runs agree at
Spearman rho ~0.7 on z-scores; see ``benchmarks/locat.py`` for the measured variance of each source.

**Speed.** Every mixture is fitted by EM on ``n_atoms`` k-means atoms of the embedding rather than on
the cells: each gene's weights are summed per atom into weighted sufficient statistics (weight, mean,
within-atom scatter; one batched matrix product on the host) and EM runs on those (exact EM for grouped
data: the E-step uses the expected log density over the atom, the M-step adds the within-atom
scatter), so a fit costs ``n_atoms`` points whatever the number of cells. EM starts from one M-step on
the hard assignment to the initial centres and stops after at most 25 steps (change of the mean
log-likelihood bound < 1e-4); on CPU a few fits run at a time and each slot takes the next fit when its
own has converged (:func:`._gmm.fit_gmm_pool`), so a batch costs the steps its fits need (7.5 on average
on pbmc68k_reduced) rather than its slowest fit's 25 for every fit; densities are evaluated at every cell
in the kernel, the scores and the depletion scan from them on the host (a few passes over the densities,
cheaper than compiling them into the kernel).
Genes run in batches of one fixed size (the last one padded), so JAX compiles one kernel per call (on
CPU, for small problems, without XLA's MLIR fusion emitters, which compile it more slowly and run it no
faster on small arrays); the background fits (a few dozen, on the atoms of all cells) run in NumPy on
the host, which is cheaper than compiling them. On CPU, JAX is started with
``--xla_cpu_multi_thread_eigen=false`` appended to ``XLA_FLAGS`` when LOCAT is the first to import JAX
and the flag is not already set (on few cores Eigen's thread pool and XLA's own oversubscribe them);
set the flag yourself to override.

The reference's ``knn_mode`` does not change its scan (its neighbour graph is unused there); here it
chooses the cell weights as documented in :func:`locat`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from experimat._errors import InvalidInputError
from experimat._keys import Key
from experimat._logging import logger
from experimat._optional import import_optional, jax_device
from experimat._settings import settings
from experimat.methods._checks import check_choice, check_positive_int, get_matrix, get_obsm, store_params

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

#: Result columns, in order (also written to ``var[f"{key_added}.{column}"]``).
COLUMNS: tuple[str, ...] = (
    "gene_name",
    "bic",
    "zscore",
    "sens_score",
    "depletion_pval",
    "concentration_pval",
    "h_size",
    "h_sens",
    "pval",
    "K_components",
    "sample_size",
    "max_deficit",
    "is_conc_sig",
    "is_depl_sig",
    "is_joint_sig",
)

_EMBEDDING_ALIASES = {"pca": "X_pca", "umap": "X_umap", "tsne": "X_tsne", Key.SPATIAL: Key.SPATIAL}
_MIN_CELLS = 3
#: var columns that may hold gene symbols, in order of preference
_SYMBOL_COLUMNS = ("gene", "gene_symbol", "gene_symbols", "symbol", "gene_name", "feature_name")


def _resolve_embedding(adata: AnnData, embedding: str, n_dims: int | None) -> tuple[np.ndarray, str]:
    key = _EMBEDDING_ALIASES.get(embedding, embedding)
    if key not in adata.obsm and embedding == "pca":
        raise InvalidInputError(
            f"obsm['X_pca'] not found (available: {list(adata.obsm.keys())}); run scanpy.pp.pca(adata) "
            "first or pass embedding=<obsm key>."
        )
    emb = get_obsm(adata, key).astype(np.float64, copy=False)
    if n_dims is not None:
        n_dims = check_positive_int("n_dims", n_dims)
        if n_dims > emb.shape[1]:
            raise InvalidInputError(
                f"n_dims={n_dims} but obsm[{key!r}] has only {emb.shape[1]} columns; pass n_dims<={emb.shape[1]} "
                "(or n_dims=None to use all columns)."
            )
        emb = emb[:, :n_dims]
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise InvalidInputError(
            f"obsm[{key!r}] has {int(bad.sum())} cells with NaN/inf coordinates in the first {emb.shape[1]} "
            f"columns (e.g. {list(adata.obs_names[bad][:5])}); remove them first "
            f"(adata = adata[np.isfinite(adata.obsm[{key!r}]).all(1)].copy())."
        )
    return emb, key


def _single_thread_eigen() -> None:
    """Add ``--xla_cpu_multi_thread_eigen=false`` to ``XLA_FLAGS`` when JAX is not imported yet.

    XLA's CPU backend runs the many small matrix products of the batched EM through a multi-threaded
    Eigen pool besides its own per-op parallelism; on few cores the two pools oversubscribe them (runs
    several times slower, and hangs were seen on 2 cores). The flag is read when JAX starts its CPU
    backend, so it only takes effect when LOCAT is the first user of JAX in the process; a user's own
    ``XLA_FLAGS`` setting of it is never overridden (set ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=true``
    to keep Eigen's pool).
    """
    import os
    import sys

    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" in sys.modules or "xla_cpu_multi_thread_eigen" in flags:
        return
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()


def _background_weights(adata: AnnData, background_weights) -> np.ndarray:
    n = adata.n_obs
    if background_weights is None:
        return np.ones(n)
    if isinstance(background_weights, str):
        if background_weights not in adata.obs.columns:
            raise InvalidInputError(
                f"background_weights={background_weights!r} is not an obs column; pass an obs column name or an "
                f"array of {n} non-negative weights."
            )
        w = pd.to_numeric(adata.obs[background_weights], errors="coerce").to_numpy(np.float64)
    else:
        w = np.asarray(background_weights, dtype=np.float64).ravel()
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise InvalidInputError(
            f"background_weights must be {n} finite non-negative numbers (one per cell, not all 0); got shape "
            f"{w.shape}."
        )
    return w / w.mean()


def gene_symbols(adata: AnnData) -> np.ndarray:
    """The gene symbol of every var (object array): the first of ``var`` columns ``gene``,
    ``gene_symbol``, ``gene_symbols``, ``symbol``, ``gene_name``, ``feature_name`` present; the var name
    where there is none or it is missing."""
    ids = adata.var_names.astype(str)
    col = next((c for c in _SYMBOL_COLUMNS if c in adata.var.columns), None)
    if col is None:
        return np.asarray(ids, dtype=object)
    sym = adata.var[col].astype(object)
    return np.asarray(np.where(pd.isna(sym) | (sym.astype(str).str.strip() == ""), ids, sym.astype(str)), dtype=object)


def _gene_table_index(adata: AnnData) -> tuple[np.ndarray, pd.Index | None]:
    """Gene symbols for the ``gene_name`` column, and the table index when ``var`` holds symbols
    other than the var names (None: index by ``var_names``)."""
    ids = adata.var_names.astype(str)
    names = gene_symbols(adata)
    if np.array_equal(names.astype(str), np.asarray(ids)):
        return names, None
    from anndata.utils import make_index_unique

    return names, make_index_unique(pd.Index(names, name="gene"))


def _cyclic_gc_paused(fun):
    """Run ``fun`` with Python's cyclic garbage collector off (turned back on afterwards when it was on).

    A first call imports JAX and traces the per-gene kernel, which allocates hundreds of thousands of
    Python objects; each allocation burst triggers collections, and every full one walks all live objects of
    the process (JAX, pandas, anndata: ~200,000): ~0.2 s of CPU per first call on pbmc68k_reduced, spent
    finding no garbage. Objects are still freed by reference counting; reference cycles made during the call
    are collected by the next collection after it.
    """
    import functools
    import gc

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        if not gc.isenabled():
            return fun(*args, **kwargs)
        gc.disable()
        try:
            return fun(*args, **kwargs)
        finally:
            gc.enable()

    return wrapper


@_cyclic_gc_paused
def locat(
    adata: AnnData,
    *,
    embedding: str = "pca",
    n_dims: int | None = 8,
    layer: str | None = None,
    n_bootstrap_inits: int = 10,
    knn_mode: str = "connectivity",
    n_neighbors: int = 15,
    reg_covar: float | None = 1e-6,
    covariance_prior: float = 1.0,
    rc_lambda_values: Sequence[float] | np.ndarray = np.linspace(1.0, 2.0, 8),  # noqa: B008
    max_components: int | None = None,
    max_gene_components: int | None = 4,
    max_freq: float = 0.9,
    n_null_genes: int = 800,
    alpha: float = 0.05,
    seed: int | None = None,
    use_gpu: bool = True,
    batch_size: int | None = None,
    n_atoms: int | None = 256,
    background_weights: str | np.ndarray | None = None,
    n_splits: int = 1,
    key_added: str = "locat",
) -> pd.DataFrame:
    """Find genes concentrated in one region of a cell landscape and depleted elsewhere (LOCAT).

    The algorithm, its differences from the reference ``locat`` package and its speed and run-to-run
    stability are described in :mod:`experimat.methods.locat._locat`.

    Parameters
    ----------
    adata
        Cells x genes; expression values (log-normalised data recommended, as in the reference)
        are the cell weights; negative values are clipped to 0.
    embedding
        ``"pca"`` (``obsm['X_pca']``), ``"umap"``, ``"spatial"`` (``obsm['spatial']``) or any ``obsm`` key.
    n_dims
        Number of leading embedding columns to use; ``None`` uses all (use 2 for spatial coordinates).
    layer
        Layer with the expression values; ``None`` uses ``adata.X``.
    n_bootstrap_inits
        Starts of the background mixture of the chosen size; ``f0`` averages their densities (smoother
        than one fit, as the reference's average over random starts). The starts are deterministic: the
        principal-direction partition of the atoms, then weighted farthest-first seeds (the
        deterministic counterpart of k-means++) from different first atoms.
    knn_mode
        ``"connectivity"``: an expressing cell's weight is 0.05 x its value + 0.95 x the Gaussian-
        weighted mean value of its ``n_neighbors`` neighbours (zeros included): the local expression
        level around the cell, which varies less with sampling noise than the cell's own value (the
        reference weights by the cell's value, but z-scores from these weights rank genes more like
        it: against three reference seeds on pbmc68k_reduced, Spearman rho 0.60-0.64 / Jaccard of
        concentration-significant genes 0.44-0.49 with the values, 0.64-0.68 / 0.48-0.54 with
        half-and-half, 0.68-0.72 / 0.56-0.60 with this weighting); ``"binary"``: every expressing cell
        has weight 1 (0.57-0.62 / 0.38-0.43).
    n_neighbors
        Neighbours of the graph used by ``knn_mode="connectivity"``.
    reg_covar
        Added to the covariance diagonals (of the embedding standardised per axis); ``None`` derives it
        from the mean nearest-neighbour distance as the reference does when not given one (0.146 on
        pbmc68k_reduced). One floor for every component, whatever its number of cells: 0.146 broadens
        the tight components of well-sampled cell-type genes as much as those of genes seen in a few
        cells, and the top-50 z-scores move to broadly expressed genes (13 of them in 300-700 cells
        against 3 at 1e-6), so fewer of them are class markers (30-33 against 33-40 of 50;
        ``covariance_prior`` regularises by sample size instead; see ``benchmarks/locat.py``).
    covariance_prior
        Scale of a conjugate prior on each gene's mixture covariances (in units of the standardised
        embedding's per-axis variance): a component's covariance is the posterior mean
        ``(n_k S_k + s I) / (n_k + 1)`` under an inverse-Wishart prior with ``d + 2`` degrees of
        freedom and mean ``s I``, ``s = covariance_prior / K^(2/d)`` (mclust's default prior scale,
        Fraley & Raftery 2007: the data's variance shared among the ``K`` components), worth one
        cell; ``S_k`` is the component's weighted covariance and ``n_k`` its share of the gene's
        Kish effective number of expressing cells ``(sum w)^2 / sum w^2``. Components of a few cells are
        pulled to the prior, components of hundreds keep their own covariance (``reg_covar`` adds the
        same amount to all). On pbmc68k_reduced (our seeds 0-2 against reference seeds 0-2) 1.0 raised
        the Jaccard of concentration-significant genes from 0.527-0.565 to 0.557-0.600 and the class
        markers among the top-50 z from 33-40 to 46-47, calibration unchanged. ``0``: maximum-likelihood
        covariances (before this option). The background mixture (fitted on all cells) has no prior.
    rc_lambda_values
        Concentration factors ``lambda`` of the depletion scan (regions ``f0 > lambda f1``).
    max_components
        Largest background mixture tried; ``None`` tries 1..10 and extends while the BIC minimum is
        at the upper end (up to 30).
    max_gene_components
        Most components of a gene's mixture (the reference's rule ``floor(sqrt(k95 + 1)) + 1`` grows with
        the background's size; ``None``: no cap beyond the background size and cells/5). The reference's
        genes have at most 3 (its component labels, log densities averaged over unaligned random starts,
        leave most background components without cells: 4 of 9 on Zeisel); on Zeisel (3,005 cells, 386
        genes) with the background on split atoms (16 components) no cap gave 8 genes 5 components, a cap
        of 4 keeps Spearman rho of z against three reference runs at 0.66-0.72 when the background has
        16-20 components (0.56-0.67 uncapped at 18-20) with 14 of 50 class markers in the top 50; a cap of
        3 gave rho 0.66-0.69 but 11 markers. On pbmc68k_reduced (8 background components) it never binds.
    max_freq
        Genes expressed in more than this fraction of cells are not tested (NaN row).
    n_null_genes
        Permuted pseudo-genes of the concentration null (each costs ``1 / (1 + n_splits)`` of a gene).
    n_splits
        Random halvings of each gene's expressing cells for the cross-fitted depletion test; their
        p-values are Cauchy-combined (more halvings: a depletion p-value that varies less from run to
        run, at one extra mixture fit per gene each; on pbmc68k_reduced the depletion-significant genes of
        two seeds overlap at Jaccard 0.63 / 0.71 / 0.75 with 1 / 2 / 4 halvings; the default keeps the
        speed of a first call, where each halving adds about a quarter to the per-gene work).
    alpha
        Threshold for the ``is_*_sig`` columns.
    seed
        Random seed (``None``: ``em.settings.seed``) of the null pseudo-genes' permutations and the
        depletion halvings, the only random steps; seeded runs on the same device are reproducible.
    use_gpu
        Use a GPU through JAX when one is present.
    batch_size
        Genes per batch (every batch is padded to it, so JAX compiles once); ``None`` sizes batches
        to about 256 MB of working memory (at most 256 genes).
    n_atoms
        Cells are grouped once into this many k-means "atoms" of the embedding; every mixture (the
        background and each gene's) is fitted by EM on the atoms' weighted sufficient statistics
        (weight sum, weighted mean and within-atom scatter, which is added to the M-step
        covariances), so a fit costs ``n_atoms`` instead of ``n_cells`` points. Densities,
        scores and the depletion scan are still evaluated at every cell. ``None`` (or at least as
        many atoms as cells) fits on the cells themselves (exact EM, slower).
    background_weights
        Optional non-negative weight per cell (an ``obs`` column name or an array of length
        ``n_obs``) for the background mixture ``f0``, e.g. to down-weight over-sampled regions;
        ``None`` weights all cells equally.
    key_added
        Prefix of the ``var`` columns and the ``uns`` key.

    Returns
    -------
    pandas.DataFrame
        One row per gene, sorted by ``pval``, ``concentration_pval``, ``depletion_pval`` (untested genes
        last). The index is the gene symbol when ``var`` has a symbol column (the first of ``gene``,
        ``gene_symbol``, ``gene_symbols``, ``symbol``, ``gene_name``, ``feature_name`` present; repeated
        symbols made unique with ``-1``, ``-2``, ...; missing ones replaced by the var name), with the
        var names alongside in a last column ``gene_id``; otherwise the index is ``var_names``. Columns:

        - ``gene_name``: the gene's symbol (the var name when there is none);
        - ``bic``: BIC of the gene's mixture on its expressing cells, per cell
          ((d(d+3)/2 K log m - 2 sum log f1) / m; the reference sums densities instead of log
          densities here, so the two are not comparable);
        - ``zscore``: concentration z-score against the permuted null smoothed in ``p`` (the ranking);
        - ``sens_score``: fraction of expressing cells where ``f1 > f0``;
        - ``depletion_pval``: cross-fitted depletion scan p-value (Sidak over tested lambdas, 1 when no
          region qualifies);
        - ``concentration_pval``: one-sided p-value against the null at the gene's expression level;
        - ``h_size``: size penalty ``1 - exp(-1 / (m + 1))``;
        - ``h_sens``: sensitivity penalty ``1 - sens_score``;
        - ``pval``: combined p-value (Cauchy combination with the two penalties);
        - ``K_components``: components of the gene's mixture;
        - ``sample_size``: number of expressing cells ``m``;
        - ``max_deficit``: largest (expected - observed) fraction of held-out expressing cells over the
          scanned regions;
        - ``is_conc_sig``, ``is_depl_sig``, ``is_joint_sig``: ``concentration_pval``,
          ``depletion_pval``, ``pval`` < ``alpha``.

        Genes that cannot be tested (all zero, expressed in < 3 cells, or in more than ``max_freq`` of
        cells) get NaN values, ``False`` flags, and the reason in ``var[f"{key_added}.reason"]``.
        Columns are also written to ``var[f"{key_added}.{column}"]``; parameters and the background
        fit summary to ``uns[key_added]``.

    Examples
    --------
    >>> import numpy as np, scanpy as sc, experimat as em
    >>> adata = sc.datasets.pbmc68k_reduced()
    >>> df = em.methods.locat.locat(adata, embedding="pca", n_dims=8)  # doctest: +SKIP
    >>> df.loc[df.is_joint_sig, ["gene_name", "zscore", "pval"]].head()  # doctest: +SKIP
    """
    params = _check_params(
        embedding=embedding, n_dims=n_dims, layer=layer, n_bootstrap_inits=n_bootstrap_inits, knn_mode=knn_mode,
        n_neighbors=n_neighbors, reg_covar=reg_covar, covariance_prior=covariance_prior,
        rc_lambda_values=rc_lambda_values,
        max_components=max_components, max_gene_components=max_gene_components, max_freq=max_freq,
        n_null_genes=n_null_genes, alpha=alpha, seed=seed,
        batch_size=batch_size, n_atoms=n_atoms, background_weights=background_weights, n_splits=n_splits,
    )  # fmt: skip
    p = params
    _single_thread_eigen()
    jax = import_optional("jax", purpose="LOCAT")
    from . import _gmm
    from ._background import fit_background
    from ._genes import Landscape, score_items
    from ._prep import atoms, background_atoms, geometry, item_weights, n_components, neighbour_operator

    start = logger.info(f"LOCAT on {adata.n_obs} cells x {adata.n_vars} genes")
    emb, emb_key = _resolve_embedding(adata, embedding, n_dims)
    n = emb.shape[0]
    if n < 20:
        raise InvalidInputError(f"LOCAT needs at least 20 cells; got {n}.")
    emb = (emb - emb.mean(0)) / (emb.std(0) + 1e-6)
    bw = _background_weights(adata, background_weights)
    X = _expression(adata, layer)
    reason = _untested_reason(X, p["max_freq"])
    eligible = np.flatnonzero(reason == "")
    geo = geometry(emb, p["n_neighbors"], reg_covar)
    device = jax_device(use_gpu)

    t_bg = logger.info("LOCAT: background mixture (BIC over components)")
    atom, centres = atoms(emb, p["n_atoms"])
    atom_sums = _gmm.AtomSums(emb, atom, centres)
    bg_atom, bg_centres = background_atoms(emb, atom, centres)
    bg_sums = atom_sums if bg_centres is centres else _gmm.AtomSums(emb, bg_atom, bg_centres)
    bg = fit_background(emb, bg_centres, bg_sums, bw, geo.reg, p["max_components"], p["n_bootstrap_inits"])
    logger.info(f"LOCAT: background uses {bg.k} components ({bg_centres.shape[0]} atoms)", time=t_bg)

    C = neighbour_operator(geo, p["knn_mode"], p["n_neighbors"])
    Wi, items_gene = item_weights(X, eligible, C, p["n_null_genes"], np.random.default_rng(p["seed"]))
    results = {}
    if Wi.shape[1]:
        ncomp = n_components(Wi, geo.close, bg.cell_labels, bg.k, p["max_gene_components"])
        ls = Landscape(
            emb=emb, centres=centres, atom_sums=atom_sums,
            logf0=bg.logf0, reg=geo.reg, lambdas=p["rc_lambda_values"], prior_var=p["covariance_prior"],
            device=jax.devices(device)[0],
        )  # fmt: skip
        results = score_items(
            Wi, ncomp, ls, n_splits=p["n_splits"], seed=p["seed"], batch_size=p["batch_size"], is_null=items_gene < 0
        )
        m = np.diff(Wi.indptr).astype(np.float64)
        d = emb.shape[1]
        results["bic"] = (d * (d + 3) / 2 * ncomp * np.log(m) - 2.0 * results.pop("llsum")) / m
        results["ncomp"], results["m"] = ncomp, m

    out_df, null_summary = _table(adata, results, items_gene, n, p["alpha"])
    for col in COLUMNS:
        adata.var[f"{key_added}.{col}"] = _in_var_order(out_df, adata)[col].to_numpy()
    adata.var[f"{key_added}.reason"] = reason.astype(str)
    n_tested = int((items_gene >= 0).sum())
    store_params(
        adata, key_added, params,
        embedding_key=emb_key, n_background_components=bg.k, n_background_atoms=int(bg_centres.shape[0]),
        reg_covar_used=geo.reg,
        n_tested=n_tested, n_untested=int(adata.n_vars - n_tested), device=device, **null_summary,
    )  # fmt: skip
    logger.info(
        f"LOCAT: {n_tested} genes tested ({int(out_df['is_joint_sig'].sum())} joint-significant at {p['alpha']:g})",
        time=start,
    )
    return out_df


def _check_params(**p) -> dict:
    """Validate LOCAT's parameters; returns the record stored in ``uns`` (validated values, resolved seed)."""
    p["knn_mode"] = check_choice("knn_mode", p["knn_mode"], ("connectivity", "binary"))
    p["n_bootstrap_inits"] = check_positive_int("n_bootstrap_inits", p["n_bootstrap_inits"])
    p["n_neighbors"] = check_positive_int("n_neighbors", p["n_neighbors"])
    p["n_null_genes"] = check_positive_int("n_null_genes", p["n_null_genes"], minimum=20)
    p["n_splits"] = check_positive_int("n_splits", p["n_splits"])
    for key, minimum in (("max_components", 1), ("max_gene_components", 1), ("batch_size", 1), ("n_atoms", 2)):
        if p[key] is not None:
            p[key] = check_positive_int(key, p[key], minimum=minimum)
    reg_covar = p["reg_covar"]
    if reg_covar is not None and not (np.isfinite(reg_covar) and reg_covar >= 0):
        raise InvalidInputError(f"reg_covar must be a non-negative number or None; got {reg_covar!r}.")
    prior = p["covariance_prior"]
    if not (isinstance(prior, (int, float, np.number)) and np.isfinite(prior) and prior >= 0):
        raise InvalidInputError(f"covariance_prior must be a non-negative number (0: no prior); got {prior!r}.")
    p["covariance_prior"] = float(prior)
    lambdas = np.asarray(p["rc_lambda_values"], dtype=np.float64).ravel()
    if lambdas.size == 0 or not np.all(np.isfinite(lambdas)) or np.any(lambdas <= 0):
        raise InvalidInputError(f"rc_lambda_values must be positive finite numbers; got {p['rc_lambda_values']!r}.")
    p["rc_lambda_values"] = lambdas
    if not (0 < float(p["max_freq"]) <= 1):
        raise InvalidInputError(f"max_freq must be in (0, 1]; got {p['max_freq']!r}.")
    p["seed"] = settings.seed if p["seed"] is None else int(p["seed"])
    bw = p["background_weights"]
    p["background_weights"] = None if bw is None else (bw if isinstance(bw, str) else "array")
    return p


def _expression(adata: AnnData, layer: str | None):
    """The expression matrix as float64 CSC with negative values clipped to 0."""
    import scipy.sparse as sp

    X = get_matrix(adata, layer)
    X = sp.csc_matrix(X) if sp.issparse(X) else sp.csc_matrix(np.asarray(X))
    X = X.astype(np.float64)
    if X.nnz and not np.all(np.isfinite(X.data)):
        raise InvalidInputError("the expression matrix has NaN/inf values; fix or remove them first.")
    X.data = np.clip(X.data, 0.0, None)
    X.eliminate_zeros()
    return X


def _untested_reason(X, max_freq: float) -> np.ndarray:
    """Why each gene is not tested ("" for the genes that are)."""
    n = X.shape[0]
    n_expr = np.diff(X.indptr)
    reason = np.full(X.shape[1], "", dtype=object)
    reason[n_expr == 0] = "not expressed"
    reason[(n_expr > 0) & (n_expr < _MIN_CELLS)] = f"expressed in fewer than {_MIN_CELLS} cells"
    reason[(n_expr >= _MIN_CELLS) & (n_expr > float(max_freq) * n)] = f"expressed in more than {max_freq:g} of cells"
    return reason


def _table(adata: AnnData, results: dict, items_gene: np.ndarray, n: int, alpha: float) -> tuple[pd.DataFrame, dict]:
    """The result table (15 columns, sorted) from the items' scores: null model, z-scores, combination."""
    from ._null import LocalNull, NullModel, combine

    names, index = _gene_table_index(adata)
    out = pd.DataFrame(index=adata.var_names.copy())
    out["gene_name"] = names
    for col in COLUMNS[1:12]:
        out[col] = np.nan
    is_null = items_gene < 0
    real = ~is_null
    null_summary: dict = {"n_null_genes": 0}
    if real.any():
        lf = np.log10(results["m"] / n)
        null = NullModel(lf[is_null], results["raw"][is_null])
        local = LocalNull(lf[is_null], results["raw"][is_null], results["ncomp"][is_null])
        r = {k: v[real] for k, v in results.items()}
        vals = combine(r["raw"], r["m"], r["ncomp"], r["sens"], r["pdep"], null, local, n)
        vals.update(
            bic=results["bic"][real], K_components=results["ncomp"][real], sample_size=results["m"][real],
            max_deficit=results["maxdef"][real],
        )  # fmt: skip
        gi = items_gene[real]
        for col, v in vals.items():
            arr = out[col].to_numpy(dtype=np.float64, copy=True)
            arr[gi] = v
            out[col] = arr
        null_summary = {"n_null_genes": int(is_null.sum()), "bandwidth_log10": null.h}
    out["is_conc_sig"] = (out["concentration_pval"] < alpha).to_numpy()
    out["is_depl_sig"] = (out["depletion_pval"] < alpha).to_numpy()
    out["is_joint_sig"] = (out["pval"] < alpha).to_numpy()
    out = out[list(COLUMNS)]
    if index is not None:
        out["gene_id"] = out.index.astype(str)
        out.index = index
    out = out.sort_values(["pval", "concentration_pval", "depletion_pval"], na_position="last", kind="stable")
    return out, null_summary


def _in_var_order(table: pd.DataFrame, adata: AnnData) -> pd.DataFrame:
    """The result table in ``var`` order (whichever index it shows)."""
    if "gene_id" in table.columns:
        return table.set_index("gene_id").reindex(adata.var_names.astype(str))
    return table.reindex(adata.var_names)
