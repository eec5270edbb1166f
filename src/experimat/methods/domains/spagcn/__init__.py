"""SpaGCN spatial domains (Hu et al., Nature Methods 18:1342, 2021), reimplemented in torch.

- :func:`spatial_detect_domains_spagcn`: domains of one sample, with or without histology, refined.
- :func:`integrate_domains_spagcn`: one model over several samples, comparable domains.
- :func:`spatial_markers_spagcn` / :func:`get_markers`: domain markers against neighbouring domains.
- :func:`spatial_metagene`: the add/subtract metagene that sharpens a domain.
"""

from ._detect import integrate_domains_spagcn, spatial_detect_domains_spagcn
from ._markers import get_markers, spatial_markers_spagcn, spatial_metagene

__all__ = [
    "get_markers",
    "integrate_domains_spagcn",
    "spatial_detect_domains_spagcn",
    "spatial_markers_spagcn",
    "spatial_metagene",
]
