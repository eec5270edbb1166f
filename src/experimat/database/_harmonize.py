"""Harmonising ``var`` of a sample to unversioned Ensembl ids, and gene-overlap reports across samples."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experimat._errors import ExperimatWarning, InvalidInputError
from experimat._logging import logger
from experimat.methods._checks import check_choice, store_params

from ._lookup import MATCH_KINDS, match_fraction, resolve_one
from ._tables import ASSEMBLY_ALIASES, EXTRA_ASSEMBLIES, GeneIndex, available_taxa, load_index, parse_name

if TYPE_CHECKING:
    from anndata import AnnData

#: var columns that may hold Ensembl ids (10x: ``gene_ids``), searched in this order.
ID_COLUMNS = ("gene_ids", "gene_id", "ensembl_id", "ensembl", "feature_id", "id")
#: var columns that may hold symbols, searched in this order when var_names are ids.
SYMBOL_COLUMNS = ("gene", "gene_symbols", "gene_symbol", "gene_name", "symbol", "feature_name", "name")
#: Columns written by :func:`harmonize_var`.
POSITION_COLUMNS = ("chr", "start", "end", "strand", "biotype", "assembly")

MIXUP_DECLARED_BELOW = 0.2
MIXUP_OTHER_ABOVE = 0.5
_EXAMPLES = 20


def _column_of_ids(var: pd.DataFrame) -> str | None:
    for col in ID_COLUMNS:
        if col in var.columns:
            values = var[col].dropna().astype(str)
            if len(values) and np.mean([parse_name(v)[0] == "id" for v in values]) >= 0.5:
                return col
    return None


def _column_of_symbols(var: pd.DataFrame) -> str | None:
    for col in SYMBOL_COLUMNS:
        if col in var.columns and (var[col].dtype == object or str(var[col].dtype) in ("category", "string")):
            return col
    return None


def _pick_assembly(idx: GeneIndex, assembly: str, var: pd.DataFrame) -> str:
    valid = ["auto", *idx.assemblies]
    a = ASSEMBLY_ALIASES.get(str(assembly).lower(), assembly) if assembly != "auto" else "auto"
    check_choice("assembly", a, valid)
    if a != "auto":
        return a
    if "genome" in var.columns:
        genomes = " ".join(str(g) for g in var["genome"].dropna().unique()[:5])
        for pattern, name in ((r"mm10|grcm38", "mm10"), (r"grcm39|mm39", "GRCm39")):
            if re.search(pattern, genomes, re.IGNORECASE) and name in idx.assemblies:
                return name
    return idx.primary_assembly


def _make_unique(values: list[str], taken: set[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """anndata-style unique names: later duplicates get ``-1``, ``-2``, ... (skipping names in use)."""
    used = set(values) | (taken or set())
    seen: set[str] = set()
    out, renamed = [], {}
    for v in values:
        if v in seen:
            k = 1
            while f"{v}-{k}" in used:
                k += 1
            new = f"{v}-{k}"
            used.add(new)
            renamed[new] = v
            out.append(new)
        else:
            seen.add(v)
            out.append(v)
    return out, renamed


def _check_mixup(idx: GeneIndex, names: Sequence[object]) -> dict[str, float]:
    parsed = [parse_name(n) for n in names]
    fractions = {idx.taxa: match_fraction(idx, parsed)}
    if fractions[idx.taxa] < MIXUP_DECLARED_BELOW:
        for other in available_taxa():
            if other != idx.taxa:
                fractions[other] = match_fraction(load_index(other), parsed)
        others = {t: f for t, f in fractions.items() if t != idx.taxa and f > MIXUP_OTHER_ABOVE}
        if others:
            best = max(others, key=lambda t: others[t])
            warnings.warn(
                f"only {fractions[idx.taxa]:.0%} of the {len(parsed)} genes match the declared taxa {idx.taxa!r}, "
                f"but {others[best]:.0%} match {best!r}: check the sample's taxa (sample sheet column 'taxa').",
                ExperimatWarning,
                stacklevel=3,
            )
    return fractions


def harmonize_var(
    adata: AnnData,
    taxa: str,
    *,
    keep_original_names: bool = False,
    assembly: str = "auto",
    inplace: bool = True,
    key_added: str = "gene_annotation",
) -> dict[str, Any]:
    """Harmonise gene names of ``adata.var`` to unversioned Ensembl ids and annotate the genes.

    Reads the gene of each variable from an id column (``var['gene_ids']`` as written by
    ``scanpy.read_10x_h5``, or ``gene_id`` / ``ensembl_id``) when there is one, else from
    ``var_names``: Ensembl ids with or without version (``ENSMUSG00000064339.1``), symbols (matched
    case-insensitively, also against older 10x / GENCODE symbols), or 10x probe names
    (``Itgb2l|2ef1e7b``). An id that is given decides the gene; symbols are used only when no id is.

    Afterwards

    - ``var_names`` are unversioned Ensembl ids (unless ``keep_original_names``); genes not in the
      database keep their original name (ids without their version), as do symbols that name several
      genes. Several variables of the
      same gene (probes of one gene, an old and a new symbol) get ``-1``, ``-2`` suffixes after the first;
    - ``var['gene']``: the Ensembl 109 symbol (else the original symbol, else the gene's name in the 10x
      reference, such as ``AL627309.1``, else the id), made unique with
      ``-1``, ``-2`` suffixes only where needed (reported);
    - ``var['gene_id']`` (unversioned id, also for ids unknown to the database; missing for unknown
      symbols), ``var['chr','start','end','strand','biotype','assembly']``, ``var['annotated']``
      (False for genes absent from the database), ``var['gene_match']`` (``gene_id``, ``previous_id``,
      ``symbol``, ``synonym``, ``ambiguous`` or ``unknown``) and ``var['original_name']`` (the
      var_names before the first harmonisation);
    - ``uns[key_added]``: the parameters and the summary counts.

    A warning (:class:`~experimat.ExperimatWarning`) is given when fewer than 20 % of the genes match
    ``taxa`` but more than 50 % match another taxa (a mouse / human mix-up in the sample sheet).

    Parameters
    ----------
    adata
        The sample; only ``var`` / ``var_names`` are changed (``X`` is untouched).
    taxa
        Taxa code of the sample (``"hsa"``, ``"mmu"``; see :func:`available_taxa`) or an alias such as
        ``"human"``.
    keep_original_names
        Keep ``var_names`` as they are and only add the columns.
    assembly
        Which coordinates fill ``chr/start/end``: ``"auto"`` (``"mm10"`` for mouse data whose
        ``var['genome']`` says mm10/GRCm38, as 10x mm10-2020-A references do, else the Ensembl 109 assembly:
        ``"GRCh38"`` / ``"GRCm39"``), or one of the table's assemblies (mouse: ``"GRCm39"``, ``"mm10"``).
    inplace
        Change ``adata``; when False, ``adata`` is left as it is and the new var table is returned in the
        report under ``"var"``.
    key_added
        ``uns`` key of the summary.

    Returns
    -------
    dict
        ``taxa``, ``assembly``, ``n_vars``, ``n_annotated``, ``n_unannotated``, ``matched_by``
        (``{match: count}``), ``unknown`` (names not in the database), ``ambiguous`` (``{name: candidate
        ids}``), ``duplicate_genes`` (``{gene_id: [original names]}`` for genes named by several variables),
        ``renamed_symbols`` (``{unique symbol: symbol}``), ``renamed_var_names`` (``{new: base}``),
        ``taxa_fraction`` (``{taxa: fraction of genes found}``), and ``var`` when ``inplace=False``.

    Raises
    ------
    KeyNotFoundError
        ``taxa`` is not in the database (the message lists the available taxa).
    InvalidInputError
        ``assembly`` is not one of the table's assemblies.

    Examples
    --------
    >>> import scanpy as sc, experimat as em
    >>> adata = sc.read_10x_h5("filtered_feature_bc_matrix.h5")  # doctest: +SKIP
    >>> report = em.database.harmonize_var(adata, "mmu")  # doctest: +SKIP
    >>> adata.var[["gene", "chr", "start", "assembly"]].head()  # doctest: +SKIP
    """
    start = logger.debug("harmonising gene names")
    if not isinstance(keep_original_names, bool):
        raise InvalidInputError(f"keep_original_names must be True or False, not {keep_original_names!r}.")
    idx = load_index(taxa)
    var = adata.var.copy()
    chosen = _pick_assembly(idx, assembly, var)
    original = [str(v) for v in adata.var_names]
    id_col, id_source, sym_source = _name_sources(var, original)
    fractions = _check_mixup(idx, id_source if id_source is not None else original)
    found = _resolve_genes(idx, original, id_source, sym_source)
    gene_id, match = found["gene_id"], found["match"]
    n = len(original)
    annotated = np.array([match[i] in MATCH_KINDS for i in range(n)], dtype=bool)
    ann_ids = [gene_id[i] if annotated[i] else None for i in range(n)]
    table = idx.genes.reindex(pd.Index([g if g is not None else "" for g in ann_ids]))
    symbols_u, renamed_symbols = _make_unique(_symbols(idx, table, annotated, gene_id, found["input_symbol"], original))
    new_names, renamed_names, duplicate_genes = _new_var_names(original, gene_id, ann_ids, keep_original_names)
    _annotate(var, table, EXTRA_ASSEMBLIES.get(idx.taxa, {}).get(chosen, ""), chosen, annotated,
              gene=symbols_u, gene_id=gene_id, match=match, original=original)
    var.index = pd.Index(new_names)

    matched_by = {k: int(sum(1 for m in match if m == k)) for k in (*MATCH_KINDS, "ambiguous", "unknown")}
    report: dict[str, Any] = {
        "taxa": idx.taxa,
        "assembly": chosen,
        "n_vars": n,
        "n_annotated": int(annotated.sum()),
        "n_unannotated": int(n - annotated.sum()),
        "matched_by": matched_by,
        "id_column": id_col,
        "unknown": found["unknown"],
        "ambiguous": found["ambiguous"],
        "duplicate_genes": duplicate_genes,
        "renamed_symbols": renamed_symbols,
        "renamed_var_names": renamed_names,
        "taxa_fraction": fractions,
    }
    summary = {k: report[k] for k in ("taxa", "assembly", "n_vars", "n_annotated", "n_unannotated")}
    summary["matched_by"] = matched_by
    msg = (
        f"genes ({idx.taxa}, {chosen}): {report['n_annotated']}/{n} annotated "
        f"({', '.join(f'{k} {v}' for k, v in matched_by.items() if v)})"
    )
    if renamed_symbols:
        msg += f"; {len(renamed_symbols)} duplicated symbols made unique (e.g. {list(renamed_symbols)[:3]})"
    if inplace:
        adata.var = var
        store_params(
            adata,
            key_added,
            {"taxa": idx.taxa, "keep_original_names": keep_original_names, "assembly": assembly},
            **summary,
        )
        logger.info(msg, time=start)
    else:
        logger.info(msg, time=start)
        report["var"] = var
    return report


def _name_sources(var, original: list[str]) -> tuple[str | None, list[str] | None, list[str] | None]:
    """Where the genes are read from: ``(id column, ids, symbols)``. An id column of ``var`` or ids as
    ``var_names`` give the ids; symbols come from ``var_names`` (when they are not ids) or from a
    symbol column next to id ``var_names``."""
    id_col = _column_of_ids(var)
    names_are_ids = np.mean([parse_name(v)[0] == "id" for v in original]) >= 0.5 if original else False
    sym_col = _column_of_symbols(var) if names_are_ids else None
    id_source = var[id_col].astype(str).tolist() if id_col else (original if names_are_ids else None)
    if id_col:
        sym_source = original if not names_are_ids else (var[sym_col].astype(str).tolist() if sym_col else None)
    elif names_are_ids:
        sym_source = var[sym_col].astype(str).tolist() if sym_col else None
    else:
        sym_source = original
    return id_col, id_source, sym_source


def _resolve_genes(idx, original: list[str], id_source: list[str] | None, sym_source: list[str] | None) -> dict[str, Any]:
    """The database gene of each variable: an id that is given decides; a symbol only when no id is.

    Returns lists ``gene_id``, ``match``, ``input_symbol`` (one per variable), ``unknown`` (names not
    found) and ``ambiguous`` (``{name: candidate ids}``)."""
    n = len(original)
    gene_id: list[str | None] = [None] * n
    match: list[str] = ["unknown"] * n
    input_symbol: list[str | None] = [None] * n
    unknown: list[str] = []
    ambiguous: dict[str, list[str]] = {}
    for i in range(n):
        m = None
        if sym_source is not None:
            kind, key = parse_name(sym_source[i])
            if kind == "symbol" and key and key.lower() not in ("nan", "none"):
                input_symbol[i] = key
        if id_source is not None and parse_name(id_source[i])[0] == "id":
            m = resolve_one(idx, id_source[i])
        elif input_symbol[i] is not None:
            m = resolve_one(idx, input_symbol[i])
        if m is None:
            unknown.append(original[i])
            continue
        if m.status == "unique":
            gene_id[i], match[i] = m.gene_id, m.match
        elif m.status == "ambiguous":
            match[i] = "ambiguous"
            ambiguous[original[i]] = list(m.candidates)
        else:
            unknown.append(original[i])
            if m.kind == "id":
                gene_id[i] = m.key  # keep the (unversioned) id: still the right key for merging samples
    return {"gene_id": gene_id, "match": match, "input_symbol": input_symbol, "unknown": unknown, "ambiguous": ambiguous}


def _symbols(idx, table, annotated: np.ndarray, gene_id: list[str | None], input_symbol: list[str | None],
             original: list[str]) -> list[str]:
    """Each variable's symbol: Ensembl 109, else the one given, else an older name (10x reference),
    else the id / original name."""
    db_symbol = table["symbol"].tolist()
    symbols = []
    for i in range(len(original)):
        s = db_symbol[i]
        if s is None or (isinstance(s, float) and np.isnan(s)):
            s = input_symbol[i] or (annotated[i] and idx.other_symbol.get(gene_id[i])) or gene_id[i] or original[i]
        symbols.append(str(s))
    return symbols


def _new_var_names(original: list[str], gene_id: list[str | None], ann_ids: list[str | None],
                   keep_original_names: bool) -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
    """``(var_names, {renamed: base}, {gene id: original names of its variables})``: unversioned ids
    made unique, or the original names kept."""
    n = len(original)
    duplicate_genes: dict[str, list[str]] = {}
    if keep_original_names:
        ids_series = pd.Series([g for g in ann_ids if g is not None])
        for g in ids_series[ids_series.duplicated()].unique():
            duplicate_genes[g] = [original[i] for i in range(n) if ann_ids[i] == g]
        return original, {}, duplicate_genes
    # unknown ids lose only their version (still the key that matches other samples)
    base = [gene_id[i] if gene_id[i] is not None else original[i] for i in range(n)]
    counts = pd.Series(base).value_counts()
    for g in counts.index[counts > 1]:
        if g.upper().startswith("ENS"):
            duplicate_genes[g] = [original[i] for i in range(n) if base[i] == g]
    new_names, renamed_names = _make_unique(base)
    return new_names, renamed_names, duplicate_genes


def _annotate(var, table, prefix: str, chosen: str, annotated: np.ndarray, *, gene: list[str],
              gene_id: list[str | None], match: list[str], original: list[str]) -> None:
    """Write the gene columns into ``var`` (in place)."""
    var["gene"] = gene
    var["gene_id"] = np.array(gene_id, dtype=object)
    var["chr"] = table[f"{prefix}chr"].to_numpy(dtype=object)
    var["start"] = pd.array(table[f"{prefix}start"], dtype="Int64")
    var["end"] = pd.array(table[f"{prefix}end"], dtype="Int64")
    var["strand"] = pd.array(table["strand"], dtype="Int8")
    var["biotype"] = table["biotype"].to_numpy(dtype=object)
    var["assembly"] = np.where(annotated, chosen, None).astype(object)
    var["annotated"] = annotated
    var["gene_match"] = match
    if "original_name" not in var.columns:
        var["original_name"] = original


def _looks_like_id(name: object) -> bool:
    return parse_name(name)[0] == "id"


def gene_overlap_report(var_names_by_sample: Mapping[str, Sequence[str] | AnnData]) -> dict[str, Any]:
    """How many genes samples share, for merging samples with different gene sets.

    Compare harmonised ``var_names`` (unversioned Ensembl ids, see :func:`harmonize_var`); a sample still
    named by symbols while others use ids shares almost nothing, which the report points out.

    Parameters
    ----------
    var_names_by_sample
        ``{sample: var_names}`` (any sequence of names, or an AnnData whose ``var_names`` are used).

    Returns
    -------
    dict
        ``n_samples``; ``n_genes`` (``{sample: number of distinct names}``); ``n_shared`` (in every
        sample) and ``shared`` (those names, in the order of the first sample); ``n_union`` (in any
        sample); ``n_only_in`` (``{sample: names in no other sample}``); ``n_missing`` (``{sample: names
        of the union absent from the sample}``); ``fraction_shared`` (``{sample: n_shared / n_genes}``);
        ``id_fraction`` (``{sample: fraction of names that are Ensembl ids}``); ``message`` (one line).

    Examples
    --------
    >>> import experimat as em
    >>> r = em.database.gene_overlap_report({"a": ["ENSG1", "ENSG2"], "b": ["ENSG2", "ENSG3"]})
    >>> r["n_shared"], r["n_union"]
    (1, 3)
    """
    if not isinstance(var_names_by_sample, Mapping) or not var_names_by_sample:
        raise InvalidInputError("var_names_by_sample must be a non-empty dict {sample: var_names}.")
    sets: dict[str, list[str]] = {}
    for sample, names in var_names_by_sample.items():
        names = getattr(names, "var_names", names)
        if isinstance(names, str):
            raise InvalidInputError(f"sample {sample!r}: give a sequence of gene names, not one string.")
        sets[str(sample)] = list(dict.fromkeys(str(v) for v in names))
    as_sets = {s: set(v) for s, v in sets.items()}
    first = next(iter(sets))
    shared_set = set.intersection(*as_sets.values())
    union = set.union(*as_sets.values())
    shared = [g for g in sets[first] if g in shared_set]
    only_in = {}
    for s, v in as_sets.items():
        others = set().union(*(o for t, o in as_sets.items() if t != s)) if len(as_sets) > 1 else set()
        only_in[s] = len(v - others)
    id_fraction = {s: (float(np.mean([_looks_like_id(g) for g in v])) if v else 0.0) for s, v in sets.items()}
    report: dict[str, Any] = {
        "n_samples": len(sets),
        "n_genes": {s: len(v) for s, v in sets.items()},
        "n_shared": len(shared),
        "n_union": len(union),
        "n_only_in": only_in,
        "n_missing": {s: len(union) - len(v) for s, v in as_sets.items()},
        "fraction_shared": {s: (len(shared) / len(v) if v else 0.0) for s, v in as_sets.items()},
        "id_fraction": id_fraction,
        "shared": shared,
    }
    msg = f"{len(shared)} genes shared by all {len(sets)} samples ({len(union)} in any); " + ", ".join(
        f"{s}: {report['n_genes'][s]}" for s in sets
    )
    by_ids = [s for s, f in id_fraction.items() if f >= 0.5]
    by_names = [s for s, f in id_fraction.items() if f < 0.5]
    if by_ids and by_names:
        warnings.warn(
            f"samples {by_ids} name genes by Ensembl id but {by_names} by symbol, so few genes match; "
            "harmonise var first with em.database.harmonize_var(adata, taxa).",
            ExperimatWarning,
            stacklevel=2,
        )
        msg += f" (mixed naming: ids in {by_ids}, symbols in {by_names})"
    report["message"] = msg
    logger.info(msg)
    return report
