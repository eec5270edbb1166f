"""Writing the data files of a project: sample AnnData files, the integrated MuData, a new folder.

Each function writes one file through :meth:`ProjectStore.writing` (temporary name, fsync, rename to
a new ``<stem>.<token>`` name) and returns the manifest entry that names it; the caller commits
the manifest (see :mod:`experimat.io.project`).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
