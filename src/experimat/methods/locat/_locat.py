"""LOCAT: genes concentrated in one region of a cell landscape and depleted elsewhere (JAX).

A re-implementation of the method of the ``locat`` package (Kluger lab), written from its
description and source; see :func:`locat` for the algorithm and where it deliberately differs
(calibrated nulls).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experimat._errors import InvalidInputError
from experimat._logging import ProgressBar, logger
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

_EMBEDDING_ALIASES = {"pca": "X_pca", "umap": "X_umap", "tsne": "X_tsne", "spatial": "spatial"}
_MIN_CELLS = 3
_EPS_P = 1e-15


def _safe_p(p):
    p = np.asarray(p, dtype=np.float64)
    return np.clip(np.where(np.isfinite(p), p, 1.0 - _EPS_P), _EPS_P, 1.0 - _EPS_P)


def cauchy_combine(p1, p2):
    """Cauchy combination (Liu & Xie 2020) of two p-values with equal weights, elementwise."""
    p1, p2 = _safe_p(p1), _safe_p(p2)
    t = 0.5 * (np.tan((0.5 - p1) * np.pi) + np.tan((0.5 - p2) * np.pi))
    return _safe_p(0.5 - np.arctan(t) / np.pi)


def _smooth_q(x):
    """The reference's smooth squashing of p-values above 0.99 (keeps the order, stays < 1)."""
    return np.where(x <= 0.99, x, 1 - 0.01 / (1 + 100 * (x - 0.99) + 10000 * (x - 0.99) ** 2))


class _NullModel:
    """Null of the raw concentration score as a smooth function of log10(expressing fraction).

    Centre and scale come from kernel-weighted quantiles of the permuted pseudo-genes' scores:
    ``centre = q50``, ``scale = (q95 - q50) / 1.645``. The test is one-sided, so the scale is
    read from the upper half of the null, which the lower tail (pseudo-genes that happened to get
    fewer mixture components) does not inflate.
    """

    def __init__(self, log_frac: np.ndarray, raw: np.ndarray, bandwidth: float = 0.15):
        ok = np.isfinite(raw) & np.isfinite(log_frac)
        if int(ok.sum()) < 5:
            raise InvalidInputError("too few null pseudo-genes could be scored to calibrate LOCAT.")
        o = np.argsort(raw[ok])
        self.x = log_frac[ok][o]
        self.y = raw[ok][o]
        self.h = bandwidth

    def _quantiles(self, log_frac, qs):
        e = np.asarray(log_frac, float)
        out = np.empty((len(qs), e.size))
        for s0 in range(0, e.size, 2048):
            ee = e[s0 : s0 + 2048]
            k = np.exp(-0.5 * ((ee[:, None] - self.x[None, :]) / self.h) ** 2) + 1e-12
            c = np.cumsum(k, axis=1)
            c /= c[:, -1:]
            for i, q in enumerate(qs):
                j = np.argmax(c >= q, axis=1)
                out[i, s0 : s0 + 2048] = self.y[j]
        return out

    def center_scale(self, log_frac):
        q50, q95 = self._quantiles(log_frac, (0.5, 0.95))
        return q50, np.maximum((q95 - q50) / 1.6448536, 1e-12)


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


def _gene_names(adata: AnnData) -> np.ndarray:
    if "gene" in adata.var.columns:
        sym = adata.var["gene"].astype(object)
        names = np.where(pd.isna(sym), adata.var_names.astype(str), sym.astype(str))
        return np.asarray(names, dtype=object)
    return np.asarray(adata.var_names.astype(str), dtype=object)


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
    rc_lambda_values: Sequence[float] | np.ndarray = np.linspace(1.0, 2.0, 8),  # noqa: B008
    max_components: int | None = None,
    max_freq: float = 0.9,
    n_null_genes: int = 400,
    alpha: float = 0.05,
    seed: int | None = None,
    use_gpu: bool = True,
    batch_size: int | None = None,
    n_atoms: int | None = 256,
    background_weights: str | np.ndarray | None = None,
    key_added: str = "locat",
) -> pd.DataFrame:
    """Find genes concentrated in one region of a cell landscape and depleted elsewhere (LOCAT).

    The landscape is an embedding (PCA, UMAP, or spatial coordinates) standardised per axis.

    1. **Background.** The density of all cells, ``f0``, is a Gaussian mixture whose number of
       components is chosen by BIC over 1..``max_components``; every candidate is fitted by EM from
       ``n_bootstrap_inits`` random weighted k-means++ initialisations (the best likelihood is kept,
       and ``f0`` averages the densities of all initialisations of the chosen size).
    2. **Per gene** (in memory-sized batches, ``jax.vmap`` over genes): a weighted mixture ``f1`` over
       the expressing cells (weights from expression, see ``knn_mode``); its number of components
       follows the reference rule (how many background components hold 95 % of the expressing
       cells that have an expressing neighbour within 3x the mean nearest-neighbour distance,
       ``floor(sqrt(k + 1)) + 1``, capped by the background size and cells/5).
    3. **Concentration.** The weighted mean over expressing cells of the likelihood-ratio score
       ``sqrt(p)(1 - sqrt(p)) (f1 - f0) / (f1 + f0)`` (``p``: expressing fraction) is turned into a
       z-score against ``n_null_genes`` permuted pseudo-genes (real genes with their values permuted
       across cells, so their weights look like real genes' weights); the null centre (median) and
       scale ((q95 - q50) / 1.645, robust to the lower tail) are kernel-weighted quantiles in
       log10 ``p``. ``concentration_pval`` is the normal upper tail.
    4. **Depletion.** The expressing cells are split at random in two halves; ``f1`` refitted on
       half A defines, for each ``lambda`` in ``rc_lambda_values``, the region ``f0 > lambda f1``.
       The number of half-B cells in that region (among cells not in A) is compared with its
       hypergeometric expectation under random placement (lower tail); regions holding < 10 % of
       the cells or < 3 expected B cells are skipped, the smallest p over the scan is Sidak
       corrected. Cross-fitting makes this test valid under permutation (the reference tests the
       same cells it fitted, which makes almost every gene significant).
    5. **Combination** as the reference: Cauchy combination of the two p-values, then
       ``pval = 1 - (1 - p_cauchy)(1 - 0.05 h_size)(1 - 0.12 h_sens)`` squashed above 0.99. The
       sensitivity penalty bounds ``pval`` below by ``0.12 (1 - sens_score)``, so broadly expressed
       genes (``sens_score`` < 0.6) are rarely jointly significant at 0.05 even when both tests are.

    The reference's ``knn_mode`` does not change its scan (its neighbour graph is unused there);
    here it chooses the cell weights as documented below.

    **Speed.** Every mixture is fitted by EM on ``n_atoms`` k-means atoms of the embedding rather than
    on the cells: each gene's weights are summed per atom into weighted sufficient statistics (weight,
    mean, within-atom scatter; one batched matrix product on the host) and EM runs on those (exact
    EM for grouped data: the E-step uses the expected log density over the atom, the M-step adds the
    within-atom scatter), so a fit costs ``n_atoms`` points whatever the number of cells. EM starts
    from one M-step on the hard assignment to weighted k-means++ centres and stops after at most 25
    steps (change of the mean log-likelihood bound < 1e-4); densities, scores and the depletion scan
    are evaluated at every cell. Genes run in batches of one fixed size (the last one padded), so JAX
    compiles one kernel per call (on CPU, for small problems, without XLA's MLIR fusion emitters,
    which compile it more slowly and run it no faster on small arrays); the background fits (a few dozen, on the atoms of all cells) run in
    NumPy on the host, which is cheaper than compiling them. On CPU,
    JAX is started with ``--xla_cpu_multi_thread_eigen=false`` appended to ``XLA_FLAGS`` when LOCAT is
    the first to import JAX and the flag is not already set (on few cores Eigen's thread pool and
    XLA's own oversubscribe them); set the flag yourself to override.

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
        Random initialisations per candidate background mixture.
    knn_mode
        ``"connectivity"``: an expressing cell's weight is the mean of its value and the
        neighbour-graph-weighted mean of its ``n_neighbors`` neighbours' values; ``"binary"``: every
        expressing cell has weight 1.
    n_neighbors
        Neighbours of the graph used by ``knn_mode="connectivity"``.
    reg_covar
        Added to the covariance diagonals; ``None`` derives it from the mean nearest-neighbour
        distance as the reference does.
    rc_lambda_values
        Concentration factors ``lambda`` of the depletion scan (regions ``f0 > lambda f1``).
    max_components
        Largest background mixture tried; ``None`` tries 1..10 and extends while the BIC minimum is
        at the upper end (up to 30).
    max_freq
        Genes expressed in more than this fraction of cells are not tested (NaN row).
    n_null_genes
        Permuted pseudo-genes used to calibrate the concentration z-score.
    alpha
        Threshold for the ``is_*_sig`` columns.
    seed
        Random seed (``None``: ``em.settings.seed``); seeded runs on the same device are reproducible.
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
        One row per gene (index: ``var_names``), sorted by ``pval``, ``concentration_pval``,
        ``depletion_pval`` (untested genes last), with columns

        - ``gene_name``: symbol from ``var['gene']`` when present, else the var name;
        - ``bic``: BIC of the gene's mixture on its expressing cells, per cell
          ((d(d+3)/2 K log m - 2 sum log f1) / m; the reference sums densities instead of log
          densities here, so the two are not comparable);
        - ``zscore``: concentration z-score against the permuted null;
        - ``sens_score``: fraction of expressing cells where ``f1 > f0``;
        - ``depletion_pval``: cross-fitted depletion scan p-value (Sidak over tested lambdas, 1 when no
          region qualifies);
        - ``concentration_pval``: one-sided normal p-value of ``zscore``;
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
    import scipy.sparse as sp

    _single_thread_eigen()
    jax = import_optional("jax", purpose="LOCAT")
    jnp = jax.numpy
    from . import _gmm

    knn_mode = check_choice("knn_mode", knn_mode, ("connectivity", "binary"))
    n_bootstrap_inits = check_positive_int("n_bootstrap_inits", n_bootstrap_inits)
    n_neighbors = check_positive_int("n_neighbors", n_neighbors)
    n_null_genes = check_positive_int("n_null_genes", n_null_genes, minimum=20)
    if max_components is not None:
        max_components = check_positive_int("max_components", max_components)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    if n_atoms is not None:
        n_atoms = check_positive_int("n_atoms", n_atoms, minimum=2)
    if reg_covar is not None and not (np.isfinite(reg_covar) and reg_covar >= 0):
        raise InvalidInputError(f"reg_covar must be a non-negative number or None; got {reg_covar!r}.")
    lambdas = np.asarray(rc_lambda_values, dtype=np.float64).ravel()
    if lambdas.size == 0 or not np.all(np.isfinite(lambdas)) or np.any(lambdas <= 0):
        raise InvalidInputError(f"rc_lambda_values must be positive finite numbers; got {rc_lambda_values!r}.")
    if not (0 < float(max_freq) <= 1):
        raise InvalidInputError(f"max_freq must be in (0, 1]; got {max_freq!r}.")
    seed = settings.seed if seed is None else int(seed)
    params = {
        "embedding": embedding, "n_dims": n_dims, "layer": layer, "n_bootstrap_inits": n_bootstrap_inits,
        "knn_mode": knn_mode, "n_neighbors": n_neighbors, "reg_covar": reg_covar,
        "rc_lambda_values": lambdas, "max_components": max_components, "max_freq": max_freq,
        "n_null_genes": n_null_genes, "alpha": alpha, "seed": seed, "batch_size": batch_size,
        "n_atoms": n_atoms, "background_weights": None if background_weights is None else (
            background_weights if isinstance(background_weights, str) else "array"),
    }  # fmt: skip

    start = logger.info(f"LOCAT on {adata.n_obs} cells x {adata.n_vars} genes")
    emb, emb_key = _resolve_embedding(adata, embedding, n_dims)
    n, d = emb.shape
    if n < 20:
        raise InvalidInputError(f"LOCAT needs at least 20 cells; got {n}.")
    emb = (emb - emb.mean(0)) / (emb.std(0) + 1e-6)
    bw = _background_weights(adata, background_weights)

    X = get_matrix(adata, layer)
    X = sp.csc_matrix(X) if sp.issparse(X) else sp.csc_matrix(np.asarray(X))
    X = X.astype(np.float64)
    if X.nnz and not np.all(np.isfinite(X.data)):
        raise InvalidInputError("the expression matrix has NaN/inf values; fix or remove them first.")
    X.data = np.clip(X.data, 0.0, None)
    X.eliminate_zeros()
    G = X.shape[1]

    # ------------------------------------------------------------------ geometry
    from sklearn.neighbors import NearestNeighbors

    k_geo = min(max(n_neighbors, 50) + 1, n)
    nn = NearestNeighbors(n_neighbors=k_geo).fit(emb)
    dist, ind = nn.kneighbors(emb)
    dist, ind = dist[:, 1:], ind[:, 1:]
    pos = np.where(dist > 0, dist, np.inf)
    min_dist = float(np.mean(np.min(pos, axis=1)[np.isfinite(np.min(pos, axis=1))])) if np.isfinite(pos).any() else 1.0
    if reg_covar is None:
        reg = max((min_dist ** (2 / d)) / 6, 1e-4)
    else:
        reg = float(reg_covar)
    reg = max(reg, 1e-6)  # float32 EM needs a floor
    radius = 3.0 * min_dist
    close = sp.csr_matrix(
        ((dist < radius).ravel().astype(np.float64), (np.repeat(np.arange(n), ind.shape[1]), ind.ravel())),
        shape=(n, n),
    )
    close.eliminate_zeros()

    device = jax_device(use_gpu)
    dev = jax.devices(device)[0]
    dtype = np.float32
    emb_j = jax.device_put(jnp.asarray(emb, dtype), dev)
    rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------ atoms
    t_bg = logger.info("LOCAT: background mixture (BIC over components)")
    atom, centres = _atoms(emb, n_atoms, seed)
    n_at = centres.shape[0]
    atom_sums = _gmm.AtomSums(emb, atom, centres)
    centres_j = jax.device_put(jnp.asarray(centres, dtype), dev)

    def _agg(w_rows):
        """Per-atom weighted feature sums of the rows of a (genes x cells) weight matrix."""
        return jax.device_put(jnp.asarray(atom_sums(np.asarray(w_rows, dtype))), dev)

    # ------------------------------------------------------------------ background mixture
    bic_cost = d * (d + 3) / 2
    n_scan_inits = min(3, n_bootstrap_inits)
    agg_bg = atom_sums(bw[None, :].astype(dtype)).astype(np.float64)
    s_bg, mean_bg, scat_bg = (o[0] for o in _gmm.group_stats_np(agg_bg, centres))
    bw_norm = bw / bw.sum()

    def _fit_rows(ks_rows: np.ndarray, k_slots: int, n_rows: int, salt: int):
        """Fit background mixtures with ks_rows[i] components (NumPy, on the host: these few fits on
        the atoms are cheaper than compiling them); the k-means++ uniforms are drawn per block of
        ``n_rows`` rows with ``k_slots`` columns. Returns the weighted mean log density of the cells
        under each fit, the log densities ``(rows, n)`` and the parameters."""
        u = np.concatenate(
            [
                np.random.default_rng([seed, salt + s0]).random((n_rows, k_slots))[: min(n_rows, ks_rows.size - s0)]
                for s0 in range(0, ks_rows.size, n_rows)
            ]
        )
        k_used = int(ks_rows.max())
        act = np.arange(k_used)[None, :] < ks_rows[:, None]
        pi, mu, chol = _gmm.fit_grouped_batch_np(
            u[:, :k_used], s_bg, mean_bg, scat_bg, act, float(dtype(reg)), max_iter=150, tol=1e-5
        )
        lp = _gmm.batch_logpdf_np(emb, pi, mu, chol, act)  # (rows, n)
        return lp @ bw_norm, lp, (pi, mu, chol, act)

    # background fits: uniforms drawn in blocks of _BG_ROWS rows x k_cap slots (reproducible draws)
    k_cap = max_components if max_components is not None else min(30, max(1, n // 10))
    lo, hi = 1, (k_cap if max_components is not None else min(10, k_cap))
    all_k, all_ll = [], []
    while True:
        ks = np.repeat(np.arange(lo, hi + 1), n_scan_inits)
        ll, _, _ = _fit_rows(ks, k_cap, _BG_ROWS, 1000 * hi)
        all_k.extend(np.arange(lo, hi + 1).tolist())
        all_ll.append(ll.reshape(-1, n_scan_inits))
        best_ll = np.concatenate(all_ll, axis=0).max(axis=1)
        bic = bic_cost * np.asarray(all_k) * np.log(n) - 2.0 * n * best_ll
        k_best = int(np.asarray(all_k)[int(np.argmin(bic))])
        if max_components is not None or k_best < hi - 1 or hi >= k_cap:
            break
        lo, hi = hi + 1, min(hi + 5, k_cap)
    # the chosen size, refitted from n_bootstrap_inits initialisations: f0 averages their densities,
    # background component labels come from the best one
    ll_k, lp, params_k = _fit_rows(np.full(n_bootstrap_inits, k_best), k_cap, _BG_ROWS, 7)  # lp: (inits, n)
    ibest = int(np.argmax(ll_k))
    _pi, mu, chol, act_b = (p_[ibest] for p_ in params_k)
    bg_assign = _gmm.component_argmax_np(emb, mu, chol, act_b)
    m_ = lp.max(axis=0)
    logf0 = m_ + np.log(np.mean(np.exp(lp - m_[None, :]), axis=0))
    logger.info(f"LOCAT: background uses {k_best} components ({n_at} atoms)", time=t_bg)

    # ------------------------------------------------------------------ gene eligibility
    n_expr = np.diff(X.indptr)
    reason = np.full(G, "", dtype=object)
    reason[n_expr == 0] = "not expressed"
    reason[(n_expr > 0) & (n_expr < _MIN_CELLS)] = f"expressed in fewer than {_MIN_CELLS} cells"
    reason[(n_expr >= _MIN_CELLS) & (n_expr > float(max_freq) * n)] = f"expressed in more than {max_freq:g} of cells"
    eligible = np.flatnonzero(reason == "")

    # weights per gene (columns of a CSC matrix, values on expressing cells only)
    if knn_mode == "connectivity":
        kk = min(n_neighbors, ind.shape[1])
        di, ii = dist[:, :kk], ind[:, :kk]
        sig = np.maximum(di[:, -1:], 1e-12)
        cw = np.exp(-((di / sig) ** 2))
        cw = cw / np.maximum(cw.sum(axis=1, keepdims=True), 1e-12)
        C = sp.csr_matrix((cw.ravel(), (np.repeat(np.arange(n), kk), ii.ravel())), shape=(n, n))
        pattern = X.copy()
        pattern.data = np.ones_like(pattern.data)
        W = sp.csc_matrix(0.5 * X + 0.5 * sp.csc_matrix(C @ X).multiply(pattern))
        W.eliminate_zeros()
    else:
        W = X.copy()
        W.data = np.ones_like(W.data)
    W.sort_indices()

    # ------------------------------------------------------------------ null pseudo-genes
    # items: the eligible genes, then n_null_genes permuted pseudo-genes (columns of one CSC matrix)
    raise_all = eligible.size == 0
    items_gene = eligible.astype(int).tolist()  # gene index, or -1 for a null pseudo-gene
    Wi = W[:, eligible]
    if not raise_all:
        order = eligible[np.argsort(n_expr[eligible], kind="stable")]
        picks = order[
            np.minimum((np.arange(n_null_genes) + 0.5) / n_null_genes * order.size, order.size - 1).astype(int)
        ]
        Xp = X[:, picks].tocoo()
        perms = np.argsort(rng.random((picks.size, n)), axis=1)  # one permutation of the cells per pseudo-gene
        # cell i of the pseudo-gene takes the value of cell perm[i]: the value at cell c moves to inv[c]
        inv = np.argsort(perms, axis=1)
        Xn = sp.csc_matrix((Xp.data, (inv[Xp.col, Xp.row], Xp.col)), shape=(n, picks.size))
        if knn_mode == "connectivity":
            pat = Xn.copy()
            pat.data = np.ones_like(pat.data)
            Wn = sp.csc_matrix(0.5 * Xn + 0.5 * sp.csc_matrix(C @ Xn).multiply(pat))
        else:
            Wn = Xn.copy()
            Wn.data = np.ones_like(Wn.data)
        Wn.eliminate_zeros()
        Wi = sp.hstack([Wi, Wn], format="csc")
        items_gene += [-1] * picks.size
    Wi.sort_indices()

    n_items = len(items_gene)
    results = {k: np.full(n_items, np.nan) for k in ("raw", "sens", "bic", "ncomp", "m", "pdep", "maxdef")}
    if n_items:
        # ---------------------------------------------------------- per-item number of components
        m_arr = np.diff(Wi.indptr)
        E = Wi.copy()
        E.data = np.ones_like(E.data)
        near = (close @ E).tocsc()
        near.data = (near.data > 0).astype(np.float64)
        incl = E.multiply(near).tocsc()
        incl.eliminate_zeros()
        onehot = sp.csr_matrix((np.ones(n), (bg_assign, np.arange(n))), shape=(k_best, n))
        counts = np.asarray((onehot @ incl).todense())  # (k_bg, items)
        ncomp = np.ones(n_items, dtype=int)
        for i in range(n_items):
            if m_arr[i] <= 5:
                continue
            c = counts[:, i].copy()
            n_counts = c.sum()
            c[c < 5] = 0
            if c.sum() < 10:
                continue
            frac = np.sort(c / c.sum())[::-1]
            k95 = int(np.min(np.flatnonzero(np.cumsum(frac) > 0.95))) + 1
            est = int(np.floor(np.sqrt(k95 + 1)) + 1)
            ncomp[i] = int(max(1, min(k_best, n_counts / 5, est)))
        k_slots = int(ncomp.max())

        # ---------------------------------------------------------- batched fits (one compiled shape)
        n_lam = lambdas.size
        log_lam = jnp.asarray(np.log(lambdas), dtype)
        logf0_j = jax.device_put(jnp.asarray(logf0, dtype), dev)
        item_u = np.random.default_rng([seed, 7]).random((n_items, 2, k_slots))  # k-means++ draws, per item
        if batch_size is not None:
            gb = batch_size
        else:
            budget = 256 * 2**20 / 4  # float32 elements of working memory per batch
            per_item = n * (2 * (1 + d + d * d) + 2 * n_lam + 4 * k_slots + 8) + 2 * n_at * k_slots * d * d * 4
            gb = int(max(1, min(256, budget // per_item, n_items)))
            gb = 1 << math.floor(math.log2(gb))
        batches = [np.arange(i0, min(i0 + gb, n_items)) for i0 in range(0, n_items, gb)]
        fold_rng = np.random.default_rng(seed + 1)
        fast_compile = n * n_items <= _FAST_COMPILE_MAX_WORK
        with ProgressBar(len(batches), description="LOCAT genes") as bar:
            for sel in batches:
                nb = sel.size
                wts = np.zeros((gb, n), dtype=dtype)
                wts[:nb] = Wi[:, sel].toarray().T
                wts[nb:, :3] = 1.0  # padding rows: any valid gene
                valid = wts > 0
                ina = valid & (fold_rng.random((gb, n)) < 0.5)  # random half A of the expressing cells
                na = ina.sum(axis=1)
                act = np.zeros((gb, k_slots), dtype=bool)
                act_a = np.zeros((gb, k_slots), dtype=bool)
                kk = np.ones(gb, dtype=int)
                kk[:nb] = ncomp[sel]
                act[np.arange(k_slots)[None, :] < kk[:, None]] = True
                ka = np.maximum(1, np.minimum(kk, na // 5))
                act_a[np.arange(k_slots)[None, :] < ka[:, None]] = True
                u = np.full((2, gb, k_slots), 0.5)
                u[:, :nb] = item_u[sel].transpose(1, 0, 2)
                agg = _agg(np.concatenate([wts, np.where(ina, wts, 0)]))
                out = _batch_scores(
                    fast_compile,
                    emb_j, logf0_j, agg, centres_j, jnp.asarray(wts),
                    jnp.asarray(ina),
                    jnp.asarray(act), jnp.asarray(act_a), jnp.asarray(u.reshape(2 * gb, k_slots), dtype), dtype(reg), log_lam,
                )  # fmt: skip
                raw, sens, llsum, k_r, k_b = (np.asarray(o, np.float64)[:nb] for o in out)
                mm = m_arr[sel].astype(np.float64)
                results["raw"][sel] = raw
                results["sens"][sel] = sens
                results["bic"][sel] = (bic_cost * ncomp[sel] * np.log(mm) - 2.0 * llsum) / mm
                results["ncomp"][sel] = ncomp[sel]
                results["m"][sel] = mm
                # depletion scan (cross-fitted, hypergeometric lower tail)
                pdep, maxdef = _depletion_pvalues(k_r, k_b, mm - na[:nb], n - na[:nb])
                results["pdep"][sel] = pdep
                results["maxdef"][sel] = maxdef
                bar.update()

    # ------------------------------------------------------------------ null model, z-scores, combination
    items_gene = np.asarray(items_gene, dtype=int)
    is_null = items_gene < 0
    real = ~is_null
    out_df = pd.DataFrame(index=adata.var_names.copy())
    out_df["gene_name"] = _gene_names(adata)
    for col in COLUMNS[1:12]:
        out_df[col] = np.nan
    if real.any():
        lf = np.log10(results["m"] / n)
        null = _NullModel(lf[is_null], results["raw"][is_null])
        centre, scale = null.center_scale(lf[real])
        z = (results["raw"][real] - centre) / scale
        from scipy.stats import norm

        p_conc = _safe_p(norm.sf(z))
        p_dep = _safe_p(results["pdep"][real])
        p_c = cauchy_combine(p_dep, p_conc)
        m_real = results["m"][real]
        sens = results["sens"][real]
        h_size = _safe_p(1.0 - np.exp(-1.0 / (m_real + 1.0)))
        h_sens = _safe_p(1.0 - (sens + 1e-9))
        p_final = 1.0 - (1.0 - p_c) * (1.0 - 0.05 * h_size) * (1.0 - 0.12 * h_sens)
        p_final = _smooth_q(_safe_p(p_final))
        gi = items_gene[real]
        vals = {
            "bic": results["bic"][real], "zscore": z, "sens_score": sens, "depletion_pval": p_dep,
            "concentration_pval": p_conc, "h_size": h_size, "h_sens": h_sens, "pval": p_final,
            "K_components": results["ncomp"][real], "sample_size": m_real,
            "max_deficit": results["maxdef"][real],
        }  # fmt: skip
        for col, v in vals.items():
            arr = out_df[col].to_numpy(dtype=np.float64, copy=True)
            arr[gi] = v
            out_df[col] = arr
        null_summary = {"n_null_genes": int(is_null.sum()), "bandwidth_log10": null.h}
    else:
        null_summary = {"n_null_genes": 0}
    out_df["is_conc_sig"] = (out_df["concentration_pval"] < alpha).to_numpy()
    out_df["is_depl_sig"] = (out_df["depletion_pval"] < alpha).to_numpy()
    out_df["is_joint_sig"] = (out_df["pval"] < alpha).to_numpy()
    out_df = out_df[list(COLUMNS)]
    out_df = out_df.sort_values(["pval", "concentration_pval", "depletion_pval"], na_position="last", kind="stable")

    for col in COLUMNS:
        adata.var[f"{key_added}.{col}"] = out_df[col].reindex(adata.var_names).to_numpy()
    adata.var[f"{key_added}.reason"] = reason.astype(str)
    n_tested = int(real.sum())
    store_params(
        adata, key_added, params,
        embedding_key=emb_key, n_background_components=k_best, reg_covar_used=reg,
        n_tested=n_tested, n_untested=int(G - n_tested), device=device, **null_summary,
    )  # fmt: skip
    logger.info(
        f"LOCAT: {n_tested} genes tested ({int(out_df['is_joint_sig'].sum())} joint-significant at {alpha:g})",
        time=start,
    )
    return out_df


def _depletion_pvalues(k_r, k_b, n_b, n_pool, *, min_p0=0.10, min_expected=3.0, min_deficit=0.04):
    """Sidak-corrected minimum hypergeometric lower-tail p over the lambda scan, and the max deficit.

    ``k_r[g, l]``: cells of the region among the ``n_pool`` cells outside half A;
    ``k_b[g, l]``: half-B cells in the region; ``n_b``: half-B size.
    """
    from scipy.stats import hypergeom

    k_r = np.asarray(k_r, np.float64)
    k_b = np.asarray(k_b, np.float64)
    n_pool = np.asarray(n_pool, np.float64)[:, None]
    n_b = np.asarray(n_b, np.float64)[:, None]
    p0 = k_r / np.maximum(n_pool, 1)
    obs = k_b / np.maximum(n_b, 1)
    deficit = p0 - obs
    maxdef = np.max(deficit, axis=1)
    testable = (p0 >= min_p0) & (n_b * p0 >= min_expected) & (p0 < 1.0)
    passes = testable & (deficit >= min_deficit)
    p = np.ones_like(p0)
    if passes.any():
        gi, li = np.nonzero(passes)
        p[gi, li] = hypergeom.cdf(k_b[gi, li], n_pool[gi, 0], k_r[gi, li], n_b[gi, 0])
    m_eff = np.maximum(testable.sum(axis=1), 1)
    pmin = np.min(p, axis=1)
    psid = -np.expm1(m_eff * np.log1p(-np.minimum(pmin, 1 - 1e-16)))
    psid = np.where(passes.any(axis=1), psid, 1.0)
    return np.clip(psid, 1e-300, 1.0), maxdef


def _make_batch_scores(fast_compile: bool):
    from functools import partial

    import jax
    import jax.numpy as jnp

    from . import _gmm

    def batch_scores(emb, logf0, agg, centres, wts, ina, act, act_a, u, reg, log_lam):
        valid = wts > 0
        # per-atom sufficient statistics of the gene's weights (all expressing cells, then half A)
        s, mean, scat = _gmm.group_stats(agg, centres)
        fit = partial(_gmm.fit_gmm_grouped, max_iter=_GENE_MAX_ITER, tol=_GENE_TOL)
        pi, mu, chol = jax.vmap(fit, in_axes=(0, 0, 0, 0, 0, None))(
            u, s, mean, scat, jnp.concatenate([act, act_a]), reg
        )
        logf = _gmm.batch_logpdf(emb, pi, mu, chol, jnp.concatenate([act, act_a]))  # (2G, n)
        b = wts.shape[0]
        logf1, logf1a = logf[:b], logf[b:]
        n_cells = emb.shape[0]
        m = jnp.sum(valid, axis=1)
        q = jnp.sqrt(m / n_cells)
        ratio = jnp.tanh(0.5 * (logf1 - logf0[None, :]))  # (f1 - f0) / (f1 + f0)
        wsum = jnp.sum(wts, axis=1)
        raw = (q * (1 - q)) * jnp.sum(wts * ratio, axis=1) / jnp.maximum(wsum, 1e-30)
        sens = jnp.sum(valid & (logf1 > logf0[None, :]), axis=1) / jnp.maximum(m, 1)
        llsum = jnp.sum(jnp.where(valid, logf1, 0.0), axis=1)
        # depletion: the half-A fit evaluated at all cells
        in_r = logf0[None, None, :] > (log_lam[None, :, None] + logf1a[:, None, :])  # (G, L, n)
        a_mask = ina & valid
        b_mask = (~ina) & valid
        k_r = jnp.sum(in_r & ~a_mask[:, None, :], axis=2)
        k_b = jnp.sum(in_r & b_mask[:, None, :], axis=2)
        return raw, sens, llsum, k_r, k_b

    return _gmm.jit_for(batch_scores, fast_compile=fast_compile)


#: EM steps and tolerance (change of the mean log-likelihood bound) of the per-gene fits
_GENE_MAX_ITER = 25
_GENE_TOL = 1e-4
#: compiled per-gene kernels, by ``fast_compile``
_BATCH_SCORES: dict[bool, Any] = {}
#: cells x (genes + null pseudo-genes) up to which the per-gene kernel is compiled for compile speed
#: (a short run, where compiling dominates a first call) rather than for run speed
_FAST_COMPILE_MAX_WORK = 4_000_000
#: rows per block of k-means++ uniforms of the background fits
_BG_ROWS = 15


def _batch_scores(fast_compile: bool, *args):
    if fast_compile not in _BATCH_SCORES:
        _BATCH_SCORES[fast_compile] = _make_batch_scores(fast_compile)
    return _BATCH_SCORES[fast_compile](*args)


def _atoms(emb: np.ndarray, n_atoms: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Group cells into ``n_atoms`` k-means atoms of the embedding (empty clusters dropped); every cell
    is its own atom when ``n_atoms`` is None or not smaller than the number of cells. Returns the atom
    of each cell and the atom centres."""
    n = emb.shape[0]
    if n_atoms is None or n_atoms >= n:
        return np.arange(n), emb.copy()
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=n_atoms, n_init=1, max_iter=100, random_state=seed).fit(emb)
    used, lab = np.unique(km.labels_, return_inverse=True)
    centres = np.zeros((used.size, emb.shape[1]))
    np.add.at(centres, lab, emb)
    centres /= np.bincount(lab, minlength=used.size)[:, None]
    return lab.astype(np.int64), centres
