"""Partial reads (``get_sample_slots``) check the elements they read against per-element
checksums in the manifest (io/checksums.py), without hashing the whole file: a damaged byte in
what they read is refused, a damaged byte in ``X`` is found by the full read."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_synthetic_experiment
from test_project import _snapshot

import experimat as em
from experimat.io.checksums import ELEMENTS, element_sha256, file_checksums


def _project(tmp_path: Path) -> tuple[Path, Path, dict]:
    root = tmp_path / "p"
    expm = make_synthetic_experiment(n_samples=2, n_spots=300, n_genes=40, project=root)
    expm.close()
    m = json.loads((root / "manifest.json").read_text())
    rel = m["samples"]["spatial-bin"]["s0"]["file"]
    return root, root / rel, m


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def _offset(path: Path, dataset: str) -> int:
    with h5py.File(path, "r") as f:
        ds = f[dataset] if isinstance(f[dataset.split("/")[0]], h5py.Group) else f[dataset.split("/")[0]]
        if ds.chunks:
            out = []
            ds.id.chunk_iter(lambda c: out.append(c.byte_offset))
            return min(out) + 3
        return ds.id.get_offset() + 3


def test_manifest_records_element_checksums(tmp_path):
    root, path, m = _project(tmp_path)
    entry = m["files"][path.relative_to(root).as_posix()]
    with h5py.File(path, "r") as f:
        present = [k for k in ELEMENTS if k in f]
    assert sorted(entry["elements"]) == sorted(present) and {"obs", "var", "obsm", "uns"} <= set(present)
    again = file_checksums(path)
    assert again == entry  # deterministic: the same file gives the same sums (no memory addresses hashed)
    with h5py.File(path, "r") as f:  # an element's sum changes with its values
        before = element_sha256(f["obsm"])
    _flip(path, _offset(path, "obsm/spatial"))
    with h5py.File(path, "r") as f:
        assert element_sha256(f["obsm"]) != before


def test_damage_in_x_does_not_stop_a_partial_read_but_is_found_by_a_full_one(tmp_path):
    root, path, _ = _project(tmp_path)
    _flip(path, _offset(path, "X/data"))
    expm = em.load_experiment(root, mode="r")
    part = expm.get_sample_slots("spatial-bin", "s0")
    assert part.X is None and part.obsm["spatial"].shape == (300, 2)
    with pytest.raises(em.CorruptFileError, match="sha256"):
        expm.get_sample("spatial-bin", "s0")


@pytest.mark.parametrize(("dataset", "element"), [("obsm/spatial", "obsm"), ("obs/_index", "obs"), ("var/_index", "var")])
def test_damage_in_what_a_partial_read_reads_is_refused(tmp_path, dataset, element):
    root, path, _ = _project(tmp_path)
    with h5py.File(path, "r") as f:
        is_string = f[dataset].dtype.kind == "O"
        values = list(f[dataset][:]) if is_string else []
    if is_string:  # damage a string itself (in the global heap; var holds gene names twice: index and column)
        data = path.read_bytes()
        rare = next(v for v in values[::-1] if len(v) > 3 and data.count(v) <= 2)
        for pos in [i for i in range(len(data)) if data.startswith(rare, i)]:
            _flip(path, pos + 1)
    else:
        _flip(path, _offset(path, dataset))
    before = _snapshot(root)
    expm = em.load_experiment(root, mode="r")
    # strings are hashed with their whole global-heap collections, which HDF5 shares between elements
    named = f"({element}|obs)" if is_string else element
    with pytest.raises(em.CorruptFileError, match=f"element '{named}'.*sha256.*backup"):
        expm.get_sample_slots("spatial-bin", "s0")
    assert expm.get_sample_slots("spatial-bin", "s1").n_obs == 300  # the other sample is untouched
    em.load_experiment(root, mode="r", verify=False).get_sample_slots("spatial-bin", "s0")  # verify=False skips it
    assert _snapshot(root) == before


def test_manifest_without_element_sums_checks_the_whole_file(tmp_path):
    """Projects saved before the element sums existed: partial reads check the whole file."""
    root, path, m = _project(tmp_path)
    for entry in m["files"].values():
        entry.pop("elements", None)
    (root / "manifest.json").write_text(json.dumps(m))
    assert em.load_experiment(root, mode="r").get_sample_slots("spatial-bin", "s0").n_obs == 300
    _flip(path, _offset(path, "X/data"))
    with pytest.raises(em.CorruptFileError, match="sha256"):
        em.load_experiment(root, mode="r").get_sample_slots("spatial-bin", "s0")


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda e: e.update(elements=[1]), "must be an object"),
    (lambda e: e["elements"].update(X="0" * 64), "'X', which is not one of"),
    (lambda e: e["elements"].update(obs="xyz"), r"\['obs'\] must be 64"),
])
def test_damaged_element_sums_are_refused(tmp_path, damage, problem):
    root, path, m = _project(tmp_path)
    damage(m["files"][path.relative_to(root).as_posix()])
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(em.CorruptFileError, match=f"elements.*{problem}"):
        em.load_experiment(root, mode="r")


def test_a_resaved_sample_gets_new_sums_and_others_keep_theirs(tmp_path):
    root, _, m = _project(tmp_path)
    expm = em.load_experiment(root)
    a = expm.spatial_bin["s1"]
    a.obsm["spatial"] = np.asarray(a.obsm["spatial"]) + 1.0
    expm.save()
    expm.close()
    m2 = json.loads((root / "manifest.json").read_text())
    f0, f1 = (m["samples"]["spatial-bin"][s]["file"] for s in ("s0", "s1"))
    assert m2["samples"]["spatial-bin"]["s0"]["file"] == f0 and m2["files"][f0] == m["files"][f0]
    new1 = m2["samples"]["spatial-bin"]["s1"]["file"]
    assert new1 != f1 and m2["files"][new1]["elements"]["obsm"] != m["files"][f1]["elements"]["obsm"]
    back = em.load_experiment(root, mode="r").get_sample_slots("spatial-bin", "s1")
    np.testing.assert_allclose(back.obsm["spatial"], np.asarray(a.obsm["spatial"]))


def test_a_new_string_column_is_saved_once_not_again_with_the_next_change(tmp_path):
    """Writing an h5ad turns string columns into categoricals in place; the next save must not take that for
    a change (a 500,000-bin sample would be rewritten by every later save)."""
    root, _, _ = _project(tmp_path)
    expm = em.load_experiment(root)
    a = expm.get_sample("spatial-bin", "s0")
    a.obs["note"] = "changed"  # strings: stored as a categorical
    expm.save()
    first = json.loads((root / "manifest.json").read_text())["samples"]["spatial-bin"]
    expm.get_sample("spatial-bin", "s1").obs["note"] = "other"
    expm.save()
    second = json.loads((root / "manifest.json").read_text())["samples"]["spatial-bin"]
    assert second["s0"]["file"] == first["s0"]["file"] and second["s1"]["file"] != first["s1"]["file"]
    expm.close()
