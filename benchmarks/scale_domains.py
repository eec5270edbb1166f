"""Scale benchmark of the domain methods (issue 21: "SpaGCN and DeepST domains: <= 20 min each at 500,000
bins x 18,000 genes, 2 cores, peak <= 16 GB; no dense spots x spots matrix anywhere").

Run as ``python benchmarks/scale.py --domains ...`` (or this file directly). For each size a fresh
subprocess (so the peaks do not mix) generates ``em.datasets.synthetic_visium_hd`` (4 stripes, 200 planted
genes, about 85 counts per bin; no image), log-normalises it (sparse) and runs, called directly on the sample:

* ``spagcn`` — ``spatial_detect_domains_spagcn(n_clusters=4)`` with its defaults (the seed-stable consensus
  of 3 runs, k-means starts); ``spagcn-1`` — one seeded fit (``stable=False``, Leiden initialisation);
* ``deepst`` — ``spatial_detect_domains_deepst(n_domains=4)`` with its defaults (consensus of 2 runs since
  issue 19, 4 before; 200 + 200 epochs); ``deepst-1`` — one run (``stable=False``); ``deepst-1-full`` / ``deepst-1-mini`` — one
  run on all spots / on subgraph batches whatever the size (``_model.subgraph_plan`` set aside; one
  ``deepst-1-mini`` row per ``--batches`` pair of spots per batch / per tile), then the ARI between the two;
* ``potts`` — the Potts prior of ``spatial_prior=`` alone (domains/_potts.py; beta 2): the bins' lattice and
  ICM from a noisy soft assignment of the planted stripes (about 65 % of its argmax right); needs no genes
  beyond the generator's minimum (``--genes 300``).

Each row prints wall and CPU seconds, the peak resident memory (absolute, sampled every 10 ms) and the
adjusted Rand index of the domains against the planted stripes, and the parameters the method recorded
for its size rules. The summary gives met / not met at the largest size (<= 20 min wall, <= 16 GB).

Usage::

    python benchmarks/scale.py --domains [--sizes 5000,50000,500000] [--genes 18000]
        [--methods spagcn,spagcn-1,deepst,deepst-1] [--timeout 3000] [--profile] [--loss-curve]
    python benchmarks/scale.py --domains --sizes 10000 --genes 2000 --methods deepst-1-full,deepst-1-mini
        --batches 1000/100,2000/200,5000/500 [--seed 0]

``--profile`` prints the 25 most expensive functions (cumulative time, cProfile) of each row.
``--loss-curve`` prints each DeepST run's training time and its loss (means of 10 steps at 11 points of
pre-training and of DEC training): whether the steps it is given let the loss flatten.

Measured on 2026-12-02, 18,000 genes, 2 cores shared with the other helpers' jobs; 500,000 bins under the
heavy lock (load average 2.9-3.6), 5,000 without it (load 1.0-1.8); wall s (CPU s), peak RSS (absolute, the
sample itself included); 50,000 not run as a row (the heavy lock's queue):

=========================  ==========================  ==================================================
row                        5,000                       500,000
=========================  ==========================  ==================================================
SpaGCN (consensus of 3)    5.5 s (5.4), 0.6 GB         320 s (202), 4.7 GB: met (initial k-means on 50,000)
                           (24.5 s before this change)
SpaGCN (one seed)          5.2 s (5.3), 0.7 GB         546 s (446), 5.0 GB: met (initial Leiden on 50,000)
DeepST (one seed)          31 s (31), 0.9 GB           before the size rules: NOT met, >= ~37 min (see below)
DeepST (consensus of 4)    92 s (92), 0.9 GB (of 3)    1386 s (1187), 7.1 GB: NOT met by 3 min (see below;
                                                       one run ~8 min)
=========================  ==========================  ==================================================

At 5,000 bins the results are those of before the change (SpaGCN's consensus: the same run agreement,
0.9727; the size rules start above 50,000 spots). The 5,000-bin DeepST runs agree poorly (ARI 0.07 between
the consensus runs): at 18,000 genes the planted stripes are a weak signal.

Before this change SpaGCN's width search summed all spot pairs for every wide width it tried (``p(l)``
at ``l = 1000`` first): 9 of the 24 s at 5,000 bins, hours at 500,000 (n^2 pairs per width); the Leiden
initialisation's exact kNN and the k-means restarts ran on all spots (the kNN alone 69 CPU s at 50,000
points, quadratic).
Now the search uses the local pairs' sum as a lower bound (17 s wall, 8 s CPU, 1.8 GB at 500,000 bins:
``l`` = 13.93 against 14.05 at 5,000). The ARI against the planted stripes is low at 18,000 genes for
both methods (0.1; 0.99 at 2,000 genes): the 200 planted genes are a small part of the PCA's variance.

Potts prior (``--methods potts --genes 300``; 2026-12-02, load 4.2-6.0, 2 cores; wall s, peak RSS absolute):

=========================  ===================  ===================  ===================================
                           5,000                50,000               500,000
=========================  ===================  ===================  ===================================
lattice (radius graph)     0.01 s               0.08 s               2.6 s
update levels              0.00 s (11 levels)   0.01 s (15)          0.21 s (14)
ICM sweeps                 0.01 s (5 sweeps)    0.03 s (6)           0.68 s (7); 1.3 GB for the whole row
before: one spot at a time 0.16-0.19 s          2.4-3.3 s            37 s (8 sweeps)
accuracy model -> prior    0.658 -> 0.857       0.653 -> 0.853       0.654 -> 0.858 (one at a time: 0.859)
=========================  ===================  ===================  ===================================

The sweeps update a level of non-adjacent spots at once: ICM in a random visiting order, the same labels as
one spot at a time in that order (tests/methods/test_domains_potts.py). The loop before visited the spots in
index order (for Visium HD barcodes: rows of the array); the two orders agree on 99.1-99.4 % of the bins here,
the index order's objective 0.1-0.4 % higher on these stripes (an order effect: on Voronoi domains neither
order is the better one).

DeepST at 50,000 bins before the size rules (load 10, one thread; a profile, not a row): augmentation and
PCAs 111 s wall, about 1.8 CPU s per full-batch epoch, half of it the graph decoder's gathers of the 654,000
edges; at 500,000 bins the preparation took 455 s and 9-11 GB and an epoch > 4.3 s (>= ~37 min for one seed).

DeepST with the size rules (2026-12-02; above 50,000 spots: both PCAs fitted on a seeded 50,000-spot sample
and applied to all; one optimiser step per epoch on a subgraph of ~10,000 spots, random 1,000-spot spatial
tiles with their 2-hop halo; clusterings on a 50,000-spot sample; exact kNN of the sample under a bound).
500,000 bins x 18,000 genes, default (``stable``: 4 runs, 200 + 200 epochs), heavy lock, load 3.1-4.0 at
the start, 2.2 at the end: **1386 s wall (1187 CPU s), peak RSS 7.1 GB (the sample included): NOT met by
3 min**. Where the time goes (s, the 4 runs summed):

* preparation 168 (455 before);
* pre-training 191 (33-68 per run, 0.16-0.34 s per step);
* initial DEC clusters 202 (42-66 per run: the kNN of the 50,000-spot sample, Leiden, a full-graph forward);
* DEC training 302 (66-90 per run, with a full-graph forward every 20 steps for the target);
* the runs' own domains and the consensus 491 (4 kNN graphs of the sample, 5 bisection searches of Leiden's
  resolution on 50,000 nodes, 5 landmark votes).

Rerun on the final code (warm Leiden resolution searches on the sampled path, search_resolution(hint=)), heavy
lock, no other job, load 0.5 -> 1.1: **1071.8 s wall (1084.8 CPU s), peak RSS 7.1 GB: met** (phases: preparation
123, pre-training 132, initial clusters 154, DEC 237, domains + consensus 401 s). The earlier 1386 s (1187 CPU s)
was on the code before the warm searches, at load 3-4.

One run (from the phases, not run alone): 168 + 48 + 50 + 76 + ~100 (its domains) = ~7.5 min. The runs
agree at ARI 0.39 and the domains' ARI to the stripes is 0.00: at 18,000 genes the 200 planted genes are a
weak signal (SpaGCN 0.1; the 5,000-bin DeepST runs agree at 0.07). Loss per step (means of 10 steps; every
run alike): pre-training 15.0 -> 13.1 (step 60) -> 12.5 (100) -> 12.2 (140) -> 11.8 (200), flattening as
the full-batch loss does at 20,000 bins (22.6 -> 20.6 -> 19.9 -> 19.5 -> 18.9); DEC 12.5 -> 12.6-13.1, as
full batch (the KL term grows as the target sharpens). (``timings['peak_rss_mb']`` printed 27,769 there:
the runs' sum; it is now their maximum, and ``per_epoch_s`` their mean.)

Mini-batch against full batch where the stripes are recoverable (2,000 genes, ``stable=False``, seed 0; the
size thresholds lowered so that these sizes take the large-data paths with the same proportions; the session
before the threshold change): 20,000 bins, full batch ARI to the stripes 0.981 (150 s), mini-batch (2,000-spot
batches of 200-spot tiles, PCA on 5,000) 0.997 (55 s), the two agree at ARI 0.979; 50,000 bins, mini-batch
(5,000-spot batches of 500-spot tiles, PCA on 10,000) 0.996 (147 s; training 37 s for 400 steps), full batch
0.99 (measured before; a full-batch run did not finish in a 15-minute slot at load 5).

DeepST's full-batch threshold (``_model.FULL_BATCH_MAX``, 50,000 -> 10,000 spots) and batch size (a tenth of the
spots, 1,000-10,000, in 10 tiles; was a fixed 10,000 in tiles of 1,000), 2026-12-02: ``--methods
deepst-1-full,deepst-1-mini``, 2,000 genes, one seed (0; at 10,000 bins also seed 1), only the training path
changed (PCAs and clusterings exact at these sizes); wall s (CPU s), peak RSS absolute, ARI to the planted
stripes and to the full-batch run's domains; 20,000 bins under the heavy lock (load 4.9 -> 3.3), 5,000 and
10,000 without it (load 4.5-7.6; seed 1: 11, hence its wall time):

=========  ====================  =====================  ===========  ==========  ==============
bins       path (batch/tile)     time                   peak RSS     ARI truth   ARI to full
=========  ====================  =====================  ===========  ==========  ==============
5,000      full batch            100 s (41)             0.77 GB      0.927
5,000      1,000/100             50 s (20)              0.78 GB      0.982       0.915
5,000      2,000/200             82 s (30)              0.78 GB      0.995       0.925
10,000     full batch            117 s (79)             0.85 GB      0.973
10,000     1,000/100             36 s (25)              0.88 GB      0.998       0.971
10,000     2,000/200             59 s (31)              0.91 GB      0.947       0.974
10,000     5,000/500             143 s (50)             0.91 GB      0.972       0.999
10,000     seed 1: full batch    513 s (83)             0.83 GB      0.947
10,000     seed 1: 1,000/100     81 s (30)              0.76 GB      0.997
20,000     full batch            304 s (148)            1.11 GB      0.981
20,000     2,000/200             117 s (54)             1.22 GB      0.999       0.981
20,000     5,000/500             123 s (73)             1.26 GB      0.999       0.982
20,000     10,000/1,000          158 s (100)            1.27 GB      0.997       0.984
=========  ====================  =====================  ===========  ==========  ==============

The batches are at least as accurate as full batch from 5,000 bins on (7 of 8 rows higher, one 0.026 lower) and
2-3x faster in CPU s; a tenth of the spots per batch is the fastest at equal accuracy (a fixed 10,000 is half of
20,000 bins, nearly full batch, and 1.9x the CPU of batches of 2,000). At 2,000 bins x 2,000 genes they were not:
full batch 0.815 (20 CPU s), batches of 500 in tiles of 100 0.411 (9 CPU s). The threshold is 10,000 spots, not
5,000: below it the gain is under a minute per run, and every Visium v1 section (<= 4,992 spots) and the
real-data benchmarks (benchmarks/domains.py) keep the reference's full batch, bit for bit. Peak memory is the
same on both paths (+0.1 GB for the batches' index structures).

Default DeepST after the threshold change (``--methods deepst``; since issue 19 a consensus of 2 runs with
seed-independent initial weights, 4 runs before), 2026-12-02; wall s (CPU s), peak RSS absolute:

=======================  ===================================  ==============================================
size                     default DeepST                       notes
=======================  ===================================  ==============================================
5,000 x 2,000 genes      114 s (71), 0.81 GB, ARI 0.961       2 runs (agree 0.965), full batch; no lock,
                                                              load 4.1; 4 runs (before issue 19): 185 s
                                                              (131), 0.80 GB, ARI 0.924, load 4.5-4.9
50,000 x 18,000 genes    729 s (591), 1.66 GB: met            2 runs (agree 0.36), batches of 5,000 in
                                                              tiles of 500; heavy lock, load 3.0 -> 3.2
500,000 x 18,000 genes   1071.8 s (1084.8), 7.1 GB: met       4 runs, batches of 10,000 in tiles of 1,000
                                                              (the same at 500,000 before and after), above
=======================  ===================================  ==============================================

The stable mode without DEC (issue 19's third pass: 2 runs of 400 epochs of the autoencoders, k-means
with 200 starts, 40 at 50,000 spots), 2026-12-02 13:42-13:47 UTC, heavy lock, load 1.0-1.5: 5,000 x 2,000
genes 70.6 s (76.8), 0.68 GB, ARI 0.986 (runs agree 0.996); 50,000 x 18,000 genes 141.8 s (159.8), 1.66 GB,
ARI 0.173 (runs agree 0.954; preparation 44, the 2 runs' training 75, k-means 19); 500,000 x 18,000 genes (13:50-13:58 UTC, heavy lock, nice 10 beside a helper's runs, load
0.5 -> 3.8) 345.0 s (326.7), 7.11 GB: met, ARI 0.365 (runs agree 0.950; preparation 134, the 2 runs' training
143, k-means on a 50,000-spot sample 52).
The table above and the next paragraph are the DEC stable mode's.

At 50,000 x 18,000 (s, the 2 runs summed): preparation 54, pre-training 55, initial DEC clusters 108, DEC
training 44, the runs' domains and the consensus 463: at exactly 50,000 spots (``_cluster.SAMPLE_MAX``) the
Leiden resolution searches run on all spots, without a sample nor warm starts, and take 64 % of the time; the
training, full batch, would have been ~1.8 CPU s per step (above, ~24 min for 2 x 400 steps). The ARI to the
stripes is 0.08: at 18,000 genes the planted genes are a weak signal (as at 500,000). 20,000 and 50,000 bins x
2,000 genes with the default: not measured (the heavy lock's queue; one seed at 20,000: table above).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import PeakRSS, run_size

#: the methods' rows: (label, function name, keyword arguments)
ROWS = {
    "spagcn": ("SpaGCN (consensus of 3)", "spagcn", {}),
    "spagcn-1": ("SpaGCN (one seed)", "spagcn", {"stable": False}),
    "deepst": ("DeepST (default consensus)", "deepst", {}),
    "deepst-1": ("DeepST (one seed)", "deepst", {"stable": False}),
    "deepst-1-full": ("DeepST (one seed, full b.)", "deepst", {"stable": False}),
    "deepst-1-mini": ("DeepST (one seed, mini-b.)", "deepst", {"stable": False}),
    "potts": ("Potts prior (beta 2)", "potts", {"beta": 2.0}),
}
LIMIT_S, LIMIT_GB = 20 * 60, 16.0


def _potts(a, beta: float):
    """The spatial prior of ``spatial_prior=`` alone: the bins' lattice and ICM from a noisy soft assignment of the
    planted stripes (logits 2 on the true stripe plus N(0, 1.5) noise; the argmax is right for about 70 % of bins)."""
    from experimat.methods.domains import _potts

    rng = np.random.default_rng(0)
    truth = np.unique(a.obs["domain"].astype(str).to_numpy(), return_inverse=True)[1]
    k = int(truth.max()) + 1
    logit = 2.0 * (truth[:, None] == np.arange(k)) + rng.normal(0.0, 1.5, (truth.size, k))
    prob = np.exp(logit - logit.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    t0 = time.perf_counter()
    adj = _potts.lattice_neighbours(np.asarray(a.obsm["spatial"], dtype=float))
    t1 = time.perf_counter()
    n_levels = len(_potts.update_levels(adj))
    t2 = time.perf_counter()
    labels, sweeps = _potts.potts_labels(prob, prob.argmax(1), adj, beta)
    t3 = time.perf_counter()
    return labels, {"lattice_s": round(t1 - t0, 2), "levels_s": round(t2 - t1, 2), "icm_s": round(t3 - t2, 2),
                    "n_levels": n_levels, "sweeps": sweeps, "changed": round(float(np.mean(labels != prob.argmax(1))), 3),
                    "model_accuracy": round(float(np.mean(prob.argmax(1) == truth)), 3),
                    "prior_accuracy": round(float(np.mean(labels == truth)), 3)}


@contextlib.contextmanager
def _training_path(row: str, batch: int | None, tile: int | None):
    """``deepst-1-full`` / ``deepst-1-mini``: every step on all spots, or on subgraph batches of ``batch`` spots in
    tiles of ``tile`` spots, whatever the size (DeepST's size rule, ``_model.subgraph_plan``, set aside)."""
    from experimat.methods.domains.deepst import _model

    saved = _model.subgraph_plan
    if row == "deepst-1-full":
        _model.subgraph_plan = lambda n: None
    elif row == "deepst-1-mini":
        _model.subgraph_plan = lambda n: (batch, tile)
    try:
        yield
    finally:
        _model.subgraph_plan = saved


def _row_keys(methods: list[str], batches: list[tuple[int, int]]) -> list[str]:
    """The rows to run: ``deepst-1-mini`` once per ``--batches`` entry (``deepst-1-mini@BATCH/TILE``)."""
    return [k for m in methods for k in ([f"{m}@{b}/{t}" for b, t in batches] if m == "deepst-1-mini" else [m])]


def _row_label(key: str) -> str:
    m, _, bt = key.partition("@")
    return ROWS[m][0] + (f" {bt}" if bt else "")


def _call(kind: str, a, kwargs: dict, seed: int = 0):
    if kind == "potts":
        return _potts(a, **kwargs)
    if kind == "spagcn":
        from experimat.methods.domains.spagcn import spatial_detect_domains_spagcn

        spatial_detect_domains_spagcn(a, layer="lognorm", n_clusters=4, refine_shape="square", use_gpu=False, seed=seed,
                                      key_added="dom", **kwargs)
    else:
        from experimat.methods.domains.deepst import spatial_detect_domains_deepst

        spatial_detect_domains_deepst(a, layer="counts", n_domains=4, use_gpu=False, seed=seed, key_added="dom",
                                      **kwargs)
    entry = a.uns["dom"]
    column = "dom" if kind == "spagcn" else "dom.domain"
    return a.obs[column].to_numpy(), {**entry["params"], **{k: v for k, v in entry.items() if k != "params"}}


def _record_losses() -> list[dict]:
    """Wrap DeepST's training so that every run's loss per step is kept (``--loss-curve``)."""
    from experimat.methods.domains.deepst import _core

    runs: list[dict] = []
    real = _core.train_deepst

    def recording(*args, **kwargs):
        history: dict = {}
        out = real(*args, history=history, **kwargs)
        runs.append({**history, "timings": out[2]})
        return out

    _core.train_deepst = recording
    return runs


def _print_losses(runs: list[dict]) -> None:
    for i, run in enumerate(runs):
        t = run["timings"]
        # the stable mode has no DEC stage (no initial clusters; DEC training 0 s)
        print(f"         run {i}: pre-training {t['pretrain_s']:.1f} s, initial clusters {t.get('init_clusters_s', 0.0):.1f} s, "
              f"DEC training {t['train_s']:.1f} s", flush=True)
        for phase in ("pretrain", "train"):
            loss = np.asarray(run[phase])
            if loss.size:
                at = np.linspace(0, loss.size - 1, 11).astype(int)
                print(f"           {phase:<8} loss " + " ".join(f"{j}:{loss[max(0, j - 9) : j + 1].mean():.4g}" for j in at))
    runs.clear()


def run_one(n: int, n_genes: int, methods: list[str], results: Path, profile: bool, loss_curve: bool = False,
            batches: list[tuple[int, int]] = (), seed: int = 0) -> None:
    import experimat as em
    from experimat.methods._expression import normalize_total

    warnings.simplefilter("ignore")
    a = em.datasets.synthetic_visium_hd(n, n_genes, seed=1, with_image=False)
    a.layers["lognorm"] = normalize_total(a.layers["counts"])[0]
    truth = a.obs["domain"].astype(str).to_numpy()
    from sklearn.metrics import adjusted_rand_score

    losses = _record_losses() if loss_curve else None

    found: dict[str, np.ndarray] = {}
    for key in _row_keys(methods, list(batches)):
        m, _, bt = key.partition("@")
        label, kind, kwargs = _row_label(key), ROWS[m][1], ROWS[m][2]
        batch, tile = (int(v) for v in bt.split("/")) if bt else (None, None)
        b = a.copy()
        cpu0 = time.process_time()
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        with PeakRSS() as mem, _training_path(m, batch, tile):
            labels, params = _call(kind, b, kwargs, seed)
        if prof is not None:
            prof.disable()
        cpu = time.process_time() - cpu0
        ari = adjusted_rand_score(truth, labels)
        rules = {k: params[k] for k in ("init_sample", "cluster_sample", "edge_sample", "pca_sample", "train_batch",
                                        "train_tile", "run_agreement", "n_epochs",
                                        "lattice_s", "levels_s", "icm_s", "n_levels", "sweeps", "changed",
                                        "model_accuracy", "prior_accuracy") if k in params}
        found[key] = labels
        print(f"{n:>8,} | {label:<24} | {mem.seconds:8.1f} s | cpu {cpu:8.1f} s | peak RSS {mem.peak / 1e9:6.2f} GB | "
              f"ARI vs stripes {ari:.3f} | {rules}", flush=True)
        if isinstance(params.get("timings"), dict):  # DeepST's phases (training phases summed over the runs)
            print("         phases: " + ", ".join(f"{k} {v:.1f}" for k, v in params["timings"].items()), flush=True)
        if losses:
            _print_losses(losses)
        with open(results, "a") as f:
            f.write(json.dumps({"n": n, "row": key, "wall": mem.seconds, "cpu": cpu, "peak_gb": mem.peak / 1e9,
                                "ari": ari, "load": Path("/proc/loadavg").read_text().split()[0]}) + "\n")
        if prof is not None:
            import pstats

            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        del b
    if "deepst-1-full" in found:  # the two training paths' agreement
        for key, labels in found.items():
            if key.startswith("deepst-1-mini"):
                print(f"{n:>8,} | ARI {_row_label(key)} vs full batch: "
                      f"{adjusted_rand_score(found['deepst-1-full'], labels):.3f}", flush=True)


def summary(results: Path, sizes: list[int], methods: list[str]) -> None:
    """``methods``: the row keys (:func:`_row_keys`)."""
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    got = {(r["n"], r["row"]): r for r in rows}
    print(f"\nIssue 21, 'SpaGCN and DeepST domains' (<= 20 min each, <= 16 GB; judged at {max(sizes):,} bins; "
          f"load now {Path('/proc/loadavg').read_text().split()[:3]})")
    print(f"{'row':<26} | " + " | ".join(f"{n:>30,}" for n in sizes) + " | verdict")
    for m in methods:
        cells = []
        for n in sizes:
            r = got.get((n, m))
            cells.append("-" if r is None else f"{r['wall']:.3g}s ({r['cpu']:.3g}) {r['peak_gb']:.1f}GB ARI {r['ari']:.2f}")
        big = got.get((max(sizes), m))
        verdict = "not measured" if big is None else (
            "met" if big["wall"] <= LIMIT_S and big["peak_gb"] <= LIMIT_GB else "NOT met")
        print(f"{_row_label(m):<26} | " + " | ".join(f"{c:>30}" for c in cells) + f" | {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description="SpaGCN / DeepST domains at scale (issue 21)")
    ap.add_argument("--domains", action="store_true")
    ap.add_argument("--sizes", default="5000,50000,500000")
    ap.add_argument("--genes", type=int, default=18_000)
    ap.add_argument("--methods", default="spagcn,spagcn-1,deepst,deepst-1")
    ap.add_argument("--timeout", type=int, default=3000, help="seconds per size")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--loss-curve", action="store_true")
    ap.add_argument("--batches", default="2000/200,5000/500",
                    help="deepst-1-mini's rows: comma-separated pairs of spots per batch / per tile")
    ap.add_argument("--seed", type=int, default=0, help="the methods' seed (the data's is 1)")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--results", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    bad = sorted(set(methods) - set(ROWS))
    if bad:
        raise SystemExit(f"unknown --methods {bad}; choose from {sorted(ROWS)}")
    try:
        batches = [tuple(int(v) for v in bt.split("/")) for bt in args.batches.split(",") if bt]
    except ValueError:
        raise SystemExit(f"--batches {args.batches!r}: give BATCH/TILE pairs, e.g. 2000/200,5000/500") from None
    if args.one is not None:
        run_one(args.one, args.genes, methods, Path(args.results), args.profile, args.loss_curve, batches, args.seed)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.jsonl"
        print(f"load at start: {Path('/proc/loadavg').read_text().strip()}; {os.cpu_count()} CPUs")
        for n in sizes:
            cmd = [sys.executable, __file__, "--one", str(n), "--genes", str(args.genes), "--methods", args.methods,
                   "--results", str(results), "--batches", args.batches, "--seed", str(args.seed), *(["--profile"] if args.profile else []),
                   *(["--loss-curve"] if args.loss_curve else [])]
            run_size(cmd, n, args.timeout)
        print(f"load at end: {Path('/proc/loadavg').read_text().strip()}")
        summary(results, sizes, _row_keys(methods, batches))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
