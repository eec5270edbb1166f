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
    ``nz = (rows, cols)`` with values ``x_nz``. ``alpha`` is one row (a shape per gene) or one row per row
    of ``mu``; ``lgamma_x1`` is ``sum lgamma(x + 1)``. Every term is formed per entry without differences of
    large numbers (see :func:`nb_loglik_dense`), so near-Poisson genes (very large ``alpha``) stay exact in
    float32. With one row, ``sum_s alpha_g log1p(mu_sg / alpha_g)`` is summed over the rows before the product
    with ``alpha_g``: no rows x genes copy of ``alpha`` and fewer rows x genes passes, forward and backward
    (a mini-batch of a Visium HD sample on thousands of genes spends most of its step on this term).
    """
    if alpha.shape[0] == 1:
        dense = -(alpha * torch.log1p(mu * alpha.reciprocal()).sum(0, keepdim=True)).sum()
        a = alpha[0][nz[1]]
    else:
        alpha = alpha.expand_as(mu)
        dense = -(alpha * torch.log1p(mu / alpha)).sum()
        a = alpha[nz]
    m = mu[nz]
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
    """Mean-field log-normal posterior over named positive sites.

    Add sites with :meth:`add`, then call :meth:`build`. The global sites are stored as two flat leaf
    tensors (``loc``, ``raw_scale``: location and inverse-softplus scale of ``u = log z``); each local
    (per-observation) site has its own pair of leaf tensors with the observations on the first axis
    (``local_loc[name]``, ``local_raw[name]``), so that a mini-batch touches only its rows: a batch draw
    reads them through a sparse embedding lookup, whose gradient holds only the batch's rows, for
    :class:`experimat.methods._torch.RowAdam` (:meth:`local_parameters`); :meth:`global_parameters` go
    to an ordinary Adam. :meth:`draw` samples every site at once and returns per-site ``(u, z)`` plus
    the summed Jacobian + entropy terms split into global and local parts.
    """

    def __init__(self) -> None:
        self._init: dict[str, tuple[np.ndarray, float]] = {}
        self.local: set[str] = set()
        self.slices: dict[str, tuple[int, int, tuple[int, ...]]] = {}

    def add(self, torch: Any, name: str, init_value, *, init_scale: float, device=None, local: bool = False):
        init = np.log(np.maximum(np.asarray(init_value, dtype=np.float64), 1e-10))
        if local and init.ndim != 2:
            raise ValueError(f"local site {name!r} must be 2-D (observations x values); got shape {init.shape}.")
        self._init[name] = (init, float(init_scale))
        if local:
            self.local.add(name)

    def build(self, torch: Any, device) -> None:
        """Create the leaf tensors. ``slices`` keeps each site's place in one flat vector of all entries
        (the order of the random numbers of a full draw); ``_global_slices`` its place among the global ones."""
        locs, raws, off, g_off = [], [], 0, 0
        self._global_slices: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        self.local_loc: dict[str, Any] = {}
        self.local_raw: dict[str, Any] = {}
        glob_pos = []

        def leaf(values):
            return torch.tensor(values, dtype=torch.float32, device=device, requires_grad=True)

        for name, (init, sc) in self._init.items():
            n = init.size
            self.slices[name] = (off, off + n, init.shape)
            raw = np.full(init.shape, math.log(math.expm1(sc)))
            if name in self.local:
                self.local_loc[name], self.local_raw[name] = leaf(init), leaf(raw)
            else:
                self._global_slices[name] = (g_off, g_off + n, init.shape)
                locs.append(init.ravel())
                raws.append(raw.ravel())
                glob_pos.append(np.arange(off, off + n))
                g_off += n
            off += n
        self.loc = leaf(np.concatenate(locs) if locs else np.zeros(0))
        self.raw_scale = leaf(np.concatenate(raws) if raws else np.zeros(0))
        self._global_idx = torch.tensor(np.concatenate(glob_pos) if glob_pos else np.zeros(0, np.int64), device=device)
        self.n = off

    def global_parameters(self) -> list:
        return [self.loc, self.raw_scale]

    def local_parameters(self) -> list:
        return [t for name in self.local_loc for t in (self.local_loc[name], self.local_raw[name])]

    def parameters(self) -> list:
        """Every leaf tensor (global and local), for one dense optimiser (full-batch training)."""
        return self.global_parameters() + self.local_parameters()

    def draw(self, torch: Any, generator, idx=None):
        """One reparameterised draw of all sites.

        Returns ``(sites, global_terms, local_terms)``: ``sites[name] = (u, z)`` (local sites
        restricted to the rows ``idx`` when given), and the sums of ``log|dz/du| + entropy`` over the global
        sites and over the (selected) local entries. The random numbers of a full draw are those of one
        vector over all entries in site order (as when all sites were one flat tensor).
        """
        device = self.loc.device
        if idx is None:
            eps = torch.randn(self.n, generator=generator, dtype=torch.float32).to(device)
            eps_glob = eps[self._global_idx]
        else:
            eps_glob = torch.randn(self.loc.shape, generator=generator, dtype=torch.float32).to(device)
        u_glob, ls_glob = _sample(torch, self.loc, self.raw_scale, eps_glob)
        glob = ls_glob.sum() + _HALF_LOG_2PI_E * self._global_idx.numel()
        z_glob = torch.exp(u_glob)
        loc_terms = torch.zeros((), device=device)
        sites = {}
        for name, (a, b, shape) in self.slices.items():
            if name not in self.local:
                ga, gb, gshape = self._global_slices[name]
                sites[name] = (u_glob[ga:gb].view(gshape), z_glob[ga:gb].view(gshape))
                continue
            loc, raw = self.local_loc[name], self.local_raw[name]
            if idx is None:
                e = eps[a:b].view(shape)
            else:
                # a sparse lookup: the gradient holds the batch's rows only (for RowAdam)
                loc = torch.nn.functional.embedding(idx, loc, sparse=True)
                raw = torch.nn.functional.embedding(idx, raw, sparse=True)
                e = torch.randn(loc.shape, generator=generator, dtype=torch.float32).to(device)
            u, ls = _sample(torch, loc, raw, e)
            loc_terms = loc_terms + ls.sum() + _HALF_LOG_2PI_E * ls.numel()
            sites[name] = (u, torch.exp(u))
        return sites, glob, loc_terms

    def _tensors(self, name: str):
        if name in self.local:
            return self.local_loc[name], self.local_raw[name]
        a, b, shape = self._global_slices[name]
        return self.loc[a:b].view(shape), self.raw_scale[a:b].view(shape)

    def summary(self, torch: Any, name: str, quantiles: tuple[float, ...] = (0.05, 0.95)) -> dict[str, np.ndarray]:
        """Posterior mean, sd and ``quantiles`` of ``z`` (log-normal, analytic; keys from :func:`quantile_key`)."""
        from scipy.stats import norm

        loc, raw = self._tensors(name)
        with torch.no_grad():
            mu = loc.detach().cpu().double().numpy()
            s = (torch.nn.functional.softplus(raw) + 1e-5).detach().cpu().double().numpy()
        mean = np.exp(mu + s**2 / 2)
        out = {"means": mean, "sd": mean * np.sqrt(np.expm1(s**2))}
        for q in quantiles:
            out[quantile_key(q)] = np.exp(mu + float(norm.ppf(q)) * s)
        return out


def _sample(torch: Any, loc, raw, eps):
    """``u = loc + sigma eps`` and the per-entry ``log sigma + u`` (entropy up to a constant + Jacobian)."""
    sigma = torch.nn.functional.softplus(raw) + 1e-5
    u = loc + sigma * eps
    return u, torch.log(sigma) + u


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
