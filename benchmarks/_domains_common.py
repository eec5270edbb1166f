"""Data and measures shared by the domain benchmarks (benchmarks/domains.py): the real and synthetic
inputs (raw counts in ``X``, log-normalised in ``layers['lognorm']``), ARI, seed stability,
neighbour agreement and the load average."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


# --------------------------------------------------------------------------- data
def _lognorm(adata, min_cells: int = 3):
    import scanpy as sc

    keep = np.asarray((adata.X > 0).sum(0)).ravel() >= min_cells
    adata = adata[:, keep].copy()
    adata.layers["lognorm"] = sc.pp.log1p(sc.pp.normalize_total(adata, target_sum=1e4, inplace=False)["X"])
    return adata


def synthetic(n_spots=2000, n_domains=5, layout="stripes", with_image=False, seed=0):
    import experimat as em

    a = em.datasets.synthetic_domains(n_spots, n_domains, layout=layout, with_image=with_image, seed=seed)
    return _lognorm(a), "domain"


def mouse_olfactory_bulb():
    """SpatialDE's MOB replicate 11 (ST, 260 annotated spots) with the 5 STdeconvolve layers."""
    import anndata as ad

    import experimat as em

    root = Path(em.settings.data_dir) / "spatialde_mouse_olfactory_bulb_rep11"
    counts = pd.read_csv(root / "Rep11_MOB_0.csv.gz", index_col=0)
    annot = pd.read_csv(root / "MOB_layer_annotation_stdeconvolve.csv", index_col=0)
    annot = annot[annot["layer"].notna()]
    spots = counts.index.intersection(annot.index)
    a = ad.AnnData(counts.loc[spots].to_numpy(np.float32), obs=annot.loc[spots, ["layer"]].astype("category"))
    a.obs_names, a.var_names = list(spots), list(counts.columns)
    a.obsm["spatial"] = annot.loc[spots, ["x", "y"]].to_numpy(np.float64)
    return _lognorm(a), "layer"


def _st_sections(folder: str, prefix: str, n: int) -> dict:
    import anndata as ad

    import experimat as em

    root = Path(em.settings.data_dir) / "st_mouse_brain_and_olfactory_bulb_stutility" / folder
    out = {}
    for i in range(1, n + 1):
        c = pd.read_csv(root / f"{prefix}{i}.tsv.gz", sep="\t", index_col=0)
        al = pd.read_csv(root / f"alignment_table_{prefix}{i}.tsv.gz", sep="\t")
        al.index = al.x.astype(str) + "x" + al.y.astype(str)
        keep = al.index[al.selected == 1].intersection(c.index)
        a = ad.AnnData(c.loc[keep].to_numpy(np.float32))
        a.obs_names, a.var_names = [f"{prefix[0]}{i}_{k}" for k in keep], list(c.columns)
        a.obsm["spatial"] = al.loc[keep, ["pixel_x", "pixel_y"]].to_numpy(np.float64)
        out[f"{prefix}{i}"] = _lognorm(a)
    return out


def hippocampus_sections():
    """The eight ST mouse brain (hippocampus) sections of STUtility, spots under tissue."""
    return _st_sections("hippo", "Hippo", 8)


def bulb_sections():
    """The four ST mouse olfactory bulb sections of STUtility, spots under tissue."""
    return _st_sections("mob", "MOB", 4)


def muscle_sample(name: str):
    """A Visium mouse muscle sample (McKellar et al. 2021), no annotation; spots under tissue."""
    import warnings

    import scanpy as sc

    import experimat as em

    root = Path(em.settings.data_dir) / "visium_mouse_muscle_mckellar2021" / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = sc.read_10x_h5(root / "filtered_feature_bc_matrix.h5")
    a.var_names_make_unique()
    pos = pd.read_csv(root / "spatial" / "tissue_positions_list.csv", header=None, index_col=0).loc[a.obs_names]
    a.obsm["spatial"] = pos[[5, 4]].to_numpy(dtype=float)  # (x, y) = (pxl_col, pxl_row), full resolution
    a = _lognorm(a, min_cells=10)
    a.obs["none"] = "0"
    return a, "none"


def synthetic_sections(n_sections=3, n_spots=3000, n_domains=5, effect=0.5, seed=0):
    """Serial sections of one synthetic tissue with section effects (``em.datasets.synthetic_sections``),
    log-normalised."""
    import experimat as em

    sections = em.datasets.synthetic_sections(n_sections, n_spots, n_domains, effect=effect, seed=seed)
    return {name: _lognorm(a, min_cells=0) for name, a in sections.items()}


def _synthetic_domains(*args, **kwargs):
    import experimat as em

    return em.datasets.synthetic_domains(*args, **kwargs)


def stability_cases() -> list[tuple]:
    """The seed-stability cases (issue 19) of SpaGCN and DeepST: ``(name, loader, n_domains,
    refine_shape)``; the loader returns ``(adata, truth_key)`` (``"none"``: no annotation)."""
    return [
        ("MOB rep11 (ST, 5 layers)", mouse_olfactory_bulb, 5, "square"),
        ("muscle Vis5A_2dpi (8 domains)", lambda: muscle_sample("Vis5A_2dpi"), 8, "hexagon"),
        ("muscle Vis7B_5dpi (8 domains)", lambda: muscle_sample("Vis7B_5dpi"), 8, "hexagon"),
        (
            "synthetic 1500 spots, 6 voronoi, 2-fold markers",
            lambda: (
                _lognorm(
                    _synthetic_domains(
                        1500, 6, layout="voronoi", fold_change=2.0, n_markers_per_domain=10, depth=2000, seed=2
                    )
                ),
                "domain",
            ),
            6,
            "hexagon",
        ),
    ]


def loaded_cases(cases=None):
    """Load the :func:`stability_cases` whose name contains one of ``cases`` (all when ``None``); yields
    ``(name, adata, truth_key, n_domains, refine_shape)`` and says which ones lack their data."""
    for name, load, k, shape in stability_cases():
        if cases and not any(c.lower() in name.lower() for c in cases):
            continue
        try:
            adata, truth_key = load()
        except FileNotFoundError as e:
            print(f"{name}: data not found ({e}); set EXPERIMAT_DATA_DIR")
            continue
        yield name, adata, truth_key, k, shape

def _load() -> str:
    """The 1-minute load average now (timings on a shared machine are only comparable beside it)."""
    path = Path("/proc/loadavg")
    return path.read_text().split()[0] if path.exists() else "n/a"


def _ari(truth, pred) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(np.asarray(truth).astype(str), np.asarray(pred).astype(str)))


def _pairwise(labels: list) -> float:
    return float(np.mean([_ari(a, b) for i, a in enumerate(labels) for b in labels[i + 1 :]]))


def _neighbour_agreement(xy: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean fraction of each spot's ``k`` nearest spots that share its label."""
    from scipy.spatial import cKDTree

    _, idx = cKDTree(xy).query(xy, k=k + 1)
    labels = np.asarray(labels).astype(str)
    return float((labels[idx[:, 1:]] == labels[:, None]).mean())


def _print_row(row: dict) -> None:
    parts = [f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()]
    print("  " + "  ".join(parts), flush=True)
