"""Methods of the ``expm.spatial_bin`` accessor (Visium-like spots)."""

from ..core.registry import register_method
from ..methods.domains import deepst
from . import _common, _spatial  # noqa: F401  (shared bindings)
from ._common import models_in_project

BIN = ("spatial-bin",)

# spatial domains: DeepST
register_method(deepst.spatial_detect_domains_deepst, modalities=BIN, setup=models_in_project, reads=("obsm/{spatial_key}",), writes=("obs/{key_added}.domain", "obs/{key_added}.refined", "obsm/{key_added}.embedding", "uns/{key_added}"))
register_method(deepst.integrate_domains_deepst, modalities=BIN, kind="joint", setup=models_in_project, reads=("obsm/{spatial_key}",), writes=("obs/{key_added}.domain", "obs/{key_added}.refined", "obsm/{key_added}.embedding", "uns/{key_added}"))
register_method(deepst.spot_image_features, modalities=BIN, kind="query")  # per sample: {sample: features}

from . import _deconv  # noqa: E402, F401  (deconvolution: references on rna, mapping on spots)
