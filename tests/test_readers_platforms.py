"""Readers of today's platforms on small fixture folders in the published layouts (tests/data/platforms)."""

from __future__ import annotations

import gzip
import json
import shutil
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import DATA

import experimat as em

P = DATA / "platforms"
HD = P / "visium_hd" / "outs"


def _h5_counts(path):
    """Cells x features counts and names straight from a 10x h5 file (independent of the reader)."""
    with h5py.File(path, "r") as f:
        g = f["matrix"]
        m = sp.csc_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=tuple(g["shape"][:])).T.tocsr()
        return m, [b.decode() for b in g["barcodes"][:]], [b.decode() for b in g["features"]["name"][:]], \
            [b.decode() for b in g["features"]["feature_type"][:]]


def test_visium_hd_bins_match_parquet_and_scanpy():
    import scanpy as sc

    a = em.io.read_visium_hd(HD, bin_size=8)
    folder = HD / "binned_outputs" / "square_008um"
    pos = pd.read_parquet(folder / "spatial" / "tissue_positions.parquet").set_index("barcode")
    assert a.n_obs == int(pos["in_tissue"].sum()) == 121
    np.testing.assert_array_equal(a.obsm["spatial"], pos.loc[a.obs_names, ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy())
    np.testing.assert_array_equal(a.obsm["spatial.array"], pos.loc[a.obs_names, ["array_row", "array_col"]].to_numpy())
    ref = sc.read_10x_h5(folder / "filtered_feature_bc_matrix.h5")
    assert list(ref.obs_names) == list(a.obs_names)
    assert (a.layers["counts"] != ref.X).nnz == 0 and a.layers["counts"].dtype == np.int32
    lib = a.uns["spatial"]["visium_hd"]
    sf = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    assert lib["scalefactors"] == sf and sf["bin_size_um"] == 8.0
    assert lib["images"]["hires"].shape[:2] == (160, 160) and lib["metadata"]["bin_size_um"] == "8.0"
    # the bin side in pixels is bin_size_um / microns_per_pixel, and neighbouring bins are one side apart
    step = np.diff(np.sort(np.unique(a.obsm["spatial"][:, 0])))
    np.testing.assert_allclose(step, sf["bin_size_um"] / sf["microns_per_pixel"])


def test_visium_hd_bin_sizes_and_errors(tmp_path):
    b16 = em.io.read(HD, bin_size=16)
    assert b16.n_obs == 25 and b16.uns["spatial"]["visium_hd"]["scalefactors"]["bin_size_um"] == 16.0
    direct = em.io.read(HD / "binned_outputs" / "square_016um", library_id="x")
    assert (direct.X != b16.X).nnz == 0
    with pytest.raises(em.InvalidInputError, match=r"bin size 2 .*square_008um"):
        em.io.read_visium_hd(HD, bin_size=2)
    with pytest.raises(em.InvalidInputError, match="bin_size"):  # an option the reader does not take
        em.io.read(P / "merscope", bin_size=8)
    bad = tmp_path / "outs"
    shutil.copytree(HD, bad)
    sf_path = bad / "binned_outputs" / "square_008um" / "spatial" / "scalefactors_json.json"
    sf = json.loads(sf_path.read_text())
    sf["bin_size_um"] = 16.0
    sf_path.write_text(json.dumps(sf))
    with pytest.raises(em.InvalidInputError, match="bin_size_um=16"):
        em.io.read_visium_hd(bad, bin_size=8)
    full = em.io.read_visium_hd(HD, in_tissue_only=False)
    assert full.n_obs == 121  # the filtered matrix holds in-tissue bins only


def test_visium_hd_segmented_cells():
    a = em.io.read(HD, modality="spatial-cell")
    assert em.io.detect_format(HD) == "visium_hd" and em.io.detect_format(HD, modality="spatial-cell") == "visium_hd_cells"
    m, bc, _, _ = _h5_counts(HD / "segmented_outputs" / "filtered_feature_cell_matrix.h5")
    assert list(a.obs_names) == bc and (a.layers["counts"] != m).nnz == 0
    geo = json.loads((HD / "segmented_outputs" / "cell_segmentations.geojson").read_text())
    ring = np.array(geo["features"][0]["geometry"]["coordinates"][0])[:-1]
    # a regular octagon: its centroid is the vertex mean, its area 2 r^2 sqrt(2)
    np.testing.assert_allclose(a.obsm["spatial"][0], ring.mean(axis=0), atol=1e-3)
    r = np.linalg.norm(ring[0] - ring.mean(axis=0))
    np.testing.assert_allclose(a.obs["cell_area_px"].iloc[0], 2 * np.sqrt(2) * r**2, rtol=1e-3)
    mpp = a.uns["spatial"]["visium_hd"]["scalefactors"]["microns_per_pixel"]
    np.testing.assert_allclose(a.obs["cell_area_um2"], a.obs["cell_area_px"] * mpp**2)


def test_xenium_controls_apart_and_consistent_with_cells_table():
    a = em.io.read(P / "xenium")
    m, _bc, names, types = _h5_counts(P / "xenium" / "cell_feature_matrix.h5")
    types = np.array(types)
    genes = types == "Gene Expression"
    assert list(a.var_names) == list(np.array(names)[genes]) and (a.layers["counts"] != m[:, genes]).nnz == 0
    assert a.obsm["controls"].shape == (60, int((~genes).sum())) and sp.issparse(a.obsm["controls"])
    assert list(a.uns["controls"]["names"]) == list(np.array(names)[~genes])
    assert set(a.uns["controls"]["kinds"]) == {"Negative Control Probe", "Negative Control Codeword", "Unassigned Codeword",
                                               "Deprecated Codeword"}
    # the vendor's own per-cell totals agree with what went where
    np.testing.assert_array_equal(np.asarray(a.layers["counts"].sum(1)).ravel(), a.obs["transcript_counts"])
    ctrl_total = a.obs[["control_probe_counts", "control_codeword_counts", "unassigned_codeword_counts",
                        "deprecated_codeword_counts"]].sum(1)
    np.testing.assert_array_equal(a.obs["control_counts"], ctrl_total)
    cells = pd.read_parquet(P / "xenium" / "cells.parquet").set_index("cell_id")
    np.testing.assert_array_equal(a.obsm["spatial"], cells.loc[a.obs_names, ["x_centroid", "y_centroid"]].to_numpy())
    lib = a.uns["spatial"]["xenium"]
    assert lib["metadata"]["spatial_unit"] == "um" and lib["scalefactors"]["pixel_size_um"] == 0.2125
    img = lib["images"]["hires"]
    assert img.dtype == np.uint8 and img.shape == (1411, 1882)
    # nuclei were drawn at the centroids: the image is bright there
    px = np.round(a.obsm["spatial"] * lib["scalefactors"]["tissue_hires_scalef"]).astype(int)
    assert (img[px[:, 1], px[:, 0]] > 200).mean() > 0.9


def test_xenium_csv_without_parquet_or_image(tmp_path):
    d = tmp_path / "xen"
    shutil.copytree(P / "xenium", d)
    (d / "cells.parquet").unlink()
    shutil.rmtree(d / "morphology_focus")
    with pytest.warns(em.ExperimatWarning, match="no morphology image"):
        a = em.io.read(d)
    b = em.io.read(P / "xenium", load_images=False)
    np.testing.assert_allclose(a.obsm["spatial"], b.obsm["spatial"])
    assert a.uns["spatial"]["xen"]["images"] == {}
    (d / "cells.csv.gz").unlink()
    with pytest.raises(em.InvalidInputError, match="cells.parquet nor cells.csv.gz"):
        em.io.read_xenium(d)


def test_cosmx_fov_offsets_controls_and_background():
    a = em.io.read(P / "cosmx")
    assert a.n_obs == 45 and not (a.obs["cell_ID"] == 0).any()  # the cell_ID 0 rows are transcripts outside cells
    assert list(a.uns["controls"]["names"]) == ["NegPrb1", "NegPrb2", "NegPrb3", "SystemControl1"]
    assert not a.var_names.str.startswith("NegPrb").any()
    meta = pd.read_csv(P / "cosmx" / "Run5642_S3_metadata_file.csv.gz")
    meta.index = meta["fov"].astype(str) + "_" + meta["cell_ID"].astype(str)
    np.testing.assert_array_equal(a.obsm["spatial"], meta.loc[a.obs_names, ["CenterX_global_px", "CenterY_global_px"]].to_numpy())
    np.testing.assert_array_equal(a.obsm["spatial.fov"], meta.loc[a.obs_names, ["CenterX_local_px", "CenterY_local_px"]].to_numpy())
    expr = pd.read_csv(P / "cosmx" / "Run5642_S3_exprMat_file.csv.gz")
    expr.index = expr["fov"].astype(str) + "_" + expr["cell_ID"].astype(str)
    np.testing.assert_array_equal(a.layers["counts"].toarray(), expr.loc[a.obs_names, list(a.var_names)].to_numpy())
    assert a.uns["spatial"]["Run5642_S3"]["metadata"]["spatial_unit"] == "pixel"


def test_cosmx_global_from_fov_offsets(tmp_path):
    d = tmp_path / "cosmx"
    shutil.copytree(P / "cosmx", d)
    meta = pd.read_csv(d / "Run5642_S3_metadata_file.csv.gz")
    with gzip.open(d / "Run5642_S3_metadata_file.csv.gz", "wt") as fh:
        meta.drop(columns=["CenterX_global_px", "CenterY_global_px"]).to_csv(fh, index=False)
    a = em.io.read_cosmx(d)
    ref = em.io.read_cosmx(P / "cosmx")
    np.testing.assert_allclose(a.obsm["spatial"], ref.obsm["spatial"], atol=0.11)  # the export rounds to 0.1 px
    (d / "Run5642_S3_fov_positions_file.csv.gz").unlink()
    with pytest.raises(em.InvalidInputError, match="fov_file"):
        em.io.read_cosmx(d)


def test_merscope_blanks_and_transform():
    a = em.io.read(P / "merscope")
    assert a.n_vars == 24 and list(a.uns["controls"]["names"]) == [f"Blank-{i}" for i in range(5)]
    cbg = pd.read_csv(P / "merscope" / "cell_by_gene.csv", index_col=0)
    cbg.index = cbg.index.astype(str)
    np.testing.assert_array_equal(a.obsm["controls"].toarray(), cbg.loc[a.obs_names, a.uns["controls"]["names"]].to_numpy())
    np.testing.assert_array_equal(a.layers["counts"].toarray(), cbg.loc[a.obs_names, a.var_names].to_numpy())
    meta = pd.read_csv(P / "merscope" / "cell_metadata.csv", index_col=0)
    meta.index = meta.index.astype(str)
    np.testing.assert_array_equal(a.obsm["spatial"], meta.loc[a.obs_names, ["center_x", "center_y"]].to_numpy())
    m = a.uns["spatial"]["merscope"]["scalefactors"]["transformation_matrix"]
    assert m.shape == (3, 3) and m[0, 0] == pytest.approx(9.2057)


def test_chunked_csv_equals_whole(tmp_path):
    from experimat.io.readers._common import csv_to_sparse

    ids, feats, X = csv_to_sparse(P / "merscope" / "cell_by_gene.csv", ["cell"], index_col=0, chunksize=7)
    whole = pd.read_csv(P / "merscope" / "cell_by_gene.csv", index_col=0)
    assert list(feats) == list(whole.columns) and (X.toarray() == whole.to_numpy()).all()
    assert list(ids["cell"].astype(str)) == list(whole.index.astype(str))


def test_parquet_needs_the_platforms_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.split(".")[0] == "pyarrow":
            raise ImportError("no pyarrow")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    monkeypatch.setattr("importlib.import_module", lambda n, *a: fake(n))
    with pytest.raises(em.MissingDependencyError, match=r"experimat\[platforms\]"):
        em.io.read_visium_hd(HD)


def test_st_table_with_image(tmp_path):
    from PIL import Image

    table = DATA / "st_tables" / "mob_rep11_40x60.csv.gz"
    plain = em.io.read(table)
    xy = plain.obsm["spatial"]
    img = np.full((int(xy[:, 1].max() * 10) + 20, int(xy[:, 0].max() * 10) + 20, 3), 230, dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "he.png")
    a = em.io.read(table, image=tmp_path / "he.png", image_scale=10.0, library_id="mob")
    lib = a.uns["spatial"]["mob"]
    assert lib["images"]["hires"].shape == img.shape and lib["scalefactors"]["tissue_hires_scalef"] == 10.0
    assert (a.X != plain.X).nnz == 0
    with pytest.raises(em.InvalidInputError, match="image_scale"):
        em.io.read(table, image=tmp_path / "he.png")
    with pytest.warns(em.ExperimatWarning, match="beyond the image"):
        em.io.read(table, image=tmp_path / "he.png", image_scale=100.0)


def test_from_table_detects_every_platform(tmp_path):
    sheet = pd.DataFrame({
        "sample": ["hd8", "hdcells", "xen", "cos", "mer"],
        "modality": ["spatial-bin", "spatial-cell", "spatial-cell", "spatial-cell", "spatial-cell"],
        "taxa": "hsa",
        "path": [str(HD), str(HD), str(P / "xenium"), str(P / "cosmx"), str(P / "merscope")],
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expm = em.Experiment.from_table(sheet, project=tmp_path / "proj", harmonize_genes=False)
    assert expm.spatial_bin["hd8"].n_obs == 121
    assert expm.spatial_cell["hdcells"].n_obs == 40 and "cell_area_px" in expm.spatial_cell["hdcells"].obs
    expm.close()
    back = em.load_experiment(tmp_path / "proj", mode="r")
    x = back.spatial_cell["xen"]
    assert sp.issparse(x.obsm["controls"]) and next(iter(x.uns["controls"]["names"])) == "NegControlProbe_00000"
    assert x.uns["spatial"]["xen"]["metadata"]["platform"] == "Xenium"
    assert back.spatial_cell["cos"].obsm["spatial"].shape == (45, 2)


def test_from_table_bin_size_column(tmp_path):
    sheet = pd.DataFrame({"sample": ["hd16"], "modality": ["spatial-bin"], "taxa": ["hsa"], "path": [str(HD)], "bin_size": ["16"]})
    expm = em.Experiment.from_table(sheet, harmonize_genes=False)
    assert expm.spatial_bin["hd16"].n_obs == 25


def test_cosmx_export_with_string_cell_column(tmp_path):
    d = tmp_path / "cosmx"
    shutil.copytree(P / "cosmx", d)
    expr = pd.read_csv(d / "Run5642_S3_exprMat_file.csv.gz")
    expr.insert(2, "cell", "c_1_" + expr["fov"].astype(str) + "_" + expr["cell_ID"].astype(str))
    with gzip.open(d / "Run5642_S3_exprMat_file.csv.gz", "wt") as fh:
        expr.to_csv(fh, index=False)
    a = em.io.read_cosmx(d)
    ref = em.io.read_cosmx(P / "cosmx")
    assert list(a.var_names) == list(ref.var_names) and (a.layers["counts"] != ref.layers["counts"]).nnz == 0
