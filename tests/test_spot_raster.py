"""Spot layers above pl._spot_raster.AGGREGATE_ABOVE spots are drawn as one aggregated image:
mean value (continuous), most frequent category, mean colour per spot-sized grid cell."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import experimat as em
from experimat.pl import _spot_raster


def _grid_sample(side: int = 40, diameter: float = 10.0) -> ad.AnnData:
    rows, cols = np.divmod(np.arange(side * side), side)
    rng = np.random.default_rng(0)
    a = ad.AnnData(X=rng.poisson(2.0, (side * side, 3)).astype(np.float32),
                   obs=pd.DataFrame({"domain": pd.Categorical((cols >= side // 2).astype(str))},
                                    index=[f"b{i}" for i in range(side * side)]))
    a.var_names = ["g0", "g1", "g2"]
    a.obsm["spatial"] = np.column_stack([100 + cols * diameter, 50 + rows * diameter]).astype(float)
    a.uns["spatial"] = {"lib": {"images": {}, "scalefactors": {"spot_diameter_fullres": diameter}, "metadata": {}}}
    return a


def _spot_image(fig):
    imgs = [im for ax in fig.axes for im in ax.images if im.get_gid() == _spot_raster.GID]
    assert len(imgs) == 1
    return imgs[0]


def test_one_bin_per_cell_keeps_every_value(monkeypatch):
    monkeypatch.setattr(_spot_raster, "AGGREGATE_ABOVE", 100)
    a = _grid_sample()
    fig = em.pl.plot_spatial({"s": a}, plot_embeddings={"color": "g1"})
    im = _spot_image(fig)
    data = np.ma.getdata(im.get_array())
    assert data.shape == (40, 40) and not np.ma.getmaskarray(im.get_array()).any()
    rows, cols = np.divmod(np.arange(1600), 40)
    np.testing.assert_array_equal(data[rows, cols], a[:, "g1"].X.ravel())  # bin (row, col) -> its own cell
    left, right, bottom, top = im.get_extent()
    assert (left, top) == (95.0, 45.0) and right - left == bottom - top == 400.0  # the bins' squares, y down


def test_cells_take_the_mean_and_the_majority(monkeypatch):
    monkeypatch.setattr(_spot_raster, "AGGREGATE_ABOVE", 100)
    a = _grid_sample(diameter=10.0)
    a.uns["spatial"]["lib"]["scalefactors"]["spot_diameter_fullres"] = 20.0  # 2 x 2 bins per cell
    im = _spot_image(em.pl.plot_spatial({"s": a}, plot_embeddings={"color": "g0"}))
    # cells of 20 from the first bin's edge (90): bins 0 | 1 2 | 3 4 | ... per axis
    xy = a.obsm["spatial"]
    cell = pd.DataFrame({"r": ((xy[:, 1] - 40) // 20).astype(int), "c": ((xy[:, 0] - 90) // 20).astype(int),
                         "v": a[:, "g0"].X.ravel()})
    expect = cell.groupby(["r", "c"])["v"].mean().unstack().to_numpy()
    got = np.ma.getdata(im.get_array())
    assert got.shape == expect.shape == (21, 21)
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    codes = np.zeros(1600, dtype=int)
    codes[(cell["r"].to_numpy() * 21 + cell["c"].to_numpy()) % 2 == 0] = 1  # category "1" in every other cell
    a.obs["lab"] = pd.Categorical(codes.astype(str))
    fig = em.pl.plot_spatial({"s": a}, plot_embeddings={"color": "lab", "palette": {"0": "#ff0000", "1": "#0000ff"}})
    rgba = np.asarray(_spot_image(fig).get_array())
    blue = (np.arange(21)[:, None] * 21 + np.arange(21)[None, :]) % 2 == 0
    assert np.allclose(rgba[blue][:, :3], [0.0, 0.0, 1.0]) and np.allclose(rgba[~blue][:, :3], [1.0, 0.0, 0.0])


def test_small_layers_and_point_sizes_keep_the_circles(monkeypatch):
    a = _grid_sample()
    fig = em.pl.plot_spatial({"s": a}, plot_embeddings={"color": "g1"})  # 1,600 spots: circles
    assert not [im for ax in fig.axes for im in ax.images if im.get_gid() == _spot_raster.GID]
    monkeypatch.setattr(_spot_raster, "AGGREGATE_ABOVE", 100)
    fig = em.pl.plot_spatial({"s": a}, plot_embeddings={"color": "g1", "ptsize": 3})  # sizes asked for: points
    assert not [im for ax in fig.axes for im in ax.images if im.get_gid() == _spot_raster.GID]
    assert any(len(c.get_offsets()) == 1600 for ax in fig.axes for c in ax.collections)


def test_majority_helper_handles_missing_and_empty():
    flat = np.array([0, 0, 0, 2, 2])
    codes = np.array([1, 1, 0, -1, -1])
    assert list(_spot_raster._majority(flat, codes, 4)) == [1, -2, -1, -2]


@pytest.mark.parametrize("kind", ["domain", None])
def test_categorical_and_plain_layers_are_images(monkeypatch, kind):
    monkeypatch.setattr(_spot_raster, "AGGREGATE_ABOVE", 100)
    a = _grid_sample()
    opts = {"color": kind} if kind else {}
    im = _spot_image(em.pl.plot_spatial({"s": a}, plot_embeddings=opts))
    rgba = np.asarray(im.get_array())
    assert rgba.shape == (40, 40, 4) and (rgba[..., 3] > 0).all()
