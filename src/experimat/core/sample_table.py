"""The validated sample sheet."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from .._errors import InvalidInputError, SampleNotFoundError
from .._keys import MODALITIES, SAMPLE_TABLE_COLUMNS, Modality

_RESERVED = {"integrated", "con", "prn", "aux", "nul"}


#: longest sample / model name in UTF-8 bytes: file systems allow 255 bytes per file name, and a
#: sample file is named ``.<name>.<12-hex token>.h5ad.tmp`` while it is written (23 bytes more)
MAX_NAME_BYTES = 200


def _utf8_length(name: str) -> int | None:
    try:
        return len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def validate_sample_name(name: object, *, row: int | None = None) -> str:
    """Check that ``name`` is safe as a file name; return it as ``str``.

    Forbids ``/``, ``\\``, ``..``, a leading dot, control characters, empty names, names longer
    than 200 bytes in UTF-8 (the file name limit is in bytes, not characters) and reserved names.
    """
    where = f" (row {row})" if row is not None else ""
    if not isinstance(name, str):
        if name is None or (isinstance(name, float) and name != name):
            raise InvalidInputError(f"sample name is empty{where}.")
        name = str(name)
    problem = None
    if not name or not name.strip():
        problem = "is empty"
    elif name != name.strip():
        problem = "has leading or trailing spaces"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif ".." in name:
        problem = "contains '..'"
    elif name.startswith("."):
        problem = "starts with a dot"
    elif re.search(r"[\x00-\x1f\x7f]", name):
        problem = "contains control characters"
    elif name.lower() in _RESERVED:
        problem = "is reserved"
    elif _utf8_length(name) is None:
        problem = "is not valid Unicode (it holds lone surrogate characters)"
    elif _utf8_length(name) > MAX_NAME_BYTES:
        problem = (
            f"takes {_utf8_length(name)} bytes in UTF-8, more than the {MAX_NAME_BYTES} a file name allows here "
            "(non-ASCII characters take 2-4 bytes each); choose a shorter name"
        )
    elif re.search(r'[<>:"|?*]', name):
        problem = 'contains one of <>:"|?*'
    if problem:
        raise InvalidInputError(f"sample name {name!r}{where} {problem}; sample names must be safe as file names.")
    return name


class SampleTable:
    """The validated sample sheet: ``sample, modality, taxa, batch, group, path`` + free columns.

    Parameters
    ----------
    table
        A DataFrame, or the path of a TSV/CSV file.

    Examples
    --------
    >>> st = em.SampleTable(pd.DataFrame({"sample": ["a"], "modality": ["spatial-bin"], "taxa": ["mmu"],
    ...                                   "path": ["a/"]}))  # doctest: +SKIP
    """

    def __init__(self, table: pd.DataFrame | str | os.PathLike, *, base_dir: str | os.PathLike | None = None) -> None:
        if isinstance(table, (str, os.PathLike)):
            path = Path(table)
            if not path.is_file():
                raise InvalidInputError(f"sample sheet not found: {path}")
            sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
            table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
            base_dir = base_dir or path.parent
        elif not isinstance(table, pd.DataFrame):
            raise InvalidInputError(f"a sample table is a DataFrame or a TSV/CSV path, not {type(table).__name__}.")
        df = table.copy()
        df.columns = [str(c).strip() for c in df.columns]
        for col in ("batch", "group", "path"):
            if col not in df.columns:
                df[col] = ""
        missing = [c for c in ("sample", "modality", "taxa") if c not in df.columns]
        if missing:
            raise InvalidInputError(
                f"the sample sheet lacks the columns {missing}; required: {list(SAMPLE_TABLE_COLUMNS)} "
                f"(batch, group and path may be empty); found: {list(df.columns)}."
            )
        df = df.reset_index(drop=True)
        errors = []
        for i, row in df.iterrows():
            try:
                df.at[i, "sample"] = validate_sample_name(row["sample"], row=int(i) + 1)
            except InvalidInputError as e:
                errors.append(str(e))
            if str(row["modality"]) not in MODALITIES:
                errors.append(f"row {int(i) + 1}: modality {row['modality']!r} is invalid; valid: {list(MODALITIES)}.")
            if not str(row["taxa"]).strip():
                errors.append(f"row {int(i) + 1}: taxa is empty (e.g. 'mmu' or 'hsa').")
        dup = df.duplicated(["modality", "sample"], keep=False)
        if dup.any():
            names = sorted(set(zip(df.loc[dup, "modality"], df.loc[dup, "sample"])))
            rows = [int(i) + 1 for i in df.index[dup]]
            errors.append(f"duplicate sample names within a modality: {names} (rows {rows}).")
        if errors:
            raise InvalidInputError("invalid sample sheet:\n  " + "\n  ".join(errors))
        for col in df.columns:
            if col != "path":
                df[col] = df[col].map(lambda v: "" if v is None or (isinstance(v, float) and v != v) else v)
        for col in ("batch", "group"):
            df[col] = [b if str(b) != "" else s for b, s in zip(df[col], df["sample"])] if col == "batch" else df[col].astype(str)
        df["path"] = df["path"].map(lambda p: "" if p is None or (isinstance(p, float) and p != p) else str(p))
        self.base_dir = Path(base_dir) if base_dir else None
        self._df = df[[*SAMPLE_TABLE_COLUMNS, *[c for c in df.columns if c not in SAMPLE_TABLE_COLUMNS]]]

    # -- access -----------------------------------------------------------------------------------
    @property
    def df(self) -> pd.DataFrame:
        """The table as a DataFrame (a copy)."""
        return self._df.copy()

    def __len__(self) -> int:
        return len(self._df)

    def __repr__(self) -> str:
        return f"SampleTable with {len(self)} samples\n{self._df.to_string(index=False)}"

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if (self._df["modality"] == m).any()]

    def samples(self, modality: str | None = None) -> list[str]:
        df = self._df if modality is None else self._df[self._df["modality"] == Modality(modality).value]
        return list(df["sample"])

    def row(self, modality: str, sample: str) -> dict[str, Any]:
        df = self._df
        hit = df[(df["modality"] == modality) & (df["sample"] == sample)]
        if hit.empty:
            raise SampleNotFoundError(sample, self.samples(modality), modality)
        return hit.iloc[0].to_dict()

    def resolve_path(self, modality: str, sample: str) -> Path:
        p = self.row(modality, sample)["path"]
        if not p:
            raise InvalidInputError(f"sample {sample!r} has no path in the sample sheet.")
        path = Path(p).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return path

    def add(self, rows: Iterable[dict[str, Any]]) -> SampleTable:
        new = pd.concat([self._df, pd.DataFrame(list(rows))], ignore_index=True)
        return SampleTable(new.fillna(""), base_dir=self.base_dir)

    def to_records(self) -> list[dict[str, Any]]:
        return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in self._df.to_dict("records")]

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> SampleTable:
        return cls(pd.DataFrame(records, columns=list(records[0]) if records else list(SAMPLE_TABLE_COLUMNS)))


def resolve_run_on_samples(table: SampleTable, modality: str, run_on_samples: Any) -> list[str]:
    """Map a ``run_on_samples`` value to the exact list of sample names of ``modality`` (sheet order)."""
    valid = table.samples(modality)
    if run_on_samples is True or run_on_samples == "all":
        if not valid:
            raise InvalidInputError(f"modality {modality!r} has no samples; the experiment holds: {table.modalities}.")
        return valid
    if run_on_samples is False:
        raise InvalidInputError("run_on_samples=False runs nothing; use True/'all', a name, a list of names, or None.")
    names = [run_on_samples] if isinstance(run_on_samples, str) else run_on_samples
    try:
        names = list(names)
    except TypeError as e:
        raise InvalidInputError(f"run_on_samples must be True, 'all', a name, a list of names or None; got {run_on_samples!r}.") from e
    if not names:
        raise InvalidInputError(f"run_on_samples is empty; valid samples: {valid}.")
    for n in names:
        if n not in valid:
            raise SampleNotFoundError(n, valid, modality)
    if len(set(names)) != len(names):
        raise InvalidInputError(f"run_on_samples names a sample twice: {names}.")
    return [s for s in valid if s in set(names)]
