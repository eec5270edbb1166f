"""Shared helpers of the readers: decoding, exact counts, images, Parquet, control probes."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..._errors import ExperimatWarning, InvalidInputError
from ..._keys import Key
from ..._optional import import_optional

if TYPE_CHECKING:
    from anndata import AnnData

PathLike = str | os.PathLike

#: obsm key of the control-probe / blank counts kept apart from the genes; names in ``uns[CONTROLS]``
CONTROLS = "controls"


def _decode(values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        try:
            return arr.astype("U").astype(object)
        except UnicodeDecodeError:
            return np.array([v.decode() for v in arr], dtype=object)
    if arr.dtype == object:
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in arr], dtype=object)
    return arr.astype(str).astype(object)


def _set_counts(adata: AnnData) -> AnnData:
    """Store the raw counts exactly in ``layers['counts']`` (int32) and ``X`` (float32)."""
    import scipy.sparse as sp

    X = adata.X
    if not sp.issparse(X):
        X = sp.csr_matrix(X)
    X = X.tocsr()
    X.sum_duplicates()
    data = np.asarray(X.data)
    if data.size and not (np.all(data >= 0) and np.all(np.mod(data, 1) == 0)):
        raise InvalidInputError("the count matrix holds negative or fractional values; raw counts are required.")
    if data.size and data.max() > np.iinfo(np.int32).max:
        raise InvalidInputError("counts exceed the int32 range.")
    counts = sp.csr_matrix((data.astype(np.int32), X.indices, X.indptr), shape=X.shape)
    adata.X = sp.csr_matrix((data.astype(np.float32), X.indices.copy(), X.indptr.copy()), shape=X.shape)
    adata.layers[Key.COUNTS] = counts
    return adata


def _read_image(path: Path) -> np.ndarray:
    """An RGB uint8 array of a PNG/JPEG/TIFF file (PIL)."""
    from PIL import Image

    if not Path(path).is_file():
        raise InvalidInputError(f"image file not found: {path}")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """Scale a microscopy image (any dtype) to uint8 between its 0.5th and 99.5th percentiles."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    sample = img.ravel()[:: max(1, img.size // 1_000_000)].astype(np.float64)
    lo, hi = np.percentile(sample, [0.5, 99.5]) if sample.size else (0.0, 1.0)
    if hi <= lo and sample.size:  # a few bright objects on a flat background: use the whole range
        lo, hi = float(sample.min()), float(np.max(img))
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip((img.astype(np.float32) - lo) * scale, 0, 255).astype(np.uint8)


def read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a Parquet file with pyarrow (the ``platforms`` extra), imported here only."""
    import_optional("pyarrow", purpose=f"reading {Path(path).name} (Parquet)")
    return pd.read_parquet(path, columns=columns, engine="pyarrow")


def read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"{path} is not valid JSON ({e}); is the output folder complete?") from e


def split_controls(adata: AnnData, is_control: np.ndarray, kinds: np.ndarray | None = None) -> AnnData:
    """Move control probes / blanks out of the genes.

    Their counts go to ``obsm['controls']`` (sparse CSR, int32, cells x controls) with the names
    and kinds in ``uns['controls'] = {'names': [...], 'kinds': [...]}``, their per-cell total to
    ``obs['control_counts']``; ``X``/``layers['counts']``/``var`` keep the genes only.
    """
    import scipy.sparse as sp

    is_control = np.asarray(is_control, dtype=bool)
    names = adata.var_names[is_control].astype(str).to_numpy()
    kinds = np.asarray(kinds if kinds is not None else np.full(adata.n_vars, "control", dtype=object))[is_control]
    source = adata.layers[Key.COUNTS] if Key.COUNTS in adata.layers else adata.X
    ctrl = sp.csr_matrix(source[:, np.flatnonzero(is_control)], dtype=np.int32)
    out = adata[:, ~is_control].copy()
    out.obsm[CONTROLS] = ctrl
    out.uns[CONTROLS] = {"names": names.astype(str), "kinds": np.asarray(kinds, dtype=str)}
    out.obs["control_counts"] = np.asarray(ctrl.sum(axis=1)).ravel().astype(np.int64)
    return out


def attach_image(adata: AnnData, library_id: str, image: PathLike | np.ndarray | None, scale: float | None,
                 *, key: str = "hires") -> None:
    """Add an image to ``uns['spatial'][library_id]['images'][key]`` with its scale factor.

    ``scale`` is image pixels per unit of ``obsm['spatial']`` (scanpy's ``tissue_<key>_scalef``).
    """
    if image is None:
        if scale is not None:
            raise InvalidInputError("image_scale was given without image=; pass the image too.")
        return
    if scale is None or not np.isfinite(float(scale)) or float(scale) <= 0:
        raise InvalidInputError(
            "image= needs image_scale= (image pixels per coordinate unit, e.g. tissue_hires_scalef; 1.0 when the "
            "coordinates are pixels of this image)."
        )
    arr = _read_image(Path(image)) if isinstance(image, str | os.PathLike) else np.asarray(image)
    if arr.ndim not in (2, 3):
        raise InvalidInputError(f"image must be 2-D (grey) or 3-D (RGB); got shape {arr.shape}.")
    lib = adata.uns.setdefault(Key.SPATIAL, {}).setdefault(library_id, {})
    lib.setdefault("images", {})[key] = arr
    lib.setdefault("scalefactors", {})[f"tissue_{key}_scalef"] = float(scale)
    lib.setdefault("metadata", {})
    xy = np.asarray(adata.obsm.get(Key.SPATIAL, np.zeros((0, 2))), dtype=float) * float(scale)
    if xy.size and (xy.max(axis=0)[::-1] > np.array(arr.shape[:2]) * 1.05).any():
        warnings.warn(
            f"{library_id}: coordinates times image_scale reach beyond the image ({arr.shape[1]} x {arr.shape[0]} px); "
            "check image_scale.", ExperimatWarning,
        )


def csv_to_sparse(path: Path, id_columns: list[str], *, chunksize: int = 50_000, index_col: int | None = None,
                  optional_id_columns: tuple[str, ...] = ()):
    """Read a cells x features count CSV in chunks into CSR without a dense matrix of the whole file.

    Returns ``(ids, feature_names, X)``: ``ids`` a DataFrame of the ``id_columns`` (or the index
    column) and of those ``optional_id_columns`` present, ``X`` int64 CSR.
    """
    import scipy.sparse as sp

    parts, ids, features = [], [], None
    reader = pd.read_csv(path, chunksize=chunksize, index_col=index_col)
    for chunk in reader:
        if index_col is not None:
            idf = pd.DataFrame({id_columns[0]: chunk.index.to_numpy()})
            values = chunk
        else:
            missing = [c for c in id_columns if c not in chunk.columns]
            if missing:
                raise InvalidInputError(f"{path.name} lacks the column(s) {missing}; found {list(chunk.columns[:8])}...")
            cols = [*id_columns, *(c for c in optional_id_columns if c in chunk.columns)]
            idf = chunk[cols].reset_index(drop=True)
            values = chunk.drop(columns=cols)
        if features is None:
            features = values.columns.astype(str)
        arr = values.to_numpy()
        if not np.issubdtype(arr.dtype, np.number):
            raise InvalidInputError(f"{path.name} holds non-numeric counts (e.g. column {values.columns[0]!r}).")
        parts.append(sp.csr_matrix(arr))
        ids.append(idf)
    if features is None:
        raise InvalidInputError(f"{path} is empty.")
    X = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, len(features)))
    return pd.concat(ids, ignore_index=True), features, X


def find_one(folder: Path, patterns: tuple[str, ...], what: str, *, required: bool = True) -> Path | None:
    """The single file of ``folder`` matching the first pattern that matches (``glob`` syntax)."""
    for pat in patterns:
        hits = sorted(p for p in folder.glob(pat) if p.is_file())
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise InvalidInputError(f"{folder} has several {what} files ({[h.name for h in hits]}); pass the one to use.")
    if required:
        raise InvalidInputError(f"{folder} has no {what} file (looked for {', '.join(patterns)}).")
    return None
