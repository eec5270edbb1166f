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
