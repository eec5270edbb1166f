"""Tests of the gene database (em.database) on real gene-name headers (tests/data/genedb/PROVENANCE.md)."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import experimat as em
from experimat.database import _tables

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "genedb"


@pytest.fixture(scope="module", autouse=True)
def database_copy(tmp_path_factory):
    """A relocated copy of the shipped database, used by every test of this module."""
    dst = tmp_path_factory.mktemp("genedb") / "database"
    shutil.copytree(REPO / "database", dst)
    old = em.settings.database_dir
    em.settings.database_dir = dst
    em.database.clear_cache()
    yield dst
    em.settings.database_dir = old
    em.database.clear_cache()


def _adata(var: pd.DataFrame) -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicated var_names on purpose
        return ad.AnnData(np.zeros((2, len(var)), dtype=np.float32), var=var)


def _features(name: str) -> ad.AnnData:
    var = pd.read_csv(DATA / name, sep="\t", index_col=0, keep_default_na=False)
    return _adata(var)


def _names(name: str) -> list[str]:
    return (DATA / name).read_text().split()


def _symbols_only(name: str) -> ad.AnnData:
    return _adata(pd.DataFrame(index=_names(name)))


# -- tables ---------------------------------------------------------------------------------------
def test_available_taxa_and_tables(database_copy):
    assert em.database.available_taxa() == ["hsa", "mmu"]
    hsa = em.database.genes("hsa")
    assert hsa.index.is_unique and len(hsa) > 60_000
    assert list(hsa.columns[:10]) == [
        "gene_id", "symbol", "biotype", "chr", "start", "end", "strand", "assembly", "entrez", "description",
    ]  # fmt: skip
    assert set(hsa["assembly"]) == {"GRCh38"}
    assert hsa.loc["ENSG00000160213", "symbol"] == "CSTB"
    # a gene with two Entrez ids (two rows in the source) is one row
    assert hsa.loc["ENSG00000004866", "entrez"] == "7982;93655"
    mmu = em.database.genes("mouse")  # alias
    gnai3 = mmu.loc["ENSMUSG00000000001"]
    assert gnai3["symbol"] == "Gnai3" and gnai3["assembly"] == "GRCm39"
    assert (gnai3["start"], gnai3["mm10_start"]) == (108014596, 108107280)  # GRCm39 vs mm10 positions
    syn = em.database.synonyms("mmu")
    assert set(syn["type"]) == {"symbol", "previous_id"}
    assert syn["gene_id"].isin(mmu.index).all()


def test_tables_are_cached_and_copies(database_copy):
    first = _tables.load_index("hsa")
    assert _tables.load_index("human") is first  # no second read
    g = em.database.genes("hsa")
    g.loc["ENSG00000160213", "symbol"] = "CHANGED"
    assert em.database.genes("hsa").loc["ENSG00000160213", "symbol"] == "CSTB"
    # a changed file is read again
    path = database_copy / "hsa" / _tables.GENES_FILE
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    assert _tables.load_index("hsa") is not first


def test_relocated_database_dir(tmp_path):
    with em.settings.override(database_dir=tmp_path):
        assert em.database.available_taxa() == []
        with pytest.raises(em.KeyNotFoundError, match="database_dir"):
            em.database.genes("hsa")


def test_resolve_taxa_aliases():
    assert [em.database.resolve_taxa(t) for t in ("hsa", "Human", "Homo sapiens", 10090, "mouse")] == [
        "hsa", "hsa", "hsa", "mmu", "mmu",
    ]  # fmt: skip


def test_empty_var():
    a = _adata(pd.DataFrame(index=pd.Index([], dtype=str)))
    rep = em.database.harmonize_var(a, "hsa")
    assert rep["n_vars"] == 0 and a.n_vars == 0 and "gene" in a.var


def test_unknown_taxa_lists_available():
    for call in (
        lambda: em.database.genes("zebrafish"),
        lambda: em.database.lookup(["CSTB"], taxa="dre"),
        lambda: em.database.harmonize_var(_symbols_only("spatialde_bc_symbols.txt"), "dre"),
    ):
        with pytest.raises(em.KeyNotFoundError, match=r"taxa 'd?[a-z]+' not found; available: 'hsa', 'mmu'"):
            call()


# -- lookup ---------------------------------------------------------------------------------------
def test_parse_name():
    p = em.database.parse_name
    assert p("ENSMUSG00000064339.1") == ("id", "ENSMUSG00000064339")
    assert p("ensg00000160213") == ("id", "ENSG00000160213")
    assert p("DEPRECATED_ENSMUSG00000000157|Itgb2l|2ef1e7b") == ("id", "ENSMUSG00000000157")
    assert p("Itgb2l|2ef1e7b") == ("symbol", "Itgb2l")
    assert p("ENSG00000182378.14_PAR_Y") == ("id", "ENSG00000182378")
    assert p(" GAPDH ") == ("symbol", "GAPDH")


def test_lookup_reports_unique_ambiguous_unknown():
    res = em.database.lookup(
        ["CSTB", "ENSG00000160213.7", "cstb", "ENSG00000160213", "NOT_A_GENE", "TBCE", "AL627309.1"], taxa="hsa"
    )
    assert list(res.columns) == ["query", "gene_id", "symbol", "status", "match", "candidates"]
    assert res["gene_id"].iloc[:4].tolist() == ["ENSG00000160213"] * 4
    assert res["match"].iloc[:4].tolist() == ["symbol", "gene_id", "symbol", "gene_id"]
    assert (res["symbol"].iloc[:4] == "CSTB").all()
    unknown = res.iloc[4]
    assert unknown["status"] == "unknown" and unknown["gene_id"] is None and unknown["candidates"] == ()
    ambiguous = res.iloc[5]  # two Ensembl genes are named TBCE on the primary assembly
    assert ambiguous["status"] == "ambiguous" and ambiguous["gene_id"] is None
    assert set(ambiguous["candidates"]) == {"ENSG00000284770", "ENSG00000285053"}
    clone = res.iloc[6]  # 10x GRCh38-2020-A name of a gene Ensembl 109 leaves unnamed
    assert (clone["status"], clone["match"], clone["gene_id"]) == ("unique", "synonym", "ENSG00000238009")
    assert clone["symbol"] is None


def test_lookup_mouse_synonyms_previous_ids_probes():
    res = em.database.lookup(
        ["Fam213a", "Itgb2l|2ef1e7b", "Aldoa", "ENSMUSG00000000001.4", "ENSG00000160213"], taxa="mmu"
    ).set_index("query")
    assert res.loc["Fam213a", "symbol"] == "Prxl2a" and res.loc["Fam213a", "match"] == "synonym"
    assert res.loc["Itgb2l|2ef1e7b", "symbol"] == "Itgb2l"
    assert res.loc["Aldoa", "status"] == "ambiguous" and len(res.loc["Aldoa", "candidates"]) == 2
    assert res.loc["ENSMUSG00000000001.4", "symbol"] == "Gnai3"
    assert res.loc["ENSG00000160213", "status"] == "unknown"  # a human id is not a mouse gene
    prev = em.database.synonyms("mmu").query("type == 'previous_id'").iloc[0]
    hit = em.database.lookup([prev["synonym"]], taxa="mmu").iloc[0]
    assert (hit["gene_id"], hit["match"]) == (prev["gene_id"], "previous_id")


def test_infer_taxa():
    assert em.database.infer_taxa(_names("spatialde_mob_symbols.txt")) == "mmu"
    assert em.database.infer_taxa(_names("spatialde_bc_symbols.txt")) == "hsa"
    assert em.database.infer_taxa(["foo", "bar"]) is None


# -- harmonize_var --------------------------------------------------------------------------------
def test_harmonize_10x_human_ids():
    a = _features("visium_1.0.0_features.tsv")
    rep = em.database.harmonize_var(a, "hsa")
    assert rep["n_annotated"] == 100 and rep["matched_by"]["gene_id"] == 100 and rep["id_column"] == "gene_ids"
    assert a.var_names.tolist() == a.var["gene_ids"].tolist()
    v = a.var.loc["ENSG00000243485"]
    assert (v["gene"], v["chr"], v["start"], v["end"], v["strand"], v["biotype"], v["assembly"]) == (
        "MIR1302-2HG", "1", 29554, 31109, 1, "lncRNA", "GRCh38",
    )  # fmt: skip
    assert a.var["annotated"].all() and a.var["gene"].is_unique
    # unnamed in Ensembl 109, no symbol in the input: the 10x reference's name
    assert a.var.loc["ENSG00000238009", "gene"] == "AL627309.1"
    assert a.uns["gene_annotation"]["params"]["taxa"] == "hsa"


def test_harmonize_10x_mouse_mm10_positions():
    a = _features("seurat_visium_features.tsv")  # var_names symbols, gene_ids, genome mm10
    rep = em.database.harmonize_var(a, "mmu")
    assert rep["assembly"] == "mm10" and rep["n_annotated"] == 100
    assert a.var_names[0] == "ENSMUSG00000051951" and a.var["gene"].iloc[0] == "Xkr4"
    assert a.var["original_name"].iloc[0] == "Xkr4"
    assert (a.var["chr"].iloc[0], a.var["start"].iloc[0], a.var["assembly"].iloc[0]) == ("1", 3205901, "mm10")
    b = _features("seurat_visium_features.tsv")
    em.database.harmonize_var(b, "mmu", assembly="GRCm39")
    assert b.var["start"].iloc[0] == em.database.genes("mmu").loc["ENSMUSG00000051951", "start"] != 3205901
    with pytest.raises(em.InvalidInputError, match="valid values"):
        em.database.harmonize_var(b, "mmu", assembly="hg19")


def test_harmonize_probe_panel():
    a = _features("visium_2.1.0_probes.tsv")
    rep = em.database.harmonize_var(a, "mmu")
    assert rep["n_annotated"] == 1000  # DEPRECATED_ ids are ids of the probed gene
    assert a.var_names.is_unique and a.var["gene"].is_unique
    # 1,000 probes of 981 genes (988 gene_ids, some with and without DEPRECATED_): the probes of one gene share
    # var['gene_id']; var_names get -1, -2 after the first
    assert a.var["gene_id"].nunique() == len({g.removeprefix("DEPRECATED_") for g in a.var["gene_ids"]}) == 981
    assert rep["duplicate_genes"]["ENSMUSG00000000058"] == ["Cav2|7e4b48a", "Cav2|81c2e5b"]
    assert a.var.loc["ENSMUSG00000000058-1", "gene"] == "Cav2-1"
    assert rep["renamed_symbols"]["Cav2-1"] == "Cav2"
    assert a.var.loc["ENSMUSG00000000157", "gene"] == "Itgb2l"


def test_harmonize_versioned_st_ids():
    names = _names("st_hippo1_ids.txt")
    a = _symbols_only("st_hippo1_ids.txt")
    rep = em.database.harmonize_var(a, "mmu")
    assert rep["assembly"] == "GRCm39" and rep["id_column"] is None
    assert not any("." in n for n in a.var_names)  # versions removed, also from unknown ids
    assert a.var["original_name"].tolist() == names
    assert a.var.loc["ENSMUSG00000064339", "gene"] == "mt-Rnr2"
    unknown = a.var[~a.var["annotated"]]
    assert len(unknown) == rep["n_unannotated"] == len(rep["unknown"]) > 0
    assert (unknown["gene_match"] == "unknown").all() and unknown["chr"].isna().all()
    assert unknown["gene_id"].notna().all()  # still ids, usable to merge samples


def test_harmonize_symbol_tables_keep_unknown_genes():
    a = _symbols_only("spatialde_mob_symbols.txt")
    names = a.var_names.tolist()
    rep = em.database.harmonize_var(a, "mmu")
    assert a.n_vars == len(names)  # nothing dropped
    assert rep["n_annotated"] + rep["n_unannotated"] == len(names)
    assert rep["matched_by"]["synonym"] > 0  # older symbols such as Fam213a
    assert a.var.loc[a.var["original_name"] == "Fam213a", "gene"].item() == "Prxl2a"
    unknown = a.var[~a.var["annotated"]]
    assert set(unknown.index) == set(rep["unknown"]) | set(rep["ambiguous"])  # original names kept
    assert set(rep["ambiguous"]) == {"1810014B01Rik"}
    assert unknown["gene_id"].isna().all()
    human = _symbols_only("spatialde_bc_symbols.txt")
    rep_h = em.database.harmonize_var(human, "hsa")
    assert rep_h["n_annotated"] / rep_h["n_vars"] > 0.9
    assert human.var.loc["ENSG00000111640", "gene"] == "GAPDH"


def test_harmonize_duplicated_symbols():
    dup = pd.read_csv(DATA / "tenx_mm10_duplicated_symbols.tsv", sep="\t")
    # as 10x data: symbols (duplicated) as var_names, ids in gene_ids
    a = _adata(pd.DataFrame({"gene_ids": dup["gene_ids"].to_numpy()}, index=dup["gene_name"].to_numpy()))
    assert not a.var_names.is_unique
    rep = em.database.harmonize_var(a, "mmu")
    assert a.var_names.tolist() == dup["gene_ids"].tolist()
    assert a.var["gene"].is_unique
    aldoa = a.var.loc[["ENSMUSG00000030695", "ENSMUSG00000114515"], "gene"].tolist()
    assert aldoa == ["Aldoa", "Aldoa-1"] and rep["renamed_symbols"]["Aldoa-1"] == "Aldoa"
    # without ids, a symbol naming two genes is ambiguous: kept under its own name, reported
    b = _adata(pd.DataFrame(index=["Aldoa", "Gnai3", "Gnai3", "gnai3"]))
    rep_b = em.database.harmonize_var(b, "mmu")
    assert b.var_names.tolist() == ["Aldoa", "ENSMUSG00000000001", "ENSMUSG00000000001-1", "ENSMUSG00000000001-2"]
    assert rep_b["ambiguous"]["Aldoa"] == ["ENSMUSG00000030695", "ENSMUSG00000114515"]
    assert rep_b["duplicate_genes"] == {"ENSMUSG00000000001": ["Gnai3", "Gnai3", "gnai3"]}
    assert b.var["gene"].tolist() == ["Aldoa", "Gnai3", "Gnai3-1", "Gnai3-2"]


def test_keep_original_names_and_not_inplace():
    a = _features("seurat_visium_features.tsv")
    before = a.var_names.copy()
    em.database.harmonize_var(a, "mmu", keep_original_names=True)
    assert a.var_names.equals(before)
    assert {"gene", "gene_id", "chr", "start", "end", "strand", "biotype", "assembly", "annotated"} <= set(a.var)
    assert a.var.loc["Xkr4", "gene_id"] == "ENSMUSG00000051951"
    b = _features("seurat_visium_features.tsv")
    var_before = b.var.copy()
    rep = em.database.harmonize_var(b, "mmu", inplace=False)
    pd.testing.assert_frame_equal(b.var, var_before)
    assert rep["var"].index[0] == "ENSMUSG00000051951" and "gene_annotation" not in b.uns


def test_harmonize_is_idempotent_and_writable(tmp_path):
    a = _features("visium_2.1.0_probes.tsv")
    em.database.harmonize_var(a, "mmu")
    once = a.var.copy()
    em.database.harmonize_var(a, "mmu")
    assert a.var_names.equals(once.index)
    assert a.var["gene"].equals(once["gene"]) and a.var["original_name"].equals(once["original_name"])
    a.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert back.var["start"].iloc[0] == a.var["start"].iloc[0] and back.var["annotated"].all()


def test_mixup_warning():
    human_symbols = _symbols_only("spatialde_bc_symbols.txt")
    with pytest.warns(em.ExperimatWarning, match="declared taxa 'mmu'.*match 'hsa'"):
        rep = em.database.harmonize_var(human_symbols, "mmu")
    assert rep["taxa_fraction"]["mmu"] < 0.2 < 0.5 < rep["taxa_fraction"]["hsa"]
    human_ids = _features("visium_1.0.0_features.tsv")
    with pytest.warns(em.ExperimatWarning, match="check the sample's taxa"):
        em.database.harmonize_var(human_ids, "mmu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", em.ExperimatWarning)
        em.database.harmonize_var(_symbols_only("spatialde_mob_symbols.txt"), "mmu")
        em.database.harmonize_var(_adata(pd.DataFrame(index=["foo", "bar", "baz"])), "mmu")  # matches neither


# -- gene_overlap_report --------------------------------------------------------------------------
def test_gene_overlap_report_after_harmonising():
    full = _features("seurat_visium_features.tsv")
    panel = _features("visium_2.1.0_probes.tsv")
    st = _symbols_only("st_hippo1_ids.txt")
    for a in (full, panel, st):
        em.database.harmonize_var(a, "mmu")
    rep = em.database.gene_overlap_report({"full": full, "panel": panel.var_names, "st": list(st.var_names)})
    sets = [set(full.var_names), set(panel.var_names), set(st.var_names)]
    assert rep["n_shared"] == len(set.intersection(*sets)) == len(rep["shared"])
    assert rep["n_union"] == len(set.union(*sets))
    assert rep["n_genes"] == {"full": 100, "panel": 1000, "st": 400}
    assert rep["n_only_in"]["panel"] == len(sets[1] - sets[0] - sets[2])
    assert rep["n_missing"]["full"] == rep["n_union"] - 100
    assert rep["shared"] == [g for g in full.var_names if g in set.intersection(*sets)]
    pair = em.database.gene_overlap_report({"a": ["ENSG1", "ENSG2", "ENSG2"], "b": ["ENSG2", "ENSG3"]})
    assert (pair["n_shared"], pair["n_union"], pair["n_genes"]["a"], pair["fraction_shared"]["b"]) == (1, 3, 2, 0.5)


def test_gene_overlap_report_flags_mixed_naming():
    ids = _features("seurat_visium_features.tsv")
    em.database.harmonize_var(ids, "mmu")
    symbols = _features("seurat_visium_features.tsv")  # not harmonised: symbols
    with pytest.warns(em.ExperimatWarning, match="harmonise var first"):
        rep = em.database.gene_overlap_report({"ids": ids, "symbols": symbols})
    assert rep["n_shared"] == 0 and rep["id_fraction"] == {"ids": 1.0, "symbols": 0.0}
    with pytest.raises(em.InvalidInputError):
        em.database.gene_overlap_report({})
    with pytest.raises(em.InvalidInputError):
        em.database.gene_overlap_report({"a": "GAPDH"})


def test_harmonised_var_resolves_symbols_and_ids():
    from experimat.methods._checks import resolve_genes

    a = _features("visium_2.1.0_probes.tsv")
    em.database.harmonize_var(a, "mmu")
    got = resolve_genes(a, ["Itgb2l", "itgb2l", "ENSMUSG00000000157.7", "ENSMUSG00000000157", "Cav2-1"])
    assert got == ["ENSMUSG00000000157"] * 4 + ["ENSMUSG00000000058-1"]
