"""Input handling shared by the SVG methods: matrices in gene chunks, coordinates, devices."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from experimat._errors import InvalidInputError
from experimat._logging import logger
from experimat.methods._checks import get_coordinates

if TYPE_CHECKING:
    from anndata import AnnData

MIN_SPOTS = 10


def coordinates(adata: AnnData, spatial_key: str) -> np.ndarray:
    """Spot coordinates (NaN rejected) with at least :data:`MIN_SPOTS` spots."""
    xy = get_coordinates(adata, spatial_key)
    if xy.shape[0] < MIN_SPOTS:
        raise InvalidInputError(
            f"spatially variable gene tests need at least {MIN_SPOTS} spots; got {xy.shape[0]}. "
            "Use a sample with more spots (or do not subset this one so far)."
        )
    return xy


def as_csc_or_dense(X):
    """Column-sliceable view of the data: CSC for sparse input (no densifying), else ndarray."""
    if sparse.issparse(X):
        return sparse.csc_matrix(X)
    if hasattr(X, "toarray") and not isinstance(X, np.ndarray):  # backed / dask-like
        X = X.toarray()
    return np.asarray(X)


def gene_chunks(n_genes: int, chunk_size: int) -> Iterator[slice]:
    for start in range(0, n_genes, chunk_size):
        yield slice(start, min(start + chunk_size, n_genes))


def dense_chunk(X, sl: slice | np.ndarray) -> np.ndarray:
    """Genes ``sl`` of ``X`` as a dense float64 (spots × genes) block."""
    block = X[:, sl]
    if sparse.issparse(block):
        block = block.toarray()
    return np.asarray(block, dtype=np.float64)


def column_sums(X) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene sum and sum of squares without densifying."""
    if sparse.issparse(X):
        s = np.asarray(X.sum(0)).ravel().astype(np.float64)
        sq = np.asarray(X.multiply(X).sum(0)).ravel().astype(np.float64)
    else:
        Xf = np.asarray(X, dtype=np.float64)
        s, sq = Xf.sum(0), (Xf**2).sum(0)
    return s, sq


def row_sums(X) -> np.ndarray:
    return np.asarray(X.sum(1)).ravel().astype(np.float64)


def with_gene_symbols(res, adata, *, gene_symbols: str = "gene"):
    """Put the gene symbols (``var[gene_symbols]``, e.g. after gene-id harmonisation) in a first column ``gene`` of a
    result table indexed by ``var_names`` (the ids stay as the index)."""
    if gene_symbols in adata.var.columns and "gene" not in res.columns:
        res.insert(0, "gene", adata.var[gene_symbols].astype("string").to_numpy())
    return res


def pick_device(use_gpu: bool) -> str:
    from experimat._optional import import_optional, jax_device

    import_optional("jax", purpose="spatially variable gene tests")
    dev = jax_device(use_gpu)
    if use_gpu and dev == "cpu":
        logger.debug("no GPU visible to JAX; running on CPU")
    return dev


def chunk_size_for(n_obs: int, *, budget_elems: int = 4_000_000, minimum: int = 16) -> int:
    return max(minimum, budget_elems // max(n_obs, 1))


def finish_ranking(res, *, score: np.ndarray, sig: np.ndarray, n_svg: int | None) -> None:
    """``rank`` (1 = most significant: smallest p, ties broken by the larger ``score``; untested
    genes last) and ``svg`` (significant and among the top ``n_svg``)."""
    p = res["pval"].to_numpy()
    p_key = np.where(np.isfinite(p), p, np.inf)
    s_key = np.where(np.isfinite(score), -score, np.inf)
    order = np.lexsort((s_key, p_key))
    rank = np.empty(len(p), dtype=np.int64)
    rank[order] = np.arange(1, len(p) + 1)
    res["rank"] = rank
    svg = np.asarray(sig, dtype=bool) & np.isfinite(p)
    if n_svg is not None:
        svg &= rank <= n_svg
    res["svg"] = svg


def write_var(adata, res, key_added: str) -> None:
    """Write a result table as ``var['{key_added}.<column>']``, first dropping what an earlier run wrote under the same
    key (its ``var`` columns and ``varm`` entries), so that a rerun with other options leaves no stale column behind
    (e.g. ``scale`` after a rerun without ``scales``). Keys nested under this one (``{key_added}.x.<column>``) stay."""
    prefix = f"{key_added}."

    def ours(name: str) -> bool:
        return name.startswith(prefix) and "." not in name[len(prefix) :]

    stale = [c for c in adata.var.columns if isinstance(c, str) and ours(c)]
    if stale:
        adata.var.drop(columns=stale, inplace=True)
    for name in [m for m in adata.varm.keys() if ours(m)]:
        del adata.varm[name]
    for col in res.columns:
        adata.var[f"{key_added}.{col}"] = res[col].to_numpy()


def block_membership(xy: np.ndarray, size: float, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Square blocks of ``size × spacing`` coordinate units: each spot's block (0..B-1, only occupied blocks) and
    the blocks' (column, row) grid cells."""
    cell = np.floor((xy - xy.min(0)) / (size * spacing)).astype(np.int64)
    cells, code = np.unique(cell, axis=0, return_inverse=True)
    return code.ravel(), cells
