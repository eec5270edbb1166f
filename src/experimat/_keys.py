"""Slot names, file names and option enums used across the package (one place)."""

from __future__ import annotations

from enum import Enum

from ._errors import InvalidInputError


class ModeEnum(str, Enum):
    """String enum whose lookup error lists the valid values."""

    @classmethod
    def _missing_(cls, value: object):
        valid = [m.value for m in cls]
        raise InvalidInputError(f"invalid value {value!r} for {cls.__name__}; valid values: {valid}.")

    def __str__(self) -> str:
        return str(self.value)


class Modality(ModeEnum):
    RNA = "rna"
    SPATIAL_BIN = "spatial-bin"
    SPATIAL_CELL = "spatial-cell"

    @property
    def attr(self) -> str:
        """Accessor attribute name (``spatial-bin`` -> ``spatial_bin``)."""
        return self.value.replace("-", "_")


MODALITIES = tuple(m.value for m in Modality)
SPATIAL_MODALITIES = (Modality.SPATIAL_BIN.value, Modality.SPATIAL_CELL.value)


class Key:
    """Default slot names (AnnData keys)."""

    COUNTS = "counts"  # layers
    SPATIAL = "spatial"  # obsm and uns
    SPATIAL_ARRAY = "spatial.array"  # obsm: array row / col of Visium spots
    SAMPLE = "sample"  # obs columns below
    BATCH = "batch"
    GROUP = "group"
    MODALITY = "modality"
    TAXA = "taxa"
    BARCODE = "barcode"
    IN_TISSUE = "in_tissue"
    ARRAY_ROW = "array_row"
    ARRAY_COL = "array_col"
    GENE = "gene"  # var: gene symbol
    GENE_ID = "gene_id"
    ANNOTATED = "annotated"
    PARAMS = "params"  # uns[key_added]["params"]


class FileName:
    """File names of the project folder (format version 1)."""

    MANIFEST = "manifest.json"
    HISTORY = "history.jsonl"
    LOCK = ".lock"
    SAMPLES_DIR = "samples"
    MODELS_DIR = "models"
    INTEGRATED_STEM = "integrated"


FORMAT_NAME = "experimat-project"
FORMAT_VERSION = 1

#: columns every sample sheet has (``batch``/``group`` may be empty)
SAMPLE_TABLE_COLUMNS = ("sample", "modality", "taxa", "batch", "group", "path")
#: obs columns added to every sample (categorical)
SAMPLE_OBS_COLUMNS = ("sample", "batch", "group", "modality", "taxa")
