"""Public DeepST functions: spatial domains of one sample, and integrated domains of several."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from experimat._compat import renamed_options
from experimat._errors import InvalidInputError
from experimat._keys import Key
from experimat._logging import logger, progress
from experimat._optional import import_optional
from experimat._settings import settings
from experimat.methods._checks import (
    check_counts,
    check_positive_int,
    counts_input,
    get_coordinates,
    get_matrix,
    option_ranges,
    store_params,
)
from experimat.methods._torch import torch_device

from .. import _consensus
from .._common import check_stable
from . import _graph, _image
from ._cluster import knn_igraph, leiden, leiden_n_clusters, refine_labels
from ._model import TrainConfig, train_deepst
from ._saved import DeepSTModel

if TYPE_CHECKING:
    from anndata import AnnData

#: target sum of the library-size normalisation before log1p
_TARGET_SUM = 1e4


#: sensible values of the options shared by the DeepST methods
_RANGES = dict(spatial_k="[1, inf)", n_augment_neighbors="[0, inf)", adjacent_weight="[0, inf)", graph_k="[1, inf)")


@dataclass
class _Sample:
    counts: sp.csr_matrix  # spots x common genes, raw counts
    library: np.ndarray  # total counts over all of the sample's genes
    coords: np.ndarray
    image_raw: np.ndarray | None = None


# ------------------------------------------------------------------------------------------------
# preprocessing helpers
# ------------------------------------------------------------------------------------------------
def _lognorm(counts: sp.csr_matrix, library: np.ndarray) -> sp.csr_matrix:
    scale = _TARGET_SUM / np.maximum(library, 1e-12)
    x = sp.diags(scale.astype(np.float64)) @ counts
    x = sp.csr_matrix(x, dtype=np.float64)
    x.data = np.log1p(x.data)
    return x


def _top_variable(x: sp.csr_matrix, n_top: int | None) -> np.ndarray:
    if n_top is None or n_top >= x.shape[1]:
        return np.arange(x.shape[1])
    mean = np.asarray(x.mean(0)).ravel()
    var = np.asarray(x.multiply(x).mean(0)).ravel() - mean**2
    return np.sort(np.argsort(-var, kind="stable")[:n_top])


def _scaled_pca(x: sp.csr_matrix, n_comps: int, seed: int, offsets: np.ndarray | None = None) -> np.ndarray:
    """Principal components of the genes standardised within each sample (rows ``offsets[i]:offsets[i+1]``)."""
    from sklearn.decomposition import PCA

    dense = np.asarray(x.toarray(), dtype=np.float64)
    bounds = offsets if offsets is not None else np.array([0, dense.shape[0]])
    for lo, hi in pairwise(bounds):
        block = dense[lo:hi]
        sd = block.std(0)
        dense[lo:hi] = np.divide(block - block.mean(0), sd, out=np.zeros_like(block), where=sd > 1e-12)
    n_comps = int(max(1, min(n_comps, dense.shape[0] - 1, dense.shape[1])))
    solver = "full" if dense.size <= 5_000_000 else "randomized"
    return PCA(n_components=n_comps, svd_solver=solver, random_state=seed).fit_transform(dense)


def _resolve_seed(seed: int | None) -> int:
    if seed is None:
        return int(settings.seed)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer or None; got {seed!r}.")
    return int(seed)


def _check_common(n_domains: Any, pre_epochs: Any, epochs: Any, use_image: bool, weights_path: Any) -> None:
    if not isinstance(n_domains, (int, np.integer)) or isinstance(n_domains, bool) or n_domains < 2:
        raise InvalidInputError(f"n_domains must be an integer >= 2; got {n_domains!r}.")
    check_positive_int("pre_epochs", pre_epochs, minimum=0)
    check_positive_int("epochs", epochs, minimum=0)
    if weights_path is not None and not use_image:
        raise InvalidInputError("weights_path is only used with use_image=True; pass use_image=True or drop it.")


def _read_sample(adata: AnnData, layer: str | None, spatial_key: str) -> _Sample:
    x = get_matrix(adata, layer)
    check_counts(x, layer=layer)
    coords = get_coordinates(adata, spatial_key, min_obs=10)
    counts = sp.csr_matrix(x, dtype=np.float64)
    library = np.asarray(counts.sum(1)).ravel()
    if (library <= 0).any():
        bad = list(adata.obs_names[library <= 0][:5])
        raise InvalidInputError(
            f"{int((library <= 0).sum())} spots have no counts (e.g. {bad}); remove them first "
            "(e.g. sc.pp.filter_cells(adata, min_counts=1))."
        )
    return _Sample(counts=counts, library=library, coords=coords[:, :2])


def _image_raw(
    adata: AnnData,
    sample: _Sample,
    *,
    image_key: str,
    library_id: str | None,
    net,
    device,
    tile_dir: Path | None,
    max_tile_mb: float,
    spatial_key: str,
) -> np.ndarray:
    img, scale, diameter = _image.find_image(adata, image_key, library_id)
    side = max(3, round(diameter * scale))
    centres = sample.coords * scale
    writer = _image.TileWriter(tile_dir, int(max_tile_mb * 1e6), adata.obs_names) if tile_dir is not None else None
    start = logger.info(f"DeepST: morphology features of {len(centres)} tiles of {side} px ({image_key!r} image)")
    feats = _image.raw_image_features(img, centres, side, net=net, device=device, writer=writer)
    logger.info("DeepST: morphology features done", time=start)
    return feats


def spot_image_features(
    adata: AnnData,
    *,
    image_key: str = "hires",
    library_id: str | None = None,
    spatial_key: str = Key.SPATIAL,
    weights_path: str | os.PathLike | None = None,
    n_components: int | None = 50,
    save_path: str | os.PathLike | None = None,
    max_tile_mb: float = 512.0,
    use_gpu: bool = True,
) -> np.ndarray:
    """Morphology features of the spots' image tiles, as used by DeepST with ``use_image=True``.

    Tiles are cut from ``adata.uns['spatial'][library_id]['images'][image_key]`` around each spot
    (``obsm[spatial_key]`` in full-resolution pixels, times ``tissue_<image_key>_scalef``) with
    side ``spot_diameter_fullres * scalef``, and streamed in batches.

    Parameters
    ----------
    adata
        Spots with ``obsm[spatial_key]`` and an image in ``uns['spatial']``.
    image_key
        Key of the image in ``uns['spatial'][library_id]['images']`` (``"hires"``, ``"lowres"``, ...).
        Images other than hires/lowres without a ``tissue_<key>_scalef`` are taken as full resolution.
    library_id
        Library in ``uns['spatial']``; needed only when it holds several.
    spatial_key
        ``obsm`` key of the spot coordinates (full-resolution pixels; x, y).
    weights_path
        Local torch state dict of :func:`tile_cnn` (4 conv blocks 32/64/128/256 channels on 64 x 64
        ImageNet-normalised tiles, global average pooled; 256 features), loaded with
        ``torch.load(..., weights_only=True)``. ``None`` uses the built-in, download-free extractor
        (46 colour, gradient, Gabor and LBP features).
    n_components
        Principal components kept after standardising the features (``None``: raw features).
    save_path
        Folder in which the tiles are stored (``.npz`` uint8 shards in ``<save_path>/deepst_tiles``)
        for inspection; ``None`` (default) stores nothing.
    max_tile_mb
        Bound on the stored tiles' size; later tiles are not stored (a warning says so).
    use_gpu
        Run the CNN on the GPU when one is present.

    Returns
    -------
    ``(n_spots, n_components)`` float array (rows in ``adata.obs_names`` order).

    Examples
    --------
    >>> import experimat as em
    >>> from experimat.methods.domains.deepst import spot_image_features
    >>> adata = em.datasets.synthetic_domains(300, 3, 60, with_image=True)
    >>> spot_image_features(adata, n_components=10).shape
    (300, 10)
    """
    coords = get_coordinates(adata, spatial_key, min_obs=2)[:, :2]
    device = torch_device(use_gpu) if weights_path is not None else "cpu"
    net = _image.load_tile_cnn(weights_path).to(device) if weights_path is not None else None
    tile_dir = Path(save_path) / "deepst_tiles" if save_path is not None else None
    sample = _Sample(counts=sp.csr_matrix((coords.shape[0], 0)), library=np.ones(coords.shape[0]), coords=coords)
    raw = _image_raw(
        adata,
        sample,
        image_key=image_key,
        library_id=library_id,
        net=net,
        device=device,
        tile_dir=tile_dir,
        max_tile_mb=max_tile_mb,
        spatial_key=spatial_key,
    )
    if n_components is None:
        return raw
    return _image.reduce_features(raw, check_positive_int("n_components", n_components))


# ------------------------------------------------------------------------------------------------
# the shared core
# ------------------------------------------------------------------------------------------------
def _fit(
    samples: list[_Sample],
    *,
    n_domains: int,
    pre_epochs: int,
    epochs: int,
    seed: int,
    device,
    n_top_genes: int | None,
    n_pcs: int,
    spatial_k: int,
    n_augment_neighbors: int,
    adjacent_weight: float,
    graph_k: int,
    refine_neighbors: int,
    adversarial: bool,
    stable: bool = False,
    n_runs: int = 1,
) -> dict[str, Any]:
    sizes = [s.coords.shape[0] for s in samples]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    all_counts = sp.vstack([s.counts for s in samples], format="csr")
    all_lib = np.concatenate([s.library for s in samples])
    genes = _top_variable(_lognorm(all_counts, all_lib), n_top_genes)
    sub = all_counts[:, genes]

    start = logger.info(f"DeepST: augmenting {all_counts.shape[0]} spots x {len(genes)} genes")
    expr_pcs = _scaled_pca(_lognorm(sub, all_lib), 50, seed, offsets)
    image = None
    if samples[0].image_raw is not None:
        image = _image.reduce_features(np.vstack([s.image_raw for s in samples]), 50)
    aug_blocks, aug_lib, adj_blocks, label_blocks = [], [], [], []
    for i, s in enumerate(samples):
        lo, hi = offsets[i], offsets[i + 1]
        w = _graph.spot_weights(s.coords, expr_pcs[lo:hi], None if image is None else image[lo:hi], spatial_k=spatial_k)
        top = _graph.top_neighbour_weights(w, n_augment_neighbors)
        aug_blocks.append(_graph.augment_expression(sub[lo:hi], top, adjacent_weight))
        aug_lib.append(s.library + adjacent_weight * (top @ s.library))
        a_norm, a_label = _graph.spatial_graph(s.coords, graph_k)
        adj_blocks.append(a_norm)
        label_blocks.append(a_label)
    aug = sp.vstack(aug_blocks, format="csr")
    data = _scaled_pca(_lognorm(aug, np.concatenate(aug_lib)), n_pcs, seed, offsets)
    adj_norm, adj_label = _graph.block_diag(adj_blocks), _graph.block_diag(label_blocks)
    logger.info(f"DeepST: augmented data, {data.shape[1]} PCs, graph with {adj_label.nnz} edges", time=start)

    def init_clusters(z: np.ndarray, s: int) -> np.ndarray:
        return leiden(knn_igraph(z, TrainConfig.dec_neighbors), TrainConfig.dec_resolution, s)

    batches = np.repeat(np.arange(len(samples)), sizes) if adversarial and len(samples) > 1 else None
    seeds = _consensus.run_seeds(seed, n_runs) if stable else [seed]
    runs, fits = [], []
    for run_seed in progress(seeds, description="DeepST consensus runs") if len(seeds) > 1 else seeds:
        emb, net, timings = train_deepst(
            data,
            adj_norm,
            adj_label,
            pre_epochs=pre_epochs,
            epochs=epochs,
            seed=run_seed,
            device=device,
            batches=batches,
            cluster_init=init_clusters,
        )
        start = logger.info(f"DeepST: Leiden resolution search for {n_domains} domains")
        run_labels, resolution, exact = leiden_n_clusters(emb, n_domains, seed=run_seed)
        runs.append(run_labels)
        fits.append((emb, net, timings, resolution, exact))
    consensus = {}
    if len(runs) > 1:
        labels, info = _consensus.consensus_labels(runs)
        emb, net, timings, resolution, exact = fits[info["medoid"]]
        timings = {k: float(sum(f[2][k] for f in fits)) for k in timings}
        exact = exact and int(labels.max()) + 1 == n_domains
        consensus = {"run_seeds": seeds, "run_agreement": info["run_agreement"], "support": info["support"]}
        logger.info(f"DeepST: {len(runs)} runs agree at mean ARI {info['run_agreement']:.3f}")
    else:
        labels = runs[0]
        emb, net, timings, resolution, exact = fits[0]
    refined = np.concatenate(
        [refine_labels(s.coords, labels[offsets[i] : offsets[i + 1]], refine_neighbors) for i, s in enumerate(samples)]
    )
    n_found = int(labels.max()) + 1
    logger.info(f"DeepST: {n_found} domains at resolution {resolution:.4g}", time=start)
    return {
        "embedding": emb,
        "labels": labels,
        "refined": refined,
        "offsets": offsets,
        "resolution": resolution,
        "exact": exact,
        "n_found": n_found,
        "timings": timings,
        "net": net,
        "n_inputs": data.shape[1],
        "consensus": consensus,
    }


def _consensus_extra(consensus: dict) -> dict:
    if not consensus:
        return {}
    return {
        "run_seeds": [int(s) for s in consensus["run_seeds"]],
        "run_agreement": float(consensus["run_agreement"]),
        "mean_support": float(np.mean(consensus["support"])),
    }


def _categorical(labels: np.ndarray, n: int) -> pd.Categorical:
    cats = [str(i) for i in range(n)]
    return pd.Categorical(labels.astype(str), categories=cats)


def _save_model(save_path: Path | None, name: str, net, config: dict) -> DeepSTModel:
    """The trained network as a :class:`DeepSTModel`; written to ``<save_path>/<name>_model/`` when given.

    Inside an experiment ``save_path`` is refused and the runner stores the model (returned in the
    result's ``attrs["model"]``) in the project's ``models/``.
    """
    model = DeepSTModel.from_network(net, json.loads(json.dumps(config, default=str)))
    if save_path is not None:
        model.save(save_path / f"{name}_model", overwrite=True)
    return model


# ------------------------------------------------------------------------------------------------
# public functions
# ------------------------------------------------------------------------------------------------
@counts_input("layer")
@option_ranges(**_RANGES)
def spatial_detect_domains_deepst(
    adata: AnnData,
    *,
    layer: str | None = None,
    image_key: str = "hires",
    n_domains: int = 7,
    use_image: bool = False,
    save_path: str | os.PathLike | None = None,
    pre_epochs: int = 200,
    epochs: int = 200,
    use_gpu: bool = True,
    seed: int | None = None,
    weights_path: str | os.PathLike | None = None,
    key_added: str = "deepst",
    library_id: str | None = None,
    spatial_key: str = Key.SPATIAL,
    n_top_genes: int | None = 3000,
    n_pcs: int = 200,
    spatial_k: int = 30,
    n_augment_neighbors: int = 3,
    adjacent_weight: float = 0.3,
    graph_k: int = 12,
    refine_neighbors: int = 6,
    max_tile_mb: float = 512.0,
    stable: bool = True,
    n_runs: int = 3,
) -> pd.DataFrame:
    """Spatial domains with DeepST (Xu et al., Nucleic Acids Research 50:e131, 2022).

    1. Spot weights: for each spot and its ``spatial_k`` nearest spots, the product of spatial
       adjacency, the (positive) correlation of their expression principal components and, with
       ``use_image=True``, the (positive) cosine similarity of their tiles' morphology features.
       The matrix is sparse (``n * spatial_k`` entries).
    2. Augmentation: each spot's counts plus ``adjacent_weight`` times the weighted mean of its
       ``n_augment_neighbors`` highest-weighted spots; then log-normalisation, the
       ``n_top_genes`` most variable genes, scaling and ``n_pcs`` principal components.
    3. A denoising autoencoder and a variational graph autoencoder on the spatial kNN graph
       (``graph_k`` neighbours) are trained jointly for ``pre_epochs`` epochs, then refined for
       ``epochs`` epochs with a DEC clustering loss (initial clusters: Leiden at resolution 1).
       The graph reconstruction loss uses the graph's edges and sampled non-edges, so memory grows
       linearly with the spots.
    4. Domains: Leiden on the embedding with a resolution search for exactly ``n_domains``
       (otherwise the closest, with a warning), then a majority vote over the
       ``refine_neighbors`` nearest spots.

    Parameters
    ----------
    adata
        Spots with raw counts (non-negative integers) in ``X`` or ``layers[layer]`` and spot
        coordinates in ``obsm[spatial_key]`` (full-resolution pixels).
    layer
        Layer holding the raw counts (``None``: ``adata.X``). Do not normalise or log-transform them.
    image_key
        Image in ``adata.uns['spatial'][library_id]['images']`` (H x W x 3, uint8 or float in [0, 1],
        scanpy/squidpy convention) used when ``use_image=True``; its scale factor is
        ``scalefactors['tissue_<image_key>_scalef']`` and tiles have side
        ``scalefactors['spot_diameter_fullres']`` times that factor.
    n_domains
        Number of domains (>= 2).
    use_image
        Include morphological similarity of the spots' tiles in the spot weights.
    save_path
        Folder for the outputs worth keeping, in standalone use: the trained network
        (``<key_added>_model/``, an :class:`experimat.SavedModel` folder: ``config.json`` +
        ``arrays.npz``, reload with ``DeepSTModel.load``) and, with ``use_image=True``, the spot tiles
        (``<key_added>_tiles/``, uint8 ``.npz`` shards, at most ``max_tile_mb``; tiles of an earlier
        run are replaced, and removed if the run fails). ``None`` (default) writes nothing. Refused
        inside an experiment, which stores the model in the project's ``models/`` instead.
    pre_epochs
        Epochs of joint autoencoder pre-training.
    epochs
        Epochs of DEC refinement.
    use_gpu
        Use a CUDA GPU when torch sees one (results then agree with CPU runs only approximately).
    seed
        Random seed (``None``: ``em.settings.seed``); seeded CPU runs are reproducible.
    weights_path
        Local state dict of the tile CNN (:func:`tile_cnn`: 4 blocks of 3x3 conv, batch norm, ReLU,
        2x2 max-pool with 32/64/128/256 channels on 64 x 64 ImageNet-normalised tiles, then global
        average pooling), loaded with ``torch.load(..., weights_only=True)``. ``None`` uses the
        built-in download-free extractor (colour statistics, Gabor and LBP texture). Needs ``use_image=True``.
    key_added
        Prefix of the result slots.
    library_id
        Library in ``adata.uns['spatial']``; needed only when it holds several.
    spatial_key
        ``obsm`` key of the spot coordinates.
    n_top_genes
        Most variable genes kept (``None``: all genes).
    n_pcs
        Principal components of the augmented data fed to the network (DeepST: 200).
    spatial_k
        Spatial neighbours considered for the spot weights (DeepST: 30).
    n_augment_neighbors
        Highest-weighted neighbours averaged into each spot (DeepST: 3).
    adjacent_weight
        Weight of the neighbours' mean in the augmentation (DeepST: 0.3).
    graph_k
        Neighbours of the spatial graph (DeepST: 12).
    refine_neighbors
        Neighbours of the majority vote (6 for hexagonal Visium arrays, 4 for square ST arrays).
    max_tile_mb
        Bound on the tiles stored under ``save_path``.
    stable
        Seed-stable domains (default): the network is trained ``n_runs`` times with seeds derived
        from ``seed``, each run's Leiden domains are relabelled onto the medoid run and every spot
        takes its majority label (the embedding and saved network are the medoid run's).
        ``False``: one seeded run, as the reference DeepST.
    n_runs
        Runs of the consensus (``stable=True``); the cost grows linearly with it.

    Returns
    -------
    DataFrame indexed by ``obs_names`` with columns ``domain`` and ``refined``. Also writes
    ``obs['<key_added>.domain']`` and ``obs['<key_added>.refined']`` (categorical),
    ``obsm['<key_added>.embedding']`` and ``uns[key_added]`` (``params``, ``resolution``,
    ``n_domains_found``, ``timings``). ``df.attrs["model"]`` holds the trained
    :class:`~experimat.methods.domains.deepst.DeepSTModel` (inside an experiment it is stored as
    ``models/<key_added>.<sample>``).

    Examples
    --------
    >>> import experimat as em
    >>> from experimat.methods.domains.deepst import spatial_detect_domains_deepst
    >>> adata = em.datasets.synthetic_domains(500, 4, 100)
    >>> df = spatial_detect_domains_deepst(adata, n_domains=4, pre_epochs=100, epochs=50, seed=0)
    >>> adata.obs["deepst.refined"].nunique()
    4
    """
    params = dict(locals())
    params.pop("adata")
    _check_common(n_domains, pre_epochs, epochs, use_image, weights_path)
    check_stable(stable, n_runs)
    seed = _resolve_seed(seed)
    import_optional("torch", purpose="DeepST")
    sample = _read_sample(adata, layer, spatial_key)
    if n_domains > adata.n_obs:
        raise InvalidInputError(f"n_domains ({n_domains}) exceeds the number of spots ({adata.n_obs}).")
    device = torch_device(use_gpu)
    out_dir = Path(save_path) if save_path is not None else None
    if use_image:
        net = _image.load_tile_cnn(weights_path).to(device) if weights_path is not None else None
        sample.image_raw = _image_raw(
            adata,
            sample,
            image_key=image_key,
            library_id=library_id,
            net=net,
            device=device,
            tile_dir=out_dir / f"{key_added}_tiles" if out_dir is not None else None,
            max_tile_mb=max_tile_mb,
            spatial_key=spatial_key,
        )
    start = logger.info(f"DeepST on {adata.n_obs} spots (use_image={use_image})")
    res = _fit(
        [sample],
        n_domains=n_domains,
        pre_epochs=pre_epochs,
        epochs=epochs,
        seed=seed,
        device=device,
        n_top_genes=n_top_genes,
        n_pcs=n_pcs,
        spatial_k=spatial_k,
        n_augment_neighbors=n_augment_neighbors,
        adjacent_weight=adjacent_weight,
        graph_k=graph_k,
        refine_neighbors=refine_neighbors,
        adversarial=False,
        stable=stable,
        n_runs=n_runs,
    )
    n_found = res["n_found"]
    domain = _categorical(res["labels"], n_found)
    refined = _categorical(res["refined"], n_found)
    adata.obs[f"{key_added}.domain"] = domain
    adata.obs[f"{key_added}.refined"] = refined
    adata.obsm[f"{key_added}.embedding"] = res["embedding"].astype(np.float32)
    timings = {k: float(v) for k, v in res["timings"].items()}
    store_params(
        adata,
        key_added,
        params,
        resolution=float(res["resolution"]),
        n_domains_found=n_found,
        timings=timings,
        **_consensus_extra(res["consensus"]),
    )
    config = {
        "params": params,
        "n_inputs": res["n_inputs"],
        "n_dec_clusters": int(res["net"].cluster_layer.shape[0]),
        "n_batches": len(res["offsets"]) - 1,
        "train": asdict(TrainConfig()),
        "method": "deepst",
    }
    model = _save_model(out_dir, key_added, res["net"], config)
    logger.info(f"DeepST: wrote obs['{key_added}.domain'], obs['{key_added}.refined']", time=start)
    out = pd.DataFrame({"domain": domain, "refined": refined}, index=adata.obs_names.copy())
    out.attrs["model"] = model
    return out


@counts_input("layer")
@renamed_options(result_key="key_added")
@option_ranges(**_RANGES)
def integrate_domains_deepst(
    adatas: dict[str, AnnData],
    *,
    layer: str | None = None,
    image_key: str = "hires",
    n_domains: int = 7,
    use_image: bool = False,
    batch_correction: bool = True,
    save_path: str | os.PathLike | None = None,
    pre_epochs: int = 200,
    epochs: int = 200,
    use_gpu: bool = True,
    seed: int | None = None,
    weights_path: str | os.PathLike | None = None,
    key_added: str = "deepst.integrated",
    spatial_key: str = Key.SPATIAL,
    n_top_genes: int | None = 3000,
    n_pcs: int = 200,
    spatial_k: int = 30,
    n_augment_neighbors: int = 3,
    adjacent_weight: float = 0.3,
    graph_k: int = 12,
    refine_neighbors: int = 6,
    max_tile_mb: float = 512.0,
    stable: bool = True,
    n_runs: int = 3,
) -> pd.DataFrame:
    """Domains shared by several samples with DeepST.

    Each sample is augmented with its own spot weights and spatial graph; the genes common to all
    samples are log-normalised, standardised within each sample and reduced together, the graphs are joined block-diagonally (no
    edges between samples) and one network is trained on all spots. With ``batch_correction``, a
    domain-adversarial classifier behind a gradient-reversal layer (as in DeepST) removes the
    sample identity from the embedding. Leiden then finds ``n_domains`` domains common to all
    samples; the majority-vote refinement runs within each sample.

    Parameters
    ----------
    adatas
        ``{sample: AnnData}`` with raw counts in ``X`` or ``layers[layer]`` and ``obsm[spatial_key]``.
    layer
        Layer of raw counts in every sample (``None``: ``X``).
    image_key
        Image key in each sample's ``uns['spatial']`` (see :func:`spatial_detect_domains_deepst`).
    n_domains
        Number of domains (>= 2).
    use_image
        Use morphology similarity in the spot weights.
    batch_correction
        Train with the domain-adversarial sample classifier.
    save_path
        Folder for the trained network (``<key_added>_model/``, an :class:`experimat.SavedModel`
        folder) and, with ``use_image``, the tiles (``<key_added>_tiles/<sample>/``, bounded by
        ``max_tile_mb`` each), in standalone use; ``None`` writes nothing. Refused inside an
        experiment, which stores the model in the project's ``models/`` instead.
    pre_epochs, epochs
        Pre-training and DEC epochs.
    use_gpu
        Use a CUDA GPU when present.
    seed
        Random seed (``None``: ``em.settings.seed``).
    weights_path
        Local tile-CNN state dict (see :func:`spatial_detect_domains_deepst`).
    key_added
        Prefix of the result slots written into every sample. Deprecated alias: ``result_key=``.
    spatial_key, n_top_genes, n_pcs, spatial_k, n_augment_neighbors, adjacent_weight, graph_k, refine_neighbors, max_tile_mb
        As in :func:`spatial_detect_domains_deepst`.
    stable
        Seed-stable domains (default): the network is trained ``n_runs`` times with seeds derived
        from ``seed``, each run's Leiden domains are relabelled onto the medoid run and every spot
        takes its majority label (the embedding and saved network are the medoid run's).
        ``False``: one seeded run, as the reference DeepST.
    n_runs
        Runs of the consensus (``stable=True``); the cost grows linearly with it.

    Returns
    -------
    DataFrame indexed by ``(sample, obs_name)`` with columns ``domain`` and ``refined``. Writes into
    each sample ``obs['<key_added>.domain']``, ``obs['<key_added>.refined']`` (categorical, same
    categories in all samples), ``obsm['<key_added>.embedding']`` and ``uns[key_added]``.
    ``df.attrs["model"]`` holds the trained :class:`~experimat.methods.domains.deepst.DeepSTModel`
    (inside an experiment it is stored as ``models/<key_added>``).

    Examples
    --------
    >>> import experimat as em
    >>> from experimat.methods.domains.deepst import integrate_domains_deepst
    >>> a = em.datasets.synthetic_domains(300, 3, 60, seed=1)
    >>> b = em.datasets.synthetic_domains(300, 3, 60, seed=2)
    >>> df = integrate_domains_deepst({"a": a, "b": b}, n_domains=3, pre_epochs=50, epochs=20, seed=0)
    >>> sorted(df.columns)
    ['domain', 'refined']
    """
    params = dict(locals())
    params.pop("adatas")
    if not isinstance(adatas, dict) or len(adatas) < 1:
        raise InvalidInputError("adatas must be a non-empty dict {sample: AnnData}.")
    _check_common(n_domains, pre_epochs, epochs, use_image, weights_path)
    check_stable(stable, n_runs)
    seed = _resolve_seed(seed)
    import_optional("torch", purpose="DeepST")
    names = list(adatas)
    common = adatas[names[0]].var_names
    for name in names[1:]:
        common = common.intersection(adatas[name].var_names, sort=False)
    if len(common) == 0:
        raise InvalidInputError("the samples share no genes (var_names); harmonise gene ids first.")
    device = torch_device(use_gpu)
    out_dir = Path(save_path) if save_path is not None else None
    net = _image.load_tile_cnn(weights_path).to(device) if use_image and weights_path is not None else None
    samples = []
    for name in names:
        ad_ = adatas[name]
        s = _read_sample(ad_, layer, spatial_key)
        s.counts = s.counts[:, ad_.var_names.get_indexer(common)]
        if use_image:
            s.image_raw = _image_raw(
                ad_,
                s,
                image_key=image_key,
                library_id=None,
                net=net,
                device=device,
                tile_dir=out_dir / f"{key_added}_tiles" / name if out_dir is not None else None,
                max_tile_mb=max_tile_mb,
                spatial_key=spatial_key,
            )
        samples.append(s)
    n_total = sum(s.coords.shape[0] for s in samples)
    if n_domains > n_total:
        raise InvalidInputError(f"n_domains ({n_domains}) exceeds the number of spots ({n_total}).")
    start = logger.info(f"DeepST integration of {len(names)} samples, {n_total} spots, {len(common)} common genes")
    res = _fit(
        samples,
        n_domains=n_domains,
        pre_epochs=pre_epochs,
        epochs=epochs,
        seed=seed,
        device=device,
        n_top_genes=n_top_genes,
        n_pcs=n_pcs,
        spatial_k=spatial_k,
        n_augment_neighbors=n_augment_neighbors,
        adjacent_weight=adjacent_weight,
        graph_k=graph_k,
        refine_neighbors=refine_neighbors,
        adversarial=batch_correction,
        stable=stable,
        n_runs=n_runs,
    )
    n_found, off = res["n_found"], res["offsets"]
    timings = {k: float(v) for k, v in res["timings"].items()}
    frames = []
    for i, name in enumerate(names):
        ad_ = adatas[name]
        lo, hi = off[i], off[i + 1]
        domain = _categorical(res["labels"][lo:hi], n_found)
        refined = _categorical(res["refined"][lo:hi], n_found)
        ad_.obs[f"{key_added}.domain"] = domain
        ad_.obs[f"{key_added}.refined"] = refined
        ad_.obsm[f"{key_added}.embedding"] = res["embedding"][lo:hi].astype(np.float32)
        store_params(
            ad_,
            key_added,
            params,
            samples=names,
            resolution=float(res["resolution"]),
            n_domains_found=n_found,
            timings=timings,
            **_consensus_extra(res["consensus"]),
        )
        idx = pd.MultiIndex.from_arrays([[name] * ad_.n_obs, ad_.obs_names], names=["sample", "obs_name"])
        frames.append(pd.DataFrame({"domain": domain, "refined": refined}, index=idx))
    config = {
        "params": params,
        "samples": names,
        "n_inputs": res["n_inputs"],
        "n_dec_clusters": int(res["net"].cluster_layer.shape[0]),
        "n_batches": len(res["offsets"]) - 1,
        "train": asdict(TrainConfig()),
        "method": "deepst-integrated",
    }
    model = _save_model(out_dir, key_added, res["net"], config)
    logger.info(f"DeepST: wrote obs['{key_added}.domain'] into {len(names)} samples", time=start)
    out = pd.concat(frames)
    out.attrs["model"] = model
    return out
