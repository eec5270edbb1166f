"""Moran's I with squidpy (``sq.gr.spatial_autocorr``); driver for benchmarks/svg.py.

Usage: <python with squidpy> squidpy_moran.py IN.npz OUT.csv
IN.npz holds ``X`` (n x G), ``xy`` (n x 2) and ``genes``. Hexagonal Visium neighbours
(``coord_type="grid", n_neighs=6``), row-normalised weights, analytic p-values.
"""

import sys
import time

import anndata as ad
import numpy as np
import pandas as pd
import squidpy as sq

z = np.load(sys.argv[1])
a = ad.AnnData(z["X"].astype(np.float64), var=pd.DataFrame(index=[str(g) for g in z["genes"]]))
a.obsm["spatial"] = z["xy"]
t = time.perf_counter()
sq.gr.spatial_neighbors(a, coord_type="grid", n_neighs=6)
df = sq.gr.spatial_autocorr(a, mode="moran", genes=list(a.var_names), n_perms=None, copy=True, n_jobs=1)
df["seconds"] = time.perf_counter() - t
df.to_csv(sys.argv[2])
