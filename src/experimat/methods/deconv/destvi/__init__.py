"""DestVI (Lopez et al., Nature Biotechnology 2022) in torch: a conditional VAE reference of single cells
(:func:`fit_condscvi`) and the spatial model that deconvolves spots into cell-type proportions and
continuous per-type states (:func:`deconvolve_destvi`), with the DestVI utilities."""

from ._condscvi import CondSCVIModel, fit_condscvi, select_genes_vst
from ._destvi import deconvolve_destvi, get_scale_for_ct, shared_genes
from ._utils import automatic_proportion_threshold, de_genes_destvi, explore_gamma_space

__all__ = [
    "CondSCVIModel",
    "automatic_proportion_threshold",
    "de_genes_destvi",
    "deconvolve_destvi",
    "explore_gamma_space",
    "fit_condscvi",
    "get_scale_for_ct",
    "select_genes_vst",
    "shared_genes",
]
