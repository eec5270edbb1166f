"""Writes ``project/``: a tiny project whose models are in the model layout of experimat <= c5da4c5.

Run once with the code of commit c5da4c5 (``PYTHONPATH=<checkout of c5da4c5>/src python make_fixture.py``);
the output is frozen in the repository and must not be regenerated with newer code (it proves that
projects saved before the saved-model base class still load through the upgrade path).
"""

from pathlib import Path

import anndata as ad
import numpy as np

import experimat as em

HERE = Path(__file__).parent
sc = ad.read_h5ad(HERE.parent / "deconv" / "zeisel_subset.h5ad")
keep = np.r_[0:20, 300:320, 590:600]  # two classes (interneurons, pyramidal SS)
genes = np.argsort(-np.asarray(sc.X.sum(0)).ravel(), kind="stable")[:30]
small = sc[keep][:, np.sort(genes)].copy()
small.obs = small.obs[["class"]].astype(str)
small.layers["counts"] = small.X.copy()
expm = em.Experiment.from_anndata({"ref": small}, modality="rna", taxa="mmu", project=HERE / "project", harmonize_genes=False)
expm.rna.reference_signatures(run_on_samples=True, labels_key="class", method="cluster_mean",
                              cell_count_cutoff=0, cell_percentage_cutoff2=0, nonz_mean_cutoff=0)
expm.rna.fit_condscvi(run_on_samples=True, labels_key="class", n_top_genes=None, n_latent=2, n_hidden=4,
                      n_layers=1, max_epochs=2, use_gpu=False, seed=0)
print(expm.models)
expm.close()
