"""DestVI utilities (after YosefLab's destvi_utils): automatic proportion thresholds, spatial PCA of the
per-type states, and cell-type-specific differential expression between two groups of spots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experimat._compat import positional_options, renamed_options
from experimat._errors import InvalidInputError, KeyNotFoundError, MissingSlotError
from experimat._keys import Key
from experimat._settings import settings
from experimat.methods._checks import check_choice, check_positive_int, checks_sample, get_coordinates, get_matrix
from experimat.methods._graph import knn_graph

from ._condscvi import CondSCVIModel, _as_csr
from ._destvi import _decode_scale, _destvi_slots, _resolve_reference

if TYPE_CHECKING:
    from anndata import AnnData

THRESHOLD_KINDS = ("primary", "secondary", "min_value")


def _proportions(adata: AnnData, key: str) -> pd.DataFrame:
    slot = f"{key}.proportions"
    if slot not in adata.obsm:
        raise MissingSlotError(
            f"obsm[{slot!r}] not found; run deconvolve_destvi(adata, reference=..., key_added={key!r}) first. "
            f"Available obsm keys: {list(adata.obsm.keys())}."
        )
    props = adata.obsm[slot]
    if not isinstance(props, pd.DataFrame):
        raise InvalidInputError(f"obsm[{slot!r}] must be a DataFrame with cell-type columns.")
    return props


def _check_types(ct_list, valid) -> list[str]:
    valid = list(valid)
    ct_list = valid if ct_list is None else ([ct_list] if isinstance(ct_list, str) else list(ct_list))
    for ct in ct_list:
        if ct not in valid:
            raise KeyNotFoundError("cell type", ct, valid)
    return ct_list


def _autocorrelation_z(W, values: np.ndarray) -> np.ndarray:
    """Hotspot-style autocorrelation Z score of each column of ``values`` (standardised, no model)."""
    x = values - values.mean(0, keepdims=True)
    sd = x.std(0, keepdims=True)
    x = x / np.where(sd > 0, sd, 1.0)
    g = np.einsum("ij,ij->j", x, np.asarray(W @ x))
    var = float(W.multiply(W).sum() + W.multiply(W.T).sum())
    return g / np.sqrt(max(var, 1e-300))


@renamed_options(key="destvi_key")
def automatic_proportion_threshold(
    adata: AnnData,
    ct_list: Sequence[str] | str | None = None,
    *,
    kind: str = "primary",
    destvi_key: str = "destvi",
    spatial_key: str = Key.SPATIAL,
    n_neighbors: int = 10,
    n_quantiles: int = 100,
    smoothing: float = 0.1,
) -> dict[str, float]:
    """Per-type proportion thresholds from the spatial autocorrelation of thresholded proportions.

    As the DestVI utilities: for thresholds ``t`` at ``n_quantiles`` quantiles of a type's proportions,
    the vector ``p * (p > t)`` gets a Hotspot-style spatial autocorrelation Z score (Gaussian kNN graph
    with ``n_neighbors``); a quintic smoothing spline of Z against ``t`` (smoothing ``smoothing`` on
    Z scaled to a maximum of 1) gives the *primary* threshold at its steepest descent and the
    *secondary* threshold at its first inflection point; ``"min_value"`` is the smaller of the two.

    Parameters
    ----------
    adata
        Spots deconvolved by :func:`deconvolve_destvi` (with ``obsm[spatial_key]``).
    ct_list
        Cell types (default: all).
    kind
        ``"primary"``, ``"secondary"`` or ``"min_value"``.
    destvi_key
        ``key_added`` of the deconvolution. Deprecated alias: ``key=``.
    spatial_key
        ``obsm`` key of the coordinates.
    n_neighbors
        Neighbours of the kNN graph.
    n_quantiles
        Number of candidate thresholds (quantiles of the proportions).
    smoothing
        Spline smoothing factor.

    Returns
    -------
    ``{cell type: threshold}``; also stored in ``uns[destvi_key]['thresholds'][kind]``, and the diagnostic curve of
    each type (candidate thresholds, scaled Z scores, spline, primary and secondary thresholds) in
    ``uns[destvi_key]['threshold_curves']`` for :func:`experimat.pl.plot_proportion_thresholds`.

    Examples
    --------
    >>> thr = automatic_proportion_threshold(spots, kind="secondary")
    """
    from scipy.interpolate import UnivariateSpline

    kind = check_choice("kind", kind, THRESHOLD_KINDS)
    n_neighbors = check_positive_int("n_neighbors", n_neighbors)
    n_quantiles = check_positive_int("n_quantiles", n_quantiles, minimum=6)
    props = _proportions(adata, destvi_key)
    ct_list = _check_types(ct_list, props.columns)
    xy = get_coordinates(adata, spatial_key, min_obs=3)
    W = knn_graph(xy, n_neighbors, weights="gaussian")  # Hotspot's row-normalised Gaussian kNN weights
    out: dict[str, float] = {}
    curves: dict[str, dict[str, Any]] = {}
    for ct in ct_list:
        p = props[ct].to_numpy(dtype=np.float64)
        qs = np.unique(np.quantile(p, np.linspace(0, 1, n_quantiles, endpoint=False)))
        stack = np.stack([p * (p > q) for q in qs], axis=1)
        keep = stack.std(0) > 0
        qs, stack = qs[keep], stack[:, keep]
        if qs.size < 6:  # too few distinct values for a quintic spline
            out[ct] = float(np.median(p))
            continue
        z = _autocorrelation_z(W, stack)
        zs = z / max(np.abs(z).max(), 1e-12)
        spline = UnivariateSpline(qs, zs, k=5, s=smoothing)
        deriv = spline.derivative(1)(qs)
        sign2 = spline.derivative(2)(qs) > 0
        primary = float(qs[int(np.argmin(deriv))])
        flips = np.flatnonzero(sign2[:-1] != sign2[1:])
        secondary = float(qs[flips[0]]) if flips.size else primary
        out[ct] = {"primary": primary, "secondary": secondary, "min_value": min(primary, secondary)}[kind]
        curves[ct] = {
            "threshold": qs.astype(np.float64),
            "z": zs.astype(np.float64),
            "spline": np.asarray(spline(qs), dtype=np.float64),
            "primary": primary,
            "secondary": secondary,
        }
    entry = adata.uns.get(destvi_key)
    if isinstance(entry, dict):
        thresholds = dict(entry.get("thresholds", {}))
        thresholds[kind] = {**dict(thresholds.get(kind, {})), **out}
        entry["thresholds"] = thresholds
        entry["threshold_curves"] = {**dict(entry.get("threshold_curves", {})), **curves}
        adata.uns[destvi_key] = entry
    return out


def _threshold_of(adata: AnnData, key: str, ct: str, threshold: float | Mapping[str, float] | str) -> float:
    """The proportion threshold of ``ct``: a number, a per-type mapping, or a kind of stored automatic threshold."""
    if isinstance(threshold, str):
        kind = check_choice("threshold", threshold, THRESHOLD_KINDS)
        stored = ((adata.uns.get(key) or {}).get("thresholds") or {}).get(kind) or {}
        if ct not in stored:
            raise MissingSlotError(
                f"uns[{key!r}]['thresholds'][{kind!r}] has no threshold for {ct!r}; run "
                f"automatic_proportion_threshold(adata, kind={kind!r}, destvi_key={key!r}) first, or pass a number."
            )
        return float(stored[ct])
    if isinstance(threshold, Mapping):
        if ct not in threshold:
            raise KeyNotFoundError("cell type in threshold", ct, list(threshold))
        return float(threshold[ct])
    return float(threshold)


def _spatial_components(xy: np.ndarray, weights: np.ndarray, data: np.ndarray, n_components: int, seed: int):
    """Spatial PCA directions of ``data``: top eigenvectors of ``Xc^T L Xc`` for the graph Laplacian ``L``
    of the Gaussian kernel (bandwidth: median pairwise distance) weighted by ``weights_i * weights_j``."""
    from scipy.spatial.distance import cdist, pdist

    n = xy.shape[0]
    rng = np.random.default_rng(seed)
    sub = xy if n <= 2000 else xy[rng.choice(n, 2000, replace=False)]
    bandwidth = float(np.median(pdist(sub))) if sub.shape[0] > 1 else 1.0
    sigma = 0.5 * max(bandwidth, 1e-12) ** 2
    xc = data - data.mean(0, keepdims=True)
    A = np.zeros((data.shape[1], data.shape[1]))
    for s in range(0, n, 1024):
        D = np.exp(-(cdist(xy[s : s + 1024], xy) ** 2) / sigma) * np.outer(weights[s : s + 1024], weights)
        deg = D.sum(1)
        A += (xc[s : s + 1024] * deg[:, None]).T @ xc[s : s + 1024] - xc[s : s + 1024].T @ (D @ xc)
    w, v = np.linalg.eigh(0.5 * (A + A.T))
    order = np.argsort(w)[::-1][:n_components]
    vec = v[:, order]
    # fix the sign of each axis (largest loading positive) for reproducible output
    vec = vec * np.where(vec[np.abs(vec).argmax(0), np.arange(vec.shape[1])] < 0, -1.0, 1.0)
    return vec


def _check_stored_threshold(adata: AnnData, options: dict[str, Any], *, sample: str) -> None:
    """Before any work: a threshold given by kind is stored in the sample for the cell type."""
    if isinstance(options.get("threshold"), str):
        try:
            _threshold_of(adata, options.get("destvi_key", "destvi"), options.get("ct"), options["threshold"])
        except MissingSlotError as e:
            raise MissingSlotError(f"sample {sample!r}: {e}") from None


@checks_sample(_check_stored_threshold)
@positional_options("reference", "ct")
@renamed_options(key="destvi_key")
def explore_gamma_space(
    adata: AnnData,
    *,
    reference: CondSCVIModel | str,
    ct: str,
    threshold: float | Mapping[str, float] | str = 0.0,
    n_components: int = 2,
    n_genes: int = 20,
    destvi_key: str = "destvi",
    spatial_key: str = Key.SPATIAL,
    seed: int | None = None,
) -> dict[str, Any]:
    """Spatial PCA of the states ``gamma`` of one cell type, with the genes that load each axis.

    Spots where the type's proportion exceeds ``threshold`` are kept; the spatial principal axes
    are the top eigenvectors of ``G^T L G`` (``G``: centred gammas, ``L``: Laplacian of a Gaussian
    kernel on the coordinates weighted by the proportions), as in the DestVI utilities. Genes are
    ranked by the Pearson correlation, across the kept spots, between the type's imputed expression
    (``log`` of :func:`get_scale_for_ct`) and each axis coordinate.

    Parameters
    ----------
    adata
        Spots deconvolved by :func:`deconvolve_destvi`.
    reference
        The reference used for the deconvolution.
    ct
        Cell type.
    threshold
        Minimum proportion, ``{cell type: threshold}``, or the name of thresholds stored in this sample by
        :func:`automatic_proportion_threshold` (``"primary"``, ``"secondary"`` or ``"min_value"``: read
        from ``uns[destvi_key]['thresholds'][kind]``, so each sample uses its own through an accessor).
    n_components
        Number of spatial axes.
    n_genes
        Genes reported per axis and direction.
    destvi_key
        ``key_added`` of the deconvolution. Deprecated alias: ``key=``.
    spatial_key
        ``obsm`` key of the coordinates.
    seed
        Seed of the subsample used for the kernel bandwidth on large data.

    Returns
    -------
    dict with ``projection`` (kept spots x axes DataFrame), ``components`` (latent dims x axes),
    ``explained_variance`` (percent of the gamma variance per axis) and ``genes`` (DataFrame with
    ``axis``, ``direction``, ``rank``, ``gene``, ``r``). The projection is also written to
    ``obsm[f"{destvi_key}.spca.{ct}"]`` (NaN for spots below the threshold).

    Examples
    --------
    >>> res = explore_gamma_space(spots, reference=ref, ct="Astro", threshold=0.1)
    >>> res["genes"].query("axis == 'SpatialPC1'")
    """
    reference = _resolve_reference(reference)
    if ct not in reference.cell_types:
        raise KeyNotFoundError("cell type", ct, reference.cell_types)
    n_components = check_positive_int("n_components", n_components)
    n_genes = check_positive_int("n_genes", n_genes)
    seed = settings.seed if seed is None else int(seed)
    props = _proportions(adata, destvi_key)
    thr = _threshold_of(adata, destvi_key, ct, threshold)
    keep = props[ct].to_numpy() > thr
    if keep.sum() < 3:
        raise InvalidInputError(
            f"only {int(keep.sum())} spots have a {ct!r} proportion above {thr:.3g}; lower the threshold."
        )
    xy = get_coordinates(adata, spatial_key)
    gamma, genes, _, beta, gidx = _destvi_slots(adata, reference, destvi_key)
    c = reference.cell_types.index(ct)
    data = gamma[keep, c, :].astype(np.float64)
    n_components = min(n_components, data.shape[1])
    vec = _spatial_components(xy[keep], props[ct].to_numpy()[keep], data, n_components, seed)
    proj = (data - data.mean(0)) @ vec
    total = float(np.trace(np.cov(data.T))) if data.shape[0] > 1 else 0.0
    expl = 100 * np.var(proj, axis=0, ddof=1) / total if total > 0 else np.zeros(n_components)
    axes = [f"SpatialPC{i + 1}" for i in range(n_components)]
    log_scale = np.log(_decode_scale(reference, gamma[keep, c, :], c, gidx, beta) + 1e-12)
    rows = []
    for d, axis in enumerate(axes):
        a = proj[:, d] - proj[:, d].mean()
        ls = log_scale - log_scale.mean(0)
        den = np.sqrt((ls**2).sum(0) * (a**2).sum())
        r = np.divide(ls.T @ a, den, out=np.zeros(len(genes)), where=den > 0)
        order = np.argsort(-r, kind="stable")
        for direction, idx in (("positive", order[:n_genes]), ("negative", order[::-1][:n_genes])):
            rows += [
                {"axis": axis, "direction": direction, "rank": k + 1, "gene": genes[i], "r": float(r[i])}
                for k, i in enumerate(idx)
            ]
    full = np.full((adata.n_obs, n_components), np.nan)
    full[keep] = proj
    adata.obsm[f"{destvi_key}.spca.{ct}"] = pd.DataFrame(full, index=adata.obs_names, columns=axes)
    gene_table = pd.DataFrame(rows)
    entry = adata.uns.get(destvi_key)
    if isinstance(entry, dict):
        spca = dict(entry.get("spca", {}))
        spca[ct] = {
            "threshold": thr,
            "components": vec.tolist(),
            "explained_variance": [float(e) for e in expl],
            "genes": {
                f"{ax}.{dr}": gene_table.query("axis == @ax and direction == @dr")["gene"].tolist()
                for ax in axes
                for dr in ("positive", "negative")
            },
        }
        entry["spca"] = spca
        adata.uns[destvi_key] = entry
    return {
        "projection": pd.DataFrame(proj, index=adata.obs_names[keep], columns=axes),
        "components": pd.DataFrame(vec, index=[f"latent_{i}" for i in range(vec.shape[0])], columns=axes),
        "explained_variance": pd.Series(expl, index=axes),
        "genes": gene_table,
    }


def _bh(p: np.ndarray) -> np.ndarray:
    n = p.size
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def _as_mask(adata: AnnData, mask, name: str) -> np.ndarray:
    """A boolean spot mask from a mask, spot positions, or the name of a boolean ``obs`` column."""
    n = adata.n_obs
    if isinstance(mask, str):
        if mask not in adata.obs.columns:
            raise KeyNotFoundError(f"obs column ({name})", mask, list(adata.obs.columns))
        col = adata.obs[mask]
        if col.dtype != bool:
            raise InvalidInputError(
                f"{name}={mask!r} names obs column of dtype {col.dtype}; it must be boolean (True for the spots of the group)."
            )
        return col.to_numpy(dtype=bool)
    m = np.asarray(mask)
    if m.dtype != bool:
        idx = m.astype(np.int64)
        m = np.zeros(n, dtype=bool)
        m[idx] = True
    if m.shape != (n,):
        raise InvalidInputError(
            f"{name} must be a boolean mask of length n_obs={n} or spot positions; got shape {m.shape}."
        )
    return m


def _check_de_masks(adata: AnnData, options: dict[str, Any], *, sample: str) -> None:
    """Before any work: obs columns named by ``mask1`` / ``mask2`` exist in the sample and are boolean."""
    for name in ("mask1", "mask2"):
        if isinstance(options.get(name), str):
            try:
                _as_mask(adata, options[name], name)
            except KeyNotFoundError as e:
                raise KeyNotFoundError(f"sample {sample!r}: obs column ({name})", e.name, e.valid) from None
            except InvalidInputError as e:
                raise InvalidInputError(f"sample {sample!r}: {e}") from None


@checks_sample(_check_de_masks)
@positional_options("reference", "ct", "mask1", "mask2")
@renamed_options(key="destvi_key")
def de_genes_destvi(
    adata: AnnData,
    *,
    reference: CondSCVIModel | str,
    ct: str,
    mask1: np.ndarray | Sequence[int] | Sequence[bool] | str,
    mask2: np.ndarray | Sequence[int] | Sequence[bool] | str | None = None,
    threshold: float = 0.0,
    n_samples: int = 10,
    destvi_key: str = "destvi",
    key_added: str | None = None,
    seed: int | None = None,
) -> pd.DataFrame:
    """Cell-type-specific differential expression between two groups of spots (DestVI utilities).

    For the spots of each group whose ``ct`` proportion exceeds ``threshold``, expression of ``ct`` is
    simulated from the model: ``n_samples`` draws per spot of the negative-binomial rate
    ``Gamma(shape=theta, mean=l * rho_ct(gamma))`` (``l``: mean spot library, ``rho``: imputed profile,
    ``theta``: the fitted inverse dispersion), ``log1p``-transformed, and the two groups are compared per
    gene by a two-sided Kolmogorov-Smirnov test (asymptotic p-values, Benjamini-Hochberg adjusted).
    ``log2FC`` is the difference of the mean ``log2(1 + l * rho)`` between the groups.

    Parameters
    ----------
    adata
        Spots deconvolved by :func:`deconvolve_destvi`.
    reference
        The reference used for the deconvolution.
    ct
        Cell type.
    mask1
        Spots of group 1: a boolean mask, spot positions, or the name of a boolean ``obs`` column (the
        form to use through an accessor, where each sample has its own spots).
    mask2
        Spots of group 2, in the same forms (default: the other spots).
    threshold
        Minimum ``ct`` proportion for a spot to be used.
    n_samples
        Simulated draws per spot.
    destvi_key
        ``key_added`` of the deconvolution. Deprecated alias: ``key=``.
    key_added
        When given, the table and masks are stored in ``uns[key_added]``.
    seed
        Random seed (``None``: ``em.settings.seed``).

    Returns
    -------
    DataFrame (shared genes) with ``log2FC``, ``score`` (KS statistic), ``pval`` and ``padj``, sorted by
    ``score`` (descending).

    Examples
    --------
    >>> left = spots.obsm["spatial"][:, 0] < 500
    >>> de = de_genes_destvi(spots, reference=ref, ct="Astro", mask1=left, threshold=0.1)
    """
    from scipy.stats import ks_2samp

    reference = _resolve_reference(reference)
    if ct not in reference.cell_types:
        raise KeyNotFoundError("cell type", ct, reference.cell_types)
    n_samples = check_positive_int("n_samples", n_samples)
    seed = settings.seed if seed is None else int(seed)
    m1 = _as_mask(adata, mask1, "mask1")
    m2 = ~m1 if mask2 is None else _as_mask(adata, mask2, "mask2")
    present = _proportions(adata, destvi_key)[ct].to_numpy() > threshold
    m1, m2 = m1 & present, m2 & present
    if m1.sum() == 0 or m2.sum() == 0:
        raise InvalidInputError(
            f"after requiring {ct!r} proportion > {threshold:.3g}, group 1 has {int(m1.sum())} and group 2 "
            f"{int(m2.sum())} spots; both need at least one (lower threshold or change the masks)."
        )
    gamma, genes, cols, beta, gidx = _destvi_slots(adata, reference, destvi_key)
    theta_col = f"{destvi_key}.theta"
    if theta_col not in adata.var.columns:
        raise MissingSlotError(f"var[{theta_col!r}] not found; rerun deconvolve_destvi with key_added={destvi_key!r}.")
    theta = adata.var[theta_col].to_numpy(dtype=np.float64)[cols]
    layer = (adata.uns.get(destvi_key) or {}).get("layer", "counts")
    X = _as_csr(get_matrix(adata, None if layer == "X" else layer))[:, cols]
    avg_lib = float(np.asarray(X.sum(1)).mean())
    c = reference.cell_types.index(ct)
    scale = _decode_scale(reference, gamma[:, c, :], c, gidx, beta).astype(np.float64)
    mean = avg_lib * scale
    rng = np.random.default_rng(seed)

    def simulate(mask):
        mu = mean[mask]
        draws = rng.gamma(shape=theta, scale=mu[None] / theta, size=(n_samples, *mu.shape))
        return np.log1p(draws).reshape(-1, mu.shape[1])

    a, b = simulate(m1), simulate(m2)
    ks = ks_2samp(a, b, alternative="two-sided", method="asymp", axis=0)
    lfc = np.log2(1 + mean[m1]).mean(0) - np.log2(1 + mean[m2]).mean(0)
    pval = np.asarray(ks.pvalue, dtype=np.float64)
    res = pd.DataFrame(
        {"log2FC": lfc, "score": np.asarray(ks.statistic, dtype=np.float64), "pval": pval, "padj": _bh(pval)},
        index=pd.Index(genes, name="gene"),
    ).sort_values("score", ascending=False)
    if key_added is not None:
        adata.uns[key_added] = {
            "cell_type": ct,
            "threshold": float(threshold),
            "de_results": res.reset_index(),
            "mask1": m1,
            "mask2": m2,
        }
    return res
