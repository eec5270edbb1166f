"""Bind the pure methods to the modality accessors (one registration line each).

Importing this package registers every method; :mod:`experimat.core.accessor` imports it on
first use of an accessor.
"""

from . import rna, spatial_bin, spatial_cell  # noqa: F401
