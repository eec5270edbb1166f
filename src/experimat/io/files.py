"""Writing the data files of a project: sample AnnData files, the integrated MuData, a new folder.

Each function writes one file through :meth:`ProjectStore.writing` (temporary name, fsync, rename to
a new ``<stem>.<token>`` name) and returns the manifest entry that names it; the caller commits
the manifest (see :mod:`experimat.io.project`).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import CorruptFileError, InvalidInputError, ProjectChangedError, ProjectError
from .._keys import FileName
from .project import ProjectStore

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData


def slot_summary(adata: AnnData) -> dict[str, list[str]]:
    """The slot names of a sample as recorded in its manifest entry."""
    return {
        "obs": [str(c) for c in adata.obs.columns],
        "var": [str(c) for c in adata.var.columns],
        "layers": list(adata.layers.keys()),
        "obsm": list(adata.obsm.keys()),
        "obsp": list(adata.obsp.keys()),
        "uns": [str(k) for k in adata.uns.keys()],
    }


def write_sample(store: ProjectStore, modality: str, sample: str, adata: AnnData, *,
                 compression: str | None) -> tuple[str, dict[str, Any]]:
    """Write a sample's file; returns its relative path and its manifest ``samples`` entry."""
    rel, final = store.new_file(f"{FileName.SAMPLES_DIR}/{modality}", sample, ".h5ad")
    with store.writing(final) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        adata.write_h5ad(tmp, compression=compression)
    return rel, {"file": rel, "n_obs": int(adata.n_obs), "n_vars": int(adata.n_vars), "slots": slot_summary(adata)}


def copy_sample_file(src: ProjectStore, dst: ProjectStore, modality: str, sample: str, entry: dict[str, Any],
                     file_entry: dict[str, Any], *, verify: bool) -> tuple[str, dict[str, Any]]:
    """Copy a saved sample's file (checked against ``file_entry``) into another project."""
    path = src.check_file(entry["file"], file_entry, verify=verify)
    rel, final = dst.new_file(f"{FileName.SAMPLES_DIR}/{modality}", sample, ".h5ad")
    with dst.writing(final) as tmp:
        shutil.copyfile(path, tmp)
    return rel, dict(entry, file=rel)


def write_integrated(store: ProjectStore, mdata: MuData, *, quiet: bool = True) -> tuple[str, dict[str, Any]]:
    """Write the integrated MuData; returns its relative path and the manifest ``integrated`` entry."""
    rel, final = store.new_file("", FileName.INTEGRATED_STEM, ".h5mu")
    with store.writing(final) as tmp, warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", FutureWarning)
        mdata.write(str(tmp))
    return rel, {"file": rel, "mods": {m: list(map(int, a.shape)) for m, a in mdata.mod.items()}}


@contextmanager
def creating_project(path: Path, *, force: bool) -> Iterator[ProjectStore]:
    """Create a project folder and hold its writer lock while the caller fills and commits it.

    When the body fails before a manifest is committed, the folder is emptied (and removed when
    it did not exist before) and the lock released: a failed creation leaves nothing behind."""
    new = ProjectStore(path, mode="r+")
    existed = new.root.exists()
    new.create(force=force)
    try:
        yield new
    except BaseException:
        if not new.manifest_path.exists():  # a failed creation leaves nothing behind
            new.remove_contents()
        new.lock.release()
        if not existed:
            try:
                new.root.rmdir()  # only when empty
            except OSError:
                pass
        raise


def read_sample(path: Path) -> AnnData:
    """Read a sample file (checked by the caller)."""
    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return ad.read_h5ad(path)


def slots_read(slots: list[str]) -> list[str]:
    """The elements a read of ``slots`` opens: the slots plus ``obs`` and ``var``."""
    return sorted({*slots, "obs", "var"})


def read_sample_slots(f, slots: list[str]) -> AnnData:
    """Read only the groups ``slots`` (plus ``obs`` and ``var``) of an open sample file (``h5py.File``):
    an AnnData with ``X=None``."""
    import anndata as ad
    from anndata.io import read_elem

    parts = {k: read_elem(f[k]) for k in slots_read(slots) if k in f}
    return ad.AnnData(**parts)


def read_parts(store: ProjectStore, rel: str, entry: dict[str, Any], path: Path, read: Callable[[Any], Any],
               names: list[str], *, verify: bool) -> Any:
    """Read the elements ``names`` of a sample file with ``read(h5py.File)``; with ``verify``, each is checked.

    An entry with per-element checksums (:mod:`experimat.io.checksums`) has just those elements
    checked, through the same open file; an entry without them has its whole file checked first."""
    import h5py

    from .checksums import sha256_file, verify_elements

    if verify and "elements" not in entry and sha256_file(path) != entry.get("sha256"):
        raise CorruptFileError(f"{rel} in {store.root} does not match its sha256 checksum (corrupt file).")
    with h5py.File(path, "r") as f:
        if verify and "elements" in entry:
            verify_elements(f, names, entry, f"{rel} in {store.root}")
        return read(f)


def read_integrated(path: Path) -> MuData:
    """Read the integrated MuData file (checked by the caller)."""
    import mudata as md

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        # rna and spatial mods share gene names by design; MuData's global var keeps them apart
        warnings.filterwarnings("ignore", message="Cannot join columns with the same name", category=UserWarning)
        return md.read_h5mu(path)


def read_checked(store: ProjectStore, manifest: dict[str, Any], rel: str, read: Callable[[Path], Any], *, verify: bool,
                 elements: list[str] | None = None) -> Any:
    """Check a file named by the opened ``manifest`` and read it with ``read``.

    With ``elements`` (a partial read), ``read`` takes the open ``h5py.File`` and only those
    elements are checked (see :func:`read_parts`); else the whole file is checked, then ``read(path)``.

    A writer may commit a new manifest and remove this file between the check and the read
    (readers never lock): a missing or changed file then raises :class:`ProjectChangedError`
    (``load_experiment`` retries with the new manifest) instead of a bare I/O error."""
    try:
        entry = manifest["files"][rel]
        if elements is not None:
            path = store.check_file(rel, entry, verify=False)
            return read_parts(store, rel, entry, path, read, elements, verify=verify)
        path = store.check_file(rel, entry, verify=verify)
        return read(path)
    except (CorruptFileError, OSError) as e:  # h5py raises a bare OSError when GC removed the file mid-open
        _raise_if_changed_on_disk(store, manifest)
        if isinstance(e, CorruptFileError):
            raise
        raise CorruptFileError(f"{rel} in {store.root} could not be read ({type(e).__name__}: {e}); it is "
                               "damaged although its size matches (open with verify=True to check its checksum).") from e


def _raise_if_changed_on_disk(store: ProjectStore, manifest: dict[str, Any]) -> None:
    try:
        current = store.read_manifest()
    except ProjectError:
        return
    if current.get("generation") != manifest.get("generation"):
        raise ProjectChangedError(
            f"the project {store.root} was saved by another writer since it was opened (generation "
            f"{manifest.get('generation')} -> {current.get('generation')}); reopen it with em.load_experiment()."
        )


#: the slots that :func:`read_sample_slots` can read without ``X`` and layers
SLOTS_ALONE = ("obs", "var", "obsm", "obsp", "uns")


def check_slot_names(slots: Iterable[str]) -> list[str]:
    """The slot names as a list; refuses ``X``, layers and unknown names."""
    slots = list(slots)
    bad = [x for x in slots if x not in SLOTS_ALONE]
    if bad:
        raise InvalidInputError(f"slots {bad} cannot be read alone; choose from {list(SLOTS_ALONE)} (X and layers: get_sample).")
    return slots


def slots_of(adata: AnnData, slots: list[str]) -> AnnData:
    """An AnnData with ``X=None`` holding copies of ``obs``, ``var`` and the given slots of ``adata``
    (not attached to ``adata``: editing it leaves the sample as it is)."""
    import copy

    import anndata as ad

    parts = {k: copy.deepcopy(dict(getattr(adata, k))) for k in slots if k not in ("obs", "var")}
    return ad.AnnData(obs=adata.obs.copy(), var=adata.var.copy(), **parts)


def copy_models_and_history(src: ProjectStore, dst: ProjectStore, models: dict[str, Any]) -> dict[str, Any]:
    """Copy the models (verified) and ``history.jsonl`` of ``src`` into ``dst``; returns the new ``models`` entries."""
    from . import models as model_store

    out = {name: model_store.copy_model(src, dst, name, entry) for name, entry in models.items()}
    if src.history_path.exists():
        shutil.copyfile(src.history_path, dst.history_path)
    return out
