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
