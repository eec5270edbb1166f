"""The shared expression blocks (experimat.methods._expression): normalisation, variable genes, PCA."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from experimat._errors import InvalidInputError
from experimat.methods._expression import hvg_seurat_v3, normalize_total, pca, top_variance_genes


def _counts(n=120, g=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.negative_binomial(2, 0.6, size=(n, g)).astype(np.float32)
    X[3] = 0  # a row without counts
    return X


def test_normalize_total_matches_the_formula_dense_and_sparse():
    X = _counts()
    tot = X.sum(1)
    want = np.log1p(np.divide(X * 1e4, tot[:, None], out=np.zeros_like(X), where=tot[:, None] > 0))
    dense, t = normalize_total(X, target_sum=1e4)
    sparse_out, _ = normalize_total(sp.csr_matrix(X), target_sum=1e4)
    assert t == 1e4 and sp.issparse(sparse_out) and dense.dtype == np.float32
    np.testing.assert_allclose(dense, want, rtol=1e-5)
    np.testing.assert_allclose(sparse_out.toarray(), want, rtol=1e-5)
    scaled, t = normalize_total(X, target_sum=None, log1p=False)
    assert t == pytest.approx(np.median(tot[tot > 0]))
    np.testing.assert_allclose(scaled.sum(1)[tot > 0], t, rtol=1e-4)


def test_pca_sparse_equals_dense_and_never_densifies(monkeypatch):
    rng = np.random.default_rng(1)
    # three groups along two directions: the first two PCs carry most of the variance
    X = np.log1p(_counts(150, 80)) + np.repeat(rng.normal(scale=3.0, size=(3, 80)), 50, axis=0)
    Xs = sp.csr_matrix(np.where(X > 1.0, X, 0.0).astype(np.float32))
    dense_scores, dense_ratio = pca(Xs.toarray(), 5, seed=0)

    def refuse(*a, **k):
        raise AssertionError("a sparse matrix was densified")

    for cls in (sp.csr_matrix, sp.csc_matrix):
        monkeypatch.setattr(cls, "toarray", refuse)
        monkeypatch.setattr(cls, "todense", refuse)
    scores, ratio = pca(Xs, 5, seed=0)
    monkeypatch.undo()
    np.testing.assert_allclose(ratio, dense_ratio, rtol=1e-3)
    np.testing.assert_allclose(np.abs(scores), np.abs(dense_scores), atol=1e-3 * np.abs(dense_scores).max())
    # scores are the projections of the centred data
    Xc = Xs.toarray() - Xs.toarray().mean(0)
    total = (Xc**2).sum()
    np.testing.assert_allclose((scores.astype(float) ** 2).sum(0) / total, ratio, rtol=1e-3)
    assert pca(X, 1000)[0].shape == (150, 79)  # capped at min(shape) - 1
    with pytest.raises(InvalidInputError, match="at least 2"):
        pca(X[:1], 3)


def test_top_variance_genes_sparse_and_dense_agree():
    X = np.log1p(_counts())
    X[:, 7] *= 10
    d = top_variance_genes(X, 20)
    assert 7 in d and list(d) == sorted(d)
    np.testing.assert_array_equal(d, top_variance_genes(sp.csr_matrix(X), 20))
    assert len(top_variance_genes(X, None)) == X.shape[1]


def test_hvg_seurat_v3_prefers_overdispersed_genes():
    rng = np.random.default_rng(2)
    mu = np.exp(rng.uniform(np.log(0.2), np.log(20.0), size=200))
    X = rng.poisson(mu, size=(400, 200)).astype(np.float32)
    r = 0.5  # negative binomial with the same means, far more variable
    X[:, :10] = rng.negative_binomial(r, r / (r + mu[:10]), size=(400, 10))
    top = hvg_seurat_v3(sp.csr_matrix(X), 10)
    assert set(top) == set(range(10))
