"""The users' notebook calls of the method issues, through the accessors, exactly as written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import experimat as em
from experimat.datasets import synthetic_domains, synthetic_svg


@pytest.fixture
def svg_expm(tmp_path):
    adatas = {"p1-t4": synthetic_svg(300, 400, n_spatial=20, effect=1.0, seed=1), "p2-t5": synthetic_svg(300, 400, n_spatial=20, effect=1.0, seed=2)}
    expm = em.Experiment.from_anndata(adatas, modality="spatial-bin", taxa="hsa", project=tmp_path / "svg", harmonize_genes=False)
    yield expm
    expm.close()


def test_svg_calls(svg_expm):
    expm, sample = svg_expm, "p2-t5"
    expm.spatial_bin.spatial_svg_spatialde(run_on_samples=[sample], layer="counts", spatial_key="spatial",
        kernel_space=None, sizefactors=None, obs_dist="negative_binomial", use_cache=True, use_gpu=True,
        progress=True, n_svg=500, key_added="spatialde")
    df = expm.spatial_bin[sample].var[["gene", "spatialde.padj", "spatialde.svg", "spatialde.rank"]]
    truth = expm.spatial_bin[sample].var["spatial"].to_numpy()
    assert df["spatialde.svg"].to_numpy()[truth].mean() > 0.8 and df["spatialde.svg"].to_numpy()[~truth].mean() < 0.1
    res = expm.spatial_bin.spatial_svg(method="spatialde2", run_on_samples=[sample], key_added="again")
    np.testing.assert_allclose(expm.spatial_bin[sample].var["again.padj"], df["spatialde.padj"])
    assert isinstance(res[sample], pd.DataFrame)
    expm.spatial_bin.spatial_svg(method="moran", layer="counts", run_on_samples=True)
    assert "moran.padj" in expm.spatial_bin["p1-t4"].var
    back = em.load_experiment(expm.project_path, mode="r")
    assert "spatialde.rank" in back.spatial_bin[sample].var  # saved per sample


def test_spagcn_calls(tmp_path):
    import scanpy as sc

    adatas = {f"s{i}": synthetic_domains(400, 4, 80, n_markers_per_domain=8, seed=i) for i in range(2)}
    for a in adatas.values():
        a.layers["lognorm"] = sc.pp.log1p(sc.pp.normalize_total(a, target_sum=1e4, copy=True).X)
    expm = em.Experiment.from_anndata(adatas, modality="spatial-bin", taxa="mmu", project=tmp_path / "d", harmonize_genes=False)
    sample = "s0"
    expm.spatial_bin.spatial_detect_domains_spagcn(run_on_samples=[sample], layer="lognorm", channels=None,
        n_clusters=4, histology=False, refine_shape="hexagon", seed=42,
        key_added="spagcn.domain", refined_key_added="spagcn.refined")
    from sklearn.metrics import adjusted_rand_score

    a = expm.spatial_bin[sample]
    assert adjusted_rand_score(a.obs["domain"], a.obs["spagcn.refined"]) > 0.6
    expm.spatial_bin.integrate_domains_spagcn(n_clusters=4, run_on_samples=True, result_key="integrated",
        histology=False, max_epochs=100, seed=100)
    assert all("integrated" in expm.spatial_bin[s].obs for s in expm.spatial_bin.samples)
    group = str(expm.spatial_bin[sample].obs["integrated"].value_counts().index[0])
    expm.spatial_bin.spatial_markers_spagcn(run_on_samples=[sample], domain_key="integrated",
        min_in_group_fraction=0.5, min_in_out_group_ratio=1, min_fold_change=1.2, num_neighbours=3,
        ratio=0.5, radius_quantiles=(0.001, 0.1), num_min=10, num_max=14, max_run=100, key_added="spagcn.markers")
    table = expm.spatial_bin.get_markers(run_on_samples=[sample], slot="spagcn.markers", group_name=group)[sample]
    assert list(table.columns)[:6] == ["gene", "pct.in", "pct.out", "fc", "q", "log10.q"]
    with pytest.raises(em.KeyNotFoundError):
        expm.spatial_bin.get_markers(run_on_samples=[sample], slot="spagcn.markers", group_name="no-such-domain")
    if len(table):
        expm.spatial_bin.spatial_metagene(run_on_samples=[sample], domain_key="integrated", target_cluster=group,
            key_svg="spagcn.markers", max_iter=3, key_added=f"metagene.{group}")
        assert f"metagene.{group}" in expm.spatial_bin[sample].obs
    expm.spatial_bin.detect_domains(method="spagcn", run_on_samples=["s1"], n_clusters=4, seed=1, key_added="generic", refined_key_added="generic.refined")
    assert "generic.refined" in expm.spatial_bin["s1"].obs
    fig = expm.spatial_bin.plot_domains(run_on_samples=[sample], keys=("spagcn.domain", "spagcn.refined"))
    assert fig is not None
    expm.close()


def test_deepst_call(tmp_path):
    adatas = {"s0": synthetic_domains(300, 3, 60, n_markers_per_domain=10, seed=3)}
    expm = em.Experiment.from_anndata(adatas, modality="spatial-bin", taxa="mmu", harmonize_genes=False)
    expm.spatial_bin.spatial_detect_domains_deepst(run_on_samples=["s0"], image_key="hires", n_domains=3,
        use_image=False, save_path=None, pre_epochs=30, epochs=30, use_gpu=True)
    a = expm.spatial_bin["s0"]
    assert {"deepst.domain", "deepst.refined"} <= set(a.obs) and "deepst.embedding" in a.obsm
    expm.spatial_bin.detect_domains(method="deepst", run_on_samples="s0", n_domains=3, pre_epochs=10, epochs=10, key_added="d2")
    assert "d2.refined" in a.obs
