"""Change tracking: save() rewrites what changed, never loses an edit in place, and hashes only
the samples handed to user code (core/_changes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_synthetic_experiment

import experimat as em
from experimat.core import _changes


def _files(root: Path) -> set[str]:
    return {p.name for p in (root / "samples" / "spatial-bin").iterdir()}


def _reopen(root: Path):
    return em.load_experiment(root, mode="r")


@pytest.fixture
def counted(monkeypatch):
    """Counts the content fingerprints the change tracker computes."""
    calls = []
    real = _changes.fingerprint

    def counting(obj):
        calls.append(obj)
        return real(obj)

    monkeypatch.setattr(_changes, "fingerprint", counting)
    return calls


def test_samples_only_the_runner_touched_are_never_hashed(tmp_path, counted):
    make_synthetic_experiment(project=tmp_path / "p").close()
    expm = em.load_experiment(tmp_path / "p", load_samples=True)
    before = _files(tmp_path / "p")
    expm.save()
    assert _files(tmp_path / "p") == before  # nothing changed: no sample rewritten
    expm.spatial_bin.normalize(run_on_samples=["s1"], save=False)
    expm.save()
    new = _files(tmp_path / "p") - before
    assert len(new) == 1 and next(iter(new)).startswith("s1.")
    assert counted == []  # neither the load, the run nor the saves hashed a sample
    expm.close()
    assert "lognorm" in _reopen(tmp_path / "p").spatial_bin["s1"].layers


def test_edit_after_a_method_run_and_save_is_saved(tmp_path):
    make_synthetic_experiment(project=tmp_path / "p").close()
    expm = em.load_experiment(tmp_path / "p")
    a = expm.spatial_bin["s0"]  # held by the user across the run and its save
    expm.spatial_bin.normalize(run_on_samples=["s0"])  # saves s0 right away
    a.obs["note"] = "after the run"
    a.uns["mine"] = {"k": 1}
    expm.save()
    expm.close()
    back = _reopen(tmp_path / "p").spatial_bin["s0"]
    assert back.obs["note"].iloc[0] == "after the run" and back.uns["mine"]["k"] == 1 and "lognorm" in back.layers


def test_edit_of_a_lazily_loaded_sample_and_of_items_is_saved(tmp_path):
    make_synthetic_experiment(project=tmp_path / "p").close()
    xy = _reopen(tmp_path / "p").spatial_bin["s1"].obsm["spatial"].copy()
    expm = em.load_experiment(tmp_path / "p")
    expm.spatial_bin["s2"].X[0, 0] += 1.0  # a value of X changed in place
    x = float(expm.spatial_bin["s2"].X[0, 0])
    for name, a in expm.spatial_bin.items():
        if name == "s1":
            a.obsm["spatial"][:, 0] *= 2.0
    expm.save()
    expm.close()
    again = _reopen(tmp_path / "p")
    assert float(again.spatial_bin["s2"].X[0, 0]) == x
    assert (again.spatial_bin["s1"].obsm["spatial"][:, 0] == 2.0 * xy[:, 0]).all()


def test_objects_given_to_the_experiment_stay_tracked(tmp_path):
    import anndata as ad

    adatas = {"a": make_synthetic_experiment(n_samples=1).spatial_bin["s0"].copy()}
    expm = em.Experiment.from_anndata(adatas, modality="spatial-bin", taxa="mmu", harmonize_genes=False, copy=False,
                                      project=tmp_path / "p")
    adatas["a"].obs["late"] = 1  # the caller kept the object (copy=False)
    expm.save()
    replacement = ad.AnnData(adatas["a"].X.copy(), obs=adatas["a"].obs.copy(), var=adatas["a"].var.copy())
    replacement.layers["counts"] = adatas["a"].layers["counts"].copy()
    expm.spatial_bin["a"] = replacement
    expm.save()
    replacement.obs["later"] = 2  # edited after the set and its save
    expm.save()
    expm.close()
    back = _reopen(tmp_path / "p").spatial_bin["a"]
    assert back.obs["late"].iloc[0] == 1 and back.obs["later"].iloc[0] == 2


def test_edit_of_the_integrated_data_is_saved(tmp_path):
    expm = make_synthetic_experiment(project=tmp_path / "p")
    mdata = expm.merge()
    expm.save()
    mdata.mod["spatial-bin"].obs["tag"] = "x"
    expm.save()
    expm.close()
    assert _reopen(tmp_path / "p").integrated.mod["spatial-bin"].obs["tag"].iloc[0] == "x"


def test_slots_read_alone_are_not_attached(tmp_path):
    make_synthetic_experiment(project=tmp_path / "p").close()
    expm = em.load_experiment(tmp_path / "p", load_samples=True)
    meta = expm.get_sample_slots("spatial-bin", "s0", ["obs", "obsm", "uns"])
    meta.obs["x"] = 1
    meta.obsm["spatial"][:] = 0
    meta.uns["y"] = 2
    s0 = expm._sample("spatial-bin", "s0")
    assert "x" not in s0.obs and "y" not in s0.uns and s0.obsm["spatial"].any()
    expm.close()
