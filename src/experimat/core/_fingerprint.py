"""Content fingerprints of AnnData objects, to tell which samples changed since load.

A fingerprint hashes every slot's content (arrays, DataFrame columns and index, nested
``uns``) with SHA-1 (change detection, not security). It is computed when a sample is read from disk and again at save: a
sample is rewritten only when the two differ (or when a method marked it modified).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd


def _update_array(h, arr: Any) -> None:
    import scipy.sparse as sp

    if sp.issparse(arr):
        h.update(f"sparse:{arr.format}:{arr.shape}:{arr.dtype}".encode())
        for part in ("data", "indices", "indptr", "row", "col", "offsets"):
            if hasattr(arr, part):
                _update_array(h, getattr(arr, part))
        return
    if isinstance(arr, pd.DataFrame):
        _update_frame(h, arr)
        return
    if hasattr(arr, "to_memory"):  # backed/lazy arrays
        arr = arr.to_memory()
    a = np.asarray(arr)
    h.update(f"nd:{a.shape}:{a.dtype.str}".encode())
    if a.dtype == object:
        h.update(repr(a.tolist()).encode())
    else:
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))


def _is_missing(v: Any) -> bool:
    """None, NaN, pd.NA or NaT (a scalar test that never raises, unlike ``v != v`` on pd.NA)."""
    try:
        return bool(pd.isna(v)) if np.ndim(v) == 0 else False
    except (TypeError, ValueError):
        return False


def _update_values(h, values: Any) -> None:
    if isinstance(values, pd.Categorical) or isinstance(getattr(values, "dtype", None), pd.CategoricalDtype):
        cat = pd.Categorical(values)
        _update_values(h, np.asarray(cat.categories))
        h.update(np.asarray(cat.codes).tobytes())
        return
    arr = np.asarray(values)
    if arr.dtype == object or arr.dtype.kind in "USO":
        h.update("\x1f".join(map(str, arr.tolist())).encode("utf-8", "surrogatepass"))
        h.update(bytes(np.array([not isinstance(v, str) and _is_missing(v) for v in arr.tolist()], dtype=bool)))
    else:
        h.update(arr.dtype.str.encode())
        h.update(memoryview(np.ascontiguousarray(arr)).cast("B"))


def _update_frame(h, df: pd.DataFrame) -> None:
    h.update(f"df:{df.shape}:{list(map(str, df.columns))}:{[str(t) for t in df.dtypes]}".encode())
    _update_values(h, df.index)
    for col in df.columns:
        _update_values(h, df[col].array if isinstance(df[col].dtype, pd.CategoricalDtype) else df[col].to_numpy())


def _update_obj(h, obj: Any) -> None:
    if isinstance(obj, Mapping):
        h.update(f"map:{len(obj)}".encode())
        for k in sorted(obj, key=str):
            h.update(f"k:{k}".encode())
            _update_obj(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"seq:{len(obj)}".encode())
        for v in obj:
            _update_obj(h, v)
    elif isinstance(obj, (str, bytes, int, float, bool, type(None), np.generic)):
        h.update(f"{type(obj).__name__}:{obj!r}".encode())
    else:
        _update_array(h, obj)


def fingerprint(adata: Any) -> str:
    """A hex digest of the full content of an AnnData (or MuData) object."""
    h = hashlib.sha1(usedforsecurity=False)
    if hasattr(adata, "mod"):  # MuData
        h.update(b"mudata")
        _update_frame(h, adata.obs)
        for name in sorted(adata.mod):
            h.update(f"mod:{name}".encode())
            h.update(fingerprint(adata.mod[name]).encode())
        _update_obj(h, dict(adata.uns))
        return h.hexdigest()
    h.update(f"anndata:{adata.shape}".encode())
    if adata.X is not None:
        _update_array(h, adata.X)
    _update_frame(h, adata.obs)
    _update_frame(h, adata.var)
    for slot in ("layers", "obsm", "varm", "obsp", "varp"):
        mapping = getattr(adata, slot)
        h.update(f"{slot}:{sorted(mapping.keys())}".encode())
        for k in sorted(mapping.keys()):
            _update_array(h, mapping[k])
    _update_obj(h, dict(adata.uns))
    if adata.raw is not None:
        h.update(b"raw")
        _update_array(h, adata.raw.X)
        _update_frame(h, adata.raw.var)
    return h.hexdigest()
