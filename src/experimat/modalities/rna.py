"""Methods of the ``rna`` accessor."""

from . import _common  # noqa: F401  (qc, normalisation, PCA, ... on every modality)
