"""Opening a project folder as an :class:`~experimat.Experiment` (with retries while a writer commits)."""

from __future__ import annotations

import os
import stat
import weakref
from collections.abc import Iterable
from typing import Any

from .._errors import CorruptFileError, InvalidInputError, ProjectChangedError, ProjectError, SampleNotFoundError
from ..io.project import ProjectStore
from .experiment import Experiment, _release
from .sample_table import SampleTable


def load_experiment(
    path: str | os.PathLike,
    *,
    mode: str = "r+",
    load_samples: bool | Iterable[str] = False,
    verify: bool = True,
    force: bool = False,
) -> Experiment:
    """Open a project folder.

    Parameters
    ----------
    path
        The project folder.
    mode
        ``"r+"`` (default) takes the writer lock; ``"r"`` never locks and never writes.
    load_samples
        ``False``: read samples lazily on first access; ``True``: read all now; a list of names:
        read those now.
    verify
        Verify sha256 checksums of files as they are read (``False`` checks sizes only).
    force
        Break a stale writer lock: one whose holder is known to be dead on this machine (its
        pid is gone or now belongs to another process, or the machine rebooted), or a malformed
        lock file. A live lock, and any lock taken on another machine, is never broken; for a
        machine known to be gone use :func:`experimat.break_lock`.

    Examples
    --------
    >>> expm = em.load_experiment("projects/muscle", mode="r")  # doctest: +SKIP
    """
    from ..methods._checks import check_bool, check_path

    check_path("path", path)
    check_bool("verify", verify)
    check_bool("force", force)
    if not (isinstance(load_samples, (bool, str)) or load_samples is None or
            (isinstance(load_samples, Iterable) and all(isinstance(s, str) for s in load_samples))):
        raise InvalidInputError(f"load_samples must be True, False, a sample name or a list of names, not {load_samples!r}.")
    store = ProjectStore(path, mode=mode)
    manifest = store.open(force=force)  # releases the lock itself if the manifest is refused
    try:
        return _open_experiment(store, manifest, load_samples=load_samples, verify=verify)
    except BaseException:
        store.lock.release()  # a failed open never keeps the lock
        raise


def _table_of(store: ProjectStore, manifest: dict[str, Any]) -> SampleTable:
    try:
        return SampleTable.from_records(manifest.get("sample_table", []))
    except (InvalidInputError, KeyError, TypeError, ValueError) as e:
        raise CorruptFileError(f"{store.manifest_path} is damaged: its sample_table is invalid ({e}). Restore "
                               "manifest.json from a backup or a copy of the project.") from e


def _open_experiment(store: ProjectStore, manifest: dict[str, Any], *, load_samples, verify: bool) -> Experiment:
    for attempt in range(5):
        if attempt > 0:
            manifest = store.read_manifest(adopt=True)
        expm = Experiment(_table_of(store, manifest), _store=store, _manifest=manifest, verify=verify)
        expm._finalizer.detach()  # until the open succeeds, the caller releases the lock
        for rel, entry in manifest["files"].items():  # cheap existence + size check of every file
            p = store.resolve(rel)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                break
            if not stat.S_ISREG(st.st_mode) or st.st_size != entry["size"]:
                break
        else:
            try:
                _load_requested(expm, load_samples)
            except (CorruptFileError, ProjectChangedError):
                if attempt < 4 and store.read_manifest().get("generation") != manifest.get("generation"):
                    continue
                raise
            expm._finalizer = weakref.finalize(expm, _release, store)
            return expm
        current = store.read_manifest()
        if current.get("generation") == manifest.get("generation"):
            for rel, entry in manifest["files"].items():
                store.check_file(rel, entry, verify=False)  # raises CorruptFileError naming the file
        # a writer committed in between: read the new manifest
    raise ProjectError(f"{store.root} kept changing while it was being opened; try again.")


def _load_requested(expm: Experiment, load_samples: bool | Iterable[str]) -> None:
    if load_samples is False or load_samples is None:
        return
    names = None if load_samples is True else ([load_samples] if isinstance(load_samples, str) else list(load_samples))
    for mod in expm.modalities:
        for s in expm.table.samples(mod):
            if names is None or s in names:
                expm._sample(mod, s)
    if names is None:
        expm._integrated_data()  # reads the integrated data too
    else:
        all_names = {s for m in expm.modalities for s in expm.table.samples(m)}
        for n in names:
            if n not in all_names:
                raise SampleNotFoundError(n, sorted(all_names))
