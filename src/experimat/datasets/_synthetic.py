"""Synthetic data with known ground truth, for accuracy tests and benchmarks.

All generators are seeded and return AnnData objects holding raw integer counts in both
``X`` and ``layers['counts']``, and the truth in ``obs``/``var``/``uns``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._errors import InvalidInputError
from .._keys import Key

#: Visium centre-to-centre spot distance in full-resolution pixels (typical) and spot diameter
VISIUM_PITCH_PX = 138.0
VISIUM_SPOT_DIAMETER_PX = 89.0


def visium_hex_grid(n_spots: int, *, pitch: float = VISIUM_PITCH_PX) -> tuple[np.ndarray, np.ndarray]:
    """A roughly square patch of a Visium hexagonal array.

    Returns
    -------
    xy
        ``(n, 2)`` float pixel coordinates (x = column axis, y = row axis).
    array_rc
        ``(n, 2)`` int Visium array (row, col); columns step by 2 within a row, odd rows shifted.
    """
    if n_spots < 1:
        raise InvalidInputError("n_spots must be >= 1")
    n_cols = int(np.ceil(np.sqrt(n_spots * np.sqrt(3) / 2)))
    n_rows = int(np.ceil(n_spots / n_cols))
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    rows, cols = rows.ravel()[:n_spots], cols.ravel()[:n_spots]
    array_col = 2 * cols + (rows % 2)
    x = array_col * pitch / 2.0
    y = rows * pitch * np.sqrt(3) / 2.0
    return np.column_stack([x, y]).astype(np.float64), np.column_stack([rows, array_col]).astype(np.int64)


def _spatial_uns(name: str, xy: np.ndarray, rng: np.random.Generator, with_image: bool) -> dict:
    sf = {
        "spot_diameter_fullres": VISIUM_SPOT_DIAMETER_PX,
        "tissue_hires_scalef": 0.2,
        "tissue_lowres_scalef": 0.06,
        "fiducial_diameter_fullres": 1.5 * VISIUM_SPOT_DIAMETER_PX,
    }
    images = {}
    if with_image:
        h = int(np.ceil((xy[:, 1].max() + VISIUM_PITCH_PX) * sf["tissue_hires_scalef"]))
        w = int(np.ceil((xy[:, 0].max() + VISIUM_PITCH_PX) * sf["tissue_hires_scalef"]))
        images["hires"] = (0.85 + 0.1 * rng.random((h, w, 3))).astype(np.float32)
    return {name: {"images": images, "scalefactors": sf, "metadata": {"source": "experimat synthetic"}}}


def synthetic_domains(
    n_spots: int = 2000,
    n_domains: int = 5,
    n_genes: int = 200,
    *,
    n_markers_per_domain: int = 10,
    depth: float = 2000.0,
    fold_change: float = 3.0,
    dispersion: float = 10.0,
    layout: str = "stripes",
    with_image: bool = False,
    seed: int = 0,
    sample: str = "synthetic",
):
    """Visium-like spots with ``n_domains`` spatially contiguous domains and domain marker genes.

    Domains are vertical bands (``layout="stripes"``) or Voronoi cells around random centres
    (``layout="voronoi"``). Each domain up-regulates ``n_markers_per_domain`` genes by
    ``fold_change``; counts are negative binomial. When ``with_image`` is set, a hires image whose
    colour follows the domain is stored in ``uns['spatial'][sample]``.

    Truth: ``obs['domain']`` (categorical), ``var['marker_of']`` (domain or ``"none"``).
    """
    import anndata as ad

    rng = np.random.default_rng(seed)
    xy, rc = visium_hex_grid(n_spots)
    if layout == "stripes":
        edges = np.quantile(xy[:, 0], np.linspace(0, 1, n_domains + 1)[1:-1])
        domain = np.searchsorted(edges, xy[:, 0], side="right")
    elif layout == "voronoi":
        centres = xy[rng.choice(n_spots, n_domains, replace=False)]
        d = ((xy[:, None, :] - centres[None]) ** 2).sum(-1)
        domain = d.argmin(1)
    else:
        raise InvalidInputError(f"layout must be 'stripes' or 'voronoi', not {layout!r}")
    n_markers = n_domains * n_markers_per_domain
    if n_markers > n_genes:
        raise InvalidInputError(f"n_genes ({n_genes}) must be >= n_domains * n_markers_per_domain ({n_markers})")
    base = rng.lognormal(mean=0.0, sigma=1.0, size=n_genes)
    base /= base.sum()
    mean = np.tile(base, (n_spots, 1))
    marker_of = np.array(["none"] * n_genes, dtype=object)
    for k in range(n_domains):
        genes = np.arange(k * n_markers_per_domain, (k + 1) * n_markers_per_domain)
        mean[np.ix_(domain == k, genes)] *= fold_change
        marker_of[genes] = str(k)
    size = rng.lognormal(0.0, 0.2, size=n_spots) * depth
    mean = mean / mean.sum(1, keepdims=True) * size[:, None]
    p = dispersion / (dispersion + mean)
    counts = rng.negative_binomial(dispersion, p).astype(np.float32)
    obs = pd.DataFrame(
        {"domain": pd.Categorical(domain.astype(str)), "array_row": rc[:, 0], "array_col": rc[:, 1]},
        index=[f"spot{i}" for i in range(n_spots)],
    )
    var = pd.DataFrame({"marker_of": marker_of}, index=[f"gene{i}" for i in range(n_genes)])
    adata = ad.AnnData(counts, obs=obs, var=var)
    adata.layers["counts"] = counts.copy()
    adata.obsm[Key.SPATIAL] = xy
    adata.uns[Key.SPATIAL] = _spatial_uns(sample, xy, rng, with_image)
    if with_image:
        img = adata.uns[Key.SPATIAL][sample]["images"]["hires"]
        s = adata.uns[Key.SPATIAL][sample]["scalefactors"]["tissue_hires_scalef"]
        palette = rng.random((n_domains, 3)).astype(np.float32)
        r = int(VISIUM_SPOT_DIAMETER_PX * s / 2) + 1
        for (x, y), k in zip(xy * s, domain, strict=True):
            yi, xi = int(round(y)), int(round(x))
            img[max(0, yi - r) : yi + r, max(0, xi - r) : xi + r] = palette[k]
    return adata


def synthetic_sections(
    n_sections: int = 3,
    n_spots: int = 3000,
    n_domains: int = 5,
    *,
    effect: float = 0.5,
    layout: str = "voronoi",
    seed: int = 0,
) -> dict:
    """Serial sections of one synthetic tissue with known shared domains and a section effect each.

    :func:`synthetic_domains` (``n_spots`` spots, ``n_domains`` domains) is cut into ``n_sections``
    horizontal bands; each band's counts are multiplied by its own per-gene log-normal factor (sd
    ``effect``) and a depth factor in [0.5, 2] and redrawn as Poisson, and its coordinates start at 0.
    Returns ``{"s0": AnnData, ...}`` of counts; truth in ``obs['domain']`` (the same labels in every
    section). For multi-section integration benchmarks and tests.
    """
    whole = synthetic_domains(n_spots, n_domains, layout=layout, seed=seed)
    rng = np.random.default_rng(seed + 1)
    y = whole.obsm["spatial"][:, 1]
    edges = np.quantile(y, np.linspace(0, 1, n_sections + 1))
    edges[-1] += 1
    out = {}
    for i in range(n_sections):
        a = whole[(y >= edges[i]) & (y < edges[i + 1])].copy()
        factor = rng.lognormal(0.0, effect, size=a.n_vars) * rng.uniform(0.5, 2.0)
        X = np.asarray(a.X.toarray() if hasattr(a.X, "toarray") else a.X)
        a.X = rng.poisson(X * factor).astype(np.float32)
        a.obsm["spatial"] = a.obsm["spatial"] - a.obsm["spatial"].min(0)
        a.obs_names = [f"s{i}_{o}" for o in a.obs_names]
        out[f"s{i}"] = a
    return out

def synthetic_svg(
    n_spots: int = 1000,
    n_genes: int = 500,
    *,
    n_spatial: int = 50,
    patterns: tuple[str, ...] = ("bump", "gradient", "periodic"),
    lengthscale: float | None = None,
    depth: float = 1500.0,
    effect: float = 1.0,
    dispersion: float = 5.0,
    seed: int = 0,
    sample: str = "synthetic",
    compositional: bool = True,
):
    """Visium-like spots where the first ``n_spatial`` genes follow a spatial pattern.

    Patterns cycle through ``patterns``: a Gaussian bump, a linear gradient, a periodic wave.
    ``effect`` is the log-scale amplitude. Truth: ``var['spatial']`` (bool) and ``var['pattern']``.

    With ``compositional=True`` (sequencing-like) each spot's expected counts are rescaled to its
    library size, so strong patterns in many genes shift the other genes' shares a little. With
    ``compositional=False`` expression is absolute: gene ``g`` at spot ``i`` has mean
    ``size_factor_i * base_mean_g * exp(pattern)`` (``obs['size_factor']``, ``var['base_mean']``), so
    non-spatial genes are exactly null given the size factors — what calibration tests need.
    """
    import anndata as ad

    if not 0 <= n_spatial <= n_genes:
        raise InvalidInputError(f"n_spatial must be between 0 and n_genes ({n_genes}); got {n_spatial}.")
    rng = np.random.default_rng(seed)
    xy, rc = visium_hex_grid(n_spots)
    span = np.ptp(xy, axis=0).max()
    ls = lengthscale if lengthscale is not None else span / 5
    centred = (xy - xy.mean(0)) / span
    log_mean = np.zeros((n_spots, n_genes))
    pattern = np.array(["none"] * n_genes, dtype=object)
    for g in range(n_spatial):
        kind = patterns[g % len(patterns)]
        if kind == "bump":
            c = xy[rng.integers(n_spots)]
            f = np.exp(-((xy - c) ** 2).sum(1) / (2 * ls**2))
        elif kind == "gradient":
            angle = rng.uniform(0, 2 * np.pi)
            f = centred @ np.array([np.cos(angle), np.sin(angle)])
        elif kind == "periodic":
            angle = rng.uniform(0, 2 * np.pi)
            f = np.sin(2 * np.pi * (xy @ np.array([np.cos(angle), np.sin(angle)])) / (2 * ls))
        else:
            raise InvalidInputError(f"unknown pattern {kind!r}; valid: bump, gradient, periodic")
        f = (f - f.mean()) / (f.std() + 1e-12)
        log_mean[:, g] = effect * f
        pattern[g] = kind
    base = rng.lognormal(0.0, 1.0, size=n_genes)
    base /= base.sum()
    mean = base[None, :] * np.exp(log_mean)
    size = rng.lognormal(0.0, 0.2, size=n_spots) * depth
    if compositional:
        mean = mean / mean.sum(1, keepdims=True) * size[:, None]
    else:
        mean = mean * size[:, None]
    p = dispersion / (dispersion + mean)
    counts = rng.negative_binomial(dispersion, p).astype(np.float32)
    obs = pd.DataFrame({"array_row": rc[:, 0], "array_col": rc[:, 1]}, index=[f"spot{i}" for i in range(n_spots)])
    var = pd.DataFrame(
        {"spatial": np.arange(n_genes) < n_spatial, "pattern": pattern}, index=[f"gene{i}" for i in range(n_genes)]
    )
    if not compositional:
        obs["size_factor"] = size / depth
        var["base_mean"] = base * depth
    adata = ad.AnnData(counts, obs=obs, var=var)
    adata.layers["counts"] = counts.copy()
    adata.obsm[Key.SPATIAL] = xy
    adata.uns[Key.SPATIAL] = _spatial_uns(sample, xy, rng, with_image=False)
    return adata


def pseudo_spots(
    adata_sc,
    labels_key: str,
    *,
    n_spots: int = 500,
    cells_per_spot: tuple[int, int] = (2, 10),
    n_regions: int = 5,
    types_per_region: int = 3,
    depth: float | None = 5000.0,
    layer: str | None = None,
    seed: int = 0,
):
    """Pseudo-spots with known composition, built by summing real single-cell counts.

    Spots lie on a Visium hex grid split into ``n_regions`` bands; each region draws its cells
    from a mixture of ``types_per_region`` cell types (Dirichlet weights). Each spot sums
    2–10 cells (``cells_per_spot``) and is binomially downsampled to about ``depth`` counts
    (``None`` keeps the sum).

    Returns
    -------
    AnnData of spots with counts in ``X`` and ``layers['counts']``, ``obsm['spatial']``, and the
    truth as DataFrames ``obsm['true_counts']`` (cells per type) and ``obsm['true_proportions']``;
    ``obs['region']`` and ``obs['n_cells']``.
    """
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    if labels_key not in adata_sc.obs:
        raise InvalidInputError(f"labels_key {labels_key!r} not in obs; available: {list(adata_sc.obs.columns)}")
    X = adata_sc.X if layer is None else adata_sc.layers[layer]
    X = sp.csr_matrix(X)
    labels = adata_sc.obs[labels_key].astype(str).to_numpy()
    types = np.unique(labels)
    by_type = {t: np.flatnonzero(labels == t) for t in types}
    xy, _ = visium_hex_grid(n_spots)
    edges = np.quantile(xy[:, 0], np.linspace(0, 1, n_regions + 1)[1:-1])
    region = np.searchsorted(edges, xy[:, 0], side="right")
    region_types = [rng.choice(len(types), size=min(types_per_region, len(types)), replace=False) for _ in range(n_regions)]
    true = np.zeros((n_spots, len(types)))
    rows, cells_used = [], []
    for i in range(n_spots):
        k = region[i]
        w = rng.dirichlet(np.ones(len(region_types[k])))
        n = rng.integers(cells_per_spot[0], cells_per_spot[1] + 1)
        picks = rng.choice(region_types[k], size=n, p=w)
        idx = [rng.choice(by_type[types[t]]) for t in picks]
        np.add.at(true[i], picks, 1)
        rows.append(np.asarray(X[idx].sum(0)).ravel())
        cells_used.append(n)
    counts = np.vstack(rows).astype(np.int64)
    if depth is not None:
        tot = counts.sum(1, keepdims=True).clip(min=1)
        p = np.minimum(1.0, depth / tot)
        counts = rng.binomial(counts, p)
    counts = counts.astype(np.float32)
    obs = pd.DataFrame(
        {"region": pd.Categorical(region.astype(str)), "n_cells": np.asarray(cells_used)},
        index=[f"spot{i}" for i in range(n_spots)],
    )
    spots = ad.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=adata_sc.var_names.copy()))
    spots.layers["counts"] = spots.X.copy()
    spots.obsm[Key.SPATIAL] = xy
    spots.obsm["true_counts"] = pd.DataFrame(true, index=obs.index, columns=types)
    spots.obsm["true_proportions"] = pd.DataFrame(true / true.sum(1, keepdims=True), index=obs.index, columns=types)
    return spots
