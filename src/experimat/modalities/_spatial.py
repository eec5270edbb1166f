"""Methods bound to both spatial modalities (spots and cells)."""

from .. import pl
from ..core.registry import register_method
from ..methods import preprocess as pp

SPATIAL = ("spatial-bin", "spatial-cell")

register_method(pp.spatial_smooth, modalities=SPATIAL, reads=("layers/{layer}", "obsm/{spatial_key}"), writes=("layers/{key_added}", "uns/{key_added}"))

# figures (read-only)
register_method(pl.get_image, modalities=SPATIAL, kind="view")
register_method(pl.plot_spatial, modalities=SPATIAL, kind="view")
register_method(pl.plot_patterns, modalities=SPATIAL, kind="view")
register_method(pl.plot_domains, modalities=SPATIAL, kind="view")
register_method(pl.plot_abundance, modalities=SPATIAL, kind="view")
register_method(pl.plot_abundance_blend, modalities=SPATIAL, kind="view")
register_method(pl.plot_locat, modalities=(*SPATIAL, "rna"), kind="view")
