"""Run the reference ``locat`` 0.1.6 (KlugerLab) on an h5ad; used by benchmarks/locat.py.

Usage: python locat_ref.py IN.h5ad OUT.csv [n_dims]
Reads X (expression used as weights) and obsm['X_pca']; writes one row per tested gene plus a
JSON line with timings on stdout. Runs in the reference's own environment (jax<0.7, tfp).

``EXPERIMAT_REF_SEED`` (default 0 = the package's own fixed seeds) reseeds the reference: its
``init_rng`` (NumPy generator and global seed) and the seeds of its background (``wgmm`` ->
``train_em``) and per-gene (``softbootstrap_gmm``) mixture fits, which 0.1.6 hard-codes to 1; used
to measure the reference's own run-to-run agreement.
"""

import json
import os
import sys
import time

import anndata as ad
import locat.locat as locat_module
import numpy as np
import pandas as pd
from locat.locat import LOCAT
from locat.postprocessing import build_locat_df


def _with_seed(fun, seed: int):
    def wrapped(*args, **kwargs):
        kwargs["seed"] = seed
        return fun(*args, **kwargs)

    return wrapped


def _reseed(seed: int) -> None:
    if not seed:
        return
    import locat.wgmms as wgmms

    wgmms.train_em = _with_seed(wgmms.train_em, 1 + seed)  # wgmm() passes seed=1 to train_em
    locat_module.softbootstrap_gmm = _with_seed(locat_module.softbootstrap_gmm, 1 + seed)
    init_rng = LOCAT.init_rng
    LOCAT.init_rng = lambda self, seed_=seed, global_seed=13 + seed: init_rng(self, seed_, global_seed)


def main() -> None:
    path_in, path_out = sys.argv[1], sys.argv[2]
    n_dims = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    _reseed(int(os.environ.get("EXPERIMAT_REF_SEED", "0")))
    adata = ad.read_h5ad(path_in)
    emb = np.asarray(adata.obsm["X_pca"], dtype=np.float64)[:, :n_dims]
    t0 = time.perf_counter()
    # as the published tutorial, minus `n_bootstrap_inits` (a TypeError in 0.1.6)
    model = LOCAT(adata=adata, cell_embedding=emb, k=20, show_progress=False, knn_mode="connectivity")
    model._reg_covar = 1e-6
    t1 = time.perf_counter()
    model.background_pdf(weights_transform=lambda x: np.clip(np.asarray(x), 0.0, np.inf))
    t_bg = time.perf_counter() - t1
    res = model.gmm_scan(
        weights_transform=lambda x: np.clip(np.asarray(x), 0.0, np.inf),
        max_freq=0.9,
        rc_lambda_values=np.linspace(1.0, 2.0, 8),
    )
    t_total = time.perf_counter() - t0
    df = build_locat_df(res)
    df = pd.DataFrame(df)
    df.to_csv(path_out)
    print(
        json.dumps({"seconds": t_total, "background_seconds": t_bg, "n_genes": int(adata.n_vars), "n_tested": len(df)})
    )


if __name__ == "__main__":
    main()
