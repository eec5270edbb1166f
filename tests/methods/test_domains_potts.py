"""The Potts spatial prior on domain labels (domains/_potts.py) and the soft consensus it starts from."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from experimat.methods.domains import _consensus, _potts


def _square_grid(n: int, spacing: float = 100.0) -> np.ndarray:
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.column_stack([c.ravel(), r.ravel()]).astype(float) * spacing


def _hex_grid(n: int) -> np.ndarray:
    pts = [(c + 0.5 * (r % 2), r * np.sqrt(3) / 2) for r in range(n) for c in range(n)]
    return np.asarray(pts) * 50.0


def test_lattice_neighbours_are_the_array_neighbours():
    sq = _potts.lattice_neighbours(_square_grid(6))
    deg = np.diff(sq.indptr)
    assert deg.max() == 4 and deg.min() == 2  # interior 4 (no diagonals), corners 2
    assert (sq != sq.T).nnz == 0
    hx = _potts.lattice_neighbours(_hex_grid(8))
    assert np.diff(hx.indptr).max() == 6


def _two_halves(n=10, margin=0.2):
    """A square grid split in two domains; the model is unsure (probabilities 0.5 +- margin) everywhere,
    and wrong on a few isolated spots."""
    xy = _square_grid(n)
    truth = (xy[:, 0] >= xy[:, 0].mean()).astype(int)
    # isolated wrong spots, away from the border between the domains and from each other
    wrong = np.flatnonzero(np.isin(xy[:, 0] // 100, [1, 7]) & np.isin(xy[:, 1] // 100, [2, 5, 8]))
    model = truth.copy()
    model[wrong] = 1 - model[wrong]
    prob = np.where(model[:, None] == np.arange(2), 0.5 + margin, 0.5 - margin)
    return xy, truth, model, prob


def test_prior_relabels_unsure_isolated_spots_only():
    xy, truth, model, prob = _two_halves(margin=0.2)  # log-odds 0.85
    adj = _potts.lattice_neighbours(xy)
    same, sweeps = _potts.potts_labels(prob, model, adj, 0.0)
    assert (same == model).all() and sweeps == 0
    smoothed, _ = _potts.potts_labels(prob, model, adj, 2.0)
    assert (smoothed == truth).mean() > (model == truth).mean()
    assert (smoothed == truth).all()
    # a confident model (log-odds 4.6) is not overridden by the same prior
    _, _, model_c, prob_c = _two_halves(margin=0.49)
    kept, _ = _potts.potts_labels(prob_c, model_c, adj, 2.0)
    assert (kept == model_c).all()


def test_prior_does_not_cross_sections():
    # two sections stacked in one block-diagonal adjacency: a spot is never pulled by the other section
    xy = _square_grid(4)
    adj = sparse.block_diag([_potts.lattice_neighbours(xy), _potts.lattice_neighbours(xy)], format="csr")
    labels = np.r_[np.zeros(16, int), np.ones(16, int)]
    prob = np.full((32, 2), 0.5)
    out, _ = _potts.potts_labels(prob, labels, adj, 5.0)
    assert (out == labels).all()


def _icm_one_at_a_time(prob, labels, adj, beta, max_sweeps=20, order=None):
    """Reference: ICM with the spots updated one at a time, in ``order`` (default: index order, the
    implementation before the level-wise sweeps)."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    adj = sparse.csr_matrix(adj)
    degree = np.diff(adj.indptr)
    weight = beta / np.median(degree[degree > 0])
    logp = np.log(np.clip(prob, 1e-12, None))
    for _ in range(max_sweeps):
        changed = 0
        for i in range(labels.size) if order is None else order:
            nbr = adj.indices[adj.indptr[i] : adj.indptr[i + 1]]
            if nbr.size == 0:
                continue
            score = logp[i] + weight * np.bincount(labels[nbr], minlength=prob.shape[1])
            best = int(np.argmax(score))
            if score[best] > score[labels[i]]:
                labels[i] = best
                changed += 1
        if changed == 0:
            break
    return labels


def _noisy_domains(seed, n=24, hexagonal=False):
    """Voronoi domains on a lattice and a noisy soft assignment of them (the model's labels its argmax)."""
    rng = np.random.default_rng(seed)
    xy = _hex_grid(n) if hexagonal else _square_grid(n)
    k = 4
    centres = xy[rng.choice(len(xy), k, replace=False)]
    truth = np.argmin(((xy[:, None, :] - centres[None]) ** 2).sum(-1), 1)
    logit = 2.0 * (truth[:, None] == np.arange(k)) + rng.normal(0, 1.5, (len(xy), k))
    prob = np.exp(logit)
    prob /= prob.sum(1, keepdims=True)
    return xy, truth, prob.argmax(1), prob


def test_update_levels_order_the_spots_by_priority():
    from experimat.methods._graph import knn_graph

    rng = np.random.default_rng(0)
    graphs = [_potts.lattice_neighbours(_square_grid(12)), _potts.lattice_neighbours(_hex_grid(12)),
              knn_graph(rng.uniform(size=(400, 2)), 6, symmetric=True)]
    for adj in graphs:
        adj = sparse.csr_matrix(((adj + adj.T) > 0).astype(float))
        levels = _potts.update_levels(adj)
        spots = np.concatenate(levels)
        assert np.array_equal(np.sort(spots), np.arange(adj.shape[0]))  # each spot once (all have neighbours)
        level_of = np.empty(adj.shape[0], int)
        for i, lev in enumerate(levels):
            level_of[lev] = i
        coo = sparse.coo_matrix(adj)
        assert (level_of[coo.row] != level_of[coo.col]).all()  # no two spots of a level are adjacent
        # the order is a priority order: each spot's higher-priority neighbours come first (a consistent
        # orientation of every edge: no spot is both before and after a neighbour)
        prio = np.random.default_rng(0).permutation(adj.shape[0])
        assert ((prio[coo.row] > prio[coo.col]) == (level_of[coo.row] < level_of[coo.col])).all()
    # a spot without neighbours is in no level
    isolated = sparse.block_diag([graphs[0], sparse.csr_matrix((1, 1))], format="csr")
    assert np.concatenate(_potts.update_levels(isolated)).max() < 144


@pytest.mark.parametrize("seed", range(6))
def test_level_sweeps_are_one_at_a_time_icm(seed):
    xy, truth, model, prob = _noisy_domains(seed, hexagonal=seed % 2 == 1)
    adj = _potts.lattice_neighbours(xy)
    order = np.concatenate(_potts.update_levels(adj))
    for beta in (0.5, 2.0, 5.0):
        ours, sweeps = _potts.potts_labels(prob, model, adj, beta)
        assert sweeps < 20
        # the same labels as one spot at a time in the level order
        assert np.array_equal(ours, _icm_one_at_a_time(prob, model, adj, beta, order=order))
        # a local maximum: one more one-at-a-time sweep, in index order, changes nothing
        assert np.array_equal(_icm_one_at_a_time(prob, ours, adj, beta, max_sweeps=1), ours)
    beta = 2.0
    _, sweeps = _potts.potts_labels(prob, model, adj, beta)
    # the objective never falls from sweep to sweep
    objective = [_potts.potts_objective(prob, _potts.potts_labels(prob, model, adj, beta, max_sweeps=s)[0], adj, beta)
                 for s in range(1, sweeps + 1)]
    start = _potts.potts_objective(prob, model, adj, beta)
    assert objective[0] > start and np.all(np.diff(objective) >= -1e-9)
    # close to the labels of the index order (the old loop's): the order changes a few spots, not the accuracy
    ours, ref = _potts.potts_labels(prob, model, adj, beta)[0], _icm_one_at_a_time(prob, model, adj, beta)
    assert np.mean(ours == ref) > 0.97
    assert abs(objective[-1] - _potts.potts_objective(prob, ref, adj, beta)) < 0.05 * (objective[-1] - start)
    assert np.mean(ours == truth) > np.mean(model == truth) + 0.05


@pytest.mark.parametrize("margin", [0.2, 0.49])
def test_level_sweeps_reproduce_the_index_order_on_the_halves(margin):
    xy, _, model, prob = _two_halves(margin=margin)
    adj = _potts.lattice_neighbours(xy)
    for beta in (0.5, 2.0, 5.0):
        ours, _ = _potts.potts_labels(prob, model, adj, beta)
        assert np.array_equal(ours, _icm_one_at_a_time(prob, model, adj, beta))


def test_only_spots_with_a_small_lead_change():
    xy, _, model, prob = _noisy_domains(3, n=20, hexagonal=True)
    adj = _potts.lattice_neighbours(xy)
    degree = np.diff(adj.indptr)
    assert degree.max() == 6  # d = 6: no spot can gain more than beta
    logp = np.log(prob)
    top2 = np.sort(logp, axis=1)[:, -2:]
    lead = top2[:, 1] - top2[:, 0]  # model's label is the argmax
    for beta in (0.5, 1.0, 3.0):
        ours, _ = _potts.potts_labels(prob, model, adj, beta)
        changed = ours != model
        assert changed.any() and (lead[changed] < beta).all()


def test_soft_consensus_columns_follow_the_consensus_labels():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 300)
    probs, runs = [], []
    for perm in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):  # the same clustering, numbered differently
        p = np.full((300, 3), 0.1)
        p[np.arange(300), np.asarray(perm)[truth]] = 0.8
        probs.append(p)
        runs.append(p.argmax(1))
    labels, info = _consensus.consensus_labels(runs, probs=probs)
    assert info["prob"].shape == (300, 3)
    assert (info["prob"].argmax(1) == labels).all()
    np.testing.assert_allclose(info["prob"].sum(1), 1.0)
    plain, _ = _consensus.consensus_labels(runs)
    assert (plain == labels).all()  # the soft assignment does not change the vote


@pytest.mark.parametrize("bad", [-1.0, "strong"])
def test_spatial_prior_bad_values(bad):
    import experimat as em
    from experimat._errors import InvalidInputError
    from experimat.methods.domains.spagcn import integrate_domains_spagcn, spatial_detect_domains_spagcn

    a = em.datasets.synthetic_domains(200, 3, seed=0)
    with pytest.raises(InvalidInputError, match="spatial_prior"):
        spatial_detect_domains_spagcn(a, n_clusters=3, layer=None, spatial_prior=bad, use_gpu=False)
    with pytest.raises(InvalidInputError, match="spatial_prior"):
        integrate_domains_spagcn({"a": a, "b": a.copy()}, n_clusters=3, layer=None, spatial_prior=bad, use_gpu=False)

