"""Our figure style: rcParams applied while figures are built and saved (no matplotlib import here)."""

from __future__ import annotations

from typing import Any

#: rcParams applied while our figures are built and saved (independent of the user's rcParams)
STYLE: dict[str, Any] = {
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "path",
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.labelsize": 9.0,
    "legend.fontsize": 8.0,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
    "figure.dpi": 100.0,
    "image.interpolation": "antialiased",
}
