"""Integrated-data plots (run_on_samples=None) lay the sections out side by side (issue 18)."""

import numpy as np
import pytest
from tests.conftest import make_synthetic_experiment


def _spot_axes(fig):
    out = []
    for ax in fig.axes:
        pts = [np.asarray(c.get_offsets()) for c in ax.collections if len(c.get_offsets())]
        if pts:
            out.append((ax, np.vstack(pts)))
    return out


def _figure_boxes(fig, axes_points):
    """Each panel's spots in figure coordinates (0-1), so panels can be compared."""
    fig.canvas.draw()
    boxes = []
    for ax, xy in axes_points:
        disp = ax.transData.transform(xy)
        fxy = fig.transFigure.inverted().transform(disp)
        boxes.append((fxy[:, 0].min(), fxy[:, 0].max(), fxy[:, 1].min(), fxy[:, 1].max()))
    return boxes


def _disjoint(a, b):
    return a[1] < b[0] or b[1] < a[0] or a[3] < b[2] or b[3] < a[2]


@pytest.mark.parametrize("plot", ["plot_spatial", "plot_domains"])
def test_integrated_sections_do_not_overlap(plot):
    expm = make_synthetic_experiment(n_samples=2)
    a, b = (expm.spatial_bin[s].obsm["spatial"] for s in ("s0", "s1"))
    assert np.ptp(a, 0).min() > 0 and (a.min(0) < b.max(0)).all() and (b.min(0) < a.max(0)).all()  # same frame: overlap
    expm.merge()
    if plot == "plot_spatial":
        fig = expm.spatial_bin.plot_spatial(run_on_samples=None, plot_embeddings={"color": "domain"})
    else:
        fig = expm.spatial_bin.plot_domains(run_on_samples=None, domain_keys=["domain"])
    drawn = _spot_axes(fig)
    assert len(drawn) == 2  # one panel per section
    assert {ax.get_title().split(":")[0] for ax, _ in drawn} == {"s0", "s1"}
    n = sorted(len(xy) for _, xy in drawn)
    assert n == sorted(expm.spatial_bin[s].n_obs for s in ("s0", "s1"))
    boxes = _figure_boxes(fig, drawn)
    assert _disjoint(boxes[0], boxes[1])


def test_embedding_of_integrated_data_stays_one_panel():
    import experimat as em

    expm = make_synthetic_experiment(n_samples=2)
    merged = expm.merge().mod["spatial-bin"]
    merged.obsm["X_umap"] = np.asarray(merged.obsm["spatial"], dtype=float)
    fig = em.pl.plot_embedding({"integrated": merged}, "X_umap", color="sample")
    drawn = _spot_axes(fig)
    assert len(drawn) == 1 and len(drawn[0][1]) == merged.n_obs


def test_merge_keeps_each_sections_image_and_integrated_plot_draws_them_side_by_side(tmp_path):
    """merge() carries every sample's images and scale factors into uns['spatial'][sample] (scanpy's layout), so
    plot_spatial(run_on_samples=None) draws each section over its own H&E, the sections side by side."""
    import experimat as em
    from experimat.datasets import synthetic_domains

    adatas = {f"s{i}": synthetic_domains(120, 3, 40, n_markers_per_domain=5, with_image=True, seed=i) for i in range(2)}
    adatas["s1"].uns["spatial"]["synthetic"]["images"]["hires"] = 1.0 - adatas["s1"].uns["spatial"]["synthetic"]["images"]["hires"]
    expm = em.Experiment.from_anndata(adatas, modality="spatial-bin", taxa="mmu", project=tmp_path / "p", harmonize_genes=False)
    merged = expm.merge().mod["spatial-bin"]
    assert set(merged.uns["spatial"]) == {"s0", "s1"}
    for s in ("s0", "s1"):
        lib = expm.spatial_bin[s].uns["spatial"]
        own = lib[s] if s in lib else next(iter(lib.values()))
        np.testing.assert_array_equal(merged.uns["spatial"][s]["images"]["hires"], own["images"]["hires"])
        assert merged.uns["spatial"][s]["scalefactors"] == dict(own["scalefactors"])
    # the images survive saving the integrated data and reopening the project
    expm.save()
    expm.close()
    expm = em.load_experiment(tmp_path / "p")
    merged = expm.integrated.mod["spatial-bin"]
    assert {s: merged.uns["spatial"][s]["images"]["hires"].shape for s in ("s0", "s1")} == {
        s: expm.spatial_bin[s].uns["spatial"][next(iter(expm.spatial_bin[s].uns["spatial"]))]["images"]["hires"].shape
        for s in ("s0", "s1")}
    fig = expm.spatial_bin.plot_spatial(run_on_samples=None, channels=["hires/r", "hires/g", "hires/b"],
                                        plot_embeddings={"color": "domain", "alpha": 0.5})
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2
    assert {ax.get_title().split(":")[0] for ax in panels} == {"s0", "s1"}
    drawn = [np.asarray(ax.images[0].get_array()) for ax in panels]
    assert not np.allclose(drawn[0], drawn[1])  # each section over its own image
    boxes = _figure_boxes(fig, _spot_axes(fig))
    assert len(boxes) == 2 and _disjoint(boxes[0], boxes[1])
    expm.close()


def test_merge_keeps_obs_columns_of_some_samples(tmp_path):
    """A column only some sections have (domains of a joint fit over a subset) survives merge(): NaN elsewhere,
    categorical over the union of its categories, and it can be plotted for the sections that have it."""
    import pandas as pd

    expm = make_synthetic_experiment(n_samples=3)
    for s, cats in (("s0", ["a", "b"]), ("s1", ["b", "c"])):
        a = expm.spatial_bin[s]
        a.obs["subset"] = pd.Categorical(np.where(np.arange(a.n_obs) % 2 == 0, cats[0], cats[1]))
        expm.spatial_bin[s] = a
    merged = expm.merge().mod["spatial-bin"]
    col = merged.obs["subset"]
    assert isinstance(col.dtype, pd.CategoricalDtype) and list(col.cat.categories) == ["a", "b", "c"]
    by_sample = merged.obs.groupby("sample", observed=True)["subset"]
    assert by_sample.apply(lambda v: v.isna().all()).to_dict() == {"s0": False, "s1": False, "s2": True}
    for s in ("s0", "s1"):
        own = expm.spatial_bin[s].obs["subset"].astype(str).to_numpy()
        np.testing.assert_array_equal(merged.obs.loc[merged.obs["sample"] == s, "subset"].astype(str).to_numpy(), own)
    part = merged[merged.obs["sample"].isin(["s0", "s1"])]
    import experimat as em

    fig = em.pl.plot_spatial(part, plot_embeddings={"color": "subset"})
    assert len(_spot_axes(fig)) == 2
