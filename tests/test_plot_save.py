"""Plot methods on the accessors save figures as scanpy users expect (``save="fig.png"``), and the help of
read-only methods (plots, queries) lists only the runner options that apply."""

from __future__ import annotations

import inspect
import json

import pytest

import experimat as em


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_plot_save_writes_the_figure_not_the_project(muscle_project, tmp_path):
    expm = em.load_experiment(muscle_project)  # r+: a project save= would write
    before = _manifest(muscle_project)
    out = tmp_path / "figs" / "spatial.png"
    out.parent.mkdir()
    fig = expm.spatial_bin.plot_spatial(run_on_samples=["Vis5A_2dpi"], plot_embeddings={"color": "sample"}, save=out)
    assert out.read_bytes().startswith(b"\x89PNG")
    assert hasattr(fig, "savefig")
    pdf = tmp_path / "spatial.pdf"
    expm.spatial_bin.plot_spatial(run_on_samples=["Vis5A_2dpi"], plot_embeddings={"color": "sample"}, save=str(pdf))
    assert pdf.read_bytes().startswith(b"%PDF")
    assert _manifest(muscle_project) == before
    assert expm.history().empty or "plot_spatial" not in set(expm.history()["method"])
    expm.close()


def test_plot_save_rejects_a_flag_and_non_figures(muscle_project, tmp_path):
    expm = em.load_experiment(muscle_project, mode="r")
    with pytest.raises(em.InvalidInputError, match="file name of the figure"):
        expm.spatial_bin.plot_spatial(run_on_samples=["Vis5A_2dpi"], save=True)
    with pytest.raises(em.InvalidInputError, match="not a figure"):
        expm.spatial_bin.get_image(run_on_samples=["Vis5A_2dpi"], channels=["lowres/r"], save=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_readonly_methods_show_only_options_that_apply(muscle_project):
    expm = em.load_experiment(muscle_project, mode="r")
    acc = expm.spatial_bin
    plot = inspect.signature(acc.plot_spatial).parameters
    assert "run_on_samples" in plot and "save" in plot
    for absent in ("n_jobs", "executor", "resume"):
        assert absent not in plot
        assert absent not in acc.plot_spatial.__doc__
    assert "file name" in acc.plot_spatial.__doc__
    query = inspect.signature(acc.get_markers).parameters
    assert "run_on_samples" in query and not {"save", "n_jobs", "executor", "resume"} & set(query)
    with pytest.raises(em.InvalidInputError, match="saves nothing"):
        acc.get_markers(run_on_samples=["Vis5A_2dpi"], save="x.csv")
    # per-sample analyses keep every runner option, and their help reads as one dedented docstring
    svg = inspect.signature(acc.spatial_svg_moran).parameters
    assert {"run_on_samples", "n_jobs", "executor", "save", "resume"} <= set(svg)
    doc = inspect.getdoc(acc.spatial_svg_moran)
    assert "\nParameters\n----------" in doc and "\nRunner options (added by experimat)\n" in doc
