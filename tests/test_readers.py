"""Readers on every shipped layout (real data), compared with scanpy where it reads them."""

from __future__ import annotations

import shutil
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import DATA, LAYOUTS, MUSCLE

import experimat as em


def test_spaceranger_1_hires_matches_scanpy():
    import scanpy as sc

    a = em.io.read_spaceranger(LAYOUTS / "spaceranger_1.0_hires", library_id="lib")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sc.read_visium(LAYOUTS / "spaceranger_1.0_hires")
    assert a.shape == ref.shape == (100, 100)
    assert (a.X != ref.X).nnz == 0
    np.testing.assert_array_equal(a.obsm["spatial"], ref.obsm["spatial"])
    lib = next(iter(ref.uns["spatial"]))
    assert set(a.uns["spatial"]["lib"]["images"]) == {"hires", "lowres"}
    for res in ("hires", "lowres"):
        ours = a.uns["spatial"]["lib"]["images"][res]
        theirs = ref.uns["spatial"][lib]["images"][res]
        assert ours.dtype == np.uint8 and ours.shape[:2] == theirs.shape[:2]
        np.testing.assert_allclose(ours[..., :3] / 255.0, theirs[..., :3], atol=1 / 255 + 1e-6)
    assert a.uns["spatial"]["lib"]["scalefactors"] == ref.uns["spatial"][lib]["scalefactors"]
    assert a.layers["counts"].dtype == np.int32
    assert np.array_equal(a.layers["counts"].toarray(), a.X.toarray())
    assert a.obsm["spatial.array"].shape == (100, 2)


def test_spaceranger_missing_hires_warns_once():
    with pytest.warns(em.ExperimatWarning, match="tissue_hires_image.png") as rec:
        a = em.io.read_spaceranger(MUSCLE / "Vis5A_2dpi")
    assert len([w for w in rec if "hires" in str(w.message)]) == 1
    assert a.shape == (982, 33217)
    assert list(a.uns["spatial"]["Vis5A_2dpi"]["images"]) == ["lowres"]
    assert a.layers["counts"].sum() == a.X.sum()


def test_in_tissue_filter(tmp_path):
    full = em.io.read_spaceranger(LAYOUTS / "seurat_lowres", in_tissue_only=False)
    kept = em.io.read_spaceranger(LAYOUTS / "seurat_lowres")
    assert kept.n_obs == int((full.obs["in_tissue"] == 1).sum())


def test_spaceranger_2_positions_with_header(tmp_path):
    dst = tmp_path / "sr2"
    shutil.copytree(LAYOUTS / "spaceranger_1.0_hires", dst)
    pos = pd.read_csv(dst / "spatial" / "tissue_positions_list.csv", header=None)
    pos.columns = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    pos.to_csv(dst / "spatial" / "tissue_positions.csv", index=False)
    (dst / "spatial" / "tissue_positions_list.csv").unlink()
    a = em.io.read(dst)
    b = em.io.read(LAYOUTS / "spaceranger_1.0_hires")
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])


def test_seurat_h5_without_library_ids():
    a = em.io.read(LAYOUTS / "seurat_lowres")
    assert a.n_vars == 100 and a.n_obs > 0
    assert "lowres" in a.uns["spatial"]["seurat_lowres"]["images"]


def test_probe_matrix():
    a = em.io.read(LAYOUTS / "probe_2.1.0_raw_probe_bc_matrix.h5")
    assert a.shape == (4987, 1000)
    assert a.var_names[0] == "Itgb2l|2ef1e7b"
    assert "probe_gene_id" in a.var


def test_mtx_folder_and_v2_h5(tmp_path):
    import scipy.io

    ref = em.io.read_10x_h5(LAYOUTS / "spaceranger_1.0_hires" / "filtered_feature_bc_matrix.h5")
    mtx = tmp_path / "mtx"
    mtx.mkdir()
    scipy.io.mmwrite(mtx / "matrix.mtx", sp.csr_matrix(ref.layers["counts"]).T.astype(np.int64))
    pd.DataFrame({"id": ref.var["gene_ids"], "name": ref.var_names, "t": "Gene Expression"}).to_csv(mtx / "features.tsv", sep="\t", header=False, index=False)
    pd.Series(ref.obs_names).to_csv(mtx / "barcodes.tsv", sep="\t", header=False, index=False)
    a = em.io.read(mtx)
    assert (a.X != ref.X).nnz == 0 and list(a.var_names) == list(ref.var_names)
    # a Cell Ranger 2 layout: one group per genome with genes / gene_names
    v2 = tmp_path / "v2.h5"
    m = sp.csc_matrix(ref.layers["counts"].T)
    with h5py.File(v2, "w") as f:
        g = f.create_group("GRCh38")
        g["data"], g["indices"], g["indptr"] = m.data, m.indices, m.indptr
        g["shape"] = np.array(m.shape)
        g["barcodes"] = np.array(ref.obs_names, dtype="S")
        g["genes"] = np.array(ref.var["gene_ids"], dtype="S")
        g["gene_names"] = np.array(ref.var_names, dtype="S")
    b = em.io.read(v2)
    assert (b.X != ref.X).nnz == 0 and list(b.var["gene_ids"]) == list(ref.var["gene_ids"])


def test_h5ad_roundtrip(tmp_path):
    a = em.io.read(LAYOUTS / "spaceranger_1.0_hires")
    a.write_h5ad(tmp_path / "a.h5ad")
    b = em.io.read(tmp_path / "a.h5ad")
    assert (a.X != b.X).nnz == 0


def test_count_table_coordinates_from_names():
    a = em.io.read(DATA / "st_tables" / "mob_rep11_40x60.csv.gz")
    assert a.shape == (40, 60)
    x, y = map(float, a.obs_names[0].split("x"))
    np.testing.assert_array_equal(a.obsm["spatial"][0], [x, y])
    assert a.layers["counts"].dtype == np.int32


def test_count_table_with_alignment_table():
    a = em.io.read_count_table(DATA / "st_tables" / "stutility_mob1_40x50.tsv.gz",
                               coordinates=DATA / "st_tables" / "stutility_mob1_alignment.tsv.gz")
    assert a.n_obs == 30  # the 10 spots outside the tissue are dropped
    al = pd.read_csv(DATA / "st_tables" / "stutility_mob1_alignment.tsv.gz", sep="\t")
    al.index = al.x.astype(str) + "x" + al.y.astype(str)
    np.testing.assert_allclose(a.obsm["spatial"], al.loc[a.obs_names, ["pixel_x", "pixel_y"]].to_numpy())


def test_reader_errors(tmp_path):
    with pytest.raises(em.InvalidInputError, match="does not exist"):
        em.io.read(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(em.InvalidInputError, match="layout"):
        em.io.read(tmp_path / "empty")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"g1": [1.5, 2.0]}, index=["1x1", "2x2"]).to_csv(bad)
    with pytest.raises(em.InvalidInputError, match="fractional"):
        em.io.read(bad)
