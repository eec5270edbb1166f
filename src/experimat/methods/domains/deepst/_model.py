"""DeepST's network: a denoising autoencoder and a variational graph autoencoder trained jointly,
then refined with a DEC-style clustering loss (Xu et al., Nucleic Acids Research 50:e131, 2022).

Differences from the reference implementation, all for memory that grows linearly with the spots:

* the graph convolutions multiply by a sparse normalised adjacency;
* the graph decoder's binary cross-entropy is computed on the graph's edges plus as many
  uniformly sampled spot pairs (negative sampling, as in PyG's GAE) instead of the dense ``n x n``
  inner-product matrix; above :data:`EDGE_SAMPLE_MAX` edges, on that many edges drawn each epoch;
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
            feat = self.encoder(x)
            h = torch.relu(self.conv_bn(self.conv(feat, adj)))
            mu, logstd = self.conv_mean(h, adj), self.conv_logvar(h, adj)
            gz = mu + torch.randn_like(mu) * torch.exp(logstd) if self.training else mu
            z = torch.cat([feat, gz], dim=1)
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
):
    """Train the network and return ``(embedding, network, timings)``.

    ``cluster_init(z, seed) -> labels`` gives the initial DEC clusters (Leiden at resolution 1).
    Runs inside a forked torch RNG seeded with ``seed``, so that the caller's RNG state is untouched,
    and on the CPU with one torch thread (restored afterwards): the per-epoch tensors are spots x a
    few hundred inputs, where a thread pool's busy-waiting threads cost far more than they give
    (on a loaded 2-core machine one thread trained MOB rep11's 260 spots ~20x faster), and one
    thread makes a seeded fit bit-for-bit reproducible.
    """
    import torch
    import torch.nn.functional as F

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
        n_pos = pos.shape[1]
        dom_t = torch.from_numpy(batches.astype(np.int64)).to(device) if n_batches > 1 else None
        net = build_network(torch, x.shape[1], cfg, n_batches).to(device)
        full_batch = minibatches(n, None, None)  # every epoch: one full-batch step
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        def loss_fn(recon, mu, logstd, z, dom):
            mse = F.mse_loss(recon, x)
            neg = torch.randint(0, n, (2, min(n_pos, EDGE_SAMPLE_MAX)), device=device)
            edges = pos if n_pos <= EDGE_SAMPLE_MAX else pos[:, torch.randint(0, n_pos, (EDGE_SAMPLE_MAX,), device=device)]
            # index_select: its backward (index_add) is faster than advanced indexing's (index_put)
            lp = (z.index_select(0, edges[0]) * z.index_select(0, edges[1])).sum(1)
            ln = (z.index_select(0, neg[0]) * z.index_select(0, neg[1])).sum(1)
            bce = F.softplus(-lp).mean() + F.softplus(ln).mean()
            kld = -0.5 / n * torch.mean(torch.sum(1 + 2 * logstd - mu**2 - torch.exp(logstd) ** 2, 1))
            loss = cfg.mse_weight * mse + cfg.bce_kld_weight * (bce + kld)
            if dom is not None:
                loss = loss + cfg.domain_weight * F.cross_entropy(dom, dom_t)
            return loss

        @torch.no_grad()
        def evaluate():
            net.eval()
            z, _, _, _, q, _ = net(x, adj)
            return z, q

        start = logger.info(f"DeepST: pre-training on {n} spots x {x.shape[1]} inputs, {pre_epochs} epochs ({device})")
        t0 = time.perf_counter()

        def pretrain_loss(_, epoch):
            net.train()
            xin = x.masked_fill(torch.rand(x.shape, device=device) < cfg.corrupt, 0.0)
            # forward on the corrupted input, reconstruct the clean one
            z, mu, logstd, recon, _, dom = net(xin, adj)
            return loss_fn(recon, mu, logstd, z, dom)

        train(pretrain_loss, opt, full_batch, max_epochs=pre_epochs, n_obs=n, name="DeepST pre-training",
              clip_grad_norm=cfg.grad_clip)
        timings["pretrain_s"] = time.perf_counter() - t0
        logger.info(f"DeepST: pre-training done, peak memory {peak_rss_mb():.0f} MB", time=start)

        z, _ = evaluate()
        labels = np.asarray(cluster_init(z.cpu().numpy().astype(np.float64), seed))
        k = int(labels.max()) + 1
        centres = np.vstack([z.cpu().numpy()[labels == c].mean(0) for c in range(k)])
        net.cluster_layer = torch.nn.Parameter(torch.from_numpy(centres.astype(np.float32)).to(device))
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        start = logger.info(f"DeepST: DEC refinement with {k} initial clusters, {epochs} epochs")
        t0 = time.perf_counter()
        target = None

        def dec_loss(_, epoch):
            nonlocal target
            if epoch % cfg.q_stride == 0:
                _, q_eval = evaluate()
                target = _target_distribution(q_eval).detach()
            net.train()
            z, mu, logstd, recon, q, dom = net(x, adj)
            # KL(P || Q) averaged over spots and clusters (as F.kl_div's 'mean' in the reference)
            kl = (target * (torch.log(target.clamp_min(1e-12)) - torch.log(q))).mean()
            return loss_fn(recon, mu, logstd, z, dom) + cfg.kl_weight * kl

        train(dec_loss, opt, full_batch, max_epochs=epochs, n_obs=n, name="DeepST training", clip_grad_norm=cfg.grad_clip)
        timings["train_s"] = time.perf_counter() - t0
        n_ep = max(pre_epochs + epochs, 1)
        timings["per_epoch_s"] = (timings["pretrain_s"] + timings["train_s"]) / n_ep
        timings["peak_rss_mb"] = peak_rss_mb()
        if device.type == "cuda":
            timings["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 1e6
        logger.info(f"DeepST: training done, peak memory {timings['peak_rss_mb']:.0f} MB", time=start)
        z, _ = evaluate()
        return z.cpu().numpy().astype(np.float64), net, timings
