"""Gene annotation database and gene-name harmonisation (``em.database``).

Per taxa (``hsa`` human, ``mmu`` mouse) a table of Ensembl 109 genes with symbol, biotype, position,
Entrez id and description, read from ``em.settings.database_dir`` (the top-level ``database/`` folder of
the repository, shipped in the wheel as ``experimat/_database``; see its README for sources and licenses).

- :func:`available_taxa` lists the taxa codes, :func:`resolve_taxa` checks one (for the sample sheet's
  ``taxa`` column); :func:`genes` returns a taxa's table (cached), :func:`synonyms` its other names.
- :func:`lookup` maps symbols, versioned / unversioned Ensembl ids and probe names to genes, reporting
  ambiguous and unknown names.
- :func:`harmonize_var` renames a sample's genes to unversioned Ensembl ids and annotates them.
- :func:`gene_overlap_report` counts the genes samples share before they are merged.

Examples
--------
>>> import experimat as em
>>> em.database.lookup(["CSTB", "ENSG00000160213.7"], taxa="hsa")["gene_id"].tolist()
['ENSG00000160213', 'ENSG00000160213']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._harmonize import gene_overlap_report, harmonize_var
from ._lookup import infer_taxa, lookup
from ._tables import available_taxa, clear_cache, load_index, parse_name, resolve_taxa

if TYPE_CHECKING:
    import pandas as pd


def genes(taxa: str) -> pd.DataFrame:
    """The gene table of ``taxa``: one row per Ensembl 109 gene, indexed by the unversioned gene id.

    Columns: ``gene_id``, ``symbol`` (Ensembl 109; missing for unnamed genes), ``biotype``, ``chr``,
    ``start``, ``end`` (1-based, inclusive), ``strand`` (1 / -1), ``assembly`` (of ``chr/start/end``:
    ``GRCh38`` or ``GRCm39``), ``entrez`` (NCBI gene ids, ``;``-separated when several), ``description``;
    human: ``band`` (cytoband); mouse: ``mm10_chr``, ``mm10_start``, ``mm10_end``, ``mm10_band``
    (GRCm38/mm10 positions of the 10x mm10-2020-A reference, missing for genes not in it).

    The table is read once per session (and again only if the file changes); a copy is returned.

    Parameters
    ----------
    taxa
        Taxa code (see :func:`available_taxa`) or an alias such as ``"human"`` / ``"mouse"``.

    Raises
    ------
    KeyNotFoundError
        ``taxa`` is not in the database; the message lists the available taxa.

    Examples
    --------
    >>> import experimat as em
    >>> em.database.genes("mmu").loc["ENSMUSG00000000001", "symbol"]
    'Gnai3'
    """
    return load_index(taxa).genes.copy()


def synonyms(taxa: str) -> pd.DataFrame:
    """Other names of the genes of ``taxa``: columns ``synonym``, ``gene_id``, ``type``, ``source``.

    ``type`` is ``"symbol"`` (an older symbol of that gene in a 10x reference or GENCODE release) or
    ``"previous_id"`` (an Ensembl id absent from release 109 whose symbol names exactly one current gene).

    Examples
    --------
    >>> import experimat as em
    >>> em.database.synonyms("hsa").columns.tolist()
    ['synonym', 'gene_id', 'type', 'source']
    """
    return load_index(taxa).synonyms.copy()


__all__ = [
    "available_taxa",
    "clear_cache",
    "gene_overlap_report",
    "genes",
    "harmonize_var",
    "infer_taxa",
    "lookup",
    "parse_name",
    "resolve_taxa",
    "synonyms",
]
