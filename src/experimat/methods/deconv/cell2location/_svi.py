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
from typing import Any

import numpy as np

_HALF_LOG_2PI_E = 0.5 * math.log(2.0 * math.pi * math.e)
_HIST_DENSE_VALUES = 64  # count values below this are histogrammed with a dense bincount


def gamma_logpdf(torch: Any, u, z, shape, rate):
    """Log density of Gamma(shape, rate) at ``z = exp(u)`` (``u`` passed to avoid a log)."""
    return shape * torch.log(rate) - torch.lgamma(shape) + (shape - 1.0) * u - rate * z


def exponential_logpdf(torch: Any, z, rate):
    return torch.log(rate) - rate * z


def nb_loglik(torch: Any, nz, x_nz, mu, alpha, lgamma_x1):
    """Negative-binomial (Gamma-Poisson, mean ``mu``, shape ``alpha``) log likelihood, summed.

    Uses the sparsity of counts: the terms ``alpha log(alpha / (alpha + mu)) = -alpha log1p(mu / alpha)``
    are dense, the terms that involve ``x`` are evaluated only at the non-zero entries
    ``nz = (rows, cols)`` with values ``x_nz``. ``alpha`` broadcasts against ``mu``; ``lgamma_x1`` is
    ``sum lgamma(x + 1)``. Every term is formed per entry without differences of large numbers (see
    :func:`nb_loglik_dense`), so near-Poisson genes (very large ``alpha``) stay exact in float32.
    """
    alpha = alpha.expand_as(mu)
    dense = -(alpha * torch.log1p(mu / alpha)).sum()
    m, a = mu[nz], alpha[nz]
    a64, x64 = a.double(), x_nz.double()
    lg = (torch.lgamma(x64 + a64) - torch.lgamma(a64)).sum().to(mu.dtype)
    sparse = lg - (x_nz * torch.log1p(a / m)).sum()
    return dense + sparse - lgamma_x1


def count_histogram(X, row_key: np.ndarray | None = None, n_keys: int = 1) -> dict[str, np.ndarray | float]:
    """Sparse histogram of the non-zero count values per (key, gene), for the NB ``lgamma(x + alpha)`` terms.

    When the NB shape ``alpha`` depends only on the gene (and on a per-row key such as the batch),
    ``sum_rows lgamma(x_rg + alpha_kg) = sum_v h_kg(v) lgamma(v + alpha_kg)``: the sum over all
    rows reduces to one term per distinct (key, gene, value) triple, each weighted by its count.
    Every value is kept (no truncation), so the reduction is exact for large counts too.

    Parameters
    ----------
    X
        Rows x genes matrix of non-negative integer counts (dense or scipy sparse).
    row_key
        Integer key of each row (e.g. its batch) in ``0..n_keys-1``; ``None``: one key.
    n_keys
        Number of keys.

    Returns
    -------
    dict with the triples ``key``, ``gene``, ``value`` (int64) and their multiplicities ``mult`` (float64),
    ``nnz`` (n_keys x genes: non-zero entries per key and gene) and ``lgamma_x1`` (``sum lgamma(x + 1)``).
    """
    import scipy.sparse as sp
    from scipy.special import gammaln

    coo = sp.coo_matrix(X)
    keep = coo.data > 0
    rows, cols = coo.row[keep], coo.col[keep].astype(np.int64)
    vals = np.rint(coo.data[keep]).astype(np.int64)
    n_genes = X.shape[1]
    key = np.zeros(rows.size, np.int64) if row_key is None else np.asarray(row_key, np.int64)[rows]
    kg_all = key * n_genes + cols
    # small values (most of them): one bincount over (key, gene, value); the rest: a sort
    small = vals < _HIST_DENSE_VALUES
    dense = np.bincount(
        kg_all[small] * _HIST_DENSE_VALUES + vals[small], minlength=n_keys * n_genes * _HIST_DENSE_VALUES
    )
    code_s = np.flatnonzero(dense)
    vmax = int(vals.max()) + 1 if vals.size else 1
    code_l, mult_l = np.unique(kg_all[~small] * vmax + vals[~small], return_counts=True)
    kg = np.concatenate([code_s // _HIST_DENSE_VALUES, code_l // vmax])
    value = np.concatenate([code_s % _HIST_DENSE_VALUES, code_l % vmax])
    mult = np.concatenate([dense[code_s], mult_l]).astype(np.float64)
    return {
        "key": kg // n_genes,
        "gene": kg % n_genes,
        "value": value,
        "mult": mult,
        "nnz": np.bincount(kg, weights=mult, minlength=n_keys * n_genes).reshape(n_keys, n_genes),
        "lgamma_x1": float((mult * gammaln(value + 1.0)).sum()),
    }


def histogram_to_torch(torch: Any, hist: dict, device, dtype=None) -> dict:
    """The arrays of :func:`count_histogram` as torch tensors (float32 unless ``dtype``; flat (key, gene) index ``kg``)."""
    dtype = torch.float32 if dtype is None else dtype
    n_genes = hist["nnz"].shape[1]
    return {
        "kg": torch.tensor(hist["key"] * n_genes + hist["gene"], device=device),
        "value": torch.tensor(hist["value"], dtype=dtype, device=device),
        "mult": torch.tensor(hist["mult"], dtype=dtype, device=device),
        # float64 copies for lgamma_histogram_term (differences of lgamma at large alpha)
        "value64": torch.tensor(hist["value"], dtype=torch.float64, device=device),
        "mult64": torch.tensor(hist["mult"], dtype=torch.float64, device=device),
        "nnz": torch.tensor(hist["nnz"], dtype=dtype, device=device),
        "lgamma_x1": float(hist["lgamma_x1"]),
    }


def lgamma_histogram_term(torch: Any, alpha, hist: dict):
    """``sum_rows sum_genes [lgamma(x + alpha) - lgamma(alpha)]`` from a histogram (:func:`histogram_to_torch`).

    ``alpha`` is n_keys x genes (the NB shape per key and gene). Zero counts contribute nothing. Each
    difference ``lgamma(v + alpha) - lgamma(alpha)`` is taken per histogram entry in float64 before it
    is weighted and summed: for a near-Poisson gene ``alpha`` reaches 1e4-1e8, where ``lgamma(alpha)``
    is 1e5-1e9 and a float32 difference (or ``sum mult lgamma(v + alpha) - nnz lgamma(alpha)``,
    two sums of that size) loses the whole term, which made the training loss jump by orders of magnitude.
    """
    a = alpha.double().reshape(-1)[hist["kg"]]
    return (hist["mult64"] * (torch.lgamma(hist["value64"] + a) - torch.lgamma(a))).sum().to(alpha.dtype)


def nb_loglik_suffstats(torch: Any, mu_k, alpha, counts_k, sums_kg, hist: dict):
    """NB log likelihood of all observations from per-group sufficient statistics (exact).

    Observations in group ``k`` share the mean row ``mu_k[k]`` (K x G); the shape ``alpha``
    (1 x G) depends on the gene only. Then the summed log likelihood needs only the group sizes
    ``counts_k``, the count sums ``sums_kg`` (K x G) and the value histogram ``hist`` of
    :func:`count_histogram` (one key)::

        sum_kg [n_k alpha_g log(alpha_g / (alpha_g + mu_kg)) + S_kg log(mu_kg / (alpha_g + mu_kg))]
        + sum_g sum_v h_g(v) [lgamma(v + alpha_g) - lgamma(alpha_g)] - sum lgamma(x + 1)

    Its cost does not depend on the number of observations.
    """
    dense = -(counts_k[:, None] * (alpha * torch.log1p(mu_k / alpha))).sum()
    data = -(sums_kg * torch.log1p(alpha / mu_k)).sum()
    return dense + data + lgamma_histogram_term(torch, alpha, hist) - hist["lgamma_x1"]


def nb_loglik_dense(torch: Any, x, mu, alpha, alpha_rows, hist: dict):
    """NB log likelihood of a dense count matrix ``x`` with per-row means ``mu`` (exact).

    ``alpha`` is the shape per key and gene (n_keys x G), ``alpha_rows`` the same broadcast to the
    rows of ``x`` (or ``alpha`` itself when there is one key) and ``hist`` the value histogram of ``x``
    (:func:`count_histogram` with the same keys): the ``lgamma`` terms are summed over the histogram
    instead of over the entries of ``x``. The other terms are per entry,
    ``-alpha log1p(mu / alpha) - x log1p(alpha / mu)``: the algebraically equal
    ``n alpha log(alpha) - (alpha + x) log(alpha + mu)`` is a difference of two sums of order
    ``n alpha log(alpha)``, which float32 cannot resolve once a gene is near Poisson (large ``alpha``).
    """
    data = -(alpha_rows * torch.log1p(mu / alpha_rows) + x * torch.log1p(alpha_rows / mu)).sum()
    return data + lgamma_histogram_term(torch, alpha, hist) - hist["lgamma_x1"]


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
        # where each global site lies in the vector of the global entries (sites are contiguous, in order)
        self._global_slices, g_off = {}, 0
        for name, (a, b, shape) in self.slices.items():
            if name not in self.local:
                self._global_slices[name] = (g_off, g_off + (b - a), shape)
                g_off += b - a
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
        if idx is not None:
            return self._draw_batch(torch, generator, idx)
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

    def _draw_batch(self, torch: Any, generator, idx):
        """:meth:`draw` for a mini-batch: only the global entries and the rows ``idx`` of the local sites are
        drawn, so a step costs the batch, not all observations (the full draw made an epoch quadratic in them)."""
        device = self.loc.device

        def sample(loc, raw):
            sigma = torch.nn.functional.softplus(raw) + 1e-5
            u = loc + sigma * torch.randn(loc.shape, generator=generator, dtype=torch.float32).to(device)
            return u, torch.log(sigma) + u

        gi = self._global_idx
        u_glob, ls_glob = sample(self.loc[gi], self.raw_scale[gi])
        glob = ls_glob.sum() + _HALF_LOG_2PI_E * gi.numel()
        z_glob = torch.exp(u_glob)
        loc_terms = torch.zeros((), device=device)
        sites = {}
        for name, (a, b, shape) in self.slices.items():
            if name in self.local:
                u, ls = sample(self.loc[a:b].view(shape)[idx], self.raw_scale[a:b].view(shape)[idx])
                loc_terms = loc_terms + ls.sum() + _HALF_LOG_2PI_E * ls.numel()
                sites[name] = (u, torch.exp(u))
            else:
                ga, gb, gshape = self._global_slices[name]
                sites[name] = (u_glob[ga:gb].view(gshape), z_glob[ga:gb].view(gshape))
        return sites, glob, loc_terms

    def summary(self, torch: Any, name: str, quantiles: tuple[float, ...] = (0.05, 0.95)) -> dict[str, np.ndarray]:
        """Posterior mean, sd and ``quantiles`` of ``z`` (log-normal, analytic; keys from :func:`quantile_key`)."""
        from scipy.stats import norm

        with torch.no_grad():
            mu = self._view(self.loc, name).detach().cpu().double().numpy()
            s = (torch.nn.functional.softplus(self._view(self.raw_scale, name)) + 1e-5).detach().cpu().double().numpy()
        mean = np.exp(mu + s**2 / 2)
        out = {"means": mean, "sd": mean * np.sqrt(np.expm1(s**2))}
        for q in quantiles:
            out[quantile_key(q)] = np.exp(mu + float(norm.ppf(q)) * s)
        return out


def quantile_key(q: float) -> str:
    """Name of a posterior quantile as cell2location writes it: 0.05 -> ``"q05"``, 0.5 -> ``"q50"``, 0.025 -> ``"q2.5"``."""
    pct = round(float(q) * 100, 6)
    return f"q{int(pct):02d}" if pct == int(pct) else f"q{pct:g}"


def check_quantiles(quantiles: Any) -> tuple[float, ...]:
    """Validate posterior quantile levels (each strictly between 0 and 1, no duplicates) and return them sorted."""
    from experimat._errors import InvalidInputError

    try:
        qs = tuple(float(q) for q in quantiles)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"quantiles must be a sequence of numbers in (0, 1), e.g. (0.05, 0.5, 0.95); got {quantiles!r}."
        ) from None
    if not qs or any(not (0.0 < q < 1.0) for q in qs):
        raise InvalidInputError(
            f"quantiles must be numbers strictly between 0 and 1, e.g. (0.05, 0.5, 0.95); got {quantiles!r}."
        )
    keys = [quantile_key(q) for q in qs]
    if len(set(keys)) != len(keys):
        raise InvalidInputError(f"quantiles {quantiles!r} contain duplicates (keys {keys}).")
    return tuple(sorted(qs))


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
