"""Gene database: load times and how many genes of real data sets are annotated.

Runs on the full gene headers of the real data sets under ``em.settings.data_dir``
(``EXPERIMAT_DATA_DIR``); there is no reference tool to compare with. Usage::

    EXPERIMAT_DATA_DIR=/path/to/data python benchmarks/genedb.py
"""

from __future__ import annotations

import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd

import experimat as em


def _headers() -> dict[str, tuple[str, list[str] | pd.DataFrame]]:
    import scanpy as sc

    root = em.settings.data_dir
    out: dict[str, tuple[str, list[str] | pd.DataFrame]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, rel, taxa in (
            ("visium 1.0.0 (10x ids)", "visium_test_subsets/scanpy_visium_1.0.0/filtered_feature_bc_matrix.h5", "hsa"),
            ("visium 2.1.0 probes", "visium_test_subsets/scanpy_visium_2.1.0/raw_probe_bc_matrix.h5", "mmu"),
        ):
            out[name] = (taxa, sc.read_10x_h5(root / rel).var)
    out["SpatialDE MOB (symbols)"] = (
        "mmu",
        list(pd.read_csv(root / "spatialde_mouse_olfactory_bulb_rep11/Rep11_MOB_0.csv.gz", nrows=0).columns[1:]),
    )
    out["SpatialDE BC (symbols)"] = (
        "hsa",
        list(pd.read_csv(root / "spatialde_breast_cancer_layer2/Layer2_BC_count_matrix.csv.gz", nrows=0).columns[1:]),
    )
    out["ST Hippo1 (versioned ids)"] = (
        "mmu",
        list(
            pd.read_csv(
                root / "st_mouse_brain_and_olfactory_bulb_stutility/hippo/Hippo1.tsv.gz", sep="\t", nrows=0
            ).columns[1:]
        ),
    )
    return out


def main() -> None:
    em.settings.verbosity = "warning"
    em.database.clear_cache()
    for taxa in em.database.available_taxa():
        t0 = time.perf_counter()
        em.database.genes(taxa)
        t1 = time.perf_counter()
        em.database.genes(taxa)
        t2 = time.perf_counter()
        em.database.lookup(["x"], taxa=taxa)
        t3 = time.perf_counter()
        print(f"{taxa}: genes() first {t1 - t0:.2f} s, cached {t2 - t1:.3f} s; lookup indexes {t3 - t2:.2f} s")
    for name, (taxa, var) in _headers().items():
        if isinstance(var, list):
            var = pd.DataFrame(index=var)
        a = ad.AnnData(np.zeros((1, len(var)), dtype=np.float32), var=var.copy())
        t0 = time.perf_counter()
        rep = em.database.harmonize_var(a, taxa)
        dt = time.perf_counter() - t0
        print(
            f"{name}: {rep['n_annotated']}/{rep['n_vars']} annotated ({rep['n_annotated'] / rep['n_vars']:.1%}), "
            f"{rep['matched_by']}, {len(rep['duplicate_genes'])} genes with several features, {dt:.2f} s"
        )


if __name__ == "__main__":
    main()
