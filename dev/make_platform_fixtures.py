"""Write the small platform fixture folders of tests/data/platforms in the published layouts.

Run from the repository root: ``python dev/make_platform_fixtures.py`` (needs pyarrow and
tifffile: ``pip install 'experimat[platforms]'``). Deterministic (seeded); the counts are
synthetic, the file names, columns, dtypes and folder layout follow the vendors' public
specifications:

- Visium HD (Space Ranger 3.x/4.x): 10x Genomics, "Space Ranger outputs: binned outputs"
  and "segmented outputs" (support.10xgenomics.com > Visium HD > Space Ranger > outputs),
  "Feature-barcode matrices (HDF5)" (the v3 ``matrix/`` layout), "Spatial outputs"
  (``tissue_positions.parquet`` columns, ``scalefactors_json.json`` keys incl. ``bin_size_um``,
  ``microns_per_pixel``); barcode forms ``s_008um_<row:05>_<col:05>-1`` and
  ``cellid_<id:09>-1`` and the GeoJSON ``properties.cell_id`` as parsed by spatialdata-io's
  ``visium_hd`` reader (scverse/spatialdata-io, src/spatialdata_io/readers/visium_hd.py).
- Xenium: 10x Genomics, "Xenium Onboard Analysis output files" (``cell_feature_matrix.h5``
  feature types Gene Expression / Negative Control Probe / Negative Control Codeword /
  Unassigned Codeword / Deprecated Codeword, ``cells.parquet`` / ``cells.csv.gz`` columns,
  ``experiment.xenium`` JSON keys incl. ``pixel_size``, ``morphology_focus/`` OME-TIFF of XOA 2.0).
- CosMx SMI: NanoString, "CosMx SMI Data Format" / AtoMx flat-file export
  (``<run>_exprMat_file.csv`` with ``fov, cell_ID`` and one column per target incl.
  ``NegPrb*``; ``<run>_metadata_file.csv`` with ``CenterX/Y_local_px``, ``CenterX/Y_global_px``;
  ``<run>_fov_positions_file.csv`` with ``fov, x_global_px, y_global_px``; the per-FOV
  ``CellComposite/CellComposite_F<fov:03>.jpg`` images of 4256 x 4256 px), as read by
  squidpy.read.nanostring and spatialdata-io's cosmx reader.
- MERSCOPE: Vizgen, "MERSCOPE Output Data Specifications" (``cell_by_gene.csv`` with ``cell``
  then genes and ``Blank-*``; ``cell_metadata.csv`` with ``fov, volume, center_x, center_y,
  min_x, max_x, min_y, max_y`` in µm; ``images/micron_to_mosaic_pixel_transform.csv`` and the
  mosaics ``images/mosaic_<stain>_z<z>.tif``, here DAPI and PolyT at z 3, tiled uint16 TIFFs in the
  mosaic pixel frame), as read by squidpy.read.vizgen and spatialdata-io's merscope reader.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image

ROOT = Path(__file__).resolve().parents[1] / "tests" / "data" / "platforms"
RNG = np.random.default_rng(20261201)
GENES = [f"Gene{i:02d}" for i in range(24)]


def write_10x_h5(path: Path, counts: sp.spmatrix, barcodes, names, ids, types, genome="GRCh38") -> None:
    """The Cell Ranger >= 3 HDF5 layout: ``matrix/`` with CSC genes x barcodes and ``features/``."""
    m = sp.csc_matrix(sp.csr_matrix(counts).T.astype(np.int32))  # features x barcodes, CSC over barcodes
    m.sort_indices()
    with h5py.File(path, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = 2
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        g.create_dataset("data", data=m.data.astype(np.int32))
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(m.shape, dtype=np.int32))
        ft = g.create_group("features")
        ft.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        ft.create_dataset("feature_type", data=np.array(types, dtype="S"))
        ft.create_dataset("genome", data=np.array([genome] * len(names), dtype="S"))
        ft.create_dataset("id", data=np.array(ids, dtype="S"))
        ft.create_dataset("name", data=np.array(names, dtype="S"))


def counts_with_domains(n: int, n_genes: int, domain: np.ndarray, mean: float = 3.0) -> sp.csr_matrix:
    """Poisson counts; the first 4 genes are 6x higher in domain 1 (a recoverable pattern)."""
    lam = np.full((n, n_genes), mean / n_genes * 8)
    lam[domain == 1, :4] *= 6
    return sp.csr_matrix(RNG.poisson(lam).astype(np.int32))


def png(path: Path, h: int, w: int) -> None:
    img = np.full((h, w, 3), 235, dtype=np.uint8)  # flat background (small, compressible files)
    img[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = [180, 120, 170]  # an H&E-ish tissue patch
    Image.fromarray(img).save(path)


# -- Visium HD -------------------------------------------------------------------------------------
def visium_hd() -> None:
    out = ROOT / "visium_hd" / "outs"
    mpp = 0.2738  # microns per full-resolution pixel
    hires_s, lowres_s = 0.08, 0.02
    full_h = full_w = 2000
    for bin_um, n_side in ((8, 12), (16, 6)):
        folder = out / "binned_outputs" / f"square_{bin_um:03d}um"
        (folder / "spatial").mkdir(parents=True, exist_ok=True)
        bin_px = bin_um / mpp
        rows, cols = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
        rows, cols = rows.ravel(), cols.ravel()
        barcodes = [f"s_{bin_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols)]
        in_tissue = ((rows > 0) & (cols > 0)).astype(np.int32)  # the first row and column lie outside the tissue
        pos = pd.DataFrame({
            "barcode": barcodes, "in_tissue": in_tissue, "array_row": rows.astype(np.int32), "array_col": cols.astype(np.int32),
            "pxl_row_in_fullres": 400 + (rows + 0.5) * bin_px, "pxl_col_in_fullres": 300 + (cols + 0.5) * bin_px,
        })
        pos.to_parquet(folder / "spatial" / "tissue_positions.parquet", index=False)
        keep = in_tissue == 1
        domain = (cols[keep] >= n_side // 2).astype(int)
        X = counts_with_domains(int(keep.sum()), len(GENES), domain)
        write_10x_h5(folder / "filtered_feature_bc_matrix.h5", X, np.array(barcodes)[keep], GENES,
                     [f"ENSG{i:011d}" for i in range(len(GENES))], ["Gene Expression"] * len(GENES))
        sf = {"spot_diameter_fullres": bin_px, "bin_size_um": float(bin_um), "microns_per_pixel": mpp,
              "regist_target_img_scalef": hires_s, "tissue_lowres_scalef": lowres_s, "fiducial_diameter_fullres": 400.0,
              "tissue_hires_scalef": hires_s}
        (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf, indent=2))
        png(folder / "spatial" / "tissue_hires_image.png", int(full_h * hires_s), int(full_w * hires_s))
        png(folder / "spatial" / "tissue_lowres_image.png", int(full_h * lowres_s), int(full_w * lowres_s))
    # segmented cells (Space Ranger 4)
    seg = out / "segmented_outputs"
    (seg / "spatial").mkdir(parents=True, exist_ok=True)
    n = 40
    cx, cy = 350 + 900 * RNG.random(n), 450 + 900 * RNG.random(n)
    feats = []
    for i in range(n):
        ang = np.linspace(0, 2 * np.pi, 9)[:-1]
        r = 25 + 5 * RNG.random()
        ring = np.column_stack([cx[i] + r * np.cos(ang), cy[i] + r * np.sin(ang)])
        ring = np.vstack([ring, ring[:1]])  # GeoJSON rings are closed
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring.round(3).tolist()]},
                      "properties": {"cell_id": i + 1}})
    (seg / "cell_segmentations.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    X = counts_with_domains(n, len(GENES), (cx > 800).astype(int), mean=20)
    write_10x_h5(seg / "filtered_feature_cell_matrix.h5", X, [f"cellid_{i + 1:09d}-1" for i in range(n)], GENES,
                 [f"ENSG{i:011d}" for i in range(len(GENES))], ["Gene Expression"] * len(GENES))
    sf = {"spot_diameter_fullres": 2 / mpp, "bin_size_um": 2.0, "microns_per_pixel": mpp, "regist_target_img_scalef": hires_s,
          "tissue_lowres_scalef": lowres_s, "fiducial_diameter_fullres": 400.0, "tissue_hires_scalef": hires_s}
    (seg / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf, indent=2))
    png(seg / "spatial" / "tissue_lowres_image.png", int(full_h * lowres_s), int(full_w * lowres_s))
    png(seg / "spatial" / "tissue_hires_image.png", int(full_h * hires_s), int(full_w * hires_s))


# -- Xenium ----------------------------------------------------------------------------------------
def xenium() -> None:
    import tifffile

    out = ROOT / "xenium"
    out.mkdir(parents=True, exist_ok=True)
    n = 60
    n_neg, n_code, n_unass, n_dep = 3, 2, 3, 1
    names = GENES + [f"NegControlProbe_{i:05d}" for i in range(n_neg)] + [f"NegControlCodeword_{i:04d}" for i in range(n_code)] \
        + [f"UnassignedCodeword_{i:04d}" for i in range(n_unass)] + [f"DeprecatedCodeword_{i:04d}" for i in range(n_dep)]
    types = ["Gene Expression"] * len(GENES) + ["Negative Control Probe"] * n_neg + ["Negative Control Codeword"] * n_code \
        + ["Unassigned Codeword"] * n_unass + ["Deprecated Codeword"] * n_dep
    x, y = 20 + 360 * RNG.random(n), 20 + 260 * RNG.random(n)
    X = sp.hstack([counts_with_domains(n, len(GENES), (x > 200).astype(int), mean=30),
                   sp.csr_matrix(RNG.poisson(0.3, (n, len(names) - len(GENES))))]).tocsr()
    letters = np.array(list("abcdefghijklmnop"))
    ids = ["".join(letters[RNG.integers(0, 16, 8)]) + "-1" for _ in range(n)]
    write_10x_h5(out / "cell_feature_matrix.h5", X, ids, names, names, types, genome="Unknown")
    Xd = X.toarray()
    t = np.array(types)
    cells = pd.DataFrame({
        "cell_id": ids, "x_centroid": x.astype(np.float32).astype(np.float64), "y_centroid": y.astype(np.float32).astype(np.float64),
        "transcript_counts": Xd[:, t == "Gene Expression"].sum(1), "control_probe_counts": Xd[:, t == "Negative Control Probe"].sum(1),
        "control_codeword_counts": Xd[:, t == "Negative Control Codeword"].sum(1),
        "unassigned_codeword_counts": Xd[:, t == "Unassigned Codeword"].sum(1),
        "deprecated_codeword_counts": Xd[:, t == "Deprecated Codeword"].sum(1),
        "total_counts": Xd.sum(1), "cell_area": 40 + 60 * RNG.random(n), "nucleus_area": 15 + 20 * RNG.random(n),
    })
    cells.to_parquet(out / "cells.parquet", index=False)
    with gzip.open(out / "cells.csv.gz", "wt") as fh:
        cells.to_csv(fh, index=False)
    pixel = 0.2125
    spec = {"major_version": 5, "minor_version": 0, "patch_version": 0, "run_name": "fixture_run", "region_name": "fixture_region",
            "preservation_method": "ffpe", "num_cells": n, "panel_name": "fixture panel", "panel_organism": "Human",
            "pixel_size": pixel, "analysis_sw_version": "xenium-2.0.0.10", "instrument_sw_version": "2.0.0.5",
            "z_step_size": 3.0, "images": {"morphology_filepath": "morphology.ome.tif",
                                           "morphology_focus_filepath": "morphology_focus/morphology_focus_0000.ome.tif"}}
    (out / "experiment.xenium").write_text(json.dumps(spec, indent=4))
    h, w = int(300 / pixel), int(400 / pixel)
    yy, xx = np.mgrid[0:h:8, 0:w:8] * pixel  # nuclei as discs at the cell centroids, built at 1/8 resolution
    small = np.full(yy.shape, 200, dtype=np.uint16)
    for cx_, cy_ in zip(x, y):
        small[(xx - cx_) ** 2 + (yy - cy_) ** 2 < 16] = 3000
    dapi = np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)[:h, :w]
    (out / "morphology_focus").mkdir(exist_ok=True)
    with tifffile.TiffWriter(out / "morphology_focus" / "morphology_focus_0000.ome.tif", ome=True) as tif:
        tif.write(dapi, subifds=1, metadata={"axes": "YX", "PhysicalSizeX": pixel, "PhysicalSizeY": pixel}, compression="zlib")
        tif.write(dapi[::4, ::4], subfiletype=1, compression="zlib")


# -- CosMx -----------------------------------------------------------------------------------------
def cosmx() -> None:
    out = ROOT / "cosmx"
    out.mkdir(parents=True, exist_ok=True)
    run = "Run5642_S3"
    targets = GENES + ["NegPrb1", "NegPrb2", "NegPrb3", "SystemControl1"]
    fov_off = pd.DataFrame({"fov": [1, 2, 3], "x_global_px": [10000.0, 14256.0, 10000.0], "y_global_px": [20000.0, 20000.0, 24256.0]})
    fov_off.to_csv(out / f"{run}_fov_positions_file.csv.gz", index=False)
    expr, meta = [], []
    for fov, xo, yo in fov_off.itertuples(index=False):
        n = 15
        lx, ly = 4256 * RNG.random(n), 4256 * RNG.random(n)
        gx = xo + lx
        X = np.hstack([counts_with_domains(n, len(GENES), (gx > 14256).astype(int), mean=40).toarray(),
                       RNG.poisson(0.4, (n, 4))])
        for i in range(n):
            expr.append([fov, i + 1, *X[i]])
            meta.append({"fov": fov, "cell_ID": i + 1, "Area": int(3000 + 2000 * RNG.random()), "AspectRatio": 1.1,
                         "CenterX_local_px": round(lx[i], 1), "CenterY_local_px": round(ly[i], 1),
                         "CenterX_global_px": round(xo + lx[i], 1), "CenterY_global_px": round(yo + ly[i], 1),
                         "Width": 60, "Height": 55, "Mean.MembraneStain": int(RNG.integers(1000, 5000)),
                         "Max.MembraneStain": int(RNG.integers(5000, 20000))})
        expr.append([fov, 0, *RNG.poisson(2.0, len(targets))])  # transcripts outside cells
        fov_image(out / "CellComposite" / f"CellComposite_F{fov:03d}.jpg", lx, ly)
    pd.DataFrame(expr, columns=["fov", "cell_ID", *targets]).to_csv(out / f"{run}_exprMat_file.csv.gz", index=False)
    pd.DataFrame(meta).to_csv(out / f"{run}_metadata_file.csv.gz", index=False)


def fov_image(path: Path, lx: np.ndarray, ly: np.ndarray, size: int = 4256) -> None:
    """A CosMx ``CellComposite`` FOV image (4256 x 4256 px, JPEG): the cells as bright discs at their local
    pixels (column = ``CenterX_local_px``, row = ``CenterY_local_px``) on a dark blue background."""
    small = np.zeros((size // 8, size // 8, 3), dtype=np.uint8)
    small[...] = (10, 10, 60)
    yy, xx = np.mgrid[0:size // 8, 0:size // 8] * 8
    for x, y in zip(lx, ly):
        small[(xx - x) ** 2 + (yy - y) ** 2 < 60**2] = (240, 220, 200)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)).save(path, quality=30, optimize=True)


def mosaic(path: Path, m: np.ndarray, cx: np.ndarray, cy: np.ndarray, shape: tuple[int, int], level: int) -> None:
    """A MERSCOPE ``mosaic_<stain>_z<z>.tif`` (uint16, tiled, zlib): the cells as discs of ``level`` at their
    centres mapped through the micron-to-mosaic transform ``m``."""
    import tifffile

    h, w = shape
    small = np.full((h // 4, w // 4), 300, dtype=np.uint16)
    yy, xx = np.mgrid[0:h // 4, 0:w // 4] * 4
    for x, y in zip(m[0, 0] * cx + m[0, 2], m[1, 1] * cy + m[1, 2]):
        small[(xx - x) ** 2 + (yy - y) ** 2 < 40**2] = level
    tifffile.imwrite(path, np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)[:h, :w], tile=(512, 512), compression="zlib")


# -- MERSCOPE --------------------------------------------------------------------------------------
def merscope() -> None:
    out = ROOT / "merscope"
    (out / "images").mkdir(parents=True, exist_ok=True)
    n = 50
    genes = GENES + [f"Blank-{i}" for i in range(5)]
    ids = [str(int(x)) for x in RNG.integers(10**17, 10**18, n)]
    cx, cy = 1000 + 500 * RNG.random(n), 2000 + 400 * RNG.random(n)
    X = np.hstack([counts_with_domains(n, len(GENES), (cx > 1250).astype(int), mean=50).toarray(), RNG.poisson(0.2, (n, 5))])
    df = pd.DataFrame(X, columns=genes)
    df.insert(0, "cell", ids)
    df.to_csv(out / "cell_by_gene.csv", index=False)
    half = 4 + 2 * RNG.random(n)
    meta = pd.DataFrame({"fov": RNG.integers(0, 4, n), "volume": 400 + 300 * RNG.random(n), "center_x": cx, "center_y": cy,
                         "min_x": cx - half, "max_x": cx + half, "min_y": cy - half, "max_y": cy + half}, index=ids)
    meta.to_csv(out / "cell_metadata.csv")
    m = np.array([[9.2057, 0, -8500.3], [0, 9.2057, -17800.7], [0, 0, 1]])
    np.savetxt(out / "images" / "micron_to_mosaic_pixel_transform.csv", m, fmt="%.6f", delimiter=" ")
    mosaic(out / "images" / "mosaic_DAPI_z3.tif", m, cx, cy, (4500, 5600), 20000)
    mosaic(out / "images" / "mosaic_PolyT_z3.tif", m, cx[: n // 2], cy[: n // 2], (4500, 5600), 9000)


if __name__ == "__main__":
    if ROOT.exists():
        shutil.rmtree(ROOT)
    visium_hd()
    xenium()
    cosmx()
    merscope()
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    print(f"wrote {ROOT} ({total / 1024:.0f} KiB)")
