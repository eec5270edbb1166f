"""SpaGCN domains: detection (+ histology), refinement, integration, markers, metagene."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from sklearn.metrics import adjusted_rand_score

import experimat as em
from experimat._errors import InvalidInputError, KeyNotFoundError, MissingSlotError
from experimat.methods.domains.spagcn import (
    get_markers,
    integrate_domains_spagcn,
    spatial_detect_domains_spagcn,
    spatial_markers_spagcn,
    spatial_metagene,
)
from experimat.methods.domains.spagcn._graph import refine_labels, search_l

DATA = Path(__file__).parent.parent / "data" / "spagcn"


def _lognorm(a):
    a.layers["lognorm"] = sc.pp.log1p(sc.pp.normalize_total(a, target_sum=1e4, inplace=False)["X"])
    return a


@pytest.fixture(scope="module")
def tissue():
    """1,000 spots, 5 stripe domains, with a hires image coloured by domain; domains detected once."""
    em.settings.progress = False
    a = _lognorm(em.datasets.synthetic_domains(1000, 5, with_image=True, seed=1))
    spatial_detect_domains_spagcn(a, n_clusters=5, seed=3, use_gpu=False)
    return a


def _ari(a, b):
    return adjusted_rand_score(np.asarray(a).astype(str), np.asarray(b).astype(str))


# --------------------------------------------------------------------------- detection
def test_detect_recovers_domains(tissue):
    obs = tissue.obs
    assert isinstance(obs["spagcn.domain"].dtype, pd.CategoricalDtype)
    assert isinstance(obs["spagcn.refined"].dtype, pd.CategoricalDtype)
    assert obs["spagcn.domain"].nunique() == 5
    assert _ari(obs["domain"], obs["spagcn.domain"]) >= 0.8
    assert _ari(obs["domain"], obs["spagcn.refined"]) >= 0.8
    params = tissue.uns["spagcn.domain"]["params"]
    assert params["n_clusters"] == 5 and params["seed"] == 3
    assert tissue.uns["spagcn.domain"]["l"] > 0


def test_detect_voronoi_kmeans_and_square_refinement():
    a = _lognorm(em.datasets.synthetic_domains(600, 4, layout="voronoi", seed=2))
    df = spatial_detect_domains_spagcn(
        a,
        n_clusters=4,
        init="kmeans",
        refine_shape="square",
        seed=0,
        use_gpu=False,
        key_added="d",
        refined_key_added="r",
    )
    assert list(df.columns) == ["d", "r"]
    assert _ari(a.obs["domain"], df["r"]) >= 0.8


def test_detect_with_histology(tissue):
    a = tissue.copy()
    df = spatial_detect_domains_spagcn(
        a,
        n_clusters=5,
        histology=True,
        channels=["hires/r", "hires/g", "hires/b"],
        seed=3,
        use_gpu=False,
        key_added="h",
        refined_key_added="h.refined",
    )
    assert _ari(a.obs["domain"], df["h.refined"]) >= 0.8
    # the colour term lengthens inter-domain edges, so the Gaussian width differs from the xy-only graph
    assert a.uns["h"]["l"] != pytest.approx(tissue.uns["spagcn.domain"]["l"])


def test_seeded_cpu_runs_are_reproducible(tissue):
    a = tissue.copy()
    spatial_detect_domains_spagcn(
        a, n_clusters=5, seed=3, use_gpu=False, key_added="again", refined_key_added="again.r"
    )
    np.testing.assert_array_equal(a.obs["again"].to_numpy(), tissue.obs["spagcn.domain"].to_numpy())
    np.testing.assert_array_equal(a.obs["again.r"].to_numpy(), tissue.obs["spagcn.refined"].to_numpy())


def test_refinement_majority_vote():
    xy, _ = em.datasets.visium_hex_grid(100)
    labels = np.array(["a"] * 100, dtype=object)
    labels[55] = "b"  # an isolated spot surrounded by 'a'
    out = refine_labels(xy, labels, "hexagon")
    assert (out == "a").all()
    labels[:50] = "b"  # a large block is kept
    out = refine_labels(xy, labels, "hexagon")
    assert (out[:40] == "b").all()


def test_search_l_hits_p():
    xy, _ = em.datasets.visium_hex_grid(400)
    width = search_l(xy, 0.5)
    d2 = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    p = np.exp(-d2 / (2 * width * width)).sum(1).mean() - 1
    assert abs(p - 0.5) <= 0.01


# --------------------------------------------------------------------------- integration
def test_integrate_two_samples():
    # two sections cut from one tissue (top and bottom halves; both cross all 4 stripe domains)
    whole = _lognorm(em.datasets.synthetic_domains(1200, 4, seed=10))
    top = whole.obsm["spatial"][:, 1] < np.median(whole.obsm["spatial"][:, 1])
    samples = {"s0": whole[top].copy(), "s1": whole[~top].copy()}
    samples["s1"].obsm["spatial"] = samples["s1"].obsm["spatial"] - samples["s1"].obsm["spatial"].min(0)
    out = integrate_domains_spagcn(samples, n_clusters=4, max_epochs=200, seed=100, use_gpu=False)
    assert set(out) == {"s0", "s1"}
    cats = [list(a.obs["integrated"].cat.categories) for a in samples.values()]
    assert cats[0] == cats[1]
    both = pd.concat([a.obs[["domain", "integrated"]] for a in samples.values()])
    # the same truth domain must get the same label in both samples
    assert _ari(both["domain"], both["integrated"]) >= 0.8
    assert samples["s1"].uns["integrated"]["params"]["n_clusters"] == 4
    assert samples["s0"].uns["integrated"]["samples"] == ["s0", "s1"]


# --------------------------------------------------------------------------- markers and metagene
def test_markers_recover_truth(tissue):
    a = tissue
    res = spatial_markers_spagcn(a, domain_key="domain", layer="lognorm", key_added="m")
    assert list(res.columns) == ["domain", "gene", "gene_id", "pct.in", "pct.out", "fc", "q", "log10.q"]
    truth = a.var["marker_of"]
    found = 0
    for d in a.obs["domain"].cat.categories:
        tab = get_markers(a, markers_key="m", group_name=d)
        assert list(tab.columns) == ["gene", "gene_id", "pct.in", "pct.out", "fc", "q", "log10.q"]
        assert (truth.loc[tab["gene_id"]] == d).all(), f"domain {d}: false markers {list(tab['gene_id'])}"
        assert (tab["pct.in"] > 0.8).all() and (tab["fc"] > 1.5).all() and (tab["q"] < 0.05).all()
        np.testing.assert_allclose(tab["log10.q"], -np.log10(tab["q"]))  # positive, as exprmat's tables
        assert (tab["log10.q"] >= 0).all()
        found += len(tab)
    assert found >= 0.5 * (truth != "none").sum()
    # the stored tables are plain column dicts (h5ad-serialisable)
    assert set(a.uns["m"]["0"]) == {"gene", "gene_id", "pct.in", "pct.out", "fc", "q", "log10.q"}
    assert len(a.uns["m"]["neighbours"]["0"]) >= 1


def test_markers_roundtrip_h5ad(tissue, tmp_path):
    a = tissue.copy()
    spatial_markers_spagcn(a, domain_key="domain", target_domain="2", key_added="m2")
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    b = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(get_markers(a, markers_key="m2", group_name="2"), get_markers(b, markers_key="m2", group_name="2"))


def test_metagene(tissue):
    a = tissue.copy()
    spatial_markers_spagcn(a, domain_key="domain", target_domain="1", key_added="mk")
    res = spatial_metagene(a, domain_key="domain", target_domain="1", markers_key="mk", max_iter=6)
    score = a.obs["metagene.1"]
    assert score.min() == pytest.approx(0.0, abs=1e-9) or len(res["added"]) == 0
    in_t = (a.obs["domain"] == "1").to_numpy()
    # the metagene separates the domain: higher inside than outside
    assert score[in_t].mean() > score[~in_t].mean() + 1.0
    assert res["name"].startswith(get_markers(a, markers_key="mk", group_name="1")["gene"].iloc[0])
    assert a.uns["metagene.1"]["name"] == res["name"]


# --------------------------------------------------------------------------- real data (MOB subset)
def test_mob_layers_real_subset():
    """SpatialDE's MOB replicate 11 (260 ST spots, 400 most variable genes) against its annotated layers."""
    with gzip.open(DATA / "mob_rep11_top400.csv.gz", "rt") as fh:
        df = pd.read_csv(fh, index_col=0)
    layer = df.pop("layer")
    xy = df[["x", "y"]].to_numpy(np.float64)
    counts = df.drop(columns=["x", "y"]).to_numpy(np.float32)
    a = _lognorm(ad.AnnData(counts, obs=pd.DataFrame({"layer": layer.astype("category")}, index=df.index)))
    a.obsm["spatial"] = xy
    out = spatial_detect_domains_spagcn(a, n_clusters=5, refine_shape="square", seed=0, use_gpu=False)
    assert _ari(a.obs["layer"], out["spagcn.refined"]) >= 0.35


# --------------------------------------------------------------------------- bad inputs
def test_bad_inputs(tissue):
    a = tissue.copy()
    with pytest.raises(InvalidInputError, match="exceeds the number of spots"):
        spatial_detect_domains_spagcn(a[:10].copy(), n_clusters=20)
    with pytest.raises(MissingSlotError, match=r"available layers.*normalize_total"):
        spatial_detect_domains_spagcn(a, layer="nope")
    with pytest.raises(InvalidInputError, match="valid values"):
        spatial_detect_domains_spagcn(a, init="louvain")
    with pytest.raises(InvalidInputError, match="valid values"):
        spatial_detect_domains_spagcn(a, refine_shape="circle")
    with pytest.raises(KeyNotFoundError, match="'hires'"):
        spatial_detect_domains_spagcn(a, histology=True, channels=["fullres/r"])
    no_image = _lognorm(em.datasets.synthetic_domains(200, 3, seed=0))
    with pytest.raises(KeyNotFoundError, match=r"image 'hires' not found; available: \(none\)"):
        spatial_detect_domains_spagcn(no_image, n_clusters=3, histology=True)
    del no_image.uns["spatial"]
    with pytest.raises(MissingSlotError, match=r"uns\['spatial'\] is missing"):
        spatial_detect_domains_spagcn(no_image, n_clusters=3, histology=True)
    spatial_markers_spagcn(a, domain_key="domain", target_domain=["0", "1"], key_added="mm")
    with pytest.raises(KeyNotFoundError, match="available: '0', '1'"):
        get_markers(a, markers_key="mm", group_name="17")
    with pytest.raises(MissingSlotError, match="spatial_markers_spagcn"):
        get_markers(a, markers_key="absent", group_name="0")
    with pytest.raises(KeyNotFoundError, match="domain"):
        spatial_markers_spagcn(a, domain_key="domain", target_domain="9")
    with pytest.raises(KeyNotFoundError, match="obs column"):
        spatial_markers_spagcn(a, domain_key="missing")
    with pytest.raises(KeyNotFoundError, match="domain"):
        spatial_metagene(a, domain_key="domain", target_domain="9")
    with pytest.raises(InvalidInputError, match="share no genes"):
        b = a.copy()
        b.var_names = [f"other{i}" for i in range(b.n_vars)]
        integrate_domains_spagcn({"a": a, "b": b}, n_clusters=3)


def test_sparse_graph_matches_dense():
    """The sparse Gaussian adjacency (weights < 1e-6 dropped) gives A X of the full dense adjacency,
    and p(l) by blocks of rows the mean weight over all pairs."""
    from scipy.spatial.distance import cdist

    from experimat.methods.domains.spagcn import _graph

    xy, _ = em.datasets.visium_hex_grid(300)
    feats = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    width = search_l(xy, 0.5)
    dense = np.exp(-cdist(xy, xy) ** 2 / (2.0 * width * width))
    np.testing.assert_allclose(_graph.propagate(xy, width, feats, None).numpy(), dense @ feats, atol=1e-4)
    wide = 20.0 * width
    expected = np.exp(-cdist(xy, xy) ** 2 / (2.0 * wide * wide)).sum() / 300 - 1.0
    assert _graph._MeanWeight(xy, None)(wide) == pytest.approx(expected, rel=1e-5)
    assert abs(_graph._MeanWeight(xy, None)(width) - 0.5) < 0.011


@pytest.mark.parametrize("shape", [(300, 120), (120, 300)])
def test_block_pca_branches_agree(shape):
    """methods/_expression.block_pca: covariance eigendecomposition, SVD and the randomised SVD give
    the same scores (up to sign), dense or sparse, and centring within blocks is exact."""
    from scipy import sparse

    from experimat.methods._expression import block_pca

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(shape[0], 6)) * np.arange(12, 0, -2)) @ rng.normal(size=(6, shape[1]))
    X += 0.05 * rng.normal(size=shape)
    exact = block_pca(X, 5, seed=0)
    approx = block_pca(X, 5, seed=0, exact_max=10)
    np.testing.assert_allclose(np.abs(approx), np.abs(exact), rtol=1e-3, atol=1e-3 * np.abs(exact).max())
    sv = np.linalg.svd(X - X.mean(0), compute_uv=False)[:5]
    np.testing.assert_allclose(np.linalg.norm(exact.astype(np.float64), axis=0), sv, rtol=1e-4)
    bounds = [0, shape[0] // 3, shape[0]]
    centred = X.copy()
    for lo, hi in itertools.pairwise(bounds):
        centred[lo:hi] -= centred[lo:hi].mean(0)
    sv = np.linalg.svd(centred, compute_uv=False)[:5]
    for inp in (X, sparse.csr_matrix(X)):
        for limit in (1000, 10):
            got = block_pca(inp, 5, blocks=bounds, seed=0, exact_max=limit).astype(np.float64)
            np.testing.assert_allclose(np.linalg.norm(got, axis=0), sv, rtol=1e-3)


# --------------------------------------------------------------------------- seed stability, shared domains
def _pairwise_ari(labels):
    return float(np.mean([_ari(x, y) for i, x in enumerate(labels) for y in labels[i + 1 :]]))


def test_stable_mode_agrees_across_seeds():
    # weak markers (2-fold, 10 per domain): single seeded runs disagree with each other (ARI ~0.3)
    a = _lognorm(
        em.datasets.synthetic_domains(
            600, 5, layout="voronoi", fold_change=2.0, n_markers_per_domain=10, depth=2000, seed=2
        )
    )
    runs = [
        spatial_detect_domains_spagcn(a, n_clusters=5, seed=s, use_gpu=False)["spagcn.refined"].to_numpy()
        for s in range(3)
    ]
    assert _pairwise_ari(runs) >= 0.7
    assert np.mean([_ari(a.obs["domain"], r) for r in runs]) >= 0.6
    entry = a.uns["spagcn.domain"]
    assert len(entry["run_seeds"]) == 3 and entry["run_seeds"][0] == 2
    assert 0.0 <= entry["run_agreement"] <= 1.0
    # the single-seed behaviour of the reference stays available and reproducible
    one = spatial_detect_domains_spagcn(a, n_clusters=5, seed=0, stable=False, use_gpu=False, key_added="s")
    two = spatial_detect_domains_spagcn(a, n_clusters=5, seed=0, stable=False, use_gpu=False, key_added="s")
    assert (one.to_numpy() == two.to_numpy()).all()
    assert "run_seeds" not in a.uns["s"]
    with pytest.raises(InvalidInputError, match="n_runs"):
        spatial_detect_domains_spagcn(a, n_clusters=5, n_runs=0)


def _sections_with_effect(n_spots=1800, n_domains=4, seed=0):
    """Serial sections cut from one synthetic tissue, each with its own per-gene and depth effect."""
    sections = em.datasets.synthetic_sections(3, n_spots, n_domains, seed=seed)
    return {name: _lognorm(a) for name, a in sections.items()}


def test_integration_finds_shared_domains_despite_section_effects():
    samples = _sections_with_effect()
    out = integrate_domains_spagcn(samples, n_clusters=4, max_epochs=200, seed=1, use_gpu=False, key_added="shared")
    both = pd.concat([a.obs[["domain", "shared", "shared.refined"]] for a in samples.values()])
    assert _ari(both["domain"], both["shared"]) >= 0.9
    assert _ari(both["domain"], both["shared.refined"]) >= 0.9
    assert both["shared"].nunique() == 4
    for a in samples.values():  # each section has the shared domains its truth has (not all 4 in each)
        assert a.obs["shared"].nunique() == a.obs["domain"].nunique()
        assert list(a.obs["shared.refined"].cat.categories) == list(a.obs["shared"].cat.categories)
    assert set(out["s0"].columns) == {"shared", "shared.refined"}
    params = samples["s0"].uns["shared"]["params"]
    assert params["batch_correction"] == "center" and params["spatial_prior"] == 1.0
    assert 0.0 <= samples["s0"].uns["shared"]["prior_changed"] < 0.05


def test_integration_spatial_prior_only_relabels_unsure_spots():
    # without the prior a few spots of s0 take a domain that s0 does not have; the prior (the default)
    # relabels them and nothing else, and spatial_prior=0 keeps the model's labels
    samples = _sections_with_effect()
    kw = dict(n_clusters=4, max_epochs=200, seed=1, use_gpu=False)
    integrate_domains_spagcn(samples, key_added="raw", spatial_prior=0.0, **kw)
    integrate_domains_spagcn(samples, key_added="prior", **kw)
    both = pd.concat([a.obs[["domain", "raw", "prior"]] for a in samples.values()])
    assert "prior_changed" not in samples["s0"].uns["raw"]
    changed = (both["raw"].astype(str) != both["prior"].astype(str)).mean()
    assert 0.0 < changed < 0.02
    assert _ari(both["domain"], both["prior"]) >= _ari(both["domain"], both["raw"])


def test_integration_result_key_is_a_deprecated_alias():
    whole = _lognorm(em.datasets.synthetic_domains(400, 3, seed=4))
    half = whole.obsm["spatial"][:, 0] < np.median(whole.obsm["spatial"][:, 0])
    samples = {"a": whole[half].copy(), "b": whole[~half].copy()}
    kw = dict(n_clusters=3, max_epochs=30, use_gpu=False, stable=False, refine_shape="none")
    with pytest.warns(FutureWarning, match="key_added"):
        integrate_domains_spagcn(samples, result_key="old", **kw)
    assert "old" in samples["a"].obs and "old.refined" not in samples["a"].obs
    with pytest.raises(InvalidInputError, match="pass only key_added="):
        integrate_domains_spagcn(samples, result_key="old", key_added="new", **kw)
    with pytest.raises(InvalidInputError, match="batch_correction") as info:
        integrate_domains_spagcn(samples, batch_correction="combat", **kw)
    for choice in ("center", "harmony", "none"):  # the message names the valid choices
        assert choice in str(info.value)


@pytest.mark.parametrize("correction", ["harmony", "none"])
def test_integration_other_batch_corrections_run(correction):
    samples = _sections_with_effect(n_spots=900)
    integrate_domains_spagcn(
        samples, n_clusters=4, max_epochs=100, seed=1, use_gpu=False, key_added="x", batch_correction=correction
    )
    both = pd.concat([a.obs[["domain", "x"]] for a in samples.values()])
    assert samples["s0"].uns["x"]["params"]["batch_correction"] == correction
    assert both["x"].nunique() >= 2


def test_fewer_domains_than_asked_is_warned(monkeypatch, caplog):
    import logging

    import experimat.methods.domains.spagcn._detect as detect

    a = _lognorm(em.datasets.synthetic_domains(300, 3, seed=5))

    def two_domains(ax, **kw):  # a clustering that emptied one of the three domains
        labels = (np.arange(ax.shape[0]) % 2).astype(np.int64)
        prob = np.eye(3)[labels] * 0.9 + 0.1 / 3
        return labels, {"resolution": None, "init_used": "kmeans", "n_epochs": [1], "prob": prob}

    monkeypatch.setattr(detect, "_cluster", two_domains)
    with caplog.at_level(logging.WARNING, logger="experimat"):
        spatial_detect_domains_spagcn(a, n_clusters=3, seed=0, use_gpu=False, stable=False)
    messages = [r.getMessage() for r in caplog.records if "found 2 of the 3 domains" in r.getMessage()]
    assert len(messages) == 1 and "pass keep_n_clusters=True" in messages[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="experimat"):  # refilled, yet lost after the fits: say why
        spatial_detect_domains_spagcn(a, n_clusters=3, seed=0, use_gpu=False, stable=False, keep_n_clusters=True)
    messages = [r.getMessage() for r in caplog.records if "found 2 of the 3 domains" in r.getMessage()]
    assert len(messages) == 1 and "spatial prior" in messages[0] and "keep_n_clusters=True" not in messages[0]


def _blobs_with_a_doomed_cluster(seed=0, n=150, d=8):
    """Four separated blobs of spots (truth) and an initial clustering whose cluster 3 takes a tenth of
    blobs 0 and 1 (its centre lies between them, so no spot is most likely in it: DEC empties it)
    while cluster 2 holds blobs 2 and 3 together."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, d)) * 6.0
    truth = np.repeat(np.arange(4), n)
    x = centres[truth] + rng.normal(size=(4 * n, d))
    init = np.minimum(truth, 2)
    init[np.flatnonzero(truth <= 1)[::10]] = 3
    return x, truth, init


@pytest.mark.parametrize("keep_clusters", [True, False])
def test_emptied_cluster_is_refilled_during_training(monkeypatch, keep_clusters):
    import torch

    import experimat.methods.domains.spagcn._model as model

    x, truth, init = _blobs_with_a_doomed_cluster()
    monkeypatch.setattr(model, "_initial_labels", lambda feats, **kw: (None, init.copy(), "kmeans"))
    fit = model.fit_gcdec(
        torch.tensor(x, dtype=torch.float32), n_clusters=4, init="kmeans", seed=0, lr=0.05, max_epochs=200,
        tol=5e-3, n_neighbors=10, resolution=None, device="cpu", identity_init=True, keep_clusters=keep_clusters,
    )
    if keep_clusters:  # the emptied cluster takes one half of the widest (blobs 2 and 3): the four blobs
        assert len(np.unique(fit.labels)) == 4 and fit.refilled == 1
        assert adjusted_rand_score(truth, fit.labels) > 0.99
    else:  # DEC as SpaGCN runs it leaves the cluster empty
        assert len(np.unique(fit.labels)) == 3 and fit.refilled == 0


@pytest.mark.parametrize("stable", [True, False])
def test_keep_n_clusters_refills_in_both_modes_and_is_off_by_default(monkeypatch, stable):
    import torch

    import experimat.methods.domains.spagcn._model as model
    from experimat.methods.domains.spagcn._detect import _cluster

    x, truth, init = _blobs_with_a_doomed_cluster()
    monkeypatch.setattr(model, "_initial_labels", lambda feats, **kw: (None, init.copy(), "kmeans"))
    seen = []
    fit_gcdec = model.fit_gcdec

    def spy(ax, **kw):
        seen.append(kw["keep_clusters"])
        return fit_gcdec(ax, **{**kw, "identity_init": True})  # the init above is of A X itself

    monkeypatch.setattr(model, "fit_gcdec", spy)
    common = dict(n_clusters=4, init="kmeans", seed=0, stable=stable, n_runs=2, lr=0.05, max_epochs=200, tol=5e-3)
    common.update(n_neighbors=10, resolution=None, device="cpu")
    ax = torch.tensor(x, dtype=torch.float32)
    labels, info = _cluster(ax, keep_n_clusters=True, **common)
    assert len(np.unique(labels)) == 4 and all(r == 1 for r in info["refilled"])
    assert adjusted_rand_score(truth, labels) > 0.99
    labels, info = _cluster(ax, **common)  # default: SpaGCN's clustering, the emptied cluster stays empty
    assert len(np.unique(labels)) == 3 and not any(info["refilled"])
    n = 2 if stable else 1
    assert seen == [True] * n + [False] * n


def test_refill_empty_splits_the_widest_cluster():
    from experimat.methods.domains.spagcn._model import refill_empty

    x, truth, _ = _blobs_with_a_doomed_cluster(seed=1)
    labels = np.minimum(truth, 2)  # cluster 3 empty, cluster 2 spans blobs 2 and 3
    centres = np.stack([x[labels == c].mean(0) for c in range(3)] + [np.zeros(x.shape[1])])
    moved = refill_empty(x, labels, centres)
    assert sorted(moved) == [2, 3]
    assert adjusted_rand_score(truth, labels) == 1.0
    assert np.allclose(centres[labels[truth == 3][0]], x[truth == 3].mean(0))
    # no cluster can be split (as many distinct spots as clusters): nothing moves
    one = np.zeros((2, 3))
    lab = np.array([0, 1])
    assert refill_empty(one, lab, np.zeros((3, 3))) == []


def test_keep_n_clusters_must_be_a_bool():
    a = _lognorm(em.datasets.synthetic_domains(200, 3, seed=5))
    with pytest.raises(InvalidInputError, match="keep_n_clusters must be True or False"):
        spatial_detect_domains_spagcn(a, n_clusters=3, keep_n_clusters="yes", use_gpu=False)
    assert "spagcn.domain" not in a.obs


def _grid(nx, ny, x0=0.0):
    gx, gy = np.meshgrid(np.arange(nx, dtype=float) + x0, np.arange(ny, dtype=float))
    return np.column_stack([gx.ravel(), gy.ravel()])


def test_refill_splits_the_spatially_coherent_cluster_not_the_widest():
    from experimat.methods.domains._potts import lattice_neighbours
    from experimat.methods.domains.spagcn._model import refill_empty

    rng = np.random.default_rng(0)
    xy = _grid(20, 20)
    left, top = xy[:, 0] < 10, xy[:, 1] < 10
    z = rng.normal(scale=0.3, size=(400, 4))
    # cluster 0 (left half): two intermixed spot types far apart in expression, the widest cluster;
    # cluster 1 (right half): a top and a bottom region, closer in expression; cluster 2 emptied
    z[left, 0] += np.where(rng.random(400) < 0.5, 5.0, -5.0)[left]
    z[~left, 1] += np.where(top, 1.5, -1.5)[~left]
    labels = np.where(left, 0, 1)
    centres = np.stack([z[labels == 0].mean(0), z[labels == 1].mean(0), np.zeros(4)])
    widest = labels.copy()
    assert sorted(refill_empty(z, widest, centres.copy())) == [0, 2]  # no spatial graph: the widest
    moved = refill_empty(z, labels, centres, adjacency=lattice_neighbours(xy))
    assert sorted(moved) == [1, 2]
    truth = np.where(left, 0, np.where(top, 1, 2))
    assert adjusted_rand_score(truth, labels) == 1.0
    assert np.allclose(centres[2], z[labels == 2].mean(0))


def test_refill_keeps_both_halves_in_every_section():
    from scipy import sparse

    from experimat.methods.domains._potts import lattice_neighbours
    from experimat.methods.domains.spagcn._model import refill_empty

    rng = np.random.default_rng(1)
    xy = _grid(20, 10)
    left, top = xy[:, 0] < 10, xy[:, 1] < 5
    sections = np.repeat([0, 1], 200)
    adjacency = sparse.block_diag([lattice_neighbours(xy)] * 2, format="csr")
    z = rng.normal(scale=0.3, size=(400, 4))
    # cluster 0 (left halves) differs by section: its bisection separates the sections and cuts no
    # spatial edge; cluster 1 (right halves) has a top and a bottom region in both sections
    z[:, 0] += np.where(np.tile(left, 2), np.where(sections == 0, 3.0, -3.0), 0.0)
    z[:, 1] += np.where(np.tile(~left, 2), np.where(np.tile(top, 2), 1.5, -1.5), 0.0)
    labels = np.where(np.tile(left, 2), 0, 1)
    centres = np.stack([z[labels == 0].mean(0), z[labels == 1].mean(0), np.zeros(4)])
    by_section = labels.copy()
    assert sorted(refill_empty(z, by_section, centres.copy(), adjacency=adjacency)) == [0, 2]
    assert set(by_section[sections == 0]) != set(by_section[sections == 1])  # a section-specific domain
    assert sorted(refill_empty(z, labels, centres, adjacency=adjacency, sections=sections)) == [1, 2]
    for s in (0, 1):
        assert set(labels[sections == s]) == {0, 1, 2}


def _stripe_sections(n_sections=3, n_spots=1500, n_domains=4, seed=2):
    """Serial sections across the stripes of one synthetic tissue: every domain in every section."""
    whole = em.datasets.synthetic_domains(n_spots, n_domains, layout="stripes", seed=seed)
    y = whole.obsm["spatial"][:, 1]
    edges = np.quantile(y, np.linspace(0, 1, n_sections + 1))
    edges[-1] += 1
    out = {}
    for i in range(n_sections):
        a = whole[(y >= edges[i]) & (y < edges[i + 1])].copy()
        a.obs_names = [f"s{i}_{o}" for o in a.obs_names]
        out[f"s{i}"] = _lognorm(a)
    return out


def test_integration_returns_every_requested_domain_in_every_section(monkeypatch):
    # a start whose fourth cluster is a third of the spots of domains 0 and 1, scattered (and domains 2 and 3
    # merged): DEC empties it; the default refill splits the merged domains, in every section
    import experimat.methods.domains.spagcn._model as model

    samples = _stripe_sections()
    truth = pd.concat([a.obs["domain"].astype(str) for a in samples.values()])
    codes = pd.Categorical(truth).codes.astype(np.int64)
    start = np.minimum(codes, 2)
    start[np.flatnonzero(codes <= 1)[::3]] = 3
    monkeypatch.setattr(model, "_initial_labels", lambda feats, **kw: (None, start.copy(), "kmeans"))
    kw = dict(n_clusters=4, max_epochs=200, seed=1, use_gpu=False, n_runs=2)
    integrate_domains_spagcn(samples, key_added="kept", **kw)
    for a in samples.values():
        assert a.obs["kept"].nunique() == 4 and a.obs["kept.refined"].nunique() == 4
    found = pd.concat([a.obs["kept"].astype(str) for a in samples.values()])
    assert _ari(truth, found) >= 0.9
    uns = samples["s0"].uns["kept"]
    assert uns["params"]["keep_n_clusters"] is True and uns["refilled_clusters"] == [1, 1]
    integrate_domains_spagcn(samples, key_added="spagcn", keep_n_clusters=False, **kw)  # SpaGCN's clustering
    assert pd.concat([a.obs["spagcn"].astype(str) for a in samples.values()]).nunique() == 3
