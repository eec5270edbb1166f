"""Cut the small MOB subset used by tests/methods/test_svg.py from the SpatialDE paper's data.

Run: EXPERIMAT_DATA_DIR=<data dir> python dev/make_svg_test_data.py
"""

from pathlib import Path

import numpy as np
import pandas as pd

import experimat as em

src = Path(em.settings.data_dir) / "spatialde_mouse_olfactory_bulb_rep11"
out = Path(__file__).resolve().parents[1] / "tests" / "data" / "svg"
out.mkdir(parents=True, exist_ok=True)

df = pd.read_csv(src / "Rep11_MOB_0.csv.gz", index_col=0)
df = df.loc[:, df.sum(0) >= 3]
total = df.sum(1)
df = df.loc[total > 10]
total = df.sum(1).to_numpy(np.float64)
ref = pd.read_csv(src / "spatialde_results_Rep11_MOB_sparkanalysis.csv", index_col=0)
ref = ref[ref.g != "log_total_count"].set_index("g")

# SpatialDE's preprocessing on all genes (NaiveDE.stabilize + regress_out log total counts)
counts = df.to_numpy(np.float64)
mean, var = counts.mean(0), counts.var(0, ddof=1)
phi = np.sum(mean**2 * (var - mean)) / np.sum(mean**4)
Z = np.log(counts + 1.0 / (2.0 * phi))
lt = np.log(total)
ltc = lt - lt.mean()
Z = Z - lt[:, None] * ((ltc @ Z) / (ltc @ ltc))[None, :]

rng = np.random.default_rng(0)
sig = list(ref.index[ref.qval < 0.05])
rest = [g for g in df.columns if g not in set(sig)]
genes = sig + list(rng.choice(rest, size=300 - len(sig), replace=False))
cols = df.columns.get_indexer(genes)
xy = np.array([[float(v) for v in s.split("x")] for s in df.index])
np.savez_compressed(
    out / "mob_subset.npz",
    expr=Z[:, cols].astype(np.float32),
    counts=counts[:, cols].astype(np.int32),
    total_counts=total,
    xy=xy,
    spots=np.array(df.index, dtype=str),
    genes=np.array(genes, dtype=str),
    ref_llr=ref.loc[genes, "LLR"].to_numpy(),
    ref_pval=ref.loc[genes, "pval"].to_numpy(),
    ref_qval=ref.loc[genes, "qval"].to_numpy(),
    ref_l=ref.loc[genes, "l"].to_numpy(),
)
print("wrote", out / "mob_subset.npz", Z.shape, len(genes), "genes,", len(sig), "published significant")
