"""Torch modules of DestVI: the conditional VAE of the reference (scLVM) and the spatial model (stLVM).

Imported lazily (it imports torch at module level); the public functions live in ``_condscvi.py``,
``_destvi.py`` and ``_utils.py``.

Model (Lopez et al., Nature Biotechnology 2022):

* scLVM. For a cell ``n`` of type ``c_n`` with counts ``x_n``: ``z_n ~ N(0, I)``,
  ``x_ng ~ NB(l_n * rho_g(z_n, c_n), theta_g)`` with
  ``rho(z, c) = softmax(W f(z, c) + b + bias_c)`` and ``f`` a two-layer MLP that receives the cell type in
  every layer; ``q(z | x, c)`` is a Gaussian encoder of ``log1p(x)`` and ``c``.
* stLVM. For a spot ``s`` with counts ``x_s`` and library ``l_s``: proportions ``v_s`` (one per type plus a
  "noise" type) and one latent state ``gamma_sc`` per type, both amortised by MLPs of ``log1p(x_s)``;
  ``x_sg ~ NB(l_s * (sum_c v_sc softmax(W f(gamma_sc, c) + b + bias_c + beta)_g + v_s0 softmax(eta)_g), theta_g)``
  with the reference decoder ``f, W, b, bias`` frozen, a per-gene technology offset ``beta`` (Gaussian prior),
  and an empirical VampPrior on ``gamma_sc``: the mixture of the Gaussians fitted to k-means sub-clusters of
  the type's reference posterior.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F


def nb_log_prob(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Negative-binomial log-likelihood with mean ``mu`` and inverse dispersion ``theta`` (elementwise)."""
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )


class CatFC(nn.Module):
    """Fully connected layers (Linear -> LayerNorm -> ReLU -> Dropout) with a categorical covariate
    injected in every layer (as a per-category bias, equivalent to concatenating its one-hot code)."""

    def __init__(self, n_in: int, n_hidden: int, n_layers: int, n_cat: int, dropout: float) -> None:
        super().__init__()
        dims = [n_in] + [n_hidden] * n_layers
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.cat = nn.ParameterList(nn.Parameter(torch.zeros(max(n_cat, 1), b)) for b in dims[1:])
        self.norms = nn.ModuleList(nn.LayerNorm(b, elementwise_affine=False) for b in dims[1:])
        self.n_cat = n_cat
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for c in self.cat:
            nn.init.normal_(c, std=1.0 / math.sqrt(n_in))

    def forward(self, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        for lin, cat, norm in zip(self.linears, self.cat, self.norms, strict=True):
            h = lin(h)
            if y is not None and self.n_cat > 0:
                h = h + cat[y]
            h = self.dropout(F.relu(norm(h)))
        return h


class CondVAE(nn.Module):
    """Conditional VAE of raw counts given the cell type (scLVM)."""

    def __init__(
        self, n_genes: int, n_labels: int, *, n_latent: int, n_hidden: int, n_layers: int, dropout: float
    ) -> None:
        super().__init__()
        self.n_latent = n_latent
        self.encoder = CatFC(n_genes, n_hidden, n_layers, n_labels, dropout)
        self.z_mean = nn.Linear(n_hidden, n_latent)
        self.z_logvar = nn.Linear(n_hidden, n_latent)
        self.decoder = CatFC(n_latent, n_hidden, n_layers, n_labels, dropout)
        self.px = nn.Linear(n_hidden, n_genes)
        self.per_ct_bias = nn.Parameter(torch.zeros(n_labels, n_genes))
        self.px_r = nn.Parameter(torch.zeros(n_genes))  # log inverse dispersion

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(torch.log1p(x), y)
        return self.z_mean(h), torch.exp(self.z_logvar(h).clamp(-15.0, 15.0)) + 1e-4

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.px(self.decoder(z, y)) + self.per_ct_bias[y]

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        mean, var = self.encode(x, y)
        noise = torch.randn(mean.shape, generator=generator, device="cpu").to(mean.device)
        z = mean + var.sqrt() * noise
        scale = torch.softmax(self.decode_logits(z, y), dim=-1)
        mu = x.sum(1, keepdim=True) * scale
        rec = -nb_log_prob(x, mu, torch.exp(self.px_r)).sum(-1)
        kl = 0.5 * (var + mean**2 - 1.0 - torch.log(var)).sum(-1)
        return (weight * (rec + kl)).mean()


class SpatialDeconv(nn.Module):
    """The stLVM: amortised proportions and per-type latent states on top of a frozen reference decoder.

    ``gene_index`` selects the reference genes present in the spots (the decoder output is restricted to
    them, so each cell-type profile is a distribution over the shared genes).
    """

    def __init__(
        self,
        ref: CondVAE,
        gene_index: torch.Tensor,
        *,
        n_hidden: int,
        n_layers: int,
        dropout: float,
        prior_mean: torch.Tensor,
        prior_var: torch.Tensor,
        prior_logw: torch.Tensor,
        theta_init: torch.Tensor,
    ) -> None:
        super().__init__()
        n_labels, n_latent = prior_mean.shape[0], prior_mean.shape[2]
        n_genes = int(gene_index.numel())
        self.n_labels, self.n_latent, self.n_genes = n_labels, n_latent, n_genes
        # frozen reference decoder, restricted to the shared genes
        self.decoder = CatFC(ref.n_latent, ref.decoder.linears[0].out_features, len(ref.decoder.linears), n_labels, 0.0)
        self.decoder.load_state_dict(ref.decoder.state_dict())
        self.register_buffer("px_weight", ref.px.weight.detach()[gene_index].clone())
        self.register_buffer("px_bias", ref.px.bias.detach()[gene_index].clone())
        self.register_buffer("ct_bias", ref.per_ct_bias.detach()[:, gene_index].clone())
        for p in self.decoder.parameters():
            p.requires_grad_(False)
        self.register_buffer("prior_mean", prior_mean)
        self.register_buffer("prior_var", prior_var)
        self.register_buffer("prior_logw", prior_logw)
        # amortisation networks of log1p(x)
        self.v_net = nn.Sequential(CatFC(n_genes, n_hidden, n_layers, 0, dropout), nn.Linear(n_hidden, n_labels + 1))
        self.gamma_net = nn.Sequential(
            CatFC(n_genes, n_hidden, n_layers, 0, dropout), nn.Linear(n_hidden, n_labels * n_latent)
        )
        self.eta = nn.Parameter(torch.zeros(n_genes))  # profile of the noise "cell type"
        self.beta = nn.Parameter(torch.zeros(n_genes))  # per-gene technology offset (log scale)
        self.px_r = nn.Parameter(theta_init.detach().clone())
        self.register_buffer("labels", torch.arange(n_labels))

    def ct_scale(self, gamma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cell-type-specific expression profiles ``(n, n_genes)`` for states ``gamma`` ``(n, n_latent)``."""
        h = self.decoder(gamma, labels)
        logits = h @ self.px_weight.T + self.px_bias + self.ct_bias[labels] + self.beta
        return torch.softmax(logits, dim=-1)

    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xl = torch.log1p(x)
        v = F.softplus(self.v_net(xl))
        gamma = self.gamma_net(xl).view(-1, self.n_labels, self.n_latent)
        return v, gamma

    def gamma_prior_nll(self, gamma: torch.Tensor) -> torch.Tensor:
        """Negative log VampPrior density, summed over cell types: ``(m,)``."""
        g = gamma.unsqueeze(2)  # m, C, 1, L
        var = self.prior_var.unsqueeze(0)
        logn = -0.5 * (((g - self.prior_mean.unsqueeze(0)) ** 2) / var + torch.log(2 * math.pi * var)).sum(-1)
        return -torch.logsumexp(logn + self.prior_logw.unsqueeze(0), dim=-1).sum(-1)

    def loss(self, x: torch.Tensor, kl_weight: float, l1: float, beta_weight: float) -> torch.Tensor:
        m = x.shape[0]
        v, gamma = self.infer(x)
        labels = self.labels.repeat(m)
        r = self.ct_scale(gamma.reshape(m * self.n_labels, self.n_latent), labels).view(m, self.n_labels, -1)
        noise = torch.softmax(self.eta, dim=-1)
        scale = torch.einsum("mc,mcg->mg", v[:, : self.n_labels], r) + v[:, -1:] * noise
        mu = x.sum(1, keepdim=True) * scale
        rec = -nb_log_prob(x, mu, torch.exp(self.px_r)).sum(-1)
        prior = self.gamma_prior_nll(gamma)
        sparsity = l1 * v.abs().mean(1)
        glob = beta_weight * 0.5 * (self.beta**2).sum() + 1e-4 * 0.5 * (self.eta**2).sum()
        return (rec + kl_weight * (prior + sparsity)).mean() + glob
