"""The data-set registry: files verified by size and sha256, downloads checked before they are put in place, and
the SpatialDE data located through ``em.settings.data_dir``."""

from __future__ import annotations

import shutil

import pytest
from conftest import shared_data_dir

import experimat as em
from experimat.datasets import _registry as reg

MOB = "spatialde_mouse_olfactory_bulb_rep11"


def test_registry_lists_sources_and_checksums():
    table = em.datasets.registry()
    assert {MOB, "spatialde_breast_cancer_layer2"} <= set(table.index)
    for ds in reg.REGISTRY.values():
        for f in ds.files:
            assert len(f.sha256) == 64 and f.size > 0 and f.source
            assert f.url is None or f.url.startswith("https://")
            assert f.source_url is None or f.source_url.startswith("https://")
            assert f.convert is None or (f.convert in reg.CONVERTERS and len(f.source_sha256) == 64 and f.source_size > 0)


def test_fetch_verifies_local_copies(tmp_path):
    f = reg.REGISTRY[MOB].file("MOB_sample_info.csv")
    with em.settings.override(data_dir=tmp_path):
        with pytest.raises(em.InvalidInputError, match="missing under"):
            em.datasets.fetch(MOB, ["MOB_sample_info.csv"], download=False)
        with pytest.raises(em.InvalidInputError, match="unknown data set"):
            em.datasets.fetch("nope")
        (tmp_path / MOB).mkdir()
        bad = tmp_path / MOB / f.name
        bad.write_text("x,y\n1,2\n")
        with pytest.raises(em.CorruptFileError, match="does not match the registry"):
            em.datasets.fetch(MOB, [f.name])
        # a file without a public byte copy is never "downloaded" from somewhere else
        with pytest.raises(em.InvalidInputError, match="Rep11_MOB_count_matrix"):
            em.datasets.fetch(MOB, ["Rep11_MOB_0.csv.gz"])


def test_download_is_verified_before_it_is_put_in_place(tmp_path, monkeypatch):
    src = tmp_path / "remote.csv"
    src.write_bytes(b"spot,x,y\n")
    good = reg.DataFile("a.csv", src.stat().st_size, reg.sha256_of(src), "test", src.as_uri())
    wrong = reg.DataFile("b.csv", src.stat().st_size, "0" * 64, "test", src.as_uri())
    ds = reg.Dataset("toy", "toy", "none", (good, wrong))
    monkeypatch.setitem(reg.REGISTRY, "toy", ds)
    with em.settings.override(data_dir=tmp_path / "data"):
        folder = em.datasets.fetch("toy", ["a.csv"])
        assert (folder / "a.csv").read_bytes() == src.read_bytes()
        with pytest.raises(em.CorruptFileError):
            em.datasets.fetch("toy", ["b.csv"])
    assert sorted(p.name for p in (tmp_path / "data" / "toy").iterdir()) == ["a.csv"]  # no partial file left


def test_spatialde_sheet_from_local_copies(tmp_path):
    root = shared_data_dir()
    if root is None or not (root / MOB).is_dir():
        pytest.skip("the SpatialDE data are not available (set EXPERIMAT_DATA_DIR)")
    for name in (MOB, "spatialde_breast_cancer_layer2"):
        shutil.copytree(root / name, tmp_path / name)
    with em.settings.override(data_dir=tmp_path):
        sheet = em.datasets.spatialde_sheet()
        pub = em.datasets.spatialde_published("MOB")
    assert list(sheet["sample"]) == ["MOB", "BC"]
    assert all(str(tmp_path) in p for p in sheet["path"])
    assert (pub["qval"] < 0.05).sum() == 67  # the SpatialDE paper's count


# --------------------------------------------------------------------------- converted files
def _converted_toy(tmp_path, monkeypatch, *, source_sha256=None):
    import gzip

    src = tmp_path / "remote" / "counts.tsv"
    src.parent.mkdir()
    src.write_text("spot\tGeneA\tGeneB\n1x1\t3\t0\n1x2\t0\t7\n" * 50)
    expected = gzip.compress(src.read_bytes(), compresslevel=9, mtime=0)
    f = reg.DataFile("counts.tsv.gz", len(expected), __import__("hashlib").sha256(expected).hexdigest(), "test, gzipped",
                     convert="gzip", source_url=src.as_uri(), source_size=src.stat().st_size,
                     source_sha256=source_sha256 or reg.sha256_of(src))
    monkeypatch.setitem(reg.REGISTRY, "toy", reg.Dataset("toy", "toy", "none", (f,)))
    return src, expected


def test_fetch_downloads_and_converts_a_raw_source(tmp_path, monkeypatch):
    import gzip

    src, expected = _converted_toy(tmp_path, monkeypatch)
    with em.settings.override(data_dir=tmp_path / "data"):
        with pytest.raises(em.InvalidInputError, match="missing under"):
            em.datasets.fetch("toy", download=False)
        folder = em.datasets.fetch("toy")
        out = folder / "counts.tsv.gz"
        assert out.read_bytes() == expected and gzip.decompress(out.read_bytes()) == src.read_bytes()
        assert sorted(p.name for p in folder.iterdir()) == ["counts.tsv.gz"]  # no source or partial file left
        em.datasets.fetch("toy")  # the local copy is verified, not downloaded again
        src.write_text("changed")
        assert em.datasets.fetch("toy") == folder


def test_fetch_refuses_a_source_that_changed(tmp_path, monkeypatch):
    _converted_toy(tmp_path, monkeypatch, source_sha256="0" * 64)
    with em.settings.override(data_dir=tmp_path / "data"):
        with pytest.raises(em.CorruptFileError, match="original of counts.tsv.gz"):
            em.datasets.fetch("toy")
    assert not any((tmp_path / "data" / "toy").iterdir())


def test_converted_file_needs_a_known_converter_and_its_source():
    with pytest.raises(ValueError, match="convert="):
        reg.DataFile("x.gz", 1, "0" * 64, "test", convert="rds_to_csv", source_url="https://x", source_size=1,
                     source_sha256="0" * 64)
    with pytest.raises(ValueError, match="source_sha256"):
        reg.DataFile("x.gz", 1, "0" * 64, "test", convert="gzip", source_url="https://x")


STU = "st_mouse_brain_and_olfactory_bulb_stutility"


def _stutility_copy(tmp_path, files):
    root = shared_data_dir()
    if root is None or not (root / STU).is_dir():
        pytest.skip(f"the STUtility data ({STU}) are not available (set EXPERIMAT_DATA_DIR)")
    for name in files:
        (tmp_path / STU / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / STU / name, tmp_path / STU / name)
    return root / STU


def test_stutility_gzip_conversion_reproduces_the_registered_bytes(tmp_path, monkeypatch):
    """The MOB tables were gzipped with ``gzip -n -9``; the registry's converter makes the same bytes from the
    public original (served here from a local file:// copy of it)."""
    import gzip

    root = _stutility_copy(tmp_path, [])
    f = reg.REGISTRY[STU].file("mob/alignment_table_MOB1.tsv.gz")
    original = tmp_path / "alignment_table_MOB1.tsv"
    original.write_bytes(gzip.decompress((root / f.name).read_bytes()))
    local = reg.DataFile(f.name, f.size, f.sha256, f.source, convert=f.convert, source_url=original.as_uri(),
                         source_size=f.source_size, source_sha256=f.source_sha256)
    monkeypatch.setitem(reg.REGISTRY, "stu_local", reg.Dataset("stu_local", "", "", (local,)))
    with em.settings.override(data_dir=tmp_path / "data"):
        folder = em.datasets.fetch("stu_local")
    assert (folder / f.name).read_bytes() == (root / f.name).read_bytes()


def test_stutility_sheet_builds_a_project_with_images_and_symbols(tmp_path):
    files = ["mob/MOB1.tsv.gz", "mob/alignment_table_MOB1.tsv.gz", "mob/MOB1.jpg"]
    _stutility_copy(tmp_path, files)
    with em.settings.override(data_dir=tmp_path):
        with pytest.raises(em.InvalidInputError, match="Hippo9"):
            em.datasets.stutility_sheet(["Hippo9"])
        sheet = em.datasets.stutility_sheet(["MOB1"])
        expm = em.Experiment.from_table(sheet, project=tmp_path / "p")
    a = expm.spatial_bin["MOB1"]
    assert a.shape == (379, 1000)  # the spots under the tissue (selected == 1), as the data's README says
    assert a.uns["spatial"]["MOB1"]["images"]["hires"].shape[:2] == (1905, 1905)
    xy = a.obsm["spatial"]
    assert (xy > 0).all() and (xy < 1905).all()  # pixels of that image
    assert a.var["gene"].astype(str).str.match(r"^[A-Za-z]").mean() > 0.95 and "Mbp" in set(a.var["gene"])
    expm.close()


def test_synthetic_sections_share_domains_and_differ_by_section():
    import numpy as np

    sections = em.datasets.synthetic_sections(3, 900, 4, effect=0.5, seed=0)
    assert list(sections) == ["s0", "s1", "s2"]
    whole = em.datasets.synthetic_domains(900, 4, layout="voronoi", seed=0)
    assert sum(a.n_obs for a in sections.values()) == whole.n_obs
    names = np.concatenate([a.obs_names for a in sections.values()])
    assert len(set(names)) == whole.n_obs and all(n.startswith(("s0_", "s1_", "s2_")) for n in names)
    for a in sections.values():
        assert (a.obsm["spatial"].min(0) == 0).all()
        X = a.X.toarray() if hasattr(a.X, "toarray") else a.X
        assert (X >= 0).all() and (X == np.round(X)).all()
        assert a.obs["domain"].nunique() >= 2
    depth = [float(np.asarray(a.X.sum(1)).mean()) for a in sections.values()]
    assert max(depth) / min(depth) > 1.05  # each section has its own depth factor
    again = em.datasets.synthetic_sections(3, 900, 4, effect=0.5, seed=0)
    assert all((np.asarray(again[k].X) == np.asarray(a.X)).all() for k, a in sections.items())
