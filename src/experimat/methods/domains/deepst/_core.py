"""DeepST's core, shared by the single-sample and the integrated entry points: reading the samples,
the spot-weighted augmentation, the network fits (a consensus of seeded runs) and the domains.

The building blocks are the methods' shared ones: library-size normalisation, most variable genes
and the per-sample standardised PCA (never densified) from :mod:`experimat.methods._expression`,
neighbour searches from :mod:`experimat.methods._graph`, Leiden from :mod:`experimat.methods._cluster`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from experimat._errors import InvalidInputError
from experimat._logging import logger, progress
from experimat.methods import _cluster as cluster_blocks
from experimat.methods._checks import check_counts, get_coordinates, get_matrix
from experimat.methods._expression import block_pca, normalize_total, top_variance_genes

from .. import _consensus
from .._correct import harmonize
from . import _graph, _image, _model, _subgraph
from ._cluster import initial_clusters, kmeans_domains, leiden_n_clusters, refine_labels, run_support
from ._model import TrainConfig, train_deepst

if TYPE_CHECKING:
    from anndata import AnnData

#: target sum of the library-size normalisation before log1p
_TARGET_SUM = 1e4
#: the stable mode's clustering seed (k-means's starts): the same runs' embeddings give the same
#: domains whatever the user seed (the user seed only chooses the runs' seeds)
_CONSENSUS_SEED = 0
#: principal components of the reference DeepST, and the fewest the stable mode uses
_REFERENCE_PCS, _MIN_STABLE_PCS = 200, 10
#: above this many spots both PCAs of the preparation are fitted on a seeded sample of this many spots
#: and applied to all (sketch-then-project); the preparation is computed once and shared by all runs
PCA_FIT_MAX = 50_000


@dataclass
class _Sample:
    counts: sp.csr_matrix  # spots x common genes, raw counts
    library: np.ndarray  # total counts over all of the sample's genes
    coords: np.ndarray
    image_raw: np.ndarray | None = None


def _lognorm(counts: sp.csr_matrix, library: np.ndarray) -> sp.csr_matrix:
    """log1p of the counts scaled to :data:`_TARGET_SUM` by each spot's library (over all its genes)."""
    return normalize_total(counts, target_sum=_TARGET_SUM, totals=library)[0]


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


def stable_config() -> TrainConfig:
    """The stable mode's training: the reference's hyper-parameters, initial weights that do not
    depend on the seed (:data:`._model.INIT_SEED`) and no DEC stage (:func:`_train_runs`)."""
    return TrainConfig(init="fixed", dec=False)


def default_n_pcs(n_spots: int, stable: bool) -> int:
    """Principal components fed to the network by default: DeepST's 200; in the stable mode at
    most a tenth of the spots (at least :data:`_MIN_STABLE_PCS`)."""
    return min(_REFERENCE_PCS, max(_MIN_STABLE_PCS, n_spots // 10)) if stable else _REFERENCE_PCS


def fit(
    samples: list[_Sample],
    *,
    n_domains: int,
    pre_epochs: int,
    epochs: int,
    seed: int,
    device,
    n_top_genes: int | None,
    n_pcs: int | None,
    spatial_k: int,
    n_augment_neighbors: int,
    adjacent_weight: float,
    graph_k: int,
    refine_neighbors: int,
    correction: str = "none",
    stable: bool = False,
    n_runs: int = 1,
) -> dict[str, Any]:
    """Augment every sample, train ``n_runs`` networks (one with ``stable=False``) and find the domains
    (:func:`_train_runs`)."""
    sizes = [s.coords.shape[0] for s in samples]
    n_pcs = default_n_pcs(sum(sizes), stable) if n_pcs is None else n_pcs
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    t0 = time.perf_counter()
    data, adj_norm, adj_label = _prepare(samples, offsets, n_top_genes=n_top_genes, n_pcs=n_pcs, spatial_k=spatial_k,
                                         n_augment_neighbors=n_augment_neighbors, adjacent_weight=adjacent_weight,
                                         graph_k=graph_k)
    prepare_s = time.perf_counter() - t0
    tiles, batch_spots, tile_spots = None, None, None
    plan = _model.subgraph_plan(data.shape[0])
    if plan is not None:
        batch_spots, tile_spots = plan
        tiles = _subgraph.spatial_tiles(np.vstack([s.coords for s in samples]), offsets, tile_spots)

    sections = np.repeat(np.arange(len(samples)), sizes) if len(samples) > 1 else None
    batches = sections if correction == "adversarial" else None
    seeds = _consensus.run_seeds(seed, n_runs) if stable else [seed]
    smooth = None
    if stable and len(samples) > 1:
        smooth = _graph.block_diag([_graph.neighbour_mean(s.coords, refine_neighbors) for s in samples])
    labels, emb, net, timings, resolution, exact, consensus = _train_runs(
        data, adj_norm, adj_label, seeds=seeds, n_domains=n_domains, pre_epochs=pre_epochs, epochs=epochs,
        device=device, batches=batches, tiles=tiles, batch_spots=batch_spots, stable=stable,
        harmonize_sections=sections if correction == "harmony" else None, smooth=smooth,
    )
    timings["prepare_s"] = prepare_s
    refined = np.concatenate(
        [refine_labels(s.coords, labels[offsets[i] : offsets[i + 1]], refine_neighbors) for i, s in enumerate(samples)]
    )
    n_found = int(labels.max()) + 1
    how = f"at resolution {resolution:.4g}" if resolution is not None else "(k-means)"
    logger.info(f"DeepST: {n_found} domains {how}")
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
        "train": asdict(stable_config() if stable else TrainConfig()),
        # the size rules (recorded in the parameters): clusterings on a sample, edges drawn per epoch
        "cluster_sample": cluster_blocks.SAMPLE_MAX if data.shape[0] > cluster_blocks.SAMPLE_MAX else "none",
        "edge_sample": _model.EDGE_SAMPLE_MAX if adj_label.nnz > _model.EDGE_SAMPLE_MAX else "none",
        "pca_sample": PCA_FIT_MAX if data.shape[0] > PCA_FIT_MAX else "none",
        "train_batch": batch_spots if batch_spots is not None else "none",
        "train_tile": tile_spots if tile_spots is not None else "none",
    }


def _prepare(samples: list[_Sample], offsets: np.ndarray, *, n_top_genes, n_pcs, spatial_k, n_augment_neighbors,
             adjacent_weight, graph_k) -> tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix]:
    """The network's input (``n_pcs`` principal components of the augmented expression) and the
    block-diagonal spatial graph (normalised, and 0/1 with self-loops) of all samples' spots.

    Both PCAs (50 components of the expression for the spot weights, ``n_pcs`` of the augmented
    expression) are fitted on a seeded sample of :data:`PCA_FIT_MAX` spots above that many
    (:func:`experimat.methods._expression.sketch_block_pca`) and applied to all."""
    all_counts = sp.vstack([s.counts for s in samples], format="csr")
    all_lib = np.concatenate([s.library for s in samples])
    genes = top_variance_genes(_lognorm(all_counts, all_lib), n_top_genes)
    sub = all_counts[:, genes]
    del all_counts

    start = logger.info(f"DeepST: augmenting {sub.shape[0]} spots x {len(genes)} genes")
    expr_pcs = block_pca(_lognorm(sub, all_lib), 50, blocks=offsets, scale=True, seed=0, fit_max=PCA_FIT_MAX)
    image = None
    if samples[0].image_raw is not None:
        image = _image.reduce_features(np.vstack([s.image_raw for s in samples]), 50)
    aug_blocks, adj_blocks, label_blocks = [], [], []
    for i, s in enumerate(samples):
        lo, hi = offsets[i], offsets[i + 1]
        w = _graph.spot_weights(s.coords, expr_pcs[lo:hi], None if image is None else image[lo:hi], spatial_k=spatial_k)
        top = _graph.top_neighbour_weights(w, n_augment_neighbors)
        aug_blocks.append(_lognorm(_graph.augment_expression(sub[lo:hi], top, adjacent_weight),
                                   s.library + adjacent_weight * (top @ s.library)))
        a_norm, a_label = _graph.spatial_graph(s.coords, graph_k)
        adj_blocks.append(a_norm)
        label_blocks.append(a_label)
    del sub, expr_pcs
    aug = sp.vstack(aug_blocks, format="csr")
    del aug_blocks
    data = block_pca(aug, n_pcs, blocks=offsets, scale=True, seed=0, fit_max=PCA_FIT_MAX)
    adj_norm, adj_label = _graph.block_diag(adj_blocks), _graph.block_diag(label_blocks)
    logger.info(f"DeepST: augmented data, {data.shape[1]} PCs, graph with {adj_label.nnz} edges", time=start)
    return data, adj_norm, adj_label


def load_samples(
    adatas: dict[str, AnnData],
    *,
    layer: str | None,
    spatial_key: str,
    use_image: bool,
    image_key: str,
    library_id: str | None,
    weights_path: Any,
    device,
    tile_dirs: dict[str, Path | None],
    max_tile_mb: float,
    n_domains: int,
) -> tuple[list[_Sample], Any]:
    """Every sample's counts of the genes common to all (raw counts checked), coordinates and, with
    ``use_image``, morphology features; returns ``(samples, common genes)``."""
    names = list(adatas)
    n_total = sum(a.n_obs for a in adatas.values())
    if n_domains > n_total:
        raise InvalidInputError(f"n_domains ({n_domains}) exceeds the number of spots ({n_total}).")
    common = adatas[names[0]].var_names
    for name in names[1:]:
        common = common.intersection(adatas[name].var_names, sort=False)
    if len(common) == 0:
        raise InvalidInputError("the samples share no genes (var_names); harmonise gene ids first.")
    net = _image.load_tile_cnn(weights_path).to(device) if use_image and weights_path is not None else None
    samples = []
    for name in names:
        adata = adatas[name]
        sample = _read_sample(adata, layer, spatial_key)
        if len(names) > 1:
            sample.counts = sample.counts[:, adata.var_names.get_indexer(common)]
        if use_image:
            sample.image_raw = _image_raw(
                adata,
                sample,
                image_key=image_key,
                library_id=library_id,
                net=net,
                device=device,
                tile_dir=tile_dirs[name],
                max_tile_mb=max_tile_mb,
                spatial_key=spatial_key,
            )
        samples.append(sample)
    return samples, common


def _train_runs(data, adj_norm, adj_label, *, seeds, n_domains, pre_epochs, epochs, device, batches, tiles=None,
                batch_spots=None, stable=False, harmonize_sections=None, smooth=None):
    """One network fit per seed and the domains. ``stable=False`` (one seed, the reference): the
    network is pre-trained, refined by DEC from Leiden's initial clusters (seeded with the run's
    seed) and its domains are Leiden's (:func:`._cluster.leiden_n_clusters`, the same seed).

    ``stable``: every network starts from the same weights and trains its autoencoders for
    ``pre_epochs + epochs`` epochs without the DEC stage (:func:`stable_config`), so that the runs'
    seeds drive only the training's noise; the domains are k-means's with :data:`_CONSENSUS_SEED`
    on the runs' embeddings side by side (:func:`._cluster.kmeans_domains`); each run's own
    k-means domains give the runs' agreement and each spot's support, and the medoid run (highest
    mean ARI to the others) the stored embedding and network. Measured (issue 19,
    benchmarks/domains.py, 5 seeds, seed-to-seed ARI of the refined domains; MOB rep11 / muscle
    Vis5A_2dpi / Vis7B_5dpi): the DEC stage amplified the training noise (k-means on the 2 runs'
    DEC-refined embeddings 0.88 / 0.92 / 0.89, with the initial weights of another draw 0.75 / 0.92
    / 0.69; on the pre-trained ones 0.98 / 0.98 / 0.98 and 0.97 / 0.95 / 0.84), and 400 epochs of
    the autoencoders alone made the domains more accurate than 200 (synthetic section ARI to the
    truth 0.990 against 0.964, MOB layers 0.510 against 0.45) and as stable (0.99 / 0.97 / 0.94;
    the other draw 0.94 / 0.92 / 0.97).

    ``harmonize_sections`` (each spot's section): every run's embedding is corrected for the
    section effects (:func:`.._correct.harmonize`, with the consensus's fixed seed) before the
    domains are found; the stored embedding is the corrected one.

    ``smooth`` (the stable mode of an integration: the block-diagonal operator averaging every spot
    with its ``refine_neighbors`` nearest spots of its own section, :func:`._graph.neighbour_mean`):
    the k-means runs on every run's embedding averaged so (the stored embedding is the network's).
    The section-corrected embedding is noisier per spot than a single section's (issue 19, 4 ST
    bulb sections, 7 domains, neighbour agreement raw / refined over 4 neighbours): k-means on it
    within each section (seeds 0-1) gave 0.491 / 0.554, as the shared k-means (5 seeds 0.482 /
    0.544, seed-to-seed ARI 0.934), against 0.548 / 0.602 for single-section runs, so the shared
    clustering was not the cause; averaged over the spot and its 4 grid neighbours 0.568 / 0.598 at
    0.961. Stronger averaging lost stability (seeds 0-1: 8 neighbours 0.850, two steps of them
    0.800, the network's 12-neighbour graph 0.679); half the spot's own embedding and half its
    neighbours' mean gained less (0.526 / 0.573).
    """
    cfg = stable_config() if stable else TrainConfig()

    def init_clusters(z: np.ndarray, s: int) -> np.ndarray:
        return initial_clusters(z, cfg.dec_neighbors, cfg.dec_resolution, s)

    stages = dict(pre_epochs=pre_epochs + epochs, epochs=0) if stable else dict(pre_epochs=pre_epochs, epochs=epochs)
    fits = []
    for run_seed in progress(seeds, description="DeepST consensus runs") if len(seeds) > 1 else seeds:
        fits.append(train_deepst(data, adj_norm, adj_label, seed=run_seed, device=device, batches=batches, cfg=cfg,
                                 cluster_init=init_clusters, tiles=tiles, batch_spots=batch_spots, **stages))
    t0 = time.perf_counter()
    embeddings = [f[0] for f in fits]
    # phases' seconds summed over the runs; peaks their maximum, seconds per epoch their mean
    combine = {"peak_rss_mb": max, "cuda_peak_mb": max, "per_epoch_s": lambda v: sum(v) / len(v)}
    timings = {k: float(combine.get(k, sum)([f[2][k] for f in fits])) for k in fits[0][2]}
    if harmonize_sections is not None:
        start = logger.info(f"DeepST: section effects of the {len(fits)} runs' embeddings removed (Harmony)")
        embeddings = [harmonize(e, harmonize_sections, seed=_CONSENSUS_SEED).astype(np.float64) for e in embeddings]
        logger.info("DeepST: Harmony done", time=start)
        timings["harmony_s"] = time.perf_counter() - t0
    if not stable:
        logger.info(f"DeepST: Leiden resolution search for {n_domains} domains")
        labels, resolution, exact = leiden_n_clusters(embeddings[0], n_domains, seed=seeds[0])
        timings["cluster_s"] = time.perf_counter() - t0
        return labels, embeddings[0], fits[0][1], timings, resolution, exact, {}
    stored = embeddings
    if smooth is not None:
        embeddings = [np.asarray(smooth @ e) for e in embeddings]
    logger.info(f"DeepST: k-means with {n_domains} centres on the {len(fits)} runs' embeddings")
    labels, n_init = kmeans_domains(embeddings, n_domains, seed=_CONSENSUS_SEED)
    labels = _consensus.consensus_labels([labels])[0]  # numbered by decreasing size
    consensus = {"run_seeds": seeds, "clustering_seed": _CONSENSUS_SEED, "kmeans_inits": n_init,
                 "neighbour_averaged": smooth is not None}
    medoid = 0
    if len(fits) > 1:
        runs = [kmeans_domains([e], n_domains, seed=_CONSENSUS_SEED)[0] for e in embeddings]
        medoid = _consensus.consensus_labels(runs)[1]["medoid"]
        agreement = _consensus.pairwise_ari(runs)[np.triu_indices(len(runs), 1)].mean()
        logger.info(f"DeepST: {len(runs)} runs agree at mean ARI {agreement:.3f}")
        consensus.update(run_agreement=float(agreement), support=run_support(runs, labels))
    timings["cluster_s"] = time.perf_counter() - t0
    return labels, stored[medoid], fits[medoid][1], timings, None, True, consensus
