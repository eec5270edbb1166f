"""Moran's I on sparse Visium HD-like bins: the sparse statistics equal the dense ones, the multi-scale test
(``scales``) is calibrated on permuted genes and finds more of the planted domain genes than the bin graph."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

import experimat as em
from experimat.methods.svg import spatial_svg_moran
from experimat.methods.svg._perm import kernel_invariants_dense, kernel_invariants_sparse


@pytest.fixture(autouse=True)
def _quiet():
    with em.settings.override(progress=False):
        yield


@pytest.fixture(scope="module")
def hd():
    a = em.datasets.synthetic_visium_hd(3000, 400, n_domain_genes=80, seed=3, with_image=False)
    X = sp.csr_matrix(a.layers["counts"], dtype=np.float64)
    lib = np.asarray(X.sum(1)).ravel()
    X = sp.csr_matrix(sp.diags(1e4 / lib) @ X)
    X.data = np.log1p(X.data)
    a.layers["lognorm"] = X
    return a


def test_block_invariants_equal_those_of_the_expanded_kernel():
    rng = np.random.default_rng(0)
    m = 15
    A = np.triu((rng.random((m, m)) < 0.3).astype(float), 1)
    A = A + A.T + np.eye(m)
    w = rng.integers(1, 6, m)
    B = np.repeat(np.eye(m), w, axis=0)  # spots x blocks
    got = kernel_invariants_sparse(sp.csr_matrix(A), w)
    want = kernel_invariants_dense(B @ A @ B.T)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-9), k


def test_sparse_statistics_equal_dense(hd):
    a = hd.copy()
    d = a.copy()
    d.layers["lognorm"] = a.layers["lognorm"].toarray()
    s = spatial_svg_moran(a, layer="lognorm", scales=[4, 8])
    r = spatial_svg_moran(d, layer="lognorm", scales=[4, 8])
    for col in ("I", "pval_p3", "pval_rand", "pval", "n_spots"):
        np.testing.assert_allclose(s[col].to_numpy(float), r[col].to_numpy(float), rtol=1e-7, atol=1e-12, err_msg=col)
    np.testing.assert_allclose(a.varm["moran.scale_pvals"], d.varm["moran.scale_pvals"], rtol=1e-7, atol=1e-12)
    # the default (no scales) is the bin graph's Moran's I with its Pearson III p-value
    base = spatial_svg_moran(a, layer="lognorm", key_added="b")
    np.testing.assert_allclose(base["pval"], base["pval_p3"])
    np.testing.assert_allclose(base["I"], s["I"])
    assert "scale" not in base and "b.scale_pvals" not in a.varm
    assert a.uns["moran"]["params"]["scales"] == [4.0, 8.0] and a.uns["moran"]["block_sizes"] == [4.0, 8.0]


def test_scales_calibrated_on_permuted_genes(hd):
    a = hd.copy()
    X = sp.csc_matrix(a.layers["lognorm"])
    rng = np.random.default_rng(11)
    for g in range(X.shape[1]):  # each gene's bins permuted on its own: no spatial pattern left
        sl = slice(X.indptr[g], X.indptr[g + 1])
        X.indices[sl] = rng.permutation(X.shape[0])[X.indices[sl]]
    a.layers["perm"] = sp.csr_matrix(X)
    res = spatial_svg_moran(a, layer="perm", scales="auto")
    assert a.uns["moran"]["block_sizes"] == [4.0, 8.0]
    p = res["pval"].dropna()
    assert p.size >= 300
    assert stats.kstest(p, "uniform").pvalue > 0.001
    assert 0.02 <= np.mean(p < 0.05) <= 0.08 and (res["padj"] < 0.05).sum() <= 1
    for j in range(3):  # and each scale on its own
        pj = a.varm["moran.scale_pvals"][:, j]
        pj = pj[np.isfinite(pj)]
        assert 0.02 <= np.mean(pj < 0.05) <= 0.08, j
    # sparse genes, too few spots for the bin graph, are tested at the block scales, and uniform there
    ms = a.uns["moran"]["block_min_spots"]
    assert ms[0] < a.uns["moran"]["params"]["min_spots"] and min(ms) >= 10
    sparse_genes = (res["n_spots"] < a.uns["moran"]["params"]["min_spots"]) & res["pval"].notna()
    assert sparse_genes.sum() >= 40 and res.loc[sparse_genes, "pval_p3"].isna().all()
    assert stats.kstest(res.loc[sparse_genes, "pval"], "uniform").pvalue > 0.001


def test_scales_find_more_planted_genes():
    # weak domain genes (3x in their stripe): the bin graph finds 26 of 80, the scales 55 (seed 3)
    a = em.datasets.synthetic_visium_hd(3000, 400, n_domain_genes=80, fold=3.0, seed=3, with_image=False)
    X = sp.csr_matrix(a.layers["counts"], dtype=np.float64)
    X = sp.csr_matrix(sp.diags(1e4 / np.asarray(X.sum(1)).ravel()) @ X)
    X.data = np.log1p(X.data)
    a.layers["lognorm"] = X
    planted = a.var["planted_domain"].to_numpy() >= 0
    base = spatial_svg_moran(a, layer="lognorm", key_added="b")
    multi = spatial_svg_moran(a, layer="lognorm", scales="auto", key_added="m")
    nb, nm = int((base["padj"][planted] < 0.05).sum()), int((multi["padj"][planted] < 0.05).sum())
    assert nm >= 1.5 * nb and nm >= 40, (nb, nm)
    assert int((multi["padj"][~planted] < 0.05).sum()) <= 0.1 * nm + 3
    assert set(multi.loc[planted & (multi["padj"] < 0.05).to_numpy(), "scale"]) <= {1.0, 4.0, 8.0}


def test_scales_bad_input(hd):
    a = hd.copy()
    before = a.var.copy()
    with pytest.raises(em.InvalidInputError, match="scales"):
        spatial_svg_moran(a, layer="lognorm", scales=[0.5])
    with pytest.raises(em.InvalidInputError, match="scales"):
        spatial_svg_moran(a, layer="lognorm", scales="many")
    with pytest.raises(em.InvalidInputError, match="alternative='greater'"):
        spatial_svg_moran(a, layer="lognorm", scales="auto", alternative="two-sided")
    assert a.var.equals(before)


def test_score_test_on_blocks_of_bins(hd):
    """block_size: the score test on summed counts of square blocks of bins (what "auto" does above 20,000 spots)."""
    from experimat.methods.svg import spatial_svg_score

    a = hd.copy()
    planted = a.var["planted_domain"].to_numpy() >= 0
    res = spatial_svg_score(a, layer="counts", block_size=4, n_null=1000, use_gpu=False)
    rec = a.uns["spatialde"]
    assert rec["block_size_used"] == 4.0 and 150 <= rec["n_blocks"] <= 250 and rec["params"]["block_size"] == 4
    assert rec["params"]["seed"] == em.settings.seed
    called = (res["padj"] < 0.05).to_numpy()
    assert called[planted].mean() >= 0.6 and called[~planted].mean() <= 0.05
    assert res["n_spots"].max() <= rec["n_blocks"]
    # below 20,000 spots "auto" keeps the spots themselves
    spatial_svg_score(a, layer="counts", n_null=0, use_gpu=False, key_added="s")
    assert "n_blocks" not in a.uns["s"]
    before = a.var.copy()
    for bad in (0.5, "big"):
        with pytest.raises(em.InvalidInputError, match="block_size"):
            spatial_svg_score(a, layer="counts", block_size=bad, key_added="t")
    assert a.var.equals(before)


def test_score_test_on_blocks_calibrated_on_permuted_genes(hd):
    """Each gene's bins permuted on its own (no spatial pattern left): the block score test's calibrated p-values
    are uniform, overall and for sparse and deep genes apart."""
    from experimat.methods.svg import spatial_svg_score

    a = hd.copy()
    X = sp.csc_matrix(a.layers["counts"])
    rng = np.random.default_rng(5)
    for g in range(X.shape[1]):
        sl = slice(X.indptr[g], X.indptr[g + 1])
        X.indices[sl] = rng.permutation(X.shape[0])[X.indices[sl]]
    a.layers["perm"] = sp.csr_matrix(X)
    res = spatial_svg_score(a, layer="perm", block_size=2, n_null=2000, use_gpu=False, seed=3)
    assert a.uns["spatialde"]["n_blocks"] >= 700
    p = res["pval"].to_numpy()
    ok = np.isfinite(p)
    assert ok.sum() >= 300
    assert stats.kstest(p[ok], "uniform").pvalue > 0.001
    assert 0.02 <= np.mean(p[ok] < 0.05) <= 0.08 and (res["padj"] < 0.05).sum() <= 1
    depth = np.asarray(X.sum(0)).ravel()
    for part in (ok & (depth < np.median(depth[ok])), ok & (depth >= np.median(depth[ok]))):
        assert stats.kstest(p[part], "uniform").pvalue > 0.001


def test_direct_calls_record_the_seed_used():
    """Called directly (not through the runner), each test records the seed it drew its permutations with."""
    from experimat.methods.svg import spatial_svg_gp

    a = em.datasets.synthetic_svg(150, 20, n_spatial=5, seed=2)
    with em.settings.override(seed=123):
        spatial_svg_moran(a, layer="counts", n_perms=5)
        spatial_svg_gp(a, layer="counts", null="permutation", n_null=200, model_search=False, use_gpu=False)
    assert a.uns["moran"]["params"]["seed"] == 123
    assert a.uns["spatialde_gp"]["params"]["seed"] == 123 and a.uns["spatialde_gp"]["params"]["null"] == "permutation"
    spatial_svg_moran(a, layer="counts", seed=9, key_added="m9")
    assert a.uns["m9"]["params"]["seed"] == 9


def test_rerun_into_the_same_key_leaves_no_stale_columns(hd):
    a = hd.copy()
    a.var["moran.fine.I"] = 1.0  # a result stored under a nested key is not this key's
    spatial_svg_moran(a, layer="lognorm", scales=[4])
    assert "moran.scale" in a.var and "moran.scale_pvals" in a.varm
    spatial_svg_moran(a, layer="lognorm")  # rerun without scales, same key
    assert "moran.scale" not in a.var and "moran.scale_pvals" not in a.varm
    assert "moran.fine.I" in a.var and "moran.pval" in a.var
