"""Deprecated option and function names keep working, with a FutureWarning."""

from __future__ import annotations

import inspect
import warnings

import pytest

from experimat._compat import deprecated_alias, renamed_of, renamed_options
from experimat._errors import InvalidInputError
from experimat.core.registry import MethodSpec


@renamed_options(key="svg_key")
def _method(adata, *, svg_key: str = "moran", n: int = 1):
    return svg_key, n


def test_old_option_name_translated_with_warning():
    with pytest.warns(FutureWarning, match=r"key= is deprecated.*svg_key="):
        assert _method(None, key="gp") == ("gp", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _method(None, svg_key="gp", n=2) == ("gp", 2)


def test_both_names_refused():
    with pytest.raises(InvalidInputError, match="pass only svg_key="):
        _method(None, key="a", svg_key="b")


def test_signature_shows_new_names_only():
    assert list(inspect.signature(_method).parameters) == ["adata", "svg_key", "n"]
    assert renamed_of(_method) == {"key": "svg_key"}


def test_runner_bind_translates():
    spec = MethodSpec(func=_method, name="_method", modalities=("spatial-bin",))
    with pytest.warns(FutureWarning):
        assert spec.bind({"key": "gp"}) == {"svg_key": "gp", "n": 1}
    with pytest.raises(InvalidInputError, match="unknown options"):
        spec.bind({"kee": "gp"})


def test_deprecated_alias():
    old = deprecated_alias(_method, "_old_method")
    assert old.__name__ == "_old_method"
    with pytest.warns(FutureWarning, match=r"_old_method\(\) is a deprecated alias of _method\(\)"):
        assert old(None, svg_key="x") == ("x", 1)
