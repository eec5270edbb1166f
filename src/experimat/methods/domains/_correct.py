"""Section-effect correction of a joint embedding: Harmony's cluster-wise centroid correction.

Korsunsky et al. (Nature Methods 16:1289, 2019): spots of all sections are softly clustered in the
embedding; within each cluster, every section's responsibility-weighted centroid is moved onto the
cluster's centroid over all sections (a ridge-shrunk per-cluster, per-section offset), and each spot
is moved by its responsibility-weighted share of its own section's offsets. Clustering and
correction alternate until the embedding stops moving. Unlike a global per-section shift, the
offsets may differ between domains (a section effect that is stronger in one layer), and the
correction never needs a spots x spots matrix: memory is spots x clusters.

The diversity penalty of Harmony's clustering (``theta``) favours clusters that mix sections.
"""

from __future__ import annotations

import numpy as np

from experimat._logging import logger


def _soft_kmeans(Z: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    d2 = (Z * Z).sum(1, keepdims=True) - 2.0 * Z @ centres.T + (centres * centres).sum(1)
    logits = -d2 / sigma
    logits -= logits.max(1, keepdims=True)
    R = np.exp(logits)
    return R / R.sum(1, keepdims=True)


def harmonize(
    embedding: np.ndarray,
    sections: np.ndarray,
    *,
    n_clusters: int | None = None,
    theta: float = 2.0,
    sigma: float = 0.1,
    ridge: float = 1.0,
    max_iter: int = 10,
    inner_iter: int = 10,
    tol: float = 1e-4,
    seed: int = 0,
) -> np.ndarray:
    """``embedding`` (spots x dims) with the section effects removed, Harmony-style.

    ``sections`` gives each spot's section (integers ``0..S-1``). The clustering runs on the
    L2-normalised embedding (cosine geometry, as Harmony) with ``n_clusters`` centres (default
    ``min(100, spots / 30)``) started by k-means++ (seeded); ``theta`` is the diversity penalty,
    ``sigma`` the soft-assignment width, ``ridge`` the shrinkage of each offset towards zero (in
    spots). The correction is applied to the unnormalised embedding, so distances keep their scale.
    One section: returned unchanged.
    """
    from sklearn.cluster import kmeans_plusplus

    Z = np.asarray(embedding, dtype=np.float64)
    sections = np.asarray(sections)
    n_sec = int(sections.max()) + 1
    if n_sec < 2:
        return Z.astype(np.float32)
    n = Z.shape[0]
    k = int(n_clusters if n_clusters is not None else min(100, max(2, n // 30)))
    onehot = np.zeros((n, n_sec))
    onehot[np.arange(n), sections] = 1.0
    share = onehot.mean(0)  # expected fraction of each section in a cluster
    corrected = Z.copy()

    def unit(A: np.ndarray) -> np.ndarray:
        return A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-12)

    centres, _ = kmeans_plusplus(unit(corrected), k, random_state=seed)
    for it in range(max_iter):
        U = unit(corrected)
        for _ in range(inner_iter):
            R = _soft_kmeans(U, centres, sigma)
            if theta > 0:  # diversity penalty: down-weight clusters a section is over-represented in
                observed = R.T @ onehot  # clusters x sections
                expected = R.sum(0)[:, None] * share[None, :]
                penalty = ((expected + 1.0) / (observed + 1.0)) ** theta
                R = R * (onehot @ penalty.T)
                R /= R.sum(1, keepdims=True)
            new = R.T @ U
            centres = unit(new)
        # per cluster and section: responsibility-weighted centroid minus the cluster's centroid
        rows = [np.flatnonzero(sections == b) for b in range(n_sec)]
        mass = R.T @ onehot  # clusters x sections
        sums = np.stack([R[r].T @ Z[r] for r in rows], axis=1)  # clusters x sections x dims
        cluster_mean = sums.sum(1) / np.maximum(mass.sum(1), 1e-12)[:, None]
        offsets = (sums - mass[:, :, None] * cluster_mean[:, None, :]) / (mass[:, :, None] + ridge)
        moved = Z.copy()
        for b, r in enumerate(rows):
            moved[r] -= R[r] @ offsets[:, b, :]
        change = float(np.linalg.norm(moved - corrected) / max(np.linalg.norm(corrected), 1e-12))
        corrected = moved
        logger.debug(f"    harmonize iteration {it + 1}: relative change {change:.3g}")
        if change < tol:
            break
    return corrected.astype(np.float32)
