"""Spatially variable genes: SpatialDE GP test, SpatialDE2-style score tests, Moran's I and
SpatialDE's automatic expression histology (AEH).

All functions are pure functions on one AnnData (see ``experimat.methods``):

- :func:`spatial_svg` — dispatch on ``method`` (``"spatialde2"``, ``"spatialde"``, ``"moran"``);
- :func:`spatial_svg_score` — SpatialDE2-style score tests (``method="spatialde2"``; former name
  ``spatial_svg_spatialde``, a deprecated alias);
- :func:`spatial_svg_gp` — the original SpatialDE Gaussian-process test (``method="spatialde"``);
- :func:`spatial_svg_moran` — Moran's I (``method="moran"``);
- :func:`spatial_patterns` — automatic expression histology on the SVGs of a previous run.
"""

from __future__ import annotations

from typing import Any

from ._aeh import spatial_patterns
from ._gp import spatial_svg_gp
from ._kernels import clear_cache
from ._moran import spatial_svg_moran
from ._score import spatial_svg_score, spatial_svg_spatialde
from ._stats import bh_adjust, storey_qvalue

METHODS = {"spatialde2": spatial_svg_score, "spatialde": spatial_svg_gp, "moran": spatial_svg_moran}


def spatial_svg(adata, *, method: str = "spatialde2", seed: int | None = None, **kwargs: Any):
    """Spatially variable genes with the chosen method.

    Parameters
    ----------
    adata
        AnnData with spots in ``obs`` and coordinates in ``obsm``.
    method
        ``"spatialde2"`` (score tests, :func:`spatial_svg_score`, default), ``"spatialde"``
        (the original Gaussian-process test, :func:`spatial_svg_gp`) or ``"moran"``
        (:func:`spatial_svg_moran`).
    seed
        Seed of the method's random numbers (the score test's and the GP test's permutation
        nulls, Moran's permutations; ``None``: ``em.settings.seed``). Named here so that the
        accessors derive the same per-sample seed as for the method's own function.
    **kwargs
        Options of the chosen method (see its documentation); ``key_added`` defaults to
        ``"spatialde"``, ``"spatialde_gp"`` and ``"moran"`` respectively.

    Returns
    -------
    The chosen method's result DataFrame (genes × statistics).

    Examples
    --------
    >>> import experimat as em
    >>> from experimat.methods.svg import spatial_svg
    >>> adata = em.datasets.synthetic_svg(500, 200)
    >>> res = spatial_svg(adata, method="spatialde2", layer="counts", progress=False)
    """
    from experimat.methods._checks import check_choice

    check_choice("method", method, tuple(METHODS))
    return METHODS[method](adata, seed=seed, **kwargs)


__all__ = [
    "bh_adjust",
    "clear_cache",
    "spatial_patterns",
    "spatial_svg",
    "spatial_svg_gp",
    "spatial_svg_moran",
    "spatial_svg_score",
    "spatial_svg_spatialde",
    "storey_qvalue",
]
