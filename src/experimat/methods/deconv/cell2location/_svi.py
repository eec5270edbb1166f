"""Stochastic variational inference in plain torch for the cell2location models.

Every latent variable is positive; the variational family is mean-field log-normal
(a normal distribution on ``u = log z``), sampled with the reparameterisation trick. The
negative ELBO of one Monte-Carlo draw is

``-[log p(x | z) + sum_sites (log p(z) + u) + sum_sites sum(log sigma)] + const``

where ``u`` is the Jacobian of ``z = exp(u)`` and ``sum(log sigma)`` the analytic entropy of
the normal (its constant is added so that the reported loss is the true negative ELBO).
Only torch is needed (no pyro). Functions here take and return tensors; torch is imported
by the caller and passed in as the ``torch`` module where needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_HALF_LOG_2PI_E = 0.5 * math.log(2.0 * math.pi * math.e)


def gamma_logpdf(torch: Any, u, z, shape, rate):
    """Log density of Gamma(shape, rate) at ``z = exp(u)`` (``u`` passed to avoid a log)."""
    return shape * torch.log(rate) - torch.lgamma(shape) + (shape - 1.0) * u - rate * z


def exponential_logpdf(torch: Any, z, rate):
    return torch.log(rate) - rate * z


def nb_loglik(torch: Any, x, mu, alpha, lgamma_x1):
    """Negative-binomial (Gamma-Poisson with mean ``mu`` and shape ``alpha``) log likelihood, summed."""
    ll = (
        torch.lgamma(x + alpha)
        - torch.lgamma(alpha)
        + alpha * torch.log(alpha)
        + x * torch.log(mu)
        - (alpha + x) * torch.log(alpha + mu)
    )
    return ll.sum() - lgamma_x1


@dataclass
class MeanFieldLogNormal:
    """Variational parameters (loc, softplus-scale) of log-normal sites, as plain leaf tensors."""

    loc: dict[str, Any] = field(default_factory=dict)
    raw_scale: dict[str, Any] = field(default_factory=dict)
    local: set[str] = field(default_factory=set)

    def add(self, torch: Any, name: str, init_value: np.ndarray, *, init_scale: float, device, local: bool = False):
        init = np.log(np.maximum(np.asarray(init_value, dtype=np.float64), 1e-10))
        self.loc[name] = torch.tensor(init, dtype=torch.float32, device=device, requires_grad=True)
        raw = math.log(math.expm1(init_scale))
        self.raw_scale[name] = torch.full(init.shape, raw, dtype=torch.float32, device=device, requires_grad=True)
        if local:
            self.local.add(name)

    def parameters(self) -> list:
        return [*self.loc.values(), *self.raw_scale.values()]

    def scale(self, torch: Any, name: str, idx=None):
        raw = self.raw_scale[name] if idx is None else self.raw_scale[name][idx]
        return torch.nn.functional.softplus(raw) + 1e-5

    def sample(self, torch: Any, name: str, generator, idx=None):
        """Reparameterised draw: returns ``(u, z, entropy)`` with entropy summed over the site."""
        loc = self.loc[name] if idx is None else self.loc[name][idx]
        sigma = self.scale(torch, name, idx)
        eps = torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device="cpu").to(loc.device)
        u = loc + sigma * eps
        entropy = torch.log(sigma).sum() + _HALF_LOG_2PI_E * loc.numel()
        return u, torch.exp(u), entropy

    def summary(self, torch: Any, name: str) -> dict[str, np.ndarray]:
        """Posterior mean, sd, 5 % and 95 % quantiles of ``z`` (log-normal, analytic)."""
        with torch.no_grad():
            mu = self.loc[name].detach().cpu().double().numpy()
            s = self.scale(torch, name).detach().cpu().double().numpy()
        mean = np.exp(mu + s**2 / 2)
        sd = mean * np.sqrt(np.expm1(s**2))
        z = 1.6448536269514722
        return {"means": mean, "sd": sd, "q05": np.exp(mu - z * s), "q95": np.exp(mu + z * s)}

    def state(self, torch: Any) -> dict[str, np.ndarray]:
        out = {}
        for name in self.loc:
            out[f"{name}.loc"] = self.loc[name].detach().cpu().numpy()
            out[f"{name}.scale"] = self.scale(torch, name).detach().cpu().numpy()
        return out


def make_generator(torch: Any, seed: int):
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def still_decreasing(history: list[float], *, rel_tol: float = 1e-3) -> bool:
    """Whether the loss still fell noticeably over the last tenth of training.

    Compares the median loss of the last ``n/10`` epochs with that of the ``n/10`` before;
    a relative drop above ``rel_tol`` means training had not converged.
    """
    n = len(history)
    w = max(5, n // 10)
    if n < 2 * w:
        return True
    h = np.asarray(history, dtype=np.float64)
    before, last = np.median(h[-2 * w : -w]), np.median(h[-w:])
    return bool((before - last) > rel_tol * max(abs(last), 1e-12))
