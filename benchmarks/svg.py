"""Benchmark of experimat's spatially variable gene methods against the reference tools.

Side by side in one run (same machine load), printing times, ratios and agreement:

1. SpatialDE GP test (``spatial_svg_gp``) vs SpatialDE 1.1.3 on the SpatialDE paper's mouse olfactory
   bulb (MOB) and breast cancer (BC) data: agreement with the published q-values and with a fresh
   SpatialDE run on the same preprocessed expression; and on 1,000 spots x 2,000 synthetic genes.
2. Calibration: MOB with permuted coordinates, all methods (KS test of the p-values; one shared
   permutation, so the genes' p-values are dependent — see ``benchmarks/svg_calibration.py`` for the
   block-wise design and the other data sets).
3. Score tests (``spatial_svg_score``): time at 35,000 genes x 1,500 spots (sparse counts), and
   growth with spots (1k, 2k, 4k).
4. Moran's I (``spatial_svg_moran``) vs ``squidpy.gr.spatial_autocorr``: time and I agreement.

Reference tools live in their own environments (see the project's REFERENCE-TOOLS notes): set
``EXPERIMAT_REF_PYTHON_SPATIALDE`` / ``EXPERIMAT_REF_PYTHON_SQUIDPY`` to their interpreters; those
parts are skipped with a message when unset. Data come from ``em.settings.data_dir``
(``EXPERIMAT_DATA_DIR``).

Usage::

    EXPERIMAT_DATA_DIR=... EXPERIMAT_REF_PYTHON_SPATIALDE=.../bin/python \\
        python benchmarks/svg.py [--ref-genes 3000] [--parts gp,synthetic,score,moran] [--score-genes 35000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse, stats

import experimat as em
from experimat.methods.svg import spatial_svg_gp, spatial_svg_moran, spatial_svg_score
from experimat.methods.svg._gp import _prepare_expression

HERE = Path(__file__).resolve().parent


def _ref_python(var: str) -> str | None:
    exe = os.environ.get(var)
    if not exe:
        print(f"  [skipped: set {var} to the reference tool's interpreter]")
    return exe


def _run_ref(var: str, script: str, payload: dict) -> pd.DataFrame | None:
    exe = _ref_python(var)
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.csv"
        np.savez(inp, **payload)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        subprocess.run(
            [exe, str(HERE / "_ref" / script), str(inp), str(out)],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return pd.read_csv(out, index_col=0)


def load_spatialde_paper(name: str) -> tuple[ad.AnnData, pd.DataFrame]:
    """Counts filtered as SpatialDE's pipelines do (genes >= 3 counts, spots > 10 / > 5 counts)."""
    base = Path(em.settings.data_dir)
    if name == "MOB":
        d = base / "spatialde_mouse_olfactory_bulb_rep11"
        df = pd.read_csv(d / "Rep11_MOB_0.csv.gz", index_col=0)
        ref = pd.read_csv(d / "spatialde_results_Rep11_MOB_sparkanalysis.csv", index_col=0)
        min_total = 10
    else:
        d = base / "spatialde_breast_cancer_layer2"
        df = pd.read_csv(d / "Layer2_BC_count_matrix.csv.gz", index_col=0)
        ref = pd.read_csv(d / "spatialde_results_Layer2_BC_sparkanalysis.csv", index_col=0)
        min_total = 5
    df = df.loc[:, df.sum(0) >= 3]
    df = df.loc[df.sum(1) > min_total]
    xy = np.array([[float(v) for v in s.split("x")] for s in df.index])
    a = ad.AnnData(df.to_numpy(np.float32), obs=pd.DataFrame(index=df.index), var=pd.DataFrame(index=df.columns))
    a.layers["counts"] = a.X.copy()
    a.obsm["spatial"] = xy
    ref = ref[ref["g"] != "log_total_count"].set_index("g")
    return a, ref


def _agreement(ours: pd.DataFrame, ref: pd.DataFrame, label: str, q_ref: str = "qval") -> None:
    j = ours.join(ref[[q_ref, "LLR"]].rename(columns={q_ref: "q_ref", "LLR": "llr_ref"}), how="inner")
    rho = stats.spearmanr(j["qval"], j["q_ref"])[0]
    rs, os_ = set(j.index[j["q_ref"] < 0.05]), set(j.index[j["qval"] < 0.05])
    rec = len(rs & os_) / max(len(rs), 1)
    print(
        f"  vs {label}: q-value Spearman {rho:.4f}; significant {len(rs)} -> recovered {len(rs & os_)} "
        f"({100 * rec:.1f} %), extra {len(os_ - rs)}; LLR ours - ref: median {np.median(j['qval'] * 0 + j['llr'] - j['llr_ref']):.2e}, "
        f"min {np.min(j['llr'] - j['llr_ref']):.2e}"
    )


def bench_gp_paper(ref_genes: int | None) -> None:
    for name in ("MOB", "BC"):
        a, published = load_spatialde_paper(name)
        print(f"\n[SpatialDE GP test] {name}: {a.n_obs} spots x {a.n_vars} genes")
        t = time.perf_counter()
        res = spatial_svg_gp(a, layer="counts", progress=False, use_cache=False)
        t_full = time.perf_counter() - t
        print(f"  ours (counts -> stabilise/regress -> test -> model search): {t_full:.2f} s")
        _agreement(res, published, "published SpatialDE results")
        # the same preprocessed expression for both tools
        idx, transform, _ = _prepare_expression(a.layers["counts"], normalize="anscombe", min_counts=3, layer="counts")
        expr = transform(idx)
        genes = a.var_names[idx]
        b = ad.AnnData(expr, obs=pd.DataFrame(index=a.obs_names), var=pd.DataFrame(index=genes))
        b.obsm["spatial"] = a.obsm["spatial"]
        t = time.perf_counter()
        ours = spatial_svg_gp(b, layer=None, normalize="none", model_search=False, progress=False, use_cache=False)
        t_ours = time.perf_counter() - t
        sub = np.arange(len(genes))
        if ref_genes is not None and ref_genes < len(genes):
            sub = np.sort(np.random.default_rng(0).choice(len(genes), ref_genes, replace=False))
        ref = _run_ref(
            "EXPERIMAT_REF_PYTHON_SPATIALDE",
            "spatialde_run.py",
            {"xy": a.obsm["spatial"], "expr": expr[:, sub], "genes": np.array(genes[sub], dtype=str)},
        )
        print(f"  ours (test only, same input as SpatialDE): {t_ours:.2f} s")
        if ref is not None:
            t_ref = float(ref["seconds"].iloc[0]) * len(genes) / len(sub)
            note = f" (run on {len(sub)} genes, scaled to {len(genes)})" if len(sub) < len(genes) else ""
            print(f"  SpatialDE 1.1.3 run(): {t_ref:.1f} s{note}; speed-up {t_ref / t_ours:.0f}x")
            r = ref.set_index("g")
            j = ours.join(r[["LLR", "pval"]].rename(columns={"LLR": "llr_ref", "pval": "p_ref"}), how="inner")
            print(
                f"  vs fresh SpatialDE run on the same genes: p-value Spearman {stats.spearmanr(j['pval'], j['p_ref'])[0]:.4f}, "
                f"LLR ours >= ref - 1e-2 for {100 * np.mean(j['llr'] >= j['llr_ref'] - 1e-2):.1f} % of genes"
            )


def bench_gp_synthetic() -> None:
    a = em.datasets.synthetic_svg(1000, 2000, n_spatial=200, seed=0)
    print(f"\n[SpatialDE GP test] synthetic: {a.n_obs} spots x {a.n_vars} genes, 200 spatial")
    idx, transform, _ = _prepare_expression(a.layers["counts"], normalize="anscombe", min_counts=3, layer="counts")
    expr = transform(idx)
    genes = a.var_names[idx]
    b = ad.AnnData(expr, obs=pd.DataFrame(index=a.obs_names), var=pd.DataFrame(index=genes))
    b.obsm["spatial"] = a.obsm["spatial"]
    t = time.perf_counter()
    ours = spatial_svg_gp(b, layer=None, normalize="none", model_search=False, progress=False, use_cache=False)
    t_ours = time.perf_counter() - t
    truth = a.var.loc[genes, "spatial"].to_numpy()
    sig = ours["qval"].to_numpy() < 0.05
    print(
        f"  ours: {t_ours:.2f} s; found {int((sig & truth).sum())}/{int(truth.sum())}, false {int((sig & ~truth).sum())}"
    )
    ref = _run_ref(
        "EXPERIMAT_REF_PYTHON_SPATIALDE",
        "spatialde_run.py",
        {"xy": a.obsm["spatial"], "expr": expr, "genes": np.array(genes, dtype=str)},
    )
    if ref is not None:
        t_ref = float(ref["seconds"].iloc[0])
        r = ref.set_index("g").loc[genes]
        rs = r["qval"].to_numpy() < 0.05
        print(
            f"  SpatialDE 1.1.3: {t_ref:.1f} s; found {int((rs & truth).sum())}/{int(truth.sum())}, false {int((rs & ~truth).sum())}; "
            f"speed-up {t_ref / t_ours:.1f}x"
        )
        print(
            f"  q-value Spearman {stats.spearmanr(ours['qval'], r['qval'])[0]:.4f} (p-value {stats.spearmanr(ours['pval'], r['pval'])[0]:.4f}); "
            f"recovered {int((sig & rs).sum())}/{int(rs.sum())} of SpatialDE's significant genes, extra {int((sig & ~rs).sum())}"
        )


def _sparse_counts(n_spots: int, n_genes: int, seed: int = 0) -> ad.AnnData:
    """Sparse NB counts on a Visium grid, 2 % spatial genes (generated in gene chunks)."""
    rng = np.random.default_rng(seed)
    xy, rc = em.datasets.visium_hex_grid(n_spots)
    span = np.ptp(xy, axis=0).max()
    depth = rng.lognormal(np.log(3000), 0.3, n_spots)
    base = rng.lognormal(0, 1.5, n_genes)
    base /= base.sum()
    blocks = []
    for s in range(0, n_genes, 2000):
        g = min(2000, n_genes - s)
        mu = depth[:, None] * base[None, s : s + g]
        k = rng.random(g) < 0.02
        if k.any():
            c = xy[rng.integers(n_spots, size=int(k.sum()))]
            f = np.exp(-((xy[:, None, :] - c[None]) ** 2).sum(-1) / (2 * (span / 6) ** 2))
            mu[:, k] *= np.exp(f - f.mean(0))
        blocks.append(sparse.csc_matrix(rng.negative_binomial(5, 5 / (5 + mu)).astype(np.float32)))
    X = sparse.hstack(blocks).tocsr()
    a = ad.AnnData(X)
    a.layers["counts"] = X
    a.obsm["spatial"] = xy
    a.obs["array_row"], a.obs["array_col"] = rc[:, 0], rc[:, 1]
    return a


def bench_score(score_genes: int) -> None:
    print("\n[score tests] spatial_svg_score, sparse NB counts")
    for n_spots, n_genes in ((1000, 5000), (2000, 5000), (4000, 5000), (1500, score_genes)):
        a = _sparse_counts(n_spots, n_genes)
        sf = np.asarray(a.layers["counts"].sum(1)).ravel()
        spatial_svg_score(a[:, :64].copy(), sizefactors=sf, progress=False)  # compile outside the timing
        t = time.perf_counter()
        res = spatial_svg_score(a, progress=False, use_cache=False)
        dt = time.perf_counter() - t
        print(
            f"  {n_spots} spots x {n_genes} genes ({a.layers['counts'].nnz / (n_spots * n_genes):.0%} non-zero): "
            f"{dt:.1f} s, {int((res['padj'] < 0.05).sum())} genes at padj < 0.05"
        )


def bench_moran() -> None:
    import scanpy as sc

    a = em.datasets.synthetic_svg(1000, 2000, n_spatial=200, seed=0)
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    print(f"\n[Moran's I] synthetic Visium grid {a.n_obs} x {a.n_vars}")
    t = time.perf_counter()
    res = spatial_svg_moran(a, progress=False)
    t_ours = time.perf_counter() - t
    print(f"  ours (hex neighbours from array_row/array_col, analytic): {t_ours:.2f} s")
    ref = _run_ref(
        "EXPERIMAT_REF_PYTHON_SQUIDPY",
        "squidpy_moran.py",
        {"X": np.asarray(a.X), "xy": a.obsm["spatial"], "genes": np.array(a.var_names, dtype=str)},
    )
    if ref is not None:
        t_ref = float(ref["seconds"].iloc[0])
        d = np.abs(res["I"] - ref.loc[res.index, "I"]).max()
        print(
            f"  squidpy 1.8 spatial_autocorr (grid, 6 neighbours): {t_ref:.2f} s; ratio {t_ref / t_ours:.1f}x; "
            f"max |I ours - I squidpy| = {d:.2e}"
        )


def bench_calibration() -> None:
    """Real MOB counts with the spot coordinates permuted: p-values should be uniform."""
    import scanpy as sc

    a, _ = load_spatialde_paper("MOB")
    a.obsm["spatial"] = a.obsm["spatial"][np.random.default_rng(0).permutation(a.n_obs)]
    print(f"\n[calibration] MOB {a.n_obs} spots x {a.n_vars} genes, coordinates permuted")
    b = a.copy()
    sc.pp.normalize_total(b)
    sc.pp.log1p(b)
    runs = {
        "SpatialDE GP (chi2_1 LRT)": lambda: spatial_svg_gp(a, layer="counts", model_search=False, progress=False),
        "score tests (NB)": lambda: spatial_svg_score(a, layer="counts", progress=False),
        "score tests (normal, log-normalised)": lambda: spatial_svg_score(
            b, layer=None, obs_dist="normal", progress=False
        ),
        "Moran's I (kNN 6, randomisation)": lambda: spatial_svg_moran(
            b, layer=None, null="randomisation", progress=False
        ),
        "Moran's I (kNN 6, Pearson III permutation moments, default)": lambda: spatial_svg_moran(
            b, layer=None, progress=False
        ),
    }
    for name, f in runs.items():
        res = f()
        p = res["pval"].dropna().to_numpy()
        print(
            f"  {name}: {p.size} genes; KS vs uniform p = {stats.kstest(p, 'uniform').pvalue:.3g}; "
            f"P(p < 0.05) = {np.mean(p < 0.05):.3f}; BH padj < 0.05: {int((res['padj'] < 0.05).sum())}"
        )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--parts", default="gp,synthetic,calibration,score,moran")
    p.add_argument(
        "--ref-genes", type=int, default=None, help="run SpatialDE on this many random genes and scale its time"
    )
    p.add_argument("--score-genes", type=int, default=35000)
    args = p.parse_args()
    em.settings.progress = False
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (timings are wall-clock, same run)")
    parts = args.parts.split(",")
    if "gp" in parts:
        bench_gp_paper(args.ref_genes)
    if "synthetic" in parts:
        bench_gp_synthetic()
    if "calibration" in parts:
        bench_calibration()
    if "moran" in parts:
        bench_moran()
    if "score" in parts:
        bench_score(args.score_genes)


if __name__ == "__main__":
    sys.exit(main())
