"""Spot graphs of SpaGCN: histology colour feature, Gaussian adjacency, ``l`` search, refinement.

SpaGCN (Hu et al., Nature Methods 18:1342, 2021) joins spots by Gaussian weights
``exp(-d^2 / 2 l^2)`` of their distance ``d`` in (x, y) or in (x, y, z), where ``z`` is the
standardised mean colour of the spot's image patch scaled to the spread of the coordinates.
``l`` is chosen so that the mean weight a spot receives from the others equals ``p``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from experimat._errors import InvalidInputError
from experimat._logging import logger

if TYPE_CHECKING:
    from anndata import AnnData

#: Gaussian weights below this are dropped from the sparse adjacency
_SPARSE_EPS = 1e-6
#: p(l) on local pairs: radius in median spot spacings (at most), and the cut-off in widths (weight < 1e-8)
_LOCAL_SPACINGS = 12.0
_TRUNCATE = float(np.sqrt(2.0 * np.log(1e8)))
#: at most about this many local pairs are held (the radius shrinks below 12 spacings above ~90,000 spots)
_LOCAL_PAIRS_MAX = 25_000_000
#: p(l) of a width beyond the local radius sums all pairs up to this many spots, else pairs within the cut-off
_ALL_PAIRS_MAX = 20_000
#: spots per neighbour-domain side of refinement
REFINE_NEIGHBOURS = {"hexagon": 6, "square": 4}


# --------------------------------------------------------------------------- histology
def _patch_means(img: np.ndarray, rows: np.ndarray, cols: np.ndarray, half: int) -> np.ndarray:
    """Mean of ``img`` over the square patch of half-width ``half`` around each (row, col), clipped."""
    h, w = img.shape
    sat = np.zeros((h + 1, w + 1), dtype=np.float64)
    sat[1:, 1:] = np.cumsum(np.cumsum(img, axis=0, dtype=np.float64), axis=1)
    r0 = np.clip(rows - half, 0, h)
    r1 = np.clip(rows + half + 1, 0, h)
    c0 = np.clip(cols - half, 0, w)
    c1 = np.clip(cols + half + 1, 0, w)
    area = (r1 - r0) * (c1 - c0)
    total = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = total / area
    if (area <= 0).any():
        raise InvalidInputError(
            f"{int((area <= 0).sum())} spots lie outside the image; check obsm['spatial'] (full-resolution "
            "pixels, x = column) and the image's scale factor."
        )
    return means


def histology_feature(
    adata: AnnData,
    xy: np.ndarray,
    *,
    channels: list[str] | None = None,
    library_id: str | None = None,
    patch_diameter: float | None = None,
) -> np.ndarray:
    """Standardised colour of each spot's image patch (SpaGCN's ``c4``).

    Each channel's patch mean is weighted by its variance across spots, summed, then standardised.
    ``xy`` are full-resolution pixel coordinates (x = image column, y = image row).
    """
    from experimat.methods._image import resolve_image

    # the one image rule of plots and methods: '<image key>/<channel>', hires falls back to lowres
    res = resolve_image(adata, channels or ("hires/r", "hires/g", "hires/b"), library_id=library_id)
    pixels = res.pixels()  # float in [0, 1]; one channel: H x W
    planes = [pixels] if pixels.ndim == 2 else [pixels[..., i] for i in range(pixels.shape[2])]
    s = res.scalefactor
    if patch_diameter is not None:
        diam = float(patch_diameter) * s
    elif res.spot_diameter_fullres is not None:
        diam = res.spot_diameter_fullres * s
    else:
        from experimat.methods._graph import knn

        diam = 0.5 * float(np.median(knn(xy, 1)[0][:, 0])) * s
    half = max(round(diam / 2), 0)
    rows = np.round(xy[:, 1] * s).astype(np.int64)
    cols = np.round(xy[:, 0] * s).astype(np.int64)
    values = [_patch_means(plane, rows, cols, half) for plane in planes]
    c = np.column_stack(values)
    var = c.var(axis=0)
    if var.sum() <= 0:
        logger.warning("the image patches of all spots have the same colour; the histology term is zero")
        return np.zeros(len(xy))
    c3 = (c * var).sum(1) / var.sum()
    sd = c3.std()
    return (c3 - c3.mean()) / sd if sd > 0 else np.zeros(len(xy))


def graph_coordinates(xy: np.ndarray, colour: np.ndarray | None, alpha: float = 1.0) -> np.ndarray:
    """(x, y) or (x, y, z) with ``z = colour * max(sd(x), sd(y)) * alpha`` (SpaGCN's rule)."""
    if colour is None:
        return np.asarray(xy, dtype=np.float64)
    z = colour * np.max(xy.std(axis=0)) * alpha
    return np.column_stack([xy, z]).astype(np.float64)


# --------------------------------------------------------------------------- l search
class _MeanWeight:
    """``p(l)``: mean over spots of the summed Gaussian weight from all other spots.

    Widths whose cut-off (``l`` times :data:`_TRUNCATE`, omitted weights < 1e-8 each) lies within the
    local radius are evaluated on the local spot pairs, held once: within ``_LOCAL_SPACINGS`` median
    spacings, fewer above ~90,000 spots so that at most about :data:`_LOCAL_PAIRS_MAX` pairs are held.
    A wider width is evaluated exactly only where it matters: ``__call__(l, above=t)`` returns the local
    pairs' sum, a lower bound of ``p(l)``, when that bound already exceeds ``t`` (the search only needs to
    know that ``p(l)`` is above its target there). Otherwise ``p(l)`` sums all pairs by blocks of rows
    (up to :data:`_ALL_PAIRS_MAX` spots) or the pairs within the width's cut-off, found by KD-tree in
    blocks (work linear in the spots times the neighbours within the cut-off; never ``n x n``).
    """

    def __init__(self, coords: np.ndarray, device) -> None:
        import torch

        from experimat.methods._graph import knn, radius_pairs

        self.torch = torch
        self.coords = np.asarray(coords, dtype=np.float64)
        self.n = coords.shape[0]
        self.device = device
        self.c = torch.as_tensor(self.coords, dtype=torch.float64, device=device)
        spacing = float(np.median(knn(coords, 1)[0][:, 0])) if self.n > 1 else 0.0
        # pairs within r spacings: about n * pi r^2 / 2 (Visium's hexagon is the densest lattice, 2 / sqrt(3) per spacing^2)
        fit = float(np.sqrt(2.0 * _LOCAL_PAIRS_MAX / (np.pi * 2.0 / np.sqrt(3.0) * max(self.n, 1))))
        self.local_radius = min(_LOCAL_SPACINGS, fit) * spacing
        d2 = radius_pairs(coords, self.local_radius)[1] if spacing > 0 else np.zeros(0)
        self.local_d2 = torch.as_tensor(d2, dtype=torch.float32, device=device)

    def _local(self, scale: float) -> float:
        return float(2.0 * self.torch.exp(self.local_d2 * scale).sum(dtype=self.torch.float64) / self.n)

    def __call__(self, width: float, above: float | None = None) -> float:
        torch = self.torch
        scale = -1.0 / (2.0 * width * width)
        if width * _TRUNCATE <= self.local_radius:
            return self._local(scale)
        if above is not None:
            bound = self._local(scale)
            if bound > above:
                return bound
        if self.n > _ALL_PAIRS_MAX:
            return self._truncated(width, scale)
        total = 0.0  # all pairs, by blocks of rows (never n x n at once)
        step = max(1, 4_000_000 // self.n)
        for i in range(0, self.n, step):
            d2 = torch.cdist(self.c[i : i + step], self.c).pow_(2).to(torch.float32)
            total += float(torch.exp(d2 * scale).sum(dtype=torch.float64))
        return total / self.n - 1.0

    def _truncated(self, width: float, scale: float) -> float:
        """``p(l)`` from the pairs within ``l * _TRUNCATE``, by KD-tree queries of blocks of spots."""
        from scipy.spatial import cKDTree

        tree = cKDTree(self.coords)
        radius = width * _TRUNCATE
        total = 0.0
        step = 10_000
        for lo in range(0, self.n, step):
            hits = tree.query_ball_point(self.coords[lo : lo + step], radius)
            sizes = np.fromiter((len(h) for h in hits), dtype=np.int64, count=len(hits))
            rows = np.repeat(np.arange(lo, lo + len(hits)), sizes)
            cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in hits])
            d2 = ((self.coords[rows] - self.coords[cols]) ** 2).sum(1)
            total += float(np.exp(d2 * scale).sum())
        return total / self.n - 1.0


def search_l(
    coords: np.ndarray,
    p: float,
    *,
    start: float = 0.01,
    end: float = 1000.0,
    tol: float = 0.01,
    max_run: int = 100,
    device=None,
) -> float:
    """Bisection for the Gaussian width ``l`` with mean neighbour weight ``p`` (SpaGCN's search_l).

    Unlike the reference, the bracket is widened when ``p`` lies outside it (coordinates in other
    units), and the closest end is returned (with a warning) when ``max_run`` is exceeded.
    """
    if not 0 < p:
        raise InvalidInputError(f"p must be > 0 (the mean weight a spot receives from its neighbours); got {p}.")
    mean_weight = _MeanWeight(coords, device)

    def f(width: float) -> float:
        # a lower bound above p + tol takes every decision below as the exact value would
        return mean_weight(width, above=p + tol)

    p_low, p_high = f(start), f(end)
    while p_low > p + tol and start > 1e-12:
        start /= 10.0
        p_low = f(start)
    grow = 0
    while p_high < p - tol:
        end *= 10.0
        p_high = f(end)
        grow += 1
        if grow > 12:
            raise InvalidInputError(
                f"no Gaussian width reaches p={p}: the spots are too few ({mean_weight.n}) for this mean neighbour weight; "
                "pass a smaller p."
            )
    if abs(p_low - p) <= tol:
        return start
    if abs(p_high - p) <= tol:
        return end
    run = 0
    while p_low + tol < p < p_high - tol:
        run += 1
        if run > max_run:
            best = start if abs(p_low - p) < abs(p_high - p) else end
            logger.warning(f"exact l not found; using l={best:.4g}")
            return best
        mid = (start + end) / 2.0
        p_mid = f(mid)
        logger.debug(f"search_l run {run}: l={mid:.5g} p={p_mid:.5g}")
        if abs(p_mid - p) <= tol:
            return mid
        if p_mid <= p:
            start, p_low = mid, p_mid
        else:
            end, p_high = mid, p_mid
    return start if abs(p_low - p) < abs(p_high - p) else end


def propagate(coords: np.ndarray, width: float, features: np.ndarray, device):
    """``A @ features`` for the Gaussian adjacency ``A_ij = exp(-d_ij^2 / 2 l^2)`` (self weight 1).

    The graph convolution's ``A (X W) = (A X) W`` lets the model precompute this product once. ``A``
    is sparse: weights below :data:`_SPARSE_EPS` (pairs farther than ``5.3 l``) are dropped, which
    changes ``A X`` by less than ``1e-6`` per omitted pair.
    """
    import torch
    from scipy import sparse

    from experimat.methods._graph import radius_pairs

    n = coords.shape[0]
    pairs, d2 = radius_pairs(coords, width * np.sqrt(2.0 * np.log(1.0 / _SPARSE_EPS)))  # i < j
    w = np.exp(-d2 / (2.0 * width * width))
    rows = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(n)])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(n)])
    vals = np.concatenate([w, w, np.ones(n)]).astype(np.float32)
    adj = sparse.csr_matrix((vals, (rows, cols)), shape=(n, n))
    return torch.as_tensor(adj @ np.asarray(features, dtype=np.float32), device=device)


# --------------------------------------------------------------------------- refinement
def refine_labels(xy: np.ndarray, labels: np.ndarray, shape: str) -> np.ndarray:
    """Majority vote over the 6 (hexagon) or 4 (square) nearest spots (SpaGCN's refine).

    A spot takes the most frequent label of itself and its neighbours when fewer than half of the
    neighbours share its label and more than half share that label.
    """
    from experimat.methods._graph import knn

    k = REFINE_NEIGHBOURS[shape]
    n = len(labels)
    if n <= k:
        return labels.copy()
    idx = np.column_stack([np.arange(n), knn(xy, k)[1]])  # the spot itself and its k nearest
    codes, inv = np.unique(labels, return_inverse=True)
    counts = np.zeros((n, len(codes)), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), k + 1), inv[idx].ravel()), 1)
    own = counts[np.arange(n), inv]
    best = counts.argmax(1)
    change = (own < k / 2) & (counts.max(1) > k / 2)
    out = inv.copy()
    out[change] = best[change]
    return codes[out]
