"""Public DeepST functions: spatial domains of one sample, and integrated domains of several."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from experimat._compat import renamed_options
from experimat._errors import InvalidInputError
from experimat._keys import Key
from experimat._logging import logger
from experimat._optional import import_optional
from experimat._settings import settings
from experimat.methods._checks import check_choice, check_positive_int, counts_input, get_coordinates, store_params
from experimat.methods._options import option_ranges
from experimat.methods._torch import torch_device

from .._common import check_stable
from . import _core, _image
from ._saved import DeepSTModel

if TYPE_CHECKING:
    from anndata import AnnData


#: section-effect corrections of :func:`integrate_domains_deepst` (``batch_correction=True``: the first)
BATCH_CORRECTIONS = ("adversarial", "harmony", "none")
#: sensible values of the options shared by the DeepST methods
_RANGES = dict(spatial_k="[1, inf)", n_augment_neighbors="[0, inf)", adjacent_weight="[0, inf)", graph_k="[1, inf)")


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
    sample = _core._Sample(counts=sp.csr_matrix((coords.shape[0], 0)), library=np.ones(coords.shape[0]), coords=coords)
    raw = _core._image_raw(
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


def _consensus_extra(consensus: dict) -> dict:
    """The stable mode's record: the runs' seeds, the k-means's own seed and starts, whether it ran on
    the embeddings averaged over spatial neighbours (integration); with several
    runs their agreement (mean ARI of each run's own k-means domains) and mean support."""
    if not consensus:
        return {}
    out = {
        "run_seeds": [int(s) for s in consensus["run_seeds"]],
        "consensus_seed": int(consensus["clustering_seed"]),
        "kmeans_inits": int(consensus["kmeans_inits"]),
        "neighbour_averaged": bool(consensus["neighbour_averaged"]),
    }
    if "support" in consensus:
        out["run_agreement"] = float(consensus["run_agreement"])
        out["mean_support"] = float(np.mean(consensus["support"]))
    return out


def _categorical(labels: np.ndarray, n: int) -> pd.Categorical:
    cats = [str(i) for i in range(n)]
    return pd.Categorical(labels.astype(str), categories=cats)


def _save_model(save_path, name: str, res: dict, params: dict, extra: dict) -> DeepSTModel:
    """The trained network as a :class:`DeepSTModel`; written to ``<save_path>/<name>_model/`` when given.

    Inside an experiment ``save_path`` is refused and the runner stores the model (returned in the
    result's ``attrs["model"]``) in the project's ``models/``.
    """
    config = {
        "params": params,
        **{k: v for k, v in extra.items() if k != "method"},
        "n_inputs": res["n_inputs"],
        "n_dec_clusters": int(res["net"].cluster_layer.shape[0]),
        "n_batches": len(res["offsets"]) - 1,
        "train": res["train"],
        "method": extra["method"],
    }
    model = DeepSTModel.from_network(res["net"], json.loads(json.dumps(config, default=str)))
    if save_path is not None:
        model.save(Path(save_path) / f"{name}_model", overwrite=True)
    return model


def _batch_correction(value: Any) -> str:
    """The section-effect correction that ``batch_correction`` names (``True``: the default, the
    first of :data:`BATCH_CORRECTIONS`; ``False``: ``"none"``)."""
    if isinstance(value, (bool, np.bool_)):
        return BATCH_CORRECTIONS[0] if value else "none"
    if not isinstance(value, str):
        raise InvalidInputError(
            f"batch_correction must be True, False or one of {list(BATCH_CORRECTIONS)}; got {value!r}."
        )
    return check_choice("batch_correction", value, BATCH_CORRECTIONS)


def _run(adatas: dict[str, AnnData], params: dict, *, library_id, tile_dir, correction: str) -> dict:
    """Check the options, read the samples and fit: the one path of both entry points."""
    _check_common(params["n_domains"], params["pre_epochs"], params["epochs"], params["use_image"], params["weights_path"])
    check_stable(params["stable"], params["n_runs"])
    if params["n_pcs"] is not None:
        check_positive_int("n_pcs", params["n_pcs"])
    seed = _resolve_seed(params["seed"])
    import_optional("torch", purpose="DeepST")
    device = torch_device(params["use_gpu"])
    samples, common = _core.load_samples(
        adatas,
        layer=params["layer"],
        spatial_key=params["spatial_key"],
        use_image=params["use_image"],
        image_key=params["image_key"],
        library_id=library_id,
        weights_path=params["weights_path"],
        device=device,
        tile_dirs={name: tile_dir(name) for name in adatas},
        max_tile_mb=params["max_tile_mb"],
        n_domains=params["n_domains"],
    )
    n_total = sum(s.coords.shape[0] for s in samples)
    what = f"{len(adatas)} samples, {n_total} spots, {len(common)} common genes" if len(adatas) > 1 else f"{n_total} spots"
    start = logger.info(f"DeepST on {what} (use_image={params['use_image']})")
    keys = ("n_domains", "pre_epochs", "epochs", "n_top_genes", "n_pcs", "spatial_k", "n_augment_neighbors",
            "adjacent_weight", "graph_k", "refine_neighbors", "stable", "n_runs")
    res = _core.fit(
        samples, seed=seed, device=device, correction=correction, **{k: params[k] for k in keys}
    )
    res["start"] = start
    return res


def _write(adata: AnnData, res: dict, i: int, params: dict, extra: dict) -> tuple[pd.Categorical, pd.Categorical]:
    """Sample ``i``'s rows of the result into ``adata`` (domains, refined domains, embedding, parameters)."""
    key_added, n_found = params["key_added"], res["n_found"]
    lo, hi = res["offsets"][i], res["offsets"][i + 1]
    domain = _categorical(res["labels"][lo:hi], n_found)
    refined = _categorical(res["refined"][lo:hi], n_found)
    adata.obs[f"{key_added}.domain"] = domain
    adata.obs[f"{key_added}.refined"] = refined
    adata.obsm[f"{key_added}.embedding"] = res["embedding"][lo:hi].astype(np.float32)
    store_params(
        adata,
        key_added,
        params,
        # the stable mode's k-means has none
        resolution=float(res["resolution"]) if res["resolution"] is not None else "none",
        n_domains_found=n_found,
        cluster_sample=res["cluster_sample"],
        edge_sample=res["edge_sample"],
        pca_sample=res["pca_sample"],
        train_batch=res["train_batch"],
        train_tile=res["train_tile"],
        **extra,
        **_consensus_extra(res["consensus"]),
    )
    return domain, refined


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
    n_pcs: int | None = None,
    spatial_k: int = 30,
    n_augment_neighbors: int = 3,
    adjacent_weight: float = 0.3,
    graph_k: int = 12,
    refine_neighbors: int = 6,
    max_tile_mb: float = 512.0,
    stable: bool = True,
    n_runs: int = 2,
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
       ``epochs`` epochs with a DEC clustering loss (initial clusters: Leiden at resolution 1);
       the stable mode (default, see ``stable``) trains the autoencoders alone for
       ``pre_epochs + epochs`` epochs instead. The graph reconstruction loss uses the graph's
       edges and sampled non-edges, so memory grows linearly with the spots.
    4. Domains: Leiden on the embedding with a resolution search for exactly ``n_domains``
       (otherwise the closest, with a warning; the stable mode: k-means on its runs'
       embeddings), then a majority vote over the ``refine_neighbors`` nearest spots.

    Above 10,000 spots (Visium HD bins, imaging cells) each epoch is one optimiser step on a
    subgraph of a tenth of the spots (1,000 to 10,000; ``uns[key_added]['train_batch']``), random
    spatial tiles of a tenth of that (``train_tile``) with their 2-hop neighbourhood, so that their
    embeddings are exactly the full graph's (Cluster-GCN's batches, Chiang et al. 2019): as
    accurate as full batch on synthetic Visium HD sections of 5,000-20,000 bins and 2-3x faster.
    Above 50,000 spots the work stays linear in the spots: both PCAs are fitted on a seeded sample
    of 50,000 spots and applied to all (``pca_sample``); the clusterings run on a seeded sample of
    50,000 spots, the others joining by their nearest landmarks (``cluster_sample``). Up to 10,000
    spots (``"none"``) nothing changes.

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
        Epochs of DEC refinement (``stable``: further epochs of the autoencoders, no DEC).
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
        Principal components of the augmented data fed to the network. ``None``: DeepST's 200, and
        with ``stable`` at most a tenth of the spots (at least 10): with nearly as many inputs as
        spots the autoencoder fits noise and where it ends depends on the seed (MOB rep11, 260
        spots: seed-to-seed ARI of single runs 0.37 with 200 PCs, 0.58 with 30).
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
        Seed-stable domains (default). Every network starts from the same initial weights (drawn
        once from a fixed seed, whatever ``seed``), so that ``seed`` drives only the training's
        noise (dropout, input corruption, the VGAE's sampling, negative pairs), and its
        autoencoders are trained for ``pre_epochs + epochs`` epochs without the DEC stage, whose
        target follows the initial clusters and amplified that noise; the network is trained
        ``n_runs`` times with seeds derived from ``seed`` on at most a tenth as many principal
        components as spots (``n_pcs=None``), and the domains are k-means's (the best of 200
        k-means++ starts from a fixed seed of its own; ``uns[key_added]['resolution']`` is
        ``"none"``) on the runs' embeddings side by side; the embedding and saved network are the
        medoid run's. Seed-to-seed ARI of the refined domains over 5 seeds
        (benchmarks/domains.py): MOB rep11 0.99, muscle Vis5A_2dpi 0.97 and Vis7B_5dpi 0.94, a
        synthetic section 1.00 at 1.5-1.8x one ``stable=False`` call, against 0.36, 0.49, 0.56
        and 0.94 with one seed (and 0.97, 0.81, 0.70, 1.00 with the previous stable mode:
        DEC-refined runs, Leiden on their joint kNN graph); ARI to the truth 0.51 on MOB rep11's
        layers and 0.99 on the synthetic domains (one seed: 0.41, 0.97). ``False``: one seeded
        run with weights drawn from ``seed``, as the reference DeepST (unchanged).
    n_runs
        Runs of the consensus (``stable=True``; 1: k-means on one run's embedding); the training
        cost grows linearly with it, a stable run costing at most one reference run (fewer
        inputs, no DEC target updates).

    Returns
    -------
    DataFrame indexed by ``obs_names`` with columns ``domain`` and ``refined``. Also writes
    ``obs['<key_added>.domain']`` and ``obs['<key_added>.refined']`` (categorical),
    ``obsm['<key_added>.embedding']`` and ``uns[key_added]`` (``params``, ``resolution``,
    ``n_domains_found``, ``timings`` of the phases, the size rules used: ``cluster_sample``,
    ``edge_sample``, ``pca_sample``, ``train_batch``, ``train_tile``). ``df.attrs["model"]`` holds the trained
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
    res = _run(
        {"sample": adata},
        params,
        library_id=library_id,
        tile_dir=lambda name: Path(save_path) / f"{key_added}_tiles" if save_path is not None else None,
        correction="none",
    )
    timings = {k: float(v) for k, v in res["timings"].items()}
    domain, refined = _write(adata, res, 0, params, extra={"timings": timings})
    model = _save_model(save_path, key_added, res, params, {"method": "deepst"})
    logger.info(f"DeepST: wrote obs['{key_added}.domain'], obs['{key_added}.refined']", time=res["start"])
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
    batch_correction: bool | str = True,
    save_path: str | os.PathLike | None = None,
    pre_epochs: int = 200,
    epochs: int = 200,
    use_gpu: bool = True,
    seed: int | None = None,
    weights_path: str | os.PathLike | None = None,
    key_added: str = "deepst.integrated",
    spatial_key: str = Key.SPATIAL,
    n_top_genes: int | None = 3000,
    n_pcs: int | None = None,
    spatial_k: int = 30,
    n_augment_neighbors: int = 3,
    adjacent_weight: float = 0.3,
    graph_k: int = 12,
    refine_neighbors: int = 6,
    max_tile_mb: float = 512.0,
    stable: bool = True,
    n_runs: int = 2,
) -> pd.DataFrame:
    """Domains shared by several samples with DeepST.

    Each sample is augmented with its own spot weights and spatial graph; the genes common to all
    samples are log-normalised, standardised within each sample (which removes additive and
    per-gene scale section effects of the log-expression) and reduced together, the graphs are
    joined block-diagonally (no edges between samples) and one network is trained on all spots.
    ``batch_correction`` then removes what remains of the section effects: by default, as in
    DeepST, the network is trained against a domain-adversarial sample classifier behind a
    gradient-reversal layer; or the embedding of every run is corrected with Harmony's
    cluster-wise centroid correction (Korsunsky et al., Nature Methods 16:1289, 2019; with a
    fixed seed). Leiden (``stable=False``) or k-means (the stable mode, on every spot's embedding
    averaged with its ``refine_neighbors`` nearest spots of the same sample) then finds ``n_domains``
    domains common to all samples; the majority-vote refinement runs within each sample.

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
        Correction of the section effects left after the per-sample standardisation: ``True``
        (default) = ``"adversarial"``, DeepST's domain-adversarial sample classifier during
        training; ``"harmony"``: each run's embedding corrected with
        :func:`experimat.methods.domains._correct.harmonize` (seed 0) before the domains are found
        (the stored embedding is the corrected one), no adversary; ``False`` or ``"none"``: no
        further correction. Measured on the 4 ST bulb sections (1,627 spots, 7 domains, the
        stable mode, issue 19, benchmarks/domains.py; seed-to-seed ARI of the refined domains,
        domains in every section, neighbour agreement raw / refined over 4 neighbours against
        0.548 / 0.602 for single-section runs): adversarial (seeds 0-4) 0.961, 7/7, 0.568 / 0.598
        at 26 s per call; Harmony (seeds 0-1) 0.953, 7/7, 0.568 / 0.600 at 25 s (without the
        neighbour averaging 0.934 / 0.959, 0.482 / 0.544 and 0.483 / 0.542). No correction was
        not measured in this mode (in the previous stable mode, DEC-refined runs and Leiden, it
        left 2 of 7 domains in some sections only). On 3 synthetic sections with section effects
        each reached pooled ARI 0.998 in the first stable mode (4 runs).
    save_path
        Folder for the trained network (``<key_added>_model/``, an :class:`experimat.SavedModel`
        folder) and, with ``use_image``, the tiles (``<key_added>_tiles/<sample>/``, bounded by
        ``max_tile_mb`` each), in standalone use; ``None`` writes nothing. Refused inside an
        experiment, which stores the model in the project's ``models/`` instead.
    pre_epochs, epochs
        Pre-training and DEC epochs (``stable``: ``pre_epochs + epochs`` of the autoencoders, no DEC).
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
        Seed-stable domains (default): as in :func:`spatial_detect_domains_deepst`, every network
        starts from the same initial weights (the adversarial sample classifier's too), whatever
        ``seed``, trains its autoencoders (and the adversary) for ``pre_epochs + epochs`` epochs
        without the DEC stage and is trained ``n_runs`` times with seeds derived from ``seed`` on
        at most a tenth as many principal components as spots (``n_pcs=None``); the domains are
        k-means's (fixed seed) on the runs' embeddings side by side, each spot's averaged with its
        ``refine_neighbors`` nearest spots of its own sample (``uns[key_added]
        ['neighbour_averaged']``); the embedding (the network's, not averaged) and saved network
        are the medoid run's. ``False``: one seeded run, as the reference DeepST.
    n_runs
        Runs of the consensus (``stable=True``); the cost grows linearly with it. 4 ST bulb
        sections, 1,627 spots, 5 seeds: seed-to-seed ARI of the refined domains 0.96 with the
        default 2 runs at 1.6x one seed's time, all 7 domains in every section, neighbour
        agreement raw / refined 0.57 / 0.60 against 0.55 / 0.60 for single-section runs (k-means
        on the embeddings as they are: 0.93, 0.48 / 0.54; the previous stable mode, DEC-refined
        runs and Leiden on their joint kNN graph: 0.887, 0.50 / 0.53 against 0.51 / 0.56; one seed
        0.66).

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
    names = list(adatas)
    correction = _batch_correction(batch_correction)
    res = _run(
        adatas,
        params,
        library_id=None,
        tile_dir=lambda name: Path(save_path) / f"{key_added}_tiles" / name if save_path is not None else None,
        correction=correction,
    )
    timings = {k: float(v) for k, v in res["timings"].items()}
    frames = []
    for i, name in enumerate(names):
        ad_ = adatas[name]
        extra = {"samples": names, "batch_correction_method": correction, "timings": timings}
        domain, refined = _write(ad_, res, i, params, extra=extra)
        idx = pd.MultiIndex.from_arrays([[name] * ad_.n_obs, ad_.obs_names], names=["sample", "obs_name"])
        frames.append(pd.DataFrame({"domain": domain, "refined": refined}, index=idx))
    model = _save_model(
        save_path, key_added, res, params,
        {"method": "deepst-integrated", "samples": names, "batch_correction_method": correction},
    )
    logger.info(f"DeepST: wrote obs['{key_added}.domain'] into {len(names)} samples", time=res["start"])
    out = pd.concat(frames)
    out.attrs["model"] = model
    return out
