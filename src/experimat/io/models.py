"""Models inside a project folder: ``models/<name>.<token>/`` with the files of :mod:`experimat._saved_model`.

A model folder is written under a fresh name through the store's atomic writer (temp file, fsync,
rename) and becomes part of the project only when the manifest naming it is committed; folders no
manifest names are removed after a commit. The manifest entry of a model::

    {"dir": "models/<name>.<token>", "model_type": "<registered name>", "format_version": 2,
     "files": {"config.json": {"sha256": ..., "size": ...}, "arrays.npz": {...}}, "saved": "<iso time>"}

Entries written by experimat <= 0.1 carry ``"class"`` (an import path) instead of ``"model_type"``;
they are read through :func:`experimat._saved_model.decode_legacy` (the path is matched against the
registered classes, never imported). On load every listed file is read once, checked against its size
and sha256, and parsed from those same bytes; symbolic links are refused and files the manifest does
not list are never read.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from .._errors import CorruptFileError, ProjectError
from .._keys import FileName
from .._saved_model import (
    MODEL_FILES,
    SavedModel,
    decode_legacy,
    decode_model,
    encode_model,
    read_plain_file,
)
from .project import ProjectStore, now_iso

_SHA = re.compile(r"^[0-9a-f]{64}$")


def _models_dir(store: ProjectStore) -> Path:
    folder = store.root / FileName.MODELS_DIR
    if folder.is_symlink():
        raise ProjectError(
            f"{folder} is a symbolic link; experimat never follows links out of a project. Replace it with a "
            "real folder (move the models into it) and open the project again."
        )
    return folder


def _write_files(store: ProjectStore, name: str, files: dict[str, bytes]) -> dict[str, Any]:
    rel = f"{FileName.MODELS_DIR}/{name}.{uuid.uuid4().hex[:12]}"
    folder = _models_dir(store) / rel.split("/", 1)[1]
    folder.mkdir(parents=True)
    entries = {}
    try:
        for fname, data in files.items():
            with store.writing(folder / fname) as tmp:
                tmp.write_bytes(data)
            entries[fname] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return {"dir": rel, "files": entries, "saved": now_iso()}


def write_model(store: ProjectStore, name: str, model: SavedModel) -> dict[str, Any]:
    """Write ``model`` into a new ``models/<name>.<token>/``; return its manifest entry (not committed yet)."""
    store.require_writable()
    files = encode_model(model)  # refuses unregistered classes before anything is written
    entry = _write_files(store, name, files)
    return {"dir": entry["dir"], "model_type": type(model).model_type, "format_version": type(model).format_version,
            "files": entry["files"], "saved": entry["saved"]}


def check_entry(name: str, entry: Any) -> None:
    """Validate a manifest ``models`` entry (:class:`CorruptFileError` naming what is wrong)."""
    fix = "restore the project from a backup or remove the entry from manifest.json"
    if not isinstance(entry, dict):
        raise CorruptFileError(f"manifest entry of model {name!r} is not an object; {fix}.")
    rel = entry.get("dir")
    if not isinstance(rel, str) or not re.fullmatch(rf"{FileName.MODELS_DIR}/[^/\\\x00]+", rel) or rel.endswith(("/.", "/..")):
        raise CorruptFileError(f"model {name!r}: 'dir' {rel!r} is not a folder directly inside models/; {fix}.")
    files = entry.get("files")
    if not isinstance(files, dict) or not files:
        raise CorruptFileError(f"model {name!r} lists no files (nothing could be verified); {fix}.")
    for fname, fe in files.items():
        if not isinstance(fname, str) or fname in ("", ".", "..") or "/" in fname or "\\" in fname or "\x00" in fname or fname.startswith("."):
            raise CorruptFileError(f"model {name!r} lists file {fname!r}, which is not a plain file name in its folder; {fix}.")
        ok = isinstance(fe, dict) and isinstance(fe.get("sha256"), str) and _SHA.match(fe["sha256"])
        if not ok or not isinstance(fe.get("size"), int) or isinstance(fe.get("size"), bool) or fe["size"] < 0:
            raise CorruptFileError(f"model {name!r}: file {fname!r} has no valid sha256 and size; {fix}.")
    has_type, has_class = isinstance(entry.get("model_type"), str), isinstance(entry.get("class"), str)
    if has_type == has_class:
        raise CorruptFileError(f"model {name!r} must name exactly one of 'model_type' or (older projects) 'class'; {fix}.")
    if has_type and sorted(files) != sorted(MODEL_FILES):
        raise CorruptFileError(f"model {name!r} lists files {sorted(files)}; a saved model has exactly {list(MODEL_FILES)}; {fix}.")


def _folder(store: ProjectStore, name: str, entry: dict[str, Any]) -> Path:
    folder = _models_dir(store) / entry["dir"].split("/", 1)[1]
    if folder.is_symlink() or not folder.is_dir():
        what = "a symbolic link" if folder.is_symlink() else "missing"
        raise CorruptFileError(f"model {name!r}: its folder {entry['dir']} is {what}; restore it from a backup.")
    links = [p.name for p in folder.iterdir() if p.is_symlink()]
    if links:
        raise CorruptFileError(
            f"model {name!r}: {entry['dir']} contains symbolic links {links}; experimat never follows links out "
            "of a project. Remove them (and restore the real files from a backup)."
        )
    return folder


def read_verified(store: ProjectStore, name: str, entry: dict[str, Any]) -> dict[str, bytes]:
    """The bytes of every file of a model entry, each checked against its size and sha256."""
    check_entry(name, entry)
    folder = _folder(store, name, entry)
    out = {}
    for fname, fe in entry["files"].items():
        data = read_plain_file(folder / fname, limit=max(int(fe["size"]), 0))
        if len(data) != fe["size"] or hashlib.sha256(data).hexdigest() != fe["sha256"]:
            raise CorruptFileError(
                f"model file {entry['dir']}/{fname} does not match its size and sha256 in the manifest (corrupt or "
                "changed); restore it from a backup or save the model again."
            )
        out[fname] = data
    return out


def read_model(store: ProjectStore, name: str, entry: dict[str, Any]) -> SavedModel:
    """Load the model of a manifest entry (checksums verified; never unpickles, never imports by path)."""
    files = read_verified(store, name, entry)
    where = f"{store.root.name}/{entry['dir']}"
    if "model_type" in entry:
        return decode_model(files, where=where, model_type=entry["model_type"])
    return decode_legacy(entry["class"], files, where=where)


def copy_model(src: ProjectStore, dst: ProjectStore, name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Copy a model into another project (verified bytes, new folder); return its entry there."""
    files = read_verified(src, name, entry)
    new = _write_files(dst, name, files)
    out = {k: v for k, v in entry.items() if k not in ("dir", "files")}
    out.update(dir=new["dir"], files=new["files"])
    return out


def collect_garbage(store: ProjectStore, manifest: dict[str, Any]) -> None:
    """Remove folders in ``models/`` that ``manifest`` does not name (never following a link)."""
    folder = store.root / FileName.MODELS_DIR
    if folder.is_symlink() or not folder.is_dir():
        return
    keep = {e.get("dir", "").split("/", 1)[-1] for e in (manifest.get("models") or {}).values() if isinstance(e, dict)}
    for entry in os.scandir(folder):
        if entry.name in keep:
            continue
        if entry.is_symlink():
            os.unlink(entry.path)  # the link only, never its target
        elif entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
