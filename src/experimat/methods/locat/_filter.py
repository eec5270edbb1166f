"""Gene filter recommended before LOCAT: pseudogene-like symbols and rarely detected genes."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from experimat._errors import InvalidInputError
from experimat._logging import logger
from experimat.methods._checks import get_matrix

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

#: Regular expressions for pseudogene-like or uninformative symbols (mouse and human styles):
#: predicted genes (``Gm12345``), RIKEN clones (``1700001C19Rik``), lincRNAs (``Linc...``,
#: ``LINC01234``), clone-based names (``AC123456.1``, ``AA123456``, ``A430...``), microRNA hosts
#: (``Mir...``) and ribosomal-protein duplicates / pseudogenes (``Rpl13-ps3``, ``Rps27-2``, ``RPL21P28``).
DEFAULT_PSEUDO_PATTERNS: tuple[str, ...] = (
    r"^Gm\d+",
    r"Rik\d*$",
    r"^[Ll]inc",
    r"^LINC\d+",
    r"^A[CLP]\d{5,}(\.\d+)?$",
    r"^AA\d+",
    r"^A[0-9]{6,}",
    r"^Mir\d+",
    r"^MIR\d+",
    r"^R[Pp][LlSs]\d+[A-Za-z]?-(ps)?\d+$",
    r"^RP[LS]\d+[A-Z]?P\d+$",
)


def filter_genes_locat(
    adata: AnnData,
    *,
    min_fraction: float = 0.01,
    layer: str | None = None,
    gene_symbols: str | None = "gene",
    patterns: Sequence[str] | None = None,
) -> AnnData:
    """Filtered copy of ``adata`` for :func:`~experimat.methods.locat.locat`.

    Removes genes whose symbol looks like a pseudogene or an uninformative clone name
    (:data:`DEFAULT_PSEUDO_PATTERNS`: ``Gm*``, ``*Rik``, ``Linc*``, ``AC123456.1``, ``Mir*``,
    ribosomal-protein duplicates such as ``Rpl13-ps3``, ...) and genes detected (value > 0) in
    fewer than ``min_fraction`` of the cells, as the reference LOCAT workflow does. The numbers
    removed by each rule are logged and stored in ``uns['filter_genes_locat']``.

    Parameters
    ----------
    adata
        Cells x genes data.
    min_fraction
        Keep genes detected in at least this fraction of cells (default 1 %).
    layer
        Layer used to decide detection (``None``: ``adata.X``).
    gene_symbols
        ``var`` column holding gene symbols (default ``"gene"``); when absent, ``var_names`` are
        used as symbols.
    patterns
        Regular expressions matched (``re.search``) against symbols; default
        :data:`DEFAULT_PSEUDO_PATTERNS`. Pass ``()`` to keep all symbols.

    Returns
    -------
    AnnData
        A filtered copy; ``adata`` itself is not modified.

    Examples
    --------
    >>> import experimat as em
    >>> small = em.pp.filter_genes_locat(adata)  # doctest: +SKIP
    """
    if not (0.0 <= float(min_fraction) < 1.0):
        raise InvalidInputError(f"min_fraction must be in [0, 1); got {min_fraction!r}.")
    X = get_matrix(adata, layer)
    if gene_symbols is not None and gene_symbols in adata.var.columns:
        symbols = adata.var[gene_symbols].astype(str).to_numpy()
    else:
        symbols = np.asarray(adata.var_names.astype(str))
    pats = DEFAULT_PSEUDO_PATTERNS if patterns is None else tuple(patterns)
    if pats:
        rx = re.compile("|".join(f"(?:{p})" for p in pats))
        is_pseudo = np.fromiter((rx.search(s) is not None for s in symbols), bool, len(symbols))
    else:
        is_pseudo = np.zeros(len(symbols), bool)
    if hasattr(X, "tocsc"):
        detected = np.asarray((X > 0).sum(axis=0)).ravel()
    else:
        detected = (np.asarray(X) > 0).sum(axis=0)
    n = max(adata.n_obs, 1)
    rare = detected < float(min_fraction) * n
    keep = ~is_pseudo & ~rare
    out = adata[:, keep].copy()
    summary = {
        "n_genes_in": int(adata.n_vars),
        "n_pseudo_removed": int(is_pseudo.sum()),
        "n_rare_removed": int((rare & ~is_pseudo).sum()),
        "n_genes_out": int(keep.sum()),
        "min_fraction": float(min_fraction),
    }
    out.uns["filter_genes_locat"] = summary
    logger.info(
        f"filter_genes_locat: kept {summary['n_genes_out']} of {summary['n_genes_in']} genes "
        f"({summary['n_pseudo_removed']} pseudogene-like symbols, {summary['n_rare_removed']} genes in "
        f"< {100 * float(min_fraction):g} % of cells removed)"
    )
    return out
