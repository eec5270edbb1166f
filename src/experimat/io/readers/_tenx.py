"""Readers for 10x Space Ranger (Visium, Visium HD) and Cell Ranger outputs.

Every reader returns an AnnData with raw counts in ``X`` (float32, exact) and in
``layers['counts']`` (int32, exact), ``var['gene_ids']`` where the source has ids, and for
spatial data ``obsm['spatial']`` in full-resolution pixels (x, y) with images and scale
factors in ``uns['spatial'][library_id]`` (the scanpy/squidpy convention).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..._errors import ExperimatWarning, InvalidInputError
from ..._keys import Key
from ..._logging import logger
from ._common import PathLike, _decode, _read_image, _set_counts, read_parquet

if TYPE_CHECKING:
    from anndata import AnnData

_POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


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
    parquet = spatial_dir / "tissue_positions.parquet"  # Visium HD (Space Ranger >= 3)
    with_header = spatial_dir / "tissue_positions.csv"
    without = spatial_dir / "tissue_positions_list.csv"
    if parquet.exists():
        pos = read_parquet(parquet)
        missing = [c for c in _POSITION_COLUMNS if c not in pos.columns]
        if missing:
            raise InvalidInputError(f"{parquet} lacks the column(s) {missing}; found {list(pos.columns)}.")
    elif with_header.exists():
        pos = pd.read_csv(with_header)
        pos.columns = _POSITION_COLUMNS if len(pos.columns) == 6 else pos.columns
    elif without.exists():
        pos = pd.read_csv(without, header=None)
        if len(pos.columns) != 6:
            raise InvalidInputError(f"{without} must have 6 columns; found {len(pos.columns)}.")
        pos.columns = _POSITION_COLUMNS
    else:
        raise InvalidInputError(
            f"{spatial_dir} has none of tissue_positions.parquet (Visium HD), tissue_positions.csv (Space Ranger >= 2) "
            "or tissue_positions_list.csv (1.x)."
        )
    pos["barcode"] = pos["barcode"].astype(str)
    return pos.set_index("barcode")


def _spatial_uns(path: Path, spatial_dir: Path, library_id: str, load_images: bool) -> dict:
    """``{'images', 'scalefactors', 'metadata'}`` of a Space Ranger ``spatial/`` folder."""
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
    return {"images": images, "scalefactors": scalefactors, "metadata": metadata}


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
    if in_tissue_only and (adata.obs[Key.IN_TISSUE].to_numpy() != 1).any():
        adata = adata[adata.obs[Key.IN_TISSUE].to_numpy() == 1].copy()

    adata.uns[Key.SPATIAL] = {library_id: _spatial_uns(path, spatial_dir, library_id, load_images)}
    return adata




# -- Visium HD (Space Ranger >= 3) ---------------------------------------------------------------
def _library_from(path: Path) -> str:
    """A default library id: the run folder (the parent of ``outs/``), else the folder itself."""
    parts = [p for p in (path, *path.parents) if p.name not in ("", "outs", "binned_outputs", "segmented_outputs")]
    name = parts[0].name if parts else path.name
    return name if not name.startswith("square_") or len(parts) < 2 else parts[1].name


def _hd_bin_folder(path: Path, bin_size: int) -> Path:
    if (path / "spatial" / "tissue_positions.parquet").exists():
        return path  # a binned_outputs/square_XXXum folder itself
    binned = path if path.name == "binned_outputs" else path / "binned_outputs"
    if not binned.is_dir():
        raise InvalidInputError(
            f"{path} is not a Visium HD output: expected binned_outputs/square_XXXum/ (the Space Ranger outs/ folder) "
            "or a square_XXXum folder with spatial/tissue_positions.parquet."
        )
    folder = binned / f"square_{int(bin_size):03d}um"
    if not folder.is_dir():
        have = sorted(p.name for p in binned.glob("square_*um") if p.is_dir())
        raise InvalidInputError(f"bin size {bin_size} µm not in {binned}; available: {have}. Pass bin_size=.")
    return folder


def read_visium_hd(
    path: PathLike,
    *,
    bin_size: int = 8,
    library_id: str | None = None,
    in_tissue_only: bool = True,
    load_images: bool = True,
) -> AnnData:
    """Read the binned outputs of a Visium HD run (Space Ranger >= 3) -> modality ``spatial-bin``.

    ``path`` is the ``outs/`` folder (or ``binned_outputs/``, or one ``square_XXXum`` folder);
    ``bin_size`` picks ``binned_outputs/square_{002|008|016}um``. Reads
    ``filtered_feature_bc_matrix.h5``, ``spatial/tissue_positions.parquet`` (needs pyarrow: the
    ``platforms`` extra), ``spatial/scalefactors_json.json`` (incl. ``bin_size_um`` and
    ``microns_per_pixel``) and the hires/lowres images.

    ``obsm['spatial']`` holds bin centres in full-resolution image pixels (x, y), like Visium;
    ``obsm['spatial.array']`` the bin grid (row, col); ``uns['spatial'][library_id]`` the images and
    scale factors (scanpy/squidpy layout; ``spot_diameter_fullres`` is the bin side in pixels).

    Examples
    --------
    >>> a = em.io.read_visium_hd("run1/outs", bin_size=8)  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_dir():
        raise InvalidInputError(f"Visium HD folder not found: {path}")
    folder = _hd_bin_folder(path, bin_size)
    library_id = library_id or _library_from(path)
    adata = read_spaceranger(folder, library_id=library_id, in_tissue_only=in_tissue_only, load_images=load_images)
    sf = adata.uns[Key.SPATIAL][library_id]["scalefactors"]
    size = sf.get("bin_size_um")
    expected = float(folder.name[len("square_"):-2]) if folder.name.startswith("square_") else None
    if size is None:
        warnings.warn(f"{folder}/spatial/scalefactors_json.json has no bin_size_um (Space Ranger < 3?).", ExperimatWarning)
    elif expected is not None and not np.isclose(float(size), expected):
        raise InvalidInputError(f"{folder.name}: scalefactors_json.json says bin_size_um={size}; the folder name says {expected}.")
    meta = adata.uns[Key.SPATIAL][library_id]["metadata"]
    meta["platform"] = "Visium HD"
    if size is not None:
        meta["bin_size_um"] = str(size)
    return adata


def _polygon_centroids(polys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (x, y) and areas of simple polygons (shoelace formula); degenerate ones use the vertex mean."""
    cent = np.empty((len(polys), 2))
    area = np.empty(len(polys))
    for i, p in enumerate(polys):
        x, y = p[:, 0], p[:, 1]
        x1, y1 = np.roll(x, -1), np.roll(y, -1)
        cross = x * y1 - x1 * y
        a = cross.sum() / 2.0
        if abs(a) < 1e-12:
            cent[i] = p.mean(axis=0)
            area[i] = 0.0
        else:
            cent[i] = ((x + x1) * cross).sum() / (6 * a), ((y + y1) * cross).sum() / (6 * a)
            area[i] = abs(a)
    return cent, area


def read_visium_hd_cells(path: PathLike, *, library_id: str | None = None, load_images: bool = True) -> AnnData:
    """Read the segmented cells of a Visium HD run (Space Ranger >= 4 ``segmented_outputs/``) -> ``spatial-cell``.

    Reads ``filtered_feature_cell_matrix.h5`` (barcodes ``cellid_<9 digits>-1``),
    ``cell_segmentations.geojson`` (polygons in full-resolution pixels, ``properties.cell_id``)
    and ``spatial/`` (scale factors, images). ``obsm['spatial']`` is the polygon centroid (x, y)
    in full-resolution pixels; ``obs['cell_area_px']`` (and ``obs['cell_area_um2']`` when
    ``microns_per_pixel`` is known) the polygon area. Cells of the matrix without a polygon are
    dropped with a warning.
    """
    path = Path(path)
    seg = path / "segmented_outputs" if (path / "segmented_outputs").is_dir() else path
    matrix = seg / "filtered_feature_cell_matrix.h5"
    if not matrix.is_file():
        raise InvalidInputError(f"{seg} has no filtered_feature_cell_matrix.h5 (Visium HD segmented_outputs/, Space Ranger >= 4).")
    geo = next((seg / n for n in ("cell_segmentations.geojson", "graphclust_annotated_cell_segmentations.geojson")
                if (seg / n).is_file()), None)
    if geo is None:
        raise InvalidInputError(f"{seg} has no cell_segmentations.geojson; the cell positions come from it.")
    adata = read_10x_h5(matrix)
    library_id = library_id or _library_from(path)
    feats = json.loads(geo.read_text()).get("features", [])
    ids, polys = [], []
    for f in feats:
        g = f.get("geometry") or {}
        coords = g.get("coordinates")
        if not coords or "cell_id" not in (f.get("properties") or {}):
            continue
        ring = coords[0][0] if g.get("type") == "MultiPolygon" else coords[0]
        ids.append(f"cellid_{int(f['properties']['cell_id']):09d}-1")
        polys.append(np.asarray(ring, dtype=np.float64)[:, :2])
    cent, area = _polygon_centroids(polys)
    where = pd.Series(np.arange(len(ids)), index=pd.Index(ids))
    where = where[~where.index.duplicated()]
    have = adata.obs_names.isin(where.index)
    if not have.all():
        warnings.warn(f"{library_id}: {int((~have).sum())} cells of the matrix have no polygon in {geo.name}; dropped.",
                      ExperimatWarning)
        adata = adata[have].copy()
    idx = where.loc[adata.obs_names].to_numpy()
    adata.obsm[Key.SPATIAL] = cent[idx]
    adata.obs["cell_area_px"] = area[idx]
    uns = _spatial_uns(path, seg / "spatial", library_id, load_images)
    mpp = uns["scalefactors"].get("microns_per_pixel")
    if mpp:
        adata.obs["cell_area_um2"] = area[idx] * float(mpp) ** 2
    uns["metadata"]["platform"] = "Visium HD (segmented cells)"
    adata.uns[Key.SPATIAL] = {library_id: uns}
    return adata
