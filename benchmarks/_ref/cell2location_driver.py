"""Driver for the reference cell2location 0.1.5 (run in its own venv by benchmarks/deconv.py).

Usage: python cell2location_driver.py SC.h5ad SPOTS.h5ad OUT_DIR --labels class
       --reg-epochs 250 --epochs 250,500,1000,2000 --n-cells 6 --detection-alpha 20 --threads 1

Fits the reference regression once (timed), then one Cell2location model per entry of
``--epochs`` (each timed from model creation to exported posterior). Writes, per run,
``abundance_<epochs>.npz`` (means, q05, obs names, cell types) and a ``result.json`` with the
timings, so that the benchmark computes the same accuracy metrics for both implementations.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("sc")
    p.add_argument("spots")
    p.add_argument("out")
    p.add_argument("--labels", default="class")
    p.add_argument("--reg-epochs", type=int, default=250)
    p.add_argument("--epochs", default="2000")
    p.add_argument("--n-cells", type=float, default=6.0)
    p.add_argument("--detection-alpha", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    import anndata as ad
    import cell2location
    import scvi
    from cell2location.models import Cell2location, RegressionModel
    from cell2location.utils.filtering import filter_genes

    scvi.settings.seed = a.seed
    result = {"versions": {"cell2location": cell2location.__version__, "scvi": scvi.__version__}, "runs": []}
    sc = ad.read_h5ad(a.sc)
    sp = ad.read_h5ad(a.spots)

    t0 = time.perf_counter()
    selected = filter_genes(sc, cell_count_cutoff=15, cell_percentage_cutoff2=0.05, nonz_mean_cutoff=1.12)
    sc = sc[:, selected].copy()
    RegressionModel.setup_anndata(sc, labels_key=a.labels)
    reg = RegressionModel(sc)
    reg.train(max_epochs=a.reg_epochs, batch_size=2500, train_size=1, lr=0.002, accelerator="cpu")
    sc = reg.export_posterior(sc, sample_kwargs={"num_samples": 1000, "batch_size": 2500, "accelerator": "cpu"})
    cols = [f"means_per_cluster_mu_fg_{c}" for c in sc.uns["mod"]["factor_names"]]
    inf_aver = sc.varm["means_per_cluster_mu_fg"][cols].copy()
    inf_aver.columns = list(sc.uns["mod"]["factor_names"])
    result["reference_time_s"] = time.perf_counter() - t0
    result["n_genes_reference"] = int(sc.n_vars)
    inf_aver.to_csv(out / "signatures.csv")

    shared = np.intersect1d(sp.var_names, inf_aver.index)
    sp = sp[:, shared].copy()
    inf_aver = inf_aver.loc[shared]
    for n_ep in [int(e) for e in a.epochs.split(",")]:
        t1 = time.perf_counter()
        spd = sp.copy()
        Cell2location.setup_anndata(spd)
        mod = Cell2location(
            spd, cell_state_df=inf_aver, N_cells_per_location=a.n_cells, detection_alpha=a.detection_alpha
        )
        mod.train(max_epochs=n_ep, batch_size=None, train_size=1, accelerator="cpu")
        spd = mod.export_posterior(
            spd, sample_kwargs={"num_samples": 1000, "batch_size": spd.n_obs, "accelerator": "cpu"}
        )
        dt = time.perf_counter() - t1
        names = list(spd.uns["mod"]["factor_names"])
        means = spd.obsm["means_cell_abundance_w_sf"].to_numpy()
        q05 = spd.obsm["q05_cell_abundance_w_sf"].to_numpy()
        np.savez(
            out / f"abundance_{n_ep}.npz",
            means=means,
            q05=q05,
            obs=np.asarray(spd.obs_names, str),
            types=np.asarray(names, str),
        )
        hist = mod.history["elbo_train"]
        result["runs"].append({"epochs": n_ep, "time_s": dt, "final_elbo": float(np.asarray(hist).ravel()[-1])})
        (out / "result.json").write_text(json.dumps(result, indent=1))
        print(f"reference cell2location: {n_ep} epochs in {dt:.1f} s", flush=True)


if __name__ == "__main__":
    main()
