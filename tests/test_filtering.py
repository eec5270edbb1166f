"""Cell/gene filtering through the accessors (issue 18): scanpy's rules, refusal before any change, serial == n_jobs=2."""

import numpy as np
import pytest
from tests.conftest import make_synthetic_experiment

import experimat as em


def _counts(a):
    X = a.layers["counts"]
    return X.toarray() if hasattr(X, "toarray") else np.asarray(X)


def test_filter_cells_matches_scanpy_and_subsets_every_slot(tmp_path):
    import anndata as ad
    import scanpy as sc

    expm = make_synthetic_experiment(n_samples=2, project=tmp_path / "p")
    a0 = expm.spatial_bin["s0"]
    thr = float(np.quantile(_counts(a0).sum(1), 0.3))
    ref = ad.AnnData(_counts(a0).astype(np.float32), obs=a0.obs[[]].copy())
    sc.pp.filter_cells(ref, min_counts=thr)
    sc.pp.filter_cells(ref, min_genes=5)
    n_spatial = a0.obsm["spatial"].shape[0]
    out = expm.spatial_bin.filter_cells(min_counts=thr, min_genes=5, run_on_samples=["s0"])
    s0 = expm.spatial_bin["s0"]
    assert list(s0.obs_names) == list(ref.obs_names)
    assert 0 < s0.n_obs < n_spatial
    assert s0.obsm["spatial"].shape[0] == s0.n_obs and s0.layers["counts"].shape[0] == s0.n_obs
    assert int(out["s0"].sum()) == s0.n_obs and s0.uns["filter_cells"]["n_removed"] == n_spatial - s0.n_obs
    assert expm.spatial_bin["s1"].n_obs == n_spatial  # other samples untouched
    expm.close()
    back = em.load_experiment(tmp_path / "p", mode="r")
    assert list(back.spatial_bin["s0"].obs_names) == list(ref.obs_names)


def test_filter_genes_matches_scanpy():
    import anndata as ad
    import scanpy as sc

    expm = make_synthetic_experiment(n_samples=1)
    a0 = expm.spatial_bin["s0"]
    n_genes = a0.n_vars
    ref = ad.AnnData(_counts(a0).astype(np.float32), var=a0.var[[]].copy())
    X = _counts(a0)
    min_cells = int(np.quantile((X > 0).sum(0), 0.2))
    min_counts = float(np.quantile(X.sum(0), 0.3))
    sc.pp.filter_genes(ref, min_cells=min_cells)
    sc.pp.filter_genes(ref, min_counts=min_counts)
    expm.spatial_bin.filter_genes(min_cells=min_cells, min_counts=min_counts, run_on_samples=True)
    got = expm.spatial_bin["s0"]
    assert 0 < got.n_vars < n_genes
    assert list(got.var_names) == list(ref.var_names)
    assert got.layers["counts"].shape[1] == got.n_vars


def test_max_pct_mt():
    expm = make_synthetic_experiment(n_samples=1)
    a = expm.spatial_bin["s0"]
    genes = a.var["gene"].astype(str).to_numpy().copy()
    genes[0] = "mt-Co1"  # symbols (var['gene']) decide, as in qc_metrics
    a.var["gene"] = genes
    X = _counts(a)
    pct = 100 * X[:, 0] / X.sum(1)
    thr = float(np.median(pct))
    expm.spatial_bin.filter_cells(max_pct_mt=thr, run_on_samples=True)
    assert expm.spatial_bin["s0"].n_obs == int((pct <= thr).sum())


def test_filter_to_nothing_refused_before_any_change(tmp_path):
    expm = make_synthetic_experiment(n_samples=3, project=tmp_path / "p")
    shapes = {s: expm.spatial_bin[s].shape for s in expm.spatial_bin.samples}
    # s2 (the last sample, with low counts) would lose every spot: the call is refused, s0 and s1 stay as they were
    s2 = expm.spatial_bin["s2"]
    s2.layers["counts"] = (s2.layers["counts"] // 20).astype(s2.layers["counts"].dtype)
    thr = float(min(_counts(expm.spatial_bin[s]).sum(1).max() for s in ("s0", "s1")))
    assert _counts(s2).sum(1).max() < thr
    with pytest.raises(em.InvalidInputError, match="would remove all .* observations of sample 's2'.*Loosen"):
        expm.spatial_bin.filter_cells(min_counts=thr, run_on_samples=True)
    with pytest.raises(em.InvalidInputError, match="would remove all .* genes"):
        expm.spatial_bin.filter_genes(min_cells=10**6, run_on_samples=True)
    with pytest.raises(em.InvalidInputError, match="at least one threshold"):
        expm.spatial_bin.filter_cells(run_on_samples=True)
    assert {s: expm.spatial_bin[s].shape for s in expm.spatial_bin.samples} == shapes
    expm.close()
    back = em.load_experiment(tmp_path / "p", mode="r")
    assert {s: back.spatial_bin[s].shape for s in back.spatial_bin.samples} == shapes
    assert "filter_cells" not in set(back.history()["method"])


def test_serial_and_two_workers_equal(tmp_path):
    ser = make_synthetic_experiment(n_samples=2, project=tmp_path / "a")
    par = make_synthetic_experiment(n_samples=2, project=tmp_path / "b")
    thr = float(np.quantile(_counts(ser.spatial_bin["s0"]).sum(1), 0.4))
    r1 = ser.spatial_bin.filter_cells(min_counts=thr, run_on_samples=True)
    r2 = par.spatial_bin.filter_cells(min_counts=thr, run_on_samples=True, n_jobs=2)
    n_genes = ser.spatial_bin["s0"].n_vars
    gthr = float(np.median(_counts(ser.spatial_bin["s0"]).sum(0)))
    ser.spatial_bin.filter_genes(min_counts=gthr, run_on_samples=True)
    par.spatial_bin.filter_genes(min_counts=gthr, run_on_samples=True, n_jobs=2)
    for s in ("s0", "s1"):
        assert r1[s].equals(r2[s])
        a, b = ser.spatial_bin[s], par.spatial_bin[s]
        assert a.shape == b.shape and a.n_obs < 120 and a.n_vars < n_genes
        assert list(a.obs_names) == list(b.obs_names) and list(a.var_names) == list(b.var_names)
        assert np.array_equal(_counts(a), _counts(b))
        assert np.array_equal(a.obsm["spatial"], b.obsm["spatial"])
        assert a.uns["filter_cells"]["n_kept"] == b.uns["filter_cells"]["n_kept"]
    ser.close()
    par.close()
    back = em.load_experiment(tmp_path / "b", mode="r")
    assert back.spatial_bin["s1"].shape == ser.spatial_bin["s1"].shape
