"""Slot-by-slot descriptions of an AnnData (what ``accessor.view`` prints)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData


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

