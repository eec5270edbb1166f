"""Shared fixtures: shipped real data, synthetic experiments, quiet settings."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("EXPERIMAT_PROGRESS", "0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# a registered method that changes a slot it does not declare in `writes` is an error in the tests
os.environ.setdefault("EXPERIMAT_CHECK_CONTRACT", "1")

DATA = Path(__file__).parent / "data"
# the demo's muscle samples ship inside the package (one copy, used by the tests and by ``experimat demo``)
MUSCLE = Path(__file__).parents[1] / "src" / "experimat" / "datasets" / "_data" / "visium_mouse_muscle"
LAYOUTS = DATA / "visium_layouts"
ZEISEL = DATA / "deconv" / "zeisel_subset.h5ad"


@pytest.fixture(autouse=True)
def _quiet_settings():
    import experimat as em

    with em.settings.override(progress=False, verbosity="warning", seed=0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield


@pytest.fixture(scope="session")
def muscle_sheet():
    import pandas as pd

    return pd.DataFrame(
        {
            "sample": ["Vis5A_2dpi", "Vis7B_5dpi"],
            "modality": "spatial-bin",
            "taxa": "mmu",
            "batch": ["slide1", "slide1"],
            "group": ["2dpi", "5dpi"],
            "path": [str(MUSCLE / "Vis5A_2dpi"), str(MUSCLE / "Vis7B_5dpi")],
            "days": [2, 5],
        }
    )


@pytest.fixture(scope="session")
def muscle_project_template(tmp_path_factory, muscle_sheet):
    """A saved project of the two real muscle samples (built once; copy before writing)."""
    import experimat as em

    root = tmp_path_factory.mktemp("tmpl") / "muscle"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expm = em.Experiment.from_table(muscle_sheet, project=root)
    expm.close()
    return root


@pytest.fixture
def muscle_project(tmp_path, muscle_project_template):
    import shutil

    dst = tmp_path / "muscle"
    shutil.copytree(muscle_project_template, dst)
    return dst


@pytest.fixture(scope="session")
def zeisel_sc():
    """The shipped Zeisel mouse-cortex subset (tests/data/deconv), raw counts in ``X`` and ``layers['counts']``.

    Shared by the deconvolution tests (one read per session): copy it before writing into it.
    """
    import anndata as ad

    a = ad.read_h5ad(ZEISEL)
    a.layers["counts"] = a.X.copy()
    return a


@pytest.fixture(scope="session")
def zeisel_spots(zeisel_sc):
    """150 pseudo-spots of 2-10 Zeisel cells (about 2,000 counts) with the truth in ``obsm['true_proportions']``.

    Shared by the DestVI and deconvolution-figure tests: copy it before writing into it.
    """
    from experimat.datasets import pseudo_spots

    return pseudo_spots(zeisel_sc, "class", n_spots=150, depth=2000.0, seed=0)


def make_synthetic_experiment(n_samples=3, n_spots=120, n_genes=40, project=None, seed=0):
    import experimat as em
    from experimat.datasets import synthetic_domains

    adatas = {f"s{i}": synthetic_domains(n_spots, 3, n_genes, n_markers_per_domain=5, seed=seed + i) for i in range(n_samples)}
    return em.Experiment.from_anndata(adatas, modality="spatial-bin", taxa="mmu", project=project, harmonize_genes=False)


@pytest.fixture
def synth_project(tmp_path):
    expm = make_synthetic_experiment(project=tmp_path / "synth")
    yield expm
    expm.close()


def shared_data_dir() -> Path | None:
    """The folder of the larger public data sets: ``EXPERIMAT_DATA_DIR`` when set, else the ``shared/data`` folder
    beside the repository (as CI lays it out); None when neither exists."""
    env = os.environ.get("EXPERIMAT_DATA_DIR")
    for cand in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[2] / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None
