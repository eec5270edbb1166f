"""DeepST's network: a denoising autoencoder and a variational graph autoencoder trained jointly,
then refined with a DEC-style clustering loss (Xu et al., Nucleic Acids Research 50:e131, 2022).

Differences from the reference implementation, all for memory that grows linearly with the spots:

* the graph convolutions multiply by a sparse normalised adjacency;
* the graph decoder's binary cross-entropy is computed on the graph's edges plus as many
  uniformly sampled spot pairs (negative sampling, as in PyG's GAE) instead of the dense ``n x n``
  inner-product matrix; above :data:`EDGE_SAMPLE_MAX` edges, on that many edges drawn each epoch;
* above :data:`FULL_BATCH_MAX` spots an epoch is one optimiser step on a subgraph batch of spatial
  tiles with their 2-hop halo (:mod:`._subgraph`, :func:`subgraph_plan`) instead of all spots.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from experimat._logging import logger
from experimat.methods._torch import minibatches, torch_threads, train

#: edges (and as many random pairs) of the graph decoder's loss per epoch: above this many, a uniform
#: draw of them (an unbiased estimate of the mean over all edges; graphs of up to ~75,000 spots use all)
EDGE_SAMPLE_MAX = 1_000_000
#: spots up to which every optimiser step uses all spots (full batch, as the reference DeepST); above,
#: each step trains on a subgraph batch (:func:`subgraph_plan`, :mod:`._subgraph`). Measured on the
#: synthetic Visium HD stripes (benchmarks/scale_domains.py, 2,000 genes, one seed, CPU s, ARI to the
#: planted stripes): 5,000 bins full batch 41 s / 0.927, batches of 1,000 spots 20 s / 0.982; 10,000
#: full 79 s / 0.973, batches of 1,000 25 s / 0.998; 20,000 full 148 s / 0.981, batches of 2,000 54 s /
#: 0.999 (of 5,000: 73 s / 0.999, of 10,000: 100 s / 0.997). The batches are as accurate and 2-3x faster
#: from 5,000 bins on (at 2,000, batches of 500 were not: 0.41 against 0.82); the threshold keeps every
#: Visium v1 section (<= 4,992 spots) and the real-data benchmarks on the reference's full batch.
FULL_BATCH_MAX = 10_000
#: a subgraph batch holds about 1 / BATCH_FRACTION of the spots, at least :data:`BATCH_MIN` and at most
#: :data:`BATCH_SPOTS` spots, in :data:`TILES_PER_BATCH` spatial tiles: a fixed 10,000 would be half of
#: 20,000 spots, nearly full batch and 1.9x the time of batches of 2,000 (same accuracy, above)
BATCH_FRACTION = 10
BATCH_MIN = 1_000
BATCH_SPOTS = 10_000
TILES_PER_BATCH = 10
#: the seed of the initial weights with ``TrainConfig(init="fixed")`` (the stable mode's)
INIT_SEED = 0


def subgraph_plan(n: int) -> tuple[int, int] | None:
    """``(spots of a batch, spots of a tile)`` of the subgraph mini-batches that train on ``n`` spots, or
    ``None`` up to :data:`FULL_BATCH_MAX` spots (full batch)."""
    if n <= FULL_BATCH_MAX:
        return None
    batch = int(min(BATCH_SPOTS, max(BATCH_MIN, n // BATCH_FRACTION)))
    return batch, max(1, batch // TILES_PER_BATCH)


@dataclass
class TrainConfig:
    """Hyper-parameters (defaults of the reference implementation)."""

    enc_hidden: tuple[int, ...] = (32, 20)
    dec_hidden: tuple[int, ...] = (32,)
    conv_hidden: tuple[int, int] = (32, 8)
    p_drop: float = 0.01
    alpha: float = 0.9
    lr: float = 5e-4
    weight_decay: float = 1e-4
    corrupt: float = 0.001
    kl_weight: float = 100.0
    mse_weight: float = 10.0
    bce_kld_weight: float = 0.1
    domain_weight: float = 1.0
    q_stride: int = 20
    grad_clip: float = 5.0
    dec_resolution: float = 1.0
    dec_neighbors: int = 20
    #: the network's initial weights: ``"seed"``, torch's default draws from the run's seed (the
    #: reference); ``"fixed"``, the same draws from :data:`INIT_SEED` whatever the run's seed
    init: str = "seed"
    #: the DEC stage after pre-training (the reference); ``False``: none, the embedding is the
    #: pre-trained autoencoders' (the stable mode, which trains them for both stages' epochs instead)
    dec: bool = True
    timings: dict = field(default_factory=dict)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e6 if sys.platform == "darwin" else rss / 1e3


def _to_torch_sparse(torch, m: sp.spmatrix, device):
    coo = m.tocoo()
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    val = torch.from_numpy(coo.data.astype(np.float32))
    return torch.sparse_coo_tensor(idx, val, coo.shape, check_invariants=True).coalesce().to(device)


def build_network(torch, input_dim: int, cfg: TrainConfig, n_batches: int = 0):
    nn = torch.nn

    def block(d_in, d_out):
        return [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU(), nn.Dropout(cfg.p_drop)]

    class GraphConv(nn.Module):
        def __init__(self, d_in: int, d_out: int) -> None:
            super().__init__()
            self.lin = nn.Linear(d_in, d_out, bias=False)
            self.bias = nn.Parameter(torch.zeros(d_out))

        def forward(self, x, adj):
            return torch.sparse.mm(adj, self.lin(x)) + self.bias

    class GradReverse(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return -grad

    class DeepSTNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            enc, d = [], input_dim
            for h in cfg.enc_hidden:
                enc += block(d, h)
                d = h
            self.encoder = nn.Sequential(*enc)
            c1, c2 = cfg.conv_hidden
            self.conv = GraphConv(d, c1)
            self.conv_bn = nn.BatchNorm1d(c1)
            self.conv_mean = GraphConv(c1, c2)
            self.conv_logvar = GraphConv(c1, c2)
            self.z_dim = d + c2
            dec, d = [], self.z_dim
            for h in cfg.dec_hidden:
                dec += block(d, h)
                d = h
            dec.append(nn.Linear(d, input_dim))
            self.decoder = nn.Sequential(*dec)
            self.cluster_layer = nn.Parameter(torch.zeros(1, self.z_dim))
            self.domain_head = (
                nn.Sequential(nn.Linear(self.z_dim, 32), nn.ReLU(), nn.Linear(32, n_batches)) if n_batches > 1 else None
            )

        def forward(self, x, adj):
            # adj: the normalised adjacency, or on a subgraph batch the pair (rows of the spots and
            # their neighbours, rows of the spots): the outputs are then those of the first rows of x
            adj1, adj2 = adj if isinstance(adj, tuple) else (adj, adj)
            feat = self.encoder(x)
            h = torch.relu(self.conv_bn(self.conv(feat, adj1)))
            mu, logstd = self.conv_mean(h, adj2), self.conv_logvar(h, adj2)
            gz = mu + torch.randn_like(mu) * torch.exp(logstd) if self.training else mu
            z = torch.cat([feat[: mu.shape[0]], gz], dim=1)
            recon = self.decoder(z)
            d2 = ((z[:, None, :] - self.cluster_layer[None]) ** 2).sum(2)
            q = (1.0 / (1.0 + d2 / cfg.alpha) + 1e-8) ** ((cfg.alpha + 1.0) / 2.0)
            q = q / q.sum(1, keepdim=True)
            dom = self.domain_head(GradReverse.apply(z)) if self.domain_head is not None else None
            return z, mu, logstd, recon, q, dom

    return DeepSTNet()


def _target_distribution(q):
    w = q**2 / q.sum(0)
    return (w.t() / w.sum(1)).t()


def _graph_ae_loss(cfg: TrainConfig, n: int, recon, mu, logstd, z, dom, target_x, edges_all, dom_b):
    """The loss of a step but the DEC term: reconstruction of ``target_x``, the graph decoder's binary
    cross-entropy on the edges ``edges_all`` (rows of ``z``; above :data:`EDGE_SAMPLE_MAX`, that many
    drawn) and as many random pairs of ``z``'s rows, the KL term (scaled by the ``n`` spots of the
    graph) and the adversarial batch classifier's cross-entropy."""
    import torch
    import torch.nn.functional as F

    device = z.device
    mse = F.mse_loss(recon, target_x)
    m, n_pos = z.shape[0], edges_all.shape[1]
    neg = torch.randint(0, m, (2, min(n_pos, EDGE_SAMPLE_MAX)), device=device)
    edges = edges_all if n_pos <= EDGE_SAMPLE_MAX else edges_all[
        :, torch.randint(0, n_pos, (EDGE_SAMPLE_MAX,), device=device)]
    # index_select: its backward (index_add) is faster than advanced indexing's (index_put)
    lp = (z.index_select(0, edges[0]) * z.index_select(0, edges[1])).sum(1)
    ln = (z.index_select(0, neg[0]) * z.index_select(0, neg[1])).sum(1)
    bce = F.softplus(-lp).mean() + F.softplus(ln).mean()
    kld = -0.5 / n * torch.mean(torch.sum(1 + 2 * logstd - mu**2 - torch.exp(logstd) ** 2, 1))
    loss = cfg.mse_weight * mse + cfg.bce_kld_weight * (bce + kld)
    if dom is not None:
        loss = loss + cfg.domain_weight * F.cross_entropy(dom, dom_b)
    return loss


def _dec_stage(torch, net, cfg: TrainConfig, *, z, labels, evaluate, inputs, loss_fn, steps, epochs: int, n: int,
               batch_len) -> list[float]:
    """DeepST's DEC refinement of the pre-trained ``net``: the cluster layer starts at the centres of the
    initial clusters ``labels`` of the embedding ``z``; ``epochs`` steps of the graph autoencoder's loss
    plus ``cfg.kl_weight`` times KL(P || Q), the target P recomputed every ``cfg.q_stride`` epochs.
    Returns the loss of every step."""
    device = z.device
    k = int(labels.max()) + 1
    centres = np.vstack([z.cpu().numpy()[labels == c].mean(0) for c in range(k)])
    net.cluster_layer = torch.nn.Parameter(torch.from_numpy(centres.astype(np.float32)).to(device))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = logger.info(f"DeepST: DEC refinement with {k} initial clusters, {epochs} epochs")
    target = None

    def dec_loss(batch, epoch):
        nonlocal target
        if epoch % cfg.q_stride == 0:
            _, q_eval = evaluate()
            target = _target_distribution(q_eval).detach()
        net.train()
        xs, a, target_x, edges, dom_b, rows = inputs(batch)
        z, mu, logstd, recon, q, dom = net(xs, a)
        p = target if rows is None else target.index_select(0, rows)
        # KL(P || Q) averaged over spots and clusters (as F.kl_div's 'mean' in the reference)
        kl = (p * (torch.log(p.clamp_min(1e-12)) - torch.log(q))).mean()
        return loss_fn(recon, mu, logstd, z, dom, target_x, edges, dom_b) + cfg.kl_weight * kl

    hist = train(dec_loss, opt, steps, max_epochs=epochs, n_obs=n, name="DeepST training",
                 clip_grad_norm=cfg.grad_clip, batch_len=batch_len)
    logger.info("DeepST: DEC refinement done", time=start)
    return hist


def train_deepst(
    data: np.ndarray,
    adj_norm: sp.csr_matrix,
    adj_label: sp.csr_matrix,
    *,
    pre_epochs: int,
    epochs: int,
    seed: int,
    device,
    batches: np.ndarray | None = None,
    cfg: TrainConfig | None = None,
    cluster_init=None,
    tiles: np.ndarray | None = None,
    batch_spots: int | None = None,
    history: dict | None = None,
):
    """Train the network and return ``(embedding, network, timings)``.

    ``cluster_init(z, seed) -> labels`` gives the initial DEC clusters (the reference's: Leiden at
    resolution 1). ``cfg.init="fixed"`` draws the initial weights from :data:`INIT_SEED`, whatever
    ``seed`` (the stable mode); ``"seed"`` from ``seed``, as the reference. ``cfg.dec=False``: no DEC
    stage (``epochs`` and ``cluster_init`` unused), the embedding is the pre-trained one.
    Runs inside a forked torch RNG seeded with ``seed``, so that the caller's RNG state is untouched,
    and on the CPU with one torch thread (restored afterwards): the per-epoch tensors are spots x a
    few hundred inputs, where a thread pool's busy-waiting threads cost far more than they give
    (on a loaded 2-core machine one thread trained MOB rep11's 260 spots ~20x faster), and one
    thread makes a seeded fit bit-for-bit reproducible.

    Every epoch is one optimiser step: on all spots, or with ``tiles`` (a spatial tile per spot) on a
    subgraph batch of about ``batch_spots`` spots (:class:`._subgraph.SubgraphBatches`), the same
    number of steps. ``history``, when given, receives the loss of every step (``"pretrain"``,
    ``"train"``).
    """
    import torch

    cfg = cfg or TrainConfig()
    n = data.shape[0]
    n_batches = int(batches.max()) + 1 if batches is not None else 0
    timings: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]), torch_threads(1, device):
        torch.manual_seed(seed)
        x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(device)
        adj = _to_torch_sparse(torch, adj_norm, device)
        lab = adj_label.tocoo()
        pos = torch.from_numpy(np.vstack([lab.row, lab.col]).astype(np.int64)).to(device)
        dom_t = torch.from_numpy(batches.astype(np.int64)).to(device) if n_batches > 1 else None
        if cfg.init == "fixed":
            # the initial weights do not depend on the run's seed, which then drives only the
            # training's noise (dropout, corruption, the VGAE's sampling, negative pairs, batches)
            torch.manual_seed(INIT_SEED)
        net = build_network(torch, x.shape[1], cfg, n_batches).to(device)
        if cfg.init == "fixed":
            torch.manual_seed(seed)
        if tiles is None:
            steps = minibatches(n, None, None)  # every epoch: one full-batch step
        else:
            from ._subgraph import SubgraphBatches

            sampler = SubgraphBatches(adj_norm, adj_label, tiles, batch_spots, seed, device)
            steps = lambda epoch: [sampler.next()]  # noqa: E731
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        def inputs(batch):
            """(network input, its adjacency, reconstruction target, edges, batch labels, rows) of a step."""
            if batch is None:
                return x, adj, x, pos, dom_t, None
            xb = x.index_select(0, batch.nodes)
            dom_b = dom_t.index_select(0, batch.core) if dom_t is not None else None
            return xb, (batch.adj1, batch.adj2), xb[: batch.n_core], batch.pos, dom_b, batch.core

        def loss_fn(recon, mu, logstd, z, dom, target_x, edges_all, dom_b):
            return _graph_ae_loss(cfg, n, recon, mu, logstd, z, dom, target_x, edges_all, dom_b)

        @torch.no_grad()
        def evaluate():
            net.eval()
            z, _, _, _, q, _ = net(x, adj)
            return z, q

        what = "all spots" if tiles is None else f"subgraphs of ~{batch_spots} spots"
        start = logger.info(f"DeepST: pre-training on {n} spots x {x.shape[1]} inputs, {pre_epochs} epochs "
                            f"({what}, {device})")
        t0 = time.perf_counter()

        def pretrain_loss(batch, epoch):
            net.train()
            xs, a, target_x, edges, dom_b, _ = inputs(batch)
            xin = xs.masked_fill(torch.rand(xs.shape, device=device) < cfg.corrupt, 0.0)
            # forward on the corrupted input, reconstruct the clean one
            z, mu, logstd, recon, _, dom = net(xin, a)
            return loss_fn(recon, mu, logstd, z, dom, target_x, edges, dom_b)

        one = (lambda b: n) if tiles is not None else None  # the loss of a step, not a sum over spots
        hist = train(pretrain_loss, opt, steps, max_epochs=pre_epochs, n_obs=n, name="DeepST pre-training",
                     clip_grad_norm=cfg.grad_clip, batch_len=one)
        timings["pretrain_s"] = time.perf_counter() - t0
        logger.info(f"DeepST: pre-training done, peak memory {peak_rss_mb():.0f} MB", time=start)

        t0 = time.perf_counter()
        hist_dec: list[float] = []
        if cfg.dec:
            z, _ = evaluate()
            labels = np.asarray(cluster_init(z.cpu().numpy().astype(np.float64), seed))
            timings["init_clusters_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            hist_dec = _dec_stage(torch, net, cfg, z=z, labels=labels, evaluate=evaluate, inputs=inputs,
                                  loss_fn=loss_fn, steps=steps, epochs=epochs, n=n, batch_len=one)
        timings["train_s"] = time.perf_counter() - t0
        if history is not None:
            history.update(pretrain=hist, train=hist_dec)
        n_ep = max(pre_epochs + epochs, 1)
        timings["per_epoch_s"] = (timings["pretrain_s"] + timings["train_s"]) / n_ep
        timings["peak_rss_mb"] = peak_rss_mb()
        if device.type == "cuda":
            timings["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 1e6
        logger.info(f"DeepST: training done, peak memory {timings['peak_rss_mb']:.0f} MB", time=start)
        z, _ = evaluate()
        return z.cpu().numpy().astype(np.float64), net, timings
