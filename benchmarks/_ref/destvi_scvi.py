"""Reference driver: scvi-tools 1.4.2 CondSCVI + DestVI on the benchmark inputs.

Run with the interpreter of a venv that has scvi-tools (env EXPERIMAT_REF_PYTHON_SCVI):
    python destvi_scvi.py SC.h5ad SPOTS.h5ad OUT_DIR LABELS_KEY SC_EPOCHS ST_EPOCHS SEED
Torch threads: env EXPERIMAT_TORCH_THREADS (default 1). Writes OUT_DIR/proportions.csv and OUT_DIR/timing.json. CondSCVI uses prior="mog": with the default
prior, DestVI.from_rna_model raises KeyError('prior') in 1.4.2.
"""

import json
import os
import sys
import time
from pathlib import Path

import anndata as ad
import scvi
import torch

sc_path, st_path, out, labels_key, sc_epochs, st_epochs, seed = sys.argv[1:8]
out = Path(out)
out.mkdir(parents=True, exist_ok=True)
scvi.settings.seed = int(seed)
# threads: env EXPERIMAT_TORCH_THREADS (default 1, as experimat on a shared machine: 2 threads on 2 busy cores
# are many times slower than 1)
torch.set_num_threads(int(os.environ.get("EXPERIMAT_TORCH_THREADS", "1")))
sc = ad.read_h5ad(sc_path)
st = ad.read_h5ad(st_path)
t0, c0 = time.perf_counter(), time.process_time()
scvi.model.CondSCVI.setup_anndata(sc, layer="counts", labels_key=labels_key)
sc_model = scvi.model.CondSCVI(sc, weight_obs=False, prior="mog")
sc_model.train(max_epochs=int(sc_epochs), accelerator="cpu", enable_progress_bar=False)
t1, c1 = time.perf_counter(), time.process_time()
scvi.model.DestVI.setup_anndata(st, layer="counts")
st_model = scvi.model.DestVI.from_rna_model(st, sc_model, vamp_prior_p=15)
st_model.train(max_epochs=int(st_epochs), accelerator="cpu", enable_progress_bar=False)
t2, c2 = time.perf_counter(), time.process_time()
props = st_model.get_proportions()
props.to_csv(out / "proportions.csv")
(out / "timing.json").write_text(
    json.dumps(
        {
            "condscvi_s": t1 - t0,
            "destvi_s": t2 - t1,
            "total_s": t2 - t0,
            "condscvi_cpu_s": c1 - c0,
            "destvi_cpu_s": c2 - c1,
            "total_cpu_s": c2 - c0,
            "scvi_version": scvi.__version__,
            "threads": torch.get_num_threads(),
            "sc_epochs": int(sc_epochs),
            "st_epochs": int(st_epochs),
        }
    )
)
print(json.dumps({"total_s": t2 - t0}))
