"""SpatialData both ways (the optional ``spatialdata`` extra; skipped where it is not installed, except where
``EXPERIMAT_REQUIRE_SPATIALDATA=1`` says it must be: CI runs this file in a venv of its own with the extra, see
``.ci/run``)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import DATA

import experimat as em

if os.environ.get("EXPERIMAT_REQUIRE_SPATIALDATA") == "1":
    import spatialdata as sd
else:
    sd = pytest.importorskip("spatialdata")
HD = DATA / "platforms" / "visium_hd" / "outs"


def test_roundtrip_visium_hd_bins(tmp_path):
    a = em.io.read_visium_hd(HD)
    sdata = em.io.to_spatialdata({"hd": a})
    assert set(sdata.tables) == {"hd"} and "hd_spots" in sdata.shapes and "hd_hires" in sdata.images
    b = em.io.from_spatialdata(sdata, table="hd", coordinate_system="hd")
    np.testing.assert_allclose(b.obsm["spatial"], a.obsm["spatial"])
    assert (b.layers["counts"] != a.layers["counts"]).nnz == 0 and b.layers["counts"].dtype == np.int32
    sf_a = a.uns["spatial"]["visium_hd"]["scalefactors"]
    sf_b = b.uns["spatial"]["hd"]["scalefactors"]
    assert sf_b["tissue_hires_scalef"] == pytest.approx(sf_a["tissue_hires_scalef"])
    assert sf_b["spot_diameter_fullres"] == pytest.approx(sf_a["spot_diameter_fullres"])
    np.testing.assert_array_equal(b.uns["spatial"]["hd"]["images"]["hires"], a.uns["spatial"]["visium_hd"]["images"]["hires"])
    # through a .zarr store and em.io.read
    sdata.write(tmp_path / "hd.zarr")
    c = em.io.read(tmp_path / "hd.zarr", table="hd", coordinate_system="hd")
    np.testing.assert_allclose(c.obsm["spatial"], a.obsm["spatial"])
    with pytest.raises(em.InvalidInputError, match="table="):
        em.io.read(tmp_path / "hd.zarr")


def test_polygons_under_an_affine_map():
    import anndata as ad
    import scipy.sparse as sp
    from geopandas import GeoDataFrame
    from shapely.geometry import Polygon
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Affine

    squares = [Polygon([(x, y), (x + 2, y), (x + 2, y + 2), (x, y + 2)]) for x, y in [(0, 0), (10, 0), (0, 10)]]
    m = np.array([[2.0, 0, 5], [0, 3.0, -1], [0, 0, 1]])
    shapes = ShapesModel.parse(GeoDataFrame(geometry=squares, index=[7, 8, 9]),
                               transformations={"global": Affine(m, input_axes=("x", "y"), output_axes=("x", "y"))})
    t = ad.AnnData(sp.csr_matrix(np.array([[1, 0], [2, 3], [0, 4]], dtype=np.float32)),
                   obs=pd.DataFrame({"region": pd.Categorical(["cells"] * 3), "cell": [9, 7, 8]}, index=["a", "b", "c"]))
    t = TableModel.parse(t, region="cells", region_key="region", instance_key="cell")
    sdata = sd.SpatialData(shapes={"cells": shapes}, tables={"table": t})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = em.io.from_spatialdata(sdata)
    centres = np.array([[1, 11], [1, 1], [11, 1]], dtype=float)  # rows follow the instance ids 9, 7, 8
    np.testing.assert_allclose(a.obsm["spatial"], centres @ m[:2, :2].T + m[:2, 2])
    assert a.layers["counts"].dtype == np.int32
    with pytest.raises(em.InvalidInputError, match="coordinate system 'other'"):
        em.io.from_spatialdata(sdata, coordinate_system="other")
    with pytest.raises(em.KeyNotFoundError, match="table"):
        em.io.from_spatialdata(sdata, table="nope")


def test_experiment_to_spatialdata():
    sheet = pd.DataFrame({"sample": ["hd", "xen"], "modality": ["spatial-bin", "spatial-cell"], "taxa": "hsa",
                          "path": [str(HD), str(DATA / "platforms" / "xenium")]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expm = em.Experiment.from_table(sheet, harmonize_genes=False)
    sdata = em.io.to_spatialdata(expm)
    assert set(sdata.tables) == {"hd", "xen"} and "xen_hires" in sdata.images
    x = em.io.from_spatialdata(sdata, table="xen", coordinate_system="xen")
    np.testing.assert_allclose(x.obsm["spatial"], expm.spatial_cell["xen"].obsm["spatial"])


def test_multiscale_image_level_and_scale(monkeypatch):
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    from experimat.io.readers import _spatialdata

    a = em.io.read_visium_hd(HD)
    sdata = em.io.to_spatialdata({"hd": a}, images=False)
    img = np.zeros((3, 400, 400), dtype=np.uint8)
    img[:, 100:300, 100:300] = 200
    sdata.images["big"] = Image2DModel.parse(img, dims=("c", "y", "x"), scale_factors=[2, 2],
                                             transformations={"hd": Scale([5.0, 5.0], axes=("x", "y"))})
    monkeypatch.setattr(_spatialdata, "MAX_IMAGE_SIDE", 150)  # forces the third level (100 x 100 px)
    b = em.io.from_spatialdata(sdata, table="hd", coordinate_system="hd")
    lib = b.uns["spatial"]["hd"]
    assert lib["images"]["hires"].shape == (100, 100, 3)
    assert lib["scalefactors"]["tissue_hires_scalef"] == pytest.approx(1 / (5.0 * 4))
