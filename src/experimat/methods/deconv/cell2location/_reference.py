"""Reference cell-type signatures for cell2location (gene filter, NB regression, cluster means)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from experimat._errors import ExperimatWarning, InvalidInputError
from experimat._logging import logger
from experimat._saved_model import SavedModel, register_model
from experimat._settings import settings
from experimat.methods._checks import (
    check_choice,
    check_counts,
    check_positive_int,
    counts_input,
    get_matrix,
    get_obs_column,
    to_json_safe,
)
from experimat.methods._torch import minibatches, torch_device, train

from ._svi import (
    MeanFieldLogNormal,
    count_histogram,
    exponential_logpdf,
    gamma_logpdf,
    histogram_to_torch,
    make_generator,
    nb_loglik_suffstats,
    still_decreasing,
)

if TYPE_CHECKING:
    from anndata import AnnData

SIGNATURE_METHODS = ("nb_regression", "cluster_mean")


def _csr(X):
    import scipy.sparse as sp

    return sp.csr_matrix(X)


def _gene_stats(X) -> tuple[np.ndarray, np.ndarray]:
    X = _csr(X)
    n_cells = np.asarray((X > 0).sum(0)).ravel().astype(np.float64)
    total = np.asarray(X.sum(0)).ravel().astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        nonz_mean = np.where(n_cells > 0, total / np.maximum(n_cells, 1), 0.0)
    return n_cells, nonz_mean


def filter_genes(
    adata: AnnData,
    *,
    layer: str | None = "counts",
    cell_count_cutoff: float = 15,
    cell_percentage_cutoff2: float = 0.05,
    nonz_mean_cutoff: float = 1.12,
) -> np.ndarray:
    """Gene pre-selection of the cell2location tutorial for a single-cell reference.

    A gene is kept when it is detected in more than ``cell_percentage_cutoff2`` of all cells,
    or when it is detected in more than ``cell_count_cutoff`` cells **and** its mean count over
    the cells that detect it exceeds ``nonz_mean_cutoff``. This keeps broadly expressed genes
    and rare but specific markers while removing noise.

    Parameters
    ----------
    adata
        Single-cell reference with raw counts.
    layer
        Layer with the counts (``None`` for ``X``).
    cell_count_cutoff
        Minimum number of cells detecting a gene (second rule).
    cell_percentage_cutoff2
        Fraction of cells above which a gene is always kept (first rule).
    nonz_mean_cutoff
        Minimum mean of non-zero counts (second rule).

    Returns
    -------
    Boolean mask over ``adata.var_names`` of the kept genes.

    Examples
    --------
    >>> keep = filter_genes(adata_ref, layer="counts")  # doctest: +SKIP
    >>> adata_ref = adata_ref[:, keep].copy()  # doctest: +SKIP
    """
    return gene_filter_histogram(
        adata,
        layer=layer,
        cell_count_cutoff=cell_count_cutoff,
        cell_percentage_cutoff2=cell_percentage_cutoff2,
        nonz_mean_cutoff=nonz_mean_cutoff,
    )["selected"]


def gene_filter_histogram(
    adata: AnnData,
    *,
    layer: str | None = "counts",
    cell_count_cutoff: float = 15,
    cell_percentage_cutoff2: float = 0.05,
    nonz_mean_cutoff: float = 1.12,
    bins: int = 100,
) -> dict[str, Any]:
    """Data of the gene-selection 2-D histogram plot of the cell2location tutorial.

    Parameters
    ----------
    adata, layer, cell_count_cutoff, cell_percentage_cutoff2, nonz_mean_cutoff
        As in :func:`filter_genes`.
    bins
        Number of bins per axis of the histogram.

    Returns
    -------
    dict with per-gene arrays ``log10_n_cells`` (x axis), ``log10_nonz_mean`` (y axis) and
    ``selected`` (bool), the cutoffs on the plot's axes ``x_cutoff`` (log10 cell_count_cutoff),
    ``x_cutoff2`` (log10 of n_cells * cell_percentage_cutoff2), ``y_cutoff`` (log10 nonz_mean_cutoff),
    the 2-D histogram of all detected genes (``hist``, ``x_edges``, ``y_edges``) and ``n_selected``.

    Examples
    --------
    >>> h = gene_filter_histogram(adata_ref)  # doctest: +SKIP
    >>> plt.pcolormesh(h["x_edges"], h["y_edges"], h["hist"].T)  # doctest: +SKIP
    """
    X = get_matrix(adata, layer)
    n_cells, nonz_mean = _gene_stats(X)
    detected = n_cells > 0
    with np.errstate(divide="ignore"):
        lx = np.where(detected, np.log10(np.maximum(n_cells, 1e-300)), -np.inf)
        ly = np.where(detected, np.log10(np.maximum(nonz_mean, 1e-300)), -np.inf)
    x_cut = float(np.log10(cell_count_cutoff))
    x_cut2 = float(np.log10(max(adata.n_obs * cell_percentage_cutoff2, 1e-12)))
    y_cut = float(np.log10(nonz_mean_cutoff))
    selected = detected & ((lx > x_cut2) | ((lx > x_cut) & (ly > y_cut)))
    if detected.any():
        hist, xe, ye = np.histogram2d(lx[detected], ly[detected], bins=bins)
    else:
        hist, xe, ye = np.zeros((bins, bins)), np.linspace(0, 1, bins + 1), np.linspace(0, 1, bins + 1)
    return {
        "log10_n_cells": lx,
        "log10_nonz_mean": ly,
        "selected": selected,
        "x_cutoff": x_cut,
        "x_cutoff2": x_cut2,
        "y_cutoff": y_cut,
        "hist": hist,
        "x_edges": xe,
        "y_edges": ye,
        "n_selected": int(selected.sum()),
        "genes": np.asarray(adata.var_names, dtype=str),
    }


@dataclass
class ReferenceSignatures(SavedModel):
    """Reference expression signatures of cell types: expected counts per gene per type.

    Attributes
    ----------
    signatures
        DataFrame genes x cell types of expected counts per cell (posterior means for
        ``nb_regression``, normalised cluster means for ``cluster_mean``).
    config
        JSON-safe dict: method, parameters, label counts, gene-filter statistics, training history.
    """

    signatures: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    format_version: ClassVar[int] = 2
    legacy_names: ClassVar[tuple[str, ...]] = ("experimat.methods.deconv.cell2location._reference:ReferenceSignatures",)

    @property
    def genes(self) -> list[str]:
        return [str(g) for g in self.signatures.index]

    @property
    def labels(self) -> list[str]:
        return [str(c) for c in self.signatures.columns]

    def __repr__(self) -> str:
        return (
            f"ReferenceSignatures(method={self.config.get('method')!r}, n_genes={self.signatures.shape[0]}, "
            f"n_types={self.signatures.shape[1]}, labels={self.labels[:8]}{'...' if len(self.labels) > 8 else ''})"
        )

    # -- persistence (experimat.SavedModel: config.json + arrays.npz, nothing pickled)
    def get_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        arrays = {
            "signatures": self.signatures.to_numpy(dtype=np.float64),
            "genes": np.asarray(self.genes, dtype=str),
            "labels": np.asarray(self.labels, dtype=str),
        }
        for k, v in (self.config.get("_arrays") or {}).items():
            arrays[f"extra.{k}"] = np.asarray(v)
        cfg = {k: v for k, v in self.config.items() if k != "_arrays"}
        return to_json_safe(cfg), arrays

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, Any]) -> ReferenceSignatures:
        sig = pd.DataFrame(
            np.asarray(arrays["signatures"], dtype=np.float64),
            index=np.asarray(arrays["genes"]).astype(str),
            columns=np.asarray(arrays["labels"]).astype(str),
        )
        cfg = dict(config)
        extra = {k[len("extra.") :]: v for k, v in arrays.items() if k.startswith("extra.")}
        if extra:
            cfg["_arrays"] = extra
        return cls(signatures=sig, config=cfg)


def _upgrade_signatures_v1(config: dict[str, Any], arrays: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Version 1 (experimat <= 0.1: ``config.json`` with ``format_version`` + ``signatures.npz``) -> 2."""
    config.pop("format_version", None)
    return config, arrays


ReferenceSignatures.upgrades = {1: _upgrade_signatures_v1}
register_model("cell2location.ReferenceSignatures")(ReferenceSignatures)


def _concat(adatas: Mapping[str, AnnData] | AnnData, layer: str | None) -> AnnData:
    import anndata as ad

    if isinstance(adatas, ad.AnnData):
        return adatas
    if not isinstance(adatas, Mapping) or not adatas:
        raise InvalidInputError("adatas must be an AnnData or a non-empty dict {sample: AnnData}.")
    parts = {}
    for name, a in adatas.items():
        X = get_matrix(a, layer)
        obs = a.obs.copy()
        if "sample" not in obs.columns:
            obs["sample"] = str(name)
        parts[str(name)] = ad.AnnData(_csr(X), obs=obs, var=pd.DataFrame(index=a.var_names.copy()))
    if len(parts) == 1:
        return next(iter(parts.values()))
    shared = set.intersection(*(set(p.var_names) for p in parts.values()))
    if not shared:
        raise InvalidInputError("the reference samples share no genes (var_names); harmonise gene ids first.")
    return ad.concat(parts, join="inner", index_unique="-")


def _codes(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    cat = pd.Categorical(values.astype(str))
    return np.asarray(cat.codes, dtype=np.int64), [str(c) for c in cat.categories]


@counts_input("layer")
def reference_signatures(
    adatas: Mapping[str, AnnData] | AnnData,
    *,
    labels_key: str = "cell_type",
    batch_key: str | None = None,
    categorical_covariate_keys: Sequence[str] | None = None,
    layer: str | None = "counts",
    method: str = "nb_regression",
    max_epochs: int = 250,
    batch_size: int | None = None,
    lr: float = 0.01,
    cell_count_cutoff: float = 15,
    cell_percentage_cutoff2: float = 0.05,
    nonz_mean_cutoff: float = 1.12,
    use_gpu: bool = True,
    deterministic: bool = True,
    seed: int | None = None,
    key_added: str = "reference_signatures",
) -> ReferenceSignatures:
    """Cell-type expression signatures from single-cell references (cell2location step 1).

    All given samples are concatenated (inner join on genes; a ``sample`` obs column holds
    the dict key when absent) and one reference is fitted. Genes are pre-selected with
    :func:`filter_genes`. Two methods:

    - ``"nb_regression"``: the negative-binomial regression of cell2location,
      ``mu_cg = (g_{f(c),g} + s_{e(c),g}) * y_{e(c)} * prod_t y_{t(c),g}`` with per-type expression
      ``g_fg``, per-batch additive background ``s_eg``, per-batch detection ``y_e`` and
      multiplicative technology effects ``y_tg`` for each categorical covariate, fitted by SVI
      (mean-field log-normal posterior, Adam, torch). The likelihood is evaluated from per-group
      sufficient statistics (cell counts, count sums, histograms of count values), exactly. The signature is the posterior mean of
      ``g_fg`` times the mean batch detection ``y_e`` (expected counts per cell of type ``f``).
    - ``"cluster_mean"``: mean per cell type of counts normalised to the median library size (fast).

    Parameters
    ----------
    adatas
        One AnnData or ``{sample: AnnData}`` of single-cell references with raw counts.
    labels_key
        obs column with the cell-type labels.
    batch_key
        obs column with the batch (e.g. ``"sample"``); ``None``: one batch.
    categorical_covariate_keys
        obs columns with technical covariates (e.g. ``["method"]``), each a multiplicative gene effect.
    layer
        Layer with raw counts (``None`` for ``X``).
    method
        ``"nb_regression"`` or ``"cluster_mean"``.
    max_epochs
        Training epochs (``nb_regression``).
    batch_size
        Cells per mini-batch; ``None`` (default): all cells at once. Full batch is exact and fast at
        any number of cells: cells of one (label, batch, covariates) group share one mean, so each
        step needs only per-group count sums and a histogram of count values per gene, computed once.
    lr
        Adam learning rate.
    cell_count_cutoff, cell_percentage_cutoff2, nonz_mean_cutoff
        Gene pre-selection, see :func:`filter_genes`.
    use_gpu
        Use CUDA when torch sees it.
    deterministic
        On CPU, train single-threaded so that seeded runs are bit-for-bit reproducible
        (multi-threaded BLAS can reorder sums); ``False`` uses torch's thread setting.
    seed
        Random seed (``None``: ``em.settings.seed``).
    key_added
        Each input AnnData gets its call's parameters in ``uns[key_added]['params']``.

    Returns
    -------
    :class:`ReferenceSignatures` (genes x types); save it with ``.save(folder)``.

    Examples
    --------
    >>> import experimat as em
    >>> from experimat.methods.deconv.cell2location import reference_signatures
    >>> sig = reference_signatures({"s1": adata_sc}, labels_key="cell_type", max_epochs=250)  # doctest: +SKIP
    >>> sig.save("project/models/c2l_reference")  # doctest: +SKIP
    """
    method = check_choice("method", method, SIGNATURE_METHODS)
    check_positive_int("max_epochs", max_epochs)
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    seed = settings.seed if seed is None else seed
    params = {k: v for k, v in locals().items() if k not in ("adatas",)}
    start = logger.info(f"reference signatures ({method})")
    adata = _concat(adatas, layer)
    lay = None if isinstance(adatas, Mapping) else layer  # a dict was concatenated from its layer already
    X = get_matrix(adata, lay)
    check_counts(X, layer=layer)
    labels = get_obs_column(adata, labels_key)
    if labels.isna().any():
        raise InvalidInputError(
            f"obs[{labels_key!r}] has {int(labels.isna().sum())} missing labels; drop or label those cells first."
        )
    hist = gene_filter_histogram(
        adata,
        layer=lay,
        cell_count_cutoff=cell_count_cutoff,
        cell_percentage_cutoff2=cell_percentage_cutoff2,
        nonz_mean_cutoff=nonz_mean_cutoff,
    )
    keep = hist["selected"]
    if keep.sum() == 0:
        raise InvalidInputError("no gene passes the gene filter; lower cell_count_cutoff / nonz_mean_cutoff.")
    X = _csr(X)[:, keep]
    genes = np.asarray(adata.var_names)[keep].astype(str)
    label_codes, label_names = _codes(labels)
    counts = np.bincount(label_codes, minlength=len(label_names))
    if len(label_names) < 2:
        raise InvalidInputError(
            f"obs[{labels_key!r}] has {len(label_names)} label(s); at least 2 cell types are needed."
        )
    batch_codes, batch_names = (
        _codes(get_obs_column(adata, batch_key))
        if batch_key is not None
        else (np.zeros(adata.n_obs, np.int64), ["all"])
    )
    covs = []
    for key in categorical_covariate_keys or []:
        covs.append(_codes(get_obs_column(adata, key)))
    config: dict[str, Any] = {
        "method": method,
        "params": to_json_safe(params),
        "label_counts": {n: int(c) for n, c in zip(label_names, counts)},
        "n_cells": int(adata.n_obs),
        "n_genes_input": int(adata.n_vars),
        "n_genes_selected": int(keep.sum()),
        "batches": batch_names,
    }
    if method == "cluster_mean":
        lib = np.asarray(X.sum(1)).ravel().astype(np.float64)
        scale = np.median(lib[lib > 0]) / np.maximum(lib, 1.0)
        Xn = _csr(X.multiply(scale[:, None]))
        onehot = np.zeros((adata.n_obs, len(label_names)))
        onehot[np.arange(adata.n_obs), label_codes] = 1.0
        sig = np.asarray(Xn.T @ onehot) / counts[None, :]
        config["training_history"] = []
    else:
        sig, history = _fit_regression(
            X,
            label_codes,
            len(label_names),
            batch_codes,
            len(batch_names),
            covs,
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            use_gpu=use_gpu,
            seed=seed,
            deterministic=deterministic,
        )
        config["training_history"] = history
        if still_decreasing(history):
            warnings.warn(
                f"reference_signatures: the loss was still decreasing after {max_epochs} epochs; "
                "increase max_epochs for converged signatures.",
                ExperimatWarning,
                stacklevel=2,
            )
    signatures = pd.DataFrame(sig, index=pd.Index(genes, name="gene"), columns=pd.Index(label_names, name=labels_key))
    if not isinstance(adatas, Mapping):
        targets = {"": adatas}
    else:
        targets = dict(adatas)
    for a in targets.values():
        entry = a.uns.get(key_added)
        entry = dict(entry) if isinstance(entry, Mapping) else {}
        entry["params"] = to_json_safe(params)
        entry["n_genes_selected"] = int(keep.sum())
        a.uns[key_added] = entry
    logger.info(f"reference signatures: {len(genes)} genes x {len(label_names)} types", time=start)
    return ReferenceSignatures(signatures=signatures, config=config)


def _group_stats(torch: Any, X, grp: np.ndarray, n_grp: int, device, dtype=None) -> dict[str, Any]:
    """Sufficient statistics of the NB likelihood for cells in groups: sizes, count sums, value histogram."""
    import scipy.sparse as sp

    dtype = torch.float32 if dtype is None else dtype
    n = X.shape[0]
    onehot = sp.csr_matrix((np.ones(n), (grp, np.arange(n))), shape=(n_grp, n))
    sums = np.asarray((onehot @ _csr(X)).toarray(), dtype=np.float64)
    return {
        "counts": torch.tensor(np.bincount(grp, minlength=n_grp), dtype=dtype, device=device),
        "sums": torch.tensor(sums, dtype=dtype, device=device),
        "sums_np": sums,
        "hist": histogram_to_torch(torch, count_histogram(X), device, dtype),
    }


def _fit_regression(
    X,
    label_codes: np.ndarray,
    n_types: int,
    batch_codes: np.ndarray,
    n_batch: int,
    covs: list[tuple[np.ndarray, list[str]]],
    *,
    max_epochs: int,
    batch_size: int | None,
    lr: float,
    use_gpu: bool,
    seed: int,
    deterministic: bool,
) -> tuple[np.ndarray, list[float]]:
    """SVI fit of the cell2location reference regression; returns (signatures G x F, loss history)."""
    from experimat._optional import import_optional

    torch = import_optional("torch", purpose="cell2location reference signatures")
    device = torch_device(use_gpu)
    X = _csr(X).astype(np.float64)
    n_obs, n_vars = X.shape
    cov_offsets = np.cumsum([0] + [len(n) for _, n in covs])
    n_cov_levels = int(cov_offsets[-1])
    # cells sharing (label, batch, covariates) share one NB mean (the model has no per-cell term),
    # so the likelihood needs only per-group sufficient statistics (see nb_loglik_suffstats)
    keys = np.column_stack([label_codes, batch_codes, *[c for c, _ in covs]])
    uniq, grp = np.unique(keys, axis=0, return_inverse=True)
    grp = np.asarray(grp).ravel()
    n_grp = uniq.shape[0]
    stats_all = _group_stats(torch, X, grp, n_grp, device)

    # data-driven initial values (posterior locations start near the per-type means)
    lab_sums = np.zeros((n_types, n_vars))
    np.add.at(lab_sums, uniq[:, 0], stats_all["sums_np"])
    type_mean = lab_sums / np.bincount(label_codes, minlength=n_types)[:, None]
    g = MeanFieldLogNormal()
    f32 = np.float32
    g.add(torch, "per_cluster_mu_fg", np.maximum(type_mean, 1e-3).astype(f32), init_scale=0.1, device=device)
    g.add(torch, "detection_mean_y_e", np.ones((n_batch, 1), f32), init_scale=0.1, device=device)
    if n_cov_levels:
        g.add(torch, "detection_tech_gene_tg", np.ones((n_cov_levels, n_vars), f32), init_scale=0.05, device=device)
    g.add(torch, "s_g_gene_add_alpha_hyp", np.full((1, 1), 3.0, f32), init_scale=0.1, device=device)
    g.add(torch, "s_g_gene_add_mean", np.full((n_batch, 1), 0.01, f32), init_scale=0.1, device=device)
    g.add(torch, "s_g_gene_add_alpha_e_inv", np.full((n_batch, 1), 1 / 3, f32), init_scale=0.1, device=device)
    g.add(torch, "s_g_gene_add", np.full((n_batch, n_vars), 0.01, f32), init_scale=0.1, device=device)
    g.add(torch, "alpha_g_phi_hyp", np.full((1, 1), 3.0, f32), init_scale=0.1, device=device)
    g.add(torch, "alpha_g_inverse", np.full((1, n_vars), 1 / 3, f32), init_scale=0.1, device=device)
    g.build(torch, device)
    opt = torch.optim.Adam(g.parameters(), lr=lr)
    grp_lab = torch.tensor(uniq[:, 0], device=device)
    grp_bat = torch.tensor(uniq[:, 1], device=device)
    grp_cov = [torch.tensor(uniq[:, 2 + k], device=device) for k in range(len(covs))]
    gen = make_generator(torch, seed)
    perm_rng = np.random.default_rng(seed)
    one = torch.tensor(1.0, device=device)

    def T(v):
        return torch.tensor(v, dtype=torch.float32, device=device)

    def step(idx: np.ndarray | None, epoch: int):
        sites, glob, _ = g.draw(torch, gen)
        lp = []

        def site(name, logpdf):
            u, z = sites[name]
            lp.append(logpdf(u, z).sum())
            return z

        mu_fg = site("per_cluster_mu_fg", lambda u, z: gamma_logpdf(torch, u, z, one, one))
        y_e = site("detection_mean_y_e", lambda u, z: gamma_logpdf(torch, u, z, one, one))
        if n_cov_levels:
            tg = site("detection_tech_gene_tg", lambda u, z: gamma_logpdf(torch, u, z, T(200.0), T(200.0)))
        add_hyp = site("s_g_gene_add_alpha_hyp", lambda u, z: gamma_logpdf(torch, u, z, T(9.0), T(3.0)))
        add_mean = site("s_g_gene_add_mean", lambda u, z: gamma_logpdf(torch, u, z, one, T(100.0)))
        add_inv = site("s_g_gene_add_alpha_e_inv", lambda u, z: exponential_logpdf(torch, z, add_hyp))
        add_alpha = 1.0 / add_inv.pow(2)
        s_add = site("s_g_gene_add", lambda u, z: gamma_logpdf(torch, u, z, add_alpha, add_alpha / add_mean))
        phi = site("alpha_g_phi_hyp", lambda u, z: gamma_logpdf(torch, u, z, T(9.0), T(3.0)))
        a_inv = site("alpha_g_inverse", lambda u, z: exponential_logpdf(torch, z, phi))
        alpha = 1.0 / a_inv.pow(2)

        # one mean row per group of cells
        mu = (mu_fg[grp_lab] + s_add[grp_bat]) * y_e[grp_bat]
        for k, c in enumerate(grp_cov):
            mu = mu * tg[int(cov_offsets[k]) + c]
        if idx is None:
            stats, scale = stats_all, 1.0
        else:
            stats, scale = _group_stats(torch, X[idx], grp[idx], n_grp, device), n_obs / len(idx)
        ll = nb_loglik_suffstats(torch, mu, alpha, stats["counts"], stats["sums"], stats["hist"])
        return -(scale * ll + sum(lp) + glob)

    history = train(
        step,
        opt,
        minibatches(n_obs, batch_size, perm_rng, sort=True),
        max_epochs=max_epochs,
        n_obs=n_obs,
        name="reference regression",
        epoch_loss="batch_mean",
        threads=1 if deterministic else None,
        device=device,
    )
    post = g.summary(torch, "per_cluster_mu_fg")["means"]
    y_e = g.summary(torch, "detection_mean_y_e")["means"].mean()
    return (post * y_e).T, history
