"""Plots: every plot type rendered to PNG (Agg, no display) on real Visium data and synthetic slots."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

import experimat as em
from experimat import pl
from experimat._errors import InvalidInputError, KeyNotFoundError, MissingSlotError

DATA = Path(__file__).parent / "data" / "visium_layouts" / "spaceranger_1.0_hires"
TOP_GENE = "ENSG00000175756"  # the most expressed gene of the subset
RGB_LOW = ["lowres/r", "lowres/g", "lowres/b"]


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def visium_base():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = em.io.read_spaceranger(DATA)
    adata.var_names_make_unique()
    return adata


@pytest.fixture
def visium(visium_base):
    return visium_base.copy()


def _with_method_slots(adata, seed=0):
    """Fill the slots that the method helpers write (AEH, SpaGCN, LOCAT, cell2location, UMAP)."""
    rng = np.random.default_rng(seed)
    xy = adata.obsm["spatial"].astype(float)
    u = (xy - xy.min(0)) / np.ptp(xy, axis=0)
    adata.obsm["aeh"] = pd.DataFrame(
        {"0": u[:, 0], "1": u[:, 1], "2": np.sin(6 * u[:, 0]) * np.cos(6 * u[:, 1])}, index=adata.obs_names
    )
    adata.var["aeh.pattern"] = (np.arange(adata.n_vars) % 3).astype(str)
    domain = (u[:, 0] * 3).astype(int).clip(0, 2).astype(str)
    adata.obs["spagcn.domain"] = pd.Categorical(domain)
    refined = domain.copy()
    refined[rng.random(len(refined)) < 0.1] = "3"
    adata.obs["spagcn.refined"] = pd.Categorical(refined)
    adata.obsm["X_umap"] = np.column_stack([u[:, 0] * 10, u[:, 1] * 10]) + rng.normal(0, 0.3, (adata.n_obs, 2))
    z = np.linspace(12, -3, adata.n_vars)
    adata.var["locat.zscore"] = z
    adata.var["locat.pval"] = np.exp(-np.abs(z))
    conc = z > 2
    depl = conc & (np.arange(adata.n_vars) % 2 == 0)
    adata.var["locat.is_conc_sig"] = conc
    adata.var["locat.is_depl_sig"] = depl
    adata.var["locat.is_joint_sig"] = depl
    types = ["astrocytes", "neurons", "oligodendrocytes", "microglia"]
    ab = np.column_stack([rng.gamma(2.0, 1.0, adata.n_obs) * (domain == str(i % 3)) for i in range(4)])
    adata.obsm["cell2location.q05"] = pd.DataFrame(ab, index=adata.obs_names, columns=types)
    adata.uns["cell2location"] = {"training_history": {"elbo_train": list(1e4 * np.exp(-np.arange(200) / 30) + 50)}}
    return adata


def _png(fig, path):
    fig.savefig(path, dpi=100)
    assert path.stat().st_size > 5_000
    img = imread(path)
    w, h = fig.get_size_inches() * 100
    assert img.shape[:2] == (round(h), round(w))
    return img[..., :3]


def _nonblank(img, min_std=0.05):
    assert img.std() > min_std, "the figure is (nearly) blank"


def _render(fig):
    """Draw with Agg (our figures are not registered with pyplot) and return RGB in [0, 1]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(float) / 255


def _panel_pixels(fig, ax):
    """RGB pixels inside an axes of a drawn figure."""
    buf = _render(fig)
    x0, y0, x1, y1 = ax.get_window_extent().extents
    H = buf.shape[0]
    return buf[int(H - y1) + 2 : int(H - y0) - 2, int(x0) + 2 : int(x1) - 2]


def _spot_pixels(fig, ax, xy):
    buf = _render(fig)
    pix = ax.transData.transform(xy)
    H = buf.shape[0]
    cols = np.round(pix[:, 0]).astype(int)
    rows = np.round(H - pix[:, 1]).astype(int)
    return buf[rows, cols]


def _snapshot(adata):
    spatial = adata.uns.get("spatial", {})
    images = {(lib, k): v.copy() for lib, e in spatial.items() for k, v in e.get("images", {}).items()}
    return (
        list(adata.obs.columns),
        list(adata.var.columns),
        sorted(adata.obsm.keys()),
        sorted(adata.uns.keys()),
        adata.obs.copy(),
        adata.X.copy(),
        images,
    )


def _assert_unchanged(adata, snap):
    obs_cols, var_cols, obsm_keys, uns_keys, obs, X, images = snap
    assert list(adata.obs.columns) == obs_cols
    assert list(adata.var.columns) == var_cols
    assert sorted(adata.obsm.keys()) == obsm_keys
    assert sorted(adata.uns.keys()) == uns_keys
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert (adata.X != X).nnz == 0
    for (lib, k), img in images.items():
        np.testing.assert_array_equal(adata.uns["spatial"][lib]["images"][k], img)


# ------------------------------------------------------------------------------------------- get_image
def test_get_image_channels_and_dict(visium):
    lib = next(iter(visium.uns["spatial"]))
    stored = visium.uns["spatial"][lib]["images"]["lowres"]
    if stored.dtype == np.uint8:  # em.io stores uint8; get_image returns float32 in [0, 1]
        stored = stored.astype(np.float32) / 255.0
    rgb = pl.get_image(visium, channels=RGB_LOW)
    assert rgb.shape == (600, 600, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb, stored)
    g = pl.get_image(visium, channels="lowres/g")
    np.testing.assert_allclose(g, stored[..., 1])
    np.testing.assert_allclose(pl.get_image(visium, channels="lowres/1"), g)
    bgr = pl.get_image(visium, channels=["lowres/b", "lowres/g", "lowres/r"])
    np.testing.assert_allclose(bgr, stored[..., ::-1])
    # uint8 images come back as floats in [0, 1]
    ad8 = visium.copy()
    ad8.uns["spatial"][lib]["images"]["lowres"] = (stored * 255).round().astype(np.uint8)
    np.testing.assert_allclose(pl.get_image(ad8, channels=RGB_LOW), stored, atol=0.005)
    # a dict of samples gives a dict of images; the sample name need not be the library id
    out = pl.get_image({"p1-t4": visium, "p2": ad8}, channels=RGB_LOW)
    assert set(out) == {"p1-t4", "p2"} and out["p2"].shape == (600, 600, 3)
    # the result is a copy
    rgb[:] = 0
    assert visium.uns["spatial"][lib]["images"]["lowres"].max() > 0


def test_missing_hires_falls_back_to_lowres_with_notice(visium):
    lib = next(iter(visium.uns["spatial"]))
    del visium.uns["spatial"][lib]["images"]["hires"]
    records = []

    class _H(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = _H()
    em._logging.logger.logger.addHandler(handler)
    try:
        with em.settings.override(verbosity="info"):
            img = pl.get_image(visium, channels=["hires/r", "hires/g", "hires/b"])
            fig = pl.plot_spatial(visium, channels=["hires/r", "hires/g", "hires/b"])
    finally:
        em._logging.logger.logger.removeHandler(handler)
    assert img.shape == (600, 600, 3)
    assert any("'hires'" in m and "'lowres'" in m for m in records)
    assert fig.axes[0].images[0].get_array().shape[:2] == (600, 600)


# ------------------------------------------------------------------------------------------- plot_spatial
def test_plot_spatial_gene_over_image_png(visium, tmp_path):
    fig = pl.plot_spatial(
        {"s1": visium},
        channels=RGB_LOW,
        plot_embeddings={"visible": True, "basis": "spatial", "color": TOP_GENE},
        xrange=(3000, 11000),
        yrange=(3000, 11000),
        figsize=(5, 5),
    )
    img = _png(fig, tmp_path / "gene.png")
    _nonblank(img)
    ax = fig.axes[0]
    assert ax.get_xlim() == (3000, 11000) and ax.get_ylim() == (11000, 3000)  # y grows downwards
    assert len(ax.images) == 1 and len(ax.collections) == 1


def test_spot_colours_follow_the_gene(visium):
    """The spot layer's colours differ across spots and follow the expression of the gene."""
    fig = pl.plot_spatial(visium, plot_embeddings={"color": TOP_GENE, "cmap": "viridis"}, figsize=(6, 6))
    ax = fig.axes[0]
    expr = np.asarray(visium[:, TOP_GENE].X.toarray()).ravel()
    rendered = _spot_pixels(fig, ax, visium.obsm["spatial"].astype(float))
    coll = ax.collections[0]
    expected = np.asarray(coll.cmap(coll.norm(expr)))[:, :3]
    close = np.abs(rendered - expected).max(1) < 0.08
    assert close.mean() > 0.9  # pixels at the spot centres show the colormapped expression
    assert len(np.unique(rendered.round(2), axis=0)) >= 4
    hi, lo = rendered[expr >= np.quantile(expr, 0.9)].mean(0), rendered[expr == 0].mean(0)
    assert np.abs(hi - lo).sum() > 0.3
    # a different gene gives different colours
    other = visium.var_names[np.argsort(-np.asarray(visium.X.sum(0)).ravel())[1]]
    fig2 = pl.plot_spatial(visium, plot_embeddings={"color": other}, figsize=(6, 6))
    rendered2 = _spot_pixels(fig2, fig2.axes[0], visium.obsm["spatial"].astype(float))
    assert np.abs(rendered2 - rendered).max(1).mean() > 0.05


def test_image_layer_appears_only_with_channels(visium, tmp_path):
    opts = {"color": TOP_GENE}
    with_img = pl.plot_spatial(visium, channels=RGB_LOW, plot_embeddings=opts, figsize=(5, 5))
    without = pl.plot_spatial(visium, plot_embeddings=opts, figsize=(5, 5))
    a = _panel_pixels(with_img, with_img.axes[0])
    b = _panel_pixels(without, without.axes[0])
    n = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    a, b = a[: n[0], : n[1]], b[: n[0], : n[1]]
    differ = np.abs(a - b).max(2) > 0.1
    assert differ.mean() > 0.5  # the tissue fills the panel behind the sparse spots
    assert (b > 0.97).all(2).mean() > 0.5  # without channels: white background between spots
    # H&E: the tissue is pink (red and blue above green)
    tissue = a[~np.isclose(a, b, atol=0.1).all(2)]
    assert tissue[:, 0].mean() > tissue[:, 1].mean()
    # image alone (no spots): one image and no spot collection
    only = pl.plot_spatial(visium, channels=RGB_LOW)
    assert len(only.axes[0].images) == 1 and len(only.axes[0].collections) == 0
    _nonblank(_png(only, tmp_path / "image.png"))
    # one channel -> a colormapped 2-D image
    grey = pl.plot_spatial(visium, channels="lowres/g", img_cmap="magma")
    assert grey.axes[0].images[0].get_array().ndim == 2
    assert grey.axes[0].images[0].get_cmap().name == "magma"


def test_ranges_mean_the_same_for_hires_and_lowres(tmp_path):
    """Full-resolution coordinates whatever image is drawn: the same range shows the same tissue."""
    rng = np.random.default_rng(0)
    adata = em.datasets.synthetic_domains(200, 3, 40, n_markers_per_domain=5, sample="s")
    lowres = np.zeros((90, 90, 3), np.float32)
    lowres[:45, :45] = (1, 0, 0)
    lowres[:45, 45:] = (0, 1, 0)
    lowres[45:, :45] = (0, 0, 1)
    lowres[45:, 45:] = (1, 1, 0)
    lowres += rng.uniform(0, 0.02, lowres.shape).astype(np.float32)
    hires = np.repeat(np.repeat(lowres, 4, axis=0), 4, axis=1)
    sf = adata.uns["spatial"]["s"]["scalefactors"]
    sf["tissue_lowres_scalef"], sf["tissue_hires_scalef"] = 0.05, 0.2
    adata.uns["spatial"]["s"]["images"] = {"lowres": lowres, "hires": hires}
    kw = {"xrange": (200, 1600), "yrange": (100, 1500), "figsize": (4, 4), "plot_embeddings": {"visible": False}}
    a = _panel_pixels(
        *(lambda f: (f, f.axes[0]))(pl.plot_spatial(adata, channels=["lowres/r", "lowres/g", "lowres/b"], **kw))
    )
    b = _panel_pixels(
        *(lambda f: (f, f.axes[0]))(pl.plot_spatial(adata, channels=["hires/r", "hires/g", "hires/b"], **kw))
    )
    assert np.abs(a - b).mean() < 0.03
    # a wrong scale factor moves the image: the check can fail
    sf["tissue_hires_scalef"] = 0.25
    c = _panel_pixels(
        *(lambda f: (f, f.axes[0]))(pl.plot_spatial(adata, channels=["hires/r", "hires/g", "hires/b"], **kw))
    )
    assert np.abs(a - c).mean() > 0.05


def test_spot_size_from_diameter_and_ptsize(tmp_path):
    import anndata as ad

    xy = np.array([[500.0, 500.0], [1500.0, 500.0], [500.0, 1500.0], [1500.0, 1500.0]])
    adata = ad.AnnData(np.ones((4, 1), np.float32), obsm={"spatial": xy})
    adata.uns["spatial"] = {"s": {"images": {}, "scalefactors": {"spot_diameter_fullres": 200.0}}}
    for figsize in ((4, 4), (8, 8)):
        fig = pl.plot_spatial(
            adata, plot_embeddings={"color": None, "legend": False}, xrange=(0, 2000), yrange=(0, 2000), figsize=figsize
        )
        ax = fig.axes[0]
        px = _panel_pixels(fig, ax)
        covered = (px < 0.9).any(2).sum() / 4
        per_unit = ax.transData.transform([[0, 0], [1, 0]])
        r = 100.0 * abs(per_unit[1, 0] - per_unit[0, 0])
        assert covered == pytest.approx(np.pi * r * r, rel=0.15)
    fig = pl.plot_spatial(adata, plot_embeddings={"ptsize": 15})
    np.testing.assert_allclose(fig.axes[0].collections[0].get_sizes(), 15)


def test_categorical_palette_shared_across_samples(visium):
    a, b = visium.copy(), visium.copy()
    a.obs["domain"] = pd.Categorical(np.resize(["1", "2", "3"], a.n_obs))
    b.obs["domain"] = pd.Categorical(np.resize(["3", "4"], b.n_obs))
    fig = pl.plot_spatial({"a": a, "b": b}, plot_embeddings={"color": "domain"})
    fa = fig.axes[0].collections[0].get_facecolor()
    fb = fig.axes[1].collections[0].get_facecolor()
    col_a = {tuple(c) for c in fa[(a.obs["domain"] == "3").to_numpy()]}
    col_b = {tuple(c) for c in fb[(b.obs["domain"] == "3").to_numpy()]}
    assert len(col_a) == 1 and col_a == col_b
    assert {tuple(c) for c in fb[(b.obs["domain"] == "4").to_numpy()]}.isdisjoint(col_a)
    # a dict palette is honoured
    fig = pl.plot_spatial(a, plot_embeddings={"color": "domain", "palette": {"1": "red", "2": "blue", "3": "black"}})
    fc = fig.axes[0].collections[0].get_facecolor()
    np.testing.assert_allclose(fc[(a.obs["domain"] == "1").to_numpy()][0], (1, 0, 0, 1))
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["1", "2", "3"]
    # missing labels are drawn in na_color
    a.obs.loc[a.obs_names[:5], "domain"] = np.nan
    fig = pl.plot_spatial(a, plot_embeddings={"color": "domain", "na_color": "#00ff00"})
    np.testing.assert_allclose(fig.axes[0].collections[0].get_facecolor()[:5], [(0, 1, 0, 1)] * 5)


def test_continuous_limits_quantiles_and_shared_scale(visium):
    a, b = visium.copy(), visium.copy()
    a.obs["score"] = np.linspace(0, 1, a.n_obs)
    b.obs["score"] = np.linspace(0, 10, b.n_obs)
    fig = pl.plot_spatial({"a": a, "b": b}, plot_embeddings={"color": "score"})
    n1, n2 = fig.axes[0].collections[0].norm, fig.axes[1].collections[0].norm
    assert (n1.vmax, n2.vmax) == (1.0, 10.0)
    fig = pl.plot_spatial({"a": a, "b": b}, plot_embeddings={"color": "score"}, share_scale=True)
    n1, n2 = fig.axes[0].collections[0].norm, fig.axes[1].collections[0].norm
    assert (n1.vmin, n1.vmax) == (n2.vmin, n2.vmax) == (0.0, 10.0)
    fig = pl.plot_spatial(a, plot_embeddings={"color": "score", "vmin": "p5", "vmax": "p99"})
    norm = fig.axes[0].collections[0].norm
    assert norm.vmax == pytest.approx(np.percentile(a.obs["score"], 99))
    assert norm.vmin == pytest.approx(np.percentile(a.obs["score"], 5))


def test_color_keys_gene_symbol_obsm_column_and_grid(visium, tmp_path):
    adata = _with_method_slots(visium)
    adata.var["gene"] = [f"SYM{i}" for i in range(adata.n_vars)]
    sym = adata.var.loc[TOP_GENE, "gene"]
    fig_sym = pl.plot_spatial(adata, plot_embeddings={"color": sym.lower()})
    fig_id = pl.plot_spatial(adata, plot_embeddings={"color": TOP_GENE})
    np.testing.assert_array_equal(fig_sym.axes[0].collections[0].get_array(), fig_id.axes[0].collections[0].get_array())
    fig = pl.plot_spatial(
        {"s1": adata, "s2": adata},
        channels=RGB_LOW,
        plot_embeddings={"color": [TOP_GENE, "spagcn.domain", "cell2location.q05:astrocytes"]},
    )
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [
        "s1: ENSG00000175756",
        "s1: spagcn.domain",
        "s1: cell2location.q05:astrocytes",
        "s2: ENSG00000175756",
        "s2: spagcn.domain",
        "s2: cell2location.q05:astrocytes",
    ]
    arr = panels[2].collections[0].get_array()
    np.testing.assert_allclose(np.sort(arr), np.sort(adata.obsm["cell2location.q05"]["astrocytes"].to_numpy()))
    _nonblank(_png(fig, tmp_path / "grid.png"))
    # one sample, several keys: wrapped into ncols
    fig = pl.plot_spatial(adata, plot_embeddings={"color": ["aeh:0", "aeh:1", "aeh:2"]}, ncols=2)
    assert sum(ax.axison for ax in fig.axes if ax.get_label() != "<colorbar>") == 3


def test_savefig_png_svg_pdf_with_truetype_fonts(visium, tmp_path):
    fig = pl.plot_spatial(visium, channels=RGB_LOW, plot_embeddings={"color": TOP_GENE})
    with matplotlib.rc_context({"pdf.fonttype": 3}):  # the user's rcParams do not matter
        fig.savefig(tmp_path / "f.pdf")
    pdf = (tmp_path / "f.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"/FontFile2" in pdf and b"/Type3" not in pdf
    fig.savefig(tmp_path / "f.svg")
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()[:2000]
    _nonblank(_png(fig, tmp_path / "f.png"))


# ------------------------------------------------------------------------------------------- method figures
def test_method_figures_render(visium, tmp_path):
    adata = _with_method_slots(visium)
    snap = _snapshot(adata)
    figs = {
        "patterns": pl.plot_patterns(adata, patterns_key="aeh", channels=RGB_LOW),
        "domains": pl.plot_domains({"s1": adata, "s2": adata}, domain_keys=("spagcn.domain", "spagcn.refined")),
        "locat_umap": pl.plot_locat(adata, locat_key="locat", basis="X_umap", n_top=3),
        "locat_spatial": pl.plot_locat(adata, basis="spatial", n_top=2, channels=RGB_LOW),
        "abundance": pl.plot_abundance(adata, abundance_key="cell2location.q05", types=None, channels=RGB_LOW),
        "blend": pl.plot_abundance_blend(adata, abundance_key="cell2location.q05", types=["astrocytes", "neurons", "microglia"]),
        "history": pl.plot_training_history(adata, model_key="cell2location"),
        "history_dict": pl.plot_training_history({"s1": adata, "s2": adata}, model_key="cell2location"),
        "reconstruction": pl.plot_reconstruction(adata.X, adata.X.toarray() + 0.5),
        "totals": pl.plot_totals_per_batch(
            np.asarray(adata.X.sum(1)).ravel(),
            np.asarray(adata.X.sum(1)).ravel() * 1.1,
            np.resize(["b1", "b2"], adata.n_obs),
        ),
        "embedding": pl.plot_embedding(adata, basis="X_umap", color=["spagcn.domain", TOP_GENE]),
    }
    for name, fig in figs.items():
        assert isinstance(fig, matplotlib.figure.Figure)
        _nonblank(_png(fig, tmp_path / f"{name}.png"), min_std=0.03)
    _assert_unchanged(adata, snap)

    # patterns: one panel per column, titled with the number of genes
    titles = [ax.get_title() for ax in figs["patterns"].axes if ax.get_title()]
    assert titles == ["pattern 0 (34 genes)", "pattern 1 (33 genes)", "pattern 2 (33 genes)"]
    # domains: before/after share one palette (domain '0' has one colour in both panels)
    axes = [ax for ax in figs["domains"].axes if ax.get_title()]
    m = (adata.obs["spagcn.domain"] == "0").to_numpy() & (adata.obs["spagcn.refined"] == "0").to_numpy()
    c0 = axes[0].collections[0].get_facecolor()[m]
    c1 = axes[1].collections[0].get_facecolor()[m]
    np.testing.assert_allclose(c0, c1)
    # LOCAT: first row concentrated-only, second row concentrated-and-depleted, highest z first
    conc, joint = pl.locat_top_genes(adata, "locat", 3)
    var = adata.var
    assert all(var.loc[conc, "locat.is_conc_sig"]) and not any(var.loc[conc, "locat.is_depl_sig"])
    assert all(var.loc[joint, "locat.is_joint_sig"])
    assert list(var.loc[conc, "locat.zscore"]) == sorted(var.loc[conc, "locat.zscore"], reverse=True)
    titles = [ax.get_title() for ax in figs["locat_umap"].axes if ax.get_title()]
    assert titles[0].startswith(conc[0]) and titles[3].startswith(joint[0])
    # blend: one panel, spots with no abundance of the chosen types are transparent
    panel = figs["blend"].axes[0]
    fc = panel.collections[0].get_facecolor()
    none = (adata.obsm["cell2location.q05"][["astrocytes", "neurons", "microglia"]].to_numpy() == 0).all(1)
    assert none.any() and np.allclose(fc[none, 3], 0) and (fc[~none, 3] > 0).any()


def test_blend_colors_mix_like_paint():
    colors = ["#ffff00", "#00ffff"]  # yellow + cyan
    vals = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    rgba = pl.blend_colors(vals, np.zeros(2), np.ones(2), colors)
    np.testing.assert_allclose(rgba[0], (1, 1, 0, 1), atol=0.005)
    np.testing.assert_allclose(rgba[1], (0, 1, 1, 1), atol=0.005)
    assert rgba[2, 1] == pytest.approx(1.0) and rgba[2, 0] < 0.1 and rgba[2, 2] < 0.1  # mixed: green
    assert rgba[3, 3] == 0


def test_import_is_light_and_layers():
    code = "import sys, experimat.pl; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    src = Path(pl.__file__).parent
    for f in src.glob("*.py"):
        text = f.read_text()
        for bad in (
            "experimat.core",
            "experimat.io",
            "from ..core",
            "from ..io",
            "import matplotlib.pyplot",
            "from matplotlib import pyplot",
        ):
            assert bad not in text, f"{f.name} imports {bad}"


# ------------------------------------------------------------------------------------------- bad inputs
def test_unknown_colour_key_lists_close_matches(visium):
    with pytest.raises(KeyNotFoundError) as e:
        pl.plot_spatial(visium, plot_embeddings={"color": "ENSG0000017575"})
    assert TOP_GENE in str(e.value)
    with pytest.raises(KeyNotFoundError) as e:
        pl.plot_spatial(visium, plot_embeddings={"color": "array_rw"})
    assert "array_row" in str(e.value)
    adata = _with_method_slots(visium)
    with pytest.raises(KeyNotFoundError) as e:
        pl.plot_spatial(adata, plot_embeddings={"color": "cell2location.q05:astrocyte"})
    assert "astrocytes" in str(e.value)


def test_bad_image_inputs(visium):
    with pytest.raises(KeyNotFoundError) as e:
        pl.plot_spatial(visium, channels=["fullres/r", "fullres/g", "fullres/b"])
    assert "'hires'" in str(e.value) and "'lowres'" in str(e.value)
    with pytest.raises(KeyNotFoundError):
        pl.get_image(visium, channels="dapi/0")
    with pytest.raises(InvalidInputError, match="outside the image"):
        pl.plot_spatial(visium, channels=RGB_LOW, xrange=(20000, 30000))
    with pytest.raises(InvalidInputError, match="outside the image"):
        pl.plot_spatial(visium, channels=RGB_LOW, yrange=(-5000, -1000))
    with pytest.raises(InvalidInputError, match="no spot"):
        pl.plot_spatial(visium, plot_embeddings={"color": TOP_GENE}, xrange=(20000, 30000))
    with pytest.raises(InvalidInputError, match="min < max"):
        pl.plot_spatial(visium, channels=RGB_LOW, xrange=(5000, 3000))
    with pytest.raises(InvalidInputError, match="<image key>/<channel>"):
        pl.get_image(visium, channels="lowres")
    with pytest.raises(InvalidInputError, match="one channel"):
        pl.get_image(visium, channels=["lowres/r", "lowres/g"])
    with pytest.raises(InvalidInputError, match="one image"):
        pl.get_image(visium, channels=["lowres/r", "hires/g", "hires/b"])
    with pytest.raises(InvalidInputError, match="channel"):
        pl.get_image(visium, channels="lowres/7")
    with pytest.raises(KeyNotFoundError):
        pl.get_image(visium, channels="lowres/r", library_id="nope")
    bare = visium.copy()
    del bare.uns["spatial"]
    with pytest.raises(MissingSlotError, match="uns\\['spatial'\\]"):
        pl.get_image(bare, channels="lowres/r")
    pl.plot_spatial(bare, plot_embeddings={"color": TOP_GENE})  # spots alone need no image


def test_bad_options(visium):
    with pytest.raises(KeyNotFoundError, match="plot_embeddings option"):
        pl.plot_spatial(visium, plot_embeddings={"colour": TOP_GENE})
    with pytest.raises(InvalidInputError, match="quantile"):
        pl.plot_spatial(visium, plot_embeddings={"color": TOP_GENE, "vmax": "q99"})
    with pytest.raises(InvalidInputError, match="quantile"):
        pl.plot_spatial(visium, plot_embeddings={"color": TOP_GENE, "vmax": "p101"})
    with pytest.raises(KeyNotFoundError, match="colormap"):
        pl.plot_spatial(visium, plot_embeddings={"color": TOP_GENE, "cmap": "viridiss"})
    with pytest.raises(InvalidInputError, match="ptsize"):
        pl.plot_spatial(visium, plot_embeddings={"ptsize": -1})
    with pytest.raises(InvalidInputError, match="figsize"):
        pl.plot_spatial(visium, figsize=(0, 3))
    with pytest.raises(InvalidInputError, match="AnnData"):
        pl.plot_spatial([visium])
    with pytest.raises(InvalidInputError, match="empty"):
        pl.plot_spatial({})
    with pytest.raises(InvalidInputError, match="basis='spatial'"):
        pl.plot_spatial(_with_method_slots(visium), channels=RGB_LOW, plot_embeddings={"basis": "X_umap"})
    with pytest.raises(InvalidInputError, match="palette"):
        a = visium.copy()
        a.obs["d"] = pd.Categorical(np.resize(["x", "y"], a.n_obs))
        pl.plot_spatial(a, plot_embeddings={"color": "d", "palette": {"x": "red"}})


def test_method_figures_bad_inputs(visium):
    with pytest.raises(MissingSlotError, match="aeh"):
        pl.plot_patterns(visium)
    with pytest.raises(KeyNotFoundError, match=r"spagcn\.domain"):
        pl.plot_domains(visium)
    with pytest.raises(MissingSlotError, match=r"locat\.zscore"):
        pl.plot_locat(visium)
    with pytest.raises(MissingSlotError, match=r"cell2location\.q05"):
        pl.plot_abundance(visium)
    with pytest.raises(MissingSlotError, match="training_history"):
        pl.plot_training_history(visium)
    adata = _with_method_slots(visium)
    with pytest.raises(MissingSlotError, match="X_tsne"):
        pl.plot_embedding(adata, basis="X_tsne")
    frame = adata.obsm["cell2location.q05"]
    adata.obsm["many"] = pd.concat([frame, frame.add_suffix("_b")], axis=1)
    with pytest.raises(InvalidInputError, match="1 to 7"):
        pl.plot_abundance_blend(adata, abundance_key="many")
    with pytest.raises(KeyNotFoundError, match="astrocytes"):
        pl.plot_abundance(adata, types=["astrocyte"])
    with pytest.raises(InvalidInputError, match="n_top"):
        pl.plot_locat(adata, n_top=0)
    with pytest.raises(InvalidInputError, match="same shape"):
        pl.plot_reconstruction(np.ones((3, 2)), np.ones((2, 3)))
    with pytest.raises(InvalidInputError, match="same length"):
        pl.plot_totals_per_batch([1.0, 2.0], [1.0], ["a", "b"])
    with pytest.raises(InvalidInputError, match="empty"):
        pl.plot_training_history({"elbo_train": []})


def test_locat_row_without_genes_is_labelled(visium):
    adata = _with_method_slots(visium)
    adata.var["locat.is_joint_sig"] = False
    adata.var["locat.is_depl_sig"] = False
    fig = pl.plot_locat(adata, n_top=2)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("no significant conc. + depleted genes" in t for t in texts)


def test_copy_of_uns_not_shared(visium):
    """Plotting does not write colours or anything else into the AnnData (no mutation)."""
    adata = _with_method_slots(visium)
    before = copy.deepcopy(dict(adata.uns))
    pl.plot_spatial(adata, plot_embeddings={"color": "spagcn.domain"})
    pl.plot_domains(adata)
    assert adata.uns.keys() == before.keys()
    assert "spagcn.domain_colors" not in adata.uns


def test_figure_pickles_and_displays_as_png(visium):
    import pickle

    fig = pl.plot_spatial(visium, plot_embeddings={"color": TOP_GENE})
    png = fig._repr_png_()
    assert png.startswith(b"\x89PNG")
    again = pickle.loads(pickle.dumps(fig))
    assert type(again).__name__ == "ExperimatFigure" and len(again.axes) == len(fig.axes)


def test_accessor_plots_on_real_project(muscle_project, tmp_path):
    """The notebook calls, through the accessor, on the real muscle project (lowres only: hires falls back)."""
    expm = em.load_experiment(muscle_project, mode="r")
    fig = expm.spatial_bin.plot_spatial(
        run_on_samples=["Vis5A_2dpi"], channels=["hires/r", "hires/g", "hires/b"],
        plot_embeddings={"visible": True, "basis": "spatial", "color": "Acta1", "ptsize": 15},
        xrange=(3000, 13000), yrange=(3000, 13000), figsize=(5, 5),
    )
    out = tmp_path / "fig.png"
    fig.savefig(out)
    img = imread(out)
    assert img.shape[0] > 100 and img[..., :3].std() > 0.05
    he = expm.spatial_bin.get_image(run_on_samples=["Vis7B_5dpi"], channels=["lowres/r", "lowres/g", "lowres/b"])
    assert he["Vis7B_5dpi"].shape[2] == 3
    fig2 = expm.spatial_bin.plot_spatial(run_on_samples=True, plot_embeddings={"color": "sample"})
    assert len(fig2.axes) >= 2
