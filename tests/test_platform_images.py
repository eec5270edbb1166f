"""The optional images of the imaging platforms: MERSCOPE mosaics and CosMx FOV images, placed in
the cells' frame in the scanpy layout (fixtures: tests/data/platforms, written by
dev/make_platform_fixtures.py, where the cells are drawn as bright discs at their positions)."""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import experimat as em
from experimat.io.readers._platform_images import Piece, compose

P = Path(__file__).parent / "data" / "platforms"
pytest.importorskip("tifffile")


def _image(a):
    entry = next(iter(a.uns["spatial"].values()))
    img = entry["images"]["hires"]
    return (img if img.ndim == 2 else img.mean(2)), entry["scalefactors"]["tissue_hires_scalef"], entry


def _at(img, s, xy):
    """Canvas values at global points (scanpy layout: pixel (i, j) is centred on (j / s, i / s))."""
    r, c = np.round(xy[:, 1] * s).astype(int), np.round(xy[:, 0] * s).astype(int)
    return img[r, c]


def test_merscope_mosaic_lies_under_the_cells():
    a = em.io.read(P / "merscope")
    img, s, entry = _image(a)
    assert entry["metadata"]["image_file"] == "mosaic_DAPI_z3.tif" and img.dtype == np.uint8 and max(img.shape) <= 4000
    m = entry["scalefactors"]["transformation_matrix"]
    assert 0 < s <= m[0, 0] / np.ceil(5600 / 4000)  # never finer than the strided mosaic
    xy = np.asarray(a.obsm["spatial"])
    assert (_at(img, s, xy) > 200).all()  # every cell sits on its nucleus
    assert (_at(img, s, xy + [15.0, 0.0]) < 60).mean() > 0.8  # 15 µm away: mostly background
    fig = em.pl.plot_spatial({"m": a}, channels="hires/0", plot_embeddings={"color": "volume"})  # read by the same rule
    assert fig.axes and fig.axes[0].images


def test_merscope_stain_and_z_choice(tmp_path):
    a = em.io.read_merscope(P / "merscope", image_stain="PolyT")
    img, s, entry = _image(a)
    assert entry["metadata"]["image_file"] == "mosaic_PolyT_z3.tif"
    xy = np.asarray(a.obsm["spatial"])
    half = len(xy) // 2  # the fixture's PolyT mosaic shows only the first half of the cells
    cbg = pd.read_csv(P / "merscope" / "cell_by_gene.csv", dtype={"cell": str})
    first = set(cbg["cell"][:half])
    on = np.array([n in first for n in a.obs_names])
    vals = _at(img, s, xy)
    assert (vals[on] > 200).all() and (vals[~on] < 60).mean() > 0.8
    with pytest.warns(em.ExperimatWarning, match="no z layer 5"):
        b = em.io.read_merscope(P / "merscope", z_layer=5)
    assert _image(b)[2]["metadata"]["image_file"] == "mosaic_DAPI_z3.tif"
    assert not em.io.read(P / "merscope", load_images=False).uns["spatial"]["merscope"]["images"]
    d = tmp_path / "merscope"
    shutil.copytree(P / "merscope", d)
    (d / "images" / "micron_to_mosaic_pixel_transform.csv").unlink()
    with pytest.warns(em.ExperimatWarning, match="no micron_to_mosaic_pixel_transform"):
        c = em.io.read_merscope(d)
    assert not c.uns["spatial"]["merscope"]["images"]


def test_cosmx_fov_images_are_stitched_under_the_cells():
    a = em.io.read(P / "cosmx")
    img, s, entry = _image(a)
    assert entry["metadata"]["image_folder"] == "CellComposite" and max(img.shape) <= 4000
    xy = np.asarray(a.obsm["spatial"])
    assert (_at(img, s, xy) > 150).all()
    assert (_at(img, s, xy - [300.0, 0.0]) < 100).mean() > 0.7  # 300 px (5 disc radii) away: mostly background


def test_cosmx_fov_y_axis_against_the_global_one(tmp_path):
    """Exports whose global y runs against the local one: the FOV images are flipped to match."""
    d = tmp_path / "cosmx"
    shutil.copytree(P / "cosmx", d)
    meta = pd.read_csv(d / "Run5642_S3_metadata_file.csv.gz")
    fovs = pd.read_csv(d / "Run5642_S3_fov_positions_file.csv.gz").set_index("fov")
    meta["CenterY_global_px"] = fovs.loc[meta["fov"], "y_global_px"].to_numpy() + 4256 - meta["CenterY_local_px"]
    with gzip.open(d / "Run5642_S3_metadata_file.csv.gz", "wt") as fh:
        meta.to_csv(fh, index=False)
    a = em.io.read_cosmx(d)
    img, s, _ = _image(a)
    assert (_at(img, s, np.asarray(a.obsm["spatial"])) > 150).all()


def test_cosmx_without_images_or_with_unplaceable_fovs(tmp_path):
    d = tmp_path / "cosmx"
    shutil.copytree(P / "cosmx", d)
    shutil.copy(d / "CellComposite" / "CellComposite_F001.jpg", d / "CellComposite" / "CellComposite_F009.jpg")
    with pytest.warns(em.ExperimatWarning, match=r"FOV\(s\) \['9'\]"):
        a = em.io.read_cosmx(d)
    assert a.uns["spatial"]["Run5642_S3"]["images"]["hires"].ndim == 3
    shutil.rmtree(d / "CellComposite")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = em.io.read_cosmx(d)
    assert not b.uns["spatial"]["Run5642_S3"]["images"] and "tissue_hires_scalef" not in b.uns["spatial"]["Run5642_S3"]["scalefactors"]


def test_compose_places_and_crops():
    img = np.zeros((10, 20), dtype=np.uint8)
    img[:, 10:] = 255
    canvas, s = compose([Piece(img, x0=-5.0, y0=2.0, ux=1.0, uy=1.0)], max_side=100)
    assert s == 1.0 and canvas.shape == (12, 15)  # x from 0 (the 5 px left of the origin are cut) to 15
    assert (canvas[:2] == 0).all() and (canvas[2:, :5] == 0).all() and (canvas[2:, 5:] == 255).all()
    flipped, _ = compose([Piece(np.arange(4, dtype=np.uint8)[:, None] * 80, 0.0, 0.0, 1.0, 1.0, flip_y=True)], 100)
    assert list(flipped[:, 0]) == [240, 160, 80, 0]
