"""The synthetic Visium HD generator and the pieces that make a 500,000-bin sample workable:
partial opening, the square-grid neighbours, the GP test's size guard, rasterised spot layers."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import experimat as em


@pytest.fixture(scope="module")
def hd():
    return em.datasets.synthetic_visium_hd(3_000, 400, n_domain_genes=40, seed=3)


def test_generator_counts_domains_and_planted_genes(hd):
    c = hd.layers["counts"]
    assert sp.isspmatrix_csr(c) and c.dtype == np.int32 and hd.shape == (3_000, 400)
    assert 80 < c.sum() / hd.n_obs < 90  # about 85 counts per bin
    assert (hd.X != c).nnz == 0
    dom = hd.obs["domain"].astype(int).to_numpy()
    assert sorted(np.unique(dom)) == [0, 1, 2, 3]
    # stripes: the domain follows the grid column
    assert (np.diff(dom[np.argsort(hd.obs["array_col"].to_numpy(), kind="stable")]) >= 0).all()
    planted = hd.var["planted_domain"].to_numpy()
    assert (planted >= 0).sum() == 40
    norm = c.multiply(1.0 / np.asarray(c.sum(1))).tocsc()
    for g in np.flatnonzero(planted >= 0)[:10]:
        x = norm[:, g].toarray().ravel()
        inside = x[dom == planted[g]].mean()
        outside = x[dom != planted[g]].mean()
        assert inside > 3 * outside  # planted 8x (diluted a little by renormalisation)
    sf = hd.uns["spatial"]["synthetic_hd"]["scalefactors"]
    step = np.diff(np.unique(hd.obsm["spatial"][:, 0]))
    np.testing.assert_allclose(step, sf["bin_size_um"] / sf["microns_per_pixel"])


def test_write_visium_hd_reads_back(hd, tmp_path):
    folder = em.datasets.write_visium_hd(hd, tmp_path / "outs")
    assert folder.name == "square_008um"
    b = em.io.read(tmp_path / "outs")
    assert list(b.obs_names) == list(hd.obs_names) and (b.layers["counts"] != hd.layers["counts"]).nnz == 0
    np.testing.assert_allclose(b.obsm["spatial"], hd.obsm["spatial"])
    assert next(iter(b.uns["spatial"].values()))["images"]["hires"].shape == hd.uns["spatial"]["synthetic_hd"]["images"]["hires"].shape


def test_get_sample_slots_reads_no_matrix(hd, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expm = em.Experiment.from_anndata({"hd": hd}, modality="spatial-bin", taxa="hsa", project=tmp_path / "p",
                                          harmonize_genes=False)
    mem = expm.get_sample_slots("spatial-bin", "hd", ["obsm"])
    assert mem.X is None and mem.obsm["spatial"].shape == (3_000, 2)
    expm.close()
    back = em.load_experiment(tmp_path / "p", mode="r")
    part = back.get_sample_slots("spatial-bin", "hd", ("obs", "obsm", "uns"))
    assert part.X is None and not part.layers and part.shape == (3_000, 400)
    np.testing.assert_array_equal(part.obsm["spatial"], hd.obsm["spatial"])
    assert "spatial" in part.uns and "domain" in part.obs
    assert "spatial-bin" not in {m for m in back.modalities if back._data[m]}  # nothing cached: a full load still reads
    with pytest.raises(em.InvalidInputError, match="layers"):
        back.get_sample_slots("spatial-bin", "hd", ["layers"])
    with pytest.raises(em.SampleNotFoundError):
        back.get_sample_slots("spatial-bin", "nope")


def test_moran_uses_the_square_grid_for_hd_bins(hd):
    from experimat.methods._graph import is_hex_array, lattice_graph
    from experimat.methods.svg._moran import spatial_weights

    small = hd[hd.obs["array_row"].to_numpy() < 5].copy()  # complete rows: a rectangle of bins
    W, how = spatial_weights(small, small.obsm["spatial"], neighbors="auto", n_neighbors=6, transformation="b")
    assert how == "grid"
    r, c = small.obs["array_row"].to_numpy(), small.obs["array_col"].to_numpy()
    i, j = W.nonzero()
    assert np.abs(r[i] - r[j]).max() == 1 and np.abs(c[i] - c[j]).max() == 1  # only the 8 touching bins
    inner = (r > r.min()) & (r < r.max()) & (c > c.min()) & (c < c.max())
    assert (np.asarray(W.sum(1)).ravel()[inner] == 8).all()
    # a Visium hex array stays hexagonal
    vr, vc = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 3])
    assert is_hex_array(vr, vc) and not is_hex_array(r, c)
    assert lattice_graph(vr, vc, kind="hex").nnz == 10


def test_gp_test_refuses_above_max_spots(hd):
    from experimat.methods.svg import spatial_svg_gp
    from experimat.methods.svg._gp import MAX_SPOTS

    assert MAX_SPOTS == 10_000
    with pytest.raises(em.InvalidInputError, match="spatial_svg_moran.*spatial_svg_score"):
        spatial_svg_gp(hd, max_spots=1_000, progress=False)


def test_large_spot_layers_are_rasterised(hd, monkeypatch):
    from experimat.pl import _render

    monkeypatch.setattr(_render, "RASTERIZE_ABOVE", 1_000)
    fig = em.pl.plot_spatial({"hd": hd}, plot_embeddings={"color": "domain"})
    colls = [c for ax in fig.axes for c in ax.collections]
    assert colls and all(c.get_rasterized() for c in colls)
    monkeypatch.setattr(_render, "RASTERIZE_ABOVE", 10_000)
    fig = em.pl.plot_spatial({"hd": hd}, plot_embeddings={"color": "domain"})
    assert not any(c.get_rasterized() for ax in fig.axes for c in ax.collections)
    pd.testing.assert_index_equal(hd.obs_names, hd.obs_names)


def test_sparse_pca_matches_dense_pca():
    from sklearn.decomposition import PCA

    from experimat.methods._expression import pca

    rng = np.random.default_rng(0)
    n, p = 3_000, 600
    low = rng.normal(size=(n, 4)) @ (rng.normal(size=(4, p)) * np.array([6, 4, 2.5, 1.5])[:, None])
    X = sp.random(n, p, density=0.05, random_state=1, format="csr") * 3 + sp.csr_matrix(np.where(np.abs(low) > 4, low, 0))
    scores, ratio = pca(X, 10, seed=2)
    ref = PCA(10, svd_solver="full").fit(X.toarray())
    ref_scores = ref.transform(X.toarray())
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-4)
    for j in range(4):  # components with clear eigen-gaps agree up to sign
        assert abs(np.corrcoef(scores[:, j], ref_scores[:, j])[0, 1]) > 0.9999
    assert (np.abs(scores.mean(0)) < 1e-5 * np.abs(scores).max()).all()  # centred (float32 scores)


def test_pca_accessor_on_sparse_stays_sparse(hd):
    from experimat.methods.preprocess import normalize, pca

    a = hd.copy()
    normalize(a)
    pca(a, n_comps=5, n_top_genes=None)
    ratio = a.uns["X_pca"]["variance_ratio"]
    assert a.obsm["X_pca"].shape == (3_000, 5) and (np.diff(ratio) <= 1e-12).all() and ratio.sum() < 1


def test_qc_metrics_on_sparse_counts_match_dense():
    """qc_metrics sums sparse counts from the stored values (no boolean copy, no CSC sort): same numbers as dense."""
    import anndata as ad

    from experimat.methods.preprocess import qc_metrics

    X = sp.random(300, 50, density=0.2, random_state=1, format="csr", dtype=np.float64)
    X.data = np.floor(X.data * 10)
    X.data[::7] = 0  # explicit zeros are not counted as detected genes
    D = X.toarray()
    var = pd.DataFrame(index=[f"mt-{i}" if i < 3 else f"g{i}" for i in range(50)])
    for M in (X, D, X.astype(np.int32)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = ad.AnnData(X=M, var=var.copy())
        a.layers["counts"] = M
        df = qc_metrics(a)
        np.testing.assert_allclose(df["qc.total_counts"], D.sum(1))
        np.testing.assert_array_equal(df["qc.n_genes"], (D > 0).sum(1))
        np.testing.assert_allclose(df["qc.pct_mito"], np.where(D.sum(1) > 0, 100 * D[:, :3].sum(1) / np.maximum(D.sum(1), 1), 0))
        np.testing.assert_allclose(a.var["qc.total_counts"], D.sum(0))
        np.testing.assert_array_equal(a.var["qc.n_obs"], (D > 0).sum(0))
