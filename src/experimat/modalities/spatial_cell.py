"""Methods of the ``expm.spatial_cell`` accessor (single-cell resolution spatial data)."""

from . import _common, _spatial  # noqa: F401  (shared bindings)
