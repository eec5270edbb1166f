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
    expm.spatial_bin.integrate_domains_spagcn(n_clusters=4, run_on_samples=True, key_added="integrated",
        histology=False, max_epochs=100, seed=100)
    assert all("integrated" in expm.spatial_bin[s].obs for s in expm.spatial_bin.samples)
    group = str(expm.spatial_bin[sample].obs["integrated"].value_counts().index[0])
    expm.spatial_bin.spatial_markers_spagcn(run_on_samples=[sample], domain_key="integrated",
        min_in_group_fraction=0.5, min_in_out_group_ratio=1, min_fold_change=1.2, num_neighbours=3,
        ratio=0.5, radius_quantiles=(0.001, 0.1), num_min=10, num_max=14, max_run=100, key_added="spagcn.markers")
    table = expm.spatial_bin.get_markers(run_on_samples=[sample], slot="spagcn.markers", group_name=group)[sample]
    assert list(table.columns)[:7] == ["gene", "gene_id", "pct.in", "pct.out", "fc", "q", "log10.q"]
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


@pytest.fixture
def deconv_expm(tmp_path):
    import anndata as ad
    from conftest import DATA

    from experimat.datasets import pseudo_spots

    sc_ref = ad.read_h5ad(DATA / "deconv" / "zeisel_subset.h5ad")
    sc_ref.obs["cell_type"] = sc_ref.obs["class"].astype(str)
    half = sc_ref.n_obs // 2
    rna = {"ref1": sc_ref[:half].copy(), "ref2": sc_ref[half:].copy()}
    spots = {"v1": pseudo_spots(sc_ref, "cell_type", n_spots=120, depth=3000, seed=1)}
    expm = em.Experiment.from_anndata(rna, modality="rna", taxa="mmu", project=tmp_path / "deconv", harmonize_genes=False)
    for s, a in spots.items():
        expm.add_sample(a, sample=s, modality="spatial-bin", taxa="mmu", harmonize_genes=False)
    expm.save()
    yield expm
    expm.close()


def _per_spot_r(a, key):
    truth = a.obsm["true_proportions"]
    est = a.obsm[key][truth.columns]
    est = est.div(est.sum(1), axis=0)
    return np.nanmean([np.corrcoef(t, e)[0, 1] for t, e in zip(truth.to_numpy(), est.to_numpy()) if t.std() > 0])


def test_cell2location_calls(deconv_expm):
    expm = deconv_expm
    sig = expm.rna.reference_signatures(run_on_samples=True, labels_key="cell_type", batch_key="sample",
                                        method="cluster_mean", max_epochs=30)
    assert "reference_signatures" in expm.models  # stored once in models/, weights + JSON
    res = expm.spatial_bin.deconvolve(method="cell2location", reference=sig, run_on_samples=True,
                                      n_cells_per_location=6, detection_alpha=20, max_epochs=150)
    a = expm.spatial_bin["v1"]
    assert {"cell2location.means", "cell2location.q05", "cell2location.q95", "cell2location.sd"} <= set(a.obsm)
    assert _per_spot_r(a, "cell2location.means") > 0.6
    assert isinstance(res["v1"], pd.DataFrame)
    # the stored model is reused by name, and reloads without pickle
    again = expm.spatial_bin.deconvolve(method="cell2location", reference="reference_signatures", run_on_samples=["v1"],
                                        max_epochs=20, key_added="c2l_again")
    assert "c2l_again.means" in expm.spatial_bin["v1"].obsm and list(again) == ["v1"]
    files = [p.name for p in (expm.project_path / "models").rglob("*") if p.is_file()]
    assert files and not any(f.endswith((".pkl", ".pickle")) for f in files)


def test_destvi_calls(deconv_expm):
    expm = deconv_expm
    ref = expm.rna.fit_condscvi(run_on_samples=True, labels_key="cell_type", layer="counts", n_top_genes=200,
                                max_epochs=15, weight_obs=False)
    assert "condscvi" in expm.models
    expm.spatial_bin.deconvolve(method="destvi", reference=ref, run_on_samples=True, max_epochs=60,
                                vamp_prior_p=5, l1_sparsity=0.0, beta_weighting_prior=0.5)
    a = expm.spatial_bin["v1"]
    assert "destvi.proportions" in a.obsm and any(k.startswith("destvi.gamma.") for k in a.obsm)
    # reference given as the rna accessor: fitted once over its samples, then mapped
    expm.spatial_bin.deconvolve(method="destvi", reference=expm.rna, labels_key="cell_type",
                                reference_kwargs={"max_epochs": 5, "n_top_genes": 100, "key_added": "condscvi_small"},
                                run_on_samples=["v1"], max_epochs=5, key_added="destvi_small")
    assert "condscvi_small" in expm.models and "destvi_small.proportions" in a.obsm


def test_locat_calls(tmp_path):
    import anndata as ad
    from conftest import DATA

    z = ad.read_h5ad(DATA / "deconv" / "zeisel_subset.h5ad")
    adata = z[:300, :80].copy()
    adata_locat = em.pp.filter_genes_locat(adata)
    assert adata_locat.n_vars <= adata.n_vars
    expm = em.Experiment.from_anndata({"z": adata_locat}, modality="rna", taxa="mmu", harmonize_genes=False)
    expm.rna.normalize(run_on_samples=True)
    expm.rna.pca(run_on_samples=True, n_comps=10)
    res = expm.rna.locat(run_on_samples=True, embedding="pca", n_dims=8, n_bootstrap_inits=3, knn_mode="connectivity",
                         reg_covar=1e-6, rc_lambda_values=np.linspace(1, 2, 8), n_null_genes=40, key_added="locat")
    df = res["z"]
    assert list(df.columns) == ["gene_name", "bic", "zscore", "sens_score", "depletion_pval", "concentration_pval", "h_size",
                                "h_sens", "pval", "K_components", "sample_size", "max_deficit", "is_conc_sig", "is_depl_sig",
                                "is_joint_sig"]
    assert "locat.zscore" in expm.rna["z"].var
    fig = expm.rna.plot_locat(run_on_samples=["z"], basis="X_pca")
    assert fig is not None
