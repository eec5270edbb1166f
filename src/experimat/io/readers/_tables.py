"""Readers for count tables (legacy ST) and h5ad files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..._errors import InvalidInputError
from ..._keys import Key
from ._common import PathLike, _set_counts, attach_image

if TYPE_CHECKING:
    from anndata import AnnData


def read_count_table(
    path: PathLike,
    *,
    coordinates: PathLike | pd.DataFrame | None = None,
    sep: str | None = None,
    transpose: bool = False,
    in_tissue_only: bool = True,
    image: PathLike | np.ndarray | None = None,
    image_scale: float | None = None,
    library_id: str | None = None,
) -> AnnData:
    """Read a count table (spots x genes; csv/tsv, optionally gzipped) such as legacy ST data.

    Coordinates come from ``coordinates`` (a table whose index matches the spot names, or with
    ``x``/``y`` array columns from which ``"<x>x<y>"`` names are built; ``pixel_x``/``pixel_y``
    are used as pixels when present and ``selected``/``in_tissue`` filters spots) or, when not
    given, from spot names of the form ``"<x>x<y>"``.

    ``image`` (a PNG/JPEG/TIFF path or an array, e.g. the H&E of an ST section) is stored as
    ``uns['spatial'][library_id]['images']['hires']`` with ``image_scale`` (image pixels per
    coordinate unit: 1.0 when the coordinates are pixels of this image) as
    ``tissue_hires_scalef``, so that the image-based methods and plots find it.

    Examples
    --------
    >>> a = em.io.read_count_table("counts.tsv", coordinates="alignment.tsv",
    ...                            image="he.jpg", image_scale=1.0)  # doctest: +SKIP
    """
    import anndata as ad
    import scipy.sparse as sp

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"count table not found: {path}")
    if sep is None:
        sep = "\t" if ".tsv" in path.name or ".txt" in path.name else ","
    df = pd.read_csv(path, sep=sep, index_col=0)
    if transpose:
        df = df.T
    df.index = df.index.astype(str)
    df.columns = df.columns.astype(str)
    values = df.to_numpy()
    if not np.issubdtype(values.dtype, np.number):
        raise InvalidInputError(f"{path} has non-numeric values; expected a spots x genes count table.")
    adata = ad.AnnData(X=sp.csr_matrix(values.astype(np.float64)), obs=pd.DataFrame(index=df.index), var=pd.DataFrame(index=df.columns))
    if coordinates is not None:
        coords = coordinates if isinstance(coordinates, pd.DataFrame) else pd.read_csv(coordinates, sep=None, engine="python", index_col=None)
        coords = coords.copy()
        if not coords.index.astype(str).isin(adata.obs_names).any():
            first = coords.iloc[:, 0].astype(str)
            if first.isin(adata.obs_names).any():
                coords.index = first
            elif {"x", "y"} <= set(coords.columns):
                coords.index = coords["x"].map(_fmt_num) + "x" + coords["y"].map(_fmt_num)
        coords.index = coords.index.astype(str)
        keep_col = next((c for c in ("selected", "in_tissue") if c in coords.columns), None)
        shared = adata.obs_names.intersection(coords.index)
        if len(shared) == 0:
            raise InvalidInputError(f"no spot of {path} matches the coordinates table (e.g. {list(adata.obs_names[:3])}).")
        if keep_col is not None and in_tissue_only:
            shared = shared[coords.loc[shared, keep_col].to_numpy() == 1]
        adata = adata[shared].copy()
        c = coords.loc[shared]
        xcol, ycol = ("pixel_x", "pixel_y") if {"pixel_x", "pixel_y"} <= set(c.columns) else ("x", "y")
        adata.obsm[Key.SPATIAL] = c[[xcol, ycol]].to_numpy(dtype=np.float64)
    else:
        try:
            xy = np.array([[float(v) for v in name.split("x")] for name in adata.obs_names])
        except ValueError as e:
            raise InvalidInputError(
                f"spot names of {path} are not '<x>x<y>' coordinates (e.g. {adata.obs_names[0]!r}); pass coordinates=."
            ) from e
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise InvalidInputError(f"spot names of {path} are not '<x>x<y>' coordinates; pass coordinates=.")
        adata.obsm[Key.SPATIAL] = xy
    adata = _set_counts(adata)
    if image is not None or image_scale is not None:
        lib = library_id or path.name.split(".")[0]
        adata.uns[Key.SPATIAL] = {lib: {"images": {}, "scalefactors": {}, "metadata": {}}}
        attach_image(adata, lib, image, image_scale)
    return adata


def _fmt_num(v: float) -> str:
    f = float(v)
    return str(int(f)) if f == int(f) else repr(f)


def read_h5ad(path: PathLike) -> AnnData:
    """Read an ``.h5ad`` file (no unpickling happens; anndata stores no pickles)."""
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"h5ad file not found: {path}")
    return ad.read_h5ad(path)


