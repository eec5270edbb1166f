"""Domain detection and multi-sample integration with SpaGCN."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from experimat._compat import renamed_options
from experimat._errors import InvalidInputError
from experimat._keys import Key
from experimat._logging import logger, progress
from experimat._optional import import_optional
from experimat._settings import settings
from experimat.methods import _cluster as cluster_blocks
from experimat.methods._checks import check_choice, check_positive_int, store_params
from experimat.methods._options import option_ranges
from experimat.methods._torch import torch_device

from .. import _consensus, _potts
from .._common import check_spatial_prior, check_stable
from . import _graph, _model
from ._inputs import _convolved_features, _prepare, _Section

if TYPE_CHECKING:
    from anndata import AnnData

INIT_METHODS = ("leiden", "kmeans")
REFINE_SHAPES = ("hexagon", "square", "none")
BATCH_CORRECTIONS = ("center", "harmony", "none")
#: k-means restarts of each consensus run: the best of many restarts hardly depends on the seed
STABLE_KMEANS_N_INIT = 50


def _check_common(n_obs: int, n_clusters: int, p: float, lr: float, tol: float) -> None:
    check_positive_int("n_clusters", n_clusters, minimum=2)
    if n_clusters > n_obs:
        raise InvalidInputError(f"n_clusters={n_clusters} exceeds the number of spots ({n_obs}); pass fewer domains.")
    for name, value in (("p", p), ("lr", lr), ("tol", tol)):
        if not (isinstance(value, (int, float)) and value > 0):
            raise InvalidInputError(f"{name} must be a positive number; got {value!r}.")


def _as_categorical(labels: np.ndarray, categories: Sequence[str] | None = None) -> pd.Categorical:
    text = np.asarray([str(v) for v in labels], dtype=object)
    if categories is None:
        categories = sorted(set(text), key=lambda s: (len(s), s))
    return pd.Categorical(text, categories=list(categories))


def _cluster(
    ax, *, n_clusters, init, seed, stable, n_runs, lr, max_epochs, tol, n_neighbors, resolution, device,
    keep_n_clusters=False, adjacency=None, sections=None,
):
    """SpaGCN's clustering of ``A X``: one seeded fit (``stable=False``, the reference's behaviour), or the
    consensus of ``n_runs`` fits started from the identity layer, k-means with
    :data:`STABLE_KMEANS_N_INIT` restarts (see :mod:`.._consensus`). ``keep_n_clusters``: every fit
    refills a cluster that training empties (:func:`._model.refill_empty`, splitting the cluster that
    cuts the fewest edges of ``adjacency``, halves in every one of ``sections`` first)."""
    import torch

    kwargs = dict(
        n_clusters=n_clusters, init=init, lr=lr, max_epochs=max_epochs, tol=tol, n_neighbors=n_neighbors, device=device,
        keep_clusters=keep_n_clusters, adjacency=adjacency, sections=sections,
    )
    if not stable:
        with torch.random.fork_rng(devices=[]):
            fit = _model.fit_gcdec(ax, seed=seed, resolution=resolution, **kwargs)
        info = {"resolution": fit.resolution, "init_used": fit.init, "n_epochs": [int(fit.n_epochs)], "prob": fit.prob}
        info["refilled"] = [int(fit.refilled)]
        return fit.labels, info
    runs, fits = [], []
    res_start = 0.4
    seeds = _consensus.run_seeds(seed, n_runs)
    for s in progress(seeds, description="SpaGCN consensus runs"):
        with torch.random.fork_rng(devices=[]):
            fit = _model.fit_gcdec(
                ax,
                seed=s,
                resolution=resolution,
                identity_init=True,
                res_start=res_start,
                kmeans_n_init=STABLE_KMEANS_N_INIT,
                **kwargs,
            )
        if fit.resolution is not None and fit.init == "leiden":
            res_start = float(fit.resolution)  # later runs start their search where the first one ended
        runs.append(fit.labels)
        fits.append(fit)
    labels, info = _consensus.consensus_labels(runs, probs=[f.prob for f in fits])
    if n_runs > 1:
        logger.info(f"    {n_runs} runs agree at mean ARI {info['run_agreement']:.3f}")
    return labels, {
        "resolution": fits[info["medoid"]].resolution,
        "init_used": fits[info["medoid"]].init,
        "n_epochs": [int(f.n_epochs) for f in fits],
        "refilled": [int(f.refilled) for f in fits],
        "run_seeds": seeds,
        "run_agreement": info["run_agreement"],
        "support": info["support"],
        "prob": info["prob"],
    }


def _store_extra(info: dict) -> dict:
    extra = {
        "resolution": float(info["resolution"]) if info["resolution"] is not None else "none",
        "init_used": info["init_used"],
        "init_sample": info.get("init_sample", "none"),
        "n_epochs": info["n_epochs"] if len(info["n_epochs"]) > 1 else info["n_epochs"][0],
    }
    if "run_seeds" in info:
        extra["run_seeds"] = [int(s) for s in info["run_seeds"]]
        extra["run_agreement"] = float(info["run_agreement"])
        extra["mean_support"] = float(np.mean(info["support"]))
    if any(info.get("refilled", [])):
        extra["refilled_clusters"] = info["refilled"]
        extra["refill_split"] = "fewest spot-lattice edges cut, halves in every section first"
    if "prior_changed" in info:
        extra["prior_changed"] = float(info["prior_changed"])
    return extra


def _spatial_prior(labels, info, adjacency, beta: float):
    """The model's labels under the Potts prior (:mod:`.._potts`) on ``adjacency``, each section's own spot lattice."""
    if beta <= 0:
        return labels
    smoothed, sweeps = _potts.potts_labels(info["prob"], labels, adjacency, beta)
    info["prior_changed"] = float(np.mean(smoothed != labels))
    logger.info(f"    spatial prior {beta:g}: {info['prior_changed']:.1%} of spots relabelled in {sweeps} sweeps")
    return smoothed


def _run(adatas: Mapping[str, AnnData], params: dict, *, library_id, batch_correction: str):
    """Check the options, build every section's graph, convolve, cluster: the one path of both entry
    points. Returns ``(labels of all spots, clustering info, sections, row offsets)``."""
    import_optional("torch", purpose="SpaGCN")
    check_choice("init", params["init"], INIT_METHODS)
    check_choice("refine_shape", params["refine_shape"], REFINE_SHAPES)
    check_choice("batch_correction", batch_correction, BATCH_CORRECTIONS)
    total = sum(a.n_obs for a in adatas.values())
    _check_common(total, params["n_clusters"], params["p"], params["lr"], params["tol"])
    check_positive_int("n_pcs", params["n_pcs"])
    check_positive_int("max_epochs", params["max_epochs"])
    check_stable(params["stable"], params["n_runs"])
    if not isinstance(params["keep_n_clusters"], bool):
        raise InvalidInputError(f"keep_n_clusters must be True or False; got {params['keep_n_clusters']!r}.")
    params["spatial_prior"] = check_spatial_prior(params["spatial_prior"])
    names = list(adatas)
    genes = None
    if len(names) > 1:
        genes = pd.Index(adatas[names[0]].var_names)
        for name in names[1:]:
            genes = genes.intersection(adatas[name].var_names, sort=False)
        if len(genes) == 0:
            raise InvalidInputError(f"the samples {names} share no genes (var_names); harmonise the gene ids first.")
    seed = params["seed"]
    device = torch_device(params["use_gpu"])
    sections = []
    for name in progress(names, description="SpaGCN sample graphs") if len(names) > 1 else names:
        sec = _prepare(
            adatas[name],
            layer=params["layer"],
            spatial_key=params["spatial_key"],
            histology=params["histology"],
            channels=params["channels"],
            library_id=library_id,
            alpha=params["alpha"],
            p=params["p"],
            device=device,
            genes=genes,
        )
        logger.info(f"    {name}: {adatas[name].n_obs} spots, Gaussian width l = {sec.width:.4g} (p = {params['p']})")
        sections.append(sec)
    ax, offsets = _convolved_features(
        sections, n_pcs=params["n_pcs"], seed=seed, device=device, batch_correction=batch_correction
    )
    # each section's spot lattice: the graph of the spatial prior and of the choice of a refill's split
    need = params["keep_n_clusters"] or params["spatial_prior"] > 0
    adjacency = _potts.sections_adjacency([s.xy for s in sections]) if need else None
    groups = np.repeat(np.arange(len(sections)), np.diff(offsets)) if len(sections) > 1 else None
    keys = "n_clusters init stable n_runs lr max_epochs tol n_neighbors resolution keep_n_clusters".split()
    labels, info = _cluster(
        ax, seed=seed, device=device, adjacency=adjacency, sections=groups, **{k: params[k] for k in keys}
    )
    big = ax.shape[0] > cluster_blocks.SAMPLE_MAX  # the initial clusterings ran on a sample (size rule)
    info["init_sample"] = cluster_blocks.SAMPLE_MAX if big else "none"
    labels = _spatial_prior(labels, info, adjacency, params["spatial_prior"])
    found = len(np.unique(labels))
    if found < params["n_clusters"]:
        fix = (
            "the consensus vote or the spatial prior took the last spots of a domain the fits kept; ask for "
            "fewer domains or pass a smaller spatial_prior"
            if params["keep_n_clusters"]
            else "pass keep_n_clusters=True to refill emptied domains or ask for fewer domains"
        )
        logger.warning(
            f"SpaGCN found {found} of the {params['n_clusters']} domains asked for: "
            f"{params['n_clusters'] - found} domain(s) ended without spots (no spot is most likely in them); "
            f"{fix}."
        )
    return labels, info, sections, offsets


def _write(adata, labels, sec: _Section, params: dict, *, key_added, refined_key_added, categories, extra) -> list:
    """One sample's domains (and refined domains) into ``adata.obs``, its parameters into ``uns``."""
    adata.obs[key_added] = pd.Categorical(labels, categories=categories)
    columns = [key_added]
    if params["refine_shape"] != "none":
        refined = _graph.refine_labels(sec.xy, np.asarray(labels).astype(str), params["refine_shape"])
        adata.obs[refined_key_added] = pd.Categorical(refined, categories=categories)
        columns.append(refined_key_added)
    store_params(adata, key_added, params, l=float(sec.width), **extra)
    return columns


def _resolve(params: dict) -> dict:
    """The seed used and the initialisation (k-means for the consensus, Leiden for one seeded run)."""
    params["seed"] = int(settings.seed if params["seed"] is None else params["seed"])
    if params["init"] is None:
        params["init"] = "kmeans" if params["stable"] is True else "leiden"
    return params


@option_ranges(p="(0, 1)", alpha="[0, inf)", spatial_prior="[0, inf)")
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
    init: str | None = None,
    resolution: float | None = None,
    n_neighbors: int = 10,
    lr: float = 0.05,
    max_epochs: int = 200,
    tol: float = 5e-3,
    stable: bool = True,
    n_runs: int = 3,
    spatial_prior: float = 0.0,
    keep_n_clusters: bool = False,
    spatial_key: str = Key.SPATIAL,
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
    (or by k-means). With ``stable=True`` (default) several such fits are combined into seed-stable
    domains. Domains are then refined by a majority vote over the nearest spots.

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
        ``"leiden"`` (resolution searched to hit ``n_clusters``) or ``"kmeans"``; ``None`` (default):
        k-means (best of 50 restarts) for the seed-stable consensus, Leiden for one seeded run
        (``stable=False``, the reference's initialisation).
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
    stable
        Seed-stable domains (default): ``n_runs`` fits with seeds derived from ``seed``, each started
        from the identity graph-convolution layer (so the initial clustering, by default the best of
        50 k-means restarts, sees ``A X`` itself), are
        combined by relabelling onto the medoid run and a per-spot majority vote. ``False``: one fit
        with SpaGCN's random layer initialisation, the reference package's behaviour (for exact
        comparisons).
    n_runs
        Runs of the consensus (``stable=True``); the cost grows about linearly with it.
    spatial_prior
        Strength ``beta`` of a Potts prior over the spot lattice (a hidden Markov random field, as
        BayesSpace): the labels maximise the model's log-probability plus ``beta`` times the fraction
        of a spot's lattice neighbours (4 on ST, 6 on Visium) sharing its label, by iterated
        conditional modes from the model's labels (:mod:`experimat.methods.domains._potts`), so only
        spots the model is unsure of change. ``0`` (default): SpaGCN's labels as they are.
    keep_n_clusters
        Refill a domain that the clustering empties (no spot most likely in it), as bisecting
        k-means does, so that exactly ``n_clusters`` domains come back: every domain is bisected
        along its principal direction (+ 2-means) and the split that cuts the fewest neighbour pairs
        of the spot lattice is kept (a domain that divides into two spatially coherent parts; the
        widest domain in expression space is often one region whose halves intermix); the emptied
        domain takes one half. ``uns[key_added]['refilled_clusters']`` counts the refills of each
        run. ``False`` (default): SpaGCN's clustering, which may return fewer (a warning says so).
    spatial_key
        ``obsm`` key of the coordinates.
    library_id
        Library of ``uns['spatial']`` holding the image (needed when several are stored).
    seed
        Random seed (``None``: ``em.settings.seed``); seeded CPU runs are reproducible.
    use_gpu
        Use a CUDA GPU through torch when present.
    key_added
        ``obs`` column of the domains; parameters go to ``uns[key_added]['params']`` (with
        ``run_agreement``, the mean ARI between the consensus runs, when ``stable``).
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
    params = _resolve(dict(locals()))
    params.pop("adata")
    start = logger.info(
        f"SpaGCN: {adata.n_obs} spots, {n_clusters} domains{' with histology' if histology else ''}"
        f"{f', consensus of {n_runs} runs' if stable else ''}"
    )
    labels, info, sections, _ = _run({"sample": adata}, params, library_id=library_id, batch_correction="none")
    labels = _as_categorical(labels)
    used = [c for c in labels.categories if (labels == c).any()]
    columns = _write(
        adata,
        np.asarray(labels),
        sections[0],
        params,
        key_added=key_added,
        refined_key_added=refined_key_added,
        categories=used,
        extra=_store_extra(info),
    )
    logger.info(f"SpaGCN: {adata.obs[key_added].nunique()} domains", time=start)
    return adata.obs[columns].copy()


@renamed_options(result_key="key_added")
@option_ranges(p="(0, 1)", alpha="[0, inf)", spatial_prior="[0, inf)")
def integrate_domains_spagcn(
    adatas: Mapping[str, AnnData],
    *,
    n_clusters: int = 15,
    layer: str | None = "lognorm",
    key_added: str = "integrated",
    refined_key_added: str | None = None,
    refine_shape: str = "hexagon",
    batch_correction: str = "center",
    histology: bool = False,
    channels: Sequence[str] | None = None,
    p: float = 0.5,
    alpha: float = 1.0,
    n_pcs: int = 50,
    init: str | None = None,
    resolution: float | None = None,
    n_neighbors: int = 10,
    lr: float = 0.05,
    max_epochs: int = 500,
    tol: float = 5e-3,
    stable: bool = True,
    n_runs: int = 3,
    spatial_prior: float = 1.0,
    keep_n_clusters: bool = True,
    spatial_key: str = Key.SPATIAL,
    seed: int | None = 100,
    use_gpu: bool = True,
) -> dict[str, pd.DataFrame]:
    """Domains shared across samples: one SpaGCN model over several samples (multiSpaGCN).

    Each sample gets its own spot graph (own width ``l``, optional histology); the graphs form a
    block-diagonal adjacency, the expression of the genes common to all samples is corrected for
    section effects (``batch_correction``) and reduced by one PCA, and one model clusters all spots
    into ``n_clusters`` shared domains, so a domain has the same label in every sample. The
    majority-vote refinement runs within each sample.

    Parameters
    ----------
    adatas
        ``{sample: AnnData}``; each has ``obsm[spatial_key]`` and ``layer``.
    n_clusters
        Number of shared domains over all samples.
    layer
        Log-normalised expression (``None``: ``adata.X``).
    key_added
        ``obs`` column of the domains written in every sample; parameters go to each sample's
        ``uns[key_added]['params']``. Deprecated alias: ``result_key=``.
    refined_key_added
        ``obs`` column of the refined domains (``None``: ``"<key_added>.refined"``).
    refine_shape
        ``"hexagon"`` (Visium), ``"square"`` (ST) or ``"none"`` (no refined column).
    batch_correction
        ``"center"`` (default): subtract each sample's mean log-expression per gene before the joint
        PCA (removes additive section effects); ``"harmony"``: also move each sample's spots onto
        the shared clusters of the PCA embedding (Harmony's cluster-wise centroid correction,
        :func:`experimat.methods.domains._correct.harmonize`); ``"none"``: the reference's pooled PCA.
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
        ``"leiden"`` (resolution searched) or ``"kmeans"``; ``None`` (default): k-means for the
        seed-stable consensus, Leiden with ``stable=False``.
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
    stable
        Seed-stable domains (default): ``n_runs`` fits with seeds derived from ``seed``, each started
        from the identity graph-convolution layer (so the initial clustering, by default the best of
        50 k-means restarts, sees ``A X`` itself), are
        combined by relabelling onto the medoid run and a per-spot majority vote. ``False``: one fit
        with SpaGCN's random layer initialisation, the reference package's behaviour (for exact
        comparisons).
    n_runs
        Runs of the consensus (``stable=True``); the cost grows about linearly with it.
    spatial_prior
        Strength ``beta`` of a Potts prior over each sample's spot lattice, as in
        :func:`spatial_detect_domains_spagcn`. Default 1: domains shared by several sections are
        clustered in a joint embedding that carries what is left of the section effects, and its
        labels are less spatially coherent than single-section ones at the same ``n_clusters`` (8 ST
        hippocampus sections, 10 domains: neighbour agreement 0.620 against 0.685); the prior
        relabels about 4% of the spots, where the model is unsure, and brings them close to
        single-section runs (0.667), 0.06 behind single-section runs with the same prior (0.729;
        refined labels 0.713 against 0.737, and 0.757 with the prior).
        ``0``: the model's labels as they are.
    keep_n_clusters
        Refill a domain that the clustering empties, as in :func:`spatial_detect_domains_spagcn`, so
        that ``n_clusters`` is the number of shared domains; of the candidate splits, one whose halves
        both occur in every section the domain occurs in comes first (a split by section cuts no
        lattice edge, but makes a section-specific domain). Default ``True``: 8 ST hippocampus
        sections, 10 domains: all 10 in every section, neighbour agreement 0.667 (refined 0.713)
        against 0.680 (0.724) for SpaGCN's 9 (``False``), where bisecting the widest domain gave 0.630
        (0.684); bulb, muscle and synthetic sections empty no domain and are unchanged.
    spatial_key
        ``obsm`` key of the coordinates.
    seed
        Random seed (``None``: ``em.settings.seed``).
    use_gpu
        Use a CUDA GPU through torch when present.

    Returns
    -------
    ``{sample: DataFrame}`` of each sample's domain labels (columns ``key_added`` and
    ``refined_key_added``), also written to ``adata.obs`` of every sample with the same categories.

    Examples
    --------
    >>> import experimat as em, scanpy as sc
    >>> from experimat.methods.domains.spagcn import integrate_domains_spagcn
    >>> samples = {f"s{i}": em.datasets.synthetic_domains(600, 4, seed=i) for i in range(2)}
    >>> for a in samples.values():
    ...     a.layers["lognorm"] = sc.pp.log1p(sc.pp.normalize_total(a, inplace=False)["X"])
    >>> out = integrate_domains_spagcn(samples, n_clusters=4, max_epochs=100)
    """
    refined_key_added = f"{key_added}.refined" if refined_key_added is None else refined_key_added
    params = _resolve(dict(locals()))
    params.pop("adatas")
    if not isinstance(adatas, Mapping) or len(adatas) == 0:
        raise InvalidInputError("adatas must be a non-empty dict {sample: AnnData}.")
    names = list(adatas)
    start = logger.info(f"SpaGCN integration: {len(names)} samples, {sum(a.n_obs for a in adatas.values())} spots")
    labels, info, sections, offsets = _run(adatas, params, library_id=None, batch_correction=batch_correction)
    all_labels = _as_categorical(labels)
    used = [c for c in all_labels.categories if (all_labels == c).any()]
    out = {}
    for i, name in enumerate(names):
        a = adatas[name]
        columns = _write(
            a,
            np.asarray(all_labels[offsets[i] : offsets[i + 1]]),
            sections[i],
            params,
            key_added=key_added,
            refined_key_added=refined_key_added,
            categories=used,
            extra={"samples": list(names), **_store_extra(info)},
        )
        out[name] = a.obs[columns].copy()
    logger.info(f"SpaGCN integration: {len(used)} shared domains", time=start)
    return out
