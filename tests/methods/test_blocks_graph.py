"""The shared spatial graph (experimat.methods._graph) and graph clustering (experimat.methods._cluster)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from experimat._errors import ExperimatWarning, InvalidInputError
from experimat.methods._graph import (
    is_hex_array,
    knn,
    knn_graph,
    lattice_graph,
    nn_distance,
    radius_graph,
    row_normalize,
    spatial_graph,
)


def _brute_knn(xy, k):
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, 1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, 1), idx


def test_knn_matches_brute_force_and_never_returns_self():
    rng = np.random.default_rng(0)
    xy = rng.uniform(size=(60, 2))
    d, i = knn(xy, 5)
    bd, bi = _brute_knn(xy, 5)
    np.testing.assert_allclose(d, bd)
    np.testing.assert_array_equal(i, bi)
    dup = np.vstack([xy, xy[:10]])  # coincident points: the copy is a neighbour, never the point itself
    d, i = knn(dup, 3)
    assert not (i == np.arange(len(dup))[:, None]).any()
    assert (d[:10, 0] == 0).all() and (i[:10, 0] == np.arange(60, 70)).all()
    assert knn(xy[:3], 10)[1].shape == (3, 2)  # k capped at n - 1
    with pytest.raises(InvalidInputError, match="at least 2 points"):
        knn(xy[:1], 3)


def test_knn_graph_weightings():
    rng = np.random.default_rng(1)
    xy = rng.uniform(size=(40, 2))
    B = knn_graph(xy, 4)
    assert (B.getnnz(1) == 4).all() and B.diagonal().sum() == 0 and set(B.data) == {1.0}
    S = knn_graph(xy, 4, symmetric=True)
    assert (S != S.T).nnz == 0 and ((S - B).toarray() >= 0).all()
    M = knn_graph(xy, 4, weights="mean")
    x = rng.normal(size=40)
    _, idx = _brute_knn(xy, 4)
    np.testing.assert_allclose(M @ x, x[idx].mean(1))
    D = knn_graph(xy, 4, weights="distance")
    np.testing.assert_allclose(np.sort(D.toarray(), 1)[:, -4:], _brute_knn(xy, 4)[0])
    G = knn_graph(xy, 6, weights="gaussian")
    np.testing.assert_allclose(np.asarray(G.sum(1)).ravel(), 1.0)
    d, _ = _brute_knn(xy, 6)
    w = np.exp(-(d**2) / d[:, [1]] ** 2)  # sigma: the distance to the 6 // 3 = 2nd neighbour
    np.testing.assert_allclose(np.sort(G.toarray(), 1)[:, ::-1][:, :6], w / w.sum(1, keepdims=True))
    U = knn_graph(xy, 5, weights="umap")
    row = U.toarray()
    assert (row.max(1) == pytest.approx(1.0)) and np.allclose(row.sum(1), np.log2(6), rtol=1e-6)
    F = knn_graph(xy, 5, weights="umap", symmetric=True).toarray()
    np.testing.assert_allclose(F, row + row.T - row * row.T)
    with pytest.raises(InvalidInputError, match="weights"):
        knn_graph(xy, 4, weights="cosine")
    with pytest.raises(InvalidInputError, match="symmetric"):
        knn_graph(xy, 4, weights="mean", symmetric=True)


def test_radius_graph_matches_brute_force():
    rng = np.random.default_rng(2)
    xy = rng.uniform(size=(50, 2))
    R = radius_graph(xy, 0.2).toarray()
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    want = np.where((d <= 0.2) & ~np.eye(50, dtype=bool), d, 0.0)
    np.testing.assert_allclose(R, want)


def test_lattices_and_auto_choice():
    # a full Visium-like hex patch: rows 0..5, columns of the row's parity
    r, c = np.array([(i, j) for i in range(6) for j in range(i % 2, 20, 2)]).T
    assert is_hex_array(r, c)
    H = lattice_graph(r, c, kind="hex")
    inner = (r > 0) & (r < 5) & (c > 1) & (c < 18)
    assert (np.asarray(H.sum(1)).ravel()[inner] == 6).all() and (H != H.T).nnz == 0
    gr, gc = np.divmod(np.arange(30), 6)
    assert not is_hex_array(gr, gc)
    G = lattice_graph(gr, gc, kind="grid")
    assert np.asarray(G.sum(1)).ravel().max() == 8
    xy = np.column_stack([c * 50.0, r * 86.6])
    a = ad.AnnData(np.zeros((len(r), 1)), obs=pd.DataFrame({"array_row": r, "array_col": c}, index=[f"s{i}" for i in range(len(r))]))
    W, kind = spatial_graph(a, xy)
    assert kind == "hex" and (W != H).nnz == 0
    W, kind = spatial_graph(a, xy, kind="knn", n_neighbors=6)
    assert kind == "knn" and (W != W.T).nnz == 0
    del a.obs["array_row"]
    assert spatial_graph(a, xy)[1] == "knn"
    with pytest.raises(InvalidInputError, match="array_row"):
        spatial_graph(a, xy, kind="hex")
    R = row_normalize(sparse.csr_matrix(np.array([[0, 1, 1], [0, 0, 0], [2, 0, 0]], float)))
    np.testing.assert_allclose(R.toarray(), [[0, 0.5, 0.5], [0, 0, 0], [1, 0, 0]])
    assert nn_distance(xy) == pytest.approx(np.median(_brute_knn(xy, 1)[0]))


# ----------------------------------------------------------------------------- clustering


def _planted(n_blocks=4, size=30, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=20.0, size=(n_blocks, 5))
    x = np.vstack([c + rng.normal(size=(size, 5)) for c in centres])
    return x, np.repeat(np.arange(n_blocks), size)


def test_leiden_recovers_planted_clusters_and_search_hits_the_count():
    pytest.importorskip("leidenalg")
    from sklearn.metrics import adjusted_rand_score

    from experimat.methods._cluster import leiden, relabel_by_size, search_resolution

    x, truth = _planted()
    g = knn_graph(x, 10, symmetric=True)
    labels = leiden(g, resolution=0.5, seed=0)
    assert adjusted_rand_score(truth, labels) == 1.0
    np.testing.assert_array_equal(labels, leiden(g, resolution=0.5, seed=0))  # seeded
    for strategy in ("bisect", "step"):
        got, res, exact = search_resolution(g, 4, seed=0, strategy=strategy)
        assert exact and len(np.unique(got)) == 4 and res > 0
        assert adjusted_rand_score(truth, got) == 1.0
    assert list(relabel_by_size(np.array([5, 5, 2, 9, 9, 9]))) == [1, 1, 2, 0, 0, 0]


def test_search_warns_with_the_closest_when_no_resolution_fits():
    pytest.importorskip("leidenalg")
    from experimat.methods._cluster import search_resolution

    x, _ = _planted(n_blocks=2, size=5)
    g = knn_graph(x, 2, symmetric=True)
    with pytest.warns(ExperimatWarning, match="no Leiden resolution gave exactly 50"):
        labels, _, exact = search_resolution(g, 50, seed=0, max_steps=5)
    assert not exact and len(np.unique(labels)) <= 10
    with pytest.raises(InvalidInputError, match="strategy"):
        search_resolution(g, 2, strategy="grid")
