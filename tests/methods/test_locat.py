"""Tests of LOCAT (experimat.methods.locat) and its gene filter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import experimat as em
from experimat import InvalidInputError, MissingSlotError
from experimat.methods.locat import COLUMNS, filter_genes_locat, locat

em.settings.progress = False


def _synthetic(seed: int = 0):
    """Three blobs in 8-D; planted genes:

    - conc_*: expressed in most cells of blob 0 only (concentrated, depleted elsewhere);
    - depl_*: expressed in blobs 0 and 1 but absent from blob 2 (depleted in one region);
    - rand_*: expressed in random cells (no structure);
    - edge genes: all zero, one cell, every cell.
    """
    import anndata as ad

    rng = np.random.default_rng(seed)
    n_per, d = 200, 8
    centers = rng.normal(scale=6.0, size=(3, d))
    blob = np.repeat(np.arange(3), n_per)
    emb = centers[blob] + rng.normal(size=(3 * n_per, d))
    n = emb.shape[0]
    cols, names = [], []
    for i in range(12):
        p = np.where(blob == 0, 0.7, 0.01)
        cols.append(rng.binomial(1, p) * rng.gamma(2.0, 1.0, n))
        names.append(f"conc_{i}")
    for i in range(8):
        p = np.where(blob == 2, 0.0, 0.6)
        cols.append(rng.binomial(1, p) * rng.gamma(2.0, 1.0, n))
        names.append(f"depl_{i}")
    for i in range(40):
        p = rng.uniform(0.05, 0.5)
        cols.append(rng.binomial(1, p, n) * rng.gamma(2.0, 1.0, n))
        names.append(f"rand_{i}")
    one = np.zeros(n)
    one[5] = 3.0
    cols += [np.zeros(n), one, rng.gamma(2.0, 1.0, n) + 0.1]
    names += ["all_zero", "one_cell", "all_cells"]
    X = np.log1p(np.column_stack(cols))
    a = ad.AnnData(X=sp.csr_matrix(X), var=pd.DataFrame(index=names))
    a.var["gene"] = [f"SYM_{g}" for g in names]
    a.obsm["X_pca"] = emb
    a.obs["blob"] = blob
    return a


@pytest.fixture(scope="module")
def synth_table():
    a = _synthetic()
    return a, locat(a, embedding="pca", n_dims=8, seed=0, n_null_genes=120)


@pytest.fixture(scope="module")
def synth_result(synth_table):
    """The synthetic run's table indexed by var names (the table itself shows the symbols)."""
    a, table = synth_table
    return a, table.set_index("gene_id")


def test_table_shows_symbols_with_ids_alongside(synth_table):
    a, table = synth_table
    assert list(table.columns) == [*COLUMNS, "gene_id"]
    assert table.index.name == "gene" and set(table.index) == {f"SYM_{g}" for g in a.var_names}
    assert table.loc["SYM_conc_0", "gene_id"] == "conc_0"
    assert table.loc["SYM_conc_0", "gene_name"] == "SYM_conc_0"
    # repeated and missing symbols: unique index, ids alongside; no symbol column: var names, 15 columns
    b = a.copy()
    b.var["gene"] = ["DUP", "DUP"] + [None] + list(b.var["gene"][3:])
    t = locat(b, n_dims=8, seed=0, n_null_genes=40, n_atoms=64)
    assert t.index.is_unique and {"DUP", "DUP-1", "conc_2"} <= set(t.index)
    assert t.loc["conc_2", "gene_id"] == "conc_2"
    np.testing.assert_allclose(b.var.loc[t["gene_id"], "locat.zscore"].to_numpy(float), t["zscore"].to_numpy(float))
    c = a.copy()
    del c.var["gene"]
    t = locat(c, n_dims=8, seed=0, n_null_genes=40, n_atoms=64)
    assert list(t.columns) == list(COLUMNS) and set(t.index) == set(c.var_names)


def test_columns_sorting_and_slots(synth_result):
    a, df = synth_result
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == a.n_vars and set(df.index) == set(a.var_names)
    tested = df[np.isfinite(df["pval"])]
    assert np.all(np.diff(tested["pval"].to_numpy()) >= 0)
    assert df.loc["conc_0", "gene_name"] == "SYM_conc_0"
    for col in COLUMNS:
        assert f"locat.{col}" in a.var.columns
    np.testing.assert_allclose(a.var.loc[df.index, "locat.zscore"].to_numpy(float), df["zscore"].to_numpy(float))
    assert a.uns["locat"]["params"]["n_dims"] == 8
    assert a.uns["locat"]["n_background_components"] >= 2
    assert ((df["pval"] < 0.05) == df["is_joint_sig"]).all()


def test_planted_concentrated_and_depleted_genes(synth_result):
    _, df = synth_result
    conc = df.loc[[f"conc_{i}" for i in range(12)]]
    rand = df.loc[[f"rand_{i}" for i in range(40)]]
    depl = df.loc[[f"depl_{i}" for i in range(8)]]
    assert conc["is_conc_sig"].mean() >= 0.9
    assert conc["is_joint_sig"].mean() >= 0.9
    assert conc["zscore"].median() > rand["zscore"].max()
    assert depl["is_depl_sig"].mean() >= 0.75
    assert conc["max_deficit"].min() > 0.2
    assert rand["is_conc_sig"].mean() <= 0.15
    assert rand["is_depl_sig"].mean() <= 0.15
    assert rand["is_joint_sig"].mean() <= 0.15
    # concentrated genes come first in the sorted table
    assert set(df.index[:12]) >= set(conc.index[conc["pval"] < 1e-6])


def test_atoms_agree_with_exact_em(synth_result):
    """EM on k-means atoms (the default) finds what EM on every cell finds."""
    from scipy.stats import spearmanr

    a, df = synth_result
    assert a.uns["locat"]["params"]["n_atoms"] == 256 and a.n_obs > 256  # the atoms path ran
    exact = locat(a.copy(), n_dims=8, seed=0, n_null_genes=120, n_atoms=None).set_index("gene_id")
    z_atoms = df["zscore"].reindex(a.var_names).to_numpy(float)
    z_exact = exact["zscore"].reindex(a.var_names).to_numpy(float)
    ok = np.isfinite(z_atoms) & np.isfinite(z_exact)
    assert ok.sum() == 60
    # the planted concentrated genes lead both rankings; the random genes' z are noise in both
    conc = a.var_names.str.startswith("conc_")
    assert spearmanr(z_atoms[ok], z_exact[ok]).statistic > 0.4
    assert np.min(z_atoms[conc]) > np.median(z_exact[~conc & ok])
    assert len(set(df.index[:12]) & set(exact.index[:12])) >= 10
    for res in (exact, df):
        assert res["is_conc_sig"].reindex(a.var_names).to_numpy()[conc].mean() >= 0.9


def test_background_weights_checked(synth_result):
    a, _ = synth_result
    with pytest.raises(InvalidInputError, match="background_weights"):
        locat(a.copy(), background_weights=np.ones(3))
    with pytest.raises(InvalidInputError, match="background_weights"):
        locat(a.copy(), background_weights="no_such_column")


def test_edge_genes_are_nan_rows_with_reason(synth_result):
    a, df = synth_result
    for g, why in [("all_zero", "not expressed"), ("one_cell", "fewer than"), ("all_cells", "more than")]:
        assert np.isnan(df.loc[g, "pval"]) and not df.loc[g, "is_joint_sig"]
        assert why in a.var.loc[g, "locat.reason"]
    assert list(df.index[-3:]) != []  # untested genes sort last
    assert df["pval"].iloc[-3:].isna().all()


def test_bad_inputs():
    a = _synthetic()
    with pytest.raises(InvalidInputError, match="n_dims"):
        locat(a, n_dims=20)
    with pytest.raises(InvalidInputError, match="knn_mode"):
        locat(a, knn_mode="weird")
    b = a.copy()
    b.obsm["X_pca"][3, 1] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        locat(b)
    c = a.copy()
    del c.obsm["X_pca"]
    with pytest.raises(InvalidInputError, match="pca"):
        locat(c)
    with pytest.raises(MissingSlotError, match="spatial"):
        locat(a, embedding="spatial", n_dims=2)
    with pytest.raises(MissingSlotError, match="layer"):
        locat(a, layer="counts")
    with pytest.raises(InvalidInputError, match="rc_lambda"):
        locat(a, rc_lambda_values=[])
    for bad in (-1.0, float("nan"), "1"):
        with pytest.raises(InvalidInputError, match="covariance_prior"):
            locat(a, covariance_prior=bad)


def _permuted_pbmc(n_genes: int | None, seed: int = 1):
    """pbmc68k_reduced (bundled with scanpy, log-normalised raw), every gene permuted across cells."""
    sc = pytest.importorskip("scanpy")
    full = sc.datasets.pbmc68k_reduced()
    a = full.raw.to_adata()
    a.obsm["X_pca"] = full.obsm["X_pca"]
    if n_genes is not None:
        a = a[:, np.linspace(0, a.n_vars - 1, n_genes).astype(int)].copy()
    rng = np.random.default_rng(seed)
    X = a.X.toarray()
    for j in range(X.shape[1]):
        X[:, j] = X[rng.permutation(X.shape[0]), j]
    a.X = sp.csr_matrix(X)
    return a


def _fractions(df):
    tested = df[np.isfinite(df["pval"])]
    return len(tested), {c: tested[c].mean() for c in ("is_conc_sig", "is_depl_sig", "is_joint_sig")}


def test_permuted_real_data_is_calibrated_subset():
    a = _permuted_pbmc(250)
    n_tested, frac = _fractions(locat(a, seed=0))  # the default 800 pseudo-genes: fewer give a noisier null
    assert n_tested > 230
    # a rate over ~245 genes has a standard error of ~0.014 at 0.05: 0.08 is 0.05 + 2 standard errors
    # (seeds 0-3 gave 0.061 / 0.065 / 0.037 / 0.065 for concentration; a miscalibrated null, e.g. the
    # reference's, gives 0.15)
    for col, f in frac.items():
        assert f <= 0.08, (col, f)


@pytest.mark.slow
def test_permuted_real_data_is_calibrated_at_every_expression_level():
    """Two permutations of all pbmc68k_reduced genes, pooled (~1,500 tests): every sextile of the number of
    expressing cells is calibrated, not only the total (a null smoothed over 0.3 decades of the expressing
    fraction gave 10-17 % in the 20-80-cell bands and < 1 % in the middle ones)."""
    tables = [locat(_permuted_pbmc(None, seed=s), seed=s) for s in (1, 2)]
    tested = pd.concat([t[np.isfinite(t["pval"])] for t in tables])
    assert len(tested) > 1400
    for col, f in _fractions(tested)[1].items():
        assert f <= 0.06, (col, f)
    m = tested["sample_size"].to_numpy()
    edges = np.quantile(m, np.linspace(0, 1, 7))
    band = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, 5)
    rates = [tested["is_conc_sig"].to_numpy()[band == b].mean() for b in range(6)]
    # ~250 tests per band: 0.08 is 0.05 + ~2 standard errors
    assert max(rates) <= 0.08, (edges, rates)


def test_filter_genes_locat():
    import anndata as ad

    rng = np.random.default_rng(0)
    X = rng.binomial(1, 0.3, size=(300, 8)).astype(float)
    X[:, 6] = 0
    X[:2, 6] = 1  # in 2/300 cells < 1 %
    names = ["Gm12345", "1700001C19Rik", "Linc-ror", "Rpl13-ps3", "Actb", "Sox2", "Rare1", "Pvalb"]
    a = ad.AnnData(X=sp.csr_matrix(X), var=pd.DataFrame(index=[f"ENSMUSG{i}" for i in range(8)]))
    a.var["gene"] = names
    out = em.pp.filter_genes_locat(a)
    assert list(out.var["gene"]) == ["Actb", "Sox2", "Pvalb"]
    assert out.uns["filter_genes_locat"]["n_pseudo_removed"] == 4
    assert out.uns["filter_genes_locat"]["n_rare_removed"] == 1
    assert a.n_vars == 8  # input untouched
    assert filter_genes_locat(a, patterns=(), min_fraction=0.0).n_vars == 8
    with pytest.raises(InvalidInputError):
        filter_genes_locat(a, min_fraction=1.5)


def test_background_fit_numpy_matches_jax():
    """The NumPy background fit (host) and the JAX per-gene fit are one algorithm: same seeds, same data
    (two blobs, every point its own atom) -> the same mixture up to float32 rounding."""
    import jax
    import jax.numpy as jnp

    from experimat.methods.locat import _gmm

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-3.0, 1.0, (60, 2)), rng.normal(3.0, 0.5, (40, 2))])
    s, scat = np.ones(x.shape[0]), np.zeros((x.shape[0], 2, 2))
    u = np.stack([x[[0, 70, 5]], x[[3, 0, 0]]])  # initial centres: one in each blob / the first blob
    active = np.array([[True, True, False], [True, False, False]])
    pi, mu, chol = _gmm.fit_grouped_batch_np(u, s, x, scat, active, 1e-6, max_iter=100, tol=1e-8)
    order = np.argsort(mu[0, :2, 0])
    np.testing.assert_allclose(pi[0, order], [0.6, 0.4], atol=1e-6)
    np.testing.assert_allclose(mu[0, order], [x[:60].mean(0), x[60:].mean(0)], atol=1e-6)
    np.testing.assert_allclose(mu[1, 0], x.mean(0), atol=1e-6)
    assert pi[0, 2] == 0 and pi[1, 1:].sum() == 0

    def fit(u_, act):
        return _gmm.fit_gmm_grouped(
            u_, jnp.asarray(s), jnp.asarray(x), jnp.asarray(scat), act, 1e-6, max_iter=100, tol=1e-8
        )

    pj, mj, cj = jax.jit(jax.vmap(fit))(jnp.asarray(u, jnp.float32), jnp.asarray(active))
    np.testing.assert_allclose(np.asarray(pj), pi, atol=1e-4)
    np.testing.assert_allclose(np.asarray(mj)[active], mu[active], atol=1e-3)
    np.testing.assert_allclose(np.asarray(cj)[active], chol[active], atol=1e-3)
    lp = _gmm.batch_logpdf_np(x, pi, mu, chol, active)
    np.testing.assert_allclose(
        np.asarray(_gmm.batch_logpdf(jnp.asarray(x), pj, mj, cj, jnp.asarray(active))), lp, atol=1e-3
    )


def test_pooled_fits_match_one_fit_at_a_time():
    """fit_gmm_pool (a few slots, each taking the next fit when its own has converged) runs the same EM
    steps as fit_gmm_grouped on each fit alone: fits that need few and many steps, and ones stopped by
    max_iter, in every pool size."""
    import jax
    import jax.numpy as jnp

    from experimat.methods.locat import _gmm

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(c, 0.6, (40, 2)) for c in ([0, 0], [3, 0], [0, 3])])
    b, k = 11, 3
    s = rng.gamma(0.7, 1.0, (b, x.shape[0])) * (rng.random((b, x.shape[0])) < 0.7)
    mean = np.broadcast_to(x, (b, *x.shape)).astype(np.float32)
    scat = np.zeros((b, x.shape[0], 2, 2), np.float32)
    mu0 = x[rng.integers(0, x.shape[0], (b, k))].astype(np.float32)
    active = np.arange(k)[None, :] < rng.integers(1, k + 1, b)[:, None]
    args = (jnp.asarray(mu0), jnp.asarray(s, jnp.float32), jnp.asarray(mean), jnp.asarray(scat), jnp.asarray(active))
    for max_iter in (4, 60):
        one = jax.vmap(lambda *a, m=max_iter: _gmm.fit_gmm_grouped(*a, 1e-4, max_iter=m, tol=1e-5))(*args)
        for pool in (1, 3, b):
            fit = jax.jit(lambda *a, p=pool, m=max_iter: _gmm.fit_gmm_pool(*a, 1e-4, pool=p, max_iter=m, tol=1e-5))
            for got, want in zip(fit(*args), one, strict=True):
                np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_covariance_prior_is_the_inverse_wishart_posterior_mean():
    """With ``prior_var > 0`` a component's covariance is ``(n_k S_k + prior_var I) / (n_k + 1)`` (``n_k``: its
    share of ``n_eff``): a component of 5 points is pulled most of the way to the prior, one of 400 keeps its
    own covariance; ``prior_var = 0`` is maximum likelihood."""
    import jax
    import jax.numpy as jnp

    from experimat.methods.locat import _gmm

    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 0.1, (400, 3))
    fit = jax.jit(lambda s, n_eff, prior: _gmm.fit_gmm_grouped(
        jnp.asarray(x[:1]), s, jnp.asarray(x), jnp.zeros((400, 3, 3)), jnp.array([True]), 1e-6, n_eff, prior,
        max_iter=5, tol=1e-10,
    ))  # fmt: skip
    for n in (5, 400):
        s = (np.arange(400) < n).astype(np.float64)  # the first n points (weight 0: padding)
        sample = np.cov(x[:n].T, bias=True)
        for prior, want in ((0.0, sample), (0.8, (n * sample + 0.8 * np.eye(3)) / (n + 1))):
            _pi, mu, chol = fit(jnp.asarray(s), float(n), prior)
            cov = np.asarray(chol[0] @ chol[0].T, dtype=np.float64)
            np.testing.assert_allclose(cov, want + 1e-6 * np.eye(3), rtol=1e-3, atol=1e-6)
            np.testing.assert_allclose(np.asarray(mu[0]), x[:n].mean(0), atol=1e-5)
        ratio = np.trace(cov) / np.trace(sample)  # the prior's fit against the sample covariance
        assert ratio > 5 if n == 5 else ratio < 1.3
    # the pooled fits apply the same prior, fit by fit
    n_eff, prior = jnp.asarray([5.0, 400.0, 50.0]), jnp.asarray([0.8, 0.8, 0.0])
    s3 = jnp.asarray((np.arange(400)[None, :] < np.array([5, 400, 50])[:, None]).astype(np.float32))
    args = (
        jnp.asarray(np.broadcast_to(x[:1], (3, 1, 3)), jnp.float32),
        s3,
        jnp.asarray(np.broadcast_to(x, (3, 400, 3)), jnp.float32),
        jnp.zeros((3, 400, 3, 3)),
        jnp.ones((3, 1), bool),
    )
    one = jax.vmap(lambda *a: _gmm.fit_gmm_grouped(*a[:5], 1e-6, *a[5:], max_iter=5, tol=1e-10))(*args, n_eff, prior)
    pooled = jax.jit(lambda *a: _gmm.fit_gmm_pool(*a[:5], 1e-6, *a[5:], pool=2, max_iter=5, tol=1e-10))(
        *args, n_eff, prior
    )
    for got, want in zip(pooled, one, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)


def test_same_genes_on_every_run():
    """Runs with different seeds agree: the atoms, the background and the EM starts are deterministic;
    only the null pseudo-genes and the depletion halvings are random (the reference, and experimat
    with random k-means++ starts, agree at rho ~0.6-0.7 here)."""
    from scipy.stats import spearmanr

    sc = pytest.importorskip("scanpy")
    full = sc.datasets.pbmc68k_reduced()
    a = full.raw.to_adata()
    a.obsm["X_pca"] = full.obsm["X_pca"]
    a = a[:, np.linspace(0, a.n_vars - 1, 200).astype(int)].copy()
    r0 = locat(a.copy(), seed=0)
    r1 = locat(a.copy(), seed=1).reindex(r0.index)
    ok = np.isfinite(r0["zscore"]) & np.isfinite(r1["zscore"])
    assert ok.sum() > 180
    assert spearmanr(r0.loc[ok, "zscore"], r1.loc[ok, "zscore"]).statistic >= 0.9
    s0, s1 = set(r0.index[r0["is_conc_sig"]]), set(r1.index[r1["is_conc_sig"]])
    assert len(s0) >= 20 and len(s0 & s1) / len(s0 | s1) >= 0.8


def test_more_checks(synth_table):
    a, _ = synth_table
    with pytest.raises(InvalidInputError, match="n_splits"):
        locat(a.copy(), n_splits=0)
    with pytest.raises(InvalidInputError, match="n_bootstrap_inits"):
        locat(a.copy(), n_bootstrap_inits=0)


def test_farthest_first_starts():
    from experimat.methods.locat._background import farthest_first_starts

    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(c, 0.2, (30, 2)) for c in ([0, 0], [4, 0], [0, 4])])
    w = np.ones(x.shape[0])
    starts = farthest_first_starts(x, w, 3, 4)
    assert starts.shape == (4, 3, 2)
    blob = lambda c: np.argmin(np.sum((np.array([[0, 0], [4, 0], [0, 4]]) - c) ** 2, axis=1))  # noqa: E731
    for st in starts:  # every start puts one centre in each blob
        assert sorted(blob(c) for c in st) == [0, 1, 2]
    assert len({tuple(np.round(st[0], 6)) for st in starts}) > 1  # different first centres
    np.testing.assert_array_equal(starts, farthest_first_starts(x, w, 3, 4))


def test_principal_splits_are_deterministic_and_order_free():
    """The deterministic start of the atoms and the background: splits the heaviest-spread cluster along
    its principal axis; permuting the points permutes the labels with them (no seed, no order effect)."""
    from experimat.methods.locat._prep import principal_splits

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.3, (50, 2)) for c in ([0, 0], [5, 0], [0, 5], [5, 5])])
    w = rng.uniform(0.5, 1.5, x.shape[0])
    levels = principal_splits(x, w, 4, levels=True)
    assert levels.shape == (4, 200) and (levels[0] == 0).all()
    lab = levels[-1]
    truth = np.repeat(np.arange(4), 50)
    assert all(np.unique(lab[truth == t]).size == 1 for t in range(4)) and np.unique(lab).size == 4
    perm = rng.permutation(x.shape[0])
    lab_p = principal_splits(x[perm], w[perm], 4)
    pairs = set(zip(lab[perm].tolist(), lab_p.tolist(), strict=True))
    assert len(pairs) == 4  # the same partition
    # nested: each level refines the previous one
    for j in range(1, 4):
        assert all(np.unique(levels[j - 1][levels[j] == c]).size == 1 for c in np.unique(levels[j]))
    # fewer than two points of positive weight: nothing to split
    single = np.zeros(x.shape[0])
    single[0] = 1.0
    assert (principal_splits(x, single, 4) == 0).all()


def test_hypergeom_lower_tail_matches_scipy():
    from scipy.stats import hypergeom

    from experimat.methods.locat._genes import hypergeom_lower_tail

    rng = np.random.default_rng(0)
    for total in (20, 700, 5000):
        draws, good = rng.integers(1, total, 2000), rng.integers(0, total, 2000)
        k = np.floor(draws * good / total * rng.uniform(0, 1.5, 2000)) - 1  # -1: below the support too
        ours, ref = hypergeom_lower_tail(k, total, good, draws), hypergeom.cdf(k, total, good, draws)
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_lloyd_matches_scikit_learn_kmeans():
    from sklearn.cluster import KMeans

    from experimat.methods.locat._prep import cluster_means, lloyd, principal_splits

    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(300, 4)), rng.normal(size=(100, 4)) + 4.0])
    for k in (8, 64):
        init = cluster_means(x, np.ones(len(x)), principal_splits(x, np.ones(len(x)), k), k)
        ref = KMeans(n_clusters=k, init=init, n_init=1, max_iter=100).fit(x).labels_
        np.testing.assert_array_equal(lloyd(x, init), ref)
    # an initial centre far from every point empties its cluster: it moves to the point farthest from its centre
    init = np.concatenate([init[:7], [[50.0, 50.0, 50.0, 50.0]]])
    ref = KMeans(n_clusters=8, init=init, n_init=1, max_iter=100).fit(x).labels_
    np.testing.assert_array_equal(lloyd(x, init), ref)


def test_background_atoms_split_coarse_atoms_only():
    """The background is fitted on about 3 cells per atom: coarse k-means atoms are split by principal
    directions into up to 4 pieces (each piece inside one atom, centres = the pieces' means); atoms already
    that fine are used as they are (the same objects: no change for small data)."""
    from experimat.methods.locat._prep import atoms, background_atoms

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 3))
    atom, centres = atoms(x, 100)  # 12 cells per atom -> 4 pieces
    new, cen = background_atoms(x, atom, centres)
    assert 300 < cen.shape[0] <= 400 and np.unique(new).size == cen.shape[0]
    for j in range(cen.shape[0]):  # a refinement of the atoms
        assert np.unique(atom[new == j]).size == 1
    np.testing.assert_allclose(cen[new], np.stack([x[new == j].mean(0) for j in range(cen.shape[0])])[new])
    atom, centres = atoms(x, 400)  # 3 cells per atom: kept
    new, cen = background_atoms(x, atom, centres)
    assert new is atom and cen is centres


def test_background_is_fitted_on_split_atoms_when_atoms_are_coarse():
    """600 cells on 50 k-means atoms (12 cells each): the background is fitted on the split atoms (up to 200);
    on 256 atoms (2.3 cells each) on the k-means atoms themselves."""
    b = _synthetic()
    locat(b, embedding="pca", n_dims=8, seed=0, n_null_genes=120, n_atoms=50)
    assert 150 < b.uns["locat"]["n_background_atoms"] <= 200
    c = _synthetic()
    locat(c, embedding="pca", n_dims=8, seed=0, n_null_genes=120)
    assert c.uns["locat"]["n_background_atoms"] <= 256


def test_max_gene_components_caps_the_genes_mixtures(synth_table):
    a, table = synth_table
    assert a.uns["locat"]["n_background_atoms"] >= 1
    assert table["K_components"].max() <= 4
    b = _synthetic()
    one = locat(b, embedding="pca", n_dims=8, seed=0, n_null_genes=120, max_gene_components=1)
    tested = one["K_components"].dropna()
    assert len(tested) and (tested == 1).all()
    assert (table["K_components"].dropna() > 1).any()  # the cap binds: the default run has larger mixtures
    with pytest.raises(InvalidInputError, match="max_gene_components"):
        locat(b, max_gene_components=0)
