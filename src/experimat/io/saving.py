"""Saving an experiment's data into a project folder: the changed files plus one manifest commit,
or a whole new project (save-as).

Every data file is written under a new name first (:mod:`experimat.io.files`); the manifest is
replaced last (:meth:`ProjectStore.commit`), so a crash leaves the old or the new project. A save
that fails before its commit removes the files it wrote.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import files as project_files
from . import models as model_store
from .manifest import replace_file
from .project import ProjectStore, now_iso

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

#: (modality, sample, the AnnData in memory, or None: copy the saved file)
SampleItem = tuple[str, str, "AnnData | None"]


def write_changes(store: ProjectStore, manifest: dict[str, Any], samples: Iterable[tuple[str, str, AnnData]],
                  integrated: MuData | None, *, compression: str | None) -> dict[str, Any]:
    """Write ``samples`` (and ``integrated`` when given) and commit ``manifest`` (a copy of the
    current one, edited here to name the new files). Returns the manifest as committed, re-read."""
    files = manifest["files"]
    try:
        for mod, s, adata in samples:
            old = manifest["samples"].get(mod, {}).get(s)
            rel, entry = project_files.write_sample(store, mod, s, adata, compression=compression)
            replace_file(files, rel, store.file_entry(rel), old)
            manifest["samples"].setdefault(mod, {})[s] = entry
        if integrated is not None:
            old = manifest.get("integrated")
            rel, manifest["integrated"] = project_files.write_integrated(store, integrated)
            replace_file(files, rel, store.file_entry(rel), old)
        return commit(store, manifest)
    except BaseException:
        store.discard_uncommitted()  # a refused or failed save leaves no file behind
        raise


def commit(store: ProjectStore, manifest: dict[str, Any]) -> dict[str, Any]:
    """Commit ``manifest``, adopt it as the store's current one and remove model folders no
    manifest names any more. Returns the committed manifest as read back."""
    store.commit(manifest)
    committed = store.read_manifest(adopt=True)
    model_store.collect_garbage(store, committed)
    return committed


def write_project(path: Path, *, force: bool, manifest: dict[str, Any], samples: Iterable[SampleItem],
                  integrated: MuData | None, source: ProjectStore | None, source_manifest: dict[str, Any],
                  verify: bool, compression: str | None) -> ProjectStore:
    """Create the project ``path`` holding every sample (save-as) and commit it; returns its store
    (holding the writer lock). Samples not in memory are copied (checked) from ``source``; its
    models and history come along. ``manifest`` is the current manifest (a copy, edited here)."""
    with project_files.creating_project(path, force=force) as new:
        manifest.pop("generation", None)
        manifest["created"] = now_iso()
        manifest["files"], manifest["samples"], manifest["integrated"], manifest["models"] = {}, {}, None, {}
        for mod, s, adata in samples:
            if adata is None:
                entry = source_manifest["samples"][mod][s]
                rel, e = project_files.copy_sample_file(source, new, mod, s, entry, source_manifest["files"][entry["file"]],
                                                        verify=verify)
            else:
                rel, e = project_files.write_sample(new, mod, s, adata, compression=compression)
            manifest["files"][rel] = new.file_entry(rel)
            manifest["samples"].setdefault(mod, {})[s] = e
        if integrated is not None:
            rel, manifest["integrated"] = project_files.write_integrated(new, integrated, quiet=False)
            manifest["files"][rel] = new.file_entry(rel)
        if source is not None:
            manifest["models"] = project_files.copy_models_and_history(source, new, source_manifest.get("models", {}))
        new.commit(manifest)
    return new
