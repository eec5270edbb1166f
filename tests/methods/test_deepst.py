"""Tests of DeepST spatial domains (methods/domains/deepst)."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import experimat as em
from experimat._errors import ExperimatWarning, InvalidInputError, KeyNotFoundError, MissingSlotError, NotCountsError
from experimat.datasets import synthetic_domains

torch = pytest.importorskip("torch")
pytest.importorskip("leidenalg")
pytest.importorskip("sklearn")

from experimat.methods.domains.deepst import (  # noqa: E402
    DeepSTModel,
    _cluster,
    _graph,
    _image,
    builtin_feature_names,
    integrate_domains_deepst,
    spatial_detect_domains_deepst,
    spot_image_features,
    tile_cnn,
)


def ari(a, b) -> float:
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(np.asarray(a).astype(str), np.asarray(b).astype(str))


@pytest.fixture(autouse=True, scope="module")
def _quiet_single_thread():
    # tiny networks: one intra-op thread avoids oversubscription on small CI machines
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with em.settings.override(progress=False, verbosity="warning"):
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fitted():
    adata = synthetic_domains(500, 4, 100, seed=0)
    df = spatial_detect_domains_deepst(adata, n_domains=4, pre_epochs=100, epochs=40, seed=0, use_gpu=False)
    return adata, df


# ------------------------------------------------------------------------------------------------
# accuracy and result slots
# ------------------------------------------------------------------------------------------------
def test_synthetic_domains_accuracy(fitted):
    adata, _ = fitted
    assert ari(adata.obs["domain"], adata.obs["deepst.refined"]) >= 0.7
    assert ari(adata.obs["domain"], adata.obs["deepst.domain"]) >= 0.7


def test_result_slots(fitted):
    adata, df = fitted
    assert list(df.columns) == ["domain", "refined"]
    assert (df.index == adata.obs_names).all()
    for key in ("deepst.domain", "deepst.refined"):
        col = adata.obs[key]
        assert col.dtype == "category"
        assert list(col.cat.categories) == ["0", "1", "2", "3"]
    emb = adata.obsm["deepst.embedding"]
    assert emb.shape == (500, 28) and np.isfinite(emb).all()
    uns = adata.uns["deepst"]
    assert uns["params"]["n_domains"] == 4 and uns["params"]["seed"] == 0
    assert uns["n_domains_found"] == 4
    assert uns["timings"]["pretrain_s"] > 0 and uns["timings"]["per_epoch_s"] > 0


def test_seeded_reproducible_on_cpu():
    runs = []
    for _ in range(2):
        adata = synthetic_domains(200, 3, 60, seed=4)
        spatial_detect_domains_deepst(
            adata, n_domains=3, pre_epochs=15, epochs=10, seed=3, use_gpu=False, key_added="d"
        )
        runs.append(adata)
    np.testing.assert_array_equal(runs[0].obsm["d.embedding"], runs[1].obsm["d.embedding"])
    assert (runs[0].obs["d.domain"] == runs[1].obs["d.domain"]).all()
    other = synthetic_domains(200, 3, 60, seed=4)
    spatial_detect_domains_deepst(other, n_domains=3, pre_epochs=15, epochs=10, seed=4, use_gpu=False, key_added="d")
    assert not np.array_equal(other.obsm["d.embedding"], runs[0].obsm["d.embedding"])


def test_cpu_training_uses_one_thread_and_restores_the_count():
    # a thread pool is many times slower on these small tensors on a loaded machine (issue 19)
    from experimat.methods.domains.deepst._model import train_deepst

    rng = np.random.default_rng(0)
    adj = sp.csr_matrix(sp.random(40, 40, density=0.1, random_state=0) + sp.eye(40))
    seen = []

    def init(z, seed):
        seen.append(torch.get_num_threads())
        return np.arange(z.shape[0]) % 2

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        emb, _, _ = train_deepst(
            rng.normal(size=(40, 8)), adj, adj, pre_epochs=2, epochs=2, seed=0, device=torch.device("cpu"),
            cluster_init=init,
        )
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert emb.shape[0] == 40 and np.isfinite(emb).all()


def test_stable_initial_weights_do_not_depend_on_the_seed_and_single_seed_draws_them_from_it():
    # issue 19: the stable mode starts every network from the same weights, so that the user seed
    # drives only the training's noise; stable=False (the reference) draws them from the seed
    from experimat.methods.domains.deepst._model import INIT_SEED, TrainConfig, build_network, train_deepst

    rng = np.random.default_rng(0)
    data = rng.normal(size=(40, 8))
    adj = sp.csr_matrix(sp.random(40, 40, density=0.1, random_state=0) + sp.eye(40))
    cpu = torch.device("cpu")

    def state(init, seed, epochs=0):
        _, net, _ = train_deepst(data, adj, adj, pre_epochs=epochs, epochs=epochs, seed=seed, device=cpu,
                                 cfg=TrainConfig(init=init), cluster_init=lambda z, s: np.arange(z.shape[0]) % 2)
        return {k: v.clone() for k, v in net.state_dict().items() if k != "cluster_layer"}

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    def drawn(seed):
        torch.manual_seed(seed)
        return build_network(torch, 8, TrainConfig()).state_dict()

    fixed = [state("fixed", s) for s in (1, 2)]
    assert same(fixed[0], fixed[1]) and same(fixed[0], drawn(INIT_SEED))
    one = [state("seed", s) for s in (1, 2)]
    assert same(one[0], drawn(1)) and same(one[1], drawn(2)) and not same(one[0], one[1])
    # the seed still drives the training's noise (dropout, corruption, sampling, negative pairs)
    assert not same(state("fixed", 1, epochs=3), state("fixed", 2, epochs=3))


def test_network_input_does_not_depend_on_the_seed(monkeypatch):
    # the PCA of the augmented data is a property of the data (as SpaGCN's): only the network's
    # training depends on the run's seed
    from experimat.methods.domains.deepst import _core

    seen = []
    real = _core.train_deepst

    def spy(data, *args, **kwargs):
        seen.append(np.array(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(_core, "train_deepst", spy)
    adata = synthetic_domains(300, 3, 1200, seed=7)  # over 1,000 genes: the randomised SVD
    for seed in (0, 1):
        spatial_detect_domains_deepst(
            adata, n_domains=3, pre_epochs=2, epochs=1, seed=seed, n_pcs=10, stable=False, use_gpu=False,
            key_added=f"s{seed}",
        )
    assert len(seen) == 2
    np.testing.assert_array_equal(seen[0], seen[1])


def test_counts_from_layer_and_global_seed():
    adata = synthetic_domains(150, 3, 60, seed=2)
    adata.X = np.log1p(adata.X)  # X is not counts; the layer is
    with em.settings.override(seed=5):
        spatial_detect_domains_deepst(adata, layer="counts", n_domains=3, pre_epochs=5, epochs=3, use_gpu=False)
    assert adata.uns["deepst"]["params"]["layer"] == "counts"
    assert adata.obs["deepst.refined"].notna().all()


# ------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------
def test_use_image_with_saved_tiles_and_model(tmp_path):
    adata = synthetic_domains(300, 3, 60, with_image=True, seed=1)
    df = spatial_detect_domains_deepst(
        adata, n_domains=3, use_image=True, pre_epochs=60, epochs=20, seed=0, use_gpu=False, save_path=tmp_path
    )
    assert df["refined"].nunique() == 3
    assert ari(adata.obs["domain"], df["refined"]) >= 0.5
    tiles = tmp_path / "deepst_tiles"
    marker = tiles / _image.TILE_DIR_MARKER
    assert marker.is_file() and '"complete": true' in marker.read_text()
    shards = sorted(tiles.glob("tiles_*.npz"))
    with np.load(shards[0], allow_pickle=False) as z:
        assert z["tiles"].dtype == np.uint8 and z["tiles"].shape[1:] == (18, 18, 3)
        assert z["obs_names"][0] == adata.obs_names[0]
    assert sum(np.load(s)["tiles"].shape[0] for s in shards) == 300
    model = DeepSTModel.load(tmp_path / "deepst_model")  # an em.SavedModel folder: config.json + arrays.npz
    assert sorted(p.name for p in (tmp_path / "deepst_model").iterdir()) == ["arrays.npz", "config.json"]
    assert "cluster_layer" in model.state and model.config["method"] == "deepst"
    for k, v in df.attrs["model"].state.items():
        np.testing.assert_array_equal(model.state[k], v)
    net = model.network()  # the trained network is rebuilt from the saved weights (strict state-dict load)
    assert net.cluster_layer.shape[0] == model.config["n_dec_clusters"]


def test_tile_storage_is_bounded_and_replaced(tmp_path):
    adata = synthetic_domains(300, 3, 60, with_image=True, seed=1)
    budget_mb = 50 * 18 * 18 * 3 / 1e6  # room for 50 tiles
    with pytest.warns(ExperimatWarning, match="tile storage reached"):
        spot_image_features(adata, save_path=tmp_path, max_tile_mb=budget_mb)
    stored = sum(np.load(s)["tiles"].shape[0] for s in (tmp_path / "deepst_tiles").glob("*.npz"))
    assert stored == 50
    spot_image_features(adata, save_path=tmp_path)  # replaces the earlier tiles
    stored = sum(np.load(s)["tiles"].shape[0] for s in (tmp_path / "deepst_tiles").glob("*.npz"))
    assert stored == 300
    foreign = tmp_path / "other" / "deepst_tiles"
    foreign.mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="not written by experimat"):
        spot_image_features(adata, save_path=tmp_path / "other")


def test_builtin_features_shape_determinism_and_contrast():
    rng = np.random.default_rng(0)
    red = np.zeros((4, 18, 18, 3), np.float32)
    red[..., 0] = 0.9
    stripes = np.tile((np.arange(18) % 4 < 2).astype(np.float32)[None, None, :, None], (4, 18, 1, 3))
    noise = rng.random((4, 18, 18, 3)).astype(np.float32)
    tiles = np.concatenate([red, stripes, noise])
    f1 = _image.builtin_features(tiles)
    f2 = _image.builtin_features(tiles.copy())
    assert f1.shape == (12, len(builtin_feature_names())) == (12, 46)
    np.testing.assert_array_equal(f1, f2)
    names = builtin_feature_names()
    assert f1[0, names.index("R_mean")] == pytest.approx(0.9, abs=1e-4)
    assert f1[0, names.index("gabor3_0_mean")] == pytest.approx(0.0, abs=1e-6)  # flat tile: no texture
    # vertical stripes respond to the filter oriented across them, not along them
    assert f1[4, names.index("gabor6_0_mean")] > 0.05
    assert f1[4, names.index("gabor6_0_mean")] > 5 * f1[4, names.index("gabor6_90_mean")]
    lbp = f1[:, [names.index(f"lbp_{i}") for i in range(10)]]
    np.testing.assert_allclose(lbp.sum(1), 1.0, atol=1e-6)


def test_spot_image_features_and_cnn_weights(tmp_path):
    adata = synthetic_domains(120, 3, 60, with_image=True, seed=1)
    a = spot_image_features(adata, n_components=8)
    b = spot_image_features(adata, n_components=8)
    assert a.shape == (120, 8)
    np.testing.assert_array_equal(a, b)
    raw = spot_image_features(adata, n_components=None)
    assert raw.shape == (120, 46)
    # spots of the same domain look alike
    dom = adata.obs["domain"].to_numpy()
    same = np.linalg.norm(a[dom == "0"][:10] - a[dom == "0"][10:20], axis=1).mean()
    diff = np.linalg.norm(a[dom == "0"][:10] - a[dom == "2"][:10], axis=1).mean()
    assert same < diff
    torch.manual_seed(0)
    net = tile_cnn()
    path = tmp_path / "cnn.pt"
    torch.save(net.state_dict(), path)
    c = spot_image_features(adata, weights_path=path, n_components=5, use_gpu=False)
    assert c.shape == (120, 5) and np.isfinite(c).all()
    np.testing.assert_array_equal(c, spot_image_features(adata, weights_path=path, n_components=5, use_gpu=False))
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(InvalidInputError, match="does not match the TileCNN"):
        spot_image_features(adata, weights_path=tmp_path / "bad.pt")
    with pytest.raises(InvalidInputError, match="not a file"):
        spot_image_features(adata, weights_path=tmp_path / "missing.pt")


def test_uint8_and_grey_images_accepted():
    img = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    out = _image._as_rgb01(img)
    assert out.dtype == np.float32 and out.max() <= 1.0
    assert _image._as_rgb01(img[..., 0]).shape == (40, 50, 3)
    with pytest.raises(InvalidInputError):
        _image._as_rgb01(np.zeros((4, 4, 2)))


# ------------------------------------------------------------------------------------------------
# sparse graph
# ------------------------------------------------------------------------------------------------
def _graph_peak(n: int):
    xy, _ = em.datasets.visium_hex_grid(n)
    rng = np.random.default_rng(0)
    pcs, img = rng.normal(size=(n, 10)), rng.normal(size=(n, 5))
    tracemalloc.start()
    w = _graph.spot_weights(xy, pcs, img, spatial_k=30)
    top = _graph.top_neighbour_weights(w, 3)
    adj_norm, adj_label = _graph.spatial_graph(xy, 12)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, w, top, adj_norm, adj_label


def test_graph_is_sparse_and_memory_linear():
    n = 16_000
    peak_small = _graph_peak(n // 4)[0]
    peak, w, top, adj_norm, adj_label = _graph_peak(n)
    assert peak < n * n * 8 / 10  # a dense n x n float matrix alone would be 2 GB
    assert peak / peak_small < 6  # 4x the spots: ~4x the memory (quadratic would be 16x)
    assert sp.issparse(w) and w.nnz <= n * 30
    assert sp.issparse(adj_norm) and adj_label.nnz <= n * 25
    sums = np.asarray(top.sum(1)).ravel()
    assert np.all((np.abs(sums - 1) < 1e-9) | (sums == 0)) and top.getnnz(1).max() <= 3
    assert (adj_label != adj_label.T).nnz == 0 and adj_label.diagonal().min() == 1


def test_augmentation_adds_weighted_neighbours():
    counts = sp.csr_matrix(np.array([[1.0, 0], [0, 2], [4, 4]]))
    top = sp.csr_matrix(np.array([[0, 0.25, 0.75], [1.0, 0, 0], [0, 0, 0]]))
    out = _graph.augment_expression(counts, top, 0.5).toarray()
    np.testing.assert_allclose(out, [[1 + 0.5 * 3, 0.5 * (0.5 + 3)], [0.5, 2], [4, 4]])


def test_refinement_majority_vote():
    xy, _ = em.datasets.visium_hex_grid(100)
    labels = (xy[:, 0] > np.median(xy[:, 0])).astype(int)
    noisy = labels.copy()
    noisy[[22, 47]] = 1 - noisy[[22, 47]]  # two isolated flips inside the halves
    refined = _cluster.refine_labels(xy, noisy, 6)
    assert (refined[[22, 47]] == labels[[22, 47]]).all()
    assert (refined == labels).mean() >= (noisy == labels).mean()


def test_leiden_search_exact_and_fallback_warning():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10, size=(5, 4))
    emb = np.repeat(centres, 40, axis=0) + rng.normal(scale=0.3, size=(200, 4))
    labels, _, exact = _cluster.leiden_n_clusters(emb, 5, seed=0)
    assert exact and labels.max() + 1 == 5
    assert ari(np.repeat(np.arange(5), 40), labels) == pytest.approx(1.0)
    with pytest.warns(ExperimatWarning, match="no Leiden resolution gave exactly 150"):
        labels, _, exact = _cluster.leiden_n_clusters(emb[:160], 150, seed=0)
    assert not exact


# ------------------------------------------------------------------------------------------------
# integration
# ------------------------------------------------------------------------------------------------
def test_integration_two_samples():
    a = synthetic_domains(250, 3, 60, seed=1, sample="a")
    b = synthetic_domains(250, 3, 60, seed=1, sample="b")
    b = b[:, ::-1].copy()  # different gene order: matched by name
    b.obs_names = [f"b{i}" for i in range(b.n_obs)]
    df = integrate_domains_deepst({"a": a, "b": b}, n_domains=3, pre_epochs=60, epochs=20, seed=0, use_gpu=False)
    assert df.index.names == ["sample", "obs_name"] and len(df) == 500
    for ad_ in (a, b):
        assert list(ad_.obs["deepst.integrated.domain"].cat.categories) == ["0", "1", "2"]
        assert ad_.obsm["deepst.integrated.embedding"].shape == (250, 28)
        assert ad_.uns["deepst.integrated"]["params"]["n_domains"] == 3
        assert ari(ad_.obs["domain"], ad_.obs["deepst.integrated.refined"]) >= 0.5
    # the same domain gets the same label in both samples
    truth = np.concatenate([a.obs["domain"].to_numpy(), b.obs["domain"].to_numpy()])
    assert ari(truth, df["refined"]) >= 0.5


def test_integration_key_added_and_result_key_alias():
    a = synthetic_domains(120, 2, 40, seed=3, sample="a")
    b = synthetic_domains(120, 2, 40, seed=3, sample="b")
    b.obs_names = [f"b{i}" for i in range(b.n_obs)]
    kw = dict(n_domains=2, pre_epochs=5, epochs=2, seed=0, use_gpu=False, stable=False)
    integrate_domains_deepst({"a": a, "b": b}, key_added="joint", **kw)
    assert "joint.domain" in a.obs and "joint.refined" in b.obs and "joint" in a.uns
    with pytest.warns(FutureWarning, match="key_added"):
        integrate_domains_deepst({"a": a, "b": b}, result_key="old", **kw)
    assert "old.domain" in a.obs
    with pytest.raises(InvalidInputError, match="pass only key_added="):
        integrate_domains_deepst({"a": a, "b": b}, result_key="old", key_added="new", **kw)


def test_integration_stable_mode_records_its_consensus_and_reproduces():
    from pandas.testing import assert_frame_equal

    from experimat.methods.domains._consensus import run_seeds

    def pair():
        a = synthetic_domains(120, 2, 40, seed=4, sample="a")
        b = synthetic_domains(120, 2, 40, seed=5, sample="b")
        b.obs_names = [f"b{i}" for i in range(b.n_obs)]
        return {"a": a, "b": b}

    kw = dict(n_domains=2, pre_epochs=6, epochs=2, use_gpu=False)
    first, again, other = pair(), pair(), pair()
    df = integrate_domains_deepst(first, seed=3, **kw)
    for ad_ in first.values():  # 2 runs as detection; k-means's own seed and 200 starts
        entry = ad_.uns["deepst.integrated"]
        assert entry["params"]["n_runs"] == 2 and entry["run_seeds"] == run_seeds(3, 2)
        assert entry["kmeans_inits"] == 200 and entry["consensus_seed"] == 0 and entry["resolution"] == "none"
        assert 0.0 <= entry["run_agreement"] <= 1.0 and 0.5 <= entry["mean_support"] <= 1.0
        assert entry["neighbour_averaged"] is True  # the k-means ran on neighbour-averaged embeddings
    train = df.attrs["model"].config["train"]
    assert train["init"] == "fixed" and train["dec"] is False  # the same initial weights at every seed, no DEC
    assert_frame_equal(df, integrate_domains_deepst(again, seed=3, **kw))  # a fixed seed reproduces
    integrate_domains_deepst(other, seed=3, n_runs=3, **kw)
    assert other["a"].uns["deepst.integrated"]["run_seeds"] == run_seeds(3, 3)
    single = pair()
    one = integrate_domains_deepst(single, seed=3, stable=False, **kw)
    assert "run_seeds" not in single["a"].uns["deepst.integrated"]
    assert single["a"].uns["deepst.integrated"]["params"]["stable"] is False
    assert one.attrs["model"].config["train"]["init"] == "seed"


def test_integration_section_corrections():
    """batch_correction: True (DeepST's adversarial domain classifier), "harmony" (Harmony on each
    run's embedding), "none"; the network of "harmony" and "none" is the same, Harmony only
    corrects its embedding."""
    from experimat.datasets import synthetic_sections

    def sections():
        return synthetic_sections(2, 800, 3, effect=0.5, seed=3)

    kw = dict(n_domains=3, pre_epochs=60, epochs=15, seed=0, use_gpu=False, stable=False)
    runs = {}
    for correction in (True, "none", "harmony"):
        samples = sections()
        df = integrate_domains_deepst(samples, batch_correction=correction, **kw)
        runs[correction] = (samples, df)
    adversarial, none, harmony = runs[True], runs["none"], runs["harmony"]
    assert harmony[0]["s0"].uns["deepst.integrated"]["batch_correction_method"] == "harmony"
    assert none[0]["s1"].uns["deepst.integrated"]["batch_correction_method"] == "none"
    assert adversarial[1].attrs["model"].config["batch_correction_method"] == "adversarial"
    # only the adversarial network has the section classifier's head
    assert "domain_head.2.bias" in adversarial[1].attrs["model"].state
    assert "domain_head.2.bias" not in harmony[1].attrs["model"].state
    for name, value in harmony[1].attrs["model"].state.items():  # the same network ...
        np.testing.assert_array_equal(value, none[1].attrs["model"].state[name])

    # ... whose embedding (the network's output, as with "none") Harmony corrected
    from experimat.methods.domains._correct import harmonize

    def embedding(samples):
        return np.vstack([a.obsm["deepst.integrated.embedding"] for a in samples.values()])

    sections_of = np.repeat([0, 1], [a.n_obs for a in none[0].values()])
    moved = harmonize(embedding(none[0]), sections_of, seed=0)
    np.testing.assert_allclose(embedding(harmony[0]), moved, rtol=1e-5, atol=1e-5)
    assert not np.allclose(embedding(harmony[0]), embedding(none[0]), atol=1e-3)
    truth = np.concatenate([a.obs["domain"].to_numpy() for a in harmony[0].values()])
    assert ari(truth, harmony[1]["refined"]) >= 0.5
    with pytest.raises(InvalidInputError, match="batch_correction"):
        integrate_domains_deepst(sections(), batch_correction="combat", **kw)
    with pytest.raises(InvalidInputError, match="batch_correction"):
        integrate_domains_deepst(sections(), batch_correction=1, **kw)


# ------------------------------------------------------------------------------------------------
# seed-stable consensus
# ------------------------------------------------------------------------------------------------
def test_consensus_relabels_and_votes():
    from experimat.methods.domains._consensus import consensus_labels, run_seeds

    truth = np.repeat([0, 1, 2], 20)
    runs = [truth, (truth + 1) % 3, np.where(np.arange(60) < 5, 0, (truth + 2) % 3)]  # permuted labels, 5 spots off
    labels, info = consensus_labels(runs)
    assert ari(truth, labels) == 1.0  # the permutations are undone and the odd run is outvoted
    assert info["medoid"] in (0, 1) and info["support"].min() == pytest.approx(2 / 3)
    assert run_seeds(7, 3)[0] == 7 and len(set(run_seeds(7, 3))) == 3 and run_seeds(7, 3) == run_seeds(7, 3)


def test_stable_mode_records_runs_and_single_seed_stays_available():
    adata = synthetic_domains(200, 3, 60, seed=5)
    spatial_detect_domains_deepst(adata, n_domains=3, pre_epochs=20, epochs=5, seed=1, use_gpu=False, n_runs=2)
    entry = adata.uns["deepst"]
    assert entry["run_seeds"][0] == 1 and len(entry["run_seeds"]) == 2
    assert 0.0 <= entry["run_agreement"] <= 1.0 and 0.5 <= entry["mean_support"] <= 1.0
    assert entry["kmeans_inits"] == 200 and entry["consensus_seed"] == 0 and entry["resolution"] == "none"
    assert entry["neighbour_averaged"] is False  # detection clusters the network's embeddings as they are
    assert adata.obs["deepst.domain"].nunique() <= 3
    spatial_detect_domains_deepst(
        adata, n_domains=3, pre_epochs=20, epochs=5, seed=1, use_gpu=False, stable=False, key_added="one"
    )
    assert "run_seeds" not in adata.uns["one"]
    with pytest.raises(InvalidInputError, match="stable"):
        spatial_detect_domains_deepst(adata, n_domains=3, stable="yes")


def test_stable_mode_feeds_the_network_a_tenth_as_many_pcs_as_spots():
    adata = synthetic_domains(300, 3, 250, seed=8)
    kw = dict(n_domains=3, pre_epochs=2, epochs=1, seed=0, use_gpu=False)
    stable = spatial_detect_domains_deepst(adata, n_runs=2, key_added="a", **kw)
    single = spatial_detect_domains_deepst(adata, stable=False, key_added="b", **kw)
    chosen = spatial_detect_domains_deepst(adata, n_runs=2, n_pcs=40, key_added="c", **kw)
    assert stable.attrs["model"].config["n_inputs"] == 30  # 300 spots // 10
    assert single.attrs["model"].config["n_inputs"] == 200  # the reference's 200
    assert chosen.attrs["model"].config["n_inputs"] == 40
    with pytest.raises(InvalidInputError, match="n_pcs"):
        spatial_detect_domains_deepst(adata, n_pcs=0, **kw)


def test_kmeans_domains_of_joined_runs_outvote_each_runs_misplaced_spots(monkeypatch):
    from experimat.methods.domains.deepst._cluster import kmeans_domains, run_support

    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 40)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    embeddings, order = [], rng.permutation(120)
    for run in range(3):
        pos = centres[truth] + rng.normal(scale=1.0, size=(120, 2))
        moved = order[12 * run : 12 * (run + 1)]  # each run puts other spots near another domain's centre
        pos[moved] = centres[(truth[moved] + 1) % 3] + rng.normal(scale=1.0, size=(12, 2))
        embeddings.append(pos)
    assert all(ari(truth, kmeans_domains([e], 3, seed=0)[0]) < 0.8 for e in embeddings)  # each run alone errs
    labels, n_init = kmeans_domains(embeddings, 3, seed=0)
    assert ari(truth, labels) == 1.0 and n_init == _cluster.KMEANS_INITS
    clean = [centres[truth] + rng.normal(scale=0.5, size=(120, 2)) for _ in range(3)]
    monkeypatch.setattr("experimat.methods._cluster.SAMPLE_MAX", 60)  # above it: centres of a sample
    monkeypatch.setattr(_cluster, "KMEANS_BUDGET", 600)  # 600 start-points / 60 points: 10 starts
    labels, n_init = kmeans_domains(clean, 3, seed=0)
    assert labels.shape == (120,) and ari(truth, labels) == 1.0 and n_init == 10
    runs = [truth, (truth + 1) % 3, np.where(np.arange(120) < 30, 2, truth)]
    support = run_support(runs, truth)
    assert support[30:].min() == 1.0 and support[:30].min() == pytest.approx(2 / 3)


def test_stable_domains_do_not_depend_on_the_user_seed(monkeypatch):
    from experimat.methods.domains.deepst import _core

    rng = np.random.default_rng(0)
    # no structure: where k-means cuts these depends on its starts, so only a fixed seed agrees
    embeddings = [rng.normal(size=(120, 2)) for _ in range(3)]

    def fake_train(*_, seed, **__):  # the same three embeddings whatever the runs' seeds
        fake_train.calls += 1
        return embeddings[(fake_train.calls - 1) % 3], None, {"train": 0.0}

    fake_train.calls = 0
    monkeypatch.setattr(_core, "train_deepst", fake_train)
    kw = dict(n_domains=3, pre_epochs=1, epochs=1, device=None, batches=None, stable=True)
    found = [_core._train_runs(None, None, None, seeds=seeds, **kw)[0] for seeds in ([1, 5, 9], [123, 7, 42])]
    assert np.array_equal(found[0], found[1])


def test_stable_mode_trains_the_autoencoders_for_both_stages_without_dec(monkeypatch):
    # issue 19: the DEC stage amplified the training noise; the stable mode trains the autoencoders
    # for pre_epochs + epochs and clusters their embeddings; stable=False stays the reference
    from experimat.methods.domains.deepst import _core

    emb = np.random.default_rng(0).normal(size=(60, 3))
    seen = []

    def fake_train(*_, seed, cfg, pre_epochs, epochs, cluster_init, **__):
        seen.append((seed, cfg.init, cfg.dec, pre_epochs, epochs))
        if cfg.dec:
            cluster_init(emb, seed)
        return emb, None, {"train": 0.0}

    monkeypatch.setattr(_core, "train_deepst", fake_train)
    monkeypatch.setattr(_core, "initial_clusters", lambda z, k, res, s: seen.append(s) or np.zeros(len(z), int))
    kw = dict(n_domains=2, pre_epochs=30, epochs=20, device=None, batches=None)
    _core._train_runs(None, None, None, seeds=[5, 9], stable=True, **kw)
    _core._train_runs(None, None, None, seeds=[7], stable=False, **kw)
    assert seen == [(5, "fixed", False, 50, 0), (9, "fixed", False, 50, 0), (7, "seed", True, 30, 20), 7]


def test_training_without_dec_is_the_pretrained_network():
    from experimat.methods.domains.deepst._model import TrainConfig, train_deepst

    rng = np.random.default_rng(1)
    data = rng.normal(size=(40, 8))
    adj = sp.csr_matrix(sp.random(40, 40, density=0.1, random_state=0) + sp.eye(40))
    cpu = torch.device("cpu")

    def never(z, s):
        raise AssertionError("no initial DEC clusters without the DEC stage")

    emb, net, timings = train_deepst(data, adj, adj, pre_epochs=5, epochs=4, seed=2, device=cpu,
                                     cfg=TrainConfig(dec=False), cluster_init=never)
    pre, _, _ = train_deepst(data, adj, adj, pre_epochs=5, epochs=0, seed=2, device=cpu,
                             cluster_init=lambda z, s: np.arange(z.shape[0]) % 2)
    dec, _, _ = train_deepst(data, adj, adj, pre_epochs=5, epochs=4, seed=2, device=cpu,
                             cluster_init=lambda z, s: np.arange(z.shape[0]) % 2)
    np.testing.assert_array_equal(emb, pre)  # the epochs of DEC are not trained
    assert not np.array_equal(emb, dec) and "init_clusters_s" not in timings
    assert net.cluster_layer.shape[0] == 1


def test_integration_stable_mode_clusters_each_sections_neighbour_averaged_embeddings(monkeypatch):
    # issue 19: the section-corrected embedding is noisier per spot than a single section's, so the
    # stable integration's k-means runs on every spot's embedding averaged with its
    # refine_neighbors nearest spots of its own section; detection and stable=False do not
    from experimat.methods.domains.deepst import _core

    rng = np.random.default_rng(0)
    xs, ys = np.meshgrid(np.arange(20.0), np.arange(10.0))
    coords = np.column_stack([xs.ravel(), ys.ravel()])  # a 20 x 10 square grid, two halves
    truth = np.concatenate([coords[:, 0] >= 10] * 2).astype(int)  # 2 sections of 200 spots
    emb = np.column_stack([truth * 2.0, np.zeros(400)]) + rng.normal(scale=1.2, size=(400, 2))

    def fake_train(*_, seed, **__):
        return emb, None, {"train": 0.0}

    monkeypatch.setattr(_core, "train_deepst", fake_train)
    smooth = _graph.block_diag([_graph.neighbour_mean(coords, 4)] * 2)
    assert np.allclose(smooth.sum(1), 1.0) and smooth[:200, 200:].nnz == 0  # within a section only
    assert np.all(np.diff(smooth.indptr) == 5) and smooth[25, 25] == smooth[25, 24] == 0.2  # spot + 4 nearest
    kw = dict(n_domains=2, pre_epochs=1, epochs=1, device=None, batches=None, stable=True)
    raw = _core._train_runs(None, None, None, seeds=[1, 2], **kw)
    averaged = _core._train_runs(None, None, None, seeds=[1, 2], smooth=smooth, **kw)
    assert ari(truth, raw[0]) < 0.5 < 0.8 < ari(truth, averaged[0])
    np.testing.assert_array_equal(averaged[1], emb)  # the stored embedding is the network's

    monkeypatch.undo()
    seen = []
    real = _core._train_runs
    monkeypatch.setattr(_core, "_train_runs", lambda *a, **k: seen.append(k["smooth"]) or real(*a, **k))
    a = synthetic_domains(60, 2, 40, seed=1)
    b = synthetic_domains(60, 2, 40, seed=2)
    fit = dict(n_domains=2, pre_epochs=1, epochs=1, use_gpu=False, refine_neighbors=4)
    integrate_domains_deepst({"a": a, "b": b}, **fit)
    integrate_domains_deepst({"a": a, "b": b}, stable=False, **fit)
    spatial_detect_domains_deepst(a, **fit)
    assert seen[0].shape == (120, 120) and seen[0][:60, 60:].nnz == 0 and seen[1:] == [None, None]
    expected = _graph.neighbour_mean(a.obsm["spatial"], 4)
    assert abs(seen[0][:60, :60] - expected).max() == 0


@pytest.mark.slow
def test_stable_mode_agrees_across_seeds():
    adata = synthetic_domains(400, 4, 80, fold_change=2.0, seed=6)
    runs = []
    for seed in range(3):
        df = spatial_detect_domains_deepst(adata, n_domains=4, pre_epochs=60, epochs=20, seed=seed, use_gpu=False)
        runs.append(df["refined"].to_numpy())
    pairs = [ari(runs[i], runs[j]) for i in range(3) for j in range(i + 1, 3)]
    assert np.mean(pairs) >= 0.8


# ------------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def small():
    return synthetic_domains(60, 2, 40, seed=0)


def test_use_image_without_image_lists_keys(small):
    with pytest.raises(KeyNotFoundError, match=r"image 'hires' not found; available: \(none\)"):
        spatial_detect_domains_deepst(small, n_domains=2, use_image=True, pre_epochs=1, epochs=1)
    with_img = synthetic_domains(60, 2, 40, with_image=True)
    with pytest.raises(KeyNotFoundError, match="'lowres' not found; available: 'hires'"):
        spatial_detect_domains_deepst(with_img, n_domains=2, use_image=True, image_key="lowres", pre_epochs=1, epochs=1)
    del small.uns["spatial"]
    with pytest.raises(MissingSlotError, match="uns\\['spatial'\\] is missing"):
        spatial_detect_domains_deepst(small, n_domains=2, use_image=True, pre_epochs=1, epochs=1)


@pytest.mark.parametrize("n_domains", [1, 0, 2.5, True])
def test_bad_n_domains(small, n_domains):
    with pytest.raises(InvalidInputError, match="n_domains must be an integer >= [12]"):
        spatial_detect_domains_deepst(small, n_domains=n_domains)


def test_bad_inputs(small):
    with pytest.raises(MissingSlotError, match="layer 'raw' not found"):
        spatial_detect_domains_deepst(small, layer="raw", n_domains=2)
    logged = small.copy()
    logged.X = np.log1p(logged.X)
    with pytest.raises(NotCountsError):
        spatial_detect_domains_deepst(logged, n_domains=2)
    nan = small.copy()
    nan.obsm["spatial"][3] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        spatial_detect_domains_deepst(nan, n_domains=2)
    with pytest.raises(InvalidInputError, match="exceeds the number of spots"):
        spatial_detect_domains_deepst(small, n_domains=61)
    with pytest.raises(InvalidInputError, match="epochs must be an integer"):
        spatial_detect_domains_deepst(small, n_domains=2, epochs=-1)
    with pytest.raises(InvalidInputError, match="only used with use_image=True"):
        spatial_detect_domains_deepst(small, n_domains=2, weights_path="w.pt")
    with pytest.raises(InvalidInputError, match="seed"):
        spatial_detect_domains_deepst(small, n_domains=2, seed=-1)
    empty = small.copy()
    empty.X[5] = 0
    with pytest.raises(InvalidInputError, match="no counts"):
        spatial_detect_domains_deepst(empty, n_domains=2)
    with pytest.raises(InvalidInputError, match="share no genes"):
        other = small.copy()
        other.var_names = [f"x{i}" for i in range(other.n_vars)]
        integrate_domains_deepst({"a": small, "b": other}, n_domains=2)
    with pytest.raises(InvalidInputError, match="non-empty dict"):
        integrate_domains_deepst({}, n_domains=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the check runs before any training
        with pytest.raises(InvalidInputError):
            integrate_domains_deepst({"a": small}, n_domains=1)


# ------------------------------------------------------------------------------------------------
# small real data: mouse olfactory bulb layers
# ------------------------------------------------------------------------------------------------
def test_mouse_olfactory_bulb_layers():
    from pathlib import Path

    import anndata as ad
    import pandas as pd

    path = Path(__file__).parent.parent / "data" / "deepst" / "mob_rep11_top1000.csv.gz"
    table = pd.read_csv(path, index_col=0)
    counts = table.drop(columns=["layer", "total_counts"])
    adata = ad.AnnData(counts.to_numpy(np.float32), obs=table[["layer"]].astype(str))
    adata.obsm["spatial"] = np.array([[float(v) for v in s.split("x")] for s in table.index])
    df = spatial_detect_domains_deepst(
        adata, n_domains=5, pre_epochs=100, epochs=40, seed=0, use_gpu=False, refine_neighbors=4
    )
    known = table["layer"].notna().to_numpy()
    score = ari(table["layer"][known], df["refined"][known])
    assert score >= 0.25, score  # layers are recovered well above chance (ARI 0)
