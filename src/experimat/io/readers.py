"""Readers for 10x Space Ranger / Cell Ranger outputs, h5ad files and count tables.

Every reader returns an AnnData with raw counts in ``X`` (float32, exact) and in
``layers['counts']`` (int32, exact), ``var['gene_ids']`` where the source has ids, and for
spatial data ``obsm['spatial']`` in full-resolution pixels (x, y) with images and scale
factors in ``uns['spatial'][library_id]`` (the scanpy/squidpy convention).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._errors import ExperimatWarning, InvalidInputError
from .._keys import Key
from .._logging import logger

if TYPE_CHECKING:
    from anndata import AnnData

PathLike = str | os.PathLike

_POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def _decode(values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "S" or arr.dtype == object:
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


# -- 10x h5 / mtx --------------------------------------------------------------------------------
def read_10x_h5(path: PathLike, *, genome: str | None = None, gene_expression_only: bool = True) -> AnnData:
    """Read a 10x Cell Ranger / Space Ranger ``*.h5`` matrix (v2 and v3+ layouts, probe matrices).

    ``var_names`` are the feature names (symbols); ``var['gene_ids']`` the feature ids.

    Examples
    --------
    >>> a = em.io.read_10x_h5("filtered_feature_bc_matrix.h5")  # doctest: +SKIP
    """
    import anndata as ad
    import h5py
    import scipy.sparse as sp

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"10x h5 file not found: {path}")
    with h5py.File(path, "r") as f:
        if "matrix" in f:  # v3+: one matrix, features group
            g = f["matrix"]
            shape = tuple(int(x) for x in g["shape"][:])
            X = sp.csc_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=shape)
            feats = g["features"]
            var = pd.DataFrame(
                {
                    "gene_ids": _decode(feats["id"][:]),
                    "feature_types": _decode(feats["feature_type"][:]),
                    "genome": _decode(feats["genome"][:]) if "genome" in feats else "",
                },
                index=pd.Index(_decode(feats["name"][:]), name=None),
            )
            for extra in ("gene_id", "gene_name", "probe_region"):
                if extra in feats:
                    var[f"probe_{extra}" if extra != "probe_region" else extra] = _decode(feats[extra][:])
            if "filtered_probes" in feats:
                var["filtered_probes"] = np.asarray(feats["filtered_probes"][:], dtype=bool)
            barcodes = _decode(g["barcodes"][:])
            if genome is not None:
                keep = var["genome"].to_numpy() == genome
                if not keep.any():
                    raise InvalidInputError(f"genome {genome!r} not in {path}; available: {sorted(set(var['genome']))}")
                X, var = X[keep], var[keep]
        else:  # v2: one group per genome
            genomes = list(f.keys())
            if not genomes:
                raise InvalidInputError(f"{path} is not a 10x h5 matrix (no 'matrix' or genome groups).")
            gname = genome or genomes[0]
            if gname not in f:
                raise InvalidInputError(f"genome {gname!r} not in {path}; available: {genomes}")
            g = f[gname]
            shape = tuple(int(x) for x in g["shape"][:])
            X = sp.csc_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=shape)
            var = pd.DataFrame(
                {"gene_ids": _decode(g["genes"][:]), "feature_types": "Gene Expression", "genome": gname},
                index=pd.Index(_decode(g["gene_names"][:])),
            )
            barcodes = _decode(g["barcodes"][:])
    X = X.T.tocsr()  # cells x genes
    obs = pd.DataFrame(index=pd.Index(barcodes))
    var.index = var.index.astype(str)
    with warnings.catch_warnings():  # duplicated symbols are expected here; gene harmonisation resolves them
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        adata = ad.AnnData(X=X, obs=obs, var=var)
    if gene_expression_only and "feature_types" in adata.var and (adata.var["feature_types"] != "Gene Expression").any():
        adata = adata[:, (adata.var["feature_types"] == "Gene Expression").to_numpy()].copy()
    return _set_counts(adata)


def read_10x_mtx(path: PathLike) -> AnnData:
    """Read a 10x ``matrix.mtx(.gz)`` folder (with ``features.tsv(.gz)`` or ``genes.tsv``)."""
    import anndata as ad
    import scipy.io
    import scipy.sparse as sp

    path = Path(path)

    def find(*names: str) -> Path:
        for n in names:
            for cand in (path / n, path / f"{n}.gz"):
                if cand.exists():
                    return cand
        raise InvalidInputError(f"{path} lacks {' or '.join(names)} (a 10x mtx folder has matrix.mtx, features.tsv, barcodes.tsv).")

    X = sp.csr_matrix(scipy.io.mmread(find("matrix.mtx"))).T.tocsr()
    feats = pd.read_csv(find("features.tsv", "genes.tsv"), sep="\t", header=None)
    barcodes = pd.read_csv(find("barcodes.tsv"), sep="\t", header=None)[0].astype(str)
    var = pd.DataFrame({"gene_ids": feats[0].astype(str).to_numpy()}, index=pd.Index(feats[1].astype(str).to_numpy()))
    var["feature_types"] = feats[2].astype(str).to_numpy() if feats.shape[1] > 2 else "Gene Expression"
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(barcodes.to_numpy())), var=var)
    if (adata.var["feature_types"] != "Gene Expression").any():
        adata = adata[:, (adata.var["feature_types"] == "Gene Expression").to_numpy()].copy()
    return _set_counts(adata)


# -- Space Ranger -------------------------------------------------------------------------------
def _read_positions(spatial_dir: Path) -> pd.DataFrame:
    with_header = spatial_dir / "tissue_positions.csv"
    without = spatial_dir / "tissue_positions_list.csv"
    if with_header.exists():
        pos = pd.read_csv(with_header)
        pos.columns = _POSITION_COLUMNS if len(pos.columns) == 6 else pos.columns
    elif without.exists():
        pos = pd.read_csv(without, header=None)
        if len(pos.columns) != 6:
            raise InvalidInputError(f"{without} must have 6 columns; found {len(pos.columns)}.")
        pos.columns = _POSITION_COLUMNS
    else:
        raise InvalidInputError(
            f"{spatial_dir} has neither tissue_positions.csv (Space Ranger >= 2) nor tissue_positions_list.csv (1.x)."
        )
    pos["barcode"] = pos["barcode"].astype(str)
    return pos.set_index("barcode")


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(arr, dtype=np.uint8)


def read_spaceranger(
    path: PathLike,
    *,
    library_id: str | None = None,
    in_tissue_only: bool = True,
    load_images: bool = True,
    count_file: str | None = None,
) -> AnnData:
    """Read a Space Ranger 1.x / 2.x / 3.x output folder (Visium).

    Reads ``filtered_feature_bc_matrix.h5`` (or the ``filtered_feature_bc_matrix/`` mtx folder),
    ``spatial/tissue_positions_list.csv`` (no header, 1.x) or ``tissue_positions.csv`` (header),
    ``scalefactors_json.json`` and whichever of ``tissue_hires_image.png`` /
    ``tissue_lowres_image.png`` exist (a missing one is reported once).

    Coordinates go to ``obsm['spatial']`` as (x, y) full-resolution pixels, array row/col to
    ``obsm['spatial.array']`` and ``obs['array_row'/'array_col']``; images (uint8) and scale
    factors to ``uns['spatial'][library_id]`` so that scanpy and squidpy plot it unchanged.

    Examples
    --------
    >>> a = em.io.read_spaceranger("Vis5A_2dpi", library_id="Vis5A")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_dir():
        raise InvalidInputError(f"Space Ranger folder not found: {path}")
    candidates = [count_file] if count_file else ["filtered_feature_bc_matrix.h5", "filtered_feature_bc_matrix"]
    matrix = next((path / c for c in candidates if c and (path / c).exists()), None)
    if matrix is None:
        h5s = sorted(path.glob("*filtered_feature_bc_matrix.h5"))
        matrix = h5s[0] if h5s else None
    if matrix is None:
        raise InvalidInputError(
            f"{path} has no filtered_feature_bc_matrix.h5 or filtered_feature_bc_matrix/ folder; pass count_file=."
        )
    adata = read_10x_h5(matrix) if matrix.is_file() else read_10x_mtx(matrix)
    library_id = library_id or path.name
    spatial_dir = path / "spatial"
    pos = _read_positions(spatial_dir)
    missing = adata.obs_names.difference(pos.index)
    if len(missing):
        raise InvalidInputError(f"{len(missing)} barcodes of the matrix are missing from the tissue positions (e.g. {list(missing[:3])}).")
    pos = pos.loc[adata.obs_names]
    adata.obs[Key.IN_TISSUE] = pos["in_tissue"].to_numpy().astype(np.int8)
    adata.obs[Key.ARRAY_ROW] = pos["array_row"].to_numpy().astype(np.int64)
    adata.obs[Key.ARRAY_COL] = pos["array_col"].to_numpy().astype(np.int64)
    adata.obsm[Key.SPATIAL] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    adata.obsm[Key.SPATIAL_ARRAY] = pos[["array_row", "array_col"]].to_numpy(dtype=np.int64)
    if in_tissue_only:
        adata = adata[adata.obs[Key.IN_TISSUE].to_numpy() == 1].copy()

    scalefactors_path = spatial_dir / "scalefactors_json.json"
    scalefactors = json.loads(scalefactors_path.read_text()) if scalefactors_path.exists() else {}
    if not scalefactors:
        warnings.warn(f"{scalefactors_path} is missing; spot sizes and image scaling are unknown.", ExperimatWarning)
    images: dict[str, np.ndarray] = {}
    if load_images:
        absent = []
        for res in ("hires", "lowres"):
            img = spatial_dir / f"tissue_{res}_image.png"
            if img.exists():
                images[res] = _read_image(img)
            else:
                absent.append(img.name)
        if absent:
            warnings.warn(f"{library_id}: {', '.join(absent)} not found in {path.name}/spatial; reading what exists.", ExperimatWarning)
    metadata: dict[str, str] = {}
    summary = path / "metrics_summary.csv"
    if summary.exists():
        try:
            m = pd.read_csv(summary).iloc[0]
            metadata = {str(k): str(v) for k, v in m.items()}
        except (pd.errors.ParserError, IndexError, ValueError) as e:  # metrics are informational only
            logger.debug(f"could not parse {summary}: {e}")
    adata.uns[Key.SPATIAL] = {library_id: {"images": images, "scalefactors": scalefactors, "metadata": metadata}}
    return adata


# -- count tables (legacy ST) ------------------------------------------------------------------
def read_count_table(
    path: PathLike,
    *,
    coordinates: PathLike | pd.DataFrame | None = None,
    sep: str | None = None,
    transpose: bool = False,
    in_tissue_only: bool = True,
) -> AnnData:
    """Read a count table (spots x genes; csv/tsv, optionally gzipped) such as legacy ST data.

    Coordinates come from ``coordinates`` (a table whose index matches the spot names, or with
    ``x``/``y`` array columns from which ``"<x>x<y>"`` names are built; ``pixel_x``/``pixel_y``
    are used as pixels when present and ``selected``/``in_tissue`` filters spots) or, when not
    given, from spot names of the form ``"<x>x<y>"``.
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
    return _set_counts(adata)


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


def read(path: PathLike, *, library_id: str | None = None, coordinates: PathLike | None = None, load_images: bool = True) -> AnnData:
    """Read any supported input, detecting the layout.

    - a folder with ``spatial/`` -> :func:`read_spaceranger`
    - a folder with ``matrix.mtx(.gz)`` -> :func:`read_10x_mtx`
    - ``*.h5`` -> :func:`read_10x_h5`; ``*.h5ad`` -> :func:`read_h5ad`
    - ``*.csv``/``*.tsv`` (optionally ``.gz``) -> :func:`read_count_table`
    """
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"input path does not exist: {p}")
    name = p.name.lower()
    if p.is_dir():
        if (p / "spatial").is_dir():
            return read_spaceranger(p, library_id=library_id, load_images=load_images)
        if any((p / f).exists() for f in ("matrix.mtx", "matrix.mtx.gz")):
            return read_10x_mtx(p)
        if (p / "filtered_feature_bc_matrix.h5").exists():
            return read_10x_h5(p / "filtered_feature_bc_matrix.h5")
        raise InvalidInputError(f"cannot tell the layout of folder {p}: expected spatial/ (Space Ranger) or matrix.mtx (10x).")
    if name.endswith(".h5ad"):
        return read_h5ad(p)
    if name.endswith(".h5"):
        return read_10x_h5(p)
    if any(name.endswith(s) for s in (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")):
        return read_count_table(p, coordinates=coordinates)
    raise InvalidInputError(f"unsupported input {p}; supported: Space Ranger folder, 10x h5/mtx, h5ad, csv/tsv count table.")
