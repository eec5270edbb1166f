"""The main job: a real analysis of the shipped Visium mouse-muscle samples (``experimat demo``)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd


def run_demo(out: str | Path = "experimat-demo", *, overwrite: bool = False) -> pd.DataFrame:
    """Build a project from the two real muscle samples, analyse them per sample, merge, save.

    Steps: QC metrics, normalisation, PCA, spatially variable genes (Moran's I), spatial domains
    (SpaGCN), integration into a MuData; prints a per-sample summary and returns it.
    """
    import experimat as em

    out = Path(out)
    if out.exists():
        if not overwrite:
            raise em.InvalidInputError(f"{out} exists; pass --overwrite (or another --out) to replace it.")
        shutil.rmtree(out)
    t0 = time.perf_counter()
    sheet = em.datasets.visium_mouse_muscle_sheet()
    expm = em.Experiment.from_table(sheet, project=out)
    sb = expm.spatial_bin
    sb.qc_metrics(run_on_samples=True)
    sb.normalize(run_on_samples=True)
    sb.pca(run_on_samples=True, n_comps=30)
    _analyses(expm)
    expm.merge(join="inner")
    expm.save()
    rows = []
    for s in sb.samples:
        a = sb[s]
        row = {
            "sample": s,
            "spots": a.n_obs,
            "genes": a.n_vars,
            "median UMI": float(np.median(a.obs["qc.total_counts"])),
            "median genes": float(np.median(a.obs["qc.n_genes"])),
            "% mito (median)": round(float(np.median(a.obs["qc.pct_mito"])), 2),
        }
        row.update(_summaries(a))
        rows.append(row)
    summary = pd.DataFrame(rows).set_index("sample")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        print(expm)
        print()
        print(summary.T.to_string())
    print(f"\nproject folder: {out.resolve()}  ({time.perf_counter() - t0:.1f} s)")
    expm.close()
    return summary


def _analyses(expm) -> None:
    """Method calls of the demo beyond preprocessing (kept in one place)."""
    sb = expm.spatial_bin
    sb.spatial_svg_moran(run_on_samples=True, layer="lognorm", key_added="moran")
    sb.spatial_detect_domains_spagcn(run_on_samples=True, layer="lognorm", n_clusters=5, seed=42)


def _summaries(a) -> dict[str, object]:
    out: dict[str, object] = {}
    if "moran.padj" in a.var:
        sig = a.var["moran.padj"] < 0.05
        out["SVGs (Moran, padj<0.05)"] = int(sig.sum())
        top = a.var.sort_values("moran.rank").head(5)
        out["top SVGs"] = ", ".join(top["gene"].astype(str) if "gene" in top else top.index.astype(str))
    if "spagcn.refined" in a.obs:
        out["SpaGCN domains"] = int(a.obs["spagcn.refined"].nunique())
    return out
