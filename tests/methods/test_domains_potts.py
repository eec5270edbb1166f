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

