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
from contextlib import contextmanager
from typing import Any

import numpy as np

_HALF_LOG_2PI_E = 0.5 * math.log(2.0 * math.pi * math.e)


def gamma_logpdf(torch: Any, u, z, shape, rate):
    """Log density of Gamma(shape, rate) at ``z = exp(u)`` (``u`` passed to avoid a log)."""
    return shape * torch.log(rate) - torch.lgamma(shape) + (shape - 1.0) * u - rate * z


def exponential_logpdf(torch: Any, z, rate):
    return torch.log(rate) - rate * z


def nb_loglik(torch: Any, nz, x_nz, mu, alpha, lgamma_x1):
    """Negative-binomial (Gamma-Poisson, mean ``mu``, shape ``alpha``) log likelihood, summed.

    Uses the sparsity of counts: the terms ``alpha log(alpha / (alpha + mu))`` are dense, the
    terms that involve ``x`` are evaluated only at the non-zero entries ``nz = (rows, cols)``
    with values ``x_nz``. ``alpha`` broadcasts against ``mu``; ``lgamma_x1`` is ``sum lgamma(x + 1)``.
    """
    alpha = alpha.expand_as(mu)
    dense = (alpha * (torch.log(alpha) - torch.log(alpha + mu))).sum()
    m, a = mu[nz], alpha[nz]
    sparse = (torch.lgamma(x_nz + a) - torch.lgamma(a) + x_nz * (torch.log(m) - torch.log(a + m))).sum()
    return dense + sparse - lgamma_x1


def nb_loglik_grouped(torch: Any, mu_k, alpha, counts_k, nz_group, nz_col, x_nz, lgamma_x1):
    """:func:`nb_loglik` when observations fall into groups sharing one mean row ``mu_k`` (K x G).

    The dense terms are summed once per group and weighted by the group sizes ``counts_k``; the
    count terms are evaluated at the non-zero entries (group ``nz_group``, gene ``nz_col``). This is
    exact, and costs K x G + nnz instead of n_obs x G.
    """
    alpha = alpha.expand_as(mu_k)
    dense = (counts_k[:, None] * (alpha * (torch.log(alpha) - torch.log(alpha + mu_k)))).sum()
    m, a = mu_k[nz_group, nz_col], alpha[nz_group, nz_col]
    sparse = (torch.lgamma(x_nz + a) - torch.lgamma(a) + x_nz * (torch.log(m) - torch.log(a + m))).sum()
    return dense + sparse - lgamma_x1


class MeanFieldLogNormal:
    """Mean-field log-normal posterior over named positive sites, stored as two flat leaf tensors.

    Add sites with :meth:`add` (global sites first is not required), then call :meth:`build`;
    :meth:`draw` samples every site at once and returns per-site ``(u, z)`` views plus the summed
    Jacobian + entropy terms split into global and local (per-observation) parts. Local sites
    have the observations on their first axis and can be restricted to a mini-batch.
    """

    def __init__(self) -> None:
        self._init: dict[str, tuple[np.ndarray, float]] = {}
        self.local: set[str] = set()
        self.slices: dict[str, tuple[int, int, tuple[int, ...]]] = {}

    def add(self, torch: Any, name: str, init_value, *, init_scale: float, device=None, local: bool = False):
        self._init[name] = (np.log(np.maximum(np.asarray(init_value, dtype=np.float64), 1e-10)), float(init_scale))
        if local:
            self.local.add(name)

    def build(self, torch: Any, device) -> None:
        locs, raws, off = [], [], 0
        for name, (init, sc) in self._init.items():
            n = init.size
            self.slices[name] = (off, off + n, init.shape)
            locs.append(init.ravel())
            raws.append(np.full(n, math.log(math.expm1(sc))))
            off += n
        self.loc = torch.tensor(np.concatenate(locs), dtype=torch.float32, device=device, requires_grad=True)
        self.raw_scale = torch.tensor(np.concatenate(raws), dtype=torch.float32, device=device, requires_grad=True)
        glob = np.zeros(off, dtype=bool)
        for name, (a, b, _) in self.slices.items():
            glob[a:b] = name not in self.local
        self._global_idx = torch.tensor(np.flatnonzero(glob), device=device)
        self.n = off

    def parameters(self) -> list:
        return [self.loc, self.raw_scale]

    def _view(self, flat, name):
        a, b, shape = self.slices[name]
        return flat[a:b].view(shape)

    def draw(self, torch: Any, generator, idx=None):
        """One reparameterised draw of all sites.

        Returns ``(sites, global_terms, local_terms)``: ``sites[name] = (u, z)`` (local sites
        restricted to ``idx`` when given), and the sums of ``log|dz/du| + entropy`` over the global
        sites and over the (selected) local entries.
        """
        sigma = torch.nn.functional.softplus(self.raw_scale) + 1e-5
        eps = torch.randn(self.n, generator=generator, dtype=torch.float32).to(self.loc.device)
        u = self.loc + sigma * eps
        z = torch.exp(u)
        ls = torch.log(sigma) + u  # entropy (up to a constant) + Jacobian, per entry
        glob = ls[self._global_idx].sum() + _HALF_LOG_2PI_E * self._global_idx.numel()
        loc_terms = torch.zeros((), device=self.loc.device)
        sites = {}
        for name in self.slices:
            uv, zv = self._view(u, name), self._view(z, name)
            if name in self.local:
                lv = self._view(ls, name)
                if idx is not None:
                    uv, zv, lv = uv[idx], zv[idx], lv[idx]
                loc_terms = loc_terms + lv.sum() + _HALF_LOG_2PI_E * lv.numel()
            sites[name] = (uv, zv)
        return sites, glob, loc_terms

    def summary(self, torch: Any, name: str) -> dict[str, np.ndarray]:
        """Posterior mean, sd, 5 % and 95 % quantiles of ``z`` (log-normal, analytic)."""
        with torch.no_grad():
            mu = self._view(self.loc, name).detach().cpu().double().numpy()
            s = (torch.nn.functional.softplus(self._view(self.raw_scale, name)) + 1e-5).detach().cpu().double().numpy()
        mean = np.exp(mu + s**2 / 2)
        sd = mean * np.sqrt(np.expm1(s**2))
        z = 1.6448536269514722
        return {"means": mean, "sd": sd, "q05": np.exp(mu - z * s), "q95": np.exp(mu + z * s)}


@contextmanager
def cpu_threads(torch: Any, device, deterministic: bool):
    """Run a CPU fit single-threaded when ``deterministic`` (bit-for-bit reproducible with a seed).

    Multi-threaded BLAS (MKL adapts its thread count to the machine's load) may change the
    order of floating-point sums between runs; one thread removes that. GPU runs are unaffected.
    """
    if not deterministic or getattr(device, "type", str(device)) != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


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


def run_epochs(
    torch: Any, step, *, n_obs: int, batch_size: int | None, max_epochs: int, perm_rng, device, deterministic: bool, name: str
) -> list[float]:
    """Run ``step`` for ``max_epochs`` epochs: full batch (``step(None)``) or shuffled mini-batches of
    sorted indices; returns the mean loss per epoch."""
    import time

    from experimat._logging import ProgressBar, logger

    history: list[float] = []
    t0 = time.perf_counter()
    with cpu_threads(torch, device, deterministic), ProgressBar(max_epochs, name) as bar:
        for _ in range(max_epochs):
            if batch_size is None or batch_size >= n_obs:
                history.append(step(None))
            else:
                order = perm_rng.permutation(n_obs)
                n_b = int(np.ceil(n_obs / batch_size))
                history.append(sum(step(np.sort(order[s : s + batch_size])) for s in range(0, n_obs, batch_size)) / n_b)
            bar.update()
    logger.debug(f"{name}: {max_epochs} epochs in {time.perf_counter() - t0:.1f} s")
    return history
