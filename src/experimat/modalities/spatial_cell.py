"""Methods of the ``spatial_cell`` accessor."""

from . import _common  # noqa: F401  (qc, normalisation, PCA, ... on every modality)
