"""SpaGCN's inputs: each section's expression, spot coordinates, graph width, and the graph
convolution ``A X`` of the joint PCA of all sections (with the per-section correction)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from experimat._errors import ExperimatWarning, MissingSlotError
from experimat.methods._checks import get_coordinates, is_integer_matrix

from .._correct import harmonize
from . import _graph

if TYPE_CHECKING:
    from anndata import AnnData


def _expression(adata: AnnData, layer: str | None):
    if layer is None or layer == "X":
        if adata.X is None:
            raise MissingSlotError(f"adata.X is empty; pass layer= one of {list(adata.layers.keys())}.")
        X = adata.X
    elif layer not in adata.layers:
        raise MissingSlotError(
            f"layer {layer!r} not found; available layers: {list(adata.layers.keys())}. SpaGCN works on "
            "log-normalised expression; make it with `adata.layers['lognorm'] = sc.pp.log1p("
            "sc.pp.normalize_total(adata, target_sum=1e4, inplace=False)['X'])` "
            "(or sc.pp.normalize_total + sc.pp.log1p on a copy of the counts), or pass layer=None for adata.X."
        )
    else:
        X = adata.layers[layer]
    if is_integer_matrix(X, max_check=200_000):
        data = X.data if hasattr(X, "data") and not isinstance(X, np.ndarray) else np.asarray(X)
        if data.size and float(np.max(data)) > 30:
            import warnings

            warnings.warn(
                f"layer {layer!r} looks like raw counts; SpaGCN expects log-normalised expression "
                "(sc.pp.normalize_total + sc.pp.log1p).",
                ExperimatWarning,
                stacklevel=3,
            )
    return X


def _graph_coords(adata, xy, histology, channels, library_id, alpha):
    colour = None
    if histology:
        colour = _graph.histology_feature(adata, xy, channels=channels, library_id=library_id)
    return _graph.graph_coordinates(xy, colour, alpha)


@dataclass
class _Section:
    """One section's inputs: expression (spots x genes), plane coordinates, graph coordinates, width l."""

    X: Any
    xy: np.ndarray
    coords: np.ndarray
    width: float


def _prepare(adata, *, layer, spatial_key, histology, channels, library_id, alpha, p, device, genes=None) -> _Section:
    X = _expression(adata, layer)
    if genes is not None:
        X = X[:, adata.var_names.get_indexer(genes)]
    xy = get_coordinates(adata, spatial_key, min_obs=3)[:, :2]
    coords = _graph_coords(adata, xy, histology, channels, library_id, alpha)
    return _Section(X=X, xy=xy, coords=coords, width=_graph.search_l(coords, p, device=device))


def _convolved_features(sections: list[_Section], *, n_pcs, seed, device, batch_correction):
    """``A X`` of every section, stacked: one PCA over all sections' spots, each section's own graph.

    ``batch_correction="center"`` centres every gene within each section before the joint PCA (the
    location part of ComBat, Johnson et al., Biostatistics 8:118, 2007: additive section effects of
    log-expression); ``"harmony"`` then also removes the section effects that remain in the PCA
    embedding, cluster by cluster (:func:`.._correct.harmonize`), so that the same domain lands at
    the same place in the joint embedding. The expression is never densified.
    """
    import torch
    from scipy import sparse

    from experimat.methods._expression import block_pca

    offsets = np.cumsum([0] + [sec.xy.shape[0] for sec in sections])
    many = len(sections) > 1
    if all(sparse.issparse(sec.X) for sec in sections):
        X = sparse.vstack([sparse.csr_matrix(sec.X) for sec in sections], format="csr")
    else:
        X = np.vstack([sec.X.toarray() if sparse.issparse(sec.X) else np.asarray(sec.X) for sec in sections])
    blocks = offsets if many and batch_correction != "none" else None
    # a fixed seed for the randomised SVD: the PCA is a property of the data, not of the run's seed
    embed = block_pca(X, n_pcs, blocks=blocks, seed=0)
    if many and batch_correction == "harmony":
        embed = harmonize(embed, np.repeat(np.arange(len(sections)), np.diff(offsets)), seed=seed)
    parts = [
        _graph.propagate(sec.coords, sec.width, embed[offsets[i] : offsets[i + 1]], device)
        for i, sec in enumerate(sections)
    ]
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), offsets
