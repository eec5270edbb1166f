"""DestVI spatial model (stLVM): cell-type proportions and continuous cell states per spot."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from experimat._compat import renamed_options
from experimat._errors import ExperimatWarning, InvalidInputError, KeyNotFoundError, MissingSlotError
from experimat._logging import logger
from experimat._optional import import_optional
from experimat._settings import settings
from experimat.methods._checks import check_counts, check_positive_int, counts_input, get_matrix, store_params
from experimat.methods._torch import minibatches, torch_device, torch_threads, train

from ._condscvi import CondSCVIModel, _as_csr

if TYPE_CHECKING:
    from anndata import AnnData

#: fewer shared genes than this fraction of the reference genes (or than MIN_SHARED) is an error
MIN_SHARED_FRACTION = 0.5
MIN_SHARED = 10


def shared_genes(adata: AnnData, reference: CondSCVIModel) -> list[str]:
    """Reference genes present in ``adata.var_names`` (reference order); errors name the counts.

    Raises :class:`InvalidInputError` when fewer than ``max(10, 50 %)`` of the reference genes are
    present; warns when some are missing.
    """
    present = set(map(str, adata.var_names))
    ref_genes = reference.genes
    shared = [g for g in ref_genes if g in present]
    n_ref, n_sh = len(ref_genes), len(shared)
    if n_sh < max(MIN_SHARED, int(np.ceil(MIN_SHARED_FRACTION * n_ref))):
        missing = [g for g in ref_genes if g not in present][:5]
        raise InvalidInputError(
            f"only {n_sh} of the {n_ref} reference genes are in the spatial data ({adata.n_vars} genes; "
            f"missing e.g. {missing}); DestVI needs at least max({MIN_SHARED}, {MIN_SHARED_FRACTION:.0%}) of them. "
            "Use the same gene identifiers in both, or retrain the reference on the spatial genes "
            "(fit_condscvi(..., genes=spots.var_names))."
        )
    if n_sh < n_ref:
        warnings.warn(
            f"{n_ref - n_sh} of the {n_ref} reference genes are absent from the spatial data; "
            f"deconvolving on the {n_sh} shared genes.",
            ExperimatWarning,
            stacklevel=3,
        )
    return shared


def _resolve_reference(reference) -> CondSCVIModel:
    if isinstance(reference, CondSCVIModel):
        return reference
    if isinstance(reference, (str,)) or hasattr(reference, "__fspath__"):
        return CondSCVIModel.load(reference)
    raise InvalidInputError(
        f"reference must be a CondSCVIModel (from fit_condscvi) or the folder of a saved one; got {type(reference).__name__}."
    )


def _default_batch(n_spots: int, n_types: int, n_genes: int) -> int:
    # 128 spots (as scvi-tools), fewer when the (spots x types x genes) profile tensor would pass ~200 MB
    return int(max(16, min(n_spots, 128, 50_000_000 // max(n_types * n_genes, 1))))


@counts_input("layer")
def deconvolve_destvi(
    adata: AnnData,
    *,
    reference: CondSCVIModel | str,
    layer: str | None = "counts",
    max_epochs: int = 2500,
    vamp_prior_p: int = 15,
    l1_sparsity: float = 0.0,
    beta_weighting_prior: float = 0.5,
    cell_size_correction: bool = True,
    n_hidden: int = 128,
    n_layers: int = 2,
    dropout_rate: float = 0.05,
    lr: float = 3e-3,
    kl_warmup_epochs: int | None = None,
    batch_size: int | None = None,
    use_gpu: bool = True,
    n_threads: int | None = None,
    seed: int | None = None,
    key_added: str = "destvi",
) -> pd.DataFrame:
    """Deconvolve spots into cell-type proportions and per-type continuous states with DestVI.

    The spatial model (stLVM; Lopez et al. 2022) explains each spot's counts as a mixture of the
    reference cell-type profiles decoded by the frozen CondSCVI decoder at one latent state
    ``gamma`` per cell type, plus a "noise" profile, with a per-gene technology offset (``beta``,
    Gaussian prior) and a negative-binomial likelihood. Proportions and states are amortised by two
    small networks of ``log1p`` counts; ``gamma`` has an empirical VampPrior built from ``vamp_prior_p``
    k-means sub-clusters of each type's reference posterior. Training is MAP with Adam; the prior
    and L1 terms are warmed up linearly over ``kl_warmup_epochs``.

    Parameters
    ----------
    adata
        Spots x genes with raw counts.
    reference
        A :class:`CondSCVIModel` from :func:`fit_condscvi`, or the folder it was saved to.
    layer
        Layer with raw counts (``None``: ``X``).
    max_epochs
        Passes over the spots.
    vamp_prior_p
        Number of k-means components per cell type in the empirical prior over ``gamma``.
    l1_sparsity
        Strength of the L1 penalty on proportions (larger: sparser proportions).
    beta_weighting_prior
        Weight of the N(0, 1) prior on the per-gene log technology offset ``beta`` (larger: spatial
        profiles kept closer to the reference; lower it when the two assays differ).
    cell_size_correction
        DestVI's mixture weights are each type's share of the spot's counts. With ``True``, they are
        divided by the type's mean counts per reference cell (over the modelled genes) and renormalised,
        giving cell fractions (what pseudo-spot truths and cell2location report); with ``False`` the
        count shares are returned as proportions, as scvi-tools does. Both are stored.
    n_hidden
        Width of the amortisation networks.
    n_layers
        Hidden layers of the amortisation networks.
    dropout_rate
        Dropout of the amortisation networks during training.
    lr
        Adam learning rate.
    kl_warmup_epochs
        Epochs of linear warm-up of the prior and sparsity terms (``None``: ``min(200, max_epochs // 4)``).
    batch_size
        Spots per minibatch (``None``: 128, as scvi-tools, or fewer when the spots x types x genes
        profile tensor would pass ~200 MB).
    use_gpu
        Use CUDA when torch sees it.
    n_threads
        Torch CPU threads (``None``: ``em.settings.n_jobs``, default 1).
    seed
        Random seed (``None``: ``em.settings.seed``); seeded CPU runs are reproducible.
    key_added
        Prefix of the result slots.

    Returns
    -------
    Proportions (spots x cell types, rows sum to 1), also written to
    ``obsm[f"{key_added}.proportions"]``. Also written: ``obsm[f"{key_added}.transcript_proportions"]``
    (the count shares, see ``cell_size_correction``), ``obsm[f"{key_added}.gamma.{type}"]``
    (spots x ``n_latent``) per cell type, ``var[f"{key_added}.beta"]`` (technology offset) and
    ``var[f"{key_added}.theta"]`` (NB inverse dispersion; NaN for genes not in the reference),
    ``uns[key_added]`` with ``params``, ``training_history`` (loss per epoch), ``cell_types``,
    ``n_genes``; the share of the counts given to the noise profile is in ``obs[f"{key_added}.noise"]``.

    Examples
    --------
    >>> ref = fit_condscvi(sc, labels_key="cell_type", max_epochs=300)
    >>> props = deconvolve_destvi(spots, reference=ref, max_epochs=2500)
    >>> spots.obsm["destvi.gamma.Astro"]
    """
    torch = import_optional("torch", purpose="DestVI")
    params = {k: v for k, v in locals().items() if k not in ("adata", "reference", "torch")}
    reference = _resolve_reference(reference)
    params["reference"] = repr(reference)
    max_epochs = check_positive_int("max_epochs", max_epochs)
    vamp_prior_p = check_positive_int("vamp_prior_p", vamp_prior_p)
    arch = {
        "n_hidden": check_positive_int("n_hidden", n_hidden),
        "n_layers": check_positive_int("n_layers", n_layers),
        "dropout": float(dropout_rate),
    }
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    for name, val in (("l1_sparsity", l1_sparsity), ("beta_weighting_prior", beta_weighting_prior), ("lr", lr)):
        if not np.isfinite(val) or val < 0 or (name == "lr" and val == 0):
            raise InvalidInputError(f"{name} must be a finite number >= 0 (lr > 0); got {val!r}.")
    if not 0 <= dropout_rate < 1:
        raise InvalidInputError(f"dropout_rate must be in [0, 1); got {dropout_rate!r}.")
    seed = settings.seed if seed is None else int(seed)
    warm = min(200, max_epochs // 4) if kl_warmup_epochs is None else int(kl_warmup_epochs)

    X, genes, col, gidx = _spatial_counts(adata, reference, layer)
    cell_types = reference.cell_types
    n_spots, n_types, n_genes = adata.n_obs, len(cell_types), len(genes)
    bs = batch_size or _default_batch(n_spots, n_types, n_genes)
    start = logger.info(f"DestVI: {n_spots} spots, {n_genes} shared genes, {n_types} cell types, {max_epochs} epochs")
    prior = reference.vamp_prior(vamp_prior_p, seed=seed)
    reference.module()  # built (weights initialised, then loaded) before the seeded block: no effect on its draws
    device = torch_device(use_gpu)
    threads = settings.n_jobs if n_threads is None else n_threads
    with torch.random.fork_rng(devices=[]), torch_threads(threads, device):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        mod = _spatial_module(reference, gidx, arch, prior).to(device)
        opt = torch.optim.Adam([p for p in mod.parameters() if p.requires_grad], lr=lr, eps=0.01, weight_decay=1e-6)

        def loss_fn(idx, epoch):
            kl_w = 1.0 if warm <= 0 else min(1.0, epoch / warm)
            return mod.loss(_dense_rows(X, idx, device), kl_w, float(l1_sparsity), float(beta_weighting_prior))

        mod.train()
        mod.decoder.eval()
        batches = minibatches(n_spots, bs, gen)  # CPU indices: the batch's rows are made dense, then moved
        history = train(loss_fn, opt, batches, max_epochs=max_epochs, n_obs=n_spots, name="DestVI")
        mod.eval()
        v, gamma = _infer_spots(mod, X, device)
        beta = mod.beta.detach().cpu().numpy()
        theta = torch.exp(mod.px_r.detach()).cpu().numpy()
    if not np.isfinite(v).all() or not np.isfinite(history[-1]):
        raise InvalidInputError("DestVI training diverged (non-finite loss); lower lr or check the inputs.")
    props, transcripts, noise = _mixture_proportions(v, n_types, reference.mean_library(), cell_size_correction)
    result = pd.DataFrame(props, index=adata.obs_names, columns=pd.Index(cell_types))
    _write_destvi(adata, key_added, result, transcripts, gamma, noise, col, beta, theta)
    store_params(
        adata,
        key_added,
        params,
        training_history=[float(h) for h in history],
        cell_types=list(cell_types),
        n_genes=int(n_genes),
        layer=layer if layer is not None else "X",
    )
    logger.info("DestVI done", time=start)
    return result


def _spatial_counts(adata: AnnData, reference: CondSCVIModel, layer: str | None):
    """Spot counts (CSR float32) on the genes shared with the reference, the genes, their columns in
    ``adata`` and their positions among the reference genes."""
    X = get_matrix(adata, layer)
    check_counts(X, layer=layer)
    genes = shared_genes(adata, reference)
    col = adata.var_names.get_indexer(genes)
    X = _as_csr(X)[:, col]
    lib = np.asarray(X.sum(1)).ravel()
    if (lib <= 0).any():
        bad = list(adata.obs_names[lib <= 0][:5])
        raise InvalidInputError(
            f"{int((lib <= 0).sum())} spots have zero counts over the {len(genes)} shared genes (e.g. {bad}); "
            "remove them first (e.g. sc.pp.filter_cells(adata, min_counts=1))."
        )
    ref_index = {g: i for i, g in enumerate(reference.genes)}
    return X, genes, col, np.array([ref_index[g] for g in genes])


def _spatial_module(reference: CondSCVIModel, gidx: np.ndarray, arch: dict, prior: tuple):
    """The stLVM around the frozen reference decoder, with the empirical VampPrior ``prior`` (means,
    variances, log weights from :meth:`CondSCVIModel.vamp_prior`)."""
    import torch

    from ._modules import SpatialDeconv

    pm, pv, pw = prior
    ref_mod = reference.module()
    return SpatialDeconv(
        ref_mod,
        torch.as_tensor(gidx),
        **arch,
        prior_mean=torch.as_tensor(pm, dtype=torch.float32),
        prior_var=torch.as_tensor(pv, dtype=torch.float32),
        prior_logw=torch.as_tensor(pw, dtype=torch.float32),
        theta_init=ref_mod.px_r.detach()[torch.as_tensor(gidx)],
    )


def _dense_rows(X, idx, device):
    """The rows ``idx`` (a CPU index tensor or array, a slice; ``None``: all rows) of the sparse counts ``X`` as a dense
    tensor on ``device``: only a batch is ever dense (a Visium HD sample's spots x genes would not fit)."""
    import torch

    rows = X if idx is None else X[idx if isinstance(idx, slice) else np.asarray(idx)]
    return torch.as_tensor(rows.toarray()).to(device)


def _infer_spots(mod, X, device, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mixture weights ``(spots, types + 1)`` and states ``(spots, types, n_latent)`` of all spots (sparse counts
    ``X``), in chunks."""
    import torch

    vs, gs = [], []
    with torch.no_grad():
        for b in range(0, X.shape[0], chunk):
            v, g = mod.infer(_dense_rows(X, slice(b, b + chunk), device))
            vs.append(v.cpu().numpy())
            gs.append(g.cpu().numpy())
    return np.vstack(vs).astype(np.float64), np.concatenate(gs).astype(np.float64)


def _mixture_proportions(v: np.ndarray, n_types: int, mean_library: np.ndarray, cell_size_correction: bool):
    """Cell-type proportions, count shares and the noise share from the mixture weights ``v``."""
    transcripts = v[:, :n_types] / np.maximum(v[:, :n_types].sum(1, keepdims=True), 1e-12)
    if cell_size_correction:
        # v is each type's share of the spot's counts; divide by the type's counts per cell
        cells = transcripts / mean_library[None, :]
        props = cells / np.maximum(cells.sum(1, keepdims=True), 1e-300)
    else:
        props = transcripts
    noise = v[:, n_types] / np.maximum(v.sum(1), 1e-12)
    return props, transcripts, noise


def _write_destvi(adata, key_added, result, transcripts, gamma, noise, col, beta, theta) -> None:
    """The per-spot and per-gene result slots of :func:`deconvolve_destvi` (its record is written by the caller)."""
    obs_names, cell_types = adata.obs_names, result.columns
    adata.obsm[f"{key_added}.proportions"] = result.copy()
    adata.obsm[f"{key_added}.transcript_proportions"] = pd.DataFrame(transcripts, index=obs_names, columns=cell_types)
    latent_cols = [f"latent_{i}" for i in range(gamma.shape[2])]
    for i, ct in enumerate(cell_types):
        adata.obsm[f"{key_added}.gamma.{ct}"] = pd.DataFrame(gamma[:, i, :], index=obs_names, columns=latent_cols)
    adata.obs[f"{key_added}.noise"] = noise
    for name, values in (("beta", beta), ("theta", theta)):
        column = np.full(adata.n_vars, np.nan)
        column[col] = values
        adata.var[f"{key_added}.{name}"] = column


def _destvi_slots(adata: AnnData, reference: CondSCVIModel, key: str):
    """Per-spot gammas ``(n_spots, n_types, n_latent)``, shared genes and their column indices, beta."""
    cell_types = reference.cell_types
    missing = [f"{key}.gamma.{ct}" for ct in cell_types if f"{key}.gamma.{ct}" not in adata.obsm]
    beta_col = f"{key}.beta"
    if missing or beta_col not in adata.var.columns:
        raise MissingSlotError(
            f"DestVI results under key {key!r} not found (missing {missing[:3] or [f'var[{beta_col!r}]']}); "
            f"run deconvolve_destvi(adata, reference=..., key_added={key!r}) with this reference first."
        )
    gamma = np.stack([np.asarray(adata.obsm[f"{key}.gamma.{ct}"], dtype=np.float32) for ct in cell_types], axis=1)
    beta_all = adata.var[beta_col].to_numpy(dtype=np.float64)
    cols = np.flatnonzero(np.isfinite(beta_all))
    genes = [str(g) for g in adata.var_names[cols]]
    ref_index = {g: i for i, g in enumerate(reference.genes)}
    if any(g not in ref_index for g in genes):
        raise InvalidInputError(
            f"the DestVI results under key {key!r} were not made with this reference (gene sets differ)."
        )
    return gamma, genes, cols, beta_all[cols], np.array([ref_index[g] for g in genes])


def _decode_scale(reference: CondSCVIModel, gamma_ct: np.ndarray, ct_code: int, gidx: np.ndarray, beta: np.ndarray):
    """Cell-type-specific expression profiles (rows sum to 1 over the shared genes)."""
    torch = import_optional("torch", purpose="DestVI")
    mod = reference.module()
    w = mod.px.weight.detach()[torch.as_tensor(gidx)]
    b = mod.px.bias.detach()[torch.as_tensor(gidx)] + mod.per_ct_bias.detach()[ct_code, torch.as_tensor(gidx)]
    bt = torch.as_tensor(beta, dtype=torch.float32)
    out = []
    with torch.no_grad():
        for s in range(0, gamma_ct.shape[0], 4096):
            g = torch.as_tensor(gamma_ct[s : s + 4096], dtype=torch.float32)
            y = torch.full((g.shape[0],), ct_code, dtype=torch.long)
            h = mod.decoder(g, y)
            out.append(torch.softmax(h @ w.T + b + bt, dim=-1).numpy())
    return np.vstack(out) if out else np.zeros((0, len(gidx)), dtype=np.float32)


@renamed_options(key="destvi_key")
def get_scale_for_ct(
    adata: AnnData,
    reference: CondSCVIModel | str,
    ct: str,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    destvi_key: str = "destvi",
) -> pd.DataFrame:
    """Cell-type-specific imputed expression at the spots: the decoder at each spot's ``gamma`` of ``ct``.

    Parameters
    ----------
    adata
        Spots deconvolved by :func:`deconvolve_destvi`.
    reference
        The :class:`CondSCVIModel` used for the deconvolution (or its folder).
    ct
        Cell type.
    indices
        Spot positions (default: all spots).
    destvi_key
        ``key_added`` of the deconvolution. Deprecated alias: ``key=``.

    Returns
    -------
    DataFrame (spots x shared genes) of expression fractions of ``ct`` (each row sums to 1),
    technology offset ``beta`` included.

    Examples
    --------
    >>> scale = get_scale_for_ct(spots, ref, "Astro")
    """
    reference = _resolve_reference(reference)
    if ct not in reference.cell_types:
        raise KeyNotFoundError("cell type", ct, reference.cell_types)
    gamma, genes, _, beta, gidx = _destvi_slots(adata, reference, destvi_key)
    idx = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    c = reference.cell_types.index(ct)
    scale = _decode_scale(reference, gamma[idx, c, :], c, gidx, beta)
    return pd.DataFrame(scale, index=adata.obs_names[idx], columns=pd.Index(genes))
