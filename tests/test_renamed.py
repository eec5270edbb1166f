"""Renamed functions and options keep their old names: same result, with a FutureWarning.

Direct calls go through :func:`experimat._compat.renamed_options` / ``deprecated_alias``; accessor
calls through the runner's ``MethodSpec.bind`` and the accessor's method aliases.
"""

from __future__ import annotations

import importlib
import inspect
import warnings

import numpy as np
import pandas as pd
import pytest

import experimat as em
from experimat._compat import renamed_of
from experimat.core.registry import _REGISTRY, load_plugins
from experimat.datasets import synthetic_domains, synthetic_svg


# -- comparing results ------------------------------------------------------------------------------
def _same(a, b) -> None:
    """Equal results: frames, arrays, dicts, figures (their pixels), scalars."""
    from matplotlib.figure import Figure

    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, Figure):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        ca, cb = FigureCanvasAgg(a), FigureCanvasAgg(b)
        ca.draw()
        cb.draw()
        np.testing.assert_array_equal(np.asarray(ca.buffer_rgba()), np.asarray(cb.buffer_rgba()))
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    else:
        assert a == b


def _same_var(a, b, prefix_a: str, prefix_b: str) -> None:
    cols_a = sorted(c.removeprefix(prefix_a) for c in a.var.columns if c.startswith(prefix_a + "."))
    cols_b = sorted(c.removeprefix(prefix_b) for c in b.var.columns if c.startswith(prefix_b + "."))
    assert cols_a == cols_b and cols_a
    for c in cols_a:
        np.testing.assert_array_equal(a.var[prefix_a + c].to_numpy(), b.var[prefix_b + c].to_numpy())


# -- one small sample holding every slot the renamed options point at -------------------------------
def _toy():
    from experimat.methods.deconv import cell2location as c2l
    from experimat.methods.deconv import destvi
    from experimat.methods.domains import spagcn

    a = synthetic_domains(150, 3, 40, n_markers_per_domain=5, seed=0, sample="s1")
    x = a.layers["counts"]
    a.layers["lognorm"] = np.log1p(x / x.sum(1, keepdims=True) * 1e4).astype(np.float32)
    rng = np.random.default_rng(0)
    n, g = a.n_obs, a.n_vars
    # SVG, AEH and LOCAT results (plots only read them)
    a.var["gp.fsv"], a.var["gp.qval"] = rng.random(g), rng.random(g)
    a.obsm["aeh"] = pd.DataFrame(rng.random((n, 2)), index=a.obs_names, columns=["0", "1"])
    a.var["aeh.pattern"] = rng.integers(0, 2, g)
    a.var["locat.zscore"], a.var["locat.pval"] = rng.normal(size=g), rng.random(g)
    for c in ("conc", "depl", "joint"):
        a.var[f"locat.is_{c}_sig"] = rng.random(g) < 0.3
    # deconvolution results
    ab = pd.DataFrame(rng.gamma(2.0, 1.0, (n, 3)), index=a.obs_names, columns=["A", "B", "C"])
    a.obsm["ab"] = ab
    a.obsm["dv.proportions"] = ab.div(ab.sum(1), axis=0)
    a.uns["dv"] = {}
    a.obsm["dv.spca.A"] = pd.DataFrame(rng.normal(size=(n, 2)), index=a.obs_names, columns=["PC1", "PC2"])
    a.uns["fit"] = {"training_history": np.linspace(10.0, 1.0, 30)}
    de = pd.DataFrame({"gene": a.var_names[:20], "log2FC": rng.normal(size=20), "padj": rng.random(20)})
    a.uns["de"] = {"de_results": {c: de[c].to_numpy() for c in de}}
    c2l.colocation_nmf(a, abundance_key="ab", n_factors=2, n_restarts=1, seed=0, key_added="nmf")
    destvi.automatic_proportion_threshold(a, destvi_key="dv", kind="primary")
    spagcn.spatial_markers_spagcn(a, domain_key="domain", layer="lognorm", min_in_group_fraction=0.1,
                                  min_fold_change=1.1)
    return a


@pytest.fixture(scope="module")
def toy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _toy()


@pytest.fixture(scope="module")
def reference(toy):
    from experimat.methods.deconv.destvi import fit_condscvi

    with em.settings.override(progress=False, verbosity="warning", seed=0):
        return fit_condscvi(toy.copy(), labels_key="domain", n_top_genes=None, max_epochs=2, n_hidden=8)


# (function, base options, old name, new name, value); value cases compare results, error cases
# (value "nope") compare the error, which must name the value
DIRECT = [
    ("methods.domains.spagcn.spatial_markers_spagcn", {"domain_key": "domain", "layer": "lognorm", "key_added": "m"},
     "target", "target_domain", "1"),
    ("methods.domains.spagcn.get_markers", {"group_name": "0"}, "slot", "markers_key", "spagcn.markers"),
    ("methods.domains.spagcn.spatial_metagene", {"domain_key": "domain", "layer": "lognorm", "max_iter": 2},
     "target_cluster", "target_domain", "0"),
    ("methods.domains.spagcn.spatial_metagene", {"domain_key": "domain", "layer": "lognorm", "max_iter": 2,
                                                  "target_domain": "0"}, "key_svg", "markers_key", "spagcn.markers"),
    ("pl.plot_domains", {}, "keys", "domain_keys", ["domain"]),
    ("pl.plot_fsv_q", {}, "key", "svg_key", "gp"),
    ("pl.plot_patterns", {}, "key", "patterns_key", "aeh"),
    ("pl.plot_locat", {"basis": "spatial"}, "key", "locat_key", "locat"),
    ("pl.locat_top_genes", {}, "key", "locat_key", "locat"),
    ("pl.plot_abundance", {}, "key", "abundance_key", "ab"),
    ("pl.plot_abundance_blend", {}, "key", "abundance_key", "ab"),
    ("pl.plot_colocation_loadings", {"n_factors": 2}, "key", "nmf_key", "nmf"),
    ("pl.plot_proportion_thresholds", {}, "key", "destvi_key", "dv"),
    ("pl.plot_gamma_space", {"ct": "A"}, "key", "destvi_key", "dv"),
    ("pl.plot_volcano", {}, "key", "de_key", "de"),
    ("pl.plot_training_history", {}, "key", "model_key", "fit"),
    ("methods.deconv.cell2location.region_cluster", {"resolution": 0.3, "seed": 0}, "key", "abundance_key", "ab"),
    ("methods.deconv.cell2location.colocation_nmf", {"n_factors": 2, "n_restarts": 1, "seed": 0}, "key",
     "abundance_key", "ab"),
    ("methods.deconv.cell2location.training_history", {}, "key_added", "cell2location_key", "fit"),
    ("methods.deconv.cell2location.reconstruction_qc", {}, "key_added", "cell2location_key", "nope"),
    ("methods.deconv.cell2location.totals_qc", {}, "key_added", "cell2location_key", "nope"),
    ("methods.deconv.cell2location.expected_expression_per_type", {}, "key_added", "cell2location_key", "nope"),
    ("methods.deconv.destvi.automatic_proportion_threshold", {"kind": "secondary"}, "key", "destvi_key", "dv"),
    ("methods.deconv.destvi.explore_gamma_space", {"ct": "0", "threshold": 0.1}, "key", "destvi_key", "nope"),
    ("methods.deconv.destvi.de_genes_destvi", {"ct": "0", "mask1": None, "mask2": None}, "key", "destvi_key", "nope"),
    ("methods.deconv.destvi.get_scale_for_ct", {"ct": "0"}, "key", "destvi_key", "nope"),
    ("methods.preprocess.neighbors_umap", {}, "use_rep", "obsm_key", "nope"),
]
#: renamed options tested in their method family's own tests (slow models)
ELSEWHERE = {("integrate_domains_spagcn", "result_key"): "tests/methods/test_spagcn.py",
             ("integrate_domains_deepst", "result_key"): "tests/methods/test_deepst.py"}


def _resolve(path: str):
    mod, _, name = path.rpartition(".")
    return getattr(importlib.import_module(f"experimat.{mod}"), name)


def _call(func, adata, options, reference):
    params = inspect.signature(func).parameters
    if "reference" in params:
        options = {"reference": reference, **options}
    if "mask1" in options:  # de_genes_destvi(adata, reference, ct, mask1, mask2, ...)
        half = np.arange(adata.n_obs) < adata.n_obs // 2
        options = {**options, "mask1": half, "mask2": ~half}
    return func(adata, **options)


@pytest.mark.parametrize(("path", "base", "old", "new", "value"), DIRECT,
                         ids=[f"{p.rsplit('.', 1)[1]}-{o}" for p, _, o, _, _ in DIRECT])
def test_old_option_name_direct(toy, reference, path, base, old, new, value):
    func = _resolve(path)
    assert renamed_of(func).get(old) == new
    assert new in inspect.signature(func).parameters and old not in inspect.signature(func).parameters
    a_new, a_old = toy.copy(), toy.copy()
    if value == "nope":
        with pytest.raises(em.ExperimatError) as e_new:
            _call(func, a_new, {**base, new: value}, reference)
        with pytest.warns(FutureWarning, match=rf"{old}= is deprecated.*{new}="), \
                pytest.raises(em.ExperimatError) as e_old:
            _call(func, a_old, {**base, old: value}, reference)
        assert type(e_new.value) is type(e_old.value) and str(e_new.value) == str(e_old.value)
        assert "nope" in str(e_new.value)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        res_new = _call(func, a_new, {**base, new: value}, reference)
    with pytest.warns(FutureWarning, match=rf"{old}= is deprecated.*{new}="):
        res_old = _call(func, a_old, {**base, old: value}, reference)
    _same(res_new, res_old)
    assert list(a_new.obs.columns) == list(a_old.obs.columns) and list(a_new.uns) == list(a_old.uns)


def test_every_renamed_option_is_tested_and_documented():
    """Each renamed option of a registered method or an em.pl function has a case above and a docstring note."""
    load_plugins()
    funcs = {spec.name: spec.func for specs in _REGISTRY.values() for spec in specs.values()}
    funcs |= {n: getattr(em.pl, n) for n in dir(em.pl) if callable(getattr(em.pl, n)) and not n.startswith("_")}
    funcs |= {p.rsplit(".", 1)[1]: _resolve(p) for p, *_ in DIRECT}
    tested = {(p.rsplit(".", 1)[1], old) for p, _, old, _, _ in DIRECT} | set(ELSEWHERE)
    seen = set()
    for name, func in funcs.items():
        for old, new in renamed_of(func).items():
            seen.add((name, old))
            assert (name, old) in tested, f"{name}({old}=) has no test"
            assert f"Deprecated alias: ``{old}=``" in (func.__doc__ or ""), f"{name}: document {old}= under {new}"
    assert tested <= seen


# -- through the accessors --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_expm(toy, tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        expm = em.Experiment.from_anndata({"s1": toy}, modality="spatial-bin", taxa="mmu",
                                          project=tmp_path_factory.mktemp("renamed") / "p", harmonize_genes=False)
    yield expm
    expm.close()


def _accessor_cases():
    load_plugins()
    out = []
    for path, base, old, new, value in DIRECT:
        name = path.rsplit(".", 1)[1]
        spec = _REGISTRY["spatial-bin"].get(name)
        if spec is None or value == "nope" or old not in renamed_of(spec.func):
            continue
        out.append(pytest.param(name, base, old, new, value, id=f"{name}-{old}"))
    return out


@pytest.mark.parametrize(("name", "base", "old", "new", "value"), _accessor_cases())
def test_old_option_name_through_the_accessor(toy_expm, name, base, old, new, value):
    acc = toy_expm.spatial_bin
    method = getattr(acc, name)
    assert new in inspect.signature(method).parameters and old not in inspect.signature(method).parameters
    run = {"run_on_samples": ["s1"]}
    if _REGISTRY["spatial-bin"][name].kind in ("per_sample", "joint"):
        run["save"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        res_new = method(**base, **{new: value}, **run)
    with pytest.warns(FutureWarning, match=rf"{old}= is deprecated.*{new}="):
        res_old = method(**base, **{old: value}, **run)
    _same(res_new, res_old)


def test_old_option_names_bind_for_every_registered_method():
    """The runner translates each old option name of each registered method (joint ones included)."""
    load_plugins()
    for specs in _REGISTRY.values():
        for spec in specs.values():
            required = {p.name: "x" for p in spec.options if p.kind == p.KEYWORD_ONLY and p.default is p.empty}
            for old, new in renamed_of(spec.func).items():
                others = {k: v for k, v in required.items() if k != new}
                with warnings.catch_warnings():
                    warnings.simplefilter("error", FutureWarning)
                    want = spec.bind({**others, new: "v"})
                with pytest.warns(FutureWarning, match=rf"{old}= is deprecated.*{new}="):
                    assert spec.bind({**others, old: "v"}) == want


# -- renamed functions ------------------------------------------------------------------------------
@pytest.fixture
def svg_expm(tmp_path):
    adatas = {"s1": synthetic_svg(120, 30, n_spatial=5, seed=1)}
    expm = em.Experiment.from_anndata(adatas, modality="spatial-bin", taxa="hsa", project=tmp_path / "p",
                                      harmonize_genes=False)
    yield expm
    expm.close()


def test_score_test_old_function_name():
    from experimat.methods import svg

    a, b = synthetic_svg(120, 30, n_spatial=5, seed=1), synthetic_svg(120, 30, n_spatial=5, seed=1)
    new = svg.spatial_svg_score(a, n_null=200, seed=3, progress=False)
    with pytest.warns(FutureWarning, match=r"spatial_svg_spatialde\(\) is a deprecated alias of spatial_svg_score"):
        old = svg.spatial_svg_spatialde(b, n_null=200, seed=3, progress=False)
    pd.testing.assert_frame_equal(new, old)
    _same_var(a, b, "spatialde", "spatialde")
    from experimat.methods.svg._score import spatial_svg_spatialde

    assert spatial_svg_spatialde is svg.spatial_svg_spatialde
    assert svg.METHODS["spatialde2"] is svg.spatial_svg_score


def test_score_test_old_accessor_name(svg_expm):
    acc = svg_expm.spatial_bin
    assert "spatial_svg_score" in acc.methods and "spatial_svg_spatialde" not in acc.methods
    acc.spatial_svg_score(run_on_samples=True, n_null=200, key_added="new", save=False)
    with pytest.warns(FutureWarning, match=r"spatial_svg_spatialde\(\) is a deprecated alias of spatial_svg_score"):
        acc.spatial_svg_spatialde(run_on_samples=True, n_null=200, key_added="old", save=False)
    acc.spatial_svg(method="spatialde2", run_on_samples=True, n_null=200, key_added="family", save=False)
    a = acc["s1"]
    _same_var(a, a, "new", "old")
    _same_var(a, a, "new", "family")
    assert a.uns["old"]["params"] == a.uns["new"]["params"] | {"key_added": "old"}
