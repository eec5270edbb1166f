"""Exact permutation moments of quadratic forms and Pearson type III p-values.

For a fixed symmetric matrix ``K`` and a vector ``c`` whose entries are uniformly permuted, the
statistic ``Q = c_πᵀ K c_π`` (Moran's I numerator, the score statistic of a spatial kernel, the
Mantel / RV statistic ``tr(K · c cᵀ)``) has exactly computable permutation moments (Mantel 1967;
Kazi-Aoual, Hitier, Sabatier & Lebreton 1995; Josse, Pagès & Husson 2008). Here ``c`` is centred
(``Σ c = 0``), so ``K`` may be replaced by its doubly centred ``Ã = H K H`` without changing
``Q``; ``Ã`` has zero row sums, which removes most terms.

``E[Q^m] = Σ_P A(P) M(P)``: the sum runs over the set partitions ``P`` of the ``2m`` index
positions of ``Q^m = Σ Π_e Ã_{i_e j_e}``; ``A(P)`` sums ``Π Ã`` over index tuples whose equality
pattern is exactly ``P`` (kernel side: a few traces and entry-wise sums, computed once per matrix)
and ``M(P) = E[Π_p c_{π(x_p)}]`` for such a tuple, ``(1/n_(b)) Σ_{distinct a} Π_B c_{a_B}^{|B|}``
(gene side: the power sums ``S_k = Σ c^k``, ``k ≤ 6``, so O(n) per gene). Both sides come from
non-distinct sums by Möbius inversion over the partition lattice. The tables are built once.

The kernel side needs, for ``d = diag(Ã)``: ``Σ d^k`` (k = 1, 2, 3), ``tr Ã²``, ``tr Ã³``,
``Σ_ab Ã_ab³``, ``Σ_a d_a (Ã²)_aa`` and ``dᵀ Ã d`` (every other term of a graph with a vertex of
degree one vanishes because the row sums of ``Ã`` are zero).
"""

from __future__ import annotations

from collections import Counter
from functools import cache
from math import factorial

import numpy as np
from scipy import special

#: names of the kernel-side invariants (see :func:`kernel_invariants_dense`)
INVARIANTS = ("t1", "t2", "t3", "f2", "f3", "c3", "g", "h")


# ---------------------------------------------------------------- set partitions and tables


def _set_partitions(items: list[int]):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        yield [[first], *part]
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1 :]]


def _mobius(blocks_of_blocks: list[list[int]]) -> int:
    out = 1
    for B in blocks_of_blocks:
        out *= (-1) ** (len(B) - 1) * factorial(len(B) - 1)
    return out


def _graph_monomial(label: dict[int, int], m: int) -> tuple[str, ...] | None:
    """Invariant monomial of the non-distinct contraction whose positions carry block ``label``;
    ``None`` when a vertex has degree one (the sum vanishes for zero row sums)."""
    edges = [(label[2 * e], label[2 * e + 1]) for e in range(m)]
    deg: Counter[int] = Counter()
    for a, b in edges:
        deg[a] += 1
        deg[b] += 1
    if any(v == 1 for v in deg.values()):
        return None
    # connected components (union-find on vertices)
    parent = {v: v for v in deg}

    def find(v):
        while parent[v] != v:
            v = parent[v]
        return v

    for a, b in edges:
        parent[find(a)] = find(b)
    comps: dict[int, list[tuple[int, int]]] = {}
    for a, b in edges:
        comps.setdefault(find(a), []).append((a, b))
    mono = []
    for es in comps.values():
        verts = {v for e in es for v in e}
        loops = sum(a == b for a, b in es)
        nv, ne = len(verts), len(es)
        if nv == 1:
            mono.append(f"t{ne}")
        elif nv == 2 and ne == 2 and loops == 0:
            mono.append("f2")
        elif nv == 2 and ne == 3:
            mono.append({0: "c3", 1: "g", 2: "h"}[loops])
        elif nv == 3 and ne == 3 and loops == 0:
            mono.append("f3")
        else:  # pragma: no cover - all other graphs have a vertex of degree one
            raise AssertionError((nv, ne, loops))
    return tuple(sorted(mono))


@cache
def _tables(m: int):
    """For ``E[Q^m]``: kernel side ``{λ: {monomial: coef}}`` and gene side ``{λ: [(coef, powers)]}``
    with ``λ`` the block sizes (descending) of the exact equality pattern."""
    positions = list(range(2 * m))
    kernel: dict[tuple[int, ...], Counter] = {}
    for P in _set_partitions(positions):
        lam = tuple(sorted((len(B) for B in P), reverse=True))
        acc = kernel.setdefault(lam, Counter())
        # exact(P) = Σ_{Q ≥ P} μ(P, Q) N(Q); Q ↔ a set partition σ of P's blocks
        for sigma in _set_partitions(list(range(len(P)))):
            label = {}
            for qi, group in enumerate(sigma):
                for bi in group:
                    for pos in P[bi]:
                        label[pos] = qi
            mono = _graph_monomial(label, m)
            if mono is not None:
                acc[mono] += _mobius(sigma)
    gene: dict[tuple[int, ...], list[tuple[int, tuple[int, ...]]]] = {}
    for lam in kernel:
        terms: Counter = Counter()
        for sigma in _set_partitions(list(range(len(lam)))):
            powers = tuple(sorted(sum(lam[i] for i in B) for B in sigma))
            if 1 in powers:  # S_1 = 0 for centred vectors
                continue
            terms[powers] += _mobius(sigma)
        gene[lam] = [(c, p) for p, c in terms.items() if c != 0]
    kernel = {lam: {k: v for k, v in acc.items() if v != 0} for lam, acc in kernel.items()}
    return kernel, gene


def kernel_side(inv: dict[str, float], m: int) -> dict[tuple[int, ...], float]:
    """``κ_λ = Σ_{P of type λ} A(P)`` for ``E[Q^m]`` from the kernel invariants."""
    kernel, _ = _tables(m)
    out = {}
    for lam, terms in kernel.items():
        out[lam] = float(sum(c * np.prod([inv[x] for x in mono]) for mono, c in terms.items()))
    return out


def _falling(n: int, b: int) -> float:
    return float(np.prod(np.arange(n, n - b, -1, dtype=np.float64)))


def gene_side(S: dict[int, np.ndarray], n: int, m: int) -> dict[tuple[int, ...], np.ndarray]:
    """``M_λ`` for ``E[Q^m]`` from the power sums ``S[k] = Σ c^k`` (arrays over genes)."""
    _, gene = _tables(m)
    out = {}
    for lam, terms in gene.items():
        acc = 0.0
        for c, powers in terms:
            acc = acc + c * np.prod([S[k] for k in powers], axis=0)
        out[lam] = acc / _falling(n, len(lam))
    return out


@cache
def _design(m: int) -> tuple[tuple[int, ...], ...]:
    return tuple(sorted(_tables(m)[0]))


def moment_weights(invs: list[dict[str, float]]) -> list[np.ndarray]:
    """Per-moment matrices ``(L_m × K)`` of ``κ_λ`` for ``K`` kernels (m = 1, 2, 3)."""
    return [np.array([[kernel_side(inv, m)[lam] for inv in invs] for lam in _design(m)]) for m in (1, 2, 3)]


def power_sums(C: np.ndarray) -> np.ndarray:
    """``S_2 … S_6`` of the rows of ``C`` (genes × spots), shape (genes, 5)."""
    C2 = C * C
    C3 = C2 * C
    return np.stack([C2.sum(1), C3.sum(1), (C2 * C2).sum(1), (C3 * C2).sum(1), (C3 * C3).sum(1)], axis=1)


def permutation_moments(S: np.ndarray, n: int, weights: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Mean, variance and skewness (genes × kernels) of ``Q`` under permutations.

    ``S`` are the power sums from :func:`power_sums`, ``weights`` from :func:`moment_weights`.
    """
    Sd = {k: S[:, k - 2] for k in range(2, 7)}
    raw = []
    for m, Wm in zip((1, 2, 3), weights, strict=True):
        gs = gene_side(Sd, n, m)
        F = np.stack([np.broadcast_to(gs[lam], S.shape[:1]) for lam in _design(m)], axis=1)
        raw.append(F @ Wm)
    m1, m2, m3 = raw
    var = m2 - m1**2
    mu3 = m3 - 3.0 * m1 * m2 + 2.0 * m1**3
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = mu3 / np.maximum(var, 1e-300) ** 1.5
    return m1, var, skew


# ---------------------------------------------------------------- kernel invariants


def _from_diag(d: np.ndarray, f2: float, f3: float, c3: float, g: float, h: float) -> dict[str, float]:
    return dict(t1=float(d.sum()), t2=float((d**2).sum()), t3=float((d**3).sum()), f2=f2, f3=f3, c3=c3, g=g, h=h)


def kernel_invariants_dense(K: np.ndarray) -> dict[str, float]:
    """Invariants of ``Ã = H K H`` from a dense symmetric ``K`` (reference implementation)."""
    K = np.asarray(K, dtype=np.float64)
    K = 0.5 * (K + K.T)
    A = K - K.mean(0)[None, :] - K.mean(1)[:, None] + K.mean()
    d = np.diag(A).copy()
    A2 = A @ A
    return _from_diag(
        d,
        f2=float((A * A).sum()),
        f3=float((A2 * A).sum()),
        c3=float((A**3).sum()),
        g=float(d @ np.diag(A2)),
        h=float(d @ A @ d),
    )


def kernel_invariants_lowrank(U: np.ndarray, lam: np.ndarray, *, block_elems: int = 4_000_000) -> dict[str, float]:
    """Invariants of ``Ã = H U diag(λ) Uᵀ H`` without forming ``Ã`` (``Σ Ã_ab³`` in row blocks)."""
    Ut = np.asarray(U, dtype=np.float64)
    Ut = Ut - Ut.mean(0)
    lam = np.asarray(lam, dtype=np.float64)
    n = Ut.shape[0]
    d = (Ut**2) @ lam
    M = Ut.T @ Ut  # (R, R)
    LM = lam[:, None] * M
    f2 = float(np.trace(LM @ LM))
    f3 = float(np.trace(LM @ LM @ LM))
    A2diag = ((Ut @ ((lam[:, None] * M) * lam[None, :])) * Ut).sum(1)
    Ud = Ut.T @ d
    h = float(Ud @ (lam * Ud))
    UL = Ut * lam
    c3 = 0.0
    step = max(1, block_elems // max(n, 1))
    for s in range(0, n, step):
        blk = UL[s : s + step] @ Ut.T
        c3 += float((blk * blk * blk).sum())
    return _from_diag(d, f2=f2, f3=f3, c3=c3, g=float(d @ A2diag), h=h)


def kernel_invariants_sparse(W, node_weights: np.ndarray | None = None) -> dict[str, float]:
    """Invariants of ``Ã = H S H`` for a sparse weights matrix, ``S = (W + Wᵀ) / 2``; O(nnz).

    With ``node_weights`` (``w``, positive integers) row/column ``β`` of ``W`` stands for ``w_β`` identical
    observations: the invariants are those of the ``Σ w × Σ w`` matrix ``B S Bᵀ`` (``B`` the membership of each
    observation in its group), e.g. a kernel that is constant on blocks of spots, computed on the groups only.
    """
    from scipy import sparse

    W = sparse.csr_matrix(W, dtype=np.float64)
    S = sparse.csr_matrix(0.5 * (W + W.T))
    m = S.shape[0]
    w = np.ones(m) if node_weights is None else np.asarray(node_weights, dtype=np.float64)
    n = float(w.sum())
    rs = S @ w
    u = rs / n
    p = 0.5 * float(w @ u) / n - u  # Ã_ab = S_ab + p_a + p_b
    P1, P2, P3 = w @ p, w @ p**2, w @ p**3
    d = S.diagonal() + 2.0 * p
    Sc = S.tocoo()
    a, b, s = Sc.row, Sc.col, Sc.data
    D = p[a] + p[b]
    # row sums of Ã² entries: Σ_b Ã_ab²
    row2 = np.bincount(a, weights=w[b] * ((s + D) ** 2 - D**2), minlength=m) + n * p**2 + 2.0 * p * P1 + P2
    f2 = float(w @ row2)
    c3 = float((w[a] * w[b] * ((s + D) ** 3 - D**3)).sum() + 2.0 * n * P3 + 6.0 * P1 * P2)
    # tr Ã³ = tr((H K)³), H K = K - 1 uᵀ with K = B S Bᵀ: tr K³ = tr((S N)³), N = diag(w)
    SN = sparse.csr_matrix(S @ sparse.diags(w))
    su = float(w @ u)
    trS3 = float((SN @ SN).multiply(SN.T).sum())
    wu = w * u
    f3 = trS3 - 3.0 * n * float(wu @ (S @ wu)) + 3.0 * su * n * float(w @ u**2) - su**3
    Ad = S @ (w * d) + p * float(w @ d) + float(w @ (p * d))
    return dict(
        t1=float(w @ d), t2=float(w @ d**2), t3=float(w @ d**3), f2=f2, f3=f3, c3=c3,
        g=float(w @ (d * row2)), h=float(w @ (d * Ad)),
    )  # fmt: skip


# ---------------------------------------------------------------- Pearson type III tail


def pearson3_logsf(x: np.ndarray, skew: np.ndarray, *, min_skew: float = 1e-3) -> np.ndarray:
    """log upper-tail probability of a standardised Pearson type III variable (mean 0, sd 1).

    Positive skew: shifted gamma with shape ``k = 4 / γ²``; negative skew: the reflected gamma
    (bounded above: log p = -inf past its end point); ``|γ| < min_skew``: standard normal. Far
    upper tails of the gamma use the asymptotic expansion of the incomplete gamma function.
    """
    x = np.asarray(x, dtype=np.float64)
    g = np.broadcast_to(np.asarray(skew, dtype=np.float64), x.shape)
    out = np.full(x.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        nrm = np.isfinite(g) & (np.abs(g) < min_skew)
        out[nrm] = special.log_ndtr(-x[nrm])
        pos = np.isfinite(g) & (g >= min_skew)
        k = 4.0 / g[pos] ** 2
        y = np.maximum(k + x[pos] * np.sqrt(k), 0.0)
        p = special.gammaincc(k, y)
        lp = np.log(p)
        tail = ~(p > 1e-290)
        if tail.any():
            kt, yt = k[tail], y[tail]
            lp[tail] = -yt + (kt - 1.0) * np.log(yt) - special.gammaln(kt) + np.log1p((kt - 1.0) / yt)
        out[pos] = lp
        neg = np.isfinite(g) & (g <= -min_skew)
        k = 4.0 / g[neg] ** 2
        y = np.maximum(k - x[neg] * np.sqrt(k), 0.0)
        out[neg] = np.log(special.gammainc(k, y))
    out[~np.isfinite(x)] = np.nan
    return np.minimum(out, 0.0)


def pearson3_logp(Q: np.ndarray, mean: np.ndarray, var: np.ndarray, skew: np.ndarray) -> np.ndarray:
    """One-sided (upper) log p-values of ``Q`` from its permutation mean, variance and skewness."""
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (Q - mean) / np.sqrt(var)
    lp = pearson3_logsf(x, skew)
    lp[~(var > 0)] = np.nan
    return lp
