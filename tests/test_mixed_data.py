"""Mixed and unusual data: rna + spatial samples in one project, genes unknown to the database,
taxa without a gene table, long non-ASCII sample names, failed project creations (issue 16)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import experimat as em
from experimat.datasets import synthetic_domains


def _spots(seed: int, n: int = 40, genes: int = 12):
    return synthetic_domains(n, 2, genes, n_markers_per_domain=3, seed=seed)


def _cells(seed: int, n: int = 30, genes: int = 12):
    a = _spots(seed, n, genes)
    del a.obsm["spatial"]
    a.uns.pop("spatial")
    a.obs["cell_type"] = a.obs["domain"]
    return a


def _mixed_project(path):
    """An experiment of one spatial-bin and one rna sample (the deconvolution layout)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expm = em.Experiment.from_anndata({"spots": _spots(1)}, modality="spatial-bin", taxa="mmu", project=path)
        expm.add_sample(_cells(2), sample="cells", modality="rna", taxa="mmu")
    expm.save()
    return expm


def test_mixed_modalities_merge_save_reopen_save_as(tmp_path):
    expm = _mixed_project(tmp_path / "p")
    mdata = expm.merge()
    assert set(mdata.mod) == {"rna", "spatial-bin"}
    expm.save()
    assert expm.integrated.mod["rna"].n_obs == 30  # still usable after the save
    expm.save(tmp_path / "copy")  # save-as
    expm.close()
    for where in ("p", "copy"):
        again = em.load_experiment(tmp_path / where, mode="r")
        integ = again.integrated
        assert integ.mod["spatial-bin"].n_obs == 40 and integ.mod["rna"].n_obs == 30
        np.testing.assert_array_equal(integ.mod["rna"].layers["counts"].sum(), expm.rna["cells"].layers["counts"].sum())
    again = em.load_experiment(tmp_path / "p")
    again.save(tmp_path / "copy2")  # save-as of a reopened project with integrated data on disk
    again.close()
    assert em.load_experiment(tmp_path / "copy2", mode="r").integrated.mod["spatial-bin"].n_obs == 40


def test_merge_keeps_per_sample_results_per_sample_and_keeps_obsm_frames(tmp_path):
    adatas = {"a": _spots(1), "b": _spots(2)}
    expm = em.Experiment.from_anndata(adatas, modality="spatial-bin", taxa="mmu", harmonize_genes=False)
    expm.spatial_bin.qc_metrics()  # var['qc.*'] differs per sample
    for s, a in expm.spatial_bin.items():
        a.var["panel"] = "v1"  # the same in every sample: gene annotation
        a.var["depth_rank"] = np.arange(a.n_vars) if s == "a" else np.arange(a.n_vars)[::-1]
        a.obsm["abundance"] = pd.DataFrame(np.full((a.n_obs, 2), 1.0 if s == "a" else 2.0), index=a.obs_names,
                                           columns=["T1", "T2"])
    mod = expm.merge().mod["spatial-bin"]
    qc_cols = [c for c in expm.spatial_bin["a"].var.columns if c.startswith("qc.")]
    assert qc_cols and not any(c.startswith("qc.") for c in mod.var.columns)
    assert "depth_rank" not in mod.var.columns and "panel" in mod.var.columns
    assert set(qc_cols) | {"depth_rank"} <= set(mod.uns["merge"]["per_sample_var_columns"])
    frame = mod.obsm["abundance"]
    assert list(frame.columns) == ["T1", "T2"]
    s = mod.obs["sample"].to_numpy()
    assert (frame.loc[s == "a", "T1"] == 1.0).all() and (frame.loc[s == "b", "T2"] == 2.0).all()
    expm.save(tmp_path / "p")
    expm.close()
    back = em.load_experiment(tmp_path / "p", mode="r").integrated.mod["spatial-bin"]
    pd.testing.assert_frame_equal(back.obsm["abundance"], frame, check_names=False)


def test_merge_of_one_sample_does_not_present_its_results_as_experiment_wide():
    expm = em.Experiment.from_anndata({"a": _spots(1)}, modality="spatial-bin", taxa="mmu", harmonize_genes=False)
    expm.spatial_bin.qc_metrics()
    mod = expm.merge().mod["spatial-bin"]
    assert not any(str(c).startswith("qc.") for c in mod.var.columns)


@pytest.mark.parametrize("how", ["anndata", "table"])
def test_sample_with_only_unknown_genes(tmp_path, how):
    a = _spots(3)
    a.var_names = [f"PLACEHOLDER_{i}" for i in range(a.n_vars)]
    project = tmp_path / "p"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "anndata":
            expm = em.Experiment.from_anndata({"x": a}, modality="spatial-bin", taxa="mmu", project=project)
        else:
            a.write_h5ad(tmp_path / "x.h5ad")
            sheet = pd.DataFrame({"sample": ["x"], "modality": ["spatial-bin"], "taxa": ["mmu"], "path": [str(tmp_path / "x.h5ad")]})
            expm = em.Experiment.from_table(sheet, project=project)
    assert expm.spatial_bin["x"].var["gene_id"].isna().all()
    expm.close()
    again = em.load_experiment(project, mode="r")
    assert again.spatial_bin["x"].n_vars == a.n_vars
    assert (again.spatial_bin["x"].var["annotated"] == False).all()  # noqa: E712


def test_failed_creation_leaves_nothing_and_force_reuses_leftovers(tmp_path, monkeypatch):
    from experimat.io import files as project_files

    calls = {"n": 0}
    original = project_files.write_sample

    def failing(store, modality, sample, adata, **kwargs):
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise OSError("disk full (injected)")
        return original(store, modality, sample, adata, **kwargs)

    monkeypatch.setattr(project_files, "write_sample", failing)
    project = tmp_path / "p"
    with pytest.raises(OSError, match="injected"):
        em.Experiment.from_anndata({"a": _spots(1), "b": _spots(2)}, modality="spatial-bin", taxa="mmu", project=project,
                                   harmonize_genes=False)
    assert not project.exists()
    project.mkdir()
    with pytest.raises(OSError, match="injected"):  # an existing empty folder is emptied again
        em.Experiment.from_anndata({"a": _spots(1), "b": _spots(2)}, modality="spatial-bin", taxa="mmu", project=project,
                                   harmonize_genes=False)
    assert project.is_dir() and not any(project.iterdir())
    monkeypatch.undo()

    # what an older, interrupted creation left: sample files, a temporary manifest, no manifest
    (project / "samples" / "spatial-bin").mkdir(parents=True)
    (project / "samples" / "spatial-bin" / "a.0123456789ab.h5ad").write_bytes(b"partial")
    (project / ".manifest.json.1234abcd.tmp").write_bytes(b"{")
    with pytest.raises(em.ProjectError, match="force=True"):
        em.Experiment.from_anndata({"a": _spots(1)}, modality="spatial-bin", taxa="mmu", project=project, harmonize_genes=False)
    expm = em.Experiment.from_anndata({"a": _spots(1)}, modality="spatial-bin", taxa="mmu", project=project,
                                      harmonize_genes=False, force=True)
    expm.close()
    assert not (project / ".manifest.json.1234abcd.tmp").exists()
    assert em.load_experiment(project, mode="r").spatial_bin["a"].n_obs == 40

    # a folder holding anything else is never emptied, even with force=True
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(em.ProjectError, match="notes.txt"):
        em.Experiment.from_anndata({"a": _spots(1)}, modality="spatial-bin", taxa="mmu", project=other,
                                   harmonize_genes=False, force=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_any_taxa_string_works_with_one_warning(tmp_path):
    a, b, c = _spots(1), _spots(2), _spots(3)
    for x in (a, b, c):
        x.write_h5ad(tmp_path / f"{id(x)}.h5ad")
    sheet = pd.DataFrame({
        "sample": ["zf1", "zf2", "mouse"],
        "modality": "spatial-bin",
        "taxa": ["dre", "dre", "mmu"],
        "path": [str(tmp_path / f"{id(x)}.h5ad") for x in (a, b, c)],
    })
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expm = em.Experiment.from_table(sheet, project=tmp_path / "p")
    ours = [w for w in caught if issubclass(w.category, em.ExperimatWarning) and "no gene table" in str(w.message)]
    assert len(ours) == 1
    assert "'dre'" in str(ours[0].message) and "zf1" in str(ours[0].message) and "zf2" in str(ours[0].message)
    assert list(expm.spatial_bin["zf1"].var_names) == list(a.var_names)  # names kept, not harmonised
    assert "gene_annotation" in expm.spatial_bin["mouse"].uns  # harmonised where a table exists
    assert set(expm.spatial_bin["zf1"].obs["taxa"]) == {"dre"}
    expm.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        em.Experiment.from_anndata({"r": _spots(4)}, modality="spatial-bin", taxa="Rattus norvegicus")
    assert sum("no gene table" in str(w.message) for w in caught) == 1
    with pytest.raises(em.InvalidInputError, match="taxa must be a non-empty string"):
        em.Experiment.from_anndata({"r": _spots(4)}, modality="spatial-bin", taxa=None)


def test_long_non_ascii_sample_name_is_refused_up_front(tmp_path):
    name = "Gewebeprobe_" + "ä" * 120  # 132 characters, 252 bytes in UTF-8
    project = tmp_path / "p"
    with pytest.raises(em.InvalidInputError, match="bytes"):
        em.Experiment.from_anndata({name: _spots(1)}, modality="spatial-bin", taxa="mmu", project=project,
                                   harmonize_genes=False)
    assert not project.exists()
    expm = make_small(tmp_path / "q")
    files = _snapshot(tmp_path / "q")
    with pytest.raises(em.InvalidInputError, match="bytes"):
        expm.add_sample(_spots(2), sample=name, modality="spatial-bin", taxa="mmu")
    with pytest.raises(em.InvalidInputError, match="bytes"):
        em.SampleTable(pd.DataFrame({"sample": [name], "modality": ["rna"], "taxa": ["mmu"]}))
    ok = "ä" * 100  # 200 bytes: allowed, and saved under that name
    expm.add_sample(_spots(3), sample=ok, modality="spatial-bin", taxa="mmu", harmonize_genes=False)
    assert _snapshot(tmp_path / "q") == files
    expm.save()
    expm.close()
    assert em.load_experiment(tmp_path / "q", mode="r").spatial_bin[ok].n_obs == 40


@pytest.mark.parametrize("bad", ["empty_obs", "empty_var"])
def test_empty_sample_is_refused_at_creation(tmp_path, bad):
    a = _spots(1)
    a = a[:0].copy() if bad == "empty_obs" else a[:, :0].copy()
    with pytest.raises(em.InvalidInputError, match="at least one"):
        em.Experiment.from_anndata({"e": a}, modality="spatial-bin", taxa="mmu", project=tmp_path / "p", harmonize_genes=False)
    assert not (tmp_path / "p").exists()


def test_unwritable_columns_fixed_or_refused_before_writing(tmp_path):
    a = _spots(1)
    a.obs["note"] = np.array([None] * a.n_obs, dtype=object)  # all missing: stored as a nullable string column
    a.var["flag"] = np.array([True, None] * (a.n_vars // 2), dtype=object)
    expm = em.Experiment.from_anndata({"a": a}, modality="spatial-bin", taxa="mmu", project=tmp_path / "p", harmonize_genes=False)
    expm.close()
    back = em.load_experiment(tmp_path / "p", mode="r").spatial_bin["a"]
    assert back.obs["note"].isna().all() and back.var["flag"].iloc[0]
    bad = _spots(2)
    bad.obs["mixed"] = np.array([1, "x"] * (bad.n_obs // 2), dtype=object)
    with pytest.raises(em.InvalidInputError, match="mixed"):
        em.Experiment.from_anndata({"b": bad}, modality="spatial-bin", taxa="mmu", project=tmp_path / "q", harmonize_genes=False)
    assert not (tmp_path / "q").exists()


def make_small(path):
    return em.Experiment.from_anndata({"a": _spots(1)}, modality="spatial-bin", taxa="mmu", project=path, harmonize_genes=False)


def _snapshot(root):
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}
