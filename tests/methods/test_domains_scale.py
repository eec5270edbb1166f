"""The domain methods' size rules (issue 21: SpaGCN and DeepST at 500,000 bins, nothing quadratic in the
spots): SpaGCN's width search without all pairs, clusterings on a sample above ``SAMPLE_MAX`` points,
DeepST's vectorised neighbour weights and its edges drawn per epoch. The thresholds are lowered here so
that small data take the large-data paths; the results are compared with the exact small-data ones."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial.distance import cdist
from sklearn.metrics import adjusted_rand_score

import experimat as em
from experimat.methods import _cluster

torch = pytest.importorskip("torch")
pytest.importorskip("leidenalg")

from experimat.methods.domains.deepst import _graph as deepst_graph  # noqa: E402
from experimat.methods.domains.deepst import _model as deepst_model  # noqa: E402
from experimat.methods.domains.deepst import spatial_detect_domains_deepst  # noqa: E402
from experimat.methods.domains.spagcn import _graph as spagcn_graph  # noqa: E402
from experimat.methods.domains.spagcn import spatial_detect_domains_spagcn  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _quiet():
    with em.settings.override(progress=False, verbosity="warning"):
        yield


def _blobs(n_per: int, k: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10, size=(k, dim))
    return np.repeat(centres, n_per, axis=0) + rng.normal(size=(n_per * k, dim)), np.repeat(np.arange(k), n_per)


# ------------------------------------------------------------------------------------------------
# SpaGCN's width search
# ------------------------------------------------------------------------------------------------
def test_width_search_without_all_pairs_gives_the_same_width(monkeypatch):
    """A lower bound above the target takes the search's decisions as the exact value would: the same l,
    also when the local radius shrinks and wide widths are summed from KD-tree pairs."""
    xy, _ = em.datasets.visium_hex_grid(900)
    exact = spagcn_graph.search_l(xy, 0.5)
    calls = []
    original = spagcn_graph._MeanWeight.__call__

    def spy(self, width, above=None):
        calls.append((width, self.n > spagcn_graph._ALL_PAIRS_MAX or width * spagcn_graph._TRUNCATE <= self.local_radius))
        return original(self, width, above)

    monkeypatch.setattr(spagcn_graph._MeanWeight, "__call__", spy)
    monkeypatch.setattr(spagcn_graph, "_ALL_PAIRS_MAX", 100)
    monkeypatch.setattr(spagcn_graph, "_LOCAL_PAIRS_MAX", 5_000)  # a radius of ~3 spacings, not 12
    assert spagcn_graph.search_l(xy, 0.5) == exact
    assert all(ok for _, ok in calls)  # never all pairs
    # p(l) of a wide width from the pairs within its cut-off equals the sum over all pairs
    f = spagcn_graph._MeanWeight(xy, None)
    assert f.local_radius < 12 * np.median(np.sort(cdist(xy, xy), 1)[:, 1])
    wide = 4.0 * exact
    expected = np.exp(-cdist(xy, xy) ** 2 / (2.0 * wide * wide)).sum() / len(xy) - 1.0
    assert original(f, wide) == pytest.approx(expected, rel=1e-6)
    assert original(f, wide, above=0.51) <= expected  # a lower bound when it exceeds the target


# ------------------------------------------------------------------------------------------------
# clusterings on a sample
# ------------------------------------------------------------------------------------------------
def test_clustering_sample_rule():
    assert _cluster.clustering_sample(1000, seed=0, max_n=1000) is None
    s = _cluster.clustering_sample(1000, seed=0, max_n=100)
    assert s.size == 100 and np.all(np.diff(s) > 0)
    np.testing.assert_array_equal(s, _cluster.clustering_sample(1000, seed=0, max_n=100))
    assert not np.array_equal(s, _cluster.clustering_sample(1000, seed=1, max_n=100))


def test_sample_labels_reach_every_point():
    pts, truth = _blobs(300, 4, 8)
    sample = _cluster.clustering_sample(len(pts), seed=0, max_n=200)
    labels = _cluster.nearest_centre(pts, sample, truth[sample])
    np.testing.assert_array_equal(labels, truth)
    # two interleaved half-moons: one centre per cluster misassigns, small landmarks follow the shapes
    rng = np.random.default_rng(1)
    t = rng.uniform(0, np.pi, 2000)
    moon = rng.integers(0, 2, 2000)
    xy = np.column_stack([np.cos(t) + moon, np.where(moon == 0, np.sin(t), 0.5 - np.sin(t))])
    xy += rng.normal(scale=0.05, size=xy.shape)
    sample = _cluster.clustering_sample(len(xy), seed=0, max_n=800)
    voted = _cluster.landmark_vote(xy, sample, moon[sample], n_landmarks=100, seed=0)
    np.testing.assert_array_equal(voted[sample], moon[sample])
    assert (voted == moon).mean() > 0.99
    assert (_cluster.nearest_centre(xy, sample, moon[sample]) == moon).mean() < 0.95


def _lognorm(a):
    from experimat.methods._expression import normalize_total

    a.layers["lognorm"] = normalize_total(a.X)[0]
    return a


@pytest.mark.parametrize("stable", [True, False])
def test_spagcn_initialisation_on_a_sample(monkeypatch, stable):
    a = _lognorm(em.datasets.synthetic_domains(1200, 4, seed=3))
    truth = a.obs["domain"].astype(str).to_numpy()
    spatial_detect_domains_spagcn(a, n_clusters=4, seed=0, stable=stable, use_gpu=False, key_added="full")
    assert a.uns["full"]["init_sample"] == "none"
    monkeypatch.setattr(_cluster, "SAMPLE_MAX", 400)
    spatial_detect_domains_spagcn(a, n_clusters=4, seed=0, stable=stable, use_gpu=False, key_added="sampled")
    assert a.uns["sampled"]["init_sample"] == 400
    assert adjusted_rand_score(truth, a.obs["sampled"]) > 0.9
    assert adjusted_rand_score(a.obs["full"], a.obs["sampled"]) > 0.9


def test_deepst_clusterings_on_a_sample_and_edges_per_epoch(monkeypatch):
    a = em.datasets.synthetic_domains(900, 3, 100, seed=0)
    monkeypatch.setattr(_cluster, "SAMPLE_MAX", 300)
    monkeypatch.setattr(deepst_model, "EDGE_SAMPLE_MAX", 2_000)
    n = torch.get_num_threads()
    spatial_detect_domains_deepst(a, n_domains=3, pre_epochs=60, epochs=30, seed=0, stable=False, use_gpu=False,
                                  key_added="d")
    assert torch.get_num_threads() == n  # one thread inside, restored after
    assert a.uns["d"]["cluster_sample"] == 300 and a.uns["d"]["edge_sample"] == 2_000
    assert a.obs["d.domain"].nunique() == 3
    assert adjusted_rand_score(a.obs["domain"].astype(str), a.obs["d.domain"]) > 0.6


# ------------------------------------------------------------------------------------------------
# DeepST's neighbour weights
# ------------------------------------------------------------------------------------------------
def _top_by_rows(weights: sp.csr_matrix, k: int) -> np.ndarray:
    """The rule written row by row: the k largest (ties: smaller column), rescaled to sum 1."""
    out = np.zeros(weights.shape)
    for i in range(weights.shape[0]):
        cols = weights.indices[weights.indptr[i] : weights.indptr[i + 1]]
        vals = weights.data[weights.indptr[i] : weights.indptr[i + 1]]
        order = sorted(range(len(cols)), key=lambda t: (-vals[t], cols[t]))[:k]
        total = vals[order].sum() if order else 0
        if total > 0:
            out[i, cols[order]] = vals[order] / total
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_neighbour_weights_vectorised(dtype):
    rng = np.random.default_rng(0)
    for trial in range(10):
        n = int(rng.integers(2, 40))
        w = sp.random(n, n, density=0.3, random_state=trial, format="csr")
        w.data = (np.round(w.data * 4) / 4).astype(dtype)  # ties and explicit zeros
        for k in (1, 3, 5):
            top = deepst_graph.top_neighbour_weights(w, k)
            assert top.dtype == dtype
            np.testing.assert_allclose(top.toarray(), _top_by_rows(w, k), rtol=0, atol=1e-7)
            assert top.getnnz(1).max(initial=0) <= k


def test_spot_weights_by_blocks_match_one_pass(monkeypatch):
    xy, _ = em.datasets.visium_hex_grid(500)
    rng = np.random.default_rng(0)
    pcs, img = rng.normal(size=(500, 10)).astype(np.float32), rng.normal(size=(500, 5))
    whole = deepst_graph.spot_weights(xy, pcs, img, spatial_k=30)
    ind, _ = deepst_graph.knn_indices(xy, 30)
    rows, cols = np.repeat(np.arange(500), 30), ind.ravel()
    corr = np.clip(deepst_graph._row_correlation(pcs[rows], pcs[cols]), 0, None)
    cos = np.clip(deepst_graph._row_cosine(img[rows], img[cols]), 0, None)
    np.testing.assert_allclose(whole[rows, cols].A1, corr * cos, rtol=1e-6)
    monkeypatch.setattr(deepst_graph, "_BLOCK_ENTRIES", 1_000)  # blocks of 33 spots
    blocked = deepst_graph.spot_weights(xy, pcs, img, spatial_k=30)
    assert blocked.dtype == whole.dtype and (blocked != whole).nnz == 0


# ------------------------------------------------------------------------------------------------
# PCA fitted on a sample of rows and applied to all (DeepST's preparation above PCA_FIT_MAX spots)
# ------------------------------------------------------------------------------------------------
def _typed_counts(n: int, g: int, n_types: int, seed: int = 0) -> sp.csr_matrix:
    """log1p of Poisson counts of ``n_types`` row types with their own mean profiles: the leading
    ``n_types - 1`` principal axes are the types' differences, with a clear gap to the noise."""
    rng = np.random.default_rng(seed)
    profiles = rng.lognormal(-1, 1, size=(n_types, g))
    x = sp.csr_matrix(rng.poisson(profiles[rng.integers(0, n_types, n)]).astype(np.float64))
    x.data = np.log1p(x.data)
    return x


@pytest.mark.parametrize("n_genes", [300, 1_200])  # the exact covariance and the randomised SVD
@pytest.mark.parametrize("blocks", [None, [0, 1_500, 4_000]])
def test_sketch_pca_spans_the_full_pca_subspace(n_genes, blocks):
    from scipy.linalg import subspace_angles

    from experimat.methods._expression import block_pca

    x = _typed_counts(4_000, n_genes, 6)
    full = block_pca(x, 20, blocks=blocks, scale=True, seed=0)
    # fit_max at or above the rows: the exact path, bit for bit
    np.testing.assert_array_equal(block_pca(x, 20, blocks=blocks, scale=True, seed=0, fit_max=4_000), full)
    sketch = block_pca(x, 20, blocks=blocks, scale=True, seed=0, fit_max=1_500)
    assert sketch.shape == full.shape and sketch.dtype == np.float32
    angles = np.degrees(subspace_angles(full[:, :5].astype(float), sketch[:, :5].astype(float)))
    assert angles.max() < 3  # the types' subspace (1.1 degrees), from 1,500 of 4,000 rows
    # same centring: scores of each block have mean 0, as the full PCA's
    bounds = [0, 4_000] if blocks is None else blocks
    for lo, hi in itertools.pairwise(bounds):
        np.testing.assert_allclose(sketch[lo:hi].mean(0), 0, atol=1e-3 * np.abs(sketch).max())
    # seeded: the same sample, the same scores; another seed, another sample, the same subspace
    np.testing.assert_array_equal(sketch, block_pca(x, 20, blocks=blocks, scale=True, seed=0, fit_max=1_500))
    other = block_pca(x, 20, blocks=blocks, scale=True, seed=1, fit_max=1_500)
    assert not np.array_equal(other, sketch)
    assert np.degrees(subspace_angles(other[:, :5].astype(float), sketch[:, :5].astype(float))).max() < 3


def test_sketch_pca_scores_are_the_projection_of_every_row(monkeypatch):
    from experimat.methods import _expression

    x = _typed_counts(3_000, 200, 4)
    monkeypatch.setattr(_expression, "_SKETCH_CHUNK", 700)  # rows projected in several chunks
    scores = _expression.block_pca(x, 10, scale=True, seed=0, fit_max=1_000)
    dense = x.toarray()
    z = (dense - dense.mean(0)) / dense.std(0)
    # the scores are z @ V for orthonormal axes V: recover V from them and check every row follows it
    v = np.linalg.lstsq(z, scores.astype(float), rcond=None)[0]
    np.testing.assert_allclose(v.T @ v, np.eye(10), atol=1e-4)
    np.testing.assert_allclose(z @ v, scores, rtol=0, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# DeepST's subgraph mini-batches
# ------------------------------------------------------------------------------------------------
def test_spatial_tiles_stay_within_samples_and_are_compact():
    from experimat.methods.domains.deepst import _subgraph

    xy, _ = em.datasets.visium_hex_grid(2_000)
    coords = np.vstack([xy, xy])  # two samples on the same coordinates
    tiles = _subgraph.spatial_tiles(coords, np.array([0, 2_000, 4_000]), 200)
    assert set(tiles[:2_000]).isdisjoint(tiles[2_000:])
    np.testing.assert_array_equal(np.unique(tiles), np.arange(tiles.max() + 1))
    sizes = np.bincount(tiles)
    assert 10 <= sizes.size // 2 <= 40 and np.median(sizes) > 100
    spacing = np.median(np.sort(cdist(xy, xy), 1)[:, 1])
    for t in range(tiles.max() + 1):  # a tile is a square patch: its diameter ~ sqrt(2 x 200) spacings
        pts = coords[tiles == t]
        assert np.ptp(pts, 0).max() < 30 * spacing


def test_subgraph_batch_gives_the_full_graph_embedding_of_its_spots():
    """With the 2-hop halo and the unrenormalised adjacency, a batch's spots get exactly the outputs
    the whole graph gives them (eval mode: batch norm from running statistics)."""
    from experimat.methods.domains.deepst import _subgraph

    xy, _ = em.datasets.visium_hex_grid(1_500)
    adj_norm, adj_label = deepst_graph.spatial_graph(xy, 12)
    tiles = _subgraph.spatial_tiles(xy, np.array([0, 1_500]), 100)
    batches = _subgraph.SubgraphBatches(adj_norm, adj_label, tiles, 300, seed=0, device=torch.device("cpu"))
    torch.manual_seed(0)
    net = deepst_model.build_network(torch, 16, deepst_model.TrainConfig()).eval()
    x = torch.randn(1_500, 16)
    with torch.no_grad():
        z_full = net(x, deepst_model._to_torch_sparse(torch, adj_norm, "cpu"))[0]
        seen = set()
        for _ in range(6):
            b = batches.next()
            core = b.core.numpy()
            assert b.n_core == core.size >= 300 and np.all(np.diff(core) > 0)
            np.testing.assert_array_equal(b.nodes.numpy()[: b.n_core], core)
            z = net(x.index_select(0, b.nodes), (b.adj1, b.adj2))[0]
            assert z.shape[0] == b.n_core
            torch.testing.assert_close(z, z_full[b.core], rtol=1e-5, atol=1e-5)
            # the decoder's edges: exactly the graph's edges between the batch's spots
            pos = b.pos.numpy()
            sub = adj_label[core][:, core].tocoo()
            assert sorted(zip(pos[0].tolist(), pos[1].tolist())) == sorted(zip(sub.row.tolist(), sub.col.tolist()))
            seen.update(core.tolist())
    assert len(seen) == 1_500  # the tiles are drawn without replacement until all were used


def test_subgraph_plan_scales_the_batch_with_the_spots():
    m = deepst_model
    assert m.subgraph_plan(m.FULL_BATCH_MAX) is None  # full batch up to the threshold, included
    n = m.FULL_BATCH_MAX + 1
    batch, tile = m.subgraph_plan(n)
    assert batch == max(m.BATCH_MIN, n // m.BATCH_FRACTION) and tile == batch // m.TILES_PER_BATCH
    assert m.subgraph_plan(50_000) == (5_000, 500)  # a tenth of the spots
    assert m.subgraph_plan(500_000) == (m.BATCH_SPOTS, m.BATCH_SPOTS // m.TILES_PER_BATCH) == (10_000, 1_000)
    assert m.BATCH_MIN < m.FULL_BATCH_MAX  # a batch is always a part of the spots


def _stripes(n: int, n_genes: int, seed: int = 1):
    return em.datasets.synthetic_visium_hd(n, n_genes, seed=seed, with_image=False)


def test_deepst_minibatch_training_finds_the_planted_domains(monkeypatch):
    from experimat.methods.domains.deepst import _core

    a = _stripes(2_500, 400)
    truth = a.obs["domain"].astype(str)
    monkeypatch.setattr(deepst_model, "FULL_BATCH_MAX", 1_000)
    monkeypatch.setattr(deepst_model, "BATCH_MIN", 600)  # 2,500 // 10 = 250 spots: raised to 600
    monkeypatch.setattr(deepst_model, "TILES_PER_BATCH", 4)
    monkeypatch.setattr(_core, "PCA_FIT_MAX", 1_000)
    kw = dict(layer="counts", n_domains=4, pre_epochs=80, epochs=40, seed=0, stable=False, use_gpu=False)
    hist = []
    real = _core.train_deepst

    def spy(*args, **kwargs):
        h = {}
        out = real(*args, history=h, **kwargs)
        hist.append(h)
        return out

    monkeypatch.setattr(_core, "train_deepst", spy)
    spatial_detect_domains_deepst(a, key_added="mb", **kw)
    entry = a.uns["mb"]
    assert (entry["pca_sample"], entry["train_batch"], entry["train_tile"]) == (1_000, 600, 150)
    assert adjusted_rand_score(truth, a.obs["mb.domain"]) > 0.9
    # one step per epoch, each on a subgraph; the pre-training loss falls
    pre = np.asarray(hist[0]["pretrain"])
    assert pre.size == 80 and len(hist[0]["train"]) == 40
    assert pre[-10:].mean() < 0.95 * pre[:10].mean()
    # reproducible with a fixed seed
    spatial_detect_domains_deepst(a, key_added="again", **kw)
    np.testing.assert_array_equal(a.obsm["mb.embedding"], a.obsm["again.embedding"])
    np.testing.assert_array_equal(a.obs["mb.domain"], a.obs["again.domain"])


def test_deepst_small_data_keeps_full_batch_and_the_exact_pca():
    a = _stripes(600, 200)
    spatial_detect_domains_deepst(a, layer="counts", n_domains=4, pre_epochs=5, epochs=5, seed=0, stable=False,
                                  use_gpu=False, key_added="d")
    entry = a.uns["d"]
    assert (entry["pca_sample"], entry["train_batch"], entry["train_tile"]) == ("none", "none", "none")


# ------------------------------------------------------------------------------------------------
# exact kNN of many points (the clustering samples' graphs)
# ------------------------------------------------------------------------------------------------
def test_bounded_knn_matches_the_whole_row_search(monkeypatch):
    from experimat.methods import _graph

    pts, _ = _blobs(1_000, 3, 6)
    exact = _graph.knn(pts, 15, search="brute")
    monkeypatch.setattr(_graph, "_BOUNDED_MIN", 500)
    monkeypatch.setattr(_graph, "_BOUND_COLUMNS", 64)  # a loose bound: many candidates per row
    calls = []
    original = _graph._bounded_knn
    monkeypatch.setattr(_graph, "_bounded_knn", lambda p, k: calls.append(k) or original(p, k, 300, 700))
    bounded = _graph.knn(pts, 15, search="brute")
    assert calls == [16]  # blocks of 300 rows x 700 columns, the diagonal inside some of them
    np.testing.assert_array_equal(bounded[1], exact[1])
    np.testing.assert_allclose(bounded[0], exact[0], rtol=1e-12)  # products of other shapes: rounding
    # coinciding points: never their own neighbour; ties at the k-th distance go to the smaller index
    pts[5] = pts[6]
    _, idx = _graph.knn(pts, 15, search="brute")
    assert 6 in idx[5] and 5 not in idx[5] and 5 in idx[6] and 6 not in idx[6]
    cut = np.flatnonzero(np.isin(idx, [5, 6]).sum(1) == 1)  # rows where the pair is cut at the k-th place
    cut = cut[(cut != 5) & (cut != 6)]
    assert cut.size and np.all(idx[cut, -1] == 5)


# ------------------------------------------------------------------------------------------------
# the resolution search started from another run's resolution (DeepST's runs above SAMPLE_MAX)
# ------------------------------------------------------------------------------------------------
def test_resolution_search_from_a_hint():
    import unittest.mock

    from experimat.methods._graph import knn_graph

    pts = _blobs(150, 4, 6, seed=2)[0]
    pts += np.random.default_rng(3).normal(scale=4.0, size=pts.shape)  # weak clusters: the count needs searching
    g = knn_graph(pts, 15, symmetric=True, search="brute")
    calls = []
    original = _cluster.leiden

    def counted(*a, **k):
        calls.append(k["resolution"])
        return original(*a, **k)

    cold = _cluster.search_resolution(g, 4, seed=0, weighted=False)
    assert cold[2] and len(np.unique(cold[0])) == 4
    with unittest.mock.patch.object(_cluster, "leiden", counted):
        same = _cluster.search_resolution(g, 4, seed=0, weighted=False, hint=cold[1])
        assert calls == [cold[1]]  # the hint that gives the count: one Leiden run, the same labels
        np.testing.assert_array_equal(same[0], cold[0])
        for hint in (cold[1] / 3, cold[1] * 3, 0.001, 100.0):  # off in either direction: still the count
            labels, _, exact = _cluster.search_resolution(g, 4, seed=0, weighted=False, hint=hint)
            assert exact and len(np.unique(labels)) == 4
            assert adjusted_rand_score(cold[0], labels) > 0.8
    # a hint from which no bracket holds the count: the plain search follows and decides as without one
    for n in (7, 40):
        plain = _cluster.search_resolution(g, n, seed=0, weighted=False, warn=False)
        hinted = _cluster.search_resolution(g, n, seed=0, weighted=False, warn=False, hint=plain[1] * 2)
        assert hinted[2] >= plain[2]  # no worse
        if hinted[2]:
            assert len(np.unique(hinted[0])) == n


def test_deepst_stable_kmeans_on_a_sample_agrees_with_all_spots(monkeypatch):
    """Above SAMPLE_MAX the stable mode's k-means centres are fitted on a seeded sample and every spot
    joins its nearest centre; the same networks' domains agree with k-means on all spots."""
    a = em.datasets.synthetic_domains(600, 3, 60, seed=0)
    kw = dict(n_domains=3, pre_epochs=20, epochs=10, seed=0, stable=True, use_gpu=False)
    spatial_detect_domains_deepst(a, key_added="all", **kw)
    monkeypatch.setattr(_cluster, "SAMPLE_MAX", 300)
    spatial_detect_domains_deepst(a, key_added="big", **kw)
    assert a.uns["all"]["cluster_sample"] == "none" and a.uns["big"]["cluster_sample"] == 300
    np.testing.assert_array_equal(a.obsm["all.embedding"], a.obsm["big.embedding"])  # the sample is the clustering's
    assert a.obs["big.domain"].nunique() == 3
    assert adjusted_rand_score(a.obs["all.domain"], a.obs["big.domain"]) > 0.9
