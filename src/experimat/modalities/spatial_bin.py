"""Methods of the ``spatial_bin`` accessor."""

from . import _common  # noqa: F401  (qc, normalisation, PCA, ... on every modality)
