"""Weighted Gaussian mixtures fitted by EM in JAX, with a static maximum number of components.

Fits run on grouped points ("atoms": weight sum, weighted mean and within-group scatter per
group), which is exact EM when every group is one point. Every fit has ``k_max`` component slots; ``active`` (bool, ``(k_max,)``) switches slots on, so
mixtures with different numbers of components share one compiled kernel and can be ``vmap``-ed
over genes. Points carry non-negative weights; padded points have weight 0 and do not influence the fit.
The background mixture (a few fits on the atoms of all cells) runs the same algorithm in NumPy
(:func:`fit_grouped_batch_np`): cheaper than compiling it on every first call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_NEG = -1e30
#: XLA CPU compiler options for a kernel whose compile time matters more than its run time (small
#: data sets, where a first call is mostly compiling): XLA's newer (MLIR) fusion emitters compile the
#: per-gene kernel ~1.4x slower than the classic ones, which run it as fast on small arrays but ~25 %
#: slower on large ones (measured on 2 cores); LLVM's expensive passes off: a first LOCAT call on
#: pbmc68k_reduced 5.8-8.9 s instead of 9.0-11.7 s, warm calls 3.6-4.7 s instead of 3.9-5.1 s (load ~4).
#: LLVM optimisation level 1 instead of 2 compiles it ~20 % faster and runs it ~5-10 % slower (outputs bit-identical
#: on pbmc68k_reduced). One LLVM module instead of XLA's default split into parts compiled on a thread pool: ~15 %
#: less compile CPU and no waiting on threads (on 2 busy cores the default took ~1.5x its CPU time in wall time).
FAST_COMPILE_OPTIONS = {
    "xla_cpu_use_fusion_emitters": False,
    "xla_llvm_disable_expensive_passes": True,
    "xla_backend_optimization_level": 1,
    "xla_cpu_parallel_codegen_split_count": 1,
}


def jit_for(fun, static_argnames=(), *, fast_compile=False):
    """``jax.jit``; ``fast_compile`` uses :data:`FAST_COMPILE_OPTIONS` on CPU (plain ``jax.jit`` on
    other backends, or when this jaxlib does not know the options)."""
    plain = jax.jit(fun, static_argnames=static_argnames)
    if not fast_compile or jax.default_backend() != "cpu":
        return plain
    tuned = jax.jit(fun, static_argnames=static_argnames, compiler_options=FAST_COMPILE_OPTIONS)
    state = {"ok": True}

    def call(*args, **kwargs):
        if state["ok"]:
            try:
                return tuned(*args, **kwargs)
            except jax.errors.JaxRuntimeError as err:
                if "compile option" not in str(err):
                    raise
                state["ok"] = False
        return plain(*args, **kwargs)

    return call


def _log_weights(pi, active, xp):
    """log mixture weights, with inactive or empty component slots at ``_NEG``."""
    return xp.where(active & (pi > 0), xp.log(xp.maximum(pi, 1e-38)), _NEG)


def batch_logpdf(x, pi, mu, chol, active):
    """Mixture log densities of shared points ``x`` ``(n, d)`` under a batch of mixtures ``(b, k)``.

    ``L_k^{-1} x`` for every component of every mixture is one matrix product ``(n, d) @ (d, b k d)``.
    """
    b, k, d = mu.shape
    eye = jnp.eye(d, dtype=x.dtype)
    linv = jax.vmap(jax.vmap(lambda L: jax.scipy.linalg.solve_triangular(L, eye, lower=True)))(chol)  # (b,k,d,d)
    z = (x @ linv.reshape(b * k * d, d).T).reshape(x.shape[0], b, k, d)
    z = z - jnp.einsum("bked,bkd->bke", linv, mu)[None]
    maha = jnp.sum(z * z, axis=-1)  # (n, b, k)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)  # (b, k)
    logpi = _log_weights(pi, active, jnp)
    lp = -0.5 * (maha + logdet[None] + d * jnp.log(2.0 * jnp.pi)) + logpi[None]
    return jax.scipy.special.logsumexp(lp, axis=-1).T  # (b, n)


def _tri(d):
    """Indices of the upper triangle (with diagonal) of a ``d x d`` matrix, and the weight (1 on the
    diagonal, 2 off it) that makes ``sum_ij A_ij B_ij`` of symmetric matrices a dot product. NumPy
    constants: ``jnp.triu_indices`` in traced code added ~80 operations per use to the kernel, which
    XLA then folded back into these constants (time spent tracing, lowering and compiling)."""
    import numpy as np

    iu, ju = np.triu_indices(d)
    return iu, ju, np.where(iu == ju, 1.0, 2.0).astype(np.float32)


def _vech_index(d):
    """``(d, d)`` positions in the upper-triangle vector of :func:`_tri` (symmetric gather)."""
    import numpy as np

    pos = np.zeros((d, d), dtype=np.int32)
    iu, ju = np.triu_indices(d)
    pos[iu, ju] = np.arange(iu.size)
    pos[ju, iu] = np.arange(iu.size)
    return pos


def _em_setup(mu0, s, mean, scat, active, reg_covar, n_eff=1.0, prior_var=0.0):
    """One fit's EM inputs and start (see :func:`fit_gmm_grouped`): the groups' features ``phi`` ``(a, f)``
    (``vech(T_a), m_a, 1`` about the weighted centre ``g``) and ``phi`` times the normalised weights, ``g``,
    and the state after one M-step on the hard assignment of the groups to the nearest active centre of
    ``mu0``."""
    _a, d = mean.shape
    dt = mean.dtype
    k_max = active.shape[0]
    ssum = jnp.sum(s)
    wn = s / jnp.where(ssum > 0, ssum, 1.0)
    eye = jnp.eye(d, dtype=dt)
    iu, ju, _ = _tri(d)
    full = _vech_index(d)
    g = wn @ mean  # work about the weighted centre (smaller numbers in float32)
    c = mean - g
    sec = scat + c[:, :, None] * c[:, None, :]  # (a, d, d)
    phi = jnp.concatenate([sec[:, iu, ju], c, jnp.ones((c.shape[0], 1), dt)], axis=1)  # (a, f)
    phi_w = phi * wn[:, None]
    pooled = phi_w[:, : iu.size].sum(0)[full] + reg_covar * eye
    floor = 1e-3 * jnp.trace(pooled) / d  # keeps initial components from starting degenerate
    mu0 = mu0 - g[None, :]
    d2 = jnp.sum((c[:, None, :] - mu0[None, :, :]) ** 2, axis=-1)
    resp0 = jax.nn.one_hot(jnp.argmin(jnp.where(active[None, :], d2, jnp.inf), axis=1), k_max, dtype=dt)
    c0 = jnp.linalg.cholesky(pooled)
    c0 = jnp.where(jnp.all(jnp.isfinite(c0)), c0, eye)
    start = _mstep(phi_w, active, reg_covar, resp0, mu0, jnp.broadcast_to(c0, (k_max, d, d)), floor, n_eff, prior_var)
    return phi, phi_w, g, start


def _mstep(phi_w, active, reg_covar, resp, mu, chol, extra, n_eff=1.0, prior_var=0.0):
    """M-step of :func:`fit_gmm_grouped` from the responsibilities ``resp`` ``(a, k)``."""
    d = mu.shape[1]
    iu, _, _ = _tri(d)
    full = _vech_index(d)
    eye = jnp.eye(d, dtype=phi_w.dtype)
    mom = resp.T @ phi_w  # (k, f): weighted sums of (vech T, m, 1)
    nk = mom[:, -1]
    nk_safe = jnp.where(nk > 1e-12, nk, 1.0)
    mu_new = mom[:, iu.size : iu.size + d] / nk_safe[:, None]
    second = (mom[:, : iu.size] / nk_safe[:, None])[:, full]
    cov = second - mu_new[:, :, None] * mu_new[:, None, :]
    n_k = (nk * n_eff)[:, None, None]
    shrunk = (n_k * cov + prior_var * eye[None]) / (n_k + 1.0)  # posterior mean under the inverse-Wishart prior
    cov = jnp.where(prior_var > 0, shrunk, cov) + (reg_covar + extra) * eye[None]
    ok = (nk > 1e-12) & active
    cov = jnp.where(ok[:, None, None], cov, eye[None])
    mu_new = jnp.where(ok[:, None], mu_new, mu)
    chol_new = jnp.linalg.cholesky(cov)
    bad = ~jnp.all(jnp.isfinite(chol_new), axis=(1, 2))  # failed factorisation: keep the old one
    chol_new = jnp.where(bad[:, None, None], chol, chol_new)
    pi_new = jnp.where(ok, nk, 0.0)
    return pi_new / jnp.maximum(jnp.sum(pi_new), 1e-38), mu_new, chol_new


def _em_step(phi, phi_w, active, reg_covar, pi, mu, chol, n_eff=1.0, prior_var=0.0):
    """One EM step of :func:`fit_gmm_grouped`: the new ``(pi, mu, chol)`` and the bound per unit weight of
    the old parameters."""
    d = mu.shape[1]
    iu, ju, tw = _tri(d)
    eye = jnp.eye(d, dtype=phi.dtype)
    linv = jax.vmap(lambda L: jax.scipy.linalg.solve_triangular(L, eye, lower=True))(chol)
    prec = jnp.einsum("kei,kej->kij", linv, linv)  # (k, d, d)
    pm = jnp.einsum("kij,kj->ki", prec, mu)
    theta = jnp.concatenate(
        [prec[:, iu, ju] * tw[None, :], -2.0 * pm, jnp.sum(pm * mu, axis=1, keepdims=True)], axis=1
    )  # (k, f)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    logpi = _log_weights(pi, active, jnp)
    lp = -0.5 * (phi @ theta.T + logdet[None, :] + d * jnp.log(2.0 * jnp.pi)) + logpi[None, :]
    logp = jax.scipy.special.logsumexp(lp, axis=1)
    resp = jnp.exp(lp - logp[:, None])
    return _mstep(phi_w, active, reg_covar, resp, mu, chol, 0.0, n_eff, prior_var), jnp.sum(phi_w[:, -1] * logp)


def fit_gmm_grouped(mu0, s, mean, scat, active, reg_covar, n_eff=1.0, prior_var=0.0, *, max_iter=60, tol=1e-4):
    """Fit one weighted GMM to grouped points (EM on atoms).

    Every group ``a`` is summarised by its total weight ``s_a``, weighted mean ``m_a`` and mean
    within-group scatter ``S_a``; all points of a group share one responsibility vector. EM then
    maximises a lower bound of the weighted log-likelihood (exact when every group is one point,
    ``S_a = 0``): the E-step uses the expected log density over the group,
    ``log N(m_a | mu_k, Sigma_k) - tr(Sigma_k^{-1} S_a) / 2``, and the M-step adds the within-group
    scatter to each component's covariance. Both steps are matrix products of the groups' features
    ``(vech(T_a), m_a, 1)`` (``T_a = S_a + m_a m_a^T`` about the weighted centre) with the
    components' natural parameters, so a step costs ``O(a k d^2)`` in two GEMMs.

    Parameters
    ----------
    mu0 : ``(k_max, d)`` initial centres (e.g. from :func:`initial_centres`); EM starts from one M-step
        on the hard assignment of every group to its nearest active centre.
    s : ``(a,)`` non-negative group weights; mean : ``(a, d)``; scat : ``(a, d, d)``.
    active : ``(k_max,)`` bool, which component slots are used.
    reg_covar : added to every covariance diagonal.
    n_eff, prior_var : with ``prior_var > 0``, every covariance is the posterior mean under an
        inverse-Wishart prior with ``d + 2`` degrees of freedom and mean ``prior_var * I`` (worth one
        observation): ``(n_k S_k + prior_var I) / (n_k + 1)``, where ``S_k`` is the component's weighted
        covariance and ``n_k`` its share of the ``n_eff`` observations the weights stand for (a
        component of a few cells is pulled towards the prior, one of hundreds keeps its own
        covariance); ``prior_var = 0``: maximum likelihood.
    max_iter, tol : at most ``max_iter`` EM steps; stop when the bound per unit weight changes by
        less than ``tol``.

    Returns
    -------
    ``(pi, mu, chol)``. :func:`fit_gmm_pool` fits a batch of mixtures with the same steps.
    """
    phi, phi_w, g, (pi0, m0, c0) = _em_setup(mu0, s, mean, scat, active, reg_covar, n_eff, prior_var)
    dt = mean.dtype

    def step(state):
        i, pi, mu, chol, ll_old, _ = state
        (pi_new, mu_new, chol_new), ll = _em_step(phi, phi_w, active, reg_covar, pi, mu, chol, n_eff, prior_var)
        return i + 1, pi_new, mu_new, chol_new, ll, jnp.abs(ll - ll_old)

    def cond(state):
        i, *_, delta = state
        return (i < max_iter) & (delta > tol)

    init = (0, pi0, m0, c0, jnp.asarray(-jnp.inf, dt), jnp.asarray(jnp.inf, dt))
    _, pi, mu, chol, _, _ = jax.lax.while_loop(cond, step, init)
    return pi, mu + g[None, :], chol


def fit_gmm_pool(mu0, s, mean, scat, active, reg_covar, n_eff=None, prior_var=None, *, pool=32, max_iter=60, tol=1e-4):
    """:func:`fit_gmm_grouped` for a batch of ``b`` mixtures (leading axis of every argument but
    ``reg_covar``; ``n_eff``, ``prior_var``: ``(b,)`` or None, no prior), each fitted by exactly the same EM
    steps, run ``pool`` at a time.

    A batched (``vmap``-ed) while loop runs every fit for as many steps as the slowest one needs; here
    ``pool`` slots each hold one fit, every loop step advances all slots by one EM step, and a slot whose
    fit has converged (or reached ``max_iter``) writes its result and takes the next fit of the batch. The
    work is about the total number of EM steps the fits need rather than ``b`` times the largest (on
    pbmc68k_reduced the genes' fits take 7.5 steps on average, and every batch of 256 held one that took
    25). Returns ``(pi, mu, chol)`` of the ``b`` fits.
    """
    b, k, d = mu0.shape
    dt = mean.dtype
    p = min(pool, b)
    n_eff = jnp.ones(b, dt) if n_eff is None else n_eff
    prior_var = jnp.zeros(b, dt) if prior_var is None else prior_var
    phi, phi_w, g, (pi0, m0, c0) = jax.vmap(_em_setup, in_axes=(0, 0, 0, 0, 0, None, 0, 0))(
        mu0, s, mean, scat, active, reg_covar, n_eff, prior_var
    )
    step_all = jax.vmap(_em_step, in_axes=(0, 0, 0, None, 0, 0, 0, 0, 0))
    sizes = np.cumsum([k, k * d])

    def pack(pi, mu, chol):  # one row per fit: a single scatter / gather per loop step (XLA on CPU runs each
        # scatter as a loop over the slots)
        return jnp.concatenate([pi, mu.reshape(-1, k * d), chol.reshape(-1, k * d * d)], axis=1)

    def unpack(x):
        return x[:, : sizes[0]], x[:, sizes[0] : sizes[1]].reshape(-1, k, d), x[:, sizes[1] :].reshape(-1, k, d, d)

    start = pack(pi0, m0, c0)

    def body(state):
        idx, it, par, ll_old, nxt, out = state
        j = jnp.minimum(idx, b - 1)  # empty slots (idx == b) recompute the last fit; their results are dropped
        new_par, ll = step_all(phi[j], phi_w[j], active[j], reg_covar, *unpack(par), n_eff[j], prior_var[j])
        par = pack(*new_par)
        it = it + 1
        done = (idx < b) & ~((it < max_iter) & (jnp.abs(ll - ll_old) > tol))
        out = out.at[jnp.where(done, idx, b)].set(par, mode="drop")  # index b: dropped
        new = jnp.where(done, nxt + jnp.cumsum(done) - 1, idx)
        par = jnp.where(done[:, None], start[jnp.minimum(new, b - 1)], par)
        ll_old = jnp.where(done, -jnp.inf, ll)
        it = jnp.where(done, 0, it)
        idx = jnp.where(done, jnp.minimum(new, b), idx)
        return idx, it, par, ll_old, nxt + jnp.sum(done), out

    def cond(state):
        return jnp.any(state[0] < b)

    init = (
        jnp.arange(p), jnp.zeros(p, jnp.int32), start[:p], jnp.full(p, -jnp.inf, dt), jnp.asarray(p),
        jnp.zeros_like(start),
    )  # fmt: skip
    pi, mu, chol = unpack(jax.lax.while_loop(cond, body, init)[-1])
    return pi, mu + g[:, None, :], chol


class AtomSums:
    """Per-atom weighted sums of point features, computed on the host (NumPy / SciPy).

    Each point's features are ``(1, l, vech(l l^T))`` with ``l`` its offset from its atom's centre
    (which keeps the float32 scatter accurate). The sums for a batch of genes are one sparse-dense
    product: ``M`` ``(n, a f)`` (sparse) holds the features of every point in the columns of its atom, so
    ``w @ M`` costs ``n f`` multiply-adds per gene (a dense product over atoms padded to the largest
    one cost several times more, in many small products; so did the sparse-times-dense form of the same
    product).
    """

    def __init__(self, x, atom, centres):
        import numpy as np
        import scipy.sparse as sp

        n, d = x.shape
        self.n, self.n_atoms = n, centres.shape[0]
        loc = x - centres[atom]
        iu, ju = np.triu_indices(d)
        f = np.concatenate([np.ones((n, 1)), loc, loc[:, iu] * loc[:, ju]], axis=1)  # (n, f)
        self.n_feats = nf = f.shape[1]
        rows = (atom[:, None] * nf + np.arange(nf)[None, :]).ravel()
        cols = np.repeat(np.arange(n), nf)
        self.m = sp.csr_matrix((f.ravel().astype(np.float32), (rows, cols)), shape=(self.n_atoms * nf, n)).T  # CSC

    def __call__(self, w):
        """``w``: ``(b, n)`` weights -> ``(b, a, f)`` per-atom weighted feature sums (float32)."""
        import numpy as np

        out = np.asarray(np.asarray(w, dtype=np.float32) @ self.m)  # (b, a f)
        return out.reshape(w.shape[0], self.n_atoms, self.n_feats)


def group_stats(agg, centres, xp=jnp):
    """Per-atom weight sums, weighted means and mean within-atom scatter from the per-atom sums.

    ``agg``: ``(b, a, f)`` per-atom weighted sums of the :class:`AtomSums` features of ``b`` genes;
    ``centres``: ``(a, d)`` atom centres. Returns ``s`` ``(b, a)``, ``mean`` ``(b, a, d)``,
    ``scat`` ``(b, a, d, d)``. ``xp``: the array module (``jax.numpy`` in compiled code, NumPy on the host).
    """
    d = centres.shape[1]
    s = agg[..., 0]
    s_safe = xp.where(s > 0, s, 1.0)[..., None]
    m_loc = agg[..., 1 : 1 + d] / s_safe
    sec = (agg[..., 1 + d :] / s_safe)[..., _vech_index(d)]
    scat = sec - m_loc[..., :, None] * m_loc[..., None, :]
    mean = centres[None] + m_loc
    return s, mean, xp.where((s > 0)[..., None, None], scat, 0.0)


# ---------------------------------------------------------------------------------------------------
# NumPy (host) versions, float64, for the background mixture: a few fits on a few hundred atoms run in
# well under a second in NumPy, which saves compiling them (several seconds on CPU) on every first call.


def _chol_np(cov, old):
    """Batched Cholesky factors of ``cov`` (``(..., d, d)``); where a factorisation fails, ``old``."""
    import numpy as np

    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        flat, prev = cov.reshape(-1, *cov.shape[-2:]), old.reshape(-1, *cov.shape[-2:])
        out = np.empty_like(flat)
        for i in range(flat.shape[0]):
            try:
                out[i] = np.linalg.cholesky(flat[i])
            except np.linalg.LinAlgError:
                out[i] = prev[i]
        return out.reshape(cov.shape)


def _linv_np(chol):
    """``L^{-1}`` of a batch of lower-triangular factors."""
    import numpy as np

    return np.linalg.inv(chol)


def fit_grouped_batch_np(mu0, s, mean, scat, active, reg_covar, *, max_iter=150, tol=1e-5):
    """NumPy version of :func:`fit_gmm_grouped` (float64), one fit per row of ``mu0`` and ``active``.

    The grouped data ``s`` ``(a,)``, ``mean`` ``(a, d)``, ``scat`` ``(a, d, d)`` are shared by all rows,
    or given per row (``(r, a)``, ``(r, a, d)``, ``(r, a, d, d)``). The same algorithm as
    :func:`fit_gmm_grouped` (initial centres ``mu0`` ``(r, k, d)``, one M-step on the hard
    assignment to the nearest centre, EM on the atoms until the bound changes by less than ``tol``, each row stopping on its
    own). Returns ``(pi, mu, chol)`` with a leading row axis.
    """
    import numpy as np

    active = np.asarray(active, bool)
    r, k = active.shape
    s = np.broadcast_to(np.asarray(s, np.float64), (r, *np.shape(s)[-1:]))
    mean = np.broadcast_to(np.asarray(mean, np.float64), (r, *np.shape(mean)[-2:]))
    scat = np.broadcast_to(np.asarray(scat, np.float64), (r, *np.shape(scat)[-3:]))
    _, a, d = mean.shape
    ssum = s.sum(1, keepdims=True)
    wn = s / np.where(ssum > 0, ssum, 1.0)  # (r, a)
    eye = np.eye(d)
    iu, ju = np.triu_indices(d)
    tw = np.where(iu == ju, 1.0, 2.0)
    full = _vech_index(d)
    nt = iu.size
    g = np.einsum("ra,rad->rd", wn, mean)
    c = mean - g[:, None, :]  # (r, a, d)
    sec = scat + c[..., :, None] * c[..., None, :]
    phi = np.concatenate([sec[..., iu, ju], c, np.ones((r, a, 1))], axis=-1)  # (r, a, f)
    phi_w = phi * wn[..., None]
    pooled = phi_w[..., :nt].sum(1)[:, full] + reg_covar * eye  # (r, d, d)
    floor = 1e-3 * np.trace(pooled, axis1=-2, axis2=-1) / d  # (r,)

    rows = np.arange(r)
    centres = np.asarray(mu0, np.float64) - g[:, None, :]

    def mstep(sel, resp, mu, chol, extra):
        mom = np.matmul(resp.transpose(0, 2, 1), phi_w[sel])  # (r, k, f)
        nk = mom[..., -1]
        nk_safe = np.where(nk > 1e-12, nk, 1.0)
        mu_new = mom[..., nt : nt + d] / nk_safe[..., None]
        second = (mom[..., :nt] / nk_safe[..., None])[..., full]
        cov = second - mu_new[..., :, None] * mu_new[..., None, :] + (reg_covar + extra) * eye
        ok = (nk > 1e-12) & active[sel]
        cov = np.where(ok[..., None, None], cov, eye)
        mu_new = np.where(ok[..., None], mu_new, mu)
        chol_new = _chol_np(cov, chol)
        pi_new = np.where(ok, nk, 0.0)
        return pi_new / np.maximum(pi_new.sum(-1, keepdims=True), 1e-38), mu_new, chol_new

    def estep(sel, pi, mu, chol):
        linv = _linv_np(chol)
        prec = np.matmul(linv.transpose(0, 1, 3, 2), linv)
        pm = np.matmul(prec, mu[..., None])[..., 0]
        theta = np.concatenate([prec[..., iu, ju] * tw, -2.0 * pm, np.sum(pm * mu, -1, keepdims=True)], axis=-1)
        logdet = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        logpi = _log_weights(pi, active[sel], np)
        lp = -0.5 * (np.matmul(phi[sel], theta.transpose(0, 2, 1)) + logdet[:, None, :] + d * np.log(2 * np.pi))
        lp = lp + logpi[:, None, :]
        m = lp.max(-1, keepdims=True)
        logp = m[..., 0] + np.log(np.sum(np.exp(lp - m), axis=-1))
        return np.exp(lp - logp[..., None]), np.sum(logp * wn[sel], axis=1)

    d2c = np.sum((c[:, :, None, :] - centres[:, None, :, :]) ** 2, axis=-1)  # (r, a, k)
    lab = np.argmin(np.where(active[:, None, :], d2c, np.inf), axis=-1)
    resp0 = (lab[..., None] == np.arange(k)).astype(np.float64)
    c0 = _chol_np(pooled, np.broadcast_to(eye, pooled.shape))
    c0 = np.broadcast_to(c0[:, None], (r, k, d, d)).copy()
    pi, mu, chol = mstep(rows, resp0, centres, c0, floor[:, None, None, None])
    ll_old = np.full(r, -np.inf)
    delta = np.full(r, np.inf)
    it = np.zeros(r, int)
    run = rows
    while run.size:
        resp, ll = estep(run, pi[run], mu[run], chol[run])
        pi[run], mu[run], chol[run] = mstep(run, resp, mu[run], chol[run], 0.0)
        delta[run] = np.abs(ll - ll_old[run])
        ll_old[run] = ll
        it[run] += 1
        run = rows[(it < max_iter) & (delta > tol)]
    return pi, mu + g[:, None, :], chol


def batch_logpdf_np(x, pi, mu, chol, active):
    """NumPy version of :func:`batch_logpdf` (float64): ``(b, n)`` mixture log densities."""
    return _batch_comp_np(x, mu, chol, pi, active)[1]


def _batch_comp_np(x, mu, chol, pi, active):
    import numpy as np

    b, k, d = mu.shape
    linv = _linv_np(chol)  # (b, k, d, d)
    z = (x @ linv.reshape(b * k * d, d).T).reshape(x.shape[0], b, k, d)
    z = z - np.einsum("bked,bkd->bke", linv, mu)[None]
    maha = np.sum(z * z, axis=-1)  # (n, b, k)
    logdet = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    comp = -0.5 * (maha + logdet[None] + d * np.log(2.0 * np.pi))  # (n, b, k)
    with np.errstate(divide="ignore"):
        logpi = _log_weights(pi, active, np)
    lp = comp + logpi[None]
    m = lp.max(-1, keepdims=True)
    return comp, (m[..., 0] + np.log(np.sum(np.exp(lp - m), axis=-1))).T


def component_argmax_np(x, mu, chol, active):
    """NumPy version of :func:`component_argmax` for one mixture."""
    import numpy as np

    comp, _ = _batch_comp_np(x, mu[None], chol[None], np.ones(active.shape)[None], active[None])
    return np.argmax(np.where(active[None, :], comp[:, 0], -np.inf), axis=1)


def group_stats_np(agg, centres):
    """NumPy version of :func:`group_stats`."""
    import numpy as np

    return group_stats(agg, centres, xp=np)
