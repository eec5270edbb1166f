"""Plots (matplotlib, imported on first use): spots over the tissue and the figures of each method.

Every function takes one AnnData or ``{sample: AnnData}``, never modifies it, and returns a
:class:`matplotlib.figure.Figure` (not registered with pyplot) whose ``savefig`` embeds TrueType
fonts in PDF/PS (``pdf.fonttype`` 42) whatever the user's rcParams.

>>> import experimat as em
>>> fig = em.pl.plot_spatial({"p1-t4": adata}, channels=["hires/r", "hires/g", "hires/b"],  # doctest: +SKIP
...                          plot_embeddings={"color": "CSTB", "ptsize": 15})
"""

from ._deconv import (
    plot_colocation_loadings,
    plot_gamma_space,
    plot_gene_filter,
    plot_proportion_thresholds,
    plot_reference_qc,
    plot_volcano,
)
from ._image import get_image
from ._locat import locat_top_genes, plot_locat
from ._methods import (
    BLEND_COLORS,
    blend_colors,
    plot_abundance,
    plot_abundance_blend,
    plot_domains,
    plot_embedding,
    plot_patterns,
)
from ._qc import plot_reconstruction, plot_totals_per_batch, plot_training_history
from ._spatial import plot_spatial
from ._svg import plot_fsv_q, plot_pvalue_qq

__all__ = [
    "BLEND_COLORS",
    "blend_colors",
    "get_image",
    "locat_top_genes",
    "plot_abundance",
    "plot_abundance_blend",
    "plot_colocation_loadings",
    "plot_domains",
    "plot_embedding",
    "plot_fsv_q",
    "plot_gamma_space",
    "plot_gene_filter",
    "plot_locat",
    "plot_patterns",
    "plot_proportion_thresholds",
    "plot_pvalue_qq",
    "plot_reconstruction",
    "plot_reference_qc",
    "plot_spatial",
    "plot_totals_per_batch",
    "plot_training_history",
    "plot_volcano",
]
