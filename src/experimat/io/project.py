"""The project folder, format version 1.

::

    project/
      manifest.json                  format, versions, sample table, files with sha256 + size
      samples/<modality>/<sample>.<token>.h5ad
      integrated.<token>.h5mu        optional
      models/<name>/                 weights (.npz / .pt) + config.json, never pickle
      history.jsonl                  one JSON line per method call and sample
      .lock                          writer lock (host, pid, start time)

Crash safety: every data file is written under a temporary name in its final folder,
flushed and fsynced, then renamed to a *new* unique name (``<sample>.<token>.h5ad``); the
manifest, which names the current file of every sample, is replaced last (write, fsync,
``os.replace``, fsync of the folder). A crash at any moment therefore leaves the folder with
either the old or the new manifest, each of which names complete files with matching
checksums. Files that no manifest names any more are removed after the commit.

(DESIGN.md sketched ``samples/<modality>/<sample>.h5ad``; a fixed name cannot be swapped
atomically together with the manifest, hence the per-write token.)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._errors import (
    CorruptFileError,
    FormatVersionError,
    InvalidInputError,
    ProjectError,
    ProjectLockedError,
    ReadOnlyError,
)
from .._keys import FORMAT_NAME, FORMAT_VERSION, FileName
from .._logging import logger

_CHUNK = 1 << 22


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems do not allow opening folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, replace)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WriterLock:
    """A lock file (``.lock``) with host, pid and start time; one writer at a time."""

    def __init__(self, root: Path) -> None:
        self.path = root / FileName.LOCK
        self.held = False
        self._token = uuid.uuid4().hex

    def info(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, OSError):
            return {"host": "?", "pid": -1, "started": "?", "token": "?"}

    def _describe(self, info: dict[str, Any]) -> str:
        return f"host {info.get('host')!r}, pid {info.get('pid')}, since {info.get('started')}"

    def is_stale(self, info: dict[str, Any]) -> bool:
        return info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1)))

    def acquire(self, *, force: bool = False) -> None:
        payload = {"host": socket.gethostname(), "pid": os.getpid(), "started": now_iso(), "token": self._token}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.info()
                if info is None:
                    continue  # released in between: try again
                stale = self.is_stale(info)
                same_host = info.get("host") == socket.gethostname()
                if force and (stale or not same_host):
                    logger.warning(f"breaking the writer lock of {self._describe(info)} (force=True)")
                    self.path.unlink(missing_ok=True)
                    continue
                hint = (
                    "The holder is not running any more: reopen with force=True to break the stale lock."
                    if stale
                    else "Wait for it to finish or close it (expm.close()), or open read-only with mode='r'."
                )
                raise ProjectLockedError(f"the project {self.path.parent} is locked by a writer ({self._describe(info)}). {hint}") from None
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return
        raise ProjectLockedError(f"could not take the writer lock {self.path}.")

    def release(self) -> None:
        if not self.held:
            return
        info = self.info()
        if info is not None and info.get("token") == self._token:
            self.path.unlink(missing_ok=True)
        self.held = False


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

    # -- opening --------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / FileName.MANIFEST

    @property
    def writable(self) -> bool:
        return self.mode == "r+"

    def require_writable(self) -> None:
        if not self.writable:
            raise ReadOnlyError(f"the project {self.root} was opened with mode='r'; reopen with mode='r+' to write.")

    def create(self, *, force: bool = False) -> None:
        """Make a new, empty project folder and take its lock.

        With ``force``, a folder without a manifest that holds only what an interrupted creation
        left behind (``samples/``, ``models/``, ``integrated.*``, ``history.jsonl``, temporary
        files) is emptied and reused; anything else in it is never touched."""
        if self.manifest_path.exists():
            raise ProjectError(f"{self.root} already holds a project; open it with em.load_experiment({str(self.root)!r}).")
        if self.root.exists() and not self.root.is_dir():
            raise ProjectError(f"{self.root} is a file; choose a new folder for the project.")
        leftovers = [p for p in self.root.iterdir() if p.name != FileName.LOCK] if self.root.exists() else []
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
            if p.name == FileName.LOCK:
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
        if not self.manifest_path.exists():
            raise ProjectError(
                f"{self.root} has no {FileName.MANIFEST}: it is not an experimat project. Create one with "
                "em.Experiment.from_table(sheet, project=path)."
            )
        if self.writable:
            self.lock.acquire(force=force)
        try:
            return self.read_manifest()
        except BaseException:
            self.lock.release()
            raise

    def read_manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise CorruptFileError(f"{self.manifest_path} is not valid JSON ({e}).") from e
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
        for rel in manifest.get("files", {}):
            self.resolve(rel)  # refuse paths escaping the folder before anything is read
        return manifest

    # -- paths ----------------------------------------------------------------------------------
    def resolve(self, rel: str) -> Path:
        """The absolute path of a manifest entry; refuses anything outside the project folder."""
        if not isinstance(rel, str) or not rel or rel.startswith(("/", "\\")) or "\\" in rel or "\x00" in rel:
            raise CorruptFileError(f"manifest entry {rel!r} is not a relative path inside the project.")
        parts = Path(rel).parts
        if any(p in ("..", "") for p in parts) or Path(rel).is_absolute():
            raise CorruptFileError(f"manifest entry {rel!r} points outside the project folder; refusing to read it.")
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root):
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
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp")
        try:
            yield tmp
            _fsync_file(tmp)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def file_entry(self, rel: str) -> dict[str, Any]:
        path = self.root / rel
        return {"sha256": sha256_file(path), "size": path.stat().st_size}

    def check_file(self, rel: str, entry: dict[str, Any], *, verify: bool = True) -> Path:
        path = self.resolve(rel)
        if not path.is_file():
            raise CorruptFileError(f"{rel} is listed in the manifest of {self.root} but missing on disk.")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise CorruptFileError(f"{rel} in {self.root} has {size} bytes; the manifest records {entry.get('size')} (corrupt or truncated).")
        if verify and sha256_file(path) != entry.get("sha256"):
            raise CorruptFileError(f"{rel} in {self.root} does not match its sha256 checksum (corrupt file).")
        return path

    def commit(self, manifest: dict[str, Any]) -> int:
        """Replace the manifest atomically, then remove files no manifest names."""
        self.require_writable()
        manifest = dict(manifest)
        manifest["format"] = FORMAT_NAME
        manifest["format_version"] = FORMAT_VERSION
        manifest["modified"] = now_iso()
        manifest["generation"] = int(manifest.get("generation", 0)) + 1
        data = json.dumps(manifest, indent=1, sort_keys=False).encode()
        atomic_write_bytes(self.manifest_path, data)
        self.collect_garbage(manifest)
        return manifest["generation"]

    def collect_garbage(self, manifest: dict[str, Any]) -> None:
        keep = {(self.root / rel).resolve() for rel in manifest.get("files", {})}
        candidates = list((self.root / FileName.SAMPLES_DIR).glob("*/*")) + list(self.root.glob(f"{FileName.INTEGRATED_STEM}.*"))
        candidates += list(self.root.glob(f".{FileName.INTEGRATED_STEM}.*"))
        for p in candidates:
            if not p.is_file() or p.resolve() in keep:
                continue
            if p.suffix in (".h5ad", ".h5mu", ".tmp"):
                p.unlink(missing_ok=True)

    # -- history --------------------------------------------------------------------------------
    @property
    def history_path(self) -> Path:
        return self.root / FileName.HISTORY

    def append_history(self, records: list[dict[str, Any]]) -> None:
        self.require_writable()
        if not records:
            return
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        with open(self.history_path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())

    def read_history(self) -> list[dict[str, Any]]:
        if not self.history_path.exists():
            return []
        out = []
        with open(self.history_path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a crash: skip it
                    continue
        return out

    @property
    def models_dir(self) -> Path:
        return self.root / FileName.MODELS_DIR
