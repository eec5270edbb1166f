"""Mapping gene names (symbols, versioned or unversioned Ensembl ids, probe names) to Ensembl genes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from experimat._errors import InvalidInputError

from ._tables import GeneIndex, available_taxa, load_index, parse_name

if TYPE_CHECKING:
    import pandas as pd

#: How a name was matched, best first.
MATCH_KINDS = ("gene_id", "previous_id", "symbol", "synonym")


@dataclass(frozen=True)
class Match:
    """Result of resolving one name."""

    query: str
    kind: str  # "id" or "symbol": what the name looked like
    key: str  # the unversioned id or the symbol (probe suffix removed)
    status: str  # "unique", "ambiguous" or "unknown"
    gene_id: str | None
    match: str | None  # one of MATCH_KINDS, None when unknown
    candidates: tuple[str, ...]


def _prefer(idx: GeneIndex, ids: tuple[str, ...], exact: tuple[str, ...] | None) -> tuple[str, ...]:
    """Narrow candidates: exact-case hits first, then genes of the primary assembly."""
    if exact and len(ids) > 1:
        ids = exact
    if len(ids) > 1:
        prim = tuple(i for i in ids if i in idx.primary)
        if prim:
            ids = prim
    return ids


def resolve_one(idx: GeneIndex, name: object) -> Match:
    query = str(name)
    kind, key = parse_name(name)
    if kind == "id":
        if key in idx.genes.index:
            return Match(query, kind, key, "unique", key, "gene_id", (key,))
        prev = idx.previous_id.get(key)
        if prev:
            if len(prev) == 1:
                return Match(query, kind, key, "unique", prev[0], "previous_id", prev)
            return Match(query, kind, key, "ambiguous", None, "previous_id", prev)
        return Match(query, kind, key, "unknown", None, None, ())
    low = key.lower()
    for match, exact_map, lower_map in (
        ("symbol", idx.symbol_exact, idx.symbol_lower),
        ("synonym", idx.synonym_exact, idx.synonym_lower),
    ):
        ids = lower_map.get(low)
        if ids:
            ids = _prefer(idx, ids, exact_map.get(key))
            if len(ids) == 1:
                return Match(query, kind, key, "unique", ids[0], match, ids)
            return Match(query, kind, key, "ambiguous", None, match, ids)
    return Match(query, kind, key, "unknown", None, None, ())


def _as_names(names: str | Iterable[object]) -> list[object]:
    if isinstance(names, str):
        return [names]
    try:
        return list(names)
    except TypeError:
        raise InvalidInputError(
            f"names must be a string or a sequence of strings, not {type(names).__name__}."
        ) from None


def lookup(names: str | Sequence[str], taxa: str) -> pd.DataFrame:
    """Map gene names to Ensembl genes of ``taxa``.

    Symbols match case-insensitively (an exact-case hit wins), first against the Ensembl 109 symbols,
    then against older symbols (``synonyms.tsv.gz``: 10x-reference and GENCODE names). Ensembl ids match
    with or without version; retired ids resolve through the table of previous ids. 10x probe names
    (``Itgb2l|2ef1e7b``) are matched by their gene part. When a symbol names several genes, genes of
    the primary assembly are preferred over those on patches / alternative haplotypes.

    Parameters
    ----------
    names
        One name or a sequence of names (symbols, ``ENSG...``/``ENSMUSG...`` ids with or without
        version, probe names).
    taxa
        Taxa code (see :func:`available_taxa`, e.g. ``"hsa"``, ``"mmu"``) or an alias such as ``"human"``.

    Returns
    -------
    DataFrame with one row per query, in order: ``query``; ``gene_id`` (unversioned Ensembl id,
    missing unless ``status == "unique"``); ``symbol`` (Ensembl 109 symbol of that gene; missing when
    Ensembl has none); ``status`` (``"unique"``, ``"ambiguous"`` or ``"unknown"``); ``match`` (how it
    matched: ``"gene_id"``, ``"previous_id"``, ``"symbol"``, ``"synonym"``, or missing);
    ``candidates`` (tuple of all matching gene ids; several when ambiguous).

    Raises
    ------
    KeyNotFoundError
        ``taxa`` is not in the database; the message lists the available taxa.

    Examples
    --------
    >>> import experimat as em
    >>> em.database.lookup(["CSTB", "ENSG00000160213.7", "cstb", "NOT_A_GENE"], taxa="hsa")  # doctest: +SKIP
                   query          gene_id symbol   status   match           candidates
    0               CSTB  ENSG00000160213   CSTB   unique  symbol  (ENSG00000160213,)
    ...
    """
    import pandas as pd

    idx = load_index(taxa)
    rows = []
    for name in _as_names(names):
        m = resolve_one(idx, name)
        symbol = idx.genes.at[m.gene_id, "symbol"] if m.gene_id is not None else None
        rows.append(
            {
                "query": m.query,
                "gene_id": m.gene_id,
                "symbol": None if symbol is None or pd.isna(symbol) else symbol,
                "status": m.status,
                "match": m.match,
                "candidates": m.candidates,
            }
        )
    return pd.DataFrame(rows, columns=["query", "gene_id", "symbol", "status", "match", "candidates"])


def match_fraction(idx: GeneIndex, parsed: Sequence[tuple[str, str]]) -> float:
    """Fraction of names that belong to ``idx``'s taxa, used to detect a mouse/human mix-up.

    Ids count by exact membership; symbols count only on an exact-case match (human symbols are upper
    case, mouse symbols capitalised, so case-insensitive matching would not tell the species apart).
    """
    if not parsed:
        return 0.0
    genes = idx.genes.index
    hit = 0
    for kind, key in parsed:
        if kind == "id":
            hit += key in genes or key in idx.previous_id
        else:
            hit += key in idx.symbol_exact or key in idx.synonym_exact
    return hit / len(parsed)


def taxa_fractions(names: Iterable[object], taxa: Iterable[str] | None = None) -> dict[str, float]:
    """``{taxa: fraction of names found in that taxa's table}`` for every available (or given) taxa."""
    parsed = [parse_name(n) for n in names]
    return {t: match_fraction(load_index(t), parsed) for t in (taxa if taxa is not None else available_taxa())}


def infer_taxa(names: str | Sequence[str]) -> str | None:
    """The taxa whose gene table matches most of ``names`` (exact-case symbols, ids), or None below 20 %.

    Examples
    --------
    >>> import experimat as em
    >>> em.database.infer_taxa(["Gnai3", "Cdc45", "Xkr4"])
    'mmu'
    """
    fr = taxa_fractions(_as_names(names))
    if not fr:
        return None
    best = max(fr, key=lambda t: fr[t])
    return best if fr[best] >= 0.2 else None
