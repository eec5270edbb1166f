"""Deconvolution methods."""

from __future__ import annotations

from typing import Any


def deconvolve(adata, *, method: str = "cell2location", reference: Any = None, **kwargs: Any):
    """Cell-type abundances per spot from an scRNA-seq reference, with the chosen method.

    Parameters
    ----------
    adata
        Spots x genes with raw counts.
    method
        ``"cell2location"`` (:func:`~experimat.methods.deconv.cell2location.deconvolve_cell2location`,
        reference from :func:`~experimat.methods.deconv.cell2location.reference_signatures`) or
        ``"destvi"`` (:func:`~experimat.methods.deconv.destvi.deconvolve_destvi`, reference from
        :func:`~experimat.methods.deconv.destvi.fit_condscvi`).
    reference
        The fitted reference of that method. Through an experiment accessor it may also be the
        name of a model stored in the project, or the ``rna`` accessor itself (the reference is
        then fitted once over all its samples and stored).
    **kwargs
        Options of the chosen method.

    Examples
    --------
    >>> sig = expm.rna.reference_signatures(run_on_samples=True, labels_key="cell_type")  # doctest: +SKIP
    >>> expm.spatial_bin.deconvolve(method="cell2location", reference=sig, run_on_samples=True)  # doctest: +SKIP
    """
    from .._checks import check_choice

    method = check_choice("method", method, ("cell2location", "destvi"))
    if reference is None:
        from ..._errors import InvalidInputError

        raise InvalidInputError("deconvolve needs reference= (fitted signatures / CondSCVI model, or a stored model name).")
    if method == "cell2location":
        from .cell2location import deconvolve_cell2location

        return deconvolve_cell2location(adata, reference=reference, **kwargs)
    from .destvi import deconvolve_destvi

    return deconvolve_destvi(adata, reference=reference, **kwargs)
