"""Methods bound to both spatial modalities (spots and cells)."""

from .. import pl
from ..core.registry import register_method, register_method_alias
from ..methods import domains, svg
from ..methods import preprocess as pp
from ..methods.domains import spagcn

SPATIAL = ("spatial-bin", "spatial-cell")
_SVG_IO = {"reads": ("layers/{layer}", "obsm/{spatial_key}"), "writes": ("var/{key_added}.*", "varm/{key_added}.*", "uns/{key_added}")}

register_method(pp.spatial_smooth, modalities=SPATIAL, reads=("layers/{layer}", "obsm/{spatial_key}"), writes=("layers/{key_added}", "uns/{key_added}"))

# spatially variable genes and expression histology
register_method(svg.spatial_svg, modalities=SPATIAL,
                variants={"spatialde2": "spatial_svg_score", "spatialde": "spatial_svg_gp", "moran": "spatial_svg_moran"})
register_method(svg.spatial_svg_score, modalities=SPATIAL, **_SVG_IO)
register_method_alias("spatial_svg_spatialde", "spatial_svg_score")
register_method(svg.spatial_svg_gp, modalities=SPATIAL, **_SVG_IO)
register_method(svg.spatial_svg_moran, modalities=SPATIAL, **_SVG_IO)
register_method(svg.spatial_patterns, modalities=SPATIAL, reads=("layers/{layer}", "obsm/{spatial_key}"), writes=("obsm/{key_added}", "var/{key_added}.*", "uns/{key_added}"))

# spatial domains: SpaGCN (DeepST is bound in spatial_bin)
register_method(domains.detect_domains, modalities=SPATIAL,
                variants={"spagcn": "spatial_detect_domains_spagcn", "deepst": "spatial_detect_domains_deepst"})
register_method(spagcn.spatial_detect_domains_spagcn, modalities=SPATIAL, reads=("layers/{layer}", "obsm/{spatial_key}"), writes=("obs/{key_added}", "obs/{refined_key_added}", "uns/{key_added}"))
register_method(spagcn.integrate_domains_spagcn, modalities=SPATIAL, kind="joint", reads=("layers/{layer}",), writes=("obs/{key_added}", "obs/{key_added}.refined", "obs/{refined_key_added}", "uns/{key_added}"))
register_method(spagcn.spatial_markers_spagcn, modalities=SPATIAL, reads=("obs/{domain_key}",), writes=("uns/{key_added}",))
register_method(spagcn.get_markers, modalities=SPATIAL, kind="query", reads=("uns/{markers_key}",))
register_method(spagcn.spatial_metagene, modalities=SPATIAL, reads=("obs/{domain_key}", "uns/{markers_key}"),
                writes=("obs/{key_added}", "uns/{key_added}"), derived={"key_added": "metagene.{target_domain}"})

# figures (read-only)
register_method(pl.get_image, modalities=SPATIAL, kind="view")
register_method(pl.plot_spatial, modalities=SPATIAL, kind="view")
register_method(pl.plot_patterns, modalities=SPATIAL, kind="view")
register_method(pl.plot_fsv_q, modalities=SPATIAL, kind="view")
register_method(pl.plot_domains, modalities=SPATIAL, kind="view")
register_method(pl.plot_abundance, modalities=SPATIAL, kind="view")
register_method(pl.plot_abundance_blend, modalities=SPATIAL, kind="view")
register_method(pl.plot_locat, modalities=(*SPATIAL, "rna"), kind="view")
