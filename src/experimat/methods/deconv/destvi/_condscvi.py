"""The single-cell reference of DestVI: a conditional VAE of raw counts given the cell type (scLVM)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from experimat._errors import InvalidInputError
from experimat._logging import logger
from experimat._optional import import_optional
from experimat._saved_model import SavedModel, register_model
from experimat._settings import settings
from experimat.methods._checks import (
    check_counts,
    check_positive_int,
    counts_input,
    get_matrix,
    get_obs_column,
    store_params,
    to_json_safe,
)
from experimat.methods._expression import hvg_seurat_v3 as select_genes_vst
from experimat.methods._torch import minibatches, torch_device, torch_threads, train

if TYPE_CHECKING:
    from anndata import AnnData



def _as_csr(X):
    import scipy.sparse as sp

    return sp.csr_matrix(X, dtype=np.float32)


class CondSCVIModel(SavedModel):
    """A trained DestVI single-cell reference (conditional VAE of counts given the cell type).

    Holds the torch weights, the reference genes and cell types, and the reference cells' latent
    posterior (means, variances, labels) from which :func:`deconvolve_destvi` builds the VampPrior.
    Save with :meth:`save` (``config.json`` + ``arrays.npz``; no pickle) or ``expm.save_model`` and
    reload with :meth:`load` / ``expm.load_model`` without retraining.

    Attributes
    ----------
    genes
        Reference genes (decoder outputs), in order.
    cell_types
        Cell-type labels, in code order.
    config
        JSON-safe configuration (architecture, training parameters, training history).
    """

    format_version: ClassVar[int] = 2
    legacy_names: ClassVar[tuple[str, ...]] = ("experimat.methods.deconv.destvi._condscvi:CondSCVIModel",)

    def __init__(self, config: dict[str, Any], state: Mapping[str, Any]) -> None:
        self.config = config
        self.state = dict(state)
        self._module = None

    # -- properties
    @property
    def genes(self) -> list[str]:
        return list(self.config["genes"])

    @property
    def cell_types(self) -> list[str]:
        return list(self.config["cell_types"])

    @property
    def n_latent(self) -> int:
        return int(self.config["n_latent"])

    @property
    def training_history(self) -> list[float]:
        return list(self.config.get("training_history", []))

    def __repr__(self) -> str:
        return (
            f"CondSCVIModel({len(self.cell_types)} cell types, {len(self.genes)} genes, "
            f"n_latent={self.n_latent}, {int(self.state['latent_mean'].shape[0])} reference cells)"
        )

    # -- torch module
    def module(self):
        """The :class:`CondVAE` torch module (built on first use, on CPU, in eval mode)."""
        if self._module is None:
            from ._modules import CondVAE

            c = self.config
            mod = CondVAE(
                len(c["genes"]),
                len(c["cell_types"]),
                n_latent=c["n_latent"],
                n_hidden=c["n_hidden"],
                n_layers=c["n_layers"],
                dropout=c["dropout_rate"],
            )
            mod.load_state_dict({k[len("module.") :]: v for k, v in self.state.items() if k.startswith("module.")})
            mod.eval()
            self._module = mod
        return self._module

    def latent_posterior(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reference cells' posterior means, variances ``(n_cells, n_latent)`` and label codes."""
        return (
            self.state["latent_mean"].cpu().numpy(),
            self.state["latent_var"].cpu().numpy(),
            self.state["labels"].cpu().numpy(),
        )

    def mean_library(self) -> np.ndarray:
        """Mean total counts (over the reference genes) of the reference cells of each type."""
        return self.state["mean_library"].cpu().numpy()

    def vamp_prior(self, p: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Empirical VampPrior per cell type: k-means (``p`` clusters) of the type's posterior means.

        Returns means and variances ``(n_types, p, n_latent)`` and log mixture weights ``(n_types, p)``;
        each component's variance is the mean posterior variance plus the variance of the posterior
        means in the cluster. Types with fewer than ``p`` cells use one component per cell; unused
        components get weight zero (log weight ``-inf`` replaced by ``-1e4``).
        """
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits

        mean, var, labels = self.latent_posterior()
        n_types, n_latent = len(self.cell_types), self.n_latent
        pm = np.zeros((n_types, p, n_latent))
        pv = np.ones((n_types, p, n_latent))
        pw = np.full((n_types, p), -1e4)
        for c in range(n_types):
            idx = np.flatnonzero(labels == c)
            if idx.size == 0:
                pw[c, 0] = 0.0
                continue
            if idx.size > p:
                with threadpool_limits(limits=settings.n_jobs):
                    assign = KMeans(n_clusters=p, n_init=10, random_state=seed).fit_predict(mean[idx])
            else:
                assign = np.arange(idx.size)
            for k in np.unique(assign):
                members = idx[assign == k]
                pm[c, k] = mean[members].mean(0)
                pv[c, k] = var[members].mean(0) + (mean[members].var(0) if members.size > 1 else 0.0)
                pw[c, k] = np.log(members.size / idx.size)
        return pm, pv, pw

    def get_latent_representation(self, adata: AnnData, *, layer: str | None = "counts", labels_key: str | None = None):
        """Posterior means ``(n_obs, n_latent)`` of cells of ``adata`` (reference genes and labels needed)."""
        torch = import_optional("torch", purpose="DestVI")
        labels_key = labels_key or self.config["labels_key"]
        X, y = _reference_arrays(adata, self.genes, self.cell_types, layer=layer, labels_key=labels_key)
        mod = self.module()
        out = []
        with torch.no_grad():
            for start in range(0, X.shape[0], 1024):
                xb = torch.as_tensor(X[start : start + 1024].toarray())
                yb = torch.as_tensor(y[start : start + 1024])
                out.append(mod.encode(xb, yb)[0].numpy())
        return np.vstack(out) if out else np.zeros((0, self.n_latent), dtype=np.float32)

    # -- persistence (experimat.SavedModel: config.json + arrays.npz; tensors stored as numpy arrays)
    def get_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return dict(self.config), {k: _numpy(v) for k, v in self.state.items()}

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, Any]) -> CondSCVIModel:
        torch = import_optional("torch", purpose="DestVI")
        return cls(dict(config), {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _upgrade_condscvi_v1(config: dict[str, Any], arrays: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Version 1 (experimat <= 0.1: ``config.json`` with ``format_version`` + a torch ``model.pt``) -> 2.

    The state dict's tensors arrive as numpy arrays (read with ``weights_only=True``); the config
    loses its ``format_version`` key (the version is kept by the saved-model layout).
    """
    config.pop("format_version", None)
    return config, arrays


CondSCVIModel.upgrades = {1: _upgrade_condscvi_v1}
register_model("destvi.CondSCVIModel")(CondSCVIModel)


def _reference_arrays(adata, genes, cell_types, *, layer, labels_key):
    """Counts (CSR float32, restricted to ``genes``) and label codes of a reference AnnData."""
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        raise InvalidInputError(
            f"{len(missing)} of {len(genes)} reference genes are missing from the data (e.g. {missing[:5]})."
        )
    X = get_matrix(adata, layer)
    check_counts(X, layer=layer)
    idx = adata.var_names.get_indexer(genes)
    X = _as_csr(X)[:, idx]
    lab = get_obs_column(adata, labels_key).astype(str).to_numpy()
    unknown = sorted(set(lab) - set(cell_types))
    if unknown:
        raise InvalidInputError(
            f"labels {unknown[:5]} in obs[{labels_key!r}] are not reference cell types {cell_types}."
        )
    code = {c: i for i, c in enumerate(cell_types)}
    return X, np.array([code[v] for v in lab], dtype=np.int64)


@counts_input("layer")
def fit_condscvi(
    adatas: dict[str, AnnData] | AnnData,
    *,
    labels_key: str,
    layer: str | None = "counts",
    n_top_genes: int | None = 2000,
    genes: Sequence[str] | None = None,
    n_latent: int = 5,
    n_hidden: int = 128,
    n_layers: int = 2,
    dropout_rate: float = 0.05,
    max_epochs: int = 300,
    weight_obs: bool = False,
    batch_size: int = 128,
    lr: float = 1e-3,
    use_gpu: bool = True,
    n_threads: int | None = None,
    seed: int | None = None,
    key_added: str = "condscvi",
) -> CondSCVIModel:
    """Train the DestVI single-cell reference: a conditional VAE of raw counts given the cell type.

    One reference is trained over all given samples (their cells are pooled on the genes they share).
    Genes are chosen among the shared genes (restricted to ``genes`` when given, e.g. the genes of the
    spatial data) by a variance-stabilised highly-variable-gene ranking of the counts in the manner of
    Seurat v3 (:func:`select_genes_vst`; scikit-misc's loess is replaced by a local quadratic fit).
    The likelihood is negative binomial with one dispersion per gene; the latent prior is N(0, I).

    Parameters
    ----------
    adatas
        One AnnData, or ``{sample: AnnData}``; cells x genes with raw counts.
    labels_key
        ``obs`` column with the cell type of each cell.
    layer
        Layer holding raw counts (``None``: ``X``).
    n_top_genes
        Number of highly variable genes to model (``None``: all shared genes).
    genes
        Candidate genes (e.g. ``spots.var_names``); ``None``: all genes shared by the samples.
    n_latent
        Dimension of the latent space (DestVI default 5).
    n_hidden
        Width of the hidden layers.
    n_layers
        Number of hidden layers of the encoder and of the decoder.
    dropout_rate
        Dropout rate of the encoder and decoder during training.
    max_epochs
        Passes over the cells.
    weight_obs
        Reweight cells by the inverse frequency of their type (frequencies floored at 5 %), as scvi-tools.
    batch_size
        Cells per minibatch.
    lr
        Adam learning rate.
    use_gpu
        Use CUDA when torch sees it.
    n_threads
        Torch CPU threads (``None``: ``em.settings.n_jobs``, default 1).
    seed
        Random seed (``None``: ``em.settings.seed``); seeded CPU runs are reproducible.
    key_added
        Each AnnData gets ``obsm[f"{key_added}.latent"]`` (posterior means of its cells) and
        ``uns[key_added]['params']``.

    Returns
    -------
    The trained :class:`CondSCVIModel`.

    Examples
    --------
    >>> ref = fit_condscvi({"sc1": sc}, labels_key="cell_type", layer="counts", max_epochs=300)
    >>> ref.save("models/condscvi")
    """
    torch = import_optional("torch", purpose="DestVI")
    params = {k: v for k, v in locals().items() if k not in ("adatas", "torch")}
    params["genes"] = None if genes is None else f"<{len(list(genes))} genes>"
    samples = dict(adatas) if isinstance(adatas, Mapping) else {"_": adatas}
    if not samples:
        raise InvalidInputError("adatas is empty; pass at least one AnnData.")
    arch = {
        "n_latent": check_positive_int("n_latent", n_latent),
        "n_hidden": check_positive_int("n_hidden", n_hidden),
        "n_layers": check_positive_int("n_layers", n_layers),
        "dropout_rate": float(dropout_rate),
    }
    max_epochs = check_positive_int("max_epochs", max_epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    if n_top_genes is not None:
        n_top_genes = check_positive_int("n_top_genes", n_top_genes, minimum=2)
    if not 0 <= dropout_rate < 1:
        raise InvalidInputError(f"dropout_rate must be in [0, 1); got {dropout_rate!r}.")
    seed = settings.seed if seed is None else int(seed)

    X, labels, shared = _pool_samples(samples, layer=layer, labels_key=labels_key, genes=genes)
    cell_types = sorted(set(labels))
    if len(cell_types) < 2:
        raise InvalidInputError(f"obs[{labels_key!r}] has {len(cell_types)} cell type; DestVI needs at least 2.")
    X, genes_used, lib = _select_reference_genes(X, shared, n_top_genes)
    code = {c: i for i, c in enumerate(cell_types)}
    y = np.array([code[v] for v in labels], dtype=np.int64)
    counts = np.bincount(y, minlength=len(cell_types))
    start = logger.info(
        f"CondSCVI: {X.shape[0]} cells, {len(genes_used)} genes, {len(cell_types)} cell types, {max_epochs} epochs"
    )
    device = torch_device(use_gpu)
    threads = settings.n_jobs if n_threads is None else n_threads
    with torch.random.fork_rng(devices=[]), torch_threads(threads, device):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        mod, history = _train_condvae(
            X, y, _type_weights(counts, weight_obs), arch,
            max_epochs=max_epochs, batch_size=batch_size, lr=lr, device=device, generator=gen,
        )
        means, variances = _encode_cells(mod, X, y, device)
    state = {f"module.{k}": v.detach().cpu() for k, v in mod.state_dict().items()}
    state["latent_mean"] = means
    state["latent_var"] = variances
    state["labels"] = torch.as_tensor(y)
    state["mean_library"] = torch.as_tensor(np.array([lib[y == c].mean() for c in range(len(cell_types))]))
    config = {
        "model": "CondSCVI",
        "genes": genes_used,
        "cell_types": cell_types,
        "labels_key": labels_key,
        "layer": layer,
        **arch,
        "cells_per_type": {c: int(k) for c, k in zip(cell_types, counts, strict=True)},
        "samples": [s for s in samples if s != "_"],
        "params": to_json_safe({k: v for k, v in params.items() if k != "genes"}),
        "training_history": history,
    }
    model = CondSCVIModel(config, state)
    model._module = mod.cpu()
    logger.info("CondSCVI trained", time=start)
    _write_latent(samples, means.numpy(), key_added, params, n_genes=len(genes_used), cell_types=cell_types)
    return model


def _pool_samples(samples: Mapping[str, AnnData], *, layer, labels_key, genes):
    """The samples' counts (CSR float32) on the genes they share (within ``genes`` when given), and labels."""
    import scipy.sparse as sp

    shared = None
    for ad_ in samples.values():
        names = list(map(str, ad_.var_names))
        shared = names if shared is None else [g for g in shared if g in set(names)]
    if genes is not None:
        wanted = set(map(str, genes))
        shared = [g for g in shared if g in wanted]
    if len(shared) < 2:
        raise InvalidInputError(
            f"only {len(shared)} genes are shared by the samples"
            + (" and the given genes" if genes is not None else "")
            + "; the reference needs the same genes in every sample."
        )
    mats, labs = [], []
    for name, ad_ in samples.items():
        X = get_matrix(ad_, layer)
        check_counts(X, what=f"sample {name!r}", layer=layer)
        mats.append(_as_csr(X)[:, ad_.var_names.get_indexer(shared)])
        labs.append(get_obs_column(ad_, labels_key).astype(str).to_numpy())
    X = sp.vstack(mats).tocsr()
    lib = np.asarray(X.sum(1)).ravel()
    if (lib <= 0).any():
        raise InvalidInputError(
            f"{int((lib <= 0).sum())} cells have zero counts over the shared genes; remove them first."
        )
    return X, np.concatenate(labs), shared


def _select_reference_genes(X, shared: list[str], n_top_genes: int | None):
    """``X`` on the modelled genes (Seurat v3 HVGs, or all), the genes, and each cell's total over them."""
    gene_idx = np.arange(len(shared)) if n_top_genes is None else select_genes_vst(X, n_top_genes)
    X = X[:, gene_idx]
    genes_used = [shared[i] for i in gene_idx]
    lib = np.asarray(X.sum(1)).ravel()
    if (lib <= 0).any():
        raise InvalidInputError(
            f"{int((lib <= 0).sum())} cells have zero counts over the {len(genes_used)} selected genes; "
            "remove them or raise n_top_genes."
        )
    return X, genes_used, lib


def _type_weights(counts: np.ndarray, weight_obs: bool) -> np.ndarray:
    """Per-type likelihood weights: inverse type frequencies floored at 5 % (scvi-tools' ``weight_obs``), or ones."""
    if not weight_obs:
        return np.ones(len(counts))
    prop = np.maximum(counts / counts.sum(), 0.05)
    return 1.0 / (prop / prop.sum())


def _train_condvae(X, y, ct_weight, arch, *, max_epochs, batch_size, lr, device, generator):
    """Train the conditional VAE with the shared loop; returns the module (eval mode) and the loss history."""
    import torch

    from ._modules import CondVAE

    mod = CondVAE(
        X.shape[1], len(ct_weight), n_latent=arch["n_latent"], n_hidden=arch["n_hidden"],
        n_layers=arch["n_layers"], dropout=arch["dropout_rate"],
    ).to(device)
    rows = _row_loader(X, device)
    yt = torch.as_tensor(y, device=device)
    wt = torch.as_tensor(ct_weight, dtype=torch.float32, device=device)[yt]
    opt = torch.optim.Adam(mod.parameters(), lr=lr, eps=0.01, weight_decay=1e-6)

    def loss_fn(idx, epoch):
        idx_d = idx.to(device)
        return mod.loss(rows(idx), yt[idx_d], wt[idx_d], generator)

    mod.train()
    # every epoch shuffles (even a single batch); as scvi-tools, a last batch under 3 cells is dropped
    batches = minibatches(X.shape[0], batch_size, generator, full_batch=False, min_size=3)
    history = train(loss_fn, opt, batches, max_epochs=max_epochs, n_obs=X.shape[0], name="CondSCVI")
    mod.eval()
    return mod, history


def _row_loader(X, device, max_dense: int = 100_000_000):
    """``rows(idx)``: dense float32 rows of CSR ``X`` on ``device`` (all of ``X`` kept there when small)."""
    import torch

    if X.shape[0] * X.shape[1] <= max_dense:
        Xt = torch.as_tensor(X.toarray(), device=device)
        return lambda idx: Xt[idx.to(device) if hasattr(idx, "to") else idx]
    return lambda idx: torch.as_tensor(X[np.asarray(idx.cpu() if hasattr(idx, "cpu") else idx)].toarray(), device=device)


def _encode_cells(mod, X, y, device, chunk: int = 1024):
    """Posterior means and variances (CPU tensors) of all cells, in chunks."""
    import torch

    means, variances = [], []
    with torch.no_grad():
        for b in range(0, X.shape[0], chunk):
            xb = torch.as_tensor(X[b : b + chunk].toarray(), device=device)
            m_, v_ = mod.encode(xb, torch.as_tensor(y[b : b + chunk], device=device))
            means.append(m_.cpu())
            variances.append(v_.cpu())
    return torch.cat(means), torch.cat(variances)


def _write_latent(samples, latent: np.ndarray, key_added: str, params, **record) -> None:
    """Each sample's ``obsm[f"{key_added}.latent"]`` (its cells' posterior means) and ``uns[key_added]``."""
    offset = 0
    for ad_ in samples.values():
        ad_.obsm[f"{key_added}.latent"] = latent[offset : offset + ad_.n_obs].copy()
        offset += ad_.n_obs
        store_params(ad_, key_added, params, **record)
