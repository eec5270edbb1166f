"""Readers, SpatialData conversion and the project-folder format."""

from .readers import (
    detect_format,
    read,
    read_10x_h5,
    read_10x_mtx,
    read_cosmx,
    read_count_table,
    read_h5ad,
    read_merscope,
    read_spaceranger,
    read_visium_hd,
    read_visium_hd_cells,
    read_xenium,
)
from .readers._spatialdata import from_spatialdata, to_spatialdata

__all__ = [
    "detect_format",
    "from_spatialdata",
    "read",
    "read_10x_h5",
    "read_10x_mtx",
    "read_cosmx",
    "read_count_table",
    "read_h5ad",
    "read_merscope",
    "read_spaceranger",
    "read_visium_hd",
    "read_visium_hd_cells",
    "read_xenium",
    "to_spatialdata",
]
