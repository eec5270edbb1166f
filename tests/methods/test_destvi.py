"""Tests of DestVI (experimat.methods.deconv.destvi): small real reference (Zeisel subset), pseudo-spots with
known composition, and a simulated two-state cell type."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

import experimat as em
from experimat._errors import InvalidInputError, KeyNotFoundError, MissingSlotError, NotCountsError
from experimat.datasets import pseudo_spots
from experimat.methods.deconv.destvi import (
    CondSCVIModel,
    automatic_proportion_threshold,
    de_genes_destvi,
    deconvolve_destvi,
    explore_gamma_space,
    fit_condscvi,
    get_scale_for_ct,
    select_genes_vst,
)

SC_EPOCHS = 40
ST_EPOCHS = 300


@pytest.fixture(scope="module")
def ref(zeisel_sc):
    return fit_condscvi(zeisel_sc.copy(), labels_key="class", n_top_genes=300, max_epochs=SC_EPOCHS, seed=0)


@pytest.fixture(scope="module")
def fitted(zeisel_spots, ref):
    st = zeisel_spots.copy()
    props = deconvolve_destvi(st, reference=ref, max_epochs=ST_EPOCHS, seed=0)
    return st, props


def per_spot_r(pred: pd.DataFrame, truth: pd.DataFrame) -> float:
    p = pred[truth.columns].to_numpy()
    t = truth.to_numpy()
    return float(np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(p, t, strict=True) if a.std() > 0 and b.std() > 0]))


def test_reference_model(zeisel_sc, ref):
    assert ref.cell_types == sorted(zeisel_sc.obs["class"].astype(str).unique())
    assert len(ref.genes) == 300 and set(ref.genes) <= set(zeisel_sc.var_names)
    hist = ref.training_history
    assert len(hist) == SC_EPOCHS and np.isfinite(hist).all() and hist[-1] < hist[0]
    mean, var, labels = ref.latent_posterior()
    assert mean.shape == (zeisel_sc.n_obs, 5) and (var > 0).all() and labels.shape == (zeisel_sc.n_obs,)
    pm, pv, pw = ref.vamp_prior(15)
    assert pm.shape == (3, 15, 5) and pv.shape == (3, 15, 5)
    # weights of the used components sum to one per type
    np.testing.assert_allclose(np.exp(pw).sum(1), 1.0, rtol=1e-6)


def test_hvg_selection_prefers_variable_genes():
    rng = np.random.default_rng(0)
    n = 400
    means = np.exp(rng.uniform(np.log(0.2), np.log(50.0), size=200))
    base = rng.negative_binomial(5, 5 / (5 + means), size=(n, 200))  # the same overdispersion everywhere
    group = rng.random(n) < 0.5
    variable = rng.poisson(np.where(group[:, None], 1.0, 12.0), size=(n, 5))  # two cell states
    X = np.hstack([base, variable])
    top = select_genes_vst(X, 5)
    assert set(top) == set(range(200, 205))


def test_fit_condscvi_on_several_samples_writes_each(zeisel_sc):
    a, b = zeisel_sc[:300].copy(), zeisel_sc[300:].copy()
    model = fit_condscvi({"s1": a, "s2": b}, labels_key="class", n_top_genes=100, max_epochs=2, seed=0)
    assert model.config["samples"] == ["s1", "s2"]
    for x in (a, b):
        assert x.obsm["condscvi.latent"].shape == (x.n_obs, 5)
        assert x.uns["condscvi"]["params"]["labels_key"] == "class"


def test_proportion_recovery(fitted):
    st, props = fitted
    truth = st.obsm["true_proportions"]
    assert list(props.columns) == list(truth.columns)
    np.testing.assert_allclose(props.sum(1), 1.0, rtol=1e-6)
    r = per_spot_r(props, truth)
    rmse = float(np.sqrt(((props[truth.columns].to_numpy() - truth.to_numpy()) ** 2).mean()))
    # a constant prediction (the mean composition) has per-spot r ~ 0 here
    assert r > 0.8, r
    assert rmse < 0.2, rmse
    assert isinstance(st.obsm["destvi.proportions"], pd.DataFrame)
    for ct in props.columns:
        assert st.obsm[f"destvi.gamma.{ct}"].shape == (st.n_obs, 5)
    hist = st.uns["destvi"]["training_history"]
    assert len(hist) == ST_EPOCHS and np.ndim(hist) == 1 and hist[-1] < hist[0]
    assert st.uns["destvi"]["params"]["vamp_prior_p"] == 15
    assert np.isfinite(st.var["destvi.beta"]).sum() == 300


def test_seeded_reproducibility(zeisel_spots, ref):
    first = deconvolve_destvi(zeisel_spots.copy(), reference=ref, max_epochs=30, seed=0)
    again = deconvolve_destvi(zeisel_spots.copy(), reference=ref, max_epochs=30, seed=0)
    pd.testing.assert_frame_equal(first, again)
    other = deconvolve_destvi(zeisel_spots.copy(), reference=ref, max_epochs=30, seed=1)
    assert not np.allclose(other.to_numpy(), first.to_numpy())


def test_reference_seeded_reproducibility(zeisel_sc):
    a = fit_condscvi(zeisel_sc.copy(), labels_key="class", n_top_genes=50, max_epochs=3, seed=3)
    b = fit_condscvi(zeisel_sc.copy(), labels_key="class", n_top_genes=50, max_epochs=3, seed=3)
    np.testing.assert_array_equal(a.latent_posterior()[0], b.latent_posterior()[0])
    assert a.training_history == b.training_history


def test_save_reload_without_retraining(tmp_path, zeisel_spots, ref, fitted):
    st, _ = fitted
    path = ref.save(tmp_path / "condscvi")
    assert sorted(p.name for p in path.iterdir()) == ["arrays.npz", "config.json"]  # em.SavedModel layout
    with np.load(path / "arrays.npz", allow_pickle=False) as z:  # plain arrays, no pickle
        assert "latent_mean" in z.files
    with pytest.raises(InvalidInputError, match="overwrite"):
        ref.save(path)
    loaded = CondSCVIModel.load(path)
    assert loaded.genes == ref.genes and loaded.cell_types == ref.cell_types
    assert loaded.training_history == ref.training_history
    # the reloaded reference reproduces the imputed expression of the fitted spots exactly ...
    pd.testing.assert_frame_equal(
        get_scale_for_ct(st, ref, "interneurons"), get_scale_for_ct(st, loaded, "interneurons")
    )
    # ... and a deconvolution with it (a folder works too) equals one with the trained object
    a = deconvolve_destvi(zeisel_spots.copy(), reference=ref, max_epochs=30, seed=0)
    b = deconvolve_destvi(zeisel_spots.copy(), reference=path, max_epochs=30, seed=0)
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(InvalidInputError, match="not found"):
        CondSCVIModel.load(tmp_path / "nothing")


def test_get_scale_for_ct(fitted, ref):
    st, _ = fitted
    scale = get_scale_for_ct(st, ref, "pyramidal SS", indices=[0, 3, 5])
    assert scale.shape == (3, 300)
    assert list(scale.index) == list(st.obs_names[[0, 3, 5]])
    np.testing.assert_allclose(scale.sum(1), 1.0, rtol=1e-5)
    with pytest.raises(KeyNotFoundError):
        get_scale_for_ct(st, ref, "astrocytes")
    with pytest.raises(MissingSlotError, match="deconvolve_destvi"):
        get_scale_for_ct(st, ref, "interneurons", destvi_key="other")


def test_non_integer_input_is_rejected(zeisel_sc, zeisel_spots, ref):
    bad = zeisel_spots.copy()
    bad.layers["counts"] = bad.layers["counts"] * 0.5
    with pytest.raises(NotCountsError):
        deconvolve_destvi(bad, reference=ref, max_epochs=1)
    bad_sc = zeisel_sc.copy()
    bad_sc.layers["counts"] = np.log1p(bad_sc.layers["counts"].toarray())
    with pytest.raises(NotCountsError):
        fit_condscvi(bad_sc, labels_key="class", max_epochs=1)
    with pytest.raises(MissingSlotError, match="available layers"):
        deconvolve_destvi(zeisel_spots.copy(), reference=ref, layer="raw", max_epochs=1)


def test_gene_mismatch_error(zeisel_spots, ref):
    renamed = zeisel_spots.copy()
    renamed.var_names = [f"other_{i}" for i in range(renamed.n_vars)]
    with pytest.raises(InvalidInputError, match=r"only 0 of the 300 reference genes"):
        deconvolve_destvi(renamed, reference=ref, max_epochs=1)
    partial = zeisel_spots[:, [g for g in zeisel_spots.var_names if g not in set(ref.genes[:200])]].copy()
    with pytest.raises(InvalidInputError, match=r"only 100 of the 300"):
        deconvolve_destvi(partial, reference=ref, max_epochs=1)
    few_missing = zeisel_spots[:, [g for g in zeisel_spots.var_names if g not in set(ref.genes[:5])]].copy()
    with pytest.warns(em.ExperimatWarning, match="5 of the 300"):
        deconvolve_destvi(few_missing, reference=ref, max_epochs=2)
    assert few_missing.uns["destvi"]["n_genes"] == 295


def test_bad_options(zeisel_spots, ref, fitted):
    st, _ = fitted
    with pytest.raises(InvalidInputError, match="reference"):
        deconvolve_destvi(zeisel_spots.copy(), reference=42, max_epochs=1)
    with pytest.raises(InvalidInputError, match="max_epochs"):
        deconvolve_destvi(zeisel_spots.copy(), reference=ref, max_epochs=0)
    with pytest.raises(InvalidInputError, match="valid values"):
        automatic_proportion_threshold(st, kind="proportionality")
    with pytest.raises(KeyNotFoundError):
        fit_condscvi(zeisel_spots.copy(), labels_key="nope", max_epochs=1)


def test_automatic_threshold_and_spatial_pca(fitted, ref):
    st, props = fitted
    thr = automatic_proportion_threshold(st, kind="primary")
    sec = automatic_proportion_threshold(st, ["interneurons"], kind="secondary")
    assert set(thr) == set(props.columns) and set(sec) == {"interneurons"}
    for ct, t in thr.items():
        assert props[ct].min() <= t <= props[ct].max()
    assert st.uns["destvi"]["thresholds"]["primary"] == thr
    res = explore_gamma_space(st, reference=ref, ct="interneurons", threshold=0.05, n_genes=10)
    keep = props["interneurons"] > 0.05
    assert res["projection"].shape == (int(keep.sum()), 2)
    assert st.obsm["destvi.spca.interneurons"].shape == (st.n_obs, 2)
    assert np.isnan(st.obsm["destvi.spca.interneurons"].to_numpy()[~keep.to_numpy()]).all()
    genes = res["genes"]
    assert len(genes) == 2 * 2 * 10 and set(genes["axis"]) == {"SpatialPC1", "SpatialPC2"}
    pos = genes.query("axis == 'SpatialPC1' and direction == 'positive'")["r"].to_numpy()
    assert (np.diff(pos) <= 1e-12).all()
    with pytest.raises(InvalidInputError, match="lower the threshold"):
        explore_gamma_space(st, reference=ref, ct="interneurons", threshold=1.1)


# --- two simulated states of one cell type -------------------------------------------------------


@pytest.fixture(scope="module")
def two_states(zeisel_sc):
    """Interneurons split into two states: a block of 30 genes is 4x higher in half of them."""
    rng = np.random.default_rng(1)
    a = zeisel_sc.copy()
    X = a.layers["counts"].toarray()
    inter = np.flatnonzero(a.obs["class"].astype(str).to_numpy() == "interneurons")
    high = rng.choice(inter, size=inter.size // 2, replace=False)
    expressed = np.argsort(-X[inter].mean(0))[20:50]  # a block of well expressed genes
    X[np.ix_(high, expressed)] *= 4
    a.X = X.astype(np.float32)
    a.layers["counts"] = a.X.copy()
    state = np.array(a.obs["class"].astype(str), dtype=object)
    state[inter] = "inter_low"
    state[high] = "inter_high"
    a.obs["state"] = pd.Categorical(state)
    spots = pseudo_spots(a, "state", n_spots=200, n_regions=6, types_per_region=2, depth=3000.0, seed=2)
    # the reference must learn the within-type state: 150 epochs (40 leave it mostly unresolved)
    model = fit_condscvi(a, labels_key="class", n_top_genes=None, max_epochs=150, seed=0)
    deconvolve_destvi(spots, reference=model, max_epochs=ST_EPOCHS, seed=0)
    genes = set(a.var_names[expressed])
    return a, spots, model, genes


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n1, n0 = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def test_gamma_separates_two_states(two_states):
    a, spots, model, block = two_states
    counts = spots.obsm["true_counts"]
    n_inter = counts["inter_high"] + counts["inter_low"]
    frac_high = counts["inter_high"] / n_inter.where(n_inter > 0)
    use = (n_inter / spots.obs["n_cells"] >= 0.25) & ((frac_high >= 0.75) | (frac_high <= 0.25))
    positive = (frac_high[use] >= 0.75).to_numpy()
    assert positive.sum() >= 10 and (~positive).sum() >= 10  # the design has both pure states
    # axis between the two states in the reference latent space (not fitted on the spots)
    latent = a.obsm["condscvi.latent"]
    axis = latent[a.obs["state"] == "inter_high"].mean(0) - latent[a.obs["state"] == "inter_low"].mean(0)
    gamma = spots.obsm["destvi.gamma.interneurons"].to_numpy()[use.to_numpy()]
    auc = _auroc(gamma @ axis, positive)
    assert auc >= 0.8, auc
    # the imputed interneuron expression of the scaled gene block separates them too
    scale = get_scale_for_ct(spots, model, "interneurons", indices=np.flatnonzero(use.to_numpy()))
    block_score = np.log(scale[sorted(block)].to_numpy()).mean(1)
    assert _auroc(block_score, positive) >= 0.8


def test_de_between_states_finds_the_gene_block(two_states):
    _, spots, model, block = two_states
    counts = spots.obsm["true_counts"]
    n_inter = counts["inter_high"] + counts["inter_low"]
    high = ((counts["inter_high"] > 0) & (counts["inter_low"] == 0)).to_numpy()
    low = ((counts["inter_low"] > 0) & (counts["inter_high"] == 0)).to_numpy()
    assert n_inter.sum() > 0
    de = de_genes_destvi(spots, reference=model, ct="interneurons", mask1=high, mask2=low, threshold=0.2,
                         key_added="destvi.de", seed=0)
    assert list(de.columns) == ["log2FC", "score", "pval", "padj"]
    assert de["score"].is_monotonic_decreasing
    assert ((de["pval"] >= 0) & (de["pval"] <= 1) & (de["padj"] >= de["pval"] - 1e-12)).all()
    in_block = de.index.isin(sorted(block)).astype(bool)
    # the up-regulated block ranks high by fold change (AUROC block vs other genes)
    assert _auroc(de["log2FC"].to_numpy(), in_block) >= 0.75
    assert de.loc[in_block, "log2FC"].median() > de.loc[~in_block, "log2FC"].quantile(0.75)
    assert "de_results" in spots.uns["destvi.de"]
    with pytest.raises(InvalidInputError, match="both need"):
        de_genes_destvi(spots, reference=model, ct="interneurons", mask1=high, mask2=low, threshold=1.0)
    # the former positional form still works, with a FutureWarning
    with pytest.warns(FutureWarning, match="by position is deprecated"):
        old = de_genes_destvi(spots, model, "interneurons", high, low, threshold=0.2, seed=0)
    pd.testing.assert_frame_equal(old, de)


# --- the DestVI utilities through the accessors ----------------------------------------------------


@pytest.fixture(scope="module")
def destvi_project(tmp_path_factory, zeisel_sc, zeisel_spots):
    """A saved project: the Zeisel reference (rna), two sections of pseudo-spots, CondSCVI stored as "condscvi",
    DestVI run and automatic thresholds stored on both sections."""
    root = tmp_path_factory.mktemp("destvi") / "p"
    sections = {"s1": zeisel_spots.copy(), "s2": pseudo_spots(zeisel_sc, "class", n_spots=120, depth=2000.0, seed=5)}
    for a in sections.values():
        a.obs["left"] = a.obsm["spatial"][:, 0] < np.median(a.obsm["spatial"][:, 0])
    expm = em.Experiment.from_anndata({"ref": zeisel_sc.copy()}, modality="rna", taxa="mmu", project=root,
                                      harmonize_genes=False)
    for name, a in sections.items():
        expm.add_sample(a, sample=name, modality="spatial-bin", taxa="mmu", harmonize_genes=False)
    expm.rna.fit_condscvi(labels_key="class", n_top_genes=300, max_epochs=SC_EPOCHS)
    expm.spatial_bin.deconvolve(method="destvi", reference="condscvi", max_epochs=150, use_gpu=False)
    expm.spatial_bin.automatic_proportion_threshold(kind="primary")
    expm.save()
    expm.close()
    return root


def test_gamma_space_and_de_through_the_accessor(destvi_project, tmp_path):
    import shutil

    root = tmp_path / "p"
    shutil.copytree(destvi_project, root)
    expm = em.load_experiment(root)
    ref = expm.load_model("condscvi")
    ct = "interneurons"
    res = expm.spatial_bin.explore_gamma_space(reference="condscvi", ct=ct, threshold="primary", n_genes=5)
    assert set(res) == {"s1", "s2"}
    for s, out in res.items():
        a = expm.spatial_bin[s]
        thr = a.uns["destvi"]["thresholds"]["primary"][ct]  # each section its own stored threshold
        keep = a.obsm["destvi.proportions"][ct].to_numpy() > thr
        assert out["projection"].shape == (int(keep.sum()), 2)
        assert a.uns["destvi"]["spca"][ct]["threshold"] == thr
        # the same as the direct call on the sample with that sample's threshold and seed
        direct = explore_gamma_space(a.copy(), reference=ref, ct=ct, threshold=thr, n_genes=5)
        pd.testing.assert_frame_equal(out["genes"], direct["genes"])
        np.testing.assert_allclose(out["projection"].to_numpy(), direct["projection"].to_numpy())
    de = expm.spatial_bin.de_genes_destvi(reference="condscvi", ct=ct, mask1="left", threshold=0.05, n_samples=3,
                                          key_added="de_left")
    expm.close()
    back = em.load_experiment(root, mode="r")
    for s in ("s1", "s2"):
        a = back.spatial_bin[s]
        assert a.obsm[f"destvi.spca.{ct}"].shape == (a.n_obs, 2)  # saved
        stored = a.uns["de_left"]
        assert stored["cell_type"] == ct and list(de[s].columns) == ["log2FC", "score", "pval", "padj"]
        present = a.obsm["destvi.proportions"][ct].to_numpy() > 0.05
        np.testing.assert_array_equal(stored["mask1"], a.obs["left"].to_numpy() & present)
        np.testing.assert_array_equal(stored["mask2"], ~a.obs["left"].to_numpy() & present)
    back.close()


def test_accessor_refuses_unknown_references_and_bad_masks(destvi_project, tmp_path):
    import shutil

    root = tmp_path / "p"
    shutil.copytree(destvi_project, root)
    expm = em.load_experiment(root)
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".lock"}
    for call in (
        lambda: expm.spatial_bin.deconvolve(method="destvi", reference="condscvi_typo", max_epochs=1),
        lambda: expm.spatial_bin.deconvolve(method="cell2location", reference="no_such_model", max_epochs=1),
        lambda: expm.spatial_bin.explore_gamma_space(reference="nope", ct="interneurons"),
    ):
        with pytest.raises(InvalidInputError, match=r"neither a model stored in this project \(stored: \['condscvi'\]\)"):
            call()
    with pytest.raises(InvalidInputError, match="must be boolean"):
        expm.spatial_bin.de_genes_destvi(reference="condscvi", ct="interneurons", mask1="sample")
    with pytest.raises(KeyNotFoundError, match="no_column"):
        expm.spatial_bin.de_genes_destvi(reference="condscvi", ct="interneurons", mask1="no_column")
    with pytest.raises(MissingSlotError, match="automatic_proportion_threshold"):
        expm.spatial_bin.explore_gamma_space(reference="condscvi", ct="interneurons", threshold="secondary")
    expm.close()
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # refused calls change nothing on disk


def test_sparse_and_dense_counts_give_the_same_fit(zeisel_spots, ref):
    """Only a batch of spots is made dense: a sparse or a dense layer gives the same fit, bit for bit."""
    import scipy.sparse as sp

    dense, sparse_ = zeisel_spots.copy(), zeisel_spots.copy()
    dense.layers["counts"] = np.asarray(sp.csr_matrix(zeisel_spots.layers["counts"]).toarray())
    sparse_.layers["counts"] = sp.csr_matrix(zeisel_spots.layers["counts"])
    a = deconvolve_destvi(dense, reference=ref, max_epochs=3, batch_size=32, seed=0, use_gpu=False)
    b = deconvolve_destvi(sparse_, reference=ref, max_epochs=3, batch_size=32, seed=0, use_gpu=False)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    for key in ("destvi.gamma." + str(ref.cell_types[0]), "destvi.transcript_proportions"):
        pd.testing.assert_frame_equal(dense.obsm[key], sparse_.obsm[key], check_exact=True)
