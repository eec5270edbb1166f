"""Slot-by-slot descriptions of an AnnData (what ``accessor.view`` prints)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData

    from .experiment import Experiment


def _slot_desc(value: Any) -> str:
    import scipy.sparse as sp

    if sp.issparse(value):
        return f"{type(value).__name__} {value.dtype} {value.shape} nnz={value.nnz}"
    if isinstance(value, pd.DataFrame):
        return f"DataFrame {value.shape} columns={list(value.columns)[:6]}{'...' if value.shape[1] > 6 else ''}"
    if isinstance(value, np.ndarray):
        return f"ndarray {value.dtype} {value.shape}"
    if isinstance(value, Mapping):
        keys = list(value.keys())
        return f"dict {{{', '.join(map(str, keys[:6]))}{', ...' if len(keys) > 6 else ''}}}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__name__} {value.dtype} {tuple(value.shape)}"
    return type(value).__name__


def describe_anndata(adata: AnnData, title: str = "AnnData") -> str:
    """A slot-by-slot description with dtypes and shapes (what ``accessor.view`` prints)."""
    lines = [f"{title}: {adata.n_obs} obs x {adata.n_vars} var"]
    if adata.X is not None:
        lines.append(f"  X        {_slot_desc(adata.X)}")
    for where in ("obs", "var"):
        df = getattr(adata, where)
        lines.append(f"  {where:<8} {df.shape[1]} columns, index e.g. {list(df.index[:2])}")
        for c in df.columns:
            lines.append(f"    {c}: {df[c].dtype}")
    for where in ("layers", "obsm", "varm", "obsp"):
        mapping = getattr(adata, where)
        if len(mapping):
            lines.append(f"  {where}")
            for k in mapping:
                lines.append(f"    {k}: {_slot_desc(mapping[k])}")
    if len(adata.uns):
        lines.append("  uns")
        for k, v in adata.uns.items():
            lines.append(f"    {k}: {_slot_desc(v)}")
    return "\n".join(lines)


def describe_experiment(expm: Experiment) -> str:
    """What ``repr(expm)`` prints: the samples per modality with their shapes and state, the
    integrated data and the models."""
    from .._keys import Modality

    where = f"{expm.project_path} (mode {expm.mode!r})" if expm.project_path is not None else "in memory (not saved)"
    lines = [f"Experiment: {len(expm.table)} samples, project {where}"]
    for mod in expm.modalities:
        lines.append(f"  {mod} ({expm.modality(mod).__class__.__name__} expm.{Modality(mod).attr}):")
        for row in expm.table.to_records():
            if row["modality"] != mod:
                continue
            s = row["sample"]
            if s in expm._data[mod]:
                shape = f"{expm._data[mod][s].n_obs} x {expm._data[mod][s].n_vars}"
                state = "modified" if expm._changes.is_marked((mod, s)) else "loaded"
            else:
                e = expm._entry(mod, s) or {}
                shape = f"{e.get('n_obs', '?')} x {e.get('n_vars', '?')}"
                state = "on disk"
            lines.append(f"    {s:<20} taxa {row['taxa']:<4} batch {row['batch']!s:<12} {shape:>14}  [{state}]")
    integ = expm._integrated if expm._integrated_loaded else None
    if integ is not None:
        lines.append("  integrated: " + ", ".join(f"{m} {a.n_obs} x {a.n_vars}" for m, a in integ.mod.items()))
    elif expm._manifest.get("integrated"):
        lines.append("  integrated: " + ", ".join(f"{m} {s[0]} x {s[1]}" for m, s in expm._manifest["integrated"]["mods"].items()) + " [on disk]")
    else:
        lines.append("  integrated: none (call expm.merge())")
    if expm.models:
        lines.append(f"  models: {', '.join(expm.models)}")
    return "\n".join(lines)
