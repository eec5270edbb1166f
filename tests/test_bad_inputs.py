"""Every public method x bad inputs: an experimat error that names the fix, and not one byte of the
project changed (issue 16).

The table is built from the method registry, so a newly registered method is covered without
editing this file. Each case runs on a fresh copy of one small project; the sha256 of every file
under the project is compared before and after.
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import experimat as em
from experimat.core.registry import _REGISTRY, load_plugins
from experimat.datasets import synthetic_domains

load_plugins()

SPOTS, GENES = 40, 12


def _spots(seed: int):
    a = synthetic_domains(SPOTS, 2, GENES, n_markers_per_domain=3, seed=seed)
    a.X = a.X.copy()
    return a


def _cells(seed: int):
    a = _spots(seed)
    del a.obsm["spatial"]
    a.uns.pop("spatial")
    a.obs["cell_type"] = a.obs["domain"]
    return a


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs") / "p"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expm = em.Experiment.from_anndata({"s1": _spots(1), "s2": _spots(2)}, modality="spatial-bin", taxa="mmu",
                                          project=root, harmonize_genes=False)
        expm.add_sample(_cells(3), sample="c1", modality="rna", taxa="mmu", harmonize_genes=False)
        expm.save()
        for modality in ("spatial-bin", "rna"):  # the layer most methods read by default
            expm.modality(modality).normalize()
    expm.close()
    return root


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path, template):
    dst = tmp_path / "p"
    shutil.copytree(template, dst)
    before = _hashes(dst)
    yield dst
    assert _hashes(dst) == before, "a refused call changed the project's files"


# -- the table ------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _no_deprecated_names():
    """The calls here use current option and method names: a deprecated one fails the test."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r".*(is deprecated|deprecated alias)", category=FutureWarning)
        yield


#: options a method needs to get as far as its input checks (required options, a reference)
def _base_options(name: str, var_names) -> dict:
    signatures = pd.DataFrame(np.ones((len(var_names), 2)), index=list(var_names), columns=["A", "B"])
    return {
        "reference_signatures": {"labels_key": "cell_type"},
        "fit_condscvi": {"labels_key": "cell_type"},
        "deconvolve_cell2location": {"reference": signatures},
        "deconvolve": {"reference": signatures},
        "deconvolve_destvi": {"reference": "no_such_model"},
        "spatial_markers_spagcn": {"domain_key": "domain"},
        "spatial_metagene": {"domain_key": "domain", "target_domain": "0"},
        "get_markers": {"group_name": "0"},
        "filter_cells": {"min_counts": 1},
        "filter_genes": {"min_cells": 1},
        "plot_reference_qc": {"reference": signatures},
        "plot_gamma_space": {"ct": "A"},
        "explore_gamma_space": {"reference": "no_such_model", "ct": "A"},
        "de_genes_destvi": {"reference": "no_such_model", "ct": "A", "mask1": np.zeros(1, bool)},
    }.get(name, {})


def _specs():
    seen = {}
    for modality in ("spatial-bin", "rna", "spatial-cell"):
        for name, spec in _REGISTRY[modality].items():
            seen.setdefault(name, (modality if modality != "spatial-cell" else "spatial-bin", spec))
    return sorted(seen.items())


def _simple_option(spec):
    """An option whose annotation is a plain scalar type (int, float, bool, str, ... | None)."""
    from experimat.methods._options import _accepts

    for p in spec.options:
        if p.kind != p.KEYWORD_ONLY or p.annotation is p.empty or p.name in ("seed",):
            continue
        if _accepts(p.annotation, object()) is not None:
            return p.name
    return None


#: options that name an existing slot a method reads
_READ_KEYS = ("abundance_key", "destvi_key", "nmf_key", "de_key", "model_key", "cell2location_key", "svg_key",
              "patterns_key", "locat_key", "labels_key", "domain_key", "obsm_key", "markers_key", "basis", "spatial_key")


def _key_option(spec):
    names = {p.name for p in spec.options}
    return next((k for k in _READ_KEYS if k in names), None)


def _ruled_option(spec):
    """An option with a conventional meaning (seed, lr, n_neighbors, ...) and a minimum."""
    from experimat.methods._options import OPTION_RULES

    return next((p.name for p in spec.options if p.name in OPTION_RULES), None)


def _ranged_option(spec):
    """An option with a range the method declares (:func:`experimat.methods._options.option_ranges`)."""
    from experimat.methods._options import RANGES_ATTR

    ranges = getattr(spec.func, RANGES_ATTR, {})
    return next((p.name for p in spec.options if p.name in ranges), None)


def _float_option(spec):
    return next((p.name for p in spec.options if "float" in str(p.annotation).split(" | ")), None)


def _cases():
    out = []
    for name, (modality, spec) in _specs():
        opts = {p.name for p in spec.options}
        writes = spec.kind in ("per_sample", "joint")
        out.append(pytest.param(name, modality, "unknown_sample", id=f"{name}-unknown_sample"))
        out.append(pytest.param(name, modality, "bad_run_on_samples", id=f"{name}-bad_run_on_samples"))
        dispatcher = any(p.kind == p.VAR_KEYWORD for p in spec.options) and not getattr(spec, "variants", None)
        if not dispatcher:  # a family dispatcher's options are checked once its variants are registered
            out.append(pytest.param(name, modality, "unknown_option", id=f"{name}-unknown_option"))
        out.append(pytest.param(name, modality, "empty_obs", id=f"{name}-empty_obs"))
        out.append(pytest.param(name, modality, "empty_var", id=f"{name}-empty_var"))
        if _simple_option(spec):
            out.append(pytest.param(name, modality, "wrong_type", id=f"{name}-wrong_type"))
        if _ruled_option(spec):
            out.append(pytest.param(name, modality, "nonsense_value", id=f"{name}-nonsense_value"))
        if _ranged_option(spec):
            out.append(pytest.param(name, modality, "out_of_range", id=f"{name}-out_of_range"))
        if _float_option(spec):
            out.append(pytest.param(name, modality, "nan_option", id=f"{name}-nan_option"))
        if "layer" in opts:
            out.append(pytest.param(name, modality, "missing_layer", id=f"{name}-missing_layer"))
        if _key_option(spec):
            out.append(pytest.param(name, modality, "missing_key", id=f"{name}-missing_key"))
        if writes and "key_added" in opts:
            for bad in ("slash", "empty", "dot"):
                out.append(pytest.param(name, modality, f"bad_key_{bad}", id=f"{name}-bad_key_{bad}"))
        if "spatial_key" in opts:
            out.append(pytest.param(name, modality, "nan_coordinates", id=f"{name}-nan_coordinates"))
            out.append(pytest.param(name, modality, "inf_coordinates", id=f"{name}-inf_coordinates"))
        if getattr(spec.func, "__experimat_counts__", None):
            out.append(pytest.param(name, modality, "fractional_counts", id=f"{name}-fractional_counts"))
            out.append(pytest.param(name, modality, "negative_counts", id=f"{name}-negative_counts"))
    return out


_BAD_KEYS = {"slash": "a/b", "empty": "", "dot": ".hidden"}


@pytest.mark.parametrize(("name", "modality", "case"), _cases())
def test_method_refuses_bad_input(project, name, modality, case):
    expm = em.load_experiment(project)
    try:
        acc = expm.modality(modality)
        sample = acc.samples[0]
        spec = _REGISTRY[modality][name]
        kwargs = _base_options(name, acc[sample].var_names)
        call = {"run_on_samples": sample}
        expect = None
        if case == "unknown_sample":
            call["run_on_samples"], expect = "no_such_sample", "no_such_sample"
        elif case == "bad_run_on_samples":
            call["run_on_samples"], expect = 3.5, "run_on_samples"
        elif case == "unknown_option":
            kwargs["no_such_option"], expect = 1, "no_such_option"
        elif case in ("empty_obs", "empty_var"):
            a = acc[sample]
            # expm.<modality>[name] = empty is refused (see the API table); a sample can still be emptied in
            # memory (in-place subsetting), so the runner checks again before every method
            expm._data[modality][sample] = a[:0].copy() if case == "empty_obs" else a[:, :0].copy()
            expect = "at least one"
        elif case == "wrong_type":
            opt = _simple_option(spec)
            kwargs[opt], expect = object(), opt
        elif case == "nonsense_value":
            from experimat.methods._options import OPTION_RULES

            opt = _ruled_option(spec)
            kwargs[opt], expect = OPTION_RULES[opt][0] - 1, opt
        elif case == "out_of_range":
            from experimat.methods._options import RANGES_ATTR

            opt = _ranged_option(spec)
            interval = getattr(spec.func, RANGES_ATTR)[opt]
            bad = interval.outside()
            default = spec.signature.parameters[opt].default
            if isinstance(default, int) and not isinstance(default, bool):
                bad = int(bad)
            kwargs[opt] = tuple(bad for _ in default) if isinstance(default, tuple) else bad
            expect = f"{opt} must lie in {interval.text}"
        elif case == "nan_option":
            opt = _float_option(spec)
            kwargs[opt], expect = float("nan"), opt
        elif case == "missing_key":
            opt = _key_option(spec)
            kwargs[opt], expect = "no_such_key", "no_such_key"
        elif case == "missing_layer":
            kwargs["layer"], expect = "no_such_layer", "no_such_layer"
        elif case.startswith("bad_key_"):
            opt = "key_added"
            kwargs[opt] = _BAD_KEYS[case.removeprefix("bad_key_")]
            expect = opt
        elif case in ("nan_coordinates", "inf_coordinates"):
            acc[sample].obsm["spatial"][3, 0] = np.nan if case == "nan_coordinates" else np.inf
            expect = "NaN/inf"
        elif case in ("fractional_counts", "negative_counts"):
            a = acc[sample]
            layer = kwargs.get("layer", spec.signature.parameters["layer"].default)
            X = a.layers[layer] if layer not in (None, "X") else a.X
            X[0, 0] = 0.5 if case == "fractional_counts" else -1.0
            expect = "raw counts"
        with pytest.raises(em.ExperimatError) as info:
            getattr(acc, name)(**kwargs, **call)
        assert expect in str(info.value), f"{type(info.value).__name__}: {info.value}"
    finally:
        expm.close()


# -- the rest of the public API -------------------------------------------------------------------
def _h5ad(tmp_path, a, name="x.h5ad"):
    path = tmp_path / name
    a.write_h5ad(path)
    return path


def _sheet(path):
    return pd.DataFrame({"sample": ["x"], "modality": ["spatial-bin"], "taxa": ["mmu"], "path": [str(path)]})


def _nan_coords():
    a = _spots(5)
    a.obsm["spatial"][2] = np.nan
    return a


def _counts(value):
    a = _spots(6)
    a.layers["counts"][0, 0] = value
    return a


def _open(project, **kw):
    return em.load_experiment(project, **kw)


def _with_open(fn):
    def run(project, tmp_path):
        expm = em.load_experiment(project)
        try:
            fn(expm, tmp_path)
        finally:
            expm.close()

    return run


def _set_not_anndata(e, t):
    e.spatial_bin["s1"] = np.zeros((3, 3))


def _save_into_foreign_folder(e, t):
    (t / "mine").mkdir()
    (t / "mine" / "notes.txt").write_text("x")
    e.save(t / "mine")


_API = {
    # (call(project, tmp_path), expected text in the message)
    "read-missing-path": (lambda p, t: em.io.read(t / "nope.h5ad"), "nope.h5ad"),
    "read-wrong-type": (lambda p, t: em.io.read(123), "123"),
    "read-garbage-file": (lambda p, t: (t / "g.h5ad").write_bytes(b"not hdf5") and em.io.read(t / "g.h5ad"), "g.h5ad"),
    "from_table-wrong-type": (lambda p, t: em.Experiment.from_table(123), "sample table"),
    "from_table-missing-columns": (lambda p, t: em.Experiment.from_table(pd.DataFrame({"x": [1]})), "columns"),
    "from_table-nan-coordinates": (lambda p, t: em.Experiment.from_table(_sheet(_h5ad(t, _nan_coords())), project=t / "new"),
                                   "NaN/inf"),
    "from_table-negative-counts": (lambda p, t: em.Experiment.from_table(_sheet(_h5ad(t, _counts(-1))), project=t / "new"),
                                   "raw counts"),
    "from_table-into-existing-project": (lambda p, t: em.Experiment.from_table(_sheet(_h5ad(t, _spots(1))), project=p,
                                                                              harmonize_genes=False), "already holds a project"),
    "from_table-force-not-bool": (lambda p, t: em.Experiment.from_table(_sheet(_h5ad(t, _spots(1))), project=t / "new",
                                                                       force="yes"), "force"),
    "from_anndata-not-anndata": (lambda p, t: em.Experiment.from_anndata({"a": np.zeros((3, 3))}, modality="rna", taxa="mmu"),
                                 "AnnData"),
    "from_anndata-not-a-dict": (lambda p, t: em.Experiment.from_anndata([_spots(1)], modality="rna", taxa="mmu"), "dict"),
    "from_anndata-bad-modality": (lambda p, t: em.Experiment.from_anndata({"a": _spots(1)}, modality="visium", taxa="mmu"),
                                  "visium"),
    "from_anndata-nan-coordinates": (lambda p, t: em.Experiment.from_anndata({"a": _nan_coords()}, modality="spatial-bin",
                                                                            taxa="mmu", project=t / "new"), "NaN/inf"),
    "from_anndata-fractional-counts": (lambda p, t: em.Experiment.from_anndata({"a": _counts(0.5)}, modality="spatial-bin",
                                                                              taxa="mmu", project=t / "new"), "raw counts"),
    "from_anndata-bad-name": (lambda p, t: em.Experiment.from_anndata({"a/b": _spots(1)}, modality="spatial-bin", taxa="mmu"),
                              "a/b"),
    "from_anndata-empty-sample": (lambda p, t: em.Experiment.from_anndata({"a": _spots(1)[:0].copy()}, modality="spatial-bin",
                                                                         taxa="mmu", project=t / "new"), "at least one"),
    "from_anndata-batch-wrong-type": (lambda p, t: em.Experiment.from_anndata({"a": _spots(1)}, modality="spatial-bin",
                                                                             taxa="mmu", batch=5), "batch"),
    "from_anndata-into-existing-project": (lambda p, t: em.Experiment.from_anndata({"a": _spots(1)}, modality="spatial-bin",
                                                                                  taxa="mmu", project=p, harmonize_genes=False),
                                           "already holds a project"),
    "load-missing-folder": (lambda p, t: em.load_experiment(t / "nope"), "nope"),
    "load-path-wrong-type": (lambda p, t: em.load_experiment(123), "123"),
    "load-bad-mode": (lambda p, t: em.load_experiment(p, mode="w"), "mode"),
    "load-unknown-sample": (lambda p, t: em.load_experiment(p, mode="r", load_samples=["nope"]), "nope"),
    "load-load_samples-wrong-type": (lambda p, t: em.load_experiment(p, mode="r", load_samples=5), "load_samples"),
    "load-verify-not-bool": (lambda p, t: em.load_experiment(p, mode="r", verify="no"), "verify"),
    "merge-bad-join": (_with_open(lambda e, t: e.merge(join="left")), "join"),
    "merge-unknown-modality": (_with_open(lambda e, t: e.merge(modality="visium")), "visium"),
    "merge-modality-wrong-type": (_with_open(lambda e, t: e.merge(modality=5)), "modality"),
    "merge-modality-without-samples": (_with_open(lambda e, t: e.merge(modality="spatial-cell")), "spatial-cell"),
    "save-path-wrong-type": (_with_open(lambda e, t: e.save(5)), "path"),
    "save-into-foreign-folder": (_with_open(_save_into_foreign_folder), "not empty"),
    "save-force-not-bool": (_with_open(lambda e, t: e.save(t / "new", force="yes")), "force"),
    "get-unknown-sample": (_with_open(lambda e, t: e.spatial_bin["nope"]), "nope"),
    "set-not-anndata": (_with_open(_set_not_anndata), "AnnData"),
    "set-empty-sample": (_with_open(lambda e, t: e.spatial_bin.__setitem__("s1", e.spatial_bin["s1"][:0].copy())),
                         "at least one"),
    "set-unknown-sample": (_with_open(lambda e, t: e.spatial_bin.__setitem__("nope", _spots(1))), "nope"),
    "add_sample-duplicate": (_with_open(lambda e, t: e.add_sample(_spots(1), sample="s1", modality="spatial-bin", taxa="mmu")),
                             "already exists"),
    "add_sample-nan-coordinates": (_with_open(lambda e, t: e.add_sample(_nan_coords(), sample="n", modality="spatial-bin",
                                                                         taxa="mmu")), "NaN/inf"),
    "unknown-modality": (_with_open(lambda e, t: e.modality("visium")), "visium"),
    "load_model-unknown": (_with_open(lambda e, t: e.load_model("nope")), "nope"),
    "pl-plot_spatial-not-anndata": (lambda p, t: em.pl.plot_spatial(5), "AnnData"),
    "pl-plot_spatial-nan-coordinates": (lambda p, t: em.pl.plot_spatial(_nan_coords()), "NaN/inf"),
    "pl-plot_embedding-missing-basis": (lambda p, t: em.pl.plot_embedding(_spots(1), basis="no_such_key"), "no_such_key"),
}


@pytest.mark.parametrize("case", sorted(_API))
def test_api_refuses_bad_input(project, tmp_path, case):
    call, expect = _API[case]
    outside = tmp_path / "new"
    with pytest.raises(em.ExperimatError) as info:
        call(project, tmp_path)
    assert expect in str(info.value), f"{type(info.value).__name__}: {info.value}"
    assert not outside.exists(), "a refused creation left a folder behind"


# -- per-method ranges, called directly (no runner): refused before any work ------------------------
def _ranged_calls():
    from experimat.methods.domains.deepst import spatial_detect_domains_deepst
    from experimat.methods.domains.spagcn import (
        integrate_domains_spagcn,
        spatial_detect_domains_spagcn,
        spatial_markers_spagcn,
    )

    det, mk = spatial_detect_domains_spagcn, spatial_markers_spagcn
    return {
        "spagcn-alpha-negative": (det, {"alpha": -1.0}, "alpha must lie in [0, inf)"),
        "spagcn-n_clusters-negative": (det, {"n_clusters": -3}, "n_clusters must be an integer >= 1"),
        "spagcn-resolution-zero": (det, {"resolution": 0.0}, "resolution must be a positive number"),
        "spagcn-p-above-one": (det, {"p": 1.5}, "p must lie in (0, 1)"),
        "spagcn-p-zero": (det, {"p": 0.0}, "p must lie in (0, 1)"),
        "spagcn-n_runs-zero": (det, {"n_runs": 0}, "n_runs must be an integer >= 1"),
        "integrate-alpha-negative": (lambda a, **k: integrate_domains_spagcn({"a": a}, **k), {"alpha": -0.5}, "alpha"),
        "spagcn-spatial_prior-negative": (det, {"spatial_prior": -1.0}, "spatial_prior must lie in [0, inf)"),
        "integrate-spatial_prior-negative": (lambda a, **k: integrate_domains_spagcn({"a": a}, **k),
                                             {"spatial_prior": -0.5}, "spatial_prior"),
        "markers-fraction-above-one": (mk, {"domain_key": "domain", "min_in_group_fraction": 1.2},
                                       "min_in_group_fraction must lie in [0, 1]"),
        "markers-max_q-zero": (mk, {"domain_key": "domain", "max_q": 0.0}, "max_q must lie in (0, 1]"),
        "markers-quantiles-outside": (mk, {"domain_key": "domain", "radius_quantiles": (0.1, 1.5)},
                                      "radius_quantiles must lie in [0, 1]"),
        "markers-min_domain_size-one": (mk, {"domain_key": "domain", "min_domain_size": 1}, "min_domain_size"),
        "deepst-adjacent_weight-negative": (spatial_detect_domains_deepst, {"adjacent_weight": -0.3}, "adjacent_weight"),
    }


@pytest.mark.parametrize("case", sorted(_ranged_calls()))
def test_declared_ranges_refuse_direct_calls(case, monkeypatch):
    import experimat.methods.domains.spagcn._inputs as inputs

    func, kwargs, expect = _ranged_calls()[case]
    a = _spots(7)
    before = a.copy()
    # "before any work": the expression is never read
    monkeypatch.setattr(inputs, "_expression", lambda *a, **k: pytest.fail("work started before the range check"))
    with pytest.raises(em.InvalidInputError) as info:
        func(a, **kwargs)
    assert expect in str(info.value), str(info.value)
    assert "not" in str(info.value)
    assert a.obs.equals(before.obs) and set(a.uns) == set(before.uns)


def test_interval_parsing():
    from experimat.methods._options import Interval, option_ranges

    assert 0.0 in Interval("[0, 1]") and 1.0 in Interval("[0, 1]") and 1.0 not in Interval("[0, 1)")
    assert 0.0 not in Interval("(0, inf)") and 1e300 in Interval("(0, inf)")
    assert Interval("[2, inf)").outside() == 1.0 and Interval("(-inf, 0]").outside() == 1.0
    with pytest.raises(ValueError, match="interval"):
        Interval("0..1")
    with pytest.raises(TypeError, match="no option"):
        option_ranges(nope="[0, 1]")(lambda adata, *, x=1: x)


@pytest.mark.parametrize("key", ["a/b", "", ".hidden"])
def test_cli_refuses_bad_key_added(project, capsys, key):
    from experimat.cli import main

    code = main(["run", str(project), "qc_metrics", "--modality", "spatial-bin", "--param", f"key_added={key}"])
    assert code == 1
    assert "key_added" in capsys.readouterr().err


def test_every_default_passes_the_shared_option_checks():
    """The rules for options with one meaning (seed, lr, n_neighbors, ...) hold for every method's defaults."""
    from experimat.methods._options import check_option_types, check_option_values

    for name, (_, spec) in _specs():
        defaults = {p.name: p.default for p in spec.options if p.kind == p.KEYWORD_ONLY and p.default is not p.empty}
        check_option_values(name, defaults)
        check_option_types(name, spec.func, defaults)
