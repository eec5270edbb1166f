"""cell2location (Kleshchevnikov et al., Nature Biotechnology 2022) in plain torch.

Step 1, :func:`reference_signatures`: cell-type signatures from scRNA-seq references.
Step 2, :func:`deconvolve_cell2location`: cell abundances per spot (posterior mean, sd, q05, q95).
Downstream: :func:`region_cluster`, :func:`colocation_nmf`, :func:`expected_expression_per_type`
and the arrays behind the QC plots (:func:`gene_filter_histogram`, :func:`reconstruction_qc`,
:func:`totals_qc`, :func:`training_history`).
"""

from ._downstream import (
    colocation_nmf,
    expected_expression_per_type,
    reconstruction_qc,
    region_cluster,
    totals_qc,
    training_history,
)
from ._model import deconvolve_cell2location, mitochondrial_mask
from ._reference import ReferenceSignatures, filter_genes, gene_filter_histogram, reference_signatures

__all__ = [
    "ReferenceSignatures",
    "colocation_nmf",
    "deconvolve_cell2location",
    "expected_expression_per_type",
    "filter_genes",
    "gene_filter_histogram",
    "mitochondrial_mask",
    "reconstruction_qc",
    "reference_signatures",
    "region_cluster",
    "totals_qc",
    "training_history",
]
