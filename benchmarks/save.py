"""save() of a project whose large samples are loaded but untouched, vs plain anndata write_h5ad.

A project of a few large synthetic samples (sparse counts) is opened with every sample in memory
(``load_samples=True``). Reports: the open; ``save()`` with nothing changed (should write no
sample and cost next to nothing); ``save()`` after a method changed one sample; ``save()`` after an
in-place edit of a sample taken from the accessor; and one plain ``write_h5ad`` of a sample, with
ratios.

    python benchmarks/save.py [--samples 4] [--obs 30000] [--genes 4000] [--density 0.08]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import experimat as em


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def build(n_samples: int, n_obs: int, n_genes: int, density: float):
    import anndata as ad

    rng = np.random.default_rng(0)
    out = {}
    for i in range(n_samples):
        X = sp.random(n_obs, n_genes, density=density, format="csr", random_state=rng,
                      data_rvs=lambda k: rng.integers(1, 20, k)).astype(np.float32)
        a = ad.AnnData(X)
        a.obs_names = [f"s{i}_c{j}" for j in range(n_obs)]
        a.var_names = [f"g{j}" for j in range(n_genes)]
        a.obsm["spatial"] = rng.uniform(0, 1000, (n_obs, 2))
        out[f"s{i}"] = a
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--obs", type=int, default=30000)
    p.add_argument("--genes", type=int, default=4000)
    p.add_argument("--density", type=float, default=0.08)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    em.settings.progress = False
    em.settings.verbosity = "warning"
    tmp = Path(tempfile.mkdtemp(prefix="experimat-save-"))
    try:
        adatas = build(args.samples, args.obs, args.genes, args.density)
        em.Experiment.from_anndata(adatas, modality="spatial-bin", taxa="mmu", harmonize_genes=False,
                                   project=tmp / "proj").close()
        nnz = sum(a.X.nnz for a in adatas.values())
        del adatas
        t_open, expm = timed(lambda: em.load_experiment(tmp / "proj", load_samples=True, verify=False))
        t_none, _ = timed(expm.save)
        expm.spatial_bin.normalize(run_on_samples=["s0"], save=False)
        t_method, _ = timed(expm.save)
        expm.spatial_bin["s1"].obs["note"] = "edited"
        t_edit, _ = timed(expm.save)
        expm.close()
        check = em.load_experiment(tmp / "proj", mode="r")
        assert check.spatial_bin["s1"].obs["note"].iloc[0] == "edited" and "lognorm" in check.spatial_bin["s0"].layers
        one = check.spatial_bin["s2"]
        t_plain, _ = timed(lambda: one.write_h5ad(tmp / "plain.h5ad"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.samples} samples x {args.obs} obs x {args.genes} genes, {nnz / 1e6:.1f} M non-zeros in all")
    print(f"open, all samples loaded      {t_open:8.3f} s")
    print(f"save(), nothing changed       {t_none:8.3f} s   ({t_none / t_plain:.2f} x one plain write_h5ad)")
    print(f"save() after a method on s0   {t_method:8.3f} s   ({t_method / t_plain:.2f} x one plain write_h5ad)")
    print(f"save() after an edit of s1    {t_edit:8.3f} s   ({t_edit / t_plain:.2f} x one plain write_h5ad)")
    print(f"plain write_h5ad of one       {t_plain:8.3f} s")


if __name__ == "__main__":
    main()
