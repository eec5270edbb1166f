"""The project folder: round trips, checksums, locks, safety, dirty tracking, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from anndata.tests.helpers import assert_equal
from conftest import make_synthetic_experiment

import experimat as em


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


# -- sample sheet -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "why"),
    [("a/b", "path separator"), ("..", "'..'"), (".hidden", "starts with a dot"), ("a\x07b", "control"), ("", "empty"),
     ("x\\y", "separator"), ("integrated", "reserved")],
)
def test_unsafe_sample_names(name, why):
    df = pd.DataFrame({"sample": ["ok", name], "modality": "spatial-bin", "taxa": "mmu", "path": ""})
    with pytest.raises(em.InvalidInputError, match=why) as e:
        em.SampleTable(df)
    assert "row 2" in str(e.value)


def test_sheet_errors(tmp_path):
    df = pd.DataFrame({"sample": ["a", "a"], "modality": ["spatial-bin", "spatial-bin"], "taxa": "mmu"})
    with pytest.raises(em.InvalidInputError, match="duplicate sample names"):
        em.SampleTable(df)
    with pytest.raises(em.InvalidInputError, match="lacks the columns"):
        em.SampleTable(pd.DataFrame({"sample": ["a"]}))
    with pytest.raises(em.InvalidInputError, match="modality 'visium' is invalid"):
        em.SampleTable(pd.DataFrame({"sample": ["a"], "modality": ["visium"], "taxa": ["mmu"]}))
    # the same name in two modalities is fine
    st = em.SampleTable(pd.DataFrame({"sample": ["a", "a"], "modality": ["rna", "spatial-bin"], "taxa": "mmu"}))
    assert st.samples("rna") == ["a"]
    # TSV path
    p = tmp_path / "s.tsv"
    df = pd.DataFrame({"sample": ["a"], "modality": ["rna"], "taxa": ["hsa"], "batch": [""], "group": ["g"], "path": ["x"], "donor": ["d1"]})
    df.to_csv(p, sep="\t", index=False)
    st = em.SampleTable(p)
    assert st.df.loc[0, "donor"] == "d1" and st.df.loc[0, "batch"] == "a"
    assert st.resolve_path("rna", "a") == tmp_path / "x"


def test_missing_sample_file(tmp_path, muscle_sheet):
    sheet = muscle_sheet.copy()
    sheet.loc[1, "path"] = str(tmp_path / "gone")
    with pytest.raises(em.InvalidInputError, match="does not exist"):
        em.Experiment.from_table(sheet, project=tmp_path / "p")
    assert not (tmp_path / "p").exists()


# -- the real muscle project ------------------------------------------------------------------
def test_muscle_project_roundtrip(muscle_project, muscle_sheet):
    expm = em.load_experiment(muscle_project)
    assert expm.spatial_bin.samples == ["Vis5A_2dpi", "Vis7B_5dpi"]
    text = repr(expm)
    assert "Vis5A_2dpi" in text and "on disk" in text and "integrated: none" in text
    a = expm.spatial_bin["Vis5A_2dpi"]
    assert a.n_obs == 982
    for col in ("sample", "batch", "group", "modality", "taxa"):
        assert isinstance(a.obs[col].dtype, pd.CategoricalDtype)
    assert a.obs_names[0].startswith("Vis5A_2dpi:") and a.obs["barcode"].iloc[0] == a.obs_names[0].split(":", 1)[1]
    assert a.obs["group"].iloc[0] == "2dpi"
    assert a.uns["experimat"]["sample_info"]["days"] == "2"
    assert "Vis5A_2dpi" in a.uns["spatial"]
    expm.close()


def test_view_prints_slots(muscle_project, capsys):
    expm = em.load_experiment(muscle_project, mode="r")
    expm.spatial_bin.view("Vis7B_5dpi")
    out = capsys.readouterr().out
    assert "1011 obs" in out and "layers" in out and "counts: csr_matrix int32" in out and "spatial: ndarray float64 (1011, 2)" in out


def test_lazy_and_selected_loading(muscle_project):
    expm = em.load_experiment(muscle_project, mode="r")
    assert not any(expm._data["spatial-bin"].values())
    expm2 = em.load_experiment(muscle_project, mode="r", load_samples=["Vis7B_5dpi"])
    assert list(expm2._data["spatial-bin"]) == ["Vis7B_5dpi"]
    with pytest.raises(em.SampleNotFoundError, match="Vis5A_2dpi"):
        em.load_experiment(muscle_project, mode="r", load_samples=["nope"])


def test_merge_integrated(muscle_project):
    expm = em.load_experiment(muscle_project)
    assert expm.integrated is None
    with pytest.raises(em.ProjectError, match="merge"):
        expm.spatial_bin.qc_metrics(run_on_samples=None)
    mdata = expm.merge()
    mod = mdata.mod["spatial-bin"]
    assert mod.n_obs == 982 + 1011
    assert set(mod.obs["sample"].cat.categories) == {"Vis5A_2dpi", "Vis7B_5dpi"}
    assert "counts" in mod.layers and "barcode" in mod.obs
    tiled = mod.obsm["spatial.tiled"]
    s = mod.obs["sample"].to_numpy()
    assert tiled[s == "Vis5A_2dpi", 0].max() < tiled[s == "Vis7B_5dpi", 0].min()  # samples do not overlap
    np.testing.assert_array_equal(mod.obsm["spatial"][s == "Vis5A_2dpi"], expm.spatial_bin["Vis5A_2dpi"].obsm["spatial"])
    expm.save()
    expm.close()
    again = em.load_experiment(muscle_project, mode="r")
    assert again.integrated.mod["spatial-bin"].shape == mod.shape
    assert "integrated: spatial-bin" in repr(again)
    res = again.spatial_bin.qc_metrics(run_on_samples=None)
    assert len(res) == mod.n_obs


# -- round trip on synthetic data -------------------------------------------------------------
def test_save_load_equal(tmp_path):
    expm = make_synthetic_experiment(project=tmp_path / "p")
    before = {s: expm.spatial_bin[s].copy() for s in expm.spatial_bin.samples}
    expm.close()
    again = em.load_experiment(tmp_path / "p", load_samples=True)
    for s, a in before.items():
        assert_equal(again.spatial_bin[s], a)
    again.close()


def test_only_changed_samples_are_rewritten(tmp_path):
    expm = make_synthetic_experiment(n_samples=8, project=tmp_path / "p")
    expm.close()
    expm = em.load_experiment(tmp_path / "p", load_samples=True)
    files_before = {p.name for p in (tmp_path / "p" / "samples" / "spatial-bin").iterdir()}
    expm.save()  # nothing changed: no sample file is rewritten
    assert {p.name for p in (tmp_path / "p" / "samples" / "spatial-bin").iterdir()} == files_before
    expm.spatial_bin["s3"].obs["note"] = "x"  # an in-place edit, noticed through the fingerprint
    expm.save()
    after = {p.name for p in (tmp_path / "p" / "samples" / "spatial-bin").iterdir()}
    assert len(after - files_before) == 1 and next(iter(after - files_before)).startswith("s3.")
    assert after > files_before  # the old file of s3 stays one generation, for readers that opened the old manifest
    expm.spatial_bin["s4"].obs["note"] = "y"
    expm.save()
    latest = {p.name for p in (tmp_path / "p" / "samples" / "spatial-bin").iterdir()}
    assert [n for n in files_before - latest if n.startswith("s3.")]  # the next commit removed the old file of s3
    assert {n for n in files_before if n.startswith("s4.")} <= latest  # s4's old file stays one generation
    expm.close()
    assert em.load_experiment(tmp_path / "p", mode="r").spatial_bin["s3"].obs["note"].iloc[0] == "x"


def test_save_as_copies_project(tmp_path):
    expm = make_synthetic_experiment(project=tmp_path / "a")
    expm.spatial_bin.normalize(run_on_samples=["s1"])
    expm.save(tmp_path / "b")
    assert expm.project_path == (tmp_path / "b").resolve()
    assert not (tmp_path / "a" / ".lock").exists()
    b = em.load_experiment(tmp_path / "b", mode="r", load_samples=True)
    assert "lognorm" in b.spatial_bin["s1"].layers
    assert len(b.history()) == 3 + 0 or len(b.history()) >= 1
    expm.close()


def test_in_memory_experiment_save_later(tmp_path):
    expm = make_synthetic_experiment()
    assert expm.project_path is None
    with pytest.raises(em.ProjectError, match="expm.save"):
        expm.save()
    expm.spatial_bin.normalize(run_on_samples=True)
    expm.save(tmp_path / "later")
    hist = em.load_experiment(tmp_path / "later", mode="r").history()
    assert list(hist["method"]) == ["normalize"] * 3
    expm.close()


# -- integrity and safety ---------------------------------------------------------------------
def test_corrupt_and_missing_files(tmp_path):
    make_synthetic_experiment(project=tmp_path / "p").close()
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    rel = manifest["samples"]["spatial-bin"]["s1"]["file"]
    path = tmp_path / "p" / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    expm = em.load_experiment(tmp_path / "p", mode="r")
    with pytest.raises(em.CorruptFileError, match=rel.split("/")[-1]):
        expm.spatial_bin["s1"]
    assert expm.spatial_bin["s2"].n_obs > 0
    # verify=False skips hashing (size still checked)
    em.load_experiment(tmp_path / "p", mode="r", verify=False).spatial_bin["s1"]
    path.unlink()
    with pytest.raises(em.CorruptFileError, match="missing"):
        em.load_experiment(tmp_path / "p", mode="r")


def test_missing_manifest_and_newer_format(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(em.ProjectError, match="from_table"):
        em.load_experiment(tmp_path / "empty")
    with pytest.raises(em.ProjectError, match="no project folder"):
        em.load_experiment(tmp_path / "nothing")
    make_synthetic_experiment(project=tmp_path / "p").close()
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    m["format_version"] = 99
    (tmp_path / "p" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(em.FormatVersionError, match="newer"):
        em.load_experiment(tmp_path / "p")
    assert not (tmp_path / "p" / ".lock").exists()


def test_manifest_path_traversal_and_planted_pickle(tmp_path):
    outside = tmp_path / "x.h5ad"
    make_synthetic_experiment(n_samples=1, project=tmp_path / "src").close()
    shutil.copy(next((tmp_path / "src" / "samples" / "spatial-bin").iterdir()), outside)
    root = tmp_path / "src"
    (root / "evil.pkl").write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    m = json.loads((root / "manifest.json").read_text())
    old = m["samples"]["spatial-bin"]["s0"]["file"]
    m["files"]["../../x.h5ad"] = m["files"].pop(old)
    m["samples"]["spatial-bin"]["s0"]["file"] = "../../x.h5ad"
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(em.CorruptFileError, match="outside"):
        em.load_experiment(root, mode="r")
    assert not (tmp_path / "pwned").exists()


def test_second_writer_refused_and_reader_allowed(tmp_path):
    expm = make_synthetic_experiment(n_samples=1, project=tmp_path / "p")
    code = "import experimat as em, sys\ntry:\n    em.load_experiment(sys.argv[1])\nexcept em.ProjectLockedError as e:\n    print('LOCKED', e)\n"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p")], capture_output=True, text=True).stdout
    assert "LOCKED" in out and f"pid {os.getpid()}" in out
    ro = em.load_experiment(tmp_path / "p", mode="r")  # readers never block
    with pytest.raises(em.ReadOnlyError, match="mode='r'"):
        ro.save()
    expm.close()
    em.load_experiment(tmp_path / "p").close()


def test_stale_lock_needs_force(tmp_path):
    make_synthetic_experiment(n_samples=1, project=tmp_path / "p").close()
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "p" / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead), "started": "then", "token": "t"}))
    with pytest.raises(em.ProjectLockedError, match="force=True"):
        em.load_experiment(tmp_path / "p")
    em.load_experiment(tmp_path / "p", force=True).close()


def test_read_only_never_writes(tmp_path):
    make_synthetic_experiment(project=tmp_path / "p").close()
    before = _snapshot(tmp_path / "p")
    ro = em.load_experiment(tmp_path / "p", mode="r", load_samples=True)
    ro.spatial_bin.normalize(run_on_samples=True)  # runs in memory
    assert "lognorm" in ro.spatial_bin["s0"].layers
    with pytest.raises(em.ProjectError):
        ro.spatial_bin.normalize(run_on_samples=True, save=True)
    ro.close()
    assert _snapshot(tmp_path / "p") == before


# -- bad input --------------------------------------------------------------------------------
def test_bad_inputs_change_nothing(tmp_path):
    expm = make_synthetic_experiment(project=tmp_path / "p")
    before = _snapshot(tmp_path / "p")
    with pytest.raises(em.SampleNotFoundError, match="'s0', 's1', 's2'"):
        expm.spatial_bin.normalize(run_on_samples=["s0", "zz"])
    with pytest.raises(em.MissingSlotError, match="available layers"):
        expm.spatial_bin.normalize(layer="raw")
    with pytest.raises(em.InvalidInputError, match="spatial-bin"):
        expm.modality("visium")
    with pytest.raises(em.SampleNotFoundError):
        expm.rna["s0"]
    with pytest.raises(AttributeError, match="Available"):
        expm.spatial_bin.normalise  # noqa: B018
    assert _snapshot(tmp_path / "p") == before
    expm.close()


def test_nan_coordinates_and_non_counts(tmp_path):
    from experimat.datasets import synthetic_domains

    a = synthetic_domains(50, 2, 20, n_markers_per_domain=5)
    a.obsm["spatial"][3] = np.nan
    with pytest.raises(em.InvalidInputError, match="NaN"):
        em.Experiment.from_anndata({"a": a}, modality="spatial-bin", taxa="mmu", project=tmp_path / "p", harmonize_genes=False)
    b = synthetic_domains(50, 2, 20, n_markers_per_domain=5)
    b.layers["counts"] = b.layers["counts"] * 0.5
    with pytest.raises(em.NotCountsError, match="raw counts"):
        em.Experiment.from_anndata({"b": b}, modality="spatial-bin", taxa="mmu", project=tmp_path / "q", harmonize_genes=False)
    assert not (tmp_path / "p").exists() and not (tmp_path / "q").exists()
    c = synthetic_domains(50, 2, 20, n_markers_per_domain=5)
    del c.layers["counts"]
    c.X = np.log1p(c.X)
    expm = em.Experiment.from_anndata({"c": c}, modality="spatial-bin", taxa="mmu", harmonize_genes=False)
    with pytest.raises(em.MissingSlotError, match="counts"):
        expm.spatial_bin.qc_metrics()
    with pytest.raises(em.NotCountsError):
        expm.spatial_bin.qc_metrics(layer=None)


def test_existing_folder_refused(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "thesis.docx").write_text("precious")
    with pytest.raises(em.ProjectError, match="not empty"):
        make_synthetic_experiment(project=tmp_path / "p")
    assert (tmp_path / "p" / "thesis.docx").read_text() == "precious"
