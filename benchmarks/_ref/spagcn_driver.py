"""Run the reference SpaGCN package (jianhuupenn/SpaGCN, pip ``SpaGCN``) on prepared inputs.

Run with the reference venv's interpreter (``EXPERIMAT_REF_PYTHON_SPAGCN``):

    python spagcn_driver.py job.json

``job.json``: ``{"mode": "single"|"multi", "inputs": [h5ad, ...], "out": csv, "n_clusters": int,
"seed": int, "histology": bool, "refine_shape": "hexagon"|"square"|"none", "res": float|null}``.
Each h5ad holds log-normalised expression in ``X`` (dense), coordinates in ``obsm['spatial']``
(x = column, y = row, full-resolution pixels) and, for histology, ``uns['spatial']`` as scanpy.
The steps follow the SpaGCN tutorial (search_l p=0.5, search_res start=0.7 max_epochs=20, train
lr=0.05 tol=5e-3 max_epochs=200, refine). Writes labels (``pred``, ``refined``) to ``out`` and the
SpaGCN time (imports excluded) to ``out + '.json'``.
"""

import json
import random
import sys
import time

import anndata as ad
import numpy as np
import pandas as pd
import SpaGCN as spg
import torch


def _adj(a, histology):
    xy = np.asarray(a.obsm["spatial"], dtype=np.float64)
    x, y = xy[:, 1], xy[:, 0]  # SpaGCN's x is the image row
    if not histology:
        return spg.calculate_adj_matrix(x=x, y=y, histology=False)
    lib = next(iter(a.uns["spatial"].values()))
    img = np.asarray(lib["images"]["hires"])
    s = float(lib["scalefactors"]["tissue_hires_scalef"])
    beta = float(lib["scalefactors"]["spot_diameter_fullres"]) * s
    xp = np.round(x * s).astype(int)
    yp = np.round(y * s).astype(int)
    return spg.calculate_adj_matrix(x=x, y=y, x_pixel=xp, y_pixel=yp, image=img, beta=beta, alpha=1, histology=True)


def _seed(seed):
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed)


def main(job_path):
    job = json.load(open(job_path))
    seed = int(job["seed"])
    adatas = [ad.read_h5ad(p) for p in job["inputs"]]
    for a in adatas:
        a.X = np.asarray(a.X.toarray() if hasattr(a.X, "toarray") else a.X, dtype=np.float32)
    t0, c0 = time.perf_counter(), time.process_time()
    adjs = [_adj(a, job["histology"]) for a in adatas]
    widths = [spg.search_l(0.5, adj, start=0.01, end=1000, tol=0.01, max_run=100) for adj in adjs]
    if job["mode"] == "single":
        a, adj, width = adatas[0], adjs[0], widths[0]
        res = job.get("res")
        if res is None:
            res = spg.search_res(
                a,
                adj,
                width,
                job["n_clusters"],
                start=0.7,
                step=0.1,
                tol=5e-3,
                lr=0.05,
                max_epochs=20,
                r_seed=seed,
                t_seed=seed,
                n_seed=seed,
            )
        clf = spg.SpaGCN()
        clf.set_l(width)
        _seed(seed)
        clf.train(a, adj, init_spa=True, init="louvain", res=res, tol=5e-3, lr=0.05, max_epochs=200)
        pred, _ = clf.predict()
        preds = [pred]
    else:
        clf = spg.multiSpaGCN()
        _seed(seed)
        clf.train(
            adatas,
            adjs,
            widths,
            init_spa=True,
            init="louvain",
            res=job.get("res") or 0.4,
            tol=5e-3,
            lr=0.05,
            max_epochs=job.get("max_epochs", 200),
        )
        pred, _ = clf.predict()
        sizes = np.cumsum([0] + [a.n_obs for a in adatas])
        preds = [pred[sizes[i] : sizes[i + 1]] for i in range(len(adatas))]
    frames = []
    for i, (a, p) in enumerate(zip(adatas, preds)):
        df = pd.DataFrame({"sample": i, "pred": p}, index=a.obs_names)
        if job["mode"] == "single" and job["refine_shape"] != "none":
            xy = np.asarray(a.obsm["spatial"], dtype=np.float64)
            adj_2d = spg.calculate_adj_matrix(x=xy[:, 1], y=xy[:, 0], histology=False)
            df["refined"] = spg.refine(
                sample_id=a.obs_names.tolist(), pred=p.tolist(), dis=adj_2d, shape=job["refine_shape"]
            )
        frames.append(df)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    pd.concat(frames).to_csv(job["out"])
    json.dump(
        {"seconds": elapsed, "cpu_seconds": cpu, "l": [float(v) if v is not None else None for v in widths]},
        open(job["out"] + ".json", "w"),
    )


if __name__ == "__main__":
    main(sys.argv[1])
