"""The project folder, format version 1.

::

    project/
      manifest.json                  format, versions, sample table, files with sha256 + size
      samples/<modality>/<sample>.<token>.h5ad
      integrated.<token>.h5mu        optional
      models/<name>/                 weights (.npz / .pt) + config.json, never pickle
      history.jsonl                  one JSON line per method call and sample
      .lock                          writer lock (see :mod:`experimat.io.lock`)

Crash safety: every data file is written under a temporary name in its final folder,
flushed and fsynced, then renamed to a *new* unique name (``<sample>.<token>.h5ad``); the
manifest, which names the current file of every sample, is replaced last (write, fsync,
``os.replace``, fsync of the folder). A crash at any moment therefore leaves the folder with
either the old or the new manifest, each of which names complete files with matching
checksums.

One writer: a commit first checks that ``.lock`` still holds this writer's token.

Garbage collection after a commit deletes only data files that neither the manifest it
replaced nor the new one names, and never one the manifest now on disk names: the files of the
previous generation stay until the next commit, so a reader that opened it a moment ago can
still read them. Leftover temporary files of crashed writes are removed too.

Hostile folders: nothing follows a symbolic link inside the folder (a link on any path that
is read, written or deleted is refused with an error naming it), manifest paths must stay
inside the folder, and HDF5 files with external links, external storage or virtual datasets
are refused before they are read.

(DESIGN.md sketched ``samples/<modality>/<sample>.h5ad``; a fixed name cannot be swapped
atomically together with the manifest, hence the per-write token.)
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._errors import (
    CorruptFileError,
    FormatVersionError,
    InvalidInputError,
    ProjectChangedError,
    ProjectError,
    ReadOnlyError,
)
from .._keys import FORMAT_NAME, FORMAT_VERSION, FileName
from .._logging import logger
from . import history as _history
from ._durable import NOFOLLOW as _NOFOLLOW
from ._durable import atomic_write_bytes, now_iso, sha256_file
from ._durable import fsync_dir as _fsync_dir
from ._durable import fsync_file as _fsync_file
from .checksums import file_checksums
from .lock import WriterLock
from .manifest import named_files, validate_manifest

#: leftovers of crashed writers older than this are removed by a writer's garbage collection
_STALE_AFTER_S = 600.0


def check_hdf5_self_contained(path: Path, rel: str, root: Path) -> None:
    """Refuse an HDF5 file (``.h5ad`` / ``.h5mu``) that would read data from outside itself.

    External links, datasets with external raw storage and virtual datasets all make HDF5 read
    other files when the sample is loaded; the project's checksum covers only this file."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CorruptFileError(f"{rel} in {root} is not a readable HDF5 file ({e}).") from e
    with f:
        check_hdf5_file_self_contained(f, rel, root)


def check_hdf5_file_self_contained(f, rel: str, root: Path) -> None:
    """:func:`check_hdf5_self_contained` on an open ``h5py.File`` (e.g. one read through
    :class:`~experimat.io.checksums.VerifiedFile`)."""
    import h5py

    def refuse(what: str) -> None:
        raise CorruptFileError(
            f"{rel} in {root} contains {what}: reading it would read data from outside the file (and the project "
            "folder). experimat refuses such files. Rewrite the sample from a self-contained copy (read the data "
            "elsewhere, then expm.set_sample(...) and expm.save()), or remove the file's entry by restoring an older "
            "manifest."
        )

    seen: set[int] = set()
    stack = [f]
    while stack:
        group = stack.pop()
        for name in group:
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                refuse(f"an HDF5 external link ({group.name.rstrip('/')}/{name} -> {link.filename}:{link.path})")
            if isinstance(link, h5py.SoftLink):
                continue  # points inside this file; its target is visited under its own name
            obj = group.get(name)
            if obj is None:
                continue
            addr = h5py.h5o.get_info(obj.id).addr
            if addr in seen:
                continue
            seen.add(addr)
            if isinstance(obj, h5py.Group):
                stack.append(obj)
            elif isinstance(obj, h5py.Dataset):
                if obj.external:
                    refuse(f"a dataset with external storage ({obj.name} -> {obj.external[0][0]!r})")
                if obj.is_virtual:
                    refuse(f"a virtual dataset ({obj.name}, mapped from other files)")


def _is_lock_file(name: str) -> bool:
    return name == FileName.LOCK or name.startswith(f"{FileName.LOCK}.")


def _is_creation_leftover(path: Path) -> bool:
    """Whether ``path`` (in a folder without a manifest) is something only a project creation writes."""
    name = path.name
    if path.is_symlink():
        return False
    if name in (FileName.SAMPLES_DIR, FileName.MODELS_DIR):
        return path.is_dir()
    if name == FileName.HISTORY:
        return path.is_file()
    stems = (f"{FileName.INTEGRATED_STEM}.", f".{FileName.INTEGRATED_STEM}.", f".{FileName.MANIFEST}.")
    return path.is_file() and name.startswith(stems) and name.endswith((".h5mu", ".tmp"))


class ProjectStore:
    """Low-level access to a project folder (no AnnData semantics beyond read/write)."""

    def __init__(self, root: str | os.PathLike, *, mode: str = "r+") -> None:
        if mode not in ("r", "r+"):
            raise InvalidInputError(f"mode must be 'r' or 'r+', not {mode!r}.")
        self.root = Path(root).resolve()
        self.mode = mode
        self.lock = WriterLock(self.root)
        self._last_manifest: dict[str, Any] | None = None
        self._last_digest: str | None = None  # sha256 of the manifest bytes this store last read or wrote
        self._written: list[Path] = []  # data files written since the last commit

    # -- opening --------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / FileName.MANIFEST

    @property
    def writable(self) -> bool:
        return self.mode == "r+"

    def require_writable(self) -> None:
        if not self.writable:
            raise ReadOnlyError(f"the project {self.root} was opened with mode='r'; reopen it with mode='r+' to write.")

    def create(self, *, force: bool = False) -> None:
        """Make a new, empty project folder and take its lock.

        With ``force``, a folder without a manifest that holds only what an interrupted creation
        left behind (``samples/``, ``models/``, ``integrated.*``, ``history.jsonl``, temporary
        files) is emptied and reused; anything else in it is never touched."""
        if os.path.lexists(self.manifest_path):
            raise ProjectError(f"{self.root} already holds a project; open it with em.load_experiment({str(self.root)!r}).")
        if self.root.exists() and not self.root.is_dir():
            raise ProjectError(f"{self.root} is a file; choose a new folder for the project.")
        leftovers = [p for p in self.root.iterdir() if not _is_lock_file(p.name)] if self.root.exists() else []
        if leftovers and not (force and all(_is_creation_leftover(p) for p in leftovers)):
            foreign = [p.name for p in leftovers if not _is_creation_leftover(p)]
            hint = (
                f" It holds files experimat did not write ({foreign[:5]})."
                if foreign
                else " It holds only what an interrupted creation left behind: pass force=True to reuse it."
            )
            raise ProjectError(f"{self.root} exists and is not empty; choose a new folder for the project.{hint}")
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock.acquire(force=force)
        if leftovers:
            try:
                self.remove_contents()
            except BaseException:
                self.lock.release()
                raise
            logger.warning(f"reused {self.root}: removed what an interrupted creation left there (force=True)")

    def remove_contents(self) -> None:
        """Remove everything in the folder but the lock (a creation that failed, while holding the lock)."""
        import shutil

        for p in self.root.iterdir():
            if _is_lock_file(p.name):  # the lock, and the lock's own temporary files (io.lock)
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)

    def open(self, *, force: bool = False) -> dict[str, Any]:
        if not self.root.is_dir():
            raise ProjectError(
                f"no project folder at {self.root}. Create one with em.Experiment.from_table(sheet, project=path) "
                "or em.Experiment.from_anndata({...}, project=path)."
            )
        if not os.path.lexists(self.manifest_path):
            raise ProjectError(
                f"{self.root} has no {FileName.MANIFEST}: it is not an experimat project. Create one with "
                "em.Experiment.from_table(sheet, project=path)."
            )
        self.check_links()
        if self.writable:
            self.lock.acquire(force=force)
        try:
            return self.read_manifest(adopt=True)
        except BaseException:
            self.lock.release()
            raise

    def read_manifest(self, *, adopt: bool = False) -> dict[str, Any]:
        """Read and validate the manifest. ``adopt``: it becomes the base of this writer's next commit
        (which refuses if the manifest on disk is then another one)."""
        self.check_links([FileName.MANIFEST])
        try:
            fd = os.open(self.manifest_path, os.O_RDONLY | _NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                raw = f.read()
        except FileNotFoundError as e:
            raise CorruptFileError(f"{self.manifest_path} is missing; restore it from a backup.") from e
        try:
            manifest = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise CorruptFileError(f"{self.manifest_path} is not valid JSON ({e}); restore it from a backup.") from e
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise CorruptFileError(f"{self.manifest_path} is not an experimat manifest.")
        version = manifest.get("format_version")
        if not isinstance(version, int):
            raise CorruptFileError(f"{self.manifest_path} has no integer format_version.")
        if version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{self.root} uses project format {version}, newer than this experimat supports ({FORMAT_VERSION}); "
                "upgrade experimat (pip install -U experimat)."
            )
        if version < FORMAT_VERSION:
            raise FormatVersionError(
                f"{self.root} uses the older project format {version}; migrate it with em.migrate(path) (a backup is kept)."
            )
        validate_manifest(manifest, self.manifest_path)
        for rel in manifest["files"]:
            self.resolve(rel)  # refuse paths escaping the folder (or through links) before anything is read
        if adopt:
            self._last_manifest = manifest
            self._last_digest = hashlib.sha256(raw).hexdigest()
        return manifest

    # -- links ----------------------------------------------------------------------------------
    def _refuse_link(self, rel: str, path: Path) -> None:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise ProjectError(
            f"refusing to use the project {self.root}: {rel} is a symbolic link (-> {target}). experimat never follows "
            "links inside a project folder, because a save could then write or delete files outside it. Replace the "
            f"link by the real {'folder' if Path(path).is_dir() else 'file'} (move what it points to into the "
            "project), or keep the whole project folder on the other disk and open it there."
        )

    def check_links(self, rels: list[str] | tuple[str, ...] = ()) -> None:
        """Refuse symbolic links on the folder's fixed paths, its sample folders, and ``rels``."""
        fixed = [FileName.MANIFEST, FileName.HISTORY, FileName.SAMPLES_DIR, FileName.MODELS_DIR] if not rels else []
        for rel in [*fixed, *rels]:
            self._check_components(rel)
        if not rels:  # (links inside models/ are io.models' business: refused when named, unlinked by its GC)
            try:
                entries = list(os.scandir(self.root / FileName.SAMPLES_DIR))
            except (FileNotFoundError, NotADirectoryError):
                entries = []
            for e in entries:
                if e.is_symlink():
                    self._refuse_link(f"{FileName.SAMPLES_DIR}/{e.name}", Path(e.path))

    def _check_components(self, rel: str) -> None:
        path = self.root
        parts = rel.split("/")
        for i, part in enumerate(parts):
            path = path / part
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                return
            if stat.S_ISLNK(st.st_mode):
                self._refuse_link("/".join(parts[: i + 1]), path)

    # -- paths ----------------------------------------------------------------------------------
    def resolve(self, rel: str) -> Path:
        """The absolute path of a manifest entry; refuses anything outside the folder or through a link."""
        if not isinstance(rel, str) or not rel or rel.startswith(("/", "\\")) or "\\" in rel or "\x00" in rel:
            raise CorruptFileError(f"manifest entry {rel!r} is not a relative path inside the project.")
        parts = Path(rel).parts
        if any(p in ("..", "") for p in parts) or Path(rel).is_absolute():
            raise CorruptFileError(f"manifest entry {rel!r} points outside the project folder; refusing to read it.")
        self._check_components(rel)
        path = self.root / rel
        if not path.resolve().is_relative_to(self.root):
            raise CorruptFileError(f"manifest entry {rel!r} resolves outside the project folder; refusing to read it.")
        return path

    # -- data files -----------------------------------------------------------------------------
    def new_file(self, folder: str, stem: str, suffix: str) -> tuple[str, Path]:
        """A fresh relative path ``folder/stem.<token>suffix`` (never an existing name)."""
        token = uuid.uuid4().hex[:12]
        rel = f"{folder}/{stem}.{token}{suffix}" if folder else f"{stem}.{token}{suffix}"
        return rel, self.root / rel

    @contextmanager
    def writing(self, final: Path) -> Iterator[Path]:
        """Yield a temporary path next to ``final``; on success fsync and rename it to ``final``."""
        self.require_writable()
        rel = final.relative_to(self.root).as_posix()
        self._check_components(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._check_components(rel)
        tmp = final.with_name(f".{final.name}.tmp")
        try:
            yield tmp
            _fsync_file(tmp)
            os.replace(tmp, final)
            self._written.append(final)
            _fsync_dir(final.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def file_entry(self, rel: str) -> dict[str, Any]:
        """The manifest's ``files`` entry of a data file: sha256 and size, and per-block sha256 when
        it is larger than one block (see :mod:`experimat.io.checksums`)."""
        return file_checksums(self.root / rel)

    def check_file(self, rel: str, entry: dict[str, Any], *, verify: bool = True, hdf5_check: bool = True) -> Path:
        """The path of a manifest entry after checking it is a regular file of the recorded size, with
        ``verify`` its whole-file sha256 and with ``hdf5_check`` that an HDF5 file reads nothing outside itself."""
        path = self.resolve(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise CorruptFileError(f"{rel} is listed in the manifest of {self.root} but missing on disk.")
        if st.st_size != entry.get("size"):
            raise CorruptFileError(f"{rel} in {self.root} has {st.st_size} bytes; the manifest records {entry.get('size')} (corrupt or truncated).")
        if verify and sha256_file(path) != entry.get("sha256"):
            raise CorruptFileError(f"{rel} in {self.root} does not match its sha256 checksum (corrupt file).")
        if hdf5_check and path.suffix in (".h5ad", ".h5mu"):
            check_hdf5_self_contained(path, rel, self.root)
        return path

    def check_can_commit(self) -> None:
        """Raise unless this writer still holds the lock and the manifest on disk is the one it is based on."""
        self.lock.verify()
        if self._last_digest is not None and self._manifest_digest() != self._last_digest:
            raise ProjectChangedError(
                f"the manifest of {self.root} was replaced by another process since this experiment read it (a "
                "program that ignored the writer lock?); nothing was committed and no file was removed. Reopen the "
                "project with em.load_experiment() and redo the change."
            )

    def discard_uncommitted(self) -> None:
        """Remove the data files written since the last commit (a save that failed before its commit)."""
        for path in self._written:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._written.clear()

    def commit(self, manifest: dict[str, Any]) -> int:
        """Replace the manifest atomically (if this writer still holds the lock), then collect garbage."""
        self.require_writable()
        try:
            self.check_can_commit()
            self.check_links()
        except BaseException:
            self.discard_uncommitted()
            raise
        manifest = dict(manifest)
        manifest["format"] = FORMAT_NAME
        manifest["format_version"] = FORMAT_VERSION
        manifest["modified"] = now_iso()
        manifest["generation"] = int(manifest.get("generation", 0)) + 1
        validate_manifest(manifest, f"the manifest being written to {self.root}")
        data = json.dumps(manifest, indent=1, sort_keys=False).encode()
        replaced: list[Any] = []

        def last_check() -> None:
            self.check_can_commit()
            replaced.append(self._peek_manifest())

        try:
            atomic_write_bytes(self.manifest_path, data, before_replace=last_check)
        except BaseException:
            self.discard_uncommitted()
            raise
        self._written.clear()
        self._last_digest = hashlib.sha256(data).hexdigest()
        previous = replaced[0]
        keep = named_files(manifest) | named_files(self._last_manifest)
        if previous is None:
            logger.warning(f"the manifest replaced in {self.root} was unreadable; no files were removed")
        else:
            keep |= named_files(previous)
            self.collect_garbage(keep)
        self._last_manifest = manifest
        return manifest["generation"]

    def _manifest_digest(self) -> str | None:
        try:
            fd = os.open(self.manifest_path, os.O_RDONLY | _NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return None

    def _peek_manifest(self) -> dict[str, Any] | None:
        """The manifest now on disk ({} when there is none), or None when it cannot be read (never raises)."""
        try:
            fd = os.open(self.manifest_path, os.O_RDONLY | _NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                m = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            return {}  # a new project: there is no manifest yet
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            return None
        return m if isinstance(m, dict) else None

    def collect_garbage(self, keep: set[str]) -> None:
        """Remove data files and leftovers of crashed writes that no manifest in ``keep`` (nor the one on disk) names.

        Only regular files are removed, never through a link, never outside ``samples/<modality>/``
        and the top level, and never a file the manifest now on disk names."""
        on_disk = self._peek_manifest()
        if on_disk is None:
            return
        keep = keep | named_files(on_disk)
        now = time.time()
        folders = [("", self.root)]
        try:
            for e in os.scandir(self.root / FileName.SAMPLES_DIR):
                if e.is_dir(follow_symlinks=False):
                    folders.append((f"{FileName.SAMPLES_DIR}/{e.name}/", Path(e.path)))
        except (FileNotFoundError, NotADirectoryError):
            pass
        for prefix, folder in folders:
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for e in entries:
                if not e.is_file(follow_symlinks=False) or f"{prefix}{e.name}" in keep:
                    continue
                name = e.name
                if prefix:
                    garbage = name.endswith(".h5ad") or (name.startswith(".") and name.endswith(".tmp"))
                else:
                    garbage = (
                        (name.startswith(f"{FileName.INTEGRATED_STEM}.") and name.endswith(".h5mu"))
                        or (name.startswith(f".{FileName.INTEGRATED_STEM}.") and name.endswith(".tmp"))
                        or (name.startswith(f".{FileName.MANIFEST}.") and name.endswith(".tmp"))
                    )
                    if not garbage and name.startswith((".lock.new.", ".lock.breaking.")):
                        try:
                            garbage = now - e.stat(follow_symlinks=False).st_mtime > _STALE_AFTER_S
                        except FileNotFoundError:
                            continue
                if garbage:
                    try:
                        os.unlink(e.path)
                    except FileNotFoundError:
                        pass

    # -- history --------------------------------------------------------------------------------
    @property
    def history_path(self) -> Path:
        return self.root / FileName.HISTORY

    def append_history(self, records: list[dict[str, Any]]) -> None:
        self.require_writable()
        if not records:
            return
        self.lock.verify()
        self.check_links([FileName.HISTORY])
        _history.append_history(self.history_path, records)

    def read_history(self, *, warn: bool = True) -> list[dict[str, Any]]:
        self.check_links([FileName.HISTORY])
        return _history.read_history(self.history_path, warn=warn)

    @property
    def models_dir(self) -> Path:
        return self.root / FileName.MODELS_DIR


def migrate(path: str | os.PathLike) -> Path:
    """Upgrade a project folder of an older format to the current one, keeping a backup.

    Format 1 is the first format; there is nothing to migrate from yet, so this checks the
    folder and reports when it is already current.
    """
    store = ProjectStore(path, mode="r")
    manifest = json.loads(store.manifest_path.read_text())
    version = manifest.get("format_version")
    if version == FORMAT_VERSION:
        logger.info(f"{path} is already at format {FORMAT_VERSION}; nothing to migrate.")
        return store.root
    raise ProjectError(f"no migration from format {version!r} to {FORMAT_VERSION} exists.")

