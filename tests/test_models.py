"""Saved models: one base class and layout, a registry of model classes, verified and pickle-free loading."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, make_synthetic_experiment

import experimat as em
from experimat import _saved_model as sm
from experimat.methods.deconv.cell2location import ReferenceSignatures
from experimat.methods.deconv.destvi import CondSCVIModel

LEGACY = DATA / "legacy_models" / "project"


class _Evil:
    """Unpickling this creates the marker file (what a planted pickle would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@em.register_model("tests.Centroids")
class Centroids(em.SavedModel):
    """A plugin's model, defined outside experimat."""

    format_version = 2

    def __init__(self, centres: np.ndarray, names: list[str]) -> None:
        self.centres, self.names = centres, names

    def get_state(self):
        return {"names": self.names}, {"centres": self.centres}

    @classmethod
    def from_state(cls, config, arrays):
        return cls(arrays["centres"], list(config["names"]))


def _centroids_v1(config, arrays):  # version 1 stored the centres transposed, under "means"
    arrays = {"centres": arrays.pop("means").T}
    return config, arrays


Centroids.upgrades = {1: _centroids_v1}


def _sha(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _plant(root: Path, name: str, files: dict[str, bytes], **fields) -> None:
    """Write ``models/<name>.x/`` with ``files`` and a manifest entry with correct checksums + ``fields``."""
    folder = root / "models" / f"{name}.x"
    folder.mkdir(parents=True, exist_ok=True)
    for fname, data in files.items():
        (folder / fname).write_bytes(data)
    m = json.loads((root / "manifest.json").read_text())
    entry = {"dir": f"models/{name}.x", "files": {f: _sha(d) for f, d in files.items()}, "saved": "2026-01-01T00:00:00+00:00"}
    entry.update(fields)
    m.setdefault("models", {})[name] = entry
    (root / "manifest.json").write_text(json.dumps(m))


def _evil_pt(marker: Path) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"module.x": _Evil(marker)}, buf)
    return buf.getvalue()


def _evil_npz(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, centres=np.array([_Evil(marker)], dtype=object))
    return buf.getvalue()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture
def legacy(tmp_path):
    dst = tmp_path / "legacy"
    shutil.copytree(LEGACY, dst)
    return dst


@pytest.fixture
def project(tmp_path):
    expm = make_synthetic_experiment(n_samples=1, n_spots=60, n_genes=20, project=tmp_path / "p")
    yield expm
    expm.close()


# -- the base class and the registry --------------------------------------------------------------
def test_plugin_model_round_trip_and_layout(project):
    model = Centroids(np.arange(6.0).reshape(3, 2), ["a", "b", "c"])
    folder = project.save_model("centres", model)
    assert folder.parent == project.project_path / "models" and folder.name.startswith("centres.")
    assert sorted(p.name for p in folder.iterdir()) == sorted(sm.MODEL_FILES)
    entry = project._manifest["models"]["centres"]
    assert entry["model_type"] == "tests.Centroids" and entry["format_version"] == 2 and "class" not in entry
    assert sorted(entry["files"]) == sorted(sm.MODEL_FILES)
    project.close()
    again = em.load_experiment(project.project_path, mode="r")
    back = again.load_model("centres")
    assert isinstance(back, Centroids) and back.names == ["a", "b", "c"]
    np.testing.assert_array_equal(back.centres, model.centres)
    assert "tests.Centroids" in em.registered_models()


def test_plugin_joint_method_result_is_stored(project, monkeypatch):
    from experimat.core import registry

    monkeypatch.setitem(registry.methods_for("spatial-bin"), "fit_centres", None)  # removed again afterwards

    def fit_centres(adatas, *, key_added: str = "centres"):
        a = next(iter(adatas.values()))
        return Centroids(np.asarray(a.obsm["spatial"][:3], dtype=float), ["x", "y", "z"])

    em.register_method(fit_centres, modalities=["spatial-bin"], kind="joint")
    project.spatial_bin.fit_centres(run_on_samples=True, key_added="plugin_centres")
    assert "plugin_centres" in project.models
    assert isinstance(project.load_model("plugin_centres"), Centroids)


def test_unregistered_model_refused_before_anything_is_written(project):
    class Loose(em.SavedModel):
        def get_state(self):
            return {}, {}

    before = _tree(project.project_path)
    with pytest.raises(em.InvalidInputError, match="register_model"):
        project.save_model("loose", Loose())
    with pytest.raises(em.InvalidInputError, match="register_model"):
        project.save_model("dict", {"weights": np.zeros(3)})
    assert _tree(project.project_path) == before
    assert not (project.project_path / "models").exists() or not any((project.project_path / "models").iterdir())


def test_registry_rejects_bad_registrations():
    with pytest.raises(em.InvalidInputError, match="SavedModel"):
        em.register_model("tests.NotAModel")(dict)
    with pytest.raises(em.InvalidInputError, match="already registered"):

        @em.register_model("tests.Centroids")
        class Other(em.SavedModel):
            pass

    with pytest.raises(em.InvalidInputError, match="name"):
        em.register_model("a/b")


def test_object_arrays_are_refused_on_save(tmp_path):
    model = Centroids(np.array(["x", None], dtype=object), ["a"])
    with pytest.raises(em.InvalidInputError, match="dtype object"):
        model.save(tmp_path / "m")


def test_upgrade_path_and_versions(tmp_path):
    # a version-1 folder (centres stored transposed as "means") is read through the explicit upgrade
    v1 = json.dumps({"model_type": "tests.Centroids", "format_version": 1, "layout": sm.LAYOUT_VERSION,
                     "arrays": ["means"], "config": {"names": ["a", "b"]}}).encode()
    buf = io.BytesIO()
    np.savez(buf, means=np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    files = {sm.CONFIG_FILE: v1, sm.ARRAYS_FILE: buf.getvalue()}
    model = sm.decode_model(files)
    np.testing.assert_array_equal(model.centres, [[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]])
    # a newer version than this class knows is refused with the fix
    v9 = json.loads(v1)
    v9["format_version"] = 9
    with pytest.raises(em.FormatVersionError, match="upgrade experimat"):
        sm.decode_model({**files, sm.CONFIG_FILE: json.dumps(v9).encode()})
    # the arrays must be exactly the listed ones
    bad = json.loads(v1)
    bad["arrays"] = ["means", "other"]
    with pytest.raises(em.CorruptFileError, match="lists"):
        sm.decode_model({**files, sm.CONFIG_FILE: json.dumps(bad).encode()})
    # a standalone folder round-trips; a foreign class is refused
    folder = Centroids(np.ones((2, 2)), ["u", "v"]).save(tmp_path / "c")
    assert Centroids.load(folder).names == ["u", "v"]
    with pytest.raises(em.InvalidInputError, match="not a CondSCVIModel"):
        CondSCVIModel.load(folder)


# -- older projects ---------------------------------------------------------------------------------
def test_legacy_project_models_load_through_the_upgrade_path(legacy, monkeypatch):
    import torch

    from experimat.methods.deconv.cell2location import _reference
    from experimat.methods.deconv.destvi import _condscvi

    calls = []
    for cls, mod, fn in ((ReferenceSignatures, _reference, "_upgrade_signatures_v1"), (CondSCVIModel, _condscvi, "_upgrade_condscvi_v1")):
        orig = getattr(mod, fn)

        def spy(config, arrays, _orig=orig, _name=fn):
            calls.append(_name)
            return _orig(config, arrays)

        monkeypatch.setattr(cls, "upgrades", {1: spy})
    expm = em.load_experiment(legacy)
    assert expm.models == ["reference_signatures", "condscvi"]
    sig = expm.load_model("reference_signatures")
    ref = expm.load_model("condscvi")
    assert calls == ["_upgrade_signatures_v1", "_upgrade_condscvi_v1"]
    entries = expm._manifest["models"]
    with np.load(legacy / entries["reference_signatures"]["dir"] / "signatures.npz", allow_pickle=False) as z:
        expected = pd.DataFrame(z["signatures"], index=z["genes"].astype(str), columns=z["labels"].astype(str))
    pd.testing.assert_frame_equal(sig.signatures, expected)
    assert "format_version" not in sig.config and sig.config["method"] == "cluster_mean"
    state = torch.load(legacy / entries["condscvi"]["dir"] / "model.pt", weights_only=True)
    assert set(ref.state) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(ref.state[k].numpy(), v.numpy())
    assert ref.genes == json.loads((legacy / entries["condscvi"]["dir"] / "config.json").read_text())["genes"]
    # a legacy model is usable and is saved again in the current layout
    expm.save_model("condscvi", ref)
    entry = expm._manifest["models"]["condscvi"]
    assert entry["model_type"] == "destvi.CondSCVIModel" and sorted(entry["files"]) == sorted(sm.MODEL_FILES)
    again = expm.load_model("condscvi")
    np.testing.assert_array_equal(again.state["latent_mean"].numpy(), state["latent_mean"].numpy())
    expm.close()


def test_legacy_reference_is_used_by_name(legacy):
    from experimat.datasets import pseudo_spots

    expm = em.load_experiment(legacy)
    ref = expm.rna["ref"]
    spots = pseudo_spots(ref, "class", n_spots=30, cells_per_spot=(2, 4), n_regions=2, types_per_region=2, depth=None, layer="counts")
    expm.add_sample(spots, sample="v1", modality="spatial-bin", taxa="mmu", harmonize_genes=False)
    expm.spatial_bin.deconvolve(method="destvi", reference="condscvi", run_on_samples=True, max_epochs=3, key_added="old.destvi")
    expm.spatial_bin.deconvolve(method="cell2location", reference="reference_signatures", run_on_samples=True, max_epochs=3,
                                min_shared_genes=20, key_added="old.cell2location")
    a = expm.spatial_bin["v1"]
    assert "old.destvi.proportions" in a.obsm and "old.cell2location.means" in a.obsm
    assert list(a.obsm["old.destvi.proportions"].columns) == ["interneurons", "pyramidal SS"]
    expm.close()


def test_save_as_copies_verified_models(legacy, tmp_path):
    expm = em.load_experiment(legacy)
    expm.save_model("centres", Centroids(np.eye(2), ["a", "b"]))
    new = expm.save(tmp_path / "copy")
    for name in ("reference_signatures", "condscvi", "centres"):
        assert expm._manifest["models"][name]["dir"].startswith("models/")
        assert type(expm.load_model(name)).__name__ in ("ReferenceSignatures", "CondSCVIModel", "Centroids")
    assert {p.name.split(".")[0] for p in (new / "models").iterdir()} == {"reference_signatures", "condscvi", "centres"}
    expm.close()


# -- hostile folders -------------------------------------------------------------------------------
def _deconvolve(expm, name):
    return expm.spatial_bin.deconvolve(method="destvi", reference=name, run_on_samples=True, max_epochs=2)


@pytest.mark.parametrize("attack", ["import_path_files_empty", "legacy_class_evil_pt", "npz_object_array", "unknown_type"])
@pytest.mark.parametrize("via", ["load_model", "deconvolve"])
def test_planted_pickle_never_runs_even_with_torch_env(project, tmp_path, monkeypatch, attack, via):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    root = project.project_path
    project.close()
    cfg = json.dumps({"format_version": 1, "genes": ["g"], "cell_types": ["t"]}).encode()
    if attack == "import_path_files_empty":  # what ran code before: an import path, a file as 'dir', no files
        (root / "models").mkdir(exist_ok=True)
        (root / "models" / "evil.pt").write_bytes(_evil_pt(marker))
        m = json.loads((root / "manifest.json").read_text())
        m["models"] = {"evil": {"dir": "models/evil.pt", "class": "experimat.methods.deconv.destvi._modules:torch", "files": {}}}
        (root / "manifest.json").write_text(json.dumps(m))
    elif attack == "legacy_class_evil_pt":
        _plant(root, "evil", {"config.json": cfg, "model.pt": _evil_pt(marker)},
               **{"class": "experimat.methods.deconv.destvi._condscvi:CondSCVIModel"})
    elif attack == "npz_object_array":
        doc = {"model_type": "tests.Centroids", "format_version": 2, "layout": 2, "arrays": ["centres"], "config": {"names": []}}
        _plant(root, "evil", {sm.CONFIG_FILE: json.dumps(doc).encode(), sm.ARRAYS_FILE: _evil_npz(marker)}, model_type="tests.Centroids")
    else:
        doc = {"model_type": "torch", "format_version": 1, "layout": 2, "arrays": [], "config": {}}
        _plant(root, "evil", {sm.CONFIG_FILE: json.dumps(doc).encode(), sm.ARRAYS_FILE: _evil_pt(marker)}, model_type="torch")
    expm = em.load_experiment(root)
    try:
        with pytest.raises(em.ExperimatError) as info:
            expm.load_model("evil") if via == "load_model" else _deconvolve(expm, "evil")
        assert isinstance(info.value, em.CorruptFileError) or "CorruptFileError" in str(info.value)
        if attack == "unknown_type":
            assert "tests.Centroids" in str(info.value) and "destvi.CondSCVIModel" in str(info.value)
    finally:
        expm.close()
    assert not marker.exists()


def test_entry_without_files_or_with_bad_checksum_is_refused(project):
    project.save_model("c", Centroids(np.eye(2), ["a", "b"]))
    root = project.project_path
    project.close()
    m = json.loads((root / "manifest.json").read_text())
    good = m["models"]["c"]
    for mutate, match in (
        (lambda e: e.update(files={}), "no files"),
        (lambda e: e["files"].pop(sm.ARRAYS_FILE), "exactly"),
        (lambda e: e["files"][sm.ARRAYS_FILE].update(sha256="0" * 64), "sha256"),
        (lambda e: e.update(dir="models/../samples"), "directly inside models"),
        (lambda e: e.update(dir="samples/spatial-bin"), "directly inside models"),
        (lambda e: e.update({"class": "x:y"}), "exactly one"),
    ):
        e = json.loads(json.dumps(good))
        mutate(e)
        m["models"]["c"] = e
        (root / "manifest.json").write_text(json.dumps(m))
        with em.load_experiment(root, mode="r") as expm, pytest.raises(em.CorruptFileError, match=match):
            expm.load_model("c")
    # a changed file (same size) is refused too
    m["models"]["c"] = good
    (root / "manifest.json").write_text(json.dumps(m))
    arrays = root / good["dir"] / sm.ARRAYS_FILE
    data = bytearray(arrays.read_bytes())
    data[-1] ^= 1
    arrays.write_bytes(bytes(data))
    with em.load_experiment(root, mode="r") as expm, pytest.raises(em.CorruptFileError, match="sha256"):
        expm.load_model("c")


def test_links_in_model_folders_are_refused_and_extra_files_ignored(project, tmp_path):
    project.save_model("c", Centroids(np.eye(2), ["a", "b"]))
    folder = project.project_path / project._manifest["models"]["c"]["dir"]
    marker = tmp_path / "pwned"
    (folder / "extra.pt").write_bytes(_evil_pt(marker))  # not in the manifest: never read
    assert isinstance(project.load_model("c"), Centroids)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.npz").write_bytes(b"secret")
    (folder / "link.npz").symlink_to(outside / "secret.npz")
    with pytest.raises(em.CorruptFileError, match="symbolic link"):
        project.load_model("c")
    with pytest.raises(em.CorruptFileError, match="symbolic link"):
        project.save(tmp_path / "copy")
    assert not any(p.read_bytes() == b"secret" for p in (tmp_path / "copy").rglob("*") if p.is_file())
    (folder / "link.npz").unlink()
    # a listed file replaced by a link to a copy of itself is refused as well
    real = folder / sm.ARRAYS_FILE
    shutil.copy(real, outside / "arrays.npz")
    real.unlink()
    real.symlink_to(outside / "arrays.npz")
    with pytest.raises(em.CorruptFileError, match="symbolic link"):
        project.load_model("c")
    assert not marker.exists()


def test_models_gc_removes_unnamed_folders_never_link_targets(project, tmp_path):
    project.save_model("c", Centroids(np.eye(2), ["a", "b"]))
    first = project._manifest["models"]["c"]["dir"]
    project.save_model("c", Centroids(np.eye(3), ["a", "b", "c"]))  # replaces: the old folder goes
    models = project.project_path / "models"
    assert not (project.project_path / first).exists()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    (models / "orphan.123").mkdir()
    (models / "orphan.123" / "config.json").write_text("{}")
    (models / "link.456").symlink_to(outside, target_is_directory=True)
    project.save_model("d", Centroids(np.eye(1), ["a"]))
    assert (outside / "keep.txt").read_text() == "precious"
    names = sorted(p.name.split(".")[0] for p in models.iterdir())
    assert names == ["c", "d"]
    assert project.load_model("c").names == ["a", "b", "c"]


def test_symlinked_models_folder_is_refused(project, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    models = project.project_path / "models"
    if models.exists():
        shutil.rmtree(models)
    models.symlink_to(outside, target_is_directory=True)
    with pytest.raises(em.ProjectError, match="symbolic link"):
        project.save_model("c", Centroids(np.eye(2), ["a", "b"]))
    assert not any(outside.iterdir())


# -- DeepST keeps its weights inside the project ----------------------------------------------------
def test_deepst_model_is_stored_in_the_project_and_nothing_outside(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("leidenalg")
    from experimat.datasets import synthetic_domains
    from experimat.methods.domains.deepst import DeepSTModel

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    adatas = {f"s{i}": synthetic_domains(120, 3, 40, n_markers_per_domain=8, seed=i) for i in range(2)}
    expm = em.Experiment.from_anndata(adatas, modality="spatial-bin", taxa="mmu", project=tmp_path / "p", harmonize_genes=False)
    before = _tree(expm.project_path)
    with pytest.raises(em.InvalidInputError, match="outside the project"):
        expm.spatial_bin.spatial_detect_domains_deepst(run_on_samples=["s0"], n_domains=3, save_path=tmp_path / "out",
                                                       pre_epochs=5, epochs=3, use_gpu=False)
    with pytest.raises(em.InvalidInputError, match="outside the project"):
        expm.spatial_bin.detect_domains(method="deepst", run_on_samples=["s0"], n_domains=3, save_path=tmp_path / "out")
    assert _tree(expm.project_path) == before and not (tmp_path / "out").exists()
    res = expm.spatial_bin.spatial_detect_domains_deepst(run_on_samples=True, n_domains=3, pre_epochs=5, epochs=3, use_gpu=False)
    expm.spatial_bin.integrate_domains_deepst(run_on_samples=True, n_domains=3, pre_epochs=5, epochs=3, use_gpu=False)
    assert {"deepst.s0", "deepst.s1", "deepst.integrated"} <= set(expm.models)
    expm.close()
    again = em.load_experiment(tmp_path / "p", mode="r")
    m0 = again.load_model("deepst.s0")
    assert isinstance(m0, DeepSTModel) and m0.config["method"] == "deepst"
    for k, v in res["s0"].attrs["model"].state.items():
        np.testing.assert_array_equal(m0.state[k], v)
    integrated = again.load_model("deepst.integrated")
    assert integrated.config["samples"] == ["s0", "s1"]
    m0.network()  # the saved weights rebuild the network (strict state-dict load) ...
    assert integrated.network().domain_head is not None  # ... with the batch head of the integrated fit
    assert not any(work.iterdir())  # nothing written outside the project (no save_path, no temp left)
    files = [p for p in (tmp_path / "p" / "models").rglob("*") if p.is_file()]
    assert files and {p.name for p in files} == set(sm.MODEL_FILES)


@pytest.mark.slow
def test_deepst_models_stored_from_worker_processes(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("leidenalg")
    from experimat.datasets import synthetic_domains

    adatas = {f"s{i}": synthetic_domains(120, 3, 40, n_markers_per_domain=8, seed=i) for i in range(2)}
    expm = em.Experiment.from_anndata(adatas, modality="spatial-bin", taxa="mmu", project=tmp_path / "p", harmonize_genes=False)
    expm.spatial_bin.spatial_detect_domains_deepst(run_on_samples=True, n_domains=3, pre_epochs=5, epochs=3, use_gpu=False, n_jobs=2)
    assert {"deepst.s0", "deepst.s1"} <= set(expm.models)
    assert expm.load_model("deepst.s1").config["method"] == "deepst"
    expm.close()


def test_failed_model_write_changes_nothing(project, monkeypatch):
    from experimat.io.project import ProjectStore

    project.save_model("c", Centroids(np.eye(2), ["a", "b"]))
    before = _tree(project.project_path)
    real = ProjectStore.writing

    def failing(self, final):
        if final.name == sm.ARRAYS_FILE:
            raise OSError(28, "No space left on device")
        return real(self, final)

    monkeypatch.setattr(ProjectStore, "writing", failing)
    with pytest.raises(OSError):
        project.save_model("c", Centroids(np.eye(3), ["a", "b", "c"]))
    monkeypatch.undo()
    assert _tree(project.project_path) == before  # no half-written folder, the manifest untouched
    assert project.load_model("c").names == ["a", "b"]
