"""SpaGCN's model: one graph convolution on the PCA, then DEC-style clustering (torch).

The graph convolution ``A X W + b`` is computed as ``(A X) W + b`` with ``A X`` precomputed once,
which is exact and makes each epoch independent of the number of graph edges. Clusters are
initialised by Leiden (resolution searched to hit ``n_clusters``) or k-means on the
convolved features; the Student-t soft assignment is then sharpened by minimising the KL divergence
to the target distribution, refreshed every ``update_interval`` epochs, until fewer than ``tol`` of
the labels change (SpaGCN's stopping rule).

DEC can empty a cluster: its centre drifts between clusters so that no spot is most likely in it
(on spots between two domains, which the initial clustering gathered into a cluster of their own).
With ``keep_clusters`` an emptied cluster is handled as bisecting k-means handles one
(:func:`refill_empty`): at the next target refresh a cluster is bisected and the emptied centre
takes one half, so that ``n_clusters`` stays the number of domains; SpaGCN itself does not. Given
the spots' spatial graph, the cluster bisected is the one whose split cuts the fewest spatial edges
(halves in every section first), else the widest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from experimat._logging import logger
from experimat.methods._cluster import clustering_sample, leiden, nearest_centre, to_igraph
from experimat.methods._graph import knn_graph as feature_graph
from experimat.methods._torch import torch_threads, train

#: Student-t degrees of freedom of the soft assignment (SpaGCN's alpha)
T_ALPHA = 0.2
UPDATE_INTERVAL = 3


def knn_graph(features: np.ndarray, n_neighbors: int):
    """Weighted k-nearest-neighbour graph (igraph) on the features, as ``scanpy.pp.neighbors``: UMAP's
    fuzzy connectivities of the ``n_neighbors - 1`` nearest other spots (``n_neighbors`` counts the
    spot itself), symmetrised by fuzzy union; the graph SpaGCN's Louvain initialisation clusters."""
    k = max(1, min(n_neighbors - 1, features.shape[0] - 1))
    a = feature_graph(features, k, weights="umap", symmetric=True, search="brute")
    return to_igraph(a, purpose="SpaGCN's Leiden initialisation")


def leiden_labels(graph, resolution: float, seed: int) -> np.ndarray:
    return leiden(graph, resolution=resolution, seed=seed, purpose="SpaGCN's Leiden initialisation")


def search_resolution(
    graph,
    n_clusters: int,
    *,
    seed: int,
    start: float = 0.4,
    step: float = 0.1,
    max_run: int = 30,
) -> tuple[float, np.ndarray | None]:
    """SpaGCN's search_res on Leiden: step the resolution towards ``n_clusters`` domains, halving the
    step whenever the count overshoots. Returns the resolution and labels, or ``None`` labels when
    no resolution gives exactly ``n_clusters``."""
    res = start
    labels = leiden_labels(graph, res, seed)
    old_num = len(np.unique(labels))
    logger.info(f"    resolution {res:.4g}: {old_num} domains")
    run = 0
    while old_num != n_clusters:
        sign = 1 if old_num < n_clusters else -1
        trial = res + step * sign
        if trial <= 1e-6:
            step /= 2
            run += 1
            if run > max_run:
                break
            continue
        new_labels = leiden_labels(graph, trial, seed)
        new_num = len(np.unique(new_labels))
        logger.info(f"    resolution {trial:.4g}: {new_num} domains")
        if new_num == n_clusters:
            return trial, new_labels
        new_sign = 1 if new_num < n_clusters else -1
        if new_sign == sign:
            res, old_num, labels = trial, new_num, new_labels
        else:
            step /= 2
        run += 1
        if run > max_run:
            logger.warning(f"no Leiden resolution gives exactly {n_clusters} domains (closest: {old_num} at {res:.4g})")
            return res, None
    return res, labels


def _initial_labels(feats, *, n_clusters, init, seed, n_neighbors, resolution, res_start, kmeans_n_init):
    """The initial clusters of ``feats``: Leiden (resolution searched, or ``resolution``) on the kNN
    graph, or k-means (best of ``kmeans_n_init`` restarts); returns ``(resolution, labels, init used)``.

    Above :data:`experimat.methods._cluster.SAMPLE_MAX` spots the clustering runs on that many spots
    drawn at random (seeded) and the others join the nearest initial centre (the fit starts from the
    centres only); up to it, on all spots.
    """
    sample = clustering_sample(feats.shape[0], seed)
    pts = feats if sample is None else feats[sample]
    used_res, labels0 = None, None
    if init == "leiden":
        graph = knn_graph(pts, n_neighbors)
        if resolution is not None:
            used_res = float(resolution)
            labels0 = leiden_labels(graph, used_res, seed)
            logger.info(f"    resolution {used_res:.4g}: {len(np.unique(labels0))} domains")
        else:
            used_res, labels0 = search_resolution(graph, n_clusters, seed=seed, start=res_start)
            if labels0 is None:
                logger.warning("falling back to k-means initialisation with the requested n_clusters")
                init = "kmeans"
    if init == "kmeans":
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits

        # one thread: OpenMP's busy-waiting threads are many times slower on a loaded machine
        with threadpool_limits(1):
            labels0 = KMeans(n_clusters, n_init=kmeans_n_init, random_state=seed).fit_predict(pts)
    if sample is not None:
        labels0 = nearest_centre(feats, sample, np.unique(labels0, return_inverse=True)[1])
    return used_res, labels0, init


@dataclass
class FitResult:
    labels: np.ndarray
    prob: np.ndarray
    init_labels: np.ndarray
    resolution: float | None
    n_epochs: int
    init: str
    #: clusters refilled during training (:func:`refill_empty`)
    refilled: int = 0


def fit_gcdec(
    ax: torch.Tensor,  # noqa: F821 (torch imported lazily)
    *,
    n_clusters: int,
    init: str,
    seed: int,
    lr: float,
    max_epochs: int,
    tol: float,
    n_neighbors: int,
    resolution: float | None,
    device,
    identity_init: bool = False,
    res_start: float = 0.4,
    kmeans_n_init: int = 20,
    keep_clusters: bool = False,
    adjacency=None,
    sections: np.ndarray | None = None,
) -> FitResult:
    """Fit the graph-convolution DEC model on ``A X`` (``ax``, spots x PCs).

    ``identity_init``: start the layer's weights at the identity and its bias at zero instead of
    SpaGCN's uniform random draw, so that the initial clustering sees ``A X`` itself, not a random
    linear map of it (the main source of seed-to-seed differences). ``res_start``: first resolution
    of the Leiden search. ``kmeans_n_init``: k-means restarts (the best of them starts the fit).
    ``keep_clusters``: refill a cluster that training empties (:func:`refill_empty`, which splits the
    cluster that cuts the fewest edges of ``adjacency``, the spots' spatial graph, and keeps halves in
    every section of ``sections`` first; without them the widest cluster).
    Above 50,000 spots the initial clustering runs on a random sample (:func:`_initial_labels`).
    """
    import torch

    d = ax.shape[1]
    gen = torch.Generator().manual_seed(int(seed))
    stdv = 1.0 / math.sqrt(d)
    if identity_init:
        weight = torch.eye(d).to(device).requires_grad_(True)
        bias = torch.zeros(d).to(device).requires_grad_(True)
    else:
        weight = ((torch.rand(d, d, generator=gen) * 2 - 1) * stdv).to(device).requires_grad_(True)
        bias = ((torch.rand(d, generator=gen) * 2 - 1) * stdv).to(device).requires_grad_(True)
    with torch.no_grad():
        feats = (ax @ weight + bias).cpu().numpy().astype(np.float64)

    used_res, labels0, init = _initial_labels(
        feats,
        n_clusters=n_clusters,
        init=init,
        seed=seed,
        n_neighbors=n_neighbors,
        resolution=resolution,
        res_start=res_start,
        kmeans_n_init=kmeans_n_init,
    )
    _, labels0 = np.unique(labels0, return_inverse=True)
    k = int(labels0.max()) + 1
    centres = np.zeros((k, d))
    np.add.at(centres, labels0, feats)
    centres /= np.bincount(labels0, minlength=k)[:, None]
    mu = torch.as_tensor(centres, dtype=torch.float32, device=device).requires_grad_(True)

    def embed():
        return ax @ weight + bias

    def soft_assign(z=None):
        z = embed() if z is None else z
        # squared distances through matmuls (cdist's and broadcasting's backward are slow on CPU)
        d2 = ((z * z).sum(1, keepdim=True) - 2.0 * z @ mu.T + (mu * mu).sum(1)).clamp_min(0.0)
        q = 1.0 / ((1.0 + d2 / T_ALPHA) + 1e-8)
        q = q ** (T_ALPHA + 1.0) / 2.0
        return q / q.sum(1, keepdim=True)

    # the per-epoch tensors are small (spots x domains): one CPU thread is faster than a thread pool,
    # and much faster on a busy machine
    with torch_threads(1, device):
        epoch, prob, refilled = _train(
            ax,
            embed,
            mu,
            soft_assign,
            labels0,
            lr,
            max_epochs,
            tol,
            params=[weight, bias, mu],
            keep_clusters=keep_clusters,
            refill_by=dict(adjacency=adjacency, sections=sections),
        )
    return FitResult(
        labels=prob.argmax(1),
        prob=prob,
        init_labels=labels0,
        resolution=used_res,
        n_epochs=epoch + 1,
        init=init,
        refilled=refilled,
    )


def _bisect(points: np.ndarray, max_iter: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two centres splitting ``points``: the sides of the principal direction through their mean
    (principal direction divisive partitioning, Boley, Data Min. Knowl. Disc. 2:325, 1998), refined by
    Lloyd's 2-means; deterministic. Returns the two centres and the side (bool) of each point."""
    centred = points - points.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    side = centred @ vt[0] > 0
    for _ in range(max_iter):
        if side.all() or not side.any():
            side = np.arange(points.shape[0]) % 2 == 1  # identical points: any halves
            break
        a, b = points[~side].mean(0), points[side].mean(0)
        new = ((points - b) ** 2).sum(1) < ((points - a) ** 2).sum(1)
        if np.array_equal(new, side):
            break
        side = new
    return points[~side].mean(0), points[side].mean(0), side


def _split_score(labels: np.ndarray, pairs: tuple[np.ndarray, np.ndarray] | None, sections, members, side) -> tuple:
    """How good a split of ``members`` into ``side`` / ``~side`` is, as a sortable tuple: first whether both
    halves occur in every section the cluster occurs in (``sections``: section of every spot), then the
    number of spot-graph edges (``pairs``: both ends of every edge) the split cuts, fewer first: the
    labelling that keeps the most same-label neighbour pairs (the Potts prior's term). A count, not the
    fraction of the cluster's own edges: on 8 ST hippocampus sections the fraction picks a coherent
    domain to halve and ends less coherent (neighbour agreement 0.646 against 0.668)."""
    shared = True
    if sections is not None:
        where = np.unique(sections[members])
        shared = bool(np.isin(where, sections[members[side]]).all() and np.isin(where, sections[members[~side]]).all())
    cut = 0
    if pairs is not None:
        moved = np.zeros(labels.shape[0], dtype=bool)
        moved[members[side]] = True
        inside = labels[pairs[0]] == labels[pairs[1]]
        cut = int(np.count_nonzero(inside & (moved[pairs[0]] != moved[pairs[1]])))
    return (shared, -cut)


def refill_empty(
    z: np.ndarray,
    labels: np.ndarray,
    centres: np.ndarray,
    *,
    adjacency=None,
    sections: np.ndarray | None = None,
) -> list[int]:
    """Give every empty cluster of ``labels`` spots again, as k-means does with an emptied cluster
    (bisecting k-means, Steinbach et al., KDD Workshop on Text Mining 2000): a cluster is split in two
    (:func:`_bisect`); it keeps one half's centre and the empty cluster takes the other's.

    Which cluster: without ``adjacency``, the widest (largest sum of squared distances of its spots to
    its centre), as bisecting k-means. With ``adjacency`` (the spots' spatial graph, sparse, rows in
    the order of ``z``) every cluster is bisected and the split that cuts the fewest spatial edges is
    kept: the domain that splits into two spatially coherent parts (a spatial domain is a connected
    region; the widest cluster in expression space is often one region whose halves intermix). With
    ``sections`` (section of every spot) a split whose halves both occur in every section the
    cluster occurs in comes first, so that the new domain is shared like the others. ``centres`` and
    ``labels`` are updated in place; returns the clusters whose centres moved."""
    k = centres.shape[0]
    pairs = None
    if adjacency is not None:
        upper = sparse.triu(sparse.csr_matrix(adjacency), k=1).tocoo()
        pairs = (upper.row, upper.col)
    moved: list[int] = []
    for j in np.flatnonzero(np.bincount(labels, minlength=k) == 0):
        counts = np.bincount(labels, minlength=k)
        d2 = ((z - centres[labels]) ** 2).sum(1)
        sse = np.bincount(labels, weights=d2, minlength=k)
        sse[counts < 2] = -1.0
        if sse.max() <= 0:
            break  # no cluster to split: fewer distinct spots than clusters
        candidates = [int(np.argmax(sse))] if pairs is None else np.flatnonzero(sse > 0)
        best = None
        for c in candidates:
            members = np.flatnonzero(labels == c)
            keep, other, side = _bisect(z[members])
            score = (*_split_score(labels, pairs, sections, members, side), sse[c])
            if best is None or score > best[0]:
                best = (score, int(c), members, keep, other, side)
        _, c, members, keep, other, side = best
        centres[c], centres[j] = keep, other
        labels[members[side]] = j
        moved += [c, int(j)]
    return moved


def _train(ax, embed, mu, soft_assign, labels0, lr, max_epochs, tol, *, params, keep_clusters=False, refill_by=None):
    """DEC training on the shared loop (:func:`experimat.methods._torch.train`), full batch.

    The target distribution (Xie et al., ICML 2016, eq. 3: ``p_ij ~ q_ij^2 / f_j``, ``f_j`` the soft
    size of cluster ``j``) is refreshed every ``UPDATE_INTERVAL`` epochs; training stops at the first
    epoch after a refresh where fewer than ``tol`` of the labels changed (SpaGCN's rule). With
    ``keep_clusters`` an emptied cluster is refilled (:func:`refill_empty`) at each refresh before
    the target is computed (``refill_by``: keyword arguments of :func:`refill_empty`), and training
    does not stop while a cluster is empty.
    Returns the last epoch's index, the final soft assignment and the number of refills.
    """
    import torch

    opt = torch.optim.Adam(params, lr=lr, weight_decay=0.0)
    k = mu.shape[0]
    state = {"target": None, "last": labels0, "delta": 1.0, "refilled": 0}

    def refresh():
        with torch.no_grad():
            z = embed()
            q = soft_assign(z)
            if keep_clusters:
                labels = q.argmax(1).cpu().numpy()
                if np.bincount(labels, minlength=k).min() == 0:
                    centres = mu.detach().cpu().numpy().astype(np.float64)
                    moved = refill_empty(z.cpu().numpy().astype(np.float64), labels, centres, **(refill_by or {}))
                    if moved:
                        mu.copy_(torch.as_tensor(centres, dtype=mu.dtype, device=mu.device))
                        state["refilled"] += len(moved) // 2
                        logger.info(f"    refilled {len(moved) // 2} emptied cluster(s) by bisecting cluster {moved[0]}")
                        q = soft_assign(z)
            target = q**2 / q.sum(0)
            state["target"] = target / target.sum(1, keepdim=True)

    def loss_fn(_batch, epoch):
        if epoch % UPDATE_INTERVAL == 0:
            refresh()
        q = soft_assign()
        target = state["target"]
        pred = q.detach().argmax(1).cpu().numpy()
        state["delta"] = float(np.mean(pred != state["last"]))
        state["last"] = pred
        return torch.mean(torch.sum(target * torch.log(target / (q + 1e-6)), dim=1))

    def converged(history):
        epoch = len(history) - 1
        if epoch > 0 and (epoch - 1) % UPDATE_INTERVAL == 0 and state["delta"] < tol:
            if keep_clusters and np.bincount(state["last"], minlength=k).min() == 0:
                return False  # the next refresh refills the empty cluster
            logger.info(f"    label change {state['delta']:.4g} < tol {tol:g}; stopped at epoch {epoch}")
            return True
        return False

    history = train(
        loss_fn,
        opt,
        lambda _epoch: (None,),
        max_epochs=max_epochs,
        n_obs=ax.shape[0],
        name="SpaGCN epochs",
        early_stop=converged,
    )
    with torch.no_grad():
        q = soft_assign()
    return len(history) - 1, q.cpu().numpy(), state["refilled"]
