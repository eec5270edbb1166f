"""Readers: every one returns an AnnData with raw counts in ``X`` (float32, exact) and in
``layers['counts']`` (int32, exact), ``var['gene_ids']`` where the source has ids, and for
spatial data ``obsm['spatial']`` (x, y) with images and scale factors in
``uns['spatial'][library_id]`` (the scanpy/squidpy convention).

| platform | reader | modality |
|---|---|---|
| Visium (Space Ranger 1-3) | :func:`read_spaceranger` | spatial-bin |
| Visium HD bins (Space Ranger >= 3) | :func:`read_visium_hd` | spatial-bin |
| Visium HD segmented cells (Space Ranger >= 4) | :func:`read_visium_hd_cells` | spatial-cell |
| Xenium | :func:`read_xenium` | spatial-cell |
| CosMx | :func:`read_cosmx` | spatial-cell |
| MERSCOPE | :func:`read_merscope` | spatial-cell |
| legacy ST count tables | :func:`read_count_table` | spatial-bin |
| 10x h5 / mtx, h5ad | :func:`read_10x_h5`, :func:`read_10x_mtx`, :func:`read_h5ad` | rna (or any) |
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._errors import InvalidInputError
from ._common import CONTROLS, PathLike
from ._imaging import read_cosmx, read_merscope, read_xenium
from ._tables import read_count_table, read_h5ad
from ._tenx import read_10x_h5, read_10x_mtx, read_spaceranger, read_visium_hd, read_visium_hd_cells

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "CONTROLS", "detect_format", "read", "read_10x_h5", "read_10x_mtx", "read_cosmx", "read_count_table", "read_h5ad",
    "read_merscope", "read_spaceranger", "read_visium_hd", "read_visium_hd_cells", "read_xenium",
]

#: sample-sheet columns that :meth:`Experiment.from_table` passes to :func:`read` (numbers as text are converted)
READER_OPTION_COLUMNS = ("bin_size", "image", "image_scale", "table")

_TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")


def _has(p: Path, *patterns: str) -> bool:
    return any(any(p.glob(pat)) for pat in patterns)


def detect_format(path: PathLike, *, modality: str | None = None) -> str:
    """The layout of ``path``: ``visium_hd``, ``visium_hd_cells``, ``xenium``, ``cosmx``, ``merscope``,
    ``spaceranger``, ``10x_mtx``, ``10x_h5``, ``h5ad``, ``count_table`` or ``spatialdata`` (a ``.zarr`` store).

    A Visium HD ``outs/`` folder holding both bins and segmented cells is read as cells when
    ``modality='spatial-cell'`` and as bins otherwise.
    """
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"input path does not exist: {p}")
    name = p.name.lower()
    if p.is_dir():
        if name.endswith(".zarr"):
            return "spatialdata"
        hd_bins = (p / "binned_outputs").is_dir() or p.name == "binned_outputs" or (p / "spatial" / "tissue_positions.parquet").exists()
        hd_cells = (p / "segmented_outputs" / "filtered_feature_cell_matrix.h5").exists() or (p / "filtered_feature_cell_matrix.h5").exists()
        if hd_cells and (modality == "spatial-cell" or not hd_bins):
            return "visium_hd_cells"
        if hd_bins:
            return "visium_hd"
        if (p / "experiment.xenium").exists() or ((p / "cell_feature_matrix.h5").exists() and _has(p, "cells.parquet", "cells.csv*")):
            return "xenium"
        if _has(p, "*exprMat_file.csv", "*exprMat_file.csv.gz"):
            return "cosmx"
        if _has(p, "*cell_by_gene*.csv", "*cell_by_gene*.csv.gz") and _has(p, "*cell_metadata*.csv", "*cell_metadata*.csv.gz"):
            return "merscope"
        if (p / "spatial").is_dir():
            return "spaceranger"
        if any((p / f).exists() for f in ("matrix.mtx", "matrix.mtx.gz")):
            return "10x_mtx"
        if (p / "filtered_feature_bc_matrix.h5").exists():
            return "10x_h5"
        raise InvalidInputError(
            f"cannot tell the layout of folder {p}: expected a Space Ranger / Visium HD outs folder (spatial/, "
            "binned_outputs/, segmented_outputs/), a Xenium folder (experiment.xenium, cell_feature_matrix.h5), a CosMx "
            "export (*exprMat_file.csv), a MERSCOPE folder (cell_by_gene.csv + cell_metadata.csv) or matrix.mtx (10x)."
        )
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".h5"):
        return "10x_h5"
    if any(name.endswith(s) for s in _TABLE_SUFFIXES):
        return "count_table"
    raise InvalidInputError(
        f"unsupported input {p}; supported: Space Ranger / Visium HD / Xenium / CosMx / MERSCOPE folders, "
        "SpatialData .zarr, 10x h5/mtx, h5ad, csv/tsv count table."
    )


def read(
    path: PathLike,
    *,
    library_id: str | None = None,
    coordinates: PathLike | None = None,
    load_images: bool = True,
    modality: str | None = None,
    **options: Any,
) -> AnnData:
    """Read any supported input, detecting the layout (see :func:`detect_format`).

    ``options`` go to the reader of the detected layout: ``bin_size`` (Visium HD, default 8 µm),
    ``image`` / ``image_scale`` (count tables), ``table`` /
    ``coordinate_system`` (SpatialData ``.zarr``), file names of CosMx /
    MERSCOPE exports, ``in_tissue_only``. ``modality`` only chooses between the bins and the
    segmented cells of a Visium HD run.

    Examples
    --------
    >>> a = em.io.read("run1/outs", bin_size=16)  # doctest: +SKIP
    """
    from ...methods._checks import check_path

    check_path("path", path)
    fmt = detect_format(path, modality=modality)
    p = Path(path)
    if fmt in ("10x_h5", "h5ad") and p.is_file():
        import h5py

        if not h5py.is_hdf5(p):
            raise InvalidInputError(f"{p.name} is not an HDF5 file (truncated or another format); check the path or export it again.")
    for key in ("bin_size", "image_scale"):
        if isinstance(options.get(key), str):
            try:
                options[key] = float(options[key]) if key == "image_scale" else int(float(options[key]))
            except ValueError as e:
                raise InvalidInputError(f"{key}={options[key]!r} is not a number.") from e

    def call(fn, *, images: bool = True, lib: bool = True, **kw):
        kw.update(options)
        if lib:
            kw["library_id"] = library_id
        if images:
            kw["load_images"] = load_images
        try:
            return fn(p, **kw)
        except TypeError as e:  # an option the detected reader does not take
            if "unexpected keyword" in str(e):
                raise InvalidInputError(f"{fmt} input {p.name}: {e}; options: {sorted(options)}.") from e
            raise

    if fmt == "visium_hd":
        return call(read_visium_hd)
    if fmt == "visium_hd_cells":
        return call(read_visium_hd_cells)
    if fmt == "xenium":
        return call(read_xenium)
    if fmt == "cosmx":
        return call(read_cosmx)
    if fmt == "merscope":
        return call(read_merscope)
    if fmt == "spaceranger":
        return call(read_spaceranger)
    if fmt == "10x_mtx":
        return call(read_10x_mtx, images=False, lib=False)
    if fmt == "10x_h5":
        target = p / "filtered_feature_bc_matrix.h5" if p.is_dir() else p
        return read_10x_h5(target, **options)
    if fmt == "h5ad":
        return read_h5ad(p)
    if fmt == "spatialdata":
        from ._spatialdata import from_spatialdata

        if "table" not in options:
            raise InvalidInputError(f"{p.name} is a SpatialData store: pass table= (the name of the table to read).")
        return from_spatialdata(p, library_id=library_id, **options)
    return read_count_table(p, coordinates=coordinates, library_id=library_id, **options)
