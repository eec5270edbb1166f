"""Shipped real data sets, a registry of the larger public ones, and synthetic generators with known truth.

Small real data ship inside the package (``experimat/datasets/_data``, each with its ``PROVENANCE.md``); large ones
are found under ``em.settings.data_dir`` (set ``EXPERIMAT_DATA_DIR``), described in :data:`REGISTRY` with their
public sources and checksums (:func:`fetch`).
"""

from ._hd import synthetic_visium_hd, write_visium_hd
from ._real import data_path, visium_mouse_muscle, visium_mouse_muscle_sheet
from ._registry import REGISTRY, fetch, registry, spatialde_published, spatialde_sheet
from ._stutility import stutility_sheet
from ._synthetic import pseudo_spots, synthetic_domains, synthetic_sections, synthetic_svg, visium_hex_grid

__all__ = [
    "REGISTRY",
    "data_path",
    "fetch",
    "pseudo_spots",
    "registry",
    "spatialde_published",
    "spatialde_sheet",
    "stutility_sheet",
    "synthetic_domains",
    "synthetic_sections",
    "synthetic_svg",
    "synthetic_visium_hd",
    "visium_hex_grid",
    "visium_mouse_muscle",
    "visium_mouse_muscle_sheet",
    "write_visium_hd",
]
