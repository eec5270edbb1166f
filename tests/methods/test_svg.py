"""Spatially variable genes: SpatialDE GP test, score tests, Moran's I, AEH."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

import experimat as em
from experimat._errors import InvalidInputError, MissingSlotError, NotCountsError
from experimat.methods.svg import (
    bh_adjust,
    spatial_patterns,
    spatial_svg,
    spatial_svg_gp,
    spatial_svg_moran,
    spatial_svg_score,
    storey_qvalue,
)
from experimat.methods.svg._stats import cauchy_combine_log, cauchy_pvalue, cauchy_statistic

DATA = Path(__file__).resolve().parents[1] / "data" / "svg" / "mob_subset.npz"


@pytest.fixture(autouse=True)
def _quiet():
    with em.settings.override(progress=False):
        yield


@pytest.fixture(scope="module")
def mob():
    z = np.load(DATA)
    a = ad.AnnData(
        z["counts"].astype(np.float32),
        obs=pd.DataFrame({"total_counts": z["total_counts"]}, index=z["spots"]),
        var=pd.DataFrame(
            {"ref_llr": z["ref_llr"], "ref_pval": z["ref_pval"], "ref_qval": z["ref_qval"]}, index=z["genes"]
        ),
    )
    a.layers["counts"] = a.X.copy()
    a.layers["expr"] = z["expr"].astype(np.float64)
    a.obsm["spatial"] = z["xy"]
    return a


@pytest.fixture(scope="module")
def synth():
    """Hex-grid spots: 20 spatial genes (bump, gradient, periodic) + 100 null genes that are
    exactly null given the size factors in obs['size']."""
    a = em.datasets.synthetic_svg(300, 20, n_spatial=20, effect=1.0, seed=3)
    rng = np.random.default_rng(4)
    size = np.asarray(a.X.sum(1)).ravel()
    base = rng.lognormal(-4.0, 1.0, size=100)
    mu = size[:, None] * base[None, :]
    null = rng.negative_binomial(5.0, 5.0 / (5.0 + mu)).astype(np.float32)
    counts = np.hstack([a.X, null])
    var = pd.DataFrame(
        {"spatial": np.r_[np.ones(20, bool), np.zeros(100, bool)]},
        index=[*a.var_names, *[f"null{i}" for i in range(100)]],
    )
    b = ad.AnnData(counts, obs=a.obs.assign(size=size), var=var)
    b.layers["counts"] = counts.copy()
    b.obsm["spatial"] = a.obsm["spatial"]
    return b


# ------------------------------------------------------------------ statistics helpers


def _bh_direct(p):
    p = np.asarray(p, float)
    out = np.full(p.size, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    ranks = stats.rankdata(p[ok], method="ordinal")
    for i in ok:
        out[i] = min(1.0, min(m * p[j] / ranks[k] for k, j in enumerate(ok) if p[j] >= p[i]))
    return out


def test_bh_matches_direct_definition():
    rng = np.random.default_rng(0)
    p = np.r_[rng.uniform(size=150) ** 3, [0.01, 0.01, 0.01, 1e-12, 1e-12, np.nan, 0.5]]
    np.testing.assert_allclose(bh_adjust(p), _bh_direct(p), rtol=1e-12, equal_nan=True)
    # strongest genes keep distinct adjusted p-values (no forward cumulative maximum)
    adj = bh_adjust(np.array([1e-30, 1e-20, 1e-10, 0.5]))
    assert adj[0] < adj[1] < adj[2]


def test_storey_qvalue_properties():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=1000)
    q = storey_qvalue(p)
    # all-null p-values: pi0 = 1 and q equals BH
    pi0 = min(1.0, (p > 0.89).sum() / (0.11 * p.size))
    np.testing.assert_allclose(q, np.minimum(bh_adjust(p) * pi0, 1.0), rtol=1e-12)


def test_cauchy_combination():
    p = np.array([[0.3], [1e-20], [0.9]])
    np.testing.assert_allclose(cauchy_pvalue(cauchy_statistic(p)), p[:, 0], rtol=1e-6)
    t = cauchy_statistic(np.array([[1e-200, 1e-300], [1e-100, 0.5]]))
    assert np.all(np.isfinite(t)) and t[0] > t[1]
    # calibration of a (truncated) statistic against a null sample: uniform, also across the atom at 0
    from experimat.methods.svg._score import calibrated_logp

    rng = np.random.default_rng(0)

    def draw(m):
        return np.where(rng.uniform(size=m) < 0.3, 0.0, np.abs(stats.cauchy.rvs(size=m, random_state=rng)))

    T = np.r_[draw(3000), 1e3, 1e8, 1e200]
    lp = calibrated_logp(T, np.log(np.maximum(T, 1e-300)), draw(10_000), rng)
    assert stats.kstest(np.exp(lp[:-3]), "uniform").pvalue > 0.01
    assert np.all(np.diff(lp[-3:]) < 0) and np.isfinite(lp[-1]) and lp[-1] < -400


# ------------------------------------------------------------------ permutation moments


def test_permutation_moments_exact_and_monte_carlo():
    from itertools import permutations

    from experimat.methods._graph import knn_graph
    from experimat.methods.svg import _perm

    rng = np.random.default_rng(0)
    # exhaustive: all 5040 permutations of 7 entries, a general symmetric matrix
    n = 7
    K = rng.normal(size=(n, n))
    K = K + K.T
    c = rng.exponential(size=n) ** 2
    c -= c.mean()
    P = np.array(list(permutations(range(n))))
    Q = np.einsum("pi,ij,pj->p", c[P], K, c[P])
    w = _perm.moment_weights([_perm.kernel_invariants_dense(K)])
    m, v, g = (x[0, 0] for x in _perm.permutation_moments(_perm.power_sums(c[None]), n, w))
    np.testing.assert_allclose([m, v, g], [Q.mean(), Q.var(), stats.skew(Q)], rtol=1e-9)
    # low-rank and sparse kernel invariants equal the dense ones
    xy = rng.uniform(size=(40, 2))
    lam, U = np.linalg.eigh(np.exp(-((xy[:, None] - xy[None]) ** 2).sum(-1) / 0.1))
    U, lam = U[:, -12:], lam[-12:]
    W = knn_graph(xy, 4, symmetric=True)
    W = sparse.diags(1.0 / np.asarray(W.sum(1)).ravel()) @ W
    for got, dense in (
        (_perm.kernel_invariants_lowrank(U, lam, block_elems=100), U @ np.diag(lam) @ U.T),
        (_perm.kernel_invariants_sparse(W), W.toarray()),
    ):
        ref = _perm.kernel_invariants_dense(dense)
        np.testing.assert_allclose([got[k] for k in _perm.INVARIANTS], [ref[k] for k in _perm.INVARIANTS], rtol=1e-9)
    # Monte Carlo on the sparse graph with a skewed (sparse-gene-like) vector
    c = np.where(rng.uniform(size=40) < 0.2, rng.poisson(3.0, size=40), 0.0)
    c -= c.mean()
    Ws = (W + W.T).toarray() / 2
    Pm = rng.permuted(np.tile(c, (20000, 1)), axis=1)
    Qm = np.einsum("pi,ij,pj->p", Pm, Ws, Pm)
    m, v, g = (
        x[0, 0]
        for x in _perm.permutation_moments(
            _perm.power_sums(c[None]), 40, _perm.moment_weights([_perm.kernel_invariants_sparse(W)])
        )
    )
    se = Qm.std() / np.sqrt(Qm.size)
    assert abs(Qm.mean() - m) < 4 * se and abs(Qm.var() / v - 1) < 0.05 and abs(stats.skew(Qm) - g) < 0.1
    # as Moran's I: Cliff & Ord's randomisation mean and variance
    from experimat.methods.svg._moran import moran_moments

    mo = moran_moments(W)
    S0, S1, S2 = mo["S0"], mo["S1"], mo["S2"]
    b2 = 40 * (c**4).sum() / (c**2).sum() ** 2
    var_rand = (
        40 * ((40**2 - 3 * 40 + 3) * S1 - 40 * S2 + 3 * S0**2) - b2 * ((40**2 - 40) * S1 - 2 * 40 * S2 + 6 * S0**2)
    ) / (39 * 38 * 37 * S0**2) - 1 / 39**2
    scale = 40 / S0 / (c**2).sum()
    np.testing.assert_allclose([m * scale, v * scale**2], [-1 / 39, var_rand], rtol=1e-9)
    # Pearson III: gamma tail for positive skew, normal at zero skew, reflected for negative skew
    x = np.array([-1.0, 0.5, 2.0])
    np.testing.assert_allclose(np.exp(_perm.pearson3_logsf(x, 0.8)), stats.pearson3.sf(x, 0.8), rtol=1e-8)
    np.testing.assert_allclose(np.exp(_perm.pearson3_logsf(x, -0.8)), stats.pearson3.sf(x, -0.8), rtol=1e-8)
    np.testing.assert_allclose(np.exp(_perm.pearson3_logsf(x, 0.0)), stats.norm.sf(x), rtol=1e-8)
    assert np.isfinite(_perm.pearson3_logsf(np.array([200.0]), 0.5)).all()


# ------------------------------------------------------------------ SpatialDE GP test


def test_gp_reproduces_published_mob_subset(mob):
    res = spatial_svg_gp(mob, layer="expr", normalize="none", model_search=False)
    ref_p = mob.var["ref_pval"].to_numpy()
    rho = stats.spearmanr(res["pval"], ref_p)[0]
    assert rho > 0.99
    # our optimiser finds at least SpatialDE's maximum for every gene (up to the grid interpolation, < 0.01)
    assert np.all(res["llr"].to_numpy() >= mob.var["ref_llr"].to_numpy() - 1e-2)
    # published significant genes (q < 0.05 over the full transcriptome) stay among the top p-values
    sig = mob.var["ref_qval"].to_numpy() < 0.05
    thresh = ref_p[sig].max()
    recovered = (res["pval"].to_numpy()[sig] <= thresh * 1.01).mean()
    extra = ((res["pval"].to_numpy() <= thresh * 1.01) & ~sig).sum()
    assert recovered >= 0.95 and extra <= 0.1 * sig.sum()
    assert {
        "spatialde_gp.pval",
        "spatialde_gp.qval",
        "spatialde_gp.padj",
        "spatialde_gp.svg",
        "spatialde_gp.rank",
        "spatialde_gp.l",
        "spatialde_gp.fsv",
        "spatialde_gp.llr",
        "spatialde_gp.bic",
        "spatialde_gp.model",
    } <= set(mob.var.columns)
    assert mob.uns["spatialde_gp"]["params"]["normalize"] == "none"


def test_gp_counts_pipeline_power_and_model_search(synth):
    res = spatial_svg_gp(synth, layer="counts")
    truth = synth.var["spatial"].to_numpy()
    assert (res["qval"][truth] < 0.05).mean() >= 0.9
    assert (res["qval"][~truth] < 0.05).sum() <= 2
    assert set(res["model"].dropna()) <= {"SE", "PER", "linear"}
    assert sorted(res["rank"]) == list(range(1, synth.n_vars + 1))


def test_gp_permuted_coordinates_controls_fdr(mob):
    b = mob.copy()
    b.obsm["spatial"] = b.obsm["spatial"][np.random.default_rng(0).permutation(b.n_obs)]
    res = spatial_svg_gp(b, layer="expr", normalize="none", model_search=False)
    assert (res["padj"] < 0.05).sum() <= 3


def test_gp_permutation_null_is_calibrated_and_keeps_power(mob, synth):
    b = mob.copy()
    b.obsm["spatial"] = b.obsm["spatial"][np.random.default_rng(3).permutation(b.n_obs)]
    res = spatial_svg_gp(b, layer="counts", null="permutation", n_null=20_000, model_search=False, seed=0)
    p = res["pval"].dropna()
    assert p.size >= 250 and stats.kstest(p, "uniform").pvalue > 0.01
    assert (res["padj"] < 0.05).sum() <= 2
    # the chi2 LRT of SpatialDE is conservative on the same genes
    chi2 = spatial_svg_gp(b, layer="counts", model_search=False, key_added="chi2")
    assert np.mean(chi2["pval"].dropna() < 0.05) < np.mean(p < 0.05)
    # seeded and reproducible
    again = spatial_svg_gp(b, layer="counts", null="permutation", n_null=20_000, model_search=False, seed=0)
    np.testing.assert_array_equal(again["pval"], res["pval"])
    # power on synthetic genes with known truth
    pw = spatial_svg_gp(synth, layer="counts", null="permutation", n_null=20_000, model_search=False, key_added="pw")
    truth = synth.var["spatial"].to_numpy()
    assert (pw["qval"][truth] < 0.05).mean() >= 0.9
    assert (pw["qval"][~truth] < 0.05).sum() <= 2


def _null_blocks(mob, n_blocks: int, *, seed: int):
    """The MOB subset's non-significant genes in random blocks, each block with its own permutation
    of the spot coordinates (so that p-values of different blocks are independent)."""
    rng = np.random.default_rng(seed)
    null_genes = np.flatnonzero(mob.var["ref_qval"].to_numpy() >= 0.05)
    part = rng.permutation(null_genes.size) % n_blocks
    for b in range(n_blocks):
        sub = mob[:, null_genes[part == b]].copy()
        sub.obsm["spatial"] = mob.obsm["spatial"][rng.permutation(mob.n_obs)]
        yield sub


def test_gp_permutation_null_calibrated_in_small_calls(mob):
    """The pooled permutation null holds equally many permuted LLRs of every tested gene, so it is
    calibrated however few genes a call tests: blocks of ~30 genes, each its own call with its own
    coordinate permutation and its own seed (a shared seed would repeat the boundary genes'
    randomised p-values in every block)."""
    p = []
    for b, sub in enumerate(_null_blocks(mob, 8, seed=5)):
        sub = sub[np.asarray(sub.layers["counts"].sum(1)).ravel() > 0].copy()
        res = spatial_svg_gp(sub, null="permutation", n_null=500, model_search=False, seed=b, progress=False)
        p.append(res["pval"].dropna().to_numpy())
    p = np.concatenate(p)
    assert p.size >= 200 and stats.kstest(p, "uniform").pvalue > 0.001
    assert 0.01 <= np.mean(p < 0.05) <= 0.1 and (bh_adjust(p) < 0.05).sum() == 0


def test_gp_rejects_unknown_null(synth):
    with pytest.raises(ValueError, match="chi2"):
        spatial_svg_gp(synth, layer="counts", null="exact")


# ------------------------------------------------------------------ score tests


def test_score_power_and_null(synth):
    res = spatial_svg_score(synth, layer="counts", sizefactors="size", n_svg=10)
    truth = synth.var["spatial"].to_numpy()
    assert (res["padj"][truth] < 0.05).mean() >= 0.9
    assert (res["padj"][~truth] < 0.05).sum() <= 2
    assert stats.kstest(res["pval"][~truth], "uniform").pvalue > 0.01
    # rank follows the combined statistic and n_svg caps .svg
    order = res.sort_values("rank")
    assert np.all(np.diff(order["stat"].to_numpy()[:20]) <= 0)
    assert res["svg"].sum() == 10 and res.loc[res["svg"], "rank"].max() == 10
    for col in ("pval", "padj", "svg", "rank"):
        assert f"spatialde.{col}" in synth.var.columns
    assert "kernels" in synth.uns["spatialde"] and synth.uns["spatialde"]["params"]["obs_dist"] == "negative_binomial"


def test_score_calibrated_on_permuted_mob(mob):
    b = mob.copy()
    b.obsm["spatial"] = b.obsm["spatial"][np.random.default_rng(1).permutation(b.n_obs)]
    res = spatial_svg_score(b, layer="counts", n_svg=None)
    # well-expressed genes: uniform p-values; sparse genes: conservative (discrete counts)
    deep = np.asarray(b.layers["counts"].sum(0)).ravel() >= 100
    assert stats.kstest(res["pval"][deep].dropna(), "uniform").pvalue > 0.01
    assert np.mean(res["pval"] < 0.05) <= 0.08
    assert (res["padj"] < 0.05).sum() <= 3
    res_n = spatial_svg_score(b, layer="expr", obs_dist="normal", key_added="sd2n")
    assert stats.kstest(res_n["pval"].dropna(), "uniform").pvalue > 0.01


def test_score_calibrated_with_independent_blocks(mob):
    """Each block of genes gets its own coordinate permutation, so the p-values of different blocks
    are independent and a KS test over genes is valid."""
    p = []
    for b, sub in enumerate(_null_blocks(mob, 6, seed=11)):
        res = spatial_svg_score(sub, sizefactors=mob.obs["total_counts"].to_numpy(), n_null=1000, seed=b)
        p.append(res["pval"].dropna().to_numpy())
    p = np.concatenate(p)
    assert p.size >= 150 and stats.kstest(p, "uniform").pvalue > 0.001
    assert 0.01 <= np.mean(p < 0.05) <= 0.1 and (bh_adjust(p) < 0.05).sum() == 0


def test_score_strongest_genes_keep_their_p_values():
    """Per-kernel p-values below 1e-309 overflow the Cauchy statistic to inf (the strongest genes of a large
    sample): the calibrated p-value is then 0 and the gene is called (it used to be NaN and was lost)."""
    a = em.datasets.synthetic_visium_hd(3000, 60, n_domain_genes=4, n_domains=2, fold=50.0, seed=3, with_image=False)
    res = spatial_svg_score(a, layer="counts", n_null=300, seed=0)
    planted = a.var["planted_domain"].to_numpy() >= 0
    assert np.isinf(res["stat"][planted]).sum() >= 2  # the case that overflowed
    assert (res["padj"][planted] < 1e-100).all()
    assert (res.loc[planted, "rank"] <= 4).all()
    # a per-kernel p-value of exactly 0 counts as tiny in the Cauchy combination, not as missing
    _, logT, p = cauchy_combine_log(np.log(np.array([[0.0, 0.3, 0.9], [1e-20, 0.3, 0.9]])))
    assert np.isfinite(logT).all() and logT[0] > logT[1] and p[0] <= p[1] < 1e-19


def test_score_min_spots_and_seed(synth):
    a = synth.copy()
    a.layers["counts"][:, 0] = 0.0
    a.layers["counts"][:4, 0] = 3.0
    r1 = spatial_svg_score(a, layer="counts", seed=1, n_null=2000)
    assert np.isnan(r1["pval"].iloc[0]) and r1["n_spots"].iloc[0] == 4 and not r1["svg"].iloc[0]
    assert np.isfinite(r1["pval"].iloc[1:]).all()
    r2 = spatial_svg(a, method="spatialde2", layer="counts", seed=1, n_null=2000, key_added="again")
    np.testing.assert_array_equal(r1["pval"], r2["pval"])
    r3 = spatial_svg_score(a, layer="counts", min_spots=0, n_null=0, key_added="all")
    assert np.isfinite(r3["pval"].iloc[0])


def test_score_finds_published_mob_genes(mob):
    res = spatial_svg_score(mob, layer="counts", n_svg=None)
    sig = mob.var["ref_qval"].to_numpy() < 0.05
    assert (res["padj"].to_numpy()[sig] < 0.05).mean() >= 0.85


def test_score_sparse_chunks_equal_dense(synth):
    dense = spatial_svg_score(synth, layer="counts", key_added="d")
    b = synth.copy()
    b.layers["counts"] = sparse.csr_matrix(b.layers["counts"])
    sp = spatial_svg_score(b, layer="counts", chunk_size=32, key_added="s")
    np.testing.assert_allclose(sp["pval"], dense["pval"], rtol=1e-8)
    assert (sp["rank"] == dense["rank"]).all()


def test_spatial_svg_dispatch(synth):
    a = synth.copy()
    r1 = spatial_svg(a, method="spatialde2", layer="counts", key_added="x")
    r2 = spatial_svg_score(a, layer="counts", key_added="y")
    np.testing.assert_allclose(r1["pval"], r2["pval"])
    with pytest.raises(InvalidInputError, match="valid values"):
        spatial_svg(a, method="sparkx")


# ------------------------------------------------------------------ bad inputs


def test_constant_genes_are_nan_not_crash(synth):
    a = synth.copy()
    a.layers["counts"][:, 0] = 0.0
    a.layers["counts"][:, 1] = 4.0
    r = spatial_svg_score(a, layer="counts")
    assert np.isnan(r["pval"].iloc[:2]).all() and not r["svg"].iloc[:2].any()
    assert np.isfinite(r["pval"].iloc[2:]).all()
    a.layers["norm"] = np.log1p(a.layers["counts"])
    g = spatial_svg_gp(a, layer="norm", normalize="none", model_search=False)
    assert np.isnan(g["pval"].iloc[:2]).all() and np.isfinite(g["pval"].iloc[2:]).all()
    m = spatial_svg_moran(a, layer="norm")
    assert np.isnan(m["pval"].iloc[:2]).all() and np.isfinite(m["pval"].iloc[2:]).all()


def test_input_errors(synth):
    a = synth.copy()
    a.layers["norm"] = np.log1p(a.layers["counts"]) + 0.1
    with pytest.raises(NotCountsError):
        spatial_svg_score(a, layer="norm")
    with pytest.raises(NotCountsError):
        spatial_svg_gp(a, layer="norm")
    with pytest.raises(MissingSlotError, match="available layers"):
        spatial_svg_score(a, layer="raw")
    with pytest.raises(InvalidInputError, match="valid values"):
        spatial_svg_score(a, obs_dist="poisson")
    with pytest.raises(InvalidInputError, match="kernel_space"):
        spatial_svg_score(a, kernel_space={"RBF": [1.0]})
    b = a.copy()
    b.obsm["spatial"] = b.obsm["spatial"].copy()
    b.obsm["spatial"][3, 0] = np.nan
    for f in (spatial_svg_score, spatial_svg_gp, spatial_svg_moran):
        with pytest.raises(InvalidInputError, match="NaN"):
            f(b, layer="counts")
    small = a[:8].copy()
    for f in (spatial_svg_score, spatial_svg_gp, spatial_svg_moran):
        with pytest.raises(InvalidInputError, match="at least 10 spots"):
            f(small, layer="counts")


# ------------------------------------------------------------------ Moran's I


def test_moran_matches_direct_formula_and_hex_graph():
    a = em.datasets.synthetic_svg(200, 30, n_spatial=10, seed=5)
    a.X = np.log1p(a.X)
    res = spatial_svg_moran(a, layer=None)
    from experimat.methods._graph import lattice_graph

    W = lattice_graph(a.obs["array_row"].to_numpy(), a.obs["array_col"].to_numpy(), kind="hex").toarray()
    assert W.sum(1).max() == 6 and np.allclose(W, W.T)
    Wr = W / W.sum(1, keepdims=True)
    Z = np.asarray(a.X, float) - np.asarray(a.X, float).mean(0)
    direct = [a.n_obs / Wr.sum() * (Z[:, g] @ Wr @ Z[:, g]) / (Z[:, g] @ Z[:, g]) for g in range(a.n_vars)]
    np.testing.assert_allclose(res["I"], direct, rtol=1e-6)
    assert (res["padj"].to_numpy()[:10] < 0.05).all()
    perm = spatial_svg_moran(a, n_perms=49, seed=0, key_added="mp")
    assert perm["pval_sim"].min() == pytest.approx(1 / 50)


def test_moran_calibrated_on_permuted_mob(mob):
    b = mob.copy()
    b.obsm["spatial"] = b.obsm["spatial"][np.random.default_rng(2).permutation(b.n_obs)]
    res = spatial_svg_moran(b, layer="expr", null="randomisation")
    assert stats.kstest(res["pval"].dropna(), "uniform").pvalue > 0.01
    # Pearson III default: independent permutations per gene (blocks of one gene) -> uniform p-values
    c = mob.copy()
    c.layers["lc"] = np.log1p(c.layers["counts"])
    c.layers["lc"] = np.random.default_rng(5).permuted(c.layers["lc"], axis=0)
    p3 = spatial_svg_moran(c, layer="lc", key_added="p3")
    p = p3["pval"].dropna()
    assert p.size >= 250 and stats.kstest(p, "uniform").pvalue > 0.001
    assert 0.02 <= np.mean(p < 0.05) <= 0.09 and (p3["padj"] < 0.05).sum() == 0
    assert {"skew_I", "pval_p3", "n_spots"} <= set(p3.columns)
    np.testing.assert_array_equal(p3["n_spots"], (c.layers["lc"] > c.layers["lc"].min(0)).sum(0))


def test_moran_min_spots_gives_nan(synth):
    a = synth.copy()
    a.layers["lc"] = np.log1p(a.layers["counts"])
    a.layers["lc"][:, 0] = 0.0
    a.layers["lc"][:3, 0] = 1.0  # expressed in 3 spots only
    res = spatial_svg_moran(a, layer="lc", min_spots=5)
    assert np.isnan(res["pval"].iloc[0]) and np.isfinite(res["I"].iloc[0]) and res["n_spots"].iloc[0] == 3
    assert not res["svg"].iloc[0]
    # the Pearson III null keeps the power of the normal approximation on spatial genes
    truth = a.var["spatial"].to_numpy()
    assert (res["padj"][truth] < 0.05).mean() >= 0.9


# ------------------------------------------------------------------ AEH


def test_spatial_patterns_recovers_groups():
    rng = np.random.default_rng(0)
    xy, _ = em.datasets.visium_hex_grid(300)
    xy = xy / 138.0
    p1 = np.exp(-((xy - xy[40]) ** 2).sum(1) / 20.0)
    p2 = xy[:, 0] / xy[:, 0].max()
    Y = np.hstack(
        [
            p1[:, None] + 0.3 * rng.normal(size=(300, 15)),
            p2[:, None] + 0.3 * rng.normal(size=(300, 15)),
            rng.normal(size=(300, 5)),
        ]
    )
    a = ad.AnnData(Y, var=pd.DataFrame(index=[f"g{i}" for i in range(35)]))
    a.obs_names = [f"s{i}" for i in range(300)]
    a.obsm["spatial"] = xy
    out = spatial_patterns(
        a, genes=[f"g{i}" for i in range(30)], n_patterns=2, lengthscale=3.0, layer=None, normalize="none", seed=0
    )
    pat = a.var["aeh.pattern"].to_numpy()
    assert len(set(pat[:15])) == 1 and len(set(pat[15:30])) == 1 and pat[0] != pat[15]
    assert (pat[30:] == -1).all() and np.isnan(a.var["aeh.membership"].to_numpy()[30:]).all()
    obsm = a.obsm["aeh"]
    assert list(obsm.columns) == ["0", "1"] and list(obsm.index) == list(a.obs_names)
    assert abs(np.corrcoef(obsm[str(pat[0])], p1)[0, 1]) > 0.9
    assert out["membership"].shape == (30, 2)


def test_spatial_patterns_from_svg_key(synth):
    a = synth.copy()
    spatial_svg_score(a, layer="counts", sizefactors="size")
    spatial_patterns(a, genes="spatialde", n_patterns=3, seed=0)
    assert (a.var["aeh.pattern"].to_numpy()[a.var["spatialde.svg"].to_numpy()] >= 0).all()
    with pytest.raises(MissingSlotError, match="SVG result"):
        spatial_patterns(a, genes="nonexistent_key", n_patterns=2)


def test_results_survive_h5ad_roundtrip(synth, tmp_path):
    a = synth.copy()
    spatial_svg_score(a, layer="counts", sizefactors="size")
    spatial_svg_gp(a, layer="counts", model_search=True)
    spatial_patterns(a, genes="spatialde", n_patterns=2, seed=0)
    a.write_h5ad(tmp_path / "a.h5ad")
    b = ad.read_h5ad(tmp_path / "a.h5ad")
    pd.testing.assert_series_equal(b.var["spatialde.padj"], a.var["spatialde.padj"])
    assert list(b.var["spatialde_gp.model"].dropna().unique()) != []
    assert b.obsm["aeh"].shape == (a.n_obs, 2)


def test_lowrank_kernels_nystrom_close_to_exact():
    from experimat.methods.svg._kernels import lowrank_factor, se_kernel

    xy, _ = em.datasets.visium_hex_grid(300)
    K = se_kernel(xy, 600.0)
    U, lam = lowrank_factor(xy, "SE", 600.0, use_cache=False, device="cpu", max_exact=100, n_landmarks=150)
    np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=1e-8)
    assert np.abs(U @ np.diag(lam) @ U.T - K).max() < 0.05  # eigenvalues < 1e-3 x max are dropped


def test_synthetic_absolute_mode_keeps_null_genes_null():
    """``compositional=False``: 100 strongly spatial genes do not leak into the other genes, so the
    score test with the true size factors finds the spatial genes and (almost) no null gene."""
    a = em.datasets.synthetic_svg(400, 200, n_spatial=100, effect=2.0, seed=7, compositional=False)
    null = ~a.var["spatial"].to_numpy()
    mu = a.obs["size_factor"].to_numpy()[:, None] * a.var["base_mean"].to_numpy()[None, null]
    big = mu.sum(0) > 500
    ratio = np.asarray(a.X[:, null].sum(0)).ravel()[big] / mu.sum(0)[big]
    np.testing.assert_allclose(ratio, 1.0, atol=0.15)
    spatial_svg_score(a, layer="counts", sizefactors="size_factor", seed=0, key_added="s")
    padj = a.var["s.padj"].to_numpy()
    assert (padj[~null] < 0.05).sum() >= 80
    assert (padj[null] < 0.05).sum() <= 2


def test_spatial_patterns_shows_progress_and_chunking_keeps_results(monkeypatch):
    """AEH reports its variational iterations through the project's progress bar (issue 18); the
    bar's chunked loop gives the same updates as one loop."""
    import experimat._logging as logmod
    from experimat.methods.svg import _aeh

    bars = []

    class Spy:
        def __init__(self, total, description="", *, disable=None):
            self.total, self.description, self.disable, self.advanced = total, description, disable, 0
            bars.append(self)

        def __enter__(self):
            return self

        def update(self, advance=1, description=None):
            self.advanced += advance

        def __exit__(self, *exc):
            return None

    rng = np.random.default_rng(1)
    xy, _ = em.datasets.visium_hex_grid(200)
    xy = xy / 138.0
    p1 = np.exp(-((xy - xy[30]) ** 2).sum(1) / 20.0)
    Y = np.hstack([p1[:, None] + 0.5 * rng.normal(size=(200, 10)), rng.normal(size=(200, 10))])
    a = ad.AnnData(Y, var=pd.DataFrame(index=[f"g{i}" for i in range(20)]))
    a.obsm["spatial"] = xy
    kw = dict(genes=list(a.var_names), n_patterns=3, lengthscale=3.0, layer=None, normalize="none", seed=0)
    monkeypatch.setattr(logmod, "ProgressBar", Spy)
    with em.settings.override(progress=True):
        out = spatial_patterns(a.copy(), n_iter=60, **kw)
    aeh_bars = [b for b in bars if b.description == "AEH iterations"]
    assert len(aeh_bars) == 1 and aeh_bars[0].total == 60 and not aeh_bars[0].disable
    b = a.copy()
    bars.clear()
    with em.settings.override(progress=True):
        spatial_patterns(b, n_iter=60, **kw)
    (bar,) = [x for x in bars if x.description == "AEH iterations"]
    assert 0 < bar.advanced == b.uns["aeh"]["iterations"] <= 60
    # chunk size does not change the result (chunks of 1 vs 25 vs all at once)
    ref = out["membership"].to_numpy()
    for chunk in (1, 1000):
        monkeypatch.setattr(_aeh, "_CHUNK", chunk)
        again = spatial_patterns(a.copy(), n_iter=60, **kw)
        np.testing.assert_allclose(again["membership"].to_numpy(), ref, rtol=1e-10, atol=1e-12)
    bars.clear()
    spatial_patterns(a.copy(), n_iter=60, **kw)  # em.settings.progress is False in the tests
    assert bars and all(b.disable for b in bars if b.description == "AEH iterations")
