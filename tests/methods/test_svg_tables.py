"""What a SpatialDE tutorial user expects of the SVG results: gene symbols beside the ids, a GP test of a gene
subset that takes library sizes from all genes, and the FSV–q and calibration figures."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import experimat as em
from experimat.methods.svg import spatial_svg_gp, spatial_svg_moran, spatial_svg_score
from experimat.methods.svg._gp import _prepare_expression, anscombe_phi

DATA = Path(__file__).resolve().parents[1] / "data" / "svg" / "mob_subset.npz"


@pytest.fixture(autouse=True)
def _quiet():
    with em.settings.override(progress=False):
        yield


@pytest.fixture(scope="module")
def mob_all():
    """The 300 MOB genes plus one column holding every other gene's counts, so that row sums are the real
    library sizes over all 14,859 genes (``total_counts`` of the published pipeline)."""
    z = np.load(DATA)
    counts = z["counts"].astype(np.float64)
    rest = z["total_counts"] - counts.sum(1)
    assert (rest >= 0).all()
    X = np.hstack([counts, rest[:, None]])
    a = ad.AnnData(X, obs=pd.DataFrame(index=z["spots"]), var=pd.DataFrame(index=[*z["genes"], "other_genes"]))
    a.layers["counts"] = a.X.copy()
    a.obsm["spatial"] = z["xy"]
    a.uns["ref_pval"] = pd.Series(z["ref_pval"], index=z["genes"])
    return a


def test_gp_gene_subset_regresses_out_totals_of_all_genes(mob_all):
    sub = list(mob_all.var_names[:100])
    cols = mob_all.var_names.get_indexer(sub)
    X = mob_all.layers["counts"]
    idx, transform, prep = _prepare_expression(X, normalize="anscombe", min_counts=3, layer="counts", candidates=cols)
    # independent computation: NaiveDE.stabilize on the tested genes, regress_out of log(total over ALL genes)
    Y = X[:, idx]
    phi = anscombe_phi(Y.mean(0), Y.var(0, ddof=1))
    Z = np.log(Y + 1.0 / (2.0 * phi))
    lt = np.log(X[:, X.sum(0) >= 3].sum(1))  # SpatialDE's total_counts: sums over the genes with >= 3 counts
    design = np.column_stack([np.ones_like(lt), lt])
    beta = np.linalg.lstsq(design, Z, rcond=None)[0]
    expected = Z - lt[:, None] * beta[1][None, :]
    np.testing.assert_allclose(transform(idx), expected, rtol=1e-9, atol=1e-9)
    assert prep["phi"] == pytest.approx(phi)


def test_gp_gene_subset_matches_the_full_run(mob_all):
    """Testing 100 genes gives their p-values of the all-gene run (only φ, estimated on the tested genes, differs);
    recomputing library sizes from the subset moved them by orders of magnitude."""
    sub = list(mob_all.var_names[:100])
    full = spatial_svg_gp(mob_all.copy(), model_search=False)
    part = spatial_svg_gp(mob_all.copy(), genes=sub, model_search=False)
    assert part["pval"].notna().sum() == 100 and part.drop(index=sub)["pval"].isna().all()
    r = np.abs(np.log10(part.loc[sub, "pval"] / full.loc[sub, "pval"]))
    assert np.median(r) < 0.05 and r.max() < 0.3
    # and both agree with SpatialDE's published run of these genes
    ref = mob_all.uns["ref_pval"][sub]
    assert np.median(np.abs(np.log10(part.loc[sub, "pval"] / ref))) < 0.1
    # the subset's own library sizes (what the subset AnnData alone gives) are far off
    alone = spatial_svg_gp(mob_all[:, sub].copy(), model_search=False)
    assert np.median(np.abs(np.log10(alone.loc[sub, "pval"] / full.loc[sub, "pval"]))) > 0.3


def test_gp_genes_by_symbol_and_unknown(mob_all):
    a = mob_all.copy()
    a.var["gene"] = [f"Sym{i}" for i in range(a.n_vars)]
    res = spatial_svg_gp(a, genes=["Sym0", a.var_names[1]], model_search=False)
    assert res["pval"].notna().sum() == 2
    with pytest.raises(em.KeyNotFoundError):
        spatial_svg_gp(a, genes=["no_such_gene"], model_search=False)
    assert a.uns["spatialde_gp"]["params"]["genes"] == "<list>"


@pytest.mark.parametrize("method", [spatial_svg_gp, spatial_svg_score, spatial_svg_moran])
def test_svg_tables_show_symbols_beside_ids(mob_all, method):
    a = mob_all[:, :60].copy()
    ids = [f"ENSMUSG{i:011d}" for i in range(a.n_vars)]
    symbols = list(a.var_names)
    a.var_names = ids
    a.var["gene"] = symbols
    res = method(a, layer="counts")
    assert list(res.index) == ids
    assert res.columns[0] == "gene" and list(res["gene"]) == symbols
    assert not any(c.endswith(".gene") for c in a.var.columns)  # the symbol stays in var['gene'] only


def test_plot_fsv_q_and_qq(mob_all, tmp_path):
    a = mob_all.copy()
    a.var["gene"] = [f"S{i}" for i in range(a.n_vars)]
    spatial_svg_gp(a, model_search=False)
    fig = em.pl.plot_fsv_q({"MOB": a, "again": a}, label_top=3)
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.yaxis_inverted()
    assert {t.get_text() for t in ax.texts} <= set(a.var["gene"]) and len(ax.texts) == 3
    n_sig = int((a.var["spatialde_gp.qval"] < 0.05).sum())
    assert any(f"({n_sig})" in t.get_text() for t in ax.get_legend().get_texts())
    with pytest.raises(em.MissingSlotError, match="spatial_svg_gp"):
        em.pl.plot_fsv_q(a, svg_key="nope")
    rng = np.random.default_rng(0)
    fig = em.pl.plot_pvalue_qq({"uniform": rng.random(300), "with nan": np.r_[rng.random(50), np.nan]})
    assert len(fig.axes[0].lines) == 3  # two tests + the diagonal
    with pytest.raises(em.InvalidInputError, match=r"\[0, 1\]"):
        em.pl.plot_pvalue_qq({"bad": [1.5]})
    fig.savefig(tmp_path / "qq.png")
