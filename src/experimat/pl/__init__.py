"""Plots (matplotlib, imported on first use): spots over the tissue and the figures of each method.

Every function takes one AnnData or ``{sample: AnnData}``, never modifies it, and returns a
:class:`matplotlib.figure.Figure` whose ``savefig`` embeds TrueType fonts in PDF/PS.
"""

from ._image import get_image
from ._spatial import plot_spatial

__all__ = ["get_image", "plot_spatial"]
