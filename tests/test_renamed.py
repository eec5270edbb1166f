"""Renamed functions and options keep their old names: same result, with a FutureWarning.

Direct calls go through :func:`experimat._compat.renamed_options` / ``deprecated_alias``; accessor
calls through the runner's ``MethodSpec.bind`` and the accessor's method aliases.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import experimat as em
from experimat.datasets import synthetic_svg


def _same_var(a, b, prefix_a: str, prefix_b: str) -> None:
    cols_a = sorted(c.removeprefix(prefix_a) for c in a.var.columns if c.startswith(prefix_a + "."))
    cols_b = sorted(c.removeprefix(prefix_b) for c in b.var.columns if c.startswith(prefix_b + "."))
    assert cols_a == cols_b and cols_a
    for c in cols_a:
        np.testing.assert_array_equal(a.var[prefix_a + c].to_numpy(), b.var[prefix_b + c].to_numpy())


@pytest.fixture
def svg_expm(tmp_path):
    adatas = {"s1": synthetic_svg(120, 30, n_spatial=5, seed=1)}
    expm = em.Experiment.from_anndata(adatas, modality="spatial-bin", taxa="hsa", project=tmp_path / "p",
                                      harmonize_genes=False)
    yield expm
    expm.close()


# -- renamed functions ------------------------------------------------------------------------------
def test_score_test_old_function_name():
    from experimat.methods import svg

    a, b = synthetic_svg(120, 30, n_spatial=5, seed=1), synthetic_svg(120, 30, n_spatial=5, seed=1)
    new = svg.spatial_svg_score(a, n_null=200, seed=3, progress=False)
    with pytest.warns(FutureWarning, match=r"spatial_svg_spatialde\(\) is a deprecated alias of spatial_svg_score"):
        old = svg.spatial_svg_spatialde(b, n_null=200, seed=3, progress=False)
    pd.testing.assert_frame_equal(new, old)
    _same_var(a, b, "spatialde", "spatialde")
    from experimat.methods.svg._score import spatial_svg_spatialde

    assert spatial_svg_spatialde is svg.spatial_svg_spatialde
    assert svg.METHODS["spatialde2"] is svg.spatial_svg_score


def test_score_test_old_accessor_name(svg_expm):
    acc = svg_expm.spatial_bin
    assert "spatial_svg_score" in acc.methods and "spatial_svg_spatialde" not in acc.methods
    acc.spatial_svg_score(run_on_samples=True, n_null=200, key_added="new", save=False)
    with pytest.warns(FutureWarning, match=r"spatial_svg_spatialde\(\) is a deprecated alias of spatial_svg_score"):
        acc.spatial_svg_spatialde(run_on_samples=True, n_null=200, key_added="old", save=False)
    acc.spatial_svg(method="spatialde2", run_on_samples=True, n_null=200, key_added="family", save=False)
    a = acc["s1"]
    _same_var(a, a, "new", "old")
    _same_var(a, a, "new", "family")
    assert a.uns["old"]["params"] == a.uns["new"]["params"] | {"key_added": "old"}
