"""Locate real data sets: small ones shipped inside the package (``experimat/datasets/_data``) and large ones under
``em.settings.data_dir`` (environment variable ``EXPERIMAT_DATA_DIR``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .._errors import InvalidInputError
from .._settings import settings

#: small real data shipped inside the package (each folder has a PROVENANCE.md); the tests use the same files
SHIPPED_DIR = Path(__file__).resolve().parent / "_data"


def data_path(name: str, *, shipped: str | None = None) -> Path:
    """The folder of data set ``name`` under ``em.settings.data_dir``, else its copy shipped with the package.

    Parameters
    ----------
    name
        Folder name under ``em.settings.data_dir``.
    shipped
        Folder name under the package's shipped data (``experimat/datasets/_data``), used when ``name`` is absent.

    Raises
    ------
    InvalidInputError
        When neither exists; the message names the environment variable to set.
    """
    cand = settings.data_dir / name
    if cand.exists():
        return cand
    if shipped is not None and (SHIPPED_DIR / shipped).exists():
        return SHIPPED_DIR / shipped
    raise InvalidInputError(
        f"data set {name!r} not found under {settings.data_dir}; set EXPERIMAT_DATA_DIR (or em.settings.data_dir) to the "
        "folder holding it."
    )


def visium_mouse_muscle() -> Path:
    """Folder of the two real Visium mouse-muscle samples (McKellar et al. 2021): ``Vis5A_2dpi``, ``Vis7B_5dpi``."""
    return data_path("visium_mouse_muscle_mckellar2021", shipped="visium_mouse_muscle")


def visium_mouse_muscle_sheet() -> pd.DataFrame:
    """A sample sheet for :func:`visium_mouse_muscle` (sample, modality, taxa, batch, group, path, days)."""
    root = visium_mouse_muscle()
    rows = [
        {"sample": "Vis5A_2dpi", "modality": "spatial-bin", "taxa": "mmu", "batch": "V19T19-051", "group": "2dpi", "path": str(root / "Vis5A_2dpi"), "days": 2},
        {"sample": "Vis7B_5dpi", "modality": "spatial-bin", "taxa": "mmu", "batch": "V19T19-051", "group": "5dpi", "path": str(root / "Vis7B_5dpi"), "days": 5},
    ]
    for r in rows:
        if not Path(r["path"]).is_dir():
            raise InvalidInputError(f"sample folder missing: {r['path']}")
    return pd.DataFrame(rows)
