"""Figures of the deconvolution tutorials: each test checks what the figure shows (labels, number of points,
cutoff lines), not only that it ran, and that the data are not modified."""

from __future__ import annotations

import warnings

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
pytest.importorskip("torch")

from experimat import pl
from experimat._errors import ExperimatWarning, InvalidInputError, KeyNotFoundError, MissingSlotError
from experimat.methods.deconv import cell2location as c2l
from experimat.methods.deconv import destvi


@pytest.fixture(scope="module")
def mapped(zeisel_sc, zeisel_spots):
    sig = c2l.reference_signatures(zeisel_sc, labels_key="class", method="cluster_mean")
    s = zeisel_spots.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimatWarning)
        c2l.deconvolve_cell2location(s, reference=sig, n_cells_per_location=6, max_epochs=40, seed=0)
    c2l.colocation_nmf(s, n_factors=[2, 3], n_restarts=2, seed=0)
    return s, sig


def _collections(ax):
    return [c for c in ax.collections if hasattr(c, "get_offsets")]


def test_plot_gene_filter_counts_genes_and_draws_cutoffs(zeisel_sc):
    h = c2l.gene_filter_histogram(zeisel_sc, cell_count_cutoff=5, cell_percentage_cutoff2=0.03, nonz_mean_cutoff=1.12)
    fig = pl.plot_gene_filter(zeisel_sc, cell_count_cutoff=5, cell_percentage_cutoff2=0.03, nonz_mean_cutoff=1.12)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "log10(number of cells expressing the gene)"
    assert ax.get_ylabel() == "log10(mean non-zero count)"
    n_det = int(np.isfinite(h["log10_n_cells"]).sum())
    assert ax.get_title() == f"{h['n_selected']} of {n_det} detected genes kept"
    mesh = next(c for c in ax.collections if type(c).__name__ == "QuadMesh")
    assert np.nansum(mesh.get_array()) == n_det  # every detected gene in one bin
    xs = sorted(line.get_xdata()[0] for line in ax.lines if line.get_xdata()[0] == line.get_xdata()[1])
    assert np.allclose(xs, sorted([np.log10(5), np.log10(zeisel_sc.n_obs * 0.03)]))
    # two samples: one panel each (the accessor's {sample: AnnData})
    fig2 = pl.plot_gene_filter({"a": zeisel_sc, "b": zeisel_sc[:300]})
    titles = [a.get_title() for a in fig2.axes if a.get_title()]
    assert titles[0].startswith("a: ") and titles[1].startswith("b: ")


def test_plot_reference_qc(zeisel_sc, mapped):
    _, sig = mapped
    fig = pl.plot_reference_qc(zeisel_sc, reference=sig, labels_key="class")
    rec, scat = fig.axes[0], next(a for a in fig.axes if a.get_xlabel() == "mean normalised count per cell type")
    assert rec.get_xlabel() == "expected count, log10(1 + x)" and rec.get_title() == "reconstruction accuracy"
    pts = _collections(scat)[0].get_offsets()
    assert len(pts) == int((sig.signatures.to_numpy() > 0).sum())
    # cluster_mean signatures are the normalised cluster means: points on the diagonal, r = 1
    assert np.allclose(pts[:, 0], pts[:, 1], rtol=1e-6)
    assert "r = 1.000" in scat.get_title()
    with pytest.raises(InvalidInputError, match="shares 0 cell types"):
        pl.plot_reference_qc(zeisel_sc, reference=sig, labels_key="subclass")


def test_plot_colocation_loadings(mapped):
    s, _ = mapped
    before = s.uns["colocation_nmf"]["loadings"]["3"].copy()
    fig = pl.plot_colocation_loadings(s, 3)
    ax = fig.axes[0]
    off = _collections(ax)[0]
    n_types = s.obsm["cell2location.means"].shape[1]
    assert len(off.get_offsets()) == n_types * 3
    assert ax.get_xlabel() == "factor" and ax.get_ylabel() == "cell type"
    assert sorted(t.get_text() for t in ax.get_yticklabels()) == sorted(before.index)
    np.testing.assert_allclose(np.sort(off.get_array()), np.sort(before.to_numpy().ravel()))
    pd.testing.assert_frame_equal(s.uns["colocation_nmf"]["loadings"]["3"], before)
    assert "2 factors" in pl.plot_colocation_loadings(s).axes[0].get_title()  # default: smallest fit
    with pytest.raises(KeyNotFoundError):
        pl.plot_colocation_loadings(s, 7)
    with pytest.raises(MissingSlotError, match="colocation_nmf"):
        pl.plot_colocation_loadings(s, 3, nmf_key="nmf_other")


def test_plot_volcano_table_and_adata():
    rng = np.random.default_rng(0)
    de = pd.DataFrame(
        {
            "log2FC": np.r_[[3.0, -2.5, 0.1], rng.normal(0, 0.2, 47)],
            "padj": np.r_[[1e-8, 0.0, 1e-9], rng.uniform(0.2, 1, 47)],
        },
        index=[f"g{i}" for i in range(50)],
    )
    fig = pl.plot_volcano(de, n_labels=5)
    ax = fig.axes[0]
    n_points = [len(c.get_offsets()) for c in _collections(ax)]
    assert n_points == [48, 1, 1]  # grey, up, down; g2 is significant but |log2FC| < 0.5
    assert ax.get_xlabel() == "log2 fold change" and ax.get_ylabel() == "-log10(padj)"
    assert sorted(t.get_text() for t in ax.texts) == ["g0", "g1"]
    assert np.isfinite(_collections(ax)[2].get_offsets()).all()  # padj = 0 is drawn, at the top
    a = ad.AnnData(np.zeros((3, 2)))
    a.uns["de_astro"] = {"de_results": de.rename_axis("gene").reset_index()}
    ax2 = pl.plot_volcano(a, "de_astro").axes[0]
    assert sorted(t.get_text() for t in ax2.texts) == ["g0", "g1"]
    with pytest.raises(InvalidInputError, match="key="):
        pl.plot_volcano(a)
    with pytest.raises(KeyNotFoundError):
        pl.plot_volcano(de.drop(columns="padj"))


@pytest.mark.slow
def test_destvi_threshold_and_gamma_space_figures(zeisel_sc, zeisel_spots):
    ref = destvi.fit_condscvi(zeisel_sc.copy(), labels_key="class", n_top_genes=200, max_epochs=20, seed=0)
    st = zeisel_spots.copy()
    destvi.deconvolve_destvi(st, reference=ref, max_epochs=100, seed=0)
    thr = destvi.automatic_proportion_threshold(st, kind="primary")
    curves = st.uns["destvi"]["threshold_curves"]
    fig = pl.plot_proportion_thresholds(st)
    axes = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in axes] == list(curves)
    for ax, (ct, c) in zip(axes, curves.items()):
        assert len(_collections(ax)[0].get_offsets()) == len(c["threshold"])
        vlines = [line.get_xdata()[0] for line in ax.lines if len(line.get_xdata()) == 2]
        assert thr[ct] == pytest.approx(c["primary"]) and vlines[0] == pytest.approx(c["primary"])
        assert ax.get_xlabel() == "proportion threshold"
    ct = max(thr, key=lambda t: (st.obsm["destvi.proportions"][t] > thr[t]).sum())
    destvi.explore_gamma_space(st, reference=ref, ct=ct, threshold=thr, n_components=2)
    fig = pl.plot_gamma_space(st, ct=ct)
    panels = [a for a in fig.axes if a.get_title()]
    assert len(panels) == 2
    n_kept = int((st.obsm["destvi.proportions"][ct] > thr[ct]).sum())
    assert len(_collections(panels[0])[1].get_offsets()) == n_kept
    assert "SpatialPC1" in panels[0].get_title() and "% of variance" in panels[0].get_title()
    with pytest.raises(MissingSlotError, match="explore_gamma_space"):
        pl.plot_gamma_space(st, ct="no-such-type")


def test_threshold_plot_needs_curves(zeisel_spots):
    with pytest.raises(MissingSlotError, match="automatic_proportion_threshold"):
        pl.plot_proportion_thresholds(zeisel_spots)
