"""LOCAT per gene: each gene's mixture ``f1`` fitted in compiled batches (JAX), its concentration
score, and the cross-fitted depletion scan."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from experimat._logging import ProgressBar

#: EM steps and tolerance (change of the mean log-likelihood bound) of the per-gene fits
_GENE_MAX_ITER = 25
_GENE_TOL = 1e-4
#: fits advanced together by the per-gene kernel on CPU (:func:`._gmm.fit_gmm_pool`; 16-32 ran fastest on
#: pbmc68k_reduced, 64 ~25 % slower); on a GPU all fits of a batch run together
_GENE_POOL_CPU = 16
#: compiled per-gene kernels, by ``(fast_compile, pool)``
_BATCH_LOGF: dict[tuple, Any] = {}
#: cells x (genes + null pseudo-genes) up to which the per-gene kernel is compiled for compile speed
#: (a short run, where compiling dominates a first call) rather than for run speed
_FAST_COMPILE_MAX_WORK = 4_000_000


@dataclass
class Landscape:
    """What every gene's fit shares: cells, atoms, background."""

    emb: np.ndarray  # (n, d) standardised embedding
    centres: np.ndarray  # (a, d) atom centres
    atom_sums: Any  # _gmm.AtomSums
    logf0: np.ndarray  # (n,)
    reg: float
    lambdas: np.ndarray  # depletion scan factors
    prior_var: float  # scale of the per-gene covariance prior (locat's covariance_prior; 0: none)
    device: Any  # jax device


def initial_centres(agg: np.ndarray, ls: Landscape, k_slots: int) -> np.ndarray:
    """Deterministic EM start of each row's mixture from its per-atom weight sums ``agg`` ``(b, a, f)``.

    Weighted farthest-first seeding on the row's weighted atom means: the first centre is the atom
    holding most of the row's weight, each next one the atom with the largest ``s_a D_a^2`` (``s_a``: the
    row's weight in atom ``a``, ``D_a``: its distance to the nearest centre so far), the deterministic
    counterpart of k-means++'s ``s D^2`` sampling. A fit with ``k`` active components uses the first
    ``k`` centres. (Starting from the background components that hold most of the gene's weight was
    as stable but recovered fewer marker genes: 36-37 against 43 of the top 50 on pbmc68k_reduced.)
    """
    d = ls.centres.shape[1]
    s = agg[..., 0].astype(np.float64)  # (b, a)
    mean = agg[..., 1 : 1 + d].astype(np.float64)  # (b, a, d); in place below (a batch is ~100 MB of float64)
    mean /= np.where(s > 0, s, 1.0)[..., None]
    mean += ls.centres[None]
    rows = np.arange(s.shape[0])
    out = np.zeros((s.shape[0], k_slots, d))
    c = mean[rows, np.argmax(s, axis=1)]
    out[:, 0] = c
    diff = np.empty_like(mean)
    d2 = None
    for i in range(1, k_slots):
        np.subtract(mean, c[:, None], out=diff)
        np.multiply(diff, diff, out=diff)
        d2 = diff.sum(axis=-1) if d2 is None else np.minimum(d2, diff.sum(axis=-1))
        c = mean[rows, np.argmax(s * d2, axis=1)]
        out[:, i] = c
    return out


def _batch_size(n: int, d: int, n_lam: int, k_slots: int, n_at: int, n_items: int, n_fits: int) -> int:
    budget = 256 * 2**20 / 4  # float32 elements of working memory per batch
    per_item = n * (n_fits * (2 + d + d * d) + n_fits * n_lam + 2 * n_fits * k_slots + 8)
    per_item += n_fits * n_at * k_slots * d * d * 4
    gb = int(max(1, min(256, budget // per_item, n_items)))
    return 1 << math.floor(math.log2(gb))


def _slots(is_null: np.ndarray, n_fits: int) -> np.ndarray:
    """Items per compiled slot ``(slots, n_fits)`` (-1: none). A gene's slot fits it and its ``n_fits - 1``
    depletion halves; a pseudo-gene needs only its own fit (no depletion scan), so a null slot fits
    ``n_fits`` pseudo-genes in the same rows: the null gets that many more draws at no extra cost."""
    real, null = np.flatnonzero(~is_null), np.flatnonzero(is_null)
    out = np.full((real.size + -(-null.size // n_fits), n_fits), -1, dtype=np.int64)
    out[: real.size, 0] = real
    pad = np.full(-(-null.size // n_fits) * n_fits, -1, dtype=np.int64)
    pad[: null.size] = null
    out[real.size :] = pad.reshape(-1, n_fits)
    return out


def score_items(
    Wi, ncomp: np.ndarray, ls: Landscape, *, n_splits: int, seed: int, batch_size: int | None, is_null: np.ndarray
) -> dict[str, np.ndarray]:
    """Fit every item's mixture and score it: raw concentration score, sensitivity, log-likelihood sum,
    and, for the genes (not the pseudo-genes ``is_null``), the depletion scan p-value and maximal deficit
    (Cauchy combination over ``n_splits`` random halvings of the expressing cells)."""
    import jax

    n, d = ls.emb.shape
    dtype = np.float32
    m_arr = np.diff(Wi.indptr)
    k_slots = int(ncomp.max())
    fits = 1 + n_splits
    slots = _slots(np.asarray(is_null, dtype=bool), fits)
    gb = batch_size or _batch_size(n, d, ls.lambdas.size, k_slots, ls.centres.shape[0], slots.shape[0], fits)
    # NumPy arrays straight to the device (``jnp.asarray`` first compiled a copy kernel per shape)
    put = lambda a: jax.device_put(np.asarray(a), ls.device)  # noqa: E731
    emb_j, centres_j = put(ls.emb.astype(dtype)), put(ls.centres.astype(dtype))
    scan = (ls.logf0.astype(dtype), np.log(ls.lambdas).astype(dtype))  # f0 and lambdas of the scores, on the host
    fast_compile = n * slots.shape[0] <= _FAST_COMPILE_MAX_WORK
    kernel = (fast_compile, _GENE_POOL_CPU if ls.device.platform == "cpu" else fits * gb)
    split_rng = np.random.default_rng([seed, 1])
    out = {k: np.full(Wi.shape[1], np.nan) for k in ("raw", "sens", "llsum", "pdep", "maxdef")}
    batches = [np.arange(i0, min(i0 + gb, slots.shape[0])) for i0 in range(0, slots.shape[0], gb)]
    pending = None  # the batch in flight: JAX dispatches asynchronously, so the next batch's host-side
    # preparation (and the previous one's depletion p-values) run while the kernel computes
    with ProgressBar(len(batches), description="LOCAT genes") as bar:
        for sel in batches:
            items = np.full((gb, fits), -1, dtype=np.int64)
            items[: sel.size] = slots[sel]
            nxt = _dispatch_batch(Wi, ncomp, is_null, items, ls, split_rng, put, kernel, (emb_j, centres_j))
            if pending is not None:
                _collect_batch(pending, m_arr, scan, out)
                bar.update()
            pending = nxt
        if pending is not None:
            _collect_batch(pending, m_arr, scan, out)
            bar.update()
    return out


def _dispatch_batch(Wi, ncomp, is_null, items, ls, split_rng, put, kernel, dev) -> tuple:
    """Prepare and dispatch one compiled batch: ``items`` ``(gb, 1 + n_splits)``: a gene (column 0; its
    depletion halves in the other rows) or up to ``1 + n_splits`` pseudo-genes per slot; -1 pads. Returns
    what :func:`_collect_batch` needs (the kernel's results may still be computing)."""
    gb, n_splits = items.shape[0], items.shape[1] - 1
    n = ls.emb.shape[0]
    dtype = np.float32
    main = items[:, 0]
    gene = (main >= 0) & ~np.asarray(is_null, dtype=bool)[np.maximum(main, 0)]
    wts = np.zeros((gb, n), dtype=dtype)
    wts[main >= 0] = Wi[:, main[main >= 0]].toarray().T
    wts[main < 0, :3] = 1.0  # padding rows: any valid item
    ina = (wts > 0)[None] & (split_rng.random((n_splits, gb, n)) < 0.5)  # random halves A of the expressing cells
    na = ina.sum(axis=2)  # (splits, gb)
    kk = np.where(main >= 0, ncomp[np.maximum(main, 0)], 1)
    k_half = np.maximum(1, np.minimum(kk[None], na // 5))  # (splits, gb)
    half = np.where(ina, wts[None], 0).astype(dtype)
    for s in range(n_splits):
        extra = items[:, 1 + s]
        has = extra >= 0  # null slot: this row fits another pseudo-gene instead of a half
        if has.any():
            half[s, has] = Wi[:, extra[has]].toarray().T
            k_half[s, has] = ncomp[extra[has]]
    ks = np.concatenate([kk, k_half.ravel()])
    act = np.arange(int(ncomp.max()))[None, :] < ks[:, None]  # (fits * gb, k_slots)
    wts_all = np.concatenate([wts, half.reshape(-1, n)])
    agg = ls.atom_sums(wts_all)
    mu0 = initial_centres(agg, ls, act.shape[1])
    # covariance prior (locat's covariance_prior): mean prior_var I / K^(2/d) (mclust's scale: the embedding's
    # variance shared among the K components), worth one of the fit's Kish effective cells (sum w)^2 / sum w^2
    sw = wts_all.sum(axis=1, dtype=np.float64)
    n_eff = sw**2 / np.maximum(np.einsum("ij,ij->i", wts_all, wts_all, dtype=np.float64), 1e-30)
    pv = ls.prior_var / ks.astype(np.float64) ** (2.0 / ls.emb.shape[1])
    emb_j, centres_j = dev
    logf = _batch_logf(
        kernel, emb_j, put(agg), centres_j, put(act), put(mu0.astype(dtype)), dtype(ls.reg),
        put(n_eff.astype(dtype)), put(pv.astype(dtype)),
    )  # fmt: skip
    return logf, items, gene, na, wts_all, ina


def _collect_batch(pending: tuple, m_arr: np.ndarray, scan: tuple, out: dict) -> None:
    """Wait for a dispatched batch's densities and write the items' scores into ``out``."""
    logf, items, gene, na, wts_all, ina = pending
    main, n_splits = items[:, 0], items.shape[1] - 1
    n = wts_all.shape[1]
    raw, sens, llsum, k_r, k_b = _fit_scores(np.asarray(logf), wts_all, ina, *scan)
    rows = items.T.ravel()  # row r of the fits holds item rows[r] (column-major: main rows, then each split's)
    fit = rows >= 0
    for key, val in (("raw", raw), ("sens", sens), ("llsum", llsum)):
        out[key][rows[fit]] = val[fit]
    if not gene.any():
        return
    g = np.flatnonzero(gene)
    # depletion scan per split (cross-fitted, hypergeometric lower tail), then combined over splits
    mm = m_arr[main[g]].astype(np.float64)
    pd_, md_ = zip(
        *(_depletion_pvalues(k_r[s, g], k_b[s, g], mm - na[s, g], n - na[s, g]) for s in range(n_splits)),
        strict=True,
    )
    from ._null import cauchy_combine_rows

    out["pdep"][main[g]] = cauchy_combine_rows(np.stack(pd_, axis=1)) if n_splits > 1 else pd_[0]
    out["maxdef"][main[g]] = np.mean(np.stack(md_, axis=1), axis=1)


def _depletion_pvalues(k_r, k_b, n_b, n_pool, *, min_p0=0.10, min_expected=3.0, min_deficit=0.04):
    """Sidak-corrected minimum hypergeometric lower-tail p over the lambda scan, and the max deficit.

    ``k_r[g, l]``: cells of the region among the ``n_pool`` cells outside half A;
    ``k_b[g, l]``: half-B cells in the region; ``n_b``: half-B size.
    """
    k_r = np.asarray(k_r, np.float64)
    k_b = np.asarray(k_b, np.float64)
    n_pool = np.asarray(n_pool, np.float64)[:, None]
    n_b = np.asarray(n_b, np.float64)[:, None]
    p0 = k_r / np.maximum(n_pool, 1)
    obs = k_b / np.maximum(n_b, 1)
    deficit = p0 - obs
    maxdef = np.max(deficit, axis=1)
    testable = (p0 >= min_p0) & (n_b * p0 >= min_expected) & (p0 < 1.0)
    passes = testable & (deficit >= min_deficit)
    p = np.ones_like(p0)
    if passes.any():
        gi, li = np.nonzero(passes)
        p[gi, li] = hypergeom_lower_tail(k_b[gi, li], n_pool[gi, 0], k_r[gi, li], n_b[gi, 0])
    m_eff = np.maximum(testable.sum(axis=1), 1)
    pmin = np.min(p, axis=1)
    psid = -np.expm1(m_eff * np.log1p(-np.minimum(pmin, 1 - 1e-16)))
    psid = np.where(passes.any(axis=1), psid, 1.0)
    return np.clip(psid, 1e-300, 1.0), maxdef


def hypergeom_lower_tail(k, total, good, draws, *, rtol: float = 1e-17) -> np.ndarray:
    """``P(X <= k)`` for ``X`` hypergeometric: ``draws`` draws without replacement from ``total`` items of
    which ``good`` are marked (elementwise; as ``scipy.stats.hypergeom.cdf(k, total, good, draws)``).

    Below the mode: the probability of ``k`` from log-gamma functions times the sum of the probabilities
    of ``k, k - 1, ...`` relative to it (consecutive ratios ``j (total - good - draws + j) / ((good - j + 1)
    (draws - j + 1))``, falling at least geometrically away from the mode), summed until a term adds less
    than ``rtol`` of the sum: a few dozen steps for the lower tails of the depletion scan. At or above the
    mode: one minus the upper tail from ``k + 1``, summed the same way upwards. Written here so that a
    first call does not import ``scipy.stats`` (~0.5 s); relative error < 1e-11 up to 3,000 items, ~1e-9 at
    200,000 (log-gamma differences).
    """
    from scipy.special import gammaln

    k, total, good, draws = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (k, total, good, draws)))
    shape = k.shape
    k, total, good, draws = (v.ravel() for v in (k, total, good, draws))
    lo = np.maximum(0.0, draws + good - total)  # support lo..hi
    hi = np.minimum(good, draws)
    mode = np.floor((draws + 1.0) * (good + 1.0) / (total + 2.0))
    upper = np.floor(k) >= mode  # sum the upper tail from k + 1 instead
    start = np.clip(np.where(upper, np.floor(k) + 1.0, np.floor(k)), lo, hi)

    def lchoose(a, b):
        return gammaln(a + 1.0) - gammaln(b + 1.0) - gammaln(a - b + 1.0)

    log_p0 = lchoose(good, start) + lchoose(total - good, draws - start) - lchoose(total, draws)
    rel = np.ones_like(start)  # sum of P(X = j) / P(X = start) over the tail
    term = np.ones_like(start)
    j = start.copy()
    act = np.flatnonzero(np.where(upper, j < hi, j > lo))
    while act.size:
        jj, up = j[act], upper[act]
        other = total[act] - good[act] - draws[act]
        ratio = np.where(
            up,
            (good[act] - jj) * (draws[act] - jj) / ((jj + 1.0) * (other + jj + 1.0)),
            jj * (other + jj) / ((good[act] - jj + 1.0) * (draws[act] - jj + 1.0)),
        )
        term[act] *= ratio
        rel[act] += term[act]
        j[act] = jj + np.where(up, 1.0, -1.0)
        act = act[np.where(up, j[act] < hi[act], j[act] > lo[act]) & (term[act] > rtol * rel[act])]
    tail = np.minimum(np.exp(log_p0) * rel, 1.0)
    out = np.where(upper, 1.0 - tail, tail)
    out = np.where(k < lo, 0.0, np.where(k >= hi, 1.0, out))
    return np.clip(out, 0.0, 1.0).reshape(shape)


def _fit_scores(logf, wts_all, ina, logf0, log_lam):
    """Scores of every fit from its log density ``logf`` ``(fits, n)`` (float32) at every cell: the raw
    concentration score, the sensitivity, the log-likelihood sum over the expressing cells, and for the
    slots' main items the depletion counts of each halving ``(splits, b, lambdas)``. On the host: a few
    passes over ``fits x n`` numbers, cheaper than compiling them into the kernel on a first call."""
    n = logf.shape[1]
    valid_all = wts_all > 0
    m = valid_all.sum(axis=1)
    q = np.sqrt(m / n)
    ratio = np.tanh(0.5 * (logf.astype(np.float64) - logf0))  # (f1 - f0) / (f1 + f0)
    w = wts_all.astype(np.float64)
    raw = (q * (1 - q)) * np.einsum("rn,rn->r", w, ratio) / np.maximum(w.sum(axis=1), 1e-30)
    sens = np.count_nonzero(valid_all & (logf > logf0), axis=1) / np.maximum(m, 1)
    llsum = np.where(valid_all, logf, 0.0).sum(axis=1, dtype=np.float64)
    # depletion: each half-A fit evaluated at all cells; region f0 > lambda f1 (float32, as the densities)
    b = ina.shape[1]
    valid = valid_all[:b]
    logf1a = logf[b:].reshape(ina.shape)
    in_r = logf0 > (log_lam[None, None, :, None] + logf1a[:, :, None, :])  # (S, b, L, n)
    a_mask = ina & valid[None]
    b_mask = ~ina & valid[None]
    k_r = np.count_nonzero(in_r & ~a_mask[:, :, None, :], axis=3)
    k_b = np.count_nonzero(in_r & b_mask[:, :, None, :], axis=3)
    return raw, sens, llsum, k_r.astype(np.float64), k_b.astype(np.float64)


def _make_batch_logf(fast_compile: bool, pool: int):
    from . import _gmm

    def batch_logf(emb, agg, centres, act, mu0, reg, n_eff, prior_var):
        """Fit every row's mixture (``agg``, ``act``, ``mu0``, ``n_eff``, ``prior_var``: per fit) and return
        its log density at every cell ``(fits, n)``."""
        s, mean, scat = _gmm.group_stats(agg, centres)
        pi, mu, chol = _gmm.fit_gmm_pool(
            mu0, s, mean, scat, act, reg, n_eff, prior_var, pool=pool, max_iter=_GENE_MAX_ITER, tol=_GENE_TOL
        )
        return _gmm.batch_logpdf(emb, pi, mu, chol, act)

    return _gmm.jit_for(batch_logf, fast_compile=fast_compile)


def _batch_logf(kernel: tuple, *args):
    """Run the per-gene kernel ``kernel = (fast_compile, pool)`` (compiled once per process and key)."""
    if kernel not in _BATCH_LOGF:
        _BATCH_LOGF[kernel] = _make_batch_logf(*kernel)
    return _BATCH_LOGF[kernel](*args)
