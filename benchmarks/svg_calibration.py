"""Calibration of the spatially variable gene tests on real data with the spot coordinates permuted.

Under the null "spot locations exchangeable" every p-value should be uniform and Benjamini–Hochberg
at 5 % should find (almost) nothing. For each data set and seed the coordinates are permuted and the
three tests are run: the SpatialDE GP test (``null="permutation"``; ``null="chi2"`` with
``--gp-chi2``), the SpatialDE2-style score test and Moran's I. Printed per method and seed: genes
tested, the KS test of the p-values against the uniform, P(p < 0.05) and the number of BH
discoveries at 0.05.

With ONE permutation of the coordinates shared by all genes, the p-values of different genes are
dependent (co-expressed genes see the same permuted layout), so the KS test over genes is not
valid: it fails far more often than its level even for an exactly calibrated test. ``--blocks B``
splits the genes into ``B`` random blocks, each with its own independent coordinate permutation,
which makes the genes' p-values independent across blocks (KS then is meaningful for B large
enough; the default runs both B = 1 and B = 20). Power on the unpermuted data is reported too:
the genes found at BH 5 % and, for the mouse olfactory bulb, how many of SpatialDE's published
67 genes (q < 0.05) are found.

Each block is its own call and gets its own seed (drawn from the seed of the run). With one seed for
all blocks every call draws the same random numbers, e.g. the GP test's randomised p-values of the
genes at the no-spatial-variance boundary (about 40 % of the genes): the blocks' p-values are then
copies of one another, not independent, and the KS test fails the more, the smaller the blocks (20
blocks of 100 genes: KS p down to 1e-6 with a hole in the histogram at p ≈ 0.8) although each call
is calibrated. The GP test's pooled permutation null is valid for any number of genes per call.

Data (``EXPERIMAT_DATA_DIR``): SpatialDE's MOB Rep11 and breast cancer layer 2 (filtered as in
``benchmarks/svg.py``), and the Visium mouse muscle sample Vis5A_2dpi (McKellar et al. 2021).

Usage::

    EXPERIMAT_DATA_DIR=... python benchmarks/svg_calibration.py [--datasets MOB,BC,muscle]
        [--methods gp,score,moran] [--seeds 3] [--blocks 1,20] [--gp-genes 2000] [--gp-n-null 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import stats

import experimat as em
from experimat.methods.svg import bh_adjust, spatial_svg_gp, spatial_svg_moran, spatial_svg_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from svg import load_spatialde_paper

#: permuted-gene LLRs of the GP test's permutation null per call (its default is 60,000; fewer keep the
#: 20 block-wise runs affordable; the null stays exact, only its resolution is coarser)
GP_N_NULL = 2000


def load_muscle(sample: str = "Vis5A_2dpi") -> ad.AnnData:
    import scanpy as sc

    root = Path(em.settings.data_dir) / "visium_mouse_muscle_mckellar2021" / sample
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = sc.read_visium(root, library_id=sample, load_images=False)
    a.var_names_make_unique()
    pos = pd.read_csv(root / "spatial" / "tissue_positions_list.csv", header=None, index_col=0).loc[a.obs_names]
    a.obsm["spatial"] = pos[[5, 4]].to_numpy(dtype=float)
    a.obs["array_row"], a.obs["array_col"] = pos[2].to_numpy(), pos[3].to_numpy()
    a = a[:, np.asarray(a.X.sum(0)).ravel() >= 3].copy()
    a = a[np.asarray(a.X.sum(1)).ravel() > 0].copy()
    a.layers["counts"] = a.X.copy()
    return a


def load(name: str) -> tuple[ad.AnnData, pd.DataFrame | None]:
    import scanpy as sc

    if name == "muscle":
        a, ref = load_muscle(), None
    else:
        a, ref = load_spatialde_paper(name)
    a.obs["total"] = np.asarray(a.layers["counts"].sum(1)).ravel()
    b = ad.AnnData(a.layers["counts"].copy())
    sc.pp.normalize_total(b)
    sc.pp.log1p(b)
    a.layers["lognorm"] = b.X
    return a, ref


def run(method: str, a: ad.AnnData, *, seed: int, gp_null: str, gp_n_null: int | None = None) -> pd.DataFrame:
    if method == "gp":
        # the GP test regresses out log total counts of the tested genes: drop spots without any
        a = a[np.asarray(a.layers["counts"].sum(1)).ravel() > 0].copy()
        return spatial_svg_gp(
            a,
            layer="counts",
            null=gp_null,
            n_null=gp_n_null or GP_N_NULL,
            model_search=False,
            seed=seed,
            progress=False,
        )
    if method == "score":
        return spatial_svg_score(a, layer="counts", sizefactors="total", n_svg=None, seed=seed, progress=False)
    return spatial_svg_moran(a, layer="lognorm", progress=False)


def permuted_pvalues(method: str, a: ad.AnnData, *, seed: int, blocks: int, gp_null: str) -> np.ndarray:
    """p-values with the coordinates permuted independently in each of ``blocks`` random gene blocks."""
    rng = np.random.default_rng(seed)
    part = rng.permutation(a.n_vars) % blocks
    p = np.full(a.n_vars, np.nan)
    for b in range(blocks):
        sub = a[:, part == b].copy()
        perm = rng.permutation(a.n_obs)
        sub.obsm["spatial"] = a.obsm["spatial"][perm]
        if "array_row" in a.obs:  # Visium hex neighbours follow the permuted spots
            sub.obs["array_row"] = a.obs["array_row"].to_numpy()[perm]
            sub.obs["array_col"] = a.obs["array_col"].to_numpy()[perm]
        # each block is its own call and needs its own random numbers: with one seed for all blocks every call
        # would draw the same stream (the GP test's randomised p-values of boundary genes, the nulls' permutations),
        # and the p-values of different blocks would be copies of each other, not independent
        block_seed = int(rng.integers(2**32))
        p[part == b] = run(method, sub, seed=block_seed, gp_null=gp_null)["pval"].to_numpy()
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="MOB,BC,muscle")
    ap.add_argument("--methods", default="gp,score,moran")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--blocks", default="1,20", help="comma-separated numbers of independently permuted gene blocks")
    ap.add_argument("--gp-genes", type=int, default=2000, help="random genes for the (slow) GP test; 0: all")
    ap.add_argument("--gp-chi2", action="store_true", help="GP test with SpatialDE's chi2 null instead")
    ap.add_argument("--gp-n-null", type=int, default=GP_N_NULL, help="n_null of the GP permutation null")
    ap.add_argument("--no-power", action="store_true")
    args = ap.parse_args()
    globals()["GP_N_NULL"] = args.gp_n_null
    em.settings.progress = False
    gp_null = "chi2" if args.gp_chi2 else "permutation"
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for name in args.datasets.split(","):
        a, ref = load(name)
        print(f"\n=== {name}: {a.n_obs} spots x {a.n_vars} genes")
        for method in args.methods.split(","):
            data = a
            if method == "gp" and args.gp_genes and a.n_vars > args.gp_genes:
                keep = np.sort(np.random.default_rng(0).choice(a.n_vars, args.gp_genes, replace=False))
                data = a[:, keep].copy()
            label = {"gp": f"GP ({gp_null})", "score": "score test", "moran": "Moran (pearson3)"}[method]
            if not args.no_power:
                t = time.perf_counter()
                res = run(method, data, seed=0, gp_null=gp_null, gp_n_null=20_000)  # GP: as the tests (default 60,000)
                dt = time.perf_counter() - t
                found = int((res["padj"] < 0.05).sum())
                line = f"  [{label}] real data: {found} genes at BH 5 % ({dt:.1f} s, {data.n_vars} genes)"
                if ref is not None:
                    pub = ref.index[(ref["qval"] < 0.05) & ref.index.isin(res.index)]
                    line += f"; published SpatialDE genes (q < 0.05) found: {int((res.loc[pub, 'padj'] < 0.05).sum())}/{len(pub)}"
                print(line)
            for blocks in (int(b) for b in args.blocks.split(",")):
                for seed in range(args.seeds):
                    t = time.perf_counter()
                    p = permuted_pvalues(method, data, seed=seed, blocks=blocks, gp_null=gp_null)
                    dt = time.perf_counter() - t
                    q = p[np.isfinite(p)]
                    print(
                        f"  [{label}] permuted, blocks={blocks:3d}, seed {seed}: {q.size} genes tested; "
                        f"KS p = {stats.kstest(q, 'uniform').pvalue:.3g}; P(p<0.05) = {np.mean(q < 0.05):.4f}; "
                        f"BH 5 %: {int((bh_adjust(q) < 0.05).sum())} ({dt:.1f} s)"
                    )


if __name__ == "__main__":
    sys.exit(main())
