"""A synthetic Visium HD-like sample at full size, and a writer of the Space Ranger layout.

:func:`synthetic_visium_hd` builds the counts chunk by chunk directly as sparse CSR (each bin's
counts are a multinomial draw over the genes; no dense bins x genes array exists at any point),
so 500,000 bins x 18,000 genes (about 42 million counts) takes a few hundred MB.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .._errors import InvalidInputError
from .._keys import Key

MICRONS_PER_PIXEL = 0.2738
HD_ORIGIN_PX = 500.0


def synthetic_visium_hd(
    n_bins: int = 500_000,
    n_genes: int = 18_000,
    *,
    mean_counts: float = 85.0,
    n_domains: int = 4,
    n_domain_genes: int = 200,
    fold: float = 8.0,
    bin_size_um: float = 8.0,
    library_sd: float = 0.5,
    seed: int = 0,
    chunk_size: int = 50_000,
    with_image: bool = True,
    library_id: str = "synthetic_hd",
):
    """A Visium HD-like sample: square bins on a grid, sparse counts, planted domain genes.

    Bins fill a square grid (``bin_size_um`` apart, full-resolution pixels of
    ``microns_per_pixel`` = 0.2738 µm). The tissue is cut into ``n_domains`` vertical stripes
    (``obs['domain']``). Gene proportions are log-normal (a few genes take most counts, as in real
    data); ``n_domain_genes`` genes (``var['planted_domain']`` = their domain, -1 elsewhere) are
    ``fold`` times more frequent in their domain. Each bin's library size is Poisson around a
    log-normal mean (``mean_counts``, log-sd ``library_sd``) and its counts a multinomial draw.

    Returns an AnnData in the layout of :func:`experimat.io.read_visium_hd`: counts in
    ``layers['counts']`` (int32) and ``X`` (float32), ``obsm['spatial']`` (pixels),
    ``obsm['spatial.array']``, ``obs['array_row'/'array_col'/'in_tissue'/'domain']``, and
    ``uns['spatial'][library_id]`` with scale factors (``bin_size_um``, ``microns_per_pixel``)
    and, with ``with_image``, a 2,000-px hires image whose colour follows the stripes.

    Examples
    --------
    >>> a = em.datasets.synthetic_visium_hd(5_000, 2_000)  # doctest: +SKIP
    """
    import anndata as ad
    import scipy.sparse as sp

    if n_bins < 1 or n_genes < 1 or n_domains < 1:
        raise InvalidInputError("n_bins, n_genes and n_domains must be >= 1.")
    if not 0 <= n_domain_genes <= n_genes:
        raise InvalidInputError(f"n_domain_genes must be between 0 and n_genes ({n_genes}).")
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_bins)))
    idx = np.arange(n_bins)
    rows, cols = idx // side, idx % side
    domain = np.minimum(cols * n_domains // side, n_domains - 1)
    base = rng.lognormal(0.0, 1.8, n_genes)
    planted = rng.choice(n_genes, size=n_domain_genes, replace=False)
    planted_domain = np.full(n_genes, -1, dtype=np.int64)
    planted_domain[planted] = np.arange(n_domain_genes) % n_domains
    cdfs = []
    for d in range(n_domains):
        w = base * np.where(planted_domain == d, fold, 1.0)
        c = np.cumsum(w)
        cdfs.append(c / c[-1])
    lib = mean_counts * rng.lognormal(-library_sd**2 / 2, library_sd, n_bins)
    totals = rng.poisson(lib).astype(np.int64)
    parts = []
    for start in range(0, n_bins, chunk_size):
        stop = min(start + chunk_size, n_bins)
        n_tot = totals[start:stop]
        bins_local = np.repeat(np.arange(stop - start), n_tot)
        genes = np.empty(bins_local.size, dtype=np.int64)
        dom_of_count = np.repeat(domain[start:stop], n_tot)
        for d in range(n_domains):
            sel = dom_of_count == d
            genes[sel] = np.searchsorted(cdfs[d], rng.random(int(sel.sum())), side="right")
        np.minimum(genes, n_genes - 1, out=genes)
        m = sp.coo_matrix((np.ones(bins_local.size, dtype=np.int32), (bins_local, genes)), shape=(stop - start, n_genes)).tocsr()
        m.sum_duplicates()
        parts.append(m)
    counts = sp.vstack(parts, format="csr").astype(np.int32)
    bin_px = bin_size_um / MICRONS_PER_PIXEL
    xy = np.column_stack([HD_ORIGIN_PX + (cols + 0.5) * bin_px, HD_ORIGIN_PX + (rows + 0.5) * bin_px])
    width_px = 2 * HD_ORIGIN_PX + side * bin_px
    hires_scalef = 2000.0 / width_px
    barcodes = [f"s_{int(bin_size_um):03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows.tolist(), cols.tolist())]
    obs = pd.DataFrame({
        Key.IN_TISSUE: np.ones(n_bins, dtype=np.int8), Key.ARRAY_ROW: rows, Key.ARRAY_COL: cols,
        "domain": pd.Categorical(domain.astype(str)),
    }, index=pd.Index(barcodes))
    var = pd.DataFrame({"gene_ids": [f"SYNG{g:07d}" for g in range(n_genes)], "feature_types": "Gene Expression",
                        "planted_domain": planted_domain}, index=pd.Index([f"Gene{g:05d}" for g in range(n_genes)]))
    X = sp.csr_matrix((counts.data.astype(np.float32), counts.indices, counts.indptr), shape=counts.shape)
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.layers[Key.COUNTS] = counts
    adata.obsm[Key.SPATIAL] = xy
    adata.obsm[Key.SPATIAL_ARRAY] = np.column_stack([rows, cols])
    sf = {"spot_diameter_fullres": bin_px, "bin_size_um": float(bin_size_um), "microns_per_pixel": MICRONS_PER_PIXEL,
          "tissue_hires_scalef": hires_scalef, "tissue_lowres_scalef": hires_scalef / 5, "regist_target_img_scalef": hires_scalef,
          "fiducial_diameter_fullres": 10 * bin_px}
    images = {}
    if with_image:
        h = int(np.ceil((2 * HD_ORIGIN_PX + (rows.max() + 1) * bin_px) * hires_scalef))
        w = int(np.ceil(width_px * hires_scalef))
        img = np.full((h, w, 3), 240, dtype=np.uint8)
        x0, x1 = int(HD_ORIGIN_PX * hires_scalef), int((HD_ORIGIN_PX + side * bin_px) * hires_scalef)
        stripe = np.minimum((np.arange(w) - x0) * n_domains // max(1, x1 - x0), n_domains - 1)
        tint = (np.array([[200, 120, 170], [220, 150, 190], [180, 110, 160], [230, 170, 200]]))[np.clip(stripe, 0, None) % 4]
        y1 = int((HD_ORIGIN_PX + (rows.max() + 1) * bin_px) * hires_scalef)
        img[int(HD_ORIGIN_PX * hires_scalef):y1, x0:x1] = tint[x0:x1][None, :, :]
        images["hires"] = img
        images["lowres"] = img[::5, ::5].copy()
    adata.uns[Key.SPATIAL] = {library_id: {"images": images, "scalefactors": sf,
                                           "metadata": {"platform": "Visium HD (synthetic)", "bin_size_um": str(bin_size_um)}}}
    return adata


def write_visium_hd(adata, outs: str | os.PathLike, *, library_id: str | None = None) -> Path:
    """Write a Visium HD sample as a Space Ranger ``outs/binned_outputs/square_XXXum/`` folder.

    Writes ``filtered_feature_bc_matrix.h5`` (the 10x v3 HDF5 layout), ``spatial/
    tissue_positions.parquet`` (needs pyarrow), ``scalefactors_json.json`` and the hires/lowres
    PNGs of ``uns['spatial'][library_id]``, so :func:`experimat.io.read_visium_hd` (and scanpy /
    spatialdata-io for the matrix) read it back. Returns the bin folder.
    """
    import h5py
    from PIL import Image

    from .._optional import import_optional

    import_optional("pyarrow", purpose="writing tissue_positions.parquet")
    lib = library_id or next(iter(adata.uns[Key.SPATIAL]))
    sf = adata.uns[Key.SPATIAL][lib]["scalefactors"]
    folder = Path(outs) / "binned_outputs" / f"square_{int(sf['bin_size_um']):03d}um"
    (folder / "spatial").mkdir(parents=True, exist_ok=True)
    counts = adata.layers[Key.COUNTS].tocsr()
    m = counts.T  # genes x bins in CSC: the same arrays as bins x genes in CSR
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.asarray(adata.obs_names, dtype="S"))
        g.create_dataset("data", data=counts.data.astype(np.int32))
        g.create_dataset("indices", data=counts.indices.astype(np.int64))
        g.create_dataset("indptr", data=counts.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(m.shape, dtype=np.int32))
        ft = g.create_group("features")
        ft.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        ft.create_dataset("feature_type", data=np.asarray(adata.var.get("feature_types", "Gene Expression"), dtype="S")
                          if "feature_types" in adata.var else np.array([b"Gene Expression"] * adata.n_vars))
        ft.create_dataset("genome", data=np.array([b"synthetic"] * adata.n_vars))
        ft.create_dataset("id", data=np.asarray(adata.var["gene_ids"] if "gene_ids" in adata.var else adata.var_names, dtype="S"))
        ft.create_dataset("name", data=np.asarray(adata.var_names, dtype="S"))
    xy = np.asarray(adata.obsm[Key.SPATIAL])
    pd.DataFrame({
        "barcode": adata.obs_names.astype(str), "in_tissue": adata.obs[Key.IN_TISSUE].to_numpy().astype(np.int32),
        "array_row": adata.obs[Key.ARRAY_ROW].to_numpy().astype(np.int32), "array_col": adata.obs[Key.ARRAY_COL].to_numpy().astype(np.int32),
        "pxl_row_in_fullres": xy[:, 1], "pxl_col_in_fullres": xy[:, 0],
    }).to_parquet(folder / "spatial" / "tissue_positions.parquet", index=False)
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps({k: float(v) for k, v in sf.items()}, indent=2))
    for res, img in adata.uns[Key.SPATIAL][lib].get("images", {}).items():
        Image.fromarray(np.asarray(img, dtype=np.uint8)).save(folder / "spatial" / f"tissue_{res}_image.png")
    return folder
