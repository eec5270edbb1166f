"""Spatial domain methods."""

from __future__ import annotations

from typing import Any


def detect_domains(adata, *, method: str = "spagcn", **kwargs: Any):
    """Spatial domains with the chosen method.

    Parameters
    ----------
    adata
        Spots x genes with coordinates in ``obsm['spatial']``.
    method
        ``"spagcn"`` (:func:`~experimat.methods.domains.spagcn.spatial_detect_domains_spagcn`,
        default) or ``"deepst"`` (:func:`~experimat.methods.domains.deepst.spatial_detect_domains_deepst`).
    **kwargs
        Options of the chosen method (see its documentation). Both methods give seed-stable
        domains by default (``stable=True``: a consensus of ``n_runs`` seeded runs);
        ``stable=False`` runs one seed, as the reference packages.

    Returns
    -------
    The chosen method's result.

    Examples
    --------
    >>> expm.spatial_bin.detect_domains(method="spagcn", n_clusters=7, run_on_samples=True)  # doctest: +SKIP
    """
    from .._checks import check_choice

    method = check_choice("method", method, ("spagcn", "deepst"))
    if method == "spagcn":
        from .spagcn import spatial_detect_domains_spagcn

        return spatial_detect_domains_spagcn(adata, **kwargs)
    from .deepst import spatial_detect_domains_deepst

    return spatial_detect_domains_deepst(adata, **kwargs)
