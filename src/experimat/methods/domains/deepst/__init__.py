"""Spatial domains with DeepST (Xu et al., Nucleic Acids Research 50:e131, 2022), in torch.

Spot weights from spatial adjacency, expression correlation and (optionally) tile morphology;
expression augmentation; a denoising autoencoder + variational graph autoencoder with DEC
refinement; Leiden with a resolution search for the requested number of domains. Image features
come from a built-in, download-free extractor or from a local CNN state dict.
"""

from ._api import integrate_domains_deepst, spatial_detect_domains_deepst, spot_image_features
from ._image import builtin_feature_names, tile_cnn
from ._saved import DeepSTModel

__all__ = [
    "DeepSTModel",
    "builtin_feature_names",
    "integrate_domains_deepst",
    "spatial_detect_domains_deepst",
    "spot_image_features",
    "tile_cnn",
]
