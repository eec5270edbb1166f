"""plot_locat with the user's own gene lists (issue 18)."""

import numpy as np
import pytest

import experimat as em


def _adata():
    a = em.datasets.synthetic_domains(200, 3, 30, n_markers_per_domain=5, seed=0)
    X = a.layers["counts"]
    a.X = np.log1p(np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=float))
    a.obsm["X_umap"] = np.asarray(a.obsm["spatial"], dtype=float)
    a.var["gene"] = [f"Sym{i}" for i in range(a.n_vars)]
    return a


def _panels(fig):
    return [
        (ax.get_title(), c)
        for ax in fig.axes
        if ax.get_label() != "<colorbar>"
        for c in ax.collections
        if len(c.get_offsets())
    ]


def test_plot_locat_draws_the_chosen_genes_row_by_row():
    a = _adata()
    sym = a.var["gene"].astype(str).to_numpy()
    z = np.linspace(-2, 5, a.n_vars)
    a.var["locat.zscore"] = z  # public result column: titles carry the z-score
    chosen = {"domain 0": [sym[3], sym[1]], "mine": [a.var_names[7]]}  # symbols or ids
    fig = em.pl.plot_locat(a, genes=chosen)
    panels = _panels(fig)
    titles = [t for t, _ in panels]
    assert len(panels) == 3
    assert titles[0].startswith(sym[3]) and "domain 0" in titles[0] and f"z={z[3]:.1f}" in titles[0]
    assert titles[1].startswith(sym[1]) and titles[2].startswith(sym[7]) and "mine" in titles[2]
    # each panel is coloured by its own gene's expression
    for (_, coll), g in zip(panels, [3, 1, 7], strict=True):
        vals = np.asarray(coll.get_array(), dtype=float)
        assert np.allclose(np.sort(vals), np.sort(a.X[:, g]))
    # grid: two rows of two columns (the longest list), the unused slot blank
    assert len(fig.axes) >= 4


def test_plot_locat_gene_list_without_locat_columns_and_bad_input():
    a = _adata()
    sym = a.var["gene"].astype(str).to_numpy()
    fig = em.pl.plot_locat(a, genes=[sym[0], sym[2], sym[4]])
    assert [t for t, _ in _panels(fig)] == [sym[0], sym[2], sym[4]]
    with pytest.raises(em.KeyNotFoundError, match="no_such_gene"):
        em.pl.plot_locat(a, genes=["no_such_gene"])
    with pytest.raises(em.InvalidInputError, match="genes must be"):
        em.pl.plot_locat(a, genes={"empty": []})
    with pytest.raises(em.MissingSlotError):
        em.pl.plot_locat(a)  # the top-gene grid still needs LOCAT's results


def test_plot_locat_genes_through_the_accessor():
    expm = em.Experiment.from_anndata({"s0": _adata()}, modality="spatial-bin", taxa="mmu", harmonize_genes=False)
    g = str(expm.spatial_bin["s0"].var["gene"].iloc[5])
    fig = expm.spatial_bin.plot_locat(run_on_samples=True, basis="spatial", genes={"chosen": [g]})
    assert [t for t, _ in _panels(fig)] == [f"{g}\nchosen"]


def test_locat_top_genes_are_symbols_with_ids_on_request():
    """Issue 18: where var names are ids, the top-gene lists show the symbols (ids with symbols=False)."""
    a = _adata()
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    a.var["gene"] = [f"Sym{i}" for i in range(a.n_vars)]
    a.var.loc[a.var_names[5], "gene"] = np.nan  # a missing symbol falls back to the id
    z = np.linspace(-2, 5, a.n_vars)
    a.var["locat.zscore"] = z
    a.var["locat.pval"] = np.where(z > 0, 1e-3, 0.5)
    a.var["locat.is_conc_sig"] = z > 0
    a.var["locat.is_depl_sig"] = np.arange(a.n_vars) % 2 == 0
    a.var["locat.is_joint_sig"] = (z > 0) & (np.arange(a.n_vars) % 2 == 0)
    conc_ids, joint_ids = em.pl.locat_top_genes(a, "locat", 3, symbols=False)
    conc, joint = em.pl.locat_top_genes(a, "locat", 3)
    assert all(g.startswith("ENSG") for g in conc_ids + joint_ids)
    sym = dict(zip(a.var_names, a.var["gene"], strict=True))
    assert conc == [sym[g] for g in conc_ids] and joint == [sym[g] for g in joint_ids]
    assert all(g.startswith("Sym") for g in conc + joint)
    b = a.copy()
    b.var["locat.zscore"] = np.where(np.arange(a.n_vars) == 5, 10.0, -1.0)
    b.var["locat.is_conc_sig"] = np.arange(a.n_vars) == 5
    b.var["locat.is_depl_sig"] = False
    assert em.pl.locat_top_genes(b, "locat", 1)[0] == [b.var_names[5]]
