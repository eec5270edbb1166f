"""Readers for imaging-based platforms -> modality ``spatial-cell``: Xenium, CosMx, MERSCOPE.

All three keep control probes and blank / unassigned codewords apart from the genes:
``X``, ``layers['counts']`` and ``var`` hold the genes only; the controls' counts are in
``obsm['controls']`` (sparse CSR int32, cells x controls) with their names and kinds in
``uns['controls']`` and their per-cell total in ``obs['control_counts']``.

Coordinates: ``obsm['spatial']`` holds cell centroids (x, y) in the platform's global frame —
micrometres for Xenium and MERSCOPE, global pixels for CosMx — and
``uns['spatial'][library_id]['metadata']['spatial_unit']`` says which.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..._errors import ExperimatWarning, InvalidInputError
from ..._keys import Key
from ..._optional import has_package, import_optional
from ._common import PathLike, _set_counts, _to_uint8, csv_to_sparse, find_one, read_json, read_parquet, split_controls
from ._tenx import read_10x_h5

if TYPE_CHECKING:
    from anndata import AnnData

#: longest side of the morphology image kept in ``uns`` (a lower pyramid level is chosen)
MAX_IMAGE_SIDE = 4000


def _diameter(area: np.ndarray) -> float:
    a = np.asarray(area, dtype=float)
    a = a[np.isfinite(a) & (a > 0)]
    return float(2 * np.sqrt(np.median(a) / np.pi)) if a.size else 10.0


# -- Xenium ---------------------------------------------------------------------------------------
#: feature types of ``cell_feature_matrix.h5`` that are not genes (Xenium Onboard Analysis 1-3)
XENIUM_CONTROL_TYPES = ("Negative Control Probe", "Negative Control Codeword", "Unassigned Codeword",
                        "Blank Codeword", "Deprecated Codeword", "Genomic Control")


def _read_xenium_image(path: Path, pixel_size: float) -> tuple[np.ndarray, float] | None:
    """A pyramid level of an OME-TIFF with its longest side <= MAX_IMAGE_SIDE, and its scale (px per µm)."""
    tifffile = import_optional("tifffile", purpose=f"reading the morphology image {path.name}")
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        levels = list(getattr(series, "levels", None) or [series])
        full = levels[0].shape
        yx_full = full[-2:]
        chosen = levels[-1]
        for lvl in levels:
            if max(lvl.shape[-2:]) <= MAX_IMAGE_SIDE:
                chosen = lvl
                break
        img = chosen.asarray()
    while img.ndim > 2:  # channels / z: keep the first plane (DAPI)
        img = img[0]
    step = int(max(1, np.ceil(max(img.shape) / MAX_IMAGE_SIDE)))
    img = img[::step, ::step]
    down = yx_full[-1] / img.shape[-1]
    return _to_uint8(img), 1.0 / (pixel_size * down)


def read_xenium(path: PathLike, *, library_id: str | None = None, load_images: bool = True) -> AnnData:
    """Read a Xenium Onboard Analysis output folder -> modality ``spatial-cell``.

    Reads ``cell_feature_matrix.h5`` (10x h5; genes and control features), ``cells.parquet``
    (needs pyarrow: the ``platforms`` extra) or ``cells.csv.gz``, and ``experiment.xenium``
    (run metadata, ``pixel_size`` in µm). With ``load_images`` and tifffile installed, a level
    of ``morphology_focus/morphology_focus_0000.ome.tif`` (XOA >= 2), ``morphology_focus.ome.tif``
    or ``morphology_mip.ome.tif`` (the first channel, DAPI) becomes ``images['hires']``; the image
    is optional and skipped with a warning when absent or unreadable.

    ``obsm['spatial']`` = ``x_centroid, y_centroid`` (µm); the other ``cells`` columns go to
    ``obs``; control probes and codewords go to ``obsm['controls']`` (see the module docstring).

    Examples
    --------
    >>> a = em.io.read_xenium("output-XETG00001__slide__region")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_dir():
        raise InvalidInputError(f"Xenium folder not found: {path}")
    matrix = path / "cell_feature_matrix.h5"
    if not matrix.is_file():
        raise InvalidInputError(f"{path} has no cell_feature_matrix.h5 (a Xenium output folder has it at the top).")
    library_id = library_id or path.name
    adata = read_10x_h5(matrix, gene_expression_only=False)
    types = adata.var["feature_types"].astype(str).to_numpy()
    adata = split_controls(adata, types != "Gene Expression", types)
    parquet, csv = path / "cells.parquet", path / "cells.csv.gz"
    if not csv.exists() and (path / "cells.csv").exists():
        csv = path / "cells.csv"
    if parquet.exists() and (has_package("pyarrow") or not csv.exists()):
        cells = read_parquet(parquet)
    elif csv.exists():
        cells = pd.read_csv(csv)
    else:
        raise InvalidInputError(f"{path} has neither cells.parquet nor cells.csv.gz (cell centroids).")
    for col in ("cell_id", "x_centroid", "y_centroid"):
        if col not in cells.columns:
            raise InvalidInputError(f"the cells table of {path} lacks {col!r}; found {list(cells.columns)}.")
    cells["cell_id"] = _decode_ids(cells["cell_id"])
    cells = cells.set_index("cell_id")
    missing = adata.obs_names.difference(cells.index)
    if len(missing):
        raise InvalidInputError(f"{len(missing)} cells of cell_feature_matrix.h5 are not in the cells table (e.g. {list(missing[:3])}).")
    cells = cells.loc[adata.obs_names]
    adata.obsm[Key.SPATIAL] = cells[["x_centroid", "y_centroid"]].to_numpy(dtype=np.float64)
    for col in cells.columns.drop(["x_centroid", "y_centroid"]):
        adata.obs[col] = cells[col].to_numpy()
    spec = read_json(path / "experiment.xenium") if (path / "experiment.xenium").exists() else {}
    if not spec:
        warnings.warn(f"{path} has no experiment.xenium; the pixel size is taken as 0.2125 µm.", ExperimatWarning)
    pixel_size = float(spec.get("pixel_size", 0.2125))
    metadata = {str(k): str(v) for k, v in spec.items() if not isinstance(v, dict | list)}
    metadata.update(platform="Xenium", spatial_unit="um")
    diameter = _diameter(adata.obs["cell_area"]) if "cell_area" in adata.obs else 10.0
    scalefactors = {"spot_diameter_fullres": diameter, "pixel_size_um": pixel_size}
    images: dict[str, np.ndarray] = {}
    if load_images:
        img_path = next((p for p in (path / "morphology_focus" / "morphology_focus_0000.ome.tif",
                                     path / "morphology_focus.ome.tif", path / "morphology_mip.ome.tif") if p.exists()), None)
        if img_path is None:
            warnings.warn(f"{library_id}: no morphology image in {path.name}; reading without it.", ExperimatWarning)
        elif not has_package("tifffile"):
            warnings.warn(f"{library_id}: {img_path.name} needs tifffile (pip install 'experimat[platforms]'); "
                          "reading without the image.", ExperimatWarning)
        else:
            try:
                img, scale = _read_xenium_image(img_path, pixel_size)
            except (OSError, ValueError, RuntimeError) as e:  # e.g. a JPEG-2000 codec is missing
                warnings.warn(f"{library_id}: could not read {img_path.name} ({e}); reading without the image.",
                              ExperimatWarning)
            else:
                images["hires"] = img
                scalefactors["tissue_hires_scalef"] = scale
    adata.uns[Key.SPATIAL] = {library_id: {"images": images, "scalefactors": scalefactors, "metadata": metadata}}
    return adata


def _decode_ids(values: pd.Series) -> np.ndarray:
    v = values.to_numpy()
    if v.dtype == object and len(v) and isinstance(v[0], bytes):
        return np.array([x.decode() for x in v], dtype=object)
    return v.astype(str).astype(object)


# -- CosMx ----------------------------------------------------------------------------------------
#: name patterns of CosMx control targets (negative probes, system controls, false codes)
COSMX_CONTROL = re.compile(r"^(NegPrb|Negative|SystemControl|FalseCode)", re.IGNORECASE)


def read_cosmx(
    path: PathLike,
    *,
    library_id: str | None = None,
    counts_file: PathLike | None = None,
    metadata_file: PathLike | None = None,
    fov_file: PathLike | None = None,
    load_images: bool = True,
) -> AnnData:
    """Read a CosMx SMI flat-file export (AtoMx) -> modality ``spatial-cell``.

    Reads ``*exprMat_file.csv(.gz)`` (``fov, cell_ID``, one column per target; ``cell_ID`` 0
    holds the transcripts outside cells and is dropped), ``*metadata_file.csv(.gz)`` (per cell:
    ``fov, cell_ID``, ``CenterX/Y_local_px``, usually ``CenterX/Y_global_px``, area, stains) and,
    when present, ``*fov_positions_file.csv(.gz)`` (``fov, x_global_px, y_global_px``: each
    field of view's offset). Cells are named ``<fov>_<cell_ID>``.

    ``obsm['spatial']`` = ``CenterX/Y_global_px`` (one frame for the whole slide); where the
    metadata lack global coordinates they are the local ones plus the FOV offsets.
    ``obsm['spatial.fov']`` keeps the local (within-FOV) coordinates; ``obs['fov']`` the FOV.
    Negative probes (``NegPrb*``), ``SystemControl*`` and ``FalseCode*`` targets go to
    ``obsm['controls']``. The counts matrix is read in chunks (no dense copy of the whole file).

    With ``load_images``, the per-FOV images of the folder — ``CellComposite/*_F<fov>.jpg`` (the
    colour composites), else ``Morphology2D/*_F<fov>.TIF`` (first channel; needs tifffile) — are
    placed on the slide onto ``images['hires']`` in global pixels (a FOV image's pixels are its
    local pixel frame; each FOV's offset, and whether its y axis runs against the global one, is
    fitted on its cells, else taken from the fov_positions file). The images are optional.
    """
    import anndata as ad

    path = Path(path)
    if not path.is_dir():
        raise InvalidInputError(f"CosMx folder not found: {path}")
    cfile = Path(counts_file) if counts_file else find_one(path, ("*exprMat_file.csv", "*exprMat_file.csv.gz"), "exprMat")
    mfile = Path(metadata_file) if metadata_file else find_one(path, ("*metadata_file.csv", "*metadata_file.csv.gz"), "metadata")
    ffile = Path(fov_file) if fov_file else find_one(path, ("*fov_positions_file.csv", "*fov_positions_file.csv.gz"),
                                                      "fov_positions", required=False)
    library_id = library_id or re.sub(r"_?exprMat_file\.csv(\.gz)?$", "", cfile.name) or path.name
    # newer AtoMx exports add a string cell id column ("cell", e.g. c_1_3_12): an id, not a target
    ids, features, X = csv_to_sparse(cfile, ["fov", "cell_ID"], optional_id_columns=("cell", "cell_id"))
    names = ids["fov"].astype(str) + "_" + ids["cell_ID"].astype(str)
    inside = ids["cell_ID"].to_numpy() != 0
    X, names = X[np.flatnonzero(inside)], names[inside]
    meta = pd.read_csv(mfile)
    for col in ("fov", "cell_ID"):
        if col not in meta.columns:
            raise InvalidInputError(f"{mfile.name} lacks {col!r}; found {list(meta.columns[:10])}...")
    meta.index = meta["fov"].astype(str) + "_" + meta["cell_ID"].astype(str)
    meta = meta[meta["cell_ID"] != 0]
    shared = pd.Index(names).intersection(meta.index, sort=False)
    if len(shared) == 0:
        raise InvalidInputError(f"no cell of {cfile.name} is in {mfile.name} (ids are <fov>_<cell_ID>).")
    if len(shared) < len(names):
        warnings.warn(f"{library_id}: {len(names) - len(shared)} cells of {cfile.name} lack metadata; dropped.", ExperimatWarning)
    pos = pd.Series(np.arange(len(names)), index=pd.Index(names)).loc[shared].to_numpy()
    adata = ad.AnnData(X=X[pos], obs=meta.loc[shared].copy(), var=pd.DataFrame(index=pd.Index(features)))
    adata.obs["fov"] = adata.obs["fov"].astype(str).astype("category")
    local = ("CenterX_local_px", "CenterY_local_px")
    glob = ("CenterX_global_px", "CenterY_global_px")
    fovs = pd.read_csv(ffile) if ffile is not None else None
    if fovs is not None:
        fovs.columns = [c if c != "FOV" else "fov" for c in fovs.columns]
    if set(glob) <= set(adata.obs.columns):
        xy = adata.obs[list(glob)].to_numpy(dtype=np.float64)
    elif set(local) <= set(adata.obs.columns) and fovs is not None and {"fov", "x_global_px", "y_global_px"} <= set(fovs.columns):
        off = fovs.set_index(fovs["fov"].astype(str))
        miss = sorted(set(adata.obs["fov"].astype(str)) - set(off.index))
        if miss:
            raise InvalidInputError(f"{ffile.name} lacks the offsets of FOV(s) {miss[:5]}.")
        o = off.loc[adata.obs["fov"].astype(str), ["x_global_px", "y_global_px"]].to_numpy(dtype=np.float64)
        xy = adata.obs[list(local)].to_numpy(dtype=np.float64) + o
    else:
        raise InvalidInputError(
            f"{mfile.name} has no CenterX/Y_global_px and no fov_positions_file with x/y_global_px was found; "
            "pass fov_file= so the FOVs can be placed on one slide."
        )
    adata.obsm[Key.SPATIAL] = xy
    if set(local) <= set(adata.obs.columns):
        adata.obsm["spatial.fov"] = adata.obs[list(local)].to_numpy(dtype=np.float64)
        adata.obs = adata.obs.drop(columns=list(local))
    adata.obs = adata.obs.drop(columns=[c for c in glob if c in adata.obs.columns])
    adata = _set_counts(adata)
    is_ctrl = np.array([bool(COSMX_CONTROL.match(g)) for g in adata.var_names])
    kinds = np.array([(COSMX_CONTROL.match(g).group(1) if COSMX_CONTROL.match(g) else "gene") for g in adata.var_names], dtype=object)
    adata = split_controls(adata, is_ctrl, kinds)
    area = adata.obs["Area"].to_numpy() if "Area" in adata.obs else np.array([])
    metadata = {"platform": "CosMx", "spatial_unit": "pixel"}
    fov_meta = {}
    if fovs is not None and "fov" in fovs.columns:
        fov_meta = {str(r["fov"]): {k: float(v) for k, v in r.items() if k != "fov" and isinstance(v, int | float)}
                    for _, r in fovs.iterrows()}
    scalefactors = {"spot_diameter_fullres": _diameter(area) if area.size else 80.0}
    images = {}
    if load_images:
        from ._platform_images import cosmx_fov_images

        offsets = None if fovs is None or not {"fov", "x_global_px", "y_global_px"} <= set(fovs.columns) \
            else fovs.set_index(fovs["fov"].astype(str))
        got = cosmx_fov_images(path, adata.obs["fov"].astype(str).to_numpy(), adata.obsm.get("spatial.fov"),
                               np.asarray(adata.obsm[Key.SPATIAL]), offsets, library_id)
        if got is not None:
            images["hires"], scalefactors["tissue_hires_scalef"], metadata["image_folder"] = got
    adata.uns[Key.SPATIAL] = {library_id: {"images": images, "scalefactors": scalefactors, "metadata": metadata}}
    if fov_meta:
        adata.uns["cosmx_fov_positions"] = {k: {kk: np.float64(vv) for kk, vv in v.items()} for k, v in fov_meta.items()}
    return adata


# -- MERSCOPE -------------------------------------------------------------------------------------
def read_merscope(
    path: PathLike,
    *,
    library_id: str | None = None,
    counts_file: PathLike | None = None,
    metadata_file: PathLike | None = None,
    load_images: bool = True,
    image_stain: str = "DAPI",
    z_layer: int | None = None,
) -> AnnData:
    """Read a MERSCOPE (Vizgen) region output folder -> modality ``spatial-cell``.

    Reads ``cell_by_gene.csv`` (first column the cell id — ``cell`` or the unnamed
    ``EntityID`` index — then one column per gene and ``Blank-*`` codewords) and
    ``cell_metadata.csv`` (``fov, volume, center_x, center_y, min_x, max_x, min_y, max_y`` in µm)
    and, when present, ``images/micron_to_mosaic_pixel_transform.csv`` (3 x 3 affine from µm to
    mosaic pixels, kept in ``uns['spatial'][library_id]['scalefactors']['transformation_matrix']``).

    ``obsm['spatial']`` = ``center_x, center_y`` (µm); ``Blank-*`` codewords go to
    ``obsm['controls']``. The counts are read in chunks (no dense copy of the whole file).

    With ``load_images`` (needs tifffile), the mosaic ``images/mosaic_<image_stain>_z<z>.tif``
    (``z_layer`` None: z 3, the middle of MERSCOPE's seven layers; another stain when that one is
    absent) is placed through the transform onto ``images['hires']`` in µm (see
    :mod:`experimat.io.readers._platform_images`; read tile by tile, downsampled, never whole). The
    mosaics are optional: without them, or without the transform, the sample has no image.
    """
    import anndata as ad

    path = Path(path)
    if not path.is_dir():
        raise InvalidInputError(f"MERSCOPE folder not found: {path}")
    cfile = Path(counts_file) if counts_file else find_one(path, ("cell_by_gene.csv", "*cell_by_gene*.csv", "*cell_by_gene*.csv.gz"), "cell_by_gene")
    mfile = Path(metadata_file) if metadata_file else find_one(path, ("cell_metadata.csv", "*cell_metadata*.csv", "*cell_metadata*.csv.gz"), "cell_metadata")
    library_id = library_id or path.name
    ids, features, X = csv_to_sparse(cfile, ["cell"], index_col=0)
    names = ids["cell"].astype(str).to_numpy()
    meta = pd.read_csv(mfile, index_col=0)
    meta.index = meta.index.astype(str)
    for col in ("center_x", "center_y"):
        if col not in meta.columns:
            raise InvalidInputError(f"{mfile.name} lacks {col!r}; found {list(meta.columns)}.")
    missing = pd.Index(names).difference(meta.index)
    if len(missing):
        raise InvalidInputError(f"{len(missing)} cells of {cfile.name} are not in {mfile.name} (e.g. {list(missing[:3])}).")
    meta = meta.loc[names]
    adata = ad.AnnData(X=X, obs=meta.drop(columns=["center_x", "center_y"]), var=pd.DataFrame(index=pd.Index(features)))
    adata.obsm[Key.SPATIAL] = meta[["center_x", "center_y"]].to_numpy(dtype=np.float64)
    if "fov" in adata.obs:
        adata.obs["fov"] = adata.obs["fov"].astype(str).astype("category")
    adata = _set_counts(adata)
    blank = adata.var_names.str.startswith("Blank")
    adata = split_controls(adata, np.asarray(blank), np.where(blank, "Blank", "gene").astype(object))
    scalefactors: dict = {}
    if "volume" in adata.obs:  # a sphere of the cell's volume: a rough plotting diameter in µm
        v = adata.obs["volume"].to_numpy(dtype=float)
        v = v[np.isfinite(v) & (v > 0)]
        scalefactors["spot_diameter_fullres"] = float(2 * (3 * np.median(v) / (4 * np.pi)) ** (1 / 3)) if v.size else 10.0
    tfile = path / "images" / "micron_to_mosaic_pixel_transform.csv"
    if tfile.exists():
        m = pd.read_csv(tfile, sep=r"\s+", header=None).to_numpy(dtype=np.float64)
        if m.shape != (3, 3):
            raise InvalidInputError(f"{tfile} must hold a 3 x 3 matrix; found shape {m.shape}.")
        scalefactors["transformation_matrix"] = m
    images, metadata = {}, {"platform": "MERSCOPE", "spatial_unit": "um"}
    if load_images:
        from ._platform_images import merscope_mosaic

        got = merscope_mosaic(path / "images", scalefactors.get("transformation_matrix"), library_id, stain=image_stain,
                              z_layer=z_layer)
        if got is not None:
            images["hires"], scalefactors["tissue_hires_scalef"], metadata["image_file"] = got
    adata.uns[Key.SPATIAL] = {library_id: {"images": images, "scalefactors": scalefactors, "metadata": metadata}}
    return adata
