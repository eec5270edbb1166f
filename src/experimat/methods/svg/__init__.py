"""Spatially variable genes: SpatialDE GP test, SpatialDE2-style score tests, Moran's I and
SpatialDE's automatic expression histology."""

from ._gp import spatial_svg_gp

__all__ = ["spatial_svg_gp"]
