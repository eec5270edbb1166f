"""Module-level test methods (importable by worker processes)."""

from __future__ import annotations

import numpy as np

from experimat.methods._checks import get_matrix, store_params


def noisy_score(adata, *, layer="counts", scale=1.0, seed=None, key_added="score"):
    """Deterministic given the seed: a random projection of the expression + noise."""
    rng = np.random.default_rng(seed)
    X = get_matrix(adata, layer)
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    w = rng.normal(size=X.shape[1])
    adata.obs[key_added] = X @ w * scale + rng.normal(size=X.shape[0])
    store_params(adata, key_added, {"layer": layer, "scale": scale, "seed": seed})
    return float(adata.obs[key_added].sum())


def fails_on(adata, *, bad="s1", key_added="fails"):
    """Raises for the sample named ``bad``."""
    if adata.obs["sample"].iloc[0] == bad:
        raise ValueError(f"deliberate failure on {bad}")
    adata.obs[key_added] = 1.0
    return "ok"


def slow(adata, *, seconds=0.5, key_added="slow"):
    import time

    time.sleep(seconds)
    adata.uns[key_added] = {"slept": seconds}
    return seconds


def scale_inplace(adata, *, layer="counts", factor=2.0):
    """Edits a layer in place (the same array object): the edit must reach the saved sample."""
    X = adata.layers[layer]
    X *= factor
    return float(factor)


def columns(adata, *, n=3, seed=None, key_added="cols"):
    """Writes ``n`` var columns ``<key_added>.c<i>`` and a ranking that depends on the seed."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        adata.var[f"{key_added}.c{i}"] = rng.normal(size=adata.n_vars)
    adata.var[f"{key_added}.rank"] = rng.permutation(adata.n_vars) + 1
    store_params(adata, key_added, {"n": n})
    return n


def undeclared(adata, *, key_added="declared"):
    """Declares obs/{key_added} but also writes obs['sneaky']."""
    adata.obs[key_added] = 1.0
    adata.obs["sneaky"] = 2.0
    return None
