"""The schema of ``manifest.json`` (format 1), checked in full whenever a manifest is read.

A manifest that does not match is refused with :class:`CorruptFileError` naming the entry, before
anything is read from or written to the project: a writer never acts (or collects garbage) on
a manifest it does not fully understand.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .._errors import CorruptFileError
from .._keys import FORMAT_NAME, MODALITIES
from .checksums import check_elements_entry

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Bad(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need(cond: bool, where: str, problem: str) -> None:
    if not cond:
        raise _Bad(where, problem)


def _check_rel(rel: Any, where: str) -> None:
    _need(isinstance(rel, str) and bool(rel), where, "must be a non-empty relative path")
    parts = rel.split("/")
    _need(not rel.startswith("/") and "\\" not in rel and "\x00" not in rel and all(p not in ("", ".", "..") for p in parts),
          where, f"{rel!r} points outside the project folder (only plain relative paths inside it are allowed)")


def _check_file_entry(entry: Any, where: str) -> None:
    _need(isinstance(entry, dict), where, "must be an object with sha256 and size")
    _need(isinstance(entry.get("sha256"), str) and bool(_SHA256.match(entry["sha256"])), f"{where}.sha256",
          "must be 64 lower-case hex digits")
    _need(_is_int(entry.get("size")) and entry["size"] >= 0, f"{where}.size", "must be a non-negative integer")
    if "elements" in entry:
        problem = check_elements_entry(entry["elements"])
        _need(problem is None, f"{where}.elements", problem or "")


def _validate(m: Any) -> None:
    _need(isinstance(m, dict), "the manifest", "must be a JSON object")
    _need(m.get("format") == FORMAT_NAME, "format", f"must be {FORMAT_NAME!r}")
    _need(_is_int(m.get("format_version")), "format_version", "must be an integer")
    if "generation" in m:
        _need(_is_int(m["generation"]) and m["generation"] >= 0, "generation", "must be a non-negative integer")
    for key in ("created", "modified", "experimat_version"):
        if key in m:
            _need(isinstance(m[key], str), key, "must be a string")
    files = m.get("files")
    _need(isinstance(files, dict), "files", "is missing or not an object")
    for rel, entry in files.items():
        _check_rel(rel, f"files[{rel!r}]")
        _check_file_entry(entry, f"files[{rel!r}]")
    table = m.get("sample_table", [])
    _need(isinstance(table, list), "sample_table", "must be a list of rows")
    in_table = set()
    for i, row in enumerate(table):
        _need(isinstance(row, dict), f"sample_table[{i}]", "must be an object")
        for col in ("sample", "modality", "taxa"):
            _need(isinstance(row.get(col), str), f"sample_table[{i}].{col}", "must be a string")
        in_table.add((row["modality"], row["sample"]))
    samples = m.get("samples", {})
    _need(isinstance(samples, dict), "samples", "must be an object {modality: {sample: entry}}")
    for mod, entries in samples.items():
        _need(mod in MODALITIES, f"samples[{mod!r}]", f"is not a modality ({', '.join(MODALITIES)})")
        _need(isinstance(entries, dict), f"samples[{mod!r}]", "must be an object {sample: entry}")
        for name, e in entries.items():
            where = f"samples[{mod!r}][{name!r}]"
            _need(isinstance(e, dict), where, "must be an object")
            _need(isinstance(e.get("file"), str), f"{where}.file", "is missing")
            _need(e["file"] in files, f"{where}.file",
                  f"{e['file']!r} has no entry in 'files' (its checksum and size are unknown)")
            for k in ("n_obs", "n_vars"):
                if k in e:
                    _need(_is_int(e[k]) and e[k] >= 0, f"{where}.{k}", "must be a non-negative integer")
            if "slots" in e:
                _need(isinstance(e["slots"], dict), f"{where}.slots", "must be an object")
            _need((mod, name) in in_table, where, "is not in the sample_table")
    integ = m.get("integrated")
    if integ is not None:
        _need(isinstance(integ, dict), "integrated", "must be null or an object")
        _need(isinstance(integ.get("file"), str) and integ["file"] in files, "integrated.file",
              "is missing or has no entry in 'files'")
        mods = integ.get("mods", {})
        _need(isinstance(mods, dict) and all(isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v)
                                             for v in mods.values()), "integrated.mods", "must map modality -> [n_obs, n_vars]")
    models = m.get("models", {})
    _need(isinstance(models, dict), "models", "must be an object {name: entry}")
    for name, e in models.items():  # the entries themselves are checked by io.models when a model is loaded
        _need(isinstance(e, dict), f"models[{name!r}]", "must be an object")


def validate_manifest(m: Any, path: object) -> None:
    """Raise :class:`CorruptFileError` naming the first entry of ``m`` that breaks the schema."""
    try:
        _validate(m)
    except _Bad as bad:
        raise CorruptFileError(
            f"{path} is damaged: {bad.where} {bad.problem}. experimat does not guess at a damaged manifest (and will not "
            "write to the project). Restore manifest.json from a backup or a copy of the project; a manifest.json "
            "of the same generation from a copy is safe to put back as long as the files it names are present."
        ) from None


def named_files(m: Any) -> set[str]:
    """Every relative path a manifest names (files, sample files, the integrated file); tolerant of junk."""
    out: set[str] = set()
    if not isinstance(m, dict):
        return out
    files = m.get("files")
    if isinstance(files, dict):
        out |= {k for k in files if isinstance(k, str)}
    samples = m.get("samples")
    if isinstance(samples, dict):
        for entries in samples.values():
            if isinstance(entries, dict):
                out |= {e["file"] for e in entries.values() if isinstance(e, dict) and isinstance(e.get("file"), str)}
    integ = m.get("integrated")
    if isinstance(integ, dict) and isinstance(integ.get("file"), str):
        out.add(integ["file"])
    return out


def base_manifest(manifest: dict[str, Any], sample_table: list[dict[str, Any]], version: str, created: str) -> dict[str, Any]:
    """A deep copy of ``manifest`` to edit for the next commit, with every section present and the
    package version and sample table of now (``created`` is kept when the manifest has one)."""
    m = json.loads(json.dumps(manifest)) if manifest else {}
    m.setdefault("created", created)
    m.setdefault("files", {})
    m.setdefault("samples", {})
    m.setdefault("integrated", None)
    m.setdefault("models", {})
    m["experimat_version"] = version
    m["sample_table"] = sample_table
    return m


def replace_file(files: dict[str, Any], rel: str, entry: dict[str, Any], old: dict[str, Any] | None) -> None:
    """Name the new file ``rel`` in a manifest's ``files`` and drop the file of ``old`` (a sample or
    integrated entry, or None)."""
    files[rel] = entry
    if old:
        files.pop(old["file"], None)
