"""Methods of the ``expm.rna`` accessor (single-cell / single-nucleus RNA)."""

from . import (
    _common,  # noqa: F401  (shared bindings)
    _deconv,  # noqa: F401  (reference fitting for deconvolution)
)
