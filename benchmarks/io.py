"""Project-folder I/O vs plain anndata write_h5ad/read_h5ad loops.

8 samples built from the two real muscle samples (replicated, barcodes renamed). Reports full save, re-save after
changing one sample, lazy open (manifest only), full load, and the baseline loops, with ratios.
Targets: lazy open < 0.5 s; re-save after one change <= 1/5 of a full save.

    python benchmarks/io.py [--samples 8]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad

import experimat as em


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=8)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    em.settings.progress = False
    em.settings.verbosity = "warning"
    sheet = em.datasets.visium_mouse_muscle_sheet()
    base = em.Experiment.from_table(sheet)
    originals = [base.spatial_bin[s] for s in base.spatial_bin.samples]
    adatas = {}
    for i in range(args.samples):
        a = originals[i % len(originals)].copy()
        a.obs_names = [f"r{i}_{n.split(':', 1)[1]}" for n in a.obs_names]
        a.obs = a.obs.drop(columns=["barcode"])
        adatas[f"rep{i}"] = a
    tmp = Path(tempfile.mkdtemp(prefix="experimat-io-"))
    try:
        expm = em.Experiment.from_anndata(adatas, modality="spatial-bin", taxa="mmu", harmonize_genes=False)
        t_full, _ = timed(lambda: expm.save(tmp / "proj"))
        size_full = sum(f.stat().st_size for f in (tmp / "proj").rglob("*.h5ad"))
        expm.spatial_bin["rep3"].obs["edited"] = 1
        t_one, _ = timed(expm.save)
        expm.close()
        t_lazy, lazy = timed(lambda: em.load_experiment(tmp / "proj", mode="r"))
        t_load, _ = timed(lambda: em.load_experiment(tmp / "proj", mode="r", load_samples=True))
        t_load_nv, _ = timed(lambda: em.load_experiment(tmp / "proj", mode="r", load_samples=True, verify=False))
        (tmp / "plain").mkdir()
        plain = {s: lazy.spatial_bin[s] for s in lazy.spatial_bin.samples}
        t_pw, _ = timed(lambda: [a.write_h5ad(tmp / "plain" / f"{s}.h5ad") for s, a in plain.items()])
        t_pw1, _ = timed(lambda: plain["rep3"].write_h5ad(tmp / "plain" / "rep3.h5ad"))
        t_pr, _ = timed(lambda: [ad.read_h5ad(tmp / "plain" / f"{s}.h5ad") for s in plain])
        size_plain = sum(f.stat().st_size for f in (tmp / "plain").glob("*.h5ad"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = args.samples
    print(f"{n} samples of ~1,000 spots x 33,217 genes (real Visium muscle, replicated)")
    print(f"{'operation':<42}{'experimat':>12}{'anndata loop':>14}{'ratio':>8}")
    rows = [
        ("full save (atomic, fsync, sha256)", t_full, t_pw),
        ("save after changing 1 sample", t_one, t_pw1),
        ("open lazily (manifest only)", t_lazy, None),
        ("full load, checksums verified", t_load, t_pr),
        ("full load, verify=False", t_load_nv, t_pr),
    ]
    for name, ours, base_t in rows:
        ratio = f"{ours / base_t:.2f}" if base_t else ""
        print(f"{name:<42}{ours:>11.3f}s{(f'{base_t:.3f}s' if base_t else '-'):>14}{ratio:>8}")
    print(f"re-save after one change / full save: {t_one / t_full:.3f} (target <= 0.2); lazy open {t_lazy:.3f} s (target < 0.5 s)")
    print(f"bytes on disk: experimat {size_full / 1e6:.1f} MB, anndata default {size_plain / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
