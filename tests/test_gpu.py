"""CPU vs GPU agreement of the JAX / torch methods (Moran's I is sparse SciPy, CPU only) (opt-in: ``-m gpu``; skipped where no GPU is visible).

Run on a machine with a GPU, with both platforms visible to JAX::

    JAX_PLATFORMS=cuda,cpu python -m pytest -m gpu -p no:cacheprovider tests/test_gpu.py

The issues ask for agreement to 1e-5 relative (spatially variable genes) and 1e-4 (LOCAT); torch
models are compared by accuracy, since CUDA kernels sum in another order.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from experimat.methods.svg import spatial_svg

pytestmark = pytest.mark.gpu
DATA = Path(__file__).parent / "data"


def _jax_gpu() -> bool:
    try:
        import jax

        return bool(jax.devices("gpu"))
    except (ImportError, RuntimeError):
        return False


def _torch_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


needs_jax_gpu = pytest.mark.skipif(not _jax_gpu(), reason="no GPU visible to JAX (set JAX_PLATFORMS=cuda,cpu)")
needs_torch_gpu = pytest.mark.skipif(not _torch_gpu(), reason="no CUDA device visible to torch")


@pytest.fixture(scope="module")
def mob() -> ad.AnnData:
    z = np.load(DATA / "svg" / "mob_subset.npz")
    a = ad.AnnData(
        z["counts"].astype(np.float32), obs=pd.DataFrame(index=z["spots"]), var=pd.DataFrame(index=z["genes"])
    )
    a.layers["counts"] = a.X.copy()
    a.obsm["spatial"] = z["xy"]
    return a


def _log_p(x: pd.Series) -> np.ndarray:
    return np.log(np.clip(x.to_numpy(dtype=float), 1e-300, None))


@needs_jax_gpu
@pytest.mark.parametrize(
    ("method", "cols", "kwargs"),
    [
        ("spatialde", ["llr", "fsv", "l"], {"null": "chi2"}),
        ("spatialde2", ["stat"], {"layer": "counts"}),
    ],
)
def test_svg_cpu_gpu_agree(mob, method, cols, kwargs):
    out = {}
    for gpu in (False, True):
        a = mob.copy()
        spatial_svg(a, method=method, use_gpu=gpu, seed=0, key_added="t", **kwargs)
        out[gpu] = a.var
    cpu, gpu = out[False], out[True]
    present = [c for c in cols if f"t.{c}" in cpu]
    assert present, f"none of {cols} written by {method}"
    for c in present:
        np.testing.assert_allclose(gpu[f"t.{c}"], cpu[f"t.{c}"], rtol=1e-5, atol=1e-8, equal_nan=True, err_msg=c)
    np.testing.assert_allclose(_log_p(gpu["t.pval"]), _log_p(cpu["t.pval"]), rtol=1e-5, atol=1e-6, equal_nan=True)


@needs_jax_gpu
def test_locat_cpu_gpu_agree():
    import scanpy as sc

    from experimat.methods.locat import locat

    a = sc.datasets.pbmc68k_reduced()[:, :120].copy()
    res = {gpu: locat(a.copy(), embedding="pca", n_dims=8, seed=0, use_gpu=gpu) for gpu in (False, True)}
    cpu, gpu = (res[k].set_index("gene_name").sort_index() for k in (False, True))
    for c in ("zscore", "sens_score", "max_deficit"):
        np.testing.assert_allclose(gpu[c], cpu[c], rtol=1e-4, atol=1e-4, equal_nan=True, err_msg=c)


@needs_torch_gpu
def test_cell2location_runs_on_gpu():
    from experimat.datasets import pseudo_spots
    from experimat.methods.deconv.cell2location import deconvolve_cell2location, reference_signatures

    sc_ref = ad.read_h5ad(DATA / "deconv" / "zeisel_subset.h5ad")
    spots = pseudo_spots(sc_ref, "class", n_spots=150, cells_per_spot=(2, 10), depth=3000, seed=1)
    sig = reference_signatures(sc_ref, labels_key="class", method="nb_regression", max_epochs=100, use_gpu=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deconvolve_cell2location(spots, reference=sig, n_cells_per_location=6, max_epochs=300, seed=0, use_gpu=True)
    est = spots.obsm["cell2location.means"]
    truth = spots.obsm["true_proportions"]
    e = est[truth.columns].to_numpy()
    e = e / e.sum(1, keepdims=True)
    r = np.nanmean([np.corrcoef(x, y)[0, 1] for x, y in zip(e, truth.to_numpy())])
    assert r >= 0.8
