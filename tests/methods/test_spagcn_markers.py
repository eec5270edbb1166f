"""SpaGCN domain markers and metagenes: gene symbols in the tables, the smallest testable domain, the
rank-sum test's calibration, and the metagene search on data with a known metagene (issue 18)."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import experimat as em
from experimat.methods.domains.spagcn import get_markers, spatial_markers_spagcn, spatial_metagene
from experimat.methods.domains.spagcn._markers import wilcoxon


def _with_symbols(a: ad.AnnData) -> ad.AnnData:
    ids = [f"ENSMUSG{i:011d}" for i in range(a.n_vars)]
    a.var["gene"] = [f"Gene{i}" for i in range(a.n_vars)]
    a.var.loc[a.var_names[-1], "gene"] = np.nan  # a gene without a symbol keeps its id
    a.var_names = ids
    return a


@pytest.fixture(scope="module")
def tissue():
    a = em.datasets.synthetic_domains(600, 4, 40, n_markers_per_domain=5, seed=4)
    a.layers["lognorm"] = np.log1p(np.asarray(a.layers["counts"].toarray() if hasattr(a.layers["counts"], "toarray")
                                              else a.layers["counts"], dtype=float))
    return _with_symbols(a)


# --------------------------------------------------------------------------- gene symbols
def test_marker_table_shows_symbols_with_ids(tissue):
    a = tissue.copy()
    res = spatial_markers_spagcn(a, domain_key="domain", key_added="m")
    assert list(res.columns[:3]) == ["domain", "gene", "gene_id"]
    assert len(res) > 0
    by_id = a.var["gene"].astype("string")
    for _, row in res.iterrows():
        sym = by_id[row["gene_id"]]
        assert row["gene"] == (row["gene_id"] if pd.isna(sym) else sym)
    tab = get_markers(a, markers_key="m", group_name=res["domain"].iloc[0])
    assert tab["gene"].str.startswith("Gene").all() and tab["gene_id"].str.startswith("ENSMUSG").all()


def test_gene_without_symbol_keeps_its_id(tissue):
    a = tissue.copy()
    a.var["gene"] = pd.array([None] * a.n_vars, dtype="string")
    res = spatial_markers_spagcn(a, domain_key="domain", key_added="m")
    assert len(res) and (res["gene"] == res["gene_id"]).all()


def test_get_markers_reads_tables_stored_before_gene_ids(tissue):
    a = tissue.copy()
    spatial_markers_spagcn(a, domain_key="domain", target_domain="0", key_added="m")
    old = a.uns["m"]["0"]
    old["gene"] = old.pop("gene_id")  # the old layout: ids in `gene`, no `gene_id`
    tab = get_markers(a, markers_key="m", group_name="0")
    assert (tab["gene"] == tab["gene_id"]).all() and tab["gene_id"].str.startswith("ENSMUSG").all()


# --------------------------------------------------------------------------- small domains
def test_one_spot_domain_is_skipped_with_a_warning(tissue, caplog):
    a = tissue.copy()
    labels = a.obs["domain"].astype(str).to_numpy().copy()
    labels[7] = "lonely"
    a.obs["dom"] = pd.Categorical(labels)
    with caplog.at_level(logging.WARNING, logger="experimat"):
        res = spatial_markers_spagcn(a, domain_key="dom", key_added="m")
    assert "lonely" not in set(res["domain"])
    assert "lonely" in a.uns["m"]["skipped"] and "min_domain_size=10" in a.uns["m"]["skipped"]["lonely"]
    assert any("lonely" in r.getMessage() and "min_domain_size" in r.getMessage() for r in caplog.records)
    assert get_markers(a, markers_key="m", group_name="lonely").empty
    # the other domains are still tested, and a recomputed domain leaves `skipped`
    assert len(set(res["domain"])) >= 2
    spatial_markers_spagcn(a, domain_key="dom", target_domain="lonely", key_added="m", min_domain_size=2)
    assert "lonely" in a.uns["m"]["skipped"]  # 1 spot < 2
    labels[8] = "lonely"
    a.obs["dom"] = pd.Categorical(labels)
    spatial_markers_spagcn(a, domain_key="dom", target_domain="lonely", key_added="m", min_domain_size=2)
    assert "lonely" not in a.uns["m"]["skipped"]


def test_min_domain_size_is_checked(tissue):
    with pytest.raises(em.ExperimatError, match="min_domain_size"):
        spatial_markers_spagcn(tissue.copy(), domain_key="domain", min_domain_size=1)


def test_one_spot_group_p_values_would_be_invalid():
    """Why the minimum exists: with one spot against 400 and a gene it alone expresses, the tie-corrected normal
    approximation gives p ~ 1e-88, while the exact permutation p-value is 1/400."""
    X = np.zeros((401, 1))
    X[0, 0] = 2.0
    grp = np.zeros(401, dtype=bool)
    grp[0] = True
    _, p = wilcoxon(X, grp)
    assert p[0] < 1e-50  # the approximation; exact: 1/401


@pytest.mark.parametrize("mean", [0.3, 2.0])
def test_rank_sum_calibrated_at_the_minimum_group_size(mean):
    """Random groups of min_domain_size (10) spots among 400 on Poisson genes: the false-positive rate at
    p < 0.05 and p < 0.01 is at the nominal level (about 15,000 null tests each)."""
    rng = np.random.default_rng(0)
    X = np.log1p(rng.poisson(mean, (400, 1500)).astype(float))
    ps = []
    for _ in range(10):
        grp = np.zeros(400, dtype=bool)
        grp[rng.choice(400, 10, replace=False)] = True
        ps.append(wilcoxon(X, grp)[1])
    p = np.concatenate(ps)
    assert (p < 0.05).mean() < 0.06
    assert (p < 0.01).mean() < 0.014


def test_null_domains_get_no_markers():
    """Domains drawn at random (no spatial signal, no expression difference): no gene passes SpaGCN's filters."""
    rng = np.random.default_rng(1)
    n = 400
    xy = np.stack(np.meshgrid(np.arange(20.0), np.arange(20.0)), -1).reshape(-1, 2)
    a = ad.AnnData(np.log1p(rng.poisson(1.5, (n, 300)).astype(float)))
    a.obsm["spatial"] = xy
    a.obs["dom"] = pd.Categorical(rng.choice(["a", "b", "c", "d"], n))
    res = spatial_markers_spagcn(a, domain_key="dom", layer=None, min_fold_change=1.0, min_in_group_fraction=0.0)
    assert len(res) == 0


# --------------------------------------------------------------------------- metagene
def _known_metagene(seed: int = 0) -> ad.AnnData:
    """30 x 20 grid: target domain D (x < 10), R1 and R2 beside it, R3 the rest. GeneA marks D and R1,
    GeneB marks D and R2, GeneC marks R1 only, 30 genes are noise: starting from GeneA, the metagene
    is GeneA + GeneB - GeneC (B separates D from R1 where A is also high; C marks R1)."""
    rng = np.random.default_rng(seed)
    xy = np.stack(np.meshgrid(np.arange(30.0), np.arange(20.0)), -1).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    region = np.where(x < 10, "D", np.where(x < 20, np.where(y < 10, "R1", "R2"), "R3"))
    rate = np.ones((len(xy), 33))
    rate[np.isin(region, ["D", "R1"]), 0] = 8.0
    rate[np.isin(region, ["D", "R2"]), 1] = 8.0
    rate[region == "R1", 2] = 8.0
    a = ad.AnnData(np.log1p(rng.poisson(rate).astype(float)))
    a.var_names = [f"ENSMUSG{i:011d}" for i in range(33)]
    a.var["gene"] = ["GeneA", "GeneB", "GeneC"] + [f"Noise{i}" for i in range(30)]
    a.obsm["spatial"] = xy
    a.obs["region"] = pd.Categorical(region)
    return a


def _auc(score: np.ndarray, in_t: np.ndarray) -> float:
    from scipy.stats import rankdata

    r = rankdata(score)
    n1, n0 = in_t.sum(), (~in_t).sum()
    return float((r[in_t].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metagene_recovers_the_known_formula(seed):
    a = _known_metagene(seed)
    res = spatial_metagene(a, domain_key="region", target_domain="D", start_gene="GeneA", layer=None, key_added="mg")
    assert res["added"][:1] == ["GeneB"] and res["subtracted"][:1] == ["GeneC"]
    assert res["name"].startswith("GeneA+GeneB-GeneC")
    assert res["name_ids"].startswith("ENSMUSG00000000000+ENSMUSG00000000001-ENSMUSG00000000002")
    in_t = (a.obs["region"] == "D").to_numpy()
    start = a.X[:, 0]
    assert _auc(a.obs["mg"].to_numpy(), in_t) > max(0.95, _auc(start, in_t) + 0.05)
    assert a.uns["mg"]["name"] == res["name"] and a.uns["mg"]["stop"] == res["stop"]


def test_metagene_never_repeats_a_gene():
    a = _known_metagene(3)
    res = spatial_metagene(a, domain_key="region", target_domain="D", start_gene="GeneA", layer=None,
                           early_stop=False, max_iter=12, key_added="mg")
    used = [res["start_gene_id"], *res["added_ids"], *res["subtracted_ids"]]
    assert len(used) == len(set(used))
    assert not set(res["added"]) & set(res["subtracted"])


def test_metagene_start_gene_alone_when_it_already_isolates_the_domain():
    a = _known_metagene(4)
    X = a.X.copy()
    X[:, 5] = np.where(a.obs["region"] == "D", 5.0, 0.0)  # a perfect marker: nothing to sharpen
    a.X = X
    res = spatial_metagene(a, domain_key="region", target_domain="D", start_gene="Noise2", layer=None, key_added="mg")
    assert res["name"] == "Noise2" and res["added"] == [] and "fewer than 5" in res["stop"]
