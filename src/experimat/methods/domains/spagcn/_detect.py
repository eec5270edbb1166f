"""Domain detection and multi-sample integration with SpaGCN."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from experimat._errors import ExperimatWarning, InvalidInputError, MissingSlotError
from experimat._logging import logger
from experimat._optional import import_optional, torch_device
from experimat._settings import settings
from experimat.methods._checks import check_choice, check_positive_int, get_coordinates, is_integer_matrix, store_params

from . import _graph, _model

if TYPE_CHECKING:
    from anndata import AnnData

INIT_METHODS = ("leiden", "kmeans")
REFINE_SHAPES = ("hexagon", "square", "none")


def _expression(adata: AnnData, layer: str | None):
    if layer is None or layer == "X":
        if adata.X is None:
            raise MissingSlotError(f"adata.X is empty; pass layer= one of {list(adata.layers.keys())}.")
        X = adata.X
    elif layer not in adata.layers:
        raise MissingSlotError(
            f"layer {layer!r} not found; available layers: {list(adata.layers.keys())}. SpaGCN works on "
            "log-normalised expression; make it with `adata.layers['lognorm'] = sc.pp.log1p("
            "sc.pp.normalize_total(adata, target_sum=1e4, inplace=False)['X'])` "
            "(or sc.pp.normalize_total + sc.pp.log1p on a copy of the counts), or pass layer=None for adata.X."
        )
    else:
        X = adata.layers[layer]
    if is_integer_matrix(X, max_check=200_000):
        data = X.data if hasattr(X, "data") and not isinstance(X, np.ndarray) else np.asarray(X)
        if data.size and float(np.max(data)) > 30:
            import warnings

            warnings.warn(
                f"layer {layer!r} looks like raw counts; SpaGCN expects log-normalised expression "
                "(sc.pp.normalize_total + sc.pp.log1p).",
                ExperimatWarning,
                stacklevel=3,
            )
    return X


def _check_common(n_obs: int, n_clusters: int, p: float, lr: float, tol: float) -> None:
    check_positive_int("n_clusters", n_clusters, minimum=2)
    if n_clusters > n_obs:
        raise InvalidInputError(f"n_clusters={n_clusters} exceeds the number of spots ({n_obs}); pass fewer domains.")
    for name, value in (("p", p), ("lr", lr), ("tol", tol)):
        if not (isinstance(value, (int, float)) and value > 0):
            raise InvalidInputError(f"{name} must be a positive number; got {value!r}.")


def _graph_coords(adata, xy, histology, channels, library_id, alpha):
    colour = None
    if histology:
        colour = _graph.histology_feature(adata, xy, channels=channels, library_id=library_id)
    return _graph.graph_coordinates(xy, colour, alpha)


def _as_categorical(labels: np.ndarray, categories: Sequence[str] | None = None) -> pd.Categorical:
    text = np.asarray([str(v) for v in labels], dtype=object)
    if categories is None:
        categories = sorted(set(text), key=lambda s: (len(s), s))
    return pd.Categorical(text, categories=list(categories))


def spatial_detect_domains_spagcn(
    adata: AnnData,
    *,
    layer: str | None = "lognorm",
    channels: Sequence[str] | None = None,
    n_clusters: int = 7,
    histology: bool = False,
    refine_shape: str = "hexagon",
    p: float = 0.5,
    alpha: float = 1.0,
    n_pcs: int = 50,
    init: str = "leiden",
    resolution: float | None = None,
    n_neighbors: int = 10,
    lr: float = 0.05,
    max_epochs: int = 200,
    tol: float = 5e-3,
    spatial_key: str = "spatial",
    library_id: str | None = None,
    seed: int | None = None,
    use_gpu: bool = True,
    key_added: str = "spagcn.domain",
    refined_key_added: str = "spagcn.refined",
) -> pd.DataFrame:
    """Spatial domains with SpaGCN (graph convolution + iterative clustering).

    Spots are joined by Gaussian weights of their distance in (x, y), or in (x, y, z) where ``z`` is
    the standardised colour of each spot's image patch (``histology=True``); the width ``l`` makes the
    mean neighbour weight equal ``p``. One graph convolution of the PCA of ``layer`` is clustered
    DEC-style, initialised by Leiden with the resolution searched to give ``n_clusters`` domains
    (or by k-means). Domains are then refined by a majority vote over the nearest spots.

    Parameters
    ----------
    adata
        Spots x genes, with coordinates in ``obsm[spatial_key]`` (full-resolution pixels for Visium).
    layer
        Log-normalised expression (``None``: ``adata.X``).
    channels
        Image channels for the histology term, ``"<image key>/<r|g|b|index>"`` addressing
        ``adata.uns['spatial'][library_id]['images'][image key]`` (e.g. ``["hires/r", "hires/g", "hires/b"]``);
        ``None``: the three channels of ``hires`` (else the first stored image).
    n_clusters
        Number of domains (>= 2, <= number of spots).
    histology
        Add the image colour as a third coordinate of the graph.
    refine_shape
        ``"hexagon"`` (Visium, 6 neighbours), ``"square"`` (ST, 4 neighbours) or ``"none"``.
    p
        Mean summed weight a spot receives from its neighbours (SpaGCN's p).
    alpha
        Weight of the histology coordinate relative to the spread of x and y.
    n_pcs
        Principal components of the expression used as node features.
    init
        ``"leiden"`` (resolution searched to hit ``n_clusters``) or ``"kmeans"``.
    resolution
        A fixed Leiden resolution instead of the search.
    n_neighbors
        Neighbours of the feature graph that Leiden clusters.
    lr
        Adam learning rate.
    max_epochs
        Maximum training epochs.
    tol
        Stop when fewer than this fraction of the labels change between target updates.
    spatial_key
        ``obsm`` key of the coordinates.
    library_id
        Library of ``uns['spatial']`` holding the image (needed when several are stored).
    seed
        Random seed (``None``: ``em.settings.seed``); seeded CPU runs are reproducible.
    use_gpu
        Use a CUDA GPU through torch when present.
    key_added
        ``obs`` column of the domains; parameters go to ``uns[key_added]['params']``.
    refined_key_added
        ``obs`` column of the refined domains.

    Returns
    -------
    DataFrame (spots x ``[key_added, refined_key_added]``) of categorical domain labels, also written
    to ``adata.obs``.

    Examples
    --------
    >>> import experimat as em, scanpy as sc
    >>> from experimat.methods.domains.spagcn import spatial_detect_domains_spagcn
    >>> adata = em.datasets.synthetic_domains(1000, 5)
    >>> adata.layers["lognorm"] = sc.pp.log1p(sc.pp.normalize_total(adata, inplace=False)["X"])
    >>> df = spatial_detect_domains_spagcn(adata, n_clusters=5, seed=0)
    >>> adata.obs["spagcn.refined"].nunique()
    5
    """
    torch = import_optional("torch", purpose="SpaGCN")
    params = dict(locals())
    params.pop("adata")
    params.pop("torch")
    check_choice("init", init, INIT_METHODS)
    check_choice("refine_shape", refine_shape, REFINE_SHAPES)
    _check_common(adata.n_obs, n_clusters, p, lr, tol)
    check_positive_int("n_pcs", n_pcs)
    check_positive_int("max_epochs", max_epochs)
    X = _expression(adata, layer)
    xy = get_coordinates(adata, spatial_key, min_obs=3)[:, :2]
    coords = _graph_coords(adata, xy, histology, channels, library_id, alpha)
    seed = int(settings.seed if seed is None else seed)
    device = torch_device(use_gpu)
    start = logger.info(f"SpaGCN: {adata.n_obs} spots, {n_clusters} domains{' with histology' if histology else ''}")
    width = _graph.search_l(coords, p, device=device)
    logger.info(f"    Gaussian width l = {width:.4g} (p = {p})")
    embed = _model.pca_embedding(X, n_pcs, seed, device)
    ax = _graph.propagate(coords, width, embed, device)
    with torch.random.fork_rng(devices=[]):
        fit = _model.fit_gcdec(
            ax,
            n_clusters=n_clusters,
            init=init,
            seed=seed,
            lr=lr,
            max_epochs=max_epochs,
            tol=tol,
            n_neighbors=n_neighbors,
            resolution=resolution,
            device=device,
        )
    labels = _as_categorical(fit.labels)
    adata.obs[key_added] = pd.Categorical(labels, categories=[c for c in labels.categories if (labels == c).any()])
    columns = [key_added]
    if refine_shape != "none":
        refined = _graph.refine_labels(xy, np.asarray(labels.astype(str)), refine_shape)
        adata.obs[refined_key_added] = _as_categorical(refined)
        columns.append(refined_key_added)
    store_params(
        adata,
        key_added,
        params,
        l=float(width),
        resolution=float(fit.resolution) if fit.resolution is not None else "none",
        init_used=fit.init,
        n_epochs=int(fit.n_epochs),
    )
    logger.info(f"SpaGCN: {adata.obs[key_added].nunique()} domains after {fit.n_epochs} epochs", time=start)
    return adata.obs[columns].copy()


def integrate_domains_spagcn(
    adatas: Mapping[str, AnnData],
    *,
    n_clusters: int = 15,
    layer: str | None = "lognorm",
    result_key: str = "integrated",
    histology: bool = False,
    channels: Sequence[str] | None = None,
    p: float = 0.5,
    alpha: float = 1.0,
    n_pcs: int = 50,
    init: str = "leiden",
    resolution: float | None = None,
    n_neighbors: int = 10,
    lr: float = 0.05,
    max_epochs: int = 500,
    tol: float = 5e-3,
    spatial_key: str = "spatial",
    seed: int | None = 100,
    use_gpu: bool = True,
) -> dict[str, pd.DataFrame]:
    """Domains shared across samples: one SpaGCN model over several samples (multiSpaGCN).

    Each sample gets its own spot graph (own width ``l``, optional histology); the graphs form a
    block-diagonal adjacency, the expression of the genes common to all samples is reduced by one
    PCA, and one model clusters all spots, so domain labels are comparable across samples.

    Parameters
    ----------
    adatas
        ``{sample: AnnData}``; each has ``obsm[spatial_key]`` and ``layer``.
    n_clusters
        Number of domains over all samples.
    layer
        Log-normalised expression (``None``: ``adata.X``).
    result_key
        ``obs`` column written in every sample; parameters go to each sample's ``uns[result_key]['params']``.
    histology
        Add each sample's image colour as a third graph coordinate.
    channels
        Image channels, as in :func:`spatial_detect_domains_spagcn`.
    p
        Mean neighbour weight defining each sample's ``l``.
    alpha
        Weight of the histology coordinate.
    n_pcs
        Principal components of the joint expression.
    init
        ``"leiden"`` (resolution searched) or ``"kmeans"``.
    resolution
        A fixed Leiden resolution instead of the search.
    n_neighbors
        Neighbours of the feature graph for Leiden.
    lr
        Adam learning rate.
    max_epochs
        Maximum training epochs.
    tol
        Stopping tolerance on the fraction of changed labels.
    spatial_key
        ``obsm`` key of the coordinates.
    seed
        Random seed (``None``: ``em.settings.seed``).
    use_gpu
        Use a CUDA GPU through torch when present.

    Returns
    -------
    ``{sample: DataFrame}`` of each sample's domain labels (column ``result_key``), also written to
    ``adata.obs[result_key]`` of every sample with the same categories.

    Examples
    --------
    >>> import experimat as em, scanpy as sc
    >>> from experimat.methods.domains.spagcn import integrate_domains_spagcn
    >>> samples = {f"s{i}": em.datasets.synthetic_domains(600, 4, seed=i) for i in range(2)}
    >>> for a in samples.values():
    ...     a.layers["lognorm"] = sc.pp.log1p(sc.pp.normalize_total(a, inplace=False)["X"])
    >>> out = integrate_domains_spagcn(samples, n_clusters=4, max_epochs=100)
    """
    torch = import_optional("torch", purpose="SpaGCN")
    params = dict(locals())
    params.pop("adatas")
    params.pop("torch")
    if not isinstance(adatas, Mapping) or len(adatas) == 0:
        raise InvalidInputError("adatas must be a non-empty dict {sample: AnnData}.")
    check_choice("init", init, INIT_METHODS)
    total = sum(a.n_obs for a in adatas.values())
    _check_common(total, n_clusters, p, lr, tol)
    check_positive_int("max_epochs", max_epochs)
    names = list(adatas)
    genes = pd.Index(adatas[names[0]].var_names)
    for name in names[1:]:
        genes = genes.intersection(adatas[name].var_names, sort=False)
    if len(genes) == 0:
        raise InvalidInputError(f"the samples {names} share no genes (var_names); harmonise the gene ids first.")
    seed = int(settings.seed if seed is None else seed)
    device = torch_device(use_gpu)
    start = logger.info(f"SpaGCN integration: {len(names)} samples, {total} spots, {len(genes)} shared genes")
    from scipy import sparse

    blocks, coords, ls = [], [], {}
    for name in names:
        a = adatas[name]
        X = _expression(a, layer)
        idx = a.var_names.get_indexer(genes)
        X = X[:, idx]
        blocks.append(X.toarray() if sparse.issparse(X) else np.asarray(X))
        xy = get_coordinates(a, spatial_key, min_obs=3)[:, :2]
        c = _graph_coords(a, xy, histology, channels, None, alpha)
        coords.append(c)
        ls[name] = _graph.search_l(c, p, device=device)
        logger.info(f"    {name}: {a.n_obs} spots, l = {ls[name]:.4g}")
    embed = _model.pca_embedding(np.vstack(blocks), n_pcs, seed, device)
    offsets = np.cumsum([0] + [a.n_obs for a in adatas.values()])
    ax = torch.cat(
        [
            _graph.propagate(coords[i], ls[name], embed[offsets[i] : offsets[i + 1]], device)
            for i, name in enumerate(names)
        ]
    )
    with torch.random.fork_rng(devices=[]):
        fit = _model.fit_gcdec(
            ax,
            n_clusters=n_clusters,
            init=init,
            seed=seed,
            lr=lr,
            max_epochs=max_epochs,
            tol=tol,
            n_neighbors=n_neighbors,
            resolution=resolution,
            device=device,
        )
    all_labels = _as_categorical(fit.labels)
    used = [c for c in all_labels.categories if (all_labels == c).any()]
    out = {}
    for i, name in enumerate(names):
        a = adatas[name]
        a.obs[result_key] = pd.Categorical(np.asarray(all_labels[offsets[i] : offsets[i + 1]]), categories=used)
        store_params(
            a,
            result_key,
            params,
            samples=list(names),
            l=float(ls[name]),
            resolution=float(fit.resolution) if fit.resolution is not None else "none",
            init_used=fit.init,
            n_epochs=int(fit.n_epochs),
        )
        out[name] = a.obs[[result_key]].copy()
    logger.info(f"SpaGCN integration: {len(used)} domains after {fit.n_epochs} epochs", time=start)
    return out
