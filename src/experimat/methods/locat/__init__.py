"""LOCAT: genes concentrated in one region of a cell landscape and depleted elsewhere (JAX)."""

from ._filter import DEFAULT_PSEUDO_PATTERNS, filter_genes_locat
from ._locat import COLUMNS, locat

__all__ = ["COLUMNS", "DEFAULT_PSEUDO_PATTERNS", "filter_genes_locat", "locat"]
