"""``history.jsonl``: one JSON object per line, appended, never rewritten.

Appending first makes sure the file ends with a newline, so a line cut by a crash or a full
disk stays one damaged line and never swallows the next record. Reading skips damaged lines
(cut or invalid JSON, invalid UTF-8, valid JSON that is not a record, absurdly deep nesting)
and reports them in one warning with counts; it never raises on the file's content.

Two kinds of lines:

- a *run record* per method call and sample (``method``, ``modality``, ``sample``, ``outcome``,
  ``params_hash``, times, versions, ...) with ``saved``: whether the sample's result was
  already committed to the manifest when the record was written;
- a *commit event* ``{"event": "commit", "generation": g, "samples": [[modality, sample], ...]}``
  written after a commit that saved samples whose earlier runs were recorded with ``saved: false``.
"""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path
from typing import Any

from .._errors import ExperimatWarning, ProjectError

#: lines longer than this are not records (a record is a few kB)
MAX_LINE_BYTES = 1 << 20
_MAX_DEPTH = 64


def _too_deep(line: bytes) -> bool:
    """True when the line nests brackets deeper than any record does (checked before json.loads)."""
    if line.count(b"[") + line.count(b"{") <= _MAX_DEPTH:
        return False
    depth = 0
    in_str = esc = False
    for ch in line:
        if in_str:
            if esc:
                esc = False
            elif ch == 0x5C:
                esc = True
            elif ch == 0x22:
                in_str = False
        elif ch == 0x22:
            in_str = True
        elif ch in (0x5B, 0x7B):
            depth += 1
            if depth > _MAX_DEPTH:
                return True
        elif ch in (0x5D, 0x7D):
            depth -= 1
    return False


def _is_record(obj: dict[str, Any]) -> bool:
    if obj.get("event") == "commit":
        samples = obj.get("samples")
        return isinstance(samples, list) and all(
            isinstance(x, list) and len(x) == 2 and all(isinstance(y, str) for y in x) for x in samples)
    if not all(isinstance(obj.get(k), str) for k in ("method", "modality", "outcome")):
        return False
    if not (obj.get("sample") is None or isinstance(obj.get("sample"), str)):
        return False
    if "params_hash" in obj and not isinstance(obj["params_hash"], str):
        return False
    return "saved" not in obj or isinstance(obj["saved"], bool)


def read_history(path: Path, *, warn: bool = True) -> list[dict[str, Any]]:
    """Every intact line of ``path`` (run records and commit events), in file order."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ProjectError(f"cannot read {path} ({e.strerror or e}); it must be a regular file inside the project.") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ProjectError(f"{path} is not a regular file; move it away (the history is then empty).")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    finally:
        os.close(fd)
    out: list[dict[str, Any]] = []
    damaged: dict[str, list[int]] = {}
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.strip()
        if not raw:
            continue
        why = None
        if len(raw) > MAX_LINE_BYTES:
            why = "too long"
        elif _too_deep(raw):
            why = "nested too deeply"
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                why = "invalid UTF-8"
            else:
                try:
                    obj = json.loads(text)
                except RecursionError:
                    why = "nested too deeply"
                except ValueError:
                    why = "cut or invalid JSON"
                else:
                    if not isinstance(obj, dict):
                        why = "not a JSON object"
                    elif not _is_record(obj):
                        why = "not a history record"
                    else:
                        out.append(obj)
        if why is not None:
            damaged.setdefault(why, []).append(lineno)
    if damaged and warn:
        n = sum(len(v) for v in damaged.values())
        detail = "; ".join(f"{len(v)} {why} (line{'s' if len(v) > 1 else ''} {', '.join(map(str, v[:5]))}"
                           f"{', ...' if len(v) > 5 else ''})" for why, v in damaged.items())
        warnings.warn(
            f"{path}: skipped {n} damaged line{'s' if n > 1 else ''} ({detail}); the other {len(out)} records are "
            "intact. Damaged lines come from a crash or a full disk during an append, or from editing the file by hand.",
            ExperimatWarning, stacklevel=3,
        )
    return out


def append_history(path: Path, records: list[dict[str, Any]]) -> None:
    """Append ``records`` (one line each) durably; a cut last line is closed first."""
    if not records:
        return
    payload = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records).encode("utf-8")
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        raise ProjectError(f"cannot append to {path} ({e.strerror or e}); it must be a regular file inside the project.") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProjectError(f"{path} is not a regular file; move it away.")
        if st.st_size > 0 and os.pread(fd, 1, st.st_size - 1) != b"\n":
            payload = b"\n" + payload  # the last append was cut: keep its damage to its own line
        view = memoryview(payload)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def run_key(r: dict[str, Any]) -> tuple:
    """What identifies one run record (method, sample, start, parameters, process)."""
    return (r.get("method"), r.get("modality"), r.get("sample"), r.get("start"), r.get("params_hash"), r.get("pid"))


def finished_samples(lines: list[dict[str, Any]], method: str, modality: str, session_runs: set[tuple]) -> dict[str, str]:
    """``{sample: params_hash}`` of samples whose last run of ``method`` finished and whose result is kept.

    A run counts once its result is committed (recorded ``saved``, or a later commit event naming
    the sample), or when its key is in ``session_runs`` (its result is in memory)."""
    last: dict[str, tuple[dict[str, Any], bool]] = {}
    for r in lines:
        if r.get("event") == "commit":
            for mod, s in r["samples"]:
                if mod == modality and s in last:
                    last[s] = (last[s][0], True)
            continue
        if r.get("method") != method or r.get("modality") != modality or not isinstance(r.get("sample"), str):
            continue
        kept = r.get("saved", True) is not False or run_key(r) in session_runs
        last[r["sample"]] = (r, kept)
    return {s: r["params_hash"] for s, (r, kept) in last.items()
            if kept and r.get("outcome") == "ok" and isinstance(r.get("params_hash"), str)}


#: the columns of :meth:`Experiment.history`
HISTORY_COLUMNS = ["method", "modality", "sample", "outcome", "start", "end", "duration_s", "params", "error", "host", "pid",
                   "executor", "params_hash", "versions", "saved"]


def history_frame(records: list[dict[str, Any]]):
    """The run records as a DataFrame with :data:`HISTORY_COLUMNS` (empty when there is none)."""
    import pandas as pd

    return pd.DataFrame(records, columns=HISTORY_COLUMNS) if records else pd.DataFrame(columns=HISTORY_COLUMNS)
