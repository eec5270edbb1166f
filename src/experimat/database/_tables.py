"""Loading the gene tables of ``em.settings.database_dir`` (cached) and the name indexes built on them."""

from __future__ import annotations

import re
import threading
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from experimat._errors import KeyNotFoundError
from experimat._settings import settings

if TYPE_CHECKING:
    import pandas as pd

GENES_FILE = "genes.tsv.gz"
SYNONYMS_FILE = "synonyms.tsv.gz"

#: Primary-assembly chromosomes per taxa (genes elsewhere sit on patches / alternative haplotypes).
PRIMARY_CHROMOSOMES: dict[str, frozenset[str]] = {
    "hsa": frozenset([str(i) for i in range(1, 23)] + ["X", "Y", "MT"]),
    "mmu": frozenset([str(i) for i in range(1, 20)] + ["X", "Y", "MT"]),
}

#: Other names accepted for the taxa codes (case-insensitive).
TAXA_ALIASES: dict[str, str] = {
    "human": "hsa",
    "homo sapiens": "hsa",
    "homo_sapiens": "hsa",
    "h. sapiens": "hsa",
    "9606": "hsa",
    "mouse": "mmu",
    "mus musculus": "mmu",
    "mus_musculus": "mmu",
    "m. musculus": "mmu",
    "10090": "mmu",
}

#: Other assemblies whose positions a table carries, as ``{taxa: {assembly: column prefix}}``.
EXTRA_ASSEMBLIES: dict[str, dict[str, str]] = {"mmu": {"mm10": "mm10_"}}
ASSEMBLY_ALIASES = {
    "grcm38": "mm10",
    "mm10": "mm10",
    "grcm39": "GRCm39",
    "mm39": "GRCm39",
    "grch38": "GRCh38",
    "hg38": "GRCh38",
}

_ID_RE = re.compile(r"^(?:DEPRECATED_)?(ENS[A-Z]*G\d{11})(?:\.\d+)?(?:_PAR_Y)?$", re.IGNORECASE)


def parse_name(name: object) -> tuple[str, str]:
    """Classify a gene name as ``("id", unversioned id)`` or ``("symbol", symbol)``.

    Handles versioned ids (``ENSMUSG00000064339.1``), 10x probe names (``Itgb2l|2ef1e7b``, and
    ``ENSMUSG...|Itgb2l|2ef1e7b`` probe ids), the ``DEPRECATED_`` prefix of 10x probe sets and
    GENCODE ``_PAR_Y`` suffixes.
    """
    s = str(name).strip()
    head = s.split("|", 1)[0].strip() if "|" in s else s
    m = _ID_RE.match(head)
    if m:
        return "id", m.group(1).upper()
    return "symbol", head


def _species_of_id(gene_id: str) -> str | None:
    if gene_id.startswith("ENSMUSG"):
        return "mmu"
    if gene_id.startswith("ENSG"):
        return "hsa"
    return None


def available_taxa() -> list[str]:
    """Taxa codes with a gene table in ``em.settings.database_dir`` (e.g. ``['hsa', 'mmu']``).

    Examples
    --------
    >>> import experimat as em
    >>> em.database.available_taxa()
    ['hsa', 'mmu']
    """
    root = Path(settings.database_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / GENES_FILE).is_file())


def resolve_taxa(taxa: object) -> str:
    """The taxa code for ``taxa`` (a code, or an alias such as ``"human"`` / ``"Mus musculus"`` / ``9606``).

    Raises
    ------
    KeyNotFoundError
        ``taxa`` has no table in ``em.settings.database_dir``; the message lists the available taxa.

    Examples
    --------
    >>> import experimat as em
    >>> em.database.resolve_taxa("Mus musculus")
    'mmu'
    """
    valid = available_taxa()
    key = str(taxa).strip()
    if key in valid:
        return key
    alias = TAXA_ALIASES.get(key.lower(), key.lower())
    if alias in valid:
        return alias
    hint = ""
    if not valid:
        hint = (
            f"No gene table was found in em.settings.database_dir={str(settings.database_dir)!r}; point it to the "
            "database folder (or rebuild it with dev/build_database.py)."
        )
    raise KeyNotFoundError("taxa", taxa, valid, hint=hint)


class GeneIndex:
    """A taxa's gene table plus lookup dictionaries, each built on first use (internal)."""

    def __init__(self, taxa: str, genes: pd.DataFrame, synonyms: pd.DataFrame) -> None:
        self.taxa = taxa
        self.genes = genes  # indexed by gene_id
        self.synonyms = synonyms

    @cached_property
    def primary(self) -> frozenset[str]:
        """Ids of genes on the primary assembly."""
        chroms = PRIMARY_CHROMOSOMES.get(self.taxa)
        return frozenset(self.genes.index[self.genes["chr"].isin(chroms)] if chroms else self.genes.index)

    @cached_property
    def _named(self) -> pd.DataFrame:
        return self.genes[self.genes["symbol"].notna()]

    @cached_property
    def symbol_exact(self) -> dict[str, tuple[str, ...]]:
        return _group(self._named["symbol"], self._named["gene_id"])

    @cached_property
    def symbol_lower(self) -> dict[str, tuple[str, ...]]:
        return _group(self._named["symbol"].str.lower(), self._named["gene_id"])

    @cached_property
    def _synonym_symbols(self) -> pd.DataFrame:
        return self.synonyms[self.synonyms["type"] == "symbol"]

    @cached_property
    def synonym_exact(self) -> dict[str, tuple[str, ...]]:
        return _group(self._synonym_symbols["synonym"], self._synonym_symbols["gene_id"])

    @cached_property
    def synonym_lower(self) -> dict[str, tuple[str, ...]]:
        return _group(self._synonym_symbols["synonym"].str.lower(), self._synonym_symbols["gene_id"])

    @cached_property
    def other_symbol(self) -> dict[str, str]:
        """``{gene_id: a symbol from another source}`` for genes Ensembl 109 leaves unnamed (10x names first)."""
        syn = self._synonym_symbols
        unnamed = syn[syn["gene_id"].isin(self.genes.index[self.genes["symbol"].isna()])]
        unnamed = unnamed.sort_values("source", key=lambda s: ~s.str.startswith("10x"), kind="stable")
        return dict(zip(unnamed["gene_id"].iloc[::-1], unnamed["synonym"].iloc[::-1]))

    @cached_property
    def previous_id(self) -> dict[str, tuple[str, ...]]:
        prev = self.synonyms[self.synonyms["type"] == "previous_id"]
        return _group(prev["synonym"].str.upper(), prev["gene_id"])

    @property
    def primary_assembly(self) -> str:
        return str(self.genes["assembly"].iloc[0]) if len(self.genes) else ""

    @property
    def assemblies(self) -> list[str]:
        return [self.primary_assembly, *EXTRA_ASSEMBLIES.get(self.taxa, {})]


def _group(keys: pd.Series, ids: pd.Series) -> dict[str, tuple[str, ...]]:
    """``{key: (ids...)}`` keeping first-seen order (vectorised for the common one-id case)."""
    import pandas as pd

    df = pd.DataFrame({"k": keys.to_numpy(), "i": ids.to_numpy()}).drop_duplicates()
    dup = df["k"].duplicated(keep=False).to_numpy()
    out: dict[str, tuple[str, ...]] = dict(
        zip(df["k"].to_numpy()[~dup].tolist(), ((i,) for i in df["i"].to_numpy()[~dup]))
    )
    multi: dict[str, list[str]] = {}
    for k, i in zip(df["k"].to_numpy()[dup].tolist(), df["i"].to_numpy()[dup].tolist()):
        multi.setdefault(k, []).append(i)
    out.update((k, tuple(v)) for k, v in multi.items())
    return out


def _read_tables(taxa_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    import pandas as pd

    dtypes = {
        "gene_id": str,
        "symbol": str,
        "biotype": str,
        "chr": str,
        "start": "int64",
        "end": "int64",
        "strand": "int8",
        "assembly": str,
        "entrez": str,
        "description": str,
        "band": str,
        "mm10_chr": str,
        "mm10_start": "Int64",
        "mm10_end": "Int64",
        "mm10_band": str,
    }
    genes = pd.read_csv(
        taxa_dir / GENES_FILE, sep="\t", dtype=dtypes, na_filter=True, keep_default_na=False, na_values=[""]
    )
    genes = genes.set_index("gene_id", drop=False)
    genes.index.name = None
    syn_path = taxa_dir / SYNONYMS_FILE
    if syn_path.is_file():
        synonyms = pd.read_csv(syn_path, sep="\t", dtype=str, keep_default_na=False, na_values=[""])
    else:
        synonyms = pd.DataFrame(columns=["synonym", "gene_id", "type", "source"], dtype=str)
    return genes, synonyms


_CACHE: dict[tuple[str, str, int], GeneIndex] = {}
_LOCK = threading.Lock()


def load_index(taxa: object) -> GeneIndex:
    """The cached :class:`GeneIndex` of ``taxa`` (reloaded when the folder or the file changes)."""
    code = resolve_taxa(taxa)
    taxa_dir = Path(settings.database_dir) / code
    path = taxa_dir / GENES_FILE
    key = (str(path.resolve()), code, path.stat().st_mtime_ns)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is None:
            genes, synonyms = _read_tables(taxa_dir)
            hit = GeneIndex(code, genes, synonyms)
            for old in [k for k in _CACHE if k[0] == key[0]]:
                del _CACHE[old]
            _CACHE[key] = hit
    return hit


def clear_cache() -> None:
    """Forget the loaded tables (the next call reads them again)."""
    with _LOCK:
        _CACHE.clear()
