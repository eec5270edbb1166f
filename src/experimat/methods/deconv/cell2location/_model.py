"""Spatial mapping of cell types with the cell2location model (pure torch SVI)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experimat._errors import ExperimatWarning, InvalidInputError
from experimat._logging import logger
from experimat._settings import settings
from experimat.methods._checks import (
    check_counts,
    check_positive_int,
    counts_input,
    get_matrix,
    get_obs_column,
    store_params,
)
from experimat.methods._torch import RowAdam, minibatches, torch_device, torch_threads, train

from ._reference import ReferenceSignatures
from ._svi import (
    MeanFieldLogNormal,
    check_quantiles,
    count_histogram,
    exponential_logpdf,
    gamma_logpdf,
    histogram_to_torch,
    make_generator,
    nb_loglik,
    nb_loglik_dense,
    quantile_key,
    still_decreasing,
)

if TYPE_CHECKING:
    from anndata import AnnData

#: obsm key of the mitochondrial counts kept aside (as in the cell2location tutorial)
MT_KEY = "MT"
#: ``batch_size=None`` trains in full batch up to this many spots x genes entries (a step holds about ten
#: dense float32 tensors of that size: ~2 GB), in mini-batches of about this many entries above it
FULL_BATCH_MAX_ENTRIES = 50_000_000
#: smallest automatic mini-batch (spots)
MIN_AUTO_BATCH = 1000


def mitochondrial_mask(adata: AnnData, *, gene_symbols: str = "gene") -> np.ndarray:
    """Genes whose symbol (``var[gene_symbols]`` when present, else ``var_names``) starts with ``mt-``."""
    names = adata.var[gene_symbols].astype(str) if gene_symbols in adata.var.columns else adata.var_names.astype(str)
    return np.asarray([str(n).lower().startswith("mt-") for n in names], dtype=bool)


def _as_signatures(reference: ReferenceSignatures | pd.DataFrame) -> pd.DataFrame:
    if isinstance(reference, ReferenceSignatures):
        sig = reference.signatures
    elif isinstance(reference, pd.DataFrame):
        sig = reference
    else:
        raise InvalidInputError(
            "reference must be a ReferenceSignatures (from reference_signatures / ReferenceSignatures.load) "
            f"or a genes x cell-types DataFrame, not {type(reference).__name__}."
        )
    if sig.shape[1] < 1 or sig.shape[0] < 1:
        raise InvalidInputError(f"the reference has no cell types or no genes (shape {sig.shape}).")
    vals = sig.to_numpy(dtype=np.float64)
    if not np.isfinite(vals).all() or (vals < 0).any():
        raise InvalidInputError("reference signatures must be finite and non-negative.")
    if sig.columns.duplicated().any():
        raise InvalidInputError(
            f"duplicated cell-type labels in the reference: {list(sig.columns[sig.columns.duplicated()])}."
        )
    return sig


#: the Poisson-NMF start works on the non-zero counts alone below this share of non-zero entries (a Visium HD
#: sample on thousands of genes), densely above it (dense products are faster per entry)
NMF_SPARSE_DENSITY = 0.05
#: spots x genes entries of one dense chunk of the NMF start (a sparse chunk holds a tenth as many non-zeros, each
#: with a value per cell type)
NMF_CHUNK_ENTRIES = 50_000_000


def _nmf_init(torch: Any, x, h, n_iter: int = 50, chunk: int = 20_000) -> np.ndarray:
    """Poisson (KL) NMF with fixed loadings ``h`` (F x G): a cheap starting point for the abundances.

    ``x`` (spots x genes: float32 array or scipy sparse matrix) and ``h`` (a float32 tensor on the fitting
    device); returns a float64 array. With ``h`` fixed the rows are independent, so spots are processed a
    chunk at a time: ``chunk`` spots made dense on the device (fewer when ``chunk`` x genes passes
    :data:`NMF_CHUNK_ENTRIES`), or, for a sparse ``x`` with under :data:`NMF_SPARSE_DENSITY` non-zero entries,
    :func:`_nmf_init_sparse` (the same updates from the non-zero counts only).
    """
    import scipy.sparse as sp

    if sp.issparse(x) and x.nnz < NMF_SPARSE_DENSITY * x.shape[0] * x.shape[1]:
        return _nmf_init_sparse(torch, sp.csr_matrix(x), h, n_iter)
    chunk = max(1, min(chunk, NMF_CHUNK_ENTRIES // max(x.shape[1], 1)))
    hs = h.sum(1)[None, :].clamp_min(1e-12)
    out = []
    for s in range(0, x.shape[0], chunk):
        xc = _dense_rows(torch, x[s : s + chunk], h.device)
        w = (xc.sum(1, keepdim=True) / h.sum().clamp_min(1e-12) / h.shape[0]).expand(-1, h.shape[0]).clone()
        for _ in range(n_iter):
            ratio = w @ h  # x / (w h), in place: no new chunk x genes temporaries per iteration
            ratio.clamp_min_(1e-10)
            torch.div(xc, ratio, out=ratio)
            w *= (ratio @ h.T) / hs
        out.append(w.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, h.shape[0]))


def _nmf_init_sparse(torch: Any, x, h, n_iter: int) -> np.ndarray:
    """:func:`_nmf_init` from the non-zero counts of the CSR matrix ``x``: the update
    ``w <- w * ((x / (w h)) h^T) / (1 h^T)`` has no term at a zero count, so ``(w h)`` is needed at the non-zeros
    only (a batched dot product of each non-zero's spot row of ``w`` and gene column of ``h``), and
    ``(x / (w h)) h^T`` is a sparse (CSR) times dense product. Cost and memory grow with the non-zeros (chunks of
    about :data:`NMF_CHUNK_ENTRIES` / 10), not spots x genes."""
    n_fact, dev = h.shape[0], h.device
    hs = h.sum(1)[None, :].clamp_min(1e-12)
    ht = h.T.contiguous()
    cum = x.indptr.astype(np.int64)
    starts, s = [], 0
    while s < x.shape[0]:
        starts.append(s)
        s = max(s + 1, int(np.searchsorted(cum, cum[s] + NMF_CHUNK_ENTRIES // 10, side="right")) - 1)
    out = []
    for a, b in zip(starts, starts[1:] + [x.shape[0]]):
        xc = x[a:b]
        crow = torch.tensor(xc.indptr.astype(np.int64), device=dev)
        cols = torch.tensor(xc.indices.astype(np.int64), device=dev)
        rows = torch.tensor(np.repeat(np.arange(b - a), np.diff(xc.indptr)), device=dev)
        vals = torch.tensor(xc.data, dtype=torch.float32, device=dev)
        hc = ht[cols].unsqueeze(2)  # non-zeros x F x 1
        total = torch.zeros(b - a, dtype=torch.float32, device=dev).index_add_(0, rows, vals)
        w = (total[:, None] / h.sum().clamp_min(1e-12) / n_fact).expand(-1, n_fact).clone()
        for _ in range(n_iter):
            ratio = vals / torch.bmm(w.index_select(0, rows).unsqueeze(1), hc).view(-1).clamp_min_(1e-10)
            w *= _csr(torch, crow, cols, ratio, (b - a, x.shape[1])) @ ht / hs
        out.append(w.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, n_fact))


def _csr(torch: Any, crow, cols, values, shape):
    """A torch CSR tensor from a scipy CSR matrix's valid structure (no invariant checks; the constructor's "beta"
    warning silenced: its product with a dense matrix is stable)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, size=shape, check_invariants=False)


@counts_input("layer")
def deconvolve_cell2location(
    adata: AnnData,
    *,
    reference: ReferenceSignatures | pd.DataFrame,
    layer: str | None = "counts",
    n_cells_per_location: float = 30,
    detection_alpha: float = 20,
    max_epochs: int = 1000,
    batch_key: str | None = None,
    batch_size: int | None = None,
    lr: float = 0.02,
    n_groups: int = 50,
    factors_per_location: float = 7.0,
    groups_per_location: float = 7.0,
    min_shared_genes: int = 100,
    gene_symbols: str = "gene",
    use_gpu: bool = True,
    deterministic: bool = True,
    seed: int | None = None,
    quantiles: tuple[float, ...] = (0.05, 0.95),
    key_added: str = "cell2location",
) -> pd.DataFrame:
    """Map cell types onto spatial spots with the cell2location model (step 2).

    The counts ``d_sg`` of spot ``s`` and gene ``g`` are negative binomial with mean
    ``mu_sg = (sum_f w_sf g_fg * m_g + s_{e,g}) * y_s`` and gene/batch overdispersion, where
    ``g_fg`` are the reference signatures, ``w_sf`` the cell abundances (prior mean
    ``n_cells_per_location`` cells per spot, with the tissue-zone factorisation prior
    ``w_sf ~ Gamma(5 (z_s x)_f, 5)`` through ``n_groups`` location groups), ``m_g`` per-gene
    technology scaling, ``s_{e,g}`` additive background per batch ``e`` and ``y_s`` per-spot
    detection efficiency (``Gamma(detection_alpha, detection_alpha / y_e)``, hierarchical per batch;
    the mean ``y_e`` is calibrated from total counts as in cell2location). The posterior is
    mean-field log-normal, fitted by stochastic variational inference with reparameterised
    gradients (Adam) in torch, full batch by default (the likelihood is then evaluated densely,
    with its ``lgamma(d + alpha)`` terms summed once per distinct (batch, gene, count value) instead
    of once per spot and gene); abundances start from a Poisson NMF projection on the signatures. Mitochondrial genes (symbols ``mt-``/``MT-``) are not mapped;
    their counts are kept in ``obsm['MT']``.

    Parameters
    ----------
    adata
        Spatial AnnData (spots) with raw counts.
    reference
        Signatures from :func:`reference_signatures` (or a genes x cell-types DataFrame).
    layer
        Layer with raw counts (``None`` for ``X``).
    n_cells_per_location
        Expected number of cells per spot (tissue dependent; Visium: about 5-30).
    detection_alpha
        Regularisation of the per-spot detection efficiency (20: little variation; 200: none).
    max_epochs
        Training epochs (passes over all spots).
    batch_key
        obs column with the batch (slide) of each spot, for per-batch detection and background.
    batch_size
        Spots per mini-batch; ``None`` trains on all spots at once (full batch) while the spots x genes
        matrix has at most :data:`FULL_BATCH_MAX_ENTRIES` entries, and in mini-batches of that many entries
        on larger samples (e.g. Visium HD bins), so a step's memory does not grow with the spots (the size
        used is recorded in ``uns[key_added]['batch_size_used']``). In mini-batches a step updates the global
        parameters (Adam) and only the batch's per-spot parameters (:class:`~experimat.methods._torch.RowAdam`:
        each spot's parameters take one Adam step per epoch), so an epoch's cost grows linearly with the spots;
        the counts stay sparse (a step reads its batch's non-zero counts; only a full batch is made dense).
    lr
        Adam learning rate.
    n_groups, factors_per_location, groups_per_location
        Tissue-zone factorisation prior: number of location groups, expected cell types per spot,
        expected groups per spot.
    min_shared_genes
        Minimum number of genes shared by ``adata`` and the reference (error below).
    gene_symbols
        var column with gene symbols used to find mitochondrial genes (falls back to var_names).
    use_gpu
        Use CUDA when torch sees it.
    deterministic
        On CPU, train single-threaded so that seeded runs are bit-for-bit reproducible
        (multi-threaded BLAS can reorder sums); ``False`` uses torch's thread setting.
    seed
        Random seed (``None``: ``em.settings.seed``).
    quantiles
        Posterior quantiles of the abundances to write, each in (0, 1): 0.05 -> ``obsm['{key_added}.q05']``,
        0.5 -> ``'.q50'``, 0.025 -> ``'.q2.5'``; as cell2location's ``export_posterior(add_to_obsm=[...])``.
    key_added
        Prefix of the result slots.

    Returns
    -------
    DataFrame spots x cell types of posterior mean abundances (cells per spot). Also written:
    ``obsm['{key_added}.means' | '.sd']`` and one ``obsm['{key_added}.q<NN>']`` per quantile (default
    ``.q05`` and ``.q95``; DataFrames, cell-type columns),
    ``obsm['MT']`` (mitochondrial counts, when any), ``uns[key_added]`` with ``params``,
    ``training_history`` (loss per epoch), ``genes`` (mapped genes), ``factor_names`` and
    ``posterior`` (means of ``m_g``, ``detection_y_s``, ``s_g_gene_add``, ``alpha_g`` for QC).

    Examples
    --------
    >>> from experimat.methods.deconv.cell2location import reference_signatures, deconvolve_cell2location
    >>> sig = reference_signatures(adata_sc, labels_key="cell_type")  # doctest: +SKIP
    >>> ab = deconvolve_cell2location(adata_vis, reference=sig, n_cells_per_location=30)  # doctest: +SKIP
    >>> adata_vis.obsm["cell2location.q05"].head()  # doctest: +SKIP
    """
    params = {k: v for k, v in locals().items() if k not in ("adata", "reference")}
    check_positive_int("max_epochs", max_epochs)
    check_positive_int("n_groups", n_groups)
    check_positive_int("min_shared_genes", min_shared_genes)
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    for name, v in (("n_cells_per_location", n_cells_per_location), ("detection_alpha", detection_alpha), ("lr", lr)):
        if not np.isfinite(v) or v <= 0:
            raise InvalidInputError(f"{name} must be a positive number; got {v!r}.")
    quantiles = params["quantiles"] = check_quantiles(quantiles)
    seed = params["seed"] = settings.seed if seed is None else seed
    sig = _as_signatures(reference)
    params["reference_labels"] = [str(c) for c in sig.columns]
    start = logger.info(f"cell2location: mapping {sig.shape[1]} cell types onto {adata.n_obs} spots")

    Xs, shared = _mapped_counts(adata, sig, layer=layer, gene_symbols=gene_symbols, min_shared_genes=min_shared_genes)
    cell_state = sig.loc[shared].to_numpy(dtype=np.float64).T  # F x G
    if (cell_state.sum(1) <= 0).any():
        empty = list(sig.columns[cell_state.sum(1) <= 0])
        raise InvalidInputError(
            f"cell types {empty} have no expression over the shared genes; remove them from the reference."
        )
    if batch_key is not None:
        cat = pd.Categorical(get_obs_column(adata, batch_key).astype(str))
        batch_codes, batch_names = np.asarray(cat.codes, np.int64), [str(c) for c in cat.categories]
    else:
        batch_codes, batch_names = np.zeros(adata.n_obs, np.int64), ["all"]
    empty_spots = np.asarray(Xs.sum(1)).ravel() == 0
    if empty_spots.any():
        warnings.warn(
            f"cell2location: {int(empty_spots.sum())} spots have no counts over the shared genes; "
            "their abundances reflect the prior only.",
            ExperimatWarning,
            stacklevel=2,
        )

    if batch_size is None and Xs.shape[0] * Xs.shape[1] > FULL_BATCH_MAX_ENTRIES:
        batch_size = max(MIN_AUTO_BATCH, FULL_BATCH_MAX_ENTRIES // Xs.shape[1])
    fit = _fit_location_model(
        Xs,
        cell_state,
        batch_codes,
        len(batch_names),
        n_cells_per_location=float(n_cells_per_location),
        detection_alpha=float(detection_alpha),
        n_groups=n_groups,
        factors_per_location=float(factors_per_location),
        groups_per_location=float(groups_per_location),
        max_epochs=max_epochs,
        batch_size=batch_size,
        lr=lr,
        use_gpu=use_gpu,
        seed=seed,
        deterministic=deterministic,
        quantiles=quantiles,
    )
    names = [str(c) for c in sig.columns]
    out = {}
    for k in ("means", "sd", *(quantile_key(q) for q in quantiles)):
        out[k] = adata.obsm[f"{key_added}.{k}"] = pd.DataFrame(fit["w_sf"][k], index=adata.obs_names.copy(), columns=names)
    history = fit["history"]
    store_params(
        adata,
        key_added,
        params,
        training_history=[float(v) for v in history],
        genes=list(shared),
        factor_names=names,
        batch_key=batch_key,
        batch_categories=batch_names,
        batch_size_used=None if batch_size is None or batch_size >= Xs.shape[0] else int(batch_size),
        posterior={k: np.asarray(v) for k, v in fit["posterior"].items()},
    )
    if still_decreasing(history):
        warnings.warn(
            f"cell2location: the loss was still decreasing after {max_epochs} epochs; increase max_epochs "
            f"(or lr) and check uns[{key_added!r}]['training_history'].",
            ExperimatWarning,
            stacklevel=2,
        )
    logger.info(f"cell2location: {len(shared)} genes, {len(names)} cell types", time=start)
    return out["means"]


def _dense_rows(torch: Any, x, device):
    """Rows of counts (float32 array or scipy sparse matrix) as a dense float32 tensor on ``device``."""
    return torch.tensor(np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32), device=device)


def _canonical_csr(x):
    """Counts as a float32 CSR matrix without explicit zeros, column indices sorted within each row (the order
    of ``torch.nonzero`` on the dense rows)."""
    import scipy.sparse as sp

    if sp.issparse(x) and x.format == "csr" and x.dtype == np.float32 and x.has_canonical_format and x.data.all():
        return x
    x = sp.csr_matrix(x, dtype=np.float32, copy=True)
    x.sum_duplicates()
    x.eliminate_zeros()
    x.sort_indices()
    return x


def _mapped_counts(adata: AnnData, sig: pd.DataFrame, *, layer, gene_symbols: str, min_shared_genes: int):
    """Counts (spots x genes, float32 CSR: :func:`_canonical_csr`) on the non-mitochondrial genes shared with the
    signatures, and those genes. Mitochondrial counts are kept aside in ``obsm['MT']`` (as in the cell2location
    tutorial). Sparse: a Visium HD sample's spots x genes would not fit in memory dense."""
    X = get_matrix(adata, layer)
    check_counts(X, layer=layer)
    mt = mitochondrial_mask(adata, gene_symbols=gene_symbols)
    if mt.any():
        import scipy.sparse as sp

        Xmt = X[:, np.flatnonzero(mt)]
        Xmt = Xmt.toarray() if sp.issparse(Xmt) else np.asarray(Xmt)
        adata.obsm[MT_KEY] = pd.DataFrame(Xmt, index=adata.obs_names.copy(), columns=list(adata.var_names[mt]))
    usable = pd.Index(adata.var_names[~mt])
    shared = [g for g in sig.index.astype(str) if g in usable]
    if len(shared) < min_shared_genes:
        raise InvalidInputError(
            f"only {len(shared)} genes are shared between the reference ({sig.shape[0]} genes) and adata "
            f"({adata.n_vars} genes, {int(mt.sum())} mitochondrial excluded); at least {min_shared_genes} are needed. "
            "Use the same gene ids on both sides (e.g. Ensembl ids in var_names) or lower min_shared_genes."
        )
    return _canonical_csr(X[:, adata.var_names.get_indexer(shared)]), shared


def _detection_mean(x: np.ndarray, cell_state: np.ndarray, batch_codes: np.ndarray, n_batch: int, n_cells: float) -> float:
    """Prior mean of the detection efficiency, calibrated from total counts as in cell2location."""
    sc_total = cell_state.sum(1).mean()
    totals = np.asarray(x.sum(1), dtype=np.float32).ravel()  # exact: integer counts far below 2^24 per spot
    sp_total = np.array([totals[batch_codes == b].mean() if (batch_codes == b).any() else 0.0 for b in range(n_batch)])
    return float(max((sp_total / n_cells / sc_total).mean(), 1e-8))


def _location_guide(torch: Any, w0: np.ndarray, n_vars: int, n_batch: int, *, n_groups: int,
                    factors_per_location: float, groups_per_location: float, detection_mean: float,
                    n_cells_per_location: float, device) -> MeanFieldLogNormal:
    """The mean-field log-normal posterior of every site of the model, initialised (abundances at ``w0``)."""
    n_obs, n_fact = w0.shape
    R, N = n_groups, n_cells_per_location
    f32 = np.float32
    init = {
        "m_g_mean": (np.ones((1, 1), f32), False),
        "m_g_alpha_e_inv": (np.full((1, 1), 1 / 3, f32), False),
        "m_g": (np.ones((1, n_vars), f32), False),
        "n_s_cells_per_location": (np.maximum(w0.sum(1, keepdims=True), 1.0), True),
        "a_s_factors_per_location": (np.full((n_obs, 1), factors_per_location), True),
        "z_sr_groups_factors": (np.full((n_obs, R), N / R), True),
        "k_r_factors_per_groups": (np.full((R, 1), groups_per_location), False),
        "x_fr_group2fact": (np.full((R, n_fact), 1.0 / n_fact), False),
        "w_sf": (w0, True),
        "detection_mean_y_e": (np.full((n_batch, 1), detection_mean), False),
        "detection_y_s": (np.full((n_obs, 1), detection_mean), True),
        "s_g_gene_add_alpha_hyp": (np.full((1, 1), 3.0), False),
        "s_g_gene_add_mean": (np.full((n_batch, 1), 0.01), False),
        "s_g_gene_add_alpha_e_inv": (np.full((n_batch, 1), 1 / 3), False),
        "s_g_gene_add": (np.full((n_batch, n_vars), 0.01), False),
        "alpha_g_phi_hyp": (np.full((1, 1), 3.0), False),
        "alpha_g_inverse": (np.full((n_batch, n_vars), 1 / 3), False),
    }
    g = MeanFieldLogNormal()
    for name, (value, local) in init.items():
        g.add(torch, name, value, init_scale=0.05, device=device, local=local)
    g.build(torch, device)
    return g


def _location_loss(torch: Any, g: MeanFieldLogNormal, x, x_t, cs_t, batch_codes: np.ndarray, n_batch: int, *,
                   n_groups: int, n_cells_per_location: float, factors_per_location: float,
                   groups_per_location: float, detection_alpha: float, detection_mean: float, full_batch: bool,
                   generator, device):
    """``loss(idx, epoch)``: the negative ELBO of one draw of the cell2location model, for :func:`train`.

    ``idx`` ``None`` is the full batch (likelihood evaluated densely with the count histogram; ``x_t`` is
    ``x`` as a dense tensor); otherwise the local sites and the likelihood are restricted to the spots
    ``idx`` and scaled up, the likelihood evaluated at the batch's non-zero counts, read from ``x`` as
    a sparse matrix (``x_t`` is not used: no dense spots x genes matrix).
    """
    from scipy.special import gammaln

    n_obs, n_fact = x.shape[0], cs_t.shape[0]
    R, N = n_groups, n_cells_per_location
    if full_batch:
        # lgamma(x + alpha) summed once per distinct (batch, gene, count value), not per spot
        hist_all = histogram_to_torch(torch, count_histogram(x, batch_codes, n_batch), device)
    else:
        x = _canonical_csr(x)
        lgx1_rows = np.bincount(np.repeat(np.arange(n_obs), np.diff(x.indptr)),
                                weights=gammaln(x.data.astype(np.float64) + 1.0), minlength=n_obs)
    bat_t = torch.tensor(batch_codes, device=device)

    def T(v):
        return torch.tensor(float(v), dtype=torch.float32, device=device)

    one, w_ratio = T(1.0), T(5.0)

    def step(idx: np.ndarray | None, epoch: int):
        it = None if idx is None else torch.tensor(idx, device=device)
        sites, glob, loc_terms = g.draw(torch, generator, it)
        lp_glob, lp_loc = [], []

        def site(name, logpdf):
            u, z = sites[name]
            (lp_loc if name in g.local else lp_glob).append(logpdf(u, z).sum())
            return z

        m_mean = site("m_g_mean", lambda u, z: gamma_logpdf(torch, u, z, one, one))
        m_inv = site("m_g_alpha_e_inv", lambda u, z: exponential_logpdf(torch, z, T(3.0)))
        m_alpha = 1.0 / m_inv.pow(2)
        m_g = site("m_g", lambda u, z: gamma_logpdf(torch, u, z, m_alpha, m_alpha / m_mean))
        n_s = site("n_s_cells_per_location", lambda u, z: gamma_logpdf(torch, u, z, T(N), one))
        a_s = site("a_s_factors_per_location", lambda u, z: gamma_logpdf(torch, u, z, T(factors_per_location), one))
        z_sr = site("z_sr_groups_factors", lambda u, z: gamma_logpdf(torch, u, z, a_s / R, a_s / n_s))
        k_r = site("k_r_factors_per_groups", lambda u, z: gamma_logpdf(torch, u, z, T(groups_per_location), one))
        x_fr = site("x_fr_group2fact", lambda u, z: gamma_logpdf(torch, u, z, k_r / n_fact, k_r))
        w_mu = z_sr @ x_fr
        w_sf = site("w_sf", lambda u, z: gamma_logpdf(torch, u, z, w_mu * w_ratio, w_ratio))
        y_e = site("detection_mean_y_e", lambda u, z: gamma_logpdf(torch, u, z, T(10.0), T(10.0 / detection_mean)))
        bb = bat_t if it is None else bat_t[it]
        y_s = site(
            "detection_y_s", lambda u, z: gamma_logpdf(torch, u, z, T(detection_alpha), detection_alpha / y_e[bb])
        )
        add_hyp = site("s_g_gene_add_alpha_hyp", lambda u, z: gamma_logpdf(torch, u, z, T(9.0), T(3.0)))
        add_mean = site("s_g_gene_add_mean", lambda u, z: gamma_logpdf(torch, u, z, one, T(100.0)))
        add_inv = site("s_g_gene_add_alpha_e_inv", lambda u, z: exponential_logpdf(torch, z, add_hyp))
        add_alpha = 1.0 / add_inv.pow(2)
        s_add = site("s_g_gene_add", lambda u, z: gamma_logpdf(torch, u, z, add_alpha, add_alpha / add_mean))
        phi = site("alpha_g_phi_hyp", lambda u, z: gamma_logpdf(torch, u, z, T(9.0), T(3.0)))
        a_inv = site("alpha_g_inverse", lambda u, z: exponential_logpdf(torch, z, phi))

        mu = ((w_sf @ cs_t) * m_g + (s_add if n_batch == 1 else s_add[bb])) * y_s
        alpha = 1.0 / a_inv.pow(2)
        if it is None:
            alpha_rows = alpha if n_batch == 1 else alpha[bb]
            ll, scale = nb_loglik_dense(torch, x_t, mu, alpha, alpha_rows, hist_all), 1.0
        else:
            xb = x[idx]  # sorted rows: the non-zeros in the row-major order of torch.nonzero
            rows = np.repeat(np.arange(len(idx)), np.diff(xb.indptr))
            nz = (torch.tensor(rows, device=device), torch.tensor(xb.indices.astype(np.int64), device=device))
            x_nz = torch.tensor(xb.data, device=device)
            lg1, scale = float(lgx1_rows[idx].sum()), n_obs / len(idx)
            ll = nb_loglik(torch, nz, x_nz, mu, alpha if n_batch == 1 else alpha[bb], lg1)
        return -(scale * (ll + loc_terms + sum(lp_loc)) + glob + sum(lp_glob))

    return step


def _optimizers(torch: Any, g: MeanFieldLogNormal, lr: float, full_batch: bool) -> list:
    """Adam over every parameter in full batch; in mini-batches Adam over the global parameters and
    :class:`RowAdam` over the per-spot ones, so that a step updates only the batch's spots (with dense
    Adam every spot's parameters moved at every step: an epoch cost spots^2 / batch)."""
    if full_batch:
        return [torch.optim.Adam(g.parameters(), lr=lr)]
    return [torch.optim.Adam(g.global_parameters(), lr=lr), RowAdam(g.local_parameters(), lr=lr)]


def _fit_location_model(
    x: np.ndarray,
    cell_state: np.ndarray,
    batch_codes: np.ndarray,
    n_batch: int,
    *,
    n_cells_per_location: float,
    detection_alpha: float,
    n_groups: int,
    factors_per_location: float,
    groups_per_location: float,
    max_epochs: int,
    batch_size: int | None,
    lr: float,
    use_gpu: bool,
    seed: int,
    deterministic: bool,
    quantiles: tuple[float, ...] = (0.05, 0.95),
) -> dict[str, Any]:
    """Fit the model to counts ``x`` (spots x genes; scipy sparse or dense) given the signatures ``cell_state``
    (types x genes). Only a full-batch fit makes ``x`` dense.

    Returns the abundance summaries ``w_sf`` (posterior means, sd, ``quantiles``), the loss history and
    posterior means of the QC sites.
    """
    from experimat._optional import import_optional

    torch = import_optional("torch", purpose="cell2location")
    device = torch_device(use_gpu)
    n_obs, n_vars = x.shape
    N = n_cells_per_location
    full_batch = batch_size is None or batch_size >= n_obs
    detection_mean = _detection_mean(x, cell_state, batch_codes, n_batch, N)
    if full_batch:  # small enough (FULL_BATCH_MAX_ENTRIES): one dense matrix
        x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)
    x_t = torch.tensor(x, device=device) if full_batch else None
    cs_t = torch.tensor(cell_state, dtype=torch.float32, device=device)
    with torch_threads(1 if deterministic else None, device):
        w0 = _nmf_init(torch, x, cs_t * detection_mean)
    w0 = np.maximum(w0, 1e-2 * N / cell_state.shape[0])
    g = _location_guide(
        torch, w0, n_vars, n_batch, n_groups=n_groups, factors_per_location=factors_per_location,
        groups_per_location=groups_per_location, detection_mean=detection_mean, n_cells_per_location=N, device=device,
    )
    opt = _optimizers(torch, g, lr, full_batch)
    step = _location_loss(
        torch, g, x, x_t, cs_t, batch_codes, n_batch, n_groups=n_groups, n_cells_per_location=N,
        factors_per_location=factors_per_location, groups_per_location=groups_per_location,
        detection_alpha=detection_alpha, detection_mean=detection_mean,
        full_batch=full_batch, generator=make_generator(torch, seed), device=device,
    )
    history = train(
        step,
        opt,
        minibatches(n_obs, batch_size, np.random.default_rng(seed), sort=True),
        max_epochs=max_epochs,
        n_obs=n_obs,
        name="cell2location",
        epoch_loss="batch_mean",
        threads=1 if deterministic else None,
        device=device,
    )
    posterior = {
        "m_g": g.summary(torch, "m_g")["means"].ravel(),
        "detection_y_s": g.summary(torch, "detection_y_s")["means"].ravel(),
        "s_g_gene_add": g.summary(torch, "s_g_gene_add")["means"],
        "alpha_g": 1.0 / g.summary(torch, "alpha_g_inverse")["means"] ** 2,
        "detection_mean": np.asarray([detection_mean]),
        "cell_state": np.asarray(cell_state, dtype=np.float64),
    }
    return {"w_sf": g.summary(torch, "w_sf", quantiles), "history": history, "posterior": posterior}
