"""Methods of the ``expm.spatial_bin`` accessor (Visium-like spots)."""

from . import _common, _spatial  # noqa: F401  (shared bindings)
