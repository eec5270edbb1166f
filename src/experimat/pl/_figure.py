"""Our figure class (imports matplotlib: load this module only inside plotting functions)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib as mpl
from matplotlib.figure import Figure

from experimat.pl._style import STYLE


class ExperimatFigure(Figure):
    """A :class:`matplotlib.figure.Figure` that saves with our style whatever the user's rcParams.

    ``savefig`` embeds TrueType fonts in PDF/PS (``pdf.fonttype`` 42), and notebooks display it
    as PNG (``_repr_png_``) even when pyplot was never imported. The figure is not registered with
    pyplot, so no display or GUI backend is needed and no figure is kept open globally.
    """

    def savefig(self, fname: Any, *args: Any, **kwargs: Any) -> None:
        with mpl.rc_context(STYLE):
            super().savefig(fname, *args, **kwargs)

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()
