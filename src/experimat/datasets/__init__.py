"""Shipped real data sets and synthetic generators with known truth.

Small real data ship inside the package (``experimat/datasets/_data``, each with its ``PROVENANCE.md``); large ones
are found under ``em.settings.data_dir`` (set ``EXPERIMAT_DATA_DIR``).
"""

from ._synthetic import pseudo_spots, synthetic_domains, synthetic_svg, visium_hex_grid

__all__ = ["pseudo_spots", "synthetic_domains", "synthetic_svg", "visium_hex_grid"]

from ._real import data_path, visium_mouse_muscle, visium_mouse_muscle_sheet

__all__ += ["data_path", "visium_mouse_muscle", "visium_mouse_muscle_sheet"]
