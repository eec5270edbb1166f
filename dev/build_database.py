"""Build the gene database shipped in the top-level ``database/`` folder.

Reads the annotation tables of ``$EXPERIMAT_DATA_DIR/gene_annotation/`` (Ensembl 109 tables exported by
the *annotables* R package, and the 10x-reference position tables shipped with XClone) and, when present,
``$EXPERIMAT_DATA_DIR/st_mouse_brain_and_olfactory_bulb_stutility/mouse_genes.tsv.gz`` (a GENCODE mouse
id/symbol table shipped with STUtility), and writes per species::

    database/<taxa>/genes.tsv.gz     one row per Ensembl 109 gene
    database/<taxa>/synonyms.tsv.gz  other names of those genes (older symbols, retired ids)

Run from the repository root::

    EXPERIMAT_DATA_DIR=/path/to/data python dev/build_database.py

The output is deterministic (sorted rows, gzip without time stamps), so rebuilding gives identical files.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
from pathlib import Path

import pandas as pd

PRIMARY_HSA = [str(i) for i in range(1, 23)] + ["X", "Y", "MT"]
PRIMARY_MMU = [str(i) for i in range(1, 20)] + ["X", "Y", "MT"]

SPECIES = {
    "hsa": {
        "ensembl": "human_GRCh38_ensembl109_genes.tsv.gz",
        "assembly": "GRCh38",
        "tenx": "xclone_hg38_genes.tsv.gz",
        "tenx_name": "10x GRCh38-2020-A (XClone 0.4.0 annotate_genes_hg38_update.txt)",
        "primary": PRIMARY_HSA,
    },
    "mmu": {
        "ensembl": "mouse_GRCm39_ensembl109_genes.tsv.gz",
        "assembly": "GRCm39",
        "tenx": "xclone_mm10_genes.tsv.gz",
        "tenx_name": "10x mm10-2020-A (XClone 0.4.0 annotate_genes_mm10.txt)",
        "primary": PRIMARY_MMU,
        "gencode": (
            "st_mouse_brain_and_olfactory_bulb_stutility/mouse_genes.tsv.gz",
            "GENCODE mouse (STUtility mouse_genes.tsv.gz)",
        ),
    },
}


def _write_tsv_gz(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    df.to_csv(buf, sep="\t", index=False, lineterminator="\n")
    with open(path, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, compresslevel=9, mtime=0) as gz:
        gz.write(buf.getvalue().encode("utf-8"))


def _ensembl_table(path: Path, assembly: str) -> pd.DataFrame:
    """One row per Ensembl gene; the (gene, Entrez) duplicate rows collapse into 'a;b' Entrez ids."""
    raw = pd.read_csv(path, sep="\t", dtype={"chr": str, "entrez": "Int64", "symbol": str, "description": str})
    other = [c for c in raw.columns if c not in ("ensgene", "entrez")]
    # duplicated rows differ only in Entrez (checked here, so a new release cannot silently break it)
    per_gene = raw.drop_duplicates(["ensgene", *other])
    if per_gene["ensgene"].duplicated().any():
        bad = per_gene.loc[per_gene["ensgene"].duplicated(), "ensgene"].iloc[:5].tolist()
        raise SystemExit(f"{path.name}: rows of the same gene differ in more than the Entrez id, e.g. {bad}")
    entrez = (
        raw.dropna(subset=["entrez"])
        .sort_values(["ensgene", "entrez"])
        .groupby("ensgene")["entrez"]
        .agg(lambda s: ";".join(str(int(v)) for v in pd.unique(s)))
    )
    g = per_gene.set_index("ensgene")
    out = pd.DataFrame(
        {
            "gene_id": g.index,
            "symbol": g["symbol"].to_numpy(),
            "biotype": g["biotype"].to_numpy(),
            "chr": g["chr"].to_numpy(),
            "start": g["start"].astype("int64").to_numpy(),
            "end": g["end"].astype("int64").to_numpy(),
            "strand": g["strand"].astype("int64").to_numpy(),
            "assembly": assembly,
            "entrez": entrez.reindex(g.index).to_numpy(),
            "description": g["description"].str.replace(r"\s*\[Source:.*\]$", "", regex=True).to_numpy(),
        }
    )
    return out.sort_values("gene_id", kind="stable").reset_index(drop=True)


def _tenx_table(path: Path) -> pd.DataFrame:
    x = pd.read_csv(path, sep="\t", dtype={"chr": str, "GeneName": str, "GeneID": str})
    if x["GeneID"].duplicated().any():
        raise SystemExit(f"{path.name}: duplicated gene ids")
    return x.rename(columns={"GeneName": "symbol", "GeneID": "gene_id", "stop": "end"})


def _synonyms_from(
    genes: pd.DataFrame, other: pd.DataFrame, source: str, primary: list[str], *, use_chr: bool
) -> pd.DataFrame:
    """Names in ``other`` (columns gene_id, symbol[, chr]) that Ensembl 109 does not use for that gene.

    - ``symbol``: ``other`` names a gene that Ensembl 109 has under the same id with another (or no) symbol.
    - ``previous_id``: ``other``'s id is absent from Ensembl 109, and exactly one Ensembl 109 gene of the
      primary assembly has the same symbol (case-sensitive; on the same chromosome when ``other`` has one),
      and ``other`` does not list that gene under its current id as well.
    """
    g = genes.set_index("gene_id")
    in_ens = other["gene_id"].isin(g.index)
    same = other[in_ens]
    ens_sym = g.loc[same["gene_id"], "symbol"].to_numpy()
    differs = same["symbol"].notna().to_numpy() & (same["symbol"].to_numpy() != ens_sym)
    sym = same.loc[differs, ["symbol", "gene_id"]].rename(columns={"symbol": "synonym"})
    sym["type"] = "symbol"

    gone = other[~in_ens & other["symbol"].notna()]
    # candidate targets: named primary-assembly genes whose id the source does not list itself (else the
    # retired id was a second gene of that name, not an earlier id of this one)
    prim = genes[genes["chr"].isin(primary) & genes["symbol"].notna() & ~genes["gene_id"].isin(other["gene_id"])]
    key = ["symbol", "chr"] if use_chr else ["symbol"]
    counts = prim.groupby(key).size()
    unique_keys = counts[counts == 1].index
    prim_u = prim.set_index(key).loc[lambda d: d.index.isin(unique_keys)]
    gone_key = gone.set_index(key)
    hit = gone_key.index.isin(prim_u.index)
    prev = pd.DataFrame(
        {
            "synonym": gone.loc[hit, "gene_id"].to_numpy(),
            "gene_id": prim_u.loc[gone_key.index[hit], "gene_id"].to_numpy(),
        }
    )
    prev["type"] = "previous_id"
    out = pd.concat([sym, prev], ignore_index=True)
    out["source"] = source
    return out


def build(data_dir: Path, out_dir: Path) -> dict[str, dict[str, int]]:
    ann = data_dir / "gene_annotation"
    counts: dict[str, dict[str, int]] = {}
    for taxa, spec in SPECIES.items():
        genes = _ensembl_table(ann / spec["ensembl"], spec["assembly"])
        tenx = _tenx_table(ann / spec["tenx"])
        t = tenx.set_index("gene_id")
        if taxa == "hsa":
            # hg38 == GRCh38: positions come from Ensembl 109; the cytoband comes from the 10x/XClone table
            genes["band"] = t["band"].reindex(genes["gene_id"]).to_numpy()
        else:
            # 10x mouse references (mm10-2020-A and older) use GRCm38/mm10 coordinates, Ensembl 109 uses GRCm39
            idx = genes["gene_id"]
            genes["mm10_chr"] = t["chr"].reindex(idx).to_numpy()
            genes["mm10_start"] = t["start"].reindex(idx).astype("Int64").to_numpy()
            genes["mm10_end"] = t["end"].reindex(idx).astype("Int64").to_numpy()
            genes["mm10_band"] = t["band"].reindex(idx).to_numpy()
            # the XClone table has no chrM; the mitochondrial sequence (NC_005089.1) is the same in GRCm38 and GRCm39
            mt = (genes["chr"] == "MT") & genes["mm10_chr"].isna()
            genes.loc[mt, "mm10_chr"] = "MT"
            genes.loc[mt, "mm10_start"] = genes.loc[mt, "start"]
            genes.loc[mt, "mm10_end"] = genes.loc[mt, "end"]
        syn = [_synonyms_from(genes, tenx, spec["tenx_name"], spec["primary"], use_chr=True)]
        if "gencode" in spec:
            rel, name = spec["gencode"]
            path = data_dir / rel
            if path.is_file():
                gc = pd.read_csv(path, sep="\t", dtype=str)
                gc = pd.DataFrame(
                    {"gene_id": gc["gene_id"].str.replace(r"\.\d+$", "", regex=True), "symbol": gc["gene_name"]}
                ).drop_duplicates()
                gc = gc[~gc["gene_id"].duplicated(keep=False)]
                syn.append(_synonyms_from(genes, gc, name, spec["primary"], use_chr=False))
            else:
                print(f"note: {path} not found; its synonyms are left out")
        synonyms = pd.concat(syn, ignore_index=True)
        # one row per (synonym, gene_id, type); the first source (10x) wins
        synonyms = synonyms.drop_duplicates(["synonym", "gene_id", "type"]).sort_values(
            ["type", "synonym", "gene_id"], kind="stable"
        )
        _write_tsv_gz(genes, out_dir / taxa / "genes.tsv.gz")
        _write_tsv_gz(synonyms.reset_index(drop=True), out_dir / taxa / "synonyms.tsv.gz")
        counts[taxa] = {
            "genes": len(genes),
            "primary": int(genes["chr"].isin(spec["primary"]).sum()),
            "with_symbol": int(genes["symbol"].notna().sum()),
            "tenx_genes": len(tenx),
            "tenx_in_ensembl": int(tenx["gene_id"].isin(genes["gene_id"]).sum()),
            **{f"{t} [{src}]": int(n) for (t, src), n in synonyms.groupby(["type", "source"]).size().items()},
        }
        print(taxa, counts[taxa])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("EXPERIMAT_DATA_DIR"), help="default: $EXPERIMAT_DATA_DIR")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "database"))
    args = parser.parse_args()
    if not args.data_dir:
        raise SystemExit("set EXPERIMAT_DATA_DIR (or --data-dir) to the folder holding gene_annotation/")
    build(Path(args.data_dir).expanduser(), Path(args.out))


if __name__ == "__main__":
    main()
