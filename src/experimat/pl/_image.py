"""Tissue images stored the scanpy/squidpy way: ``adata.uns['spatial'][library_id]``.

``['images'][key]`` is an ``H x W x C`` array (float in [0, 1] or integers), ``['scalefactors']`` holds
``tissue_<key>_scalef`` (image pixels per full-resolution pixel) and ``spot_diameter_fullres``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from experimat.methods._image import resolve_image

from ._utils import as_adata_dict

if TYPE_CHECKING:
    from anndata import AnnData

def _image_of(adata: AnnData, channels: Any, library_id: str | None, sample: str | None) -> np.ndarray:
    return resolve_image(adata, channels, library_id=library_id, sample=sample).pixels()


def get_image(
    adata: AnnData | Mapping[str, AnnData],
    *,
    channels: str | Sequence[str] = ("hires/r", "hires/g", "hires/b"),
    library_id: str | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """The tissue image of a sample (or of each sample) as a float array in [0, 1].

    Parameters
    ----------
    adata
        One AnnData, or ``{sample: AnnData}`` (then a dict of arrays is returned).
    channels
        ``"<image key>/<channel>"`` or a list of them, all from one image: channel ``r``, ``g``, ``b``,
        ``a`` or an integer index. One channel gives ``H x W``; three give ``H x W x 3``. A missing
        ``hires`` image falls back to ``lowres`` (logged).
    library_id
        Key of ``uns['spatial']``; None uses the sample name when stored, else the only library.

    Returns
    -------
    numpy.ndarray or dict
        The image (a copy; the AnnData is not modified), or ``{sample: image}`` for a dict input.

    Examples
    --------
    >>> import experimat as em
    >>> adata = em.datasets.synthetic_domains(200, 3, 50, n_markers_per_domain=5, with_image=True)
    >>> em.pl.get_image(adata, channels=["hires/r", "hires/g", "hires/b"]).shape[2]
    3
    """
    from anndata import AnnData

    if isinstance(adata, AnnData):
        return np.array(_image_of(adata, channels, library_id, None))
    adatas = as_adata_dict(adata, what="adata")
    return {name: np.array(_image_of(ad, channels, library_id, name)) for name, ad in adatas.items()}
