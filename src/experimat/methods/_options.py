"""Checks of a method's options before any work: types from the signature, value ranges, result keys.

:func:`experimat.methods._checks.preflight` applies them to every registered method; methods declare
the valid range of their own options with :func:`option_ranges`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import InvalidInputError

#: annotation names :func:`check_option_types` understands, with what they accept
_SIMPLE_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int, np.integer), "an integer"),
    "float": ((int, float, np.integer, np.floating), "a number"),
    "bool": ((bool, np.bool_), "True or False"),
    "str": ((str,), "a string"),
    "None": ((type(None),), "None"),
    "os.PathLike": ((str, Path), "a path"),
    "Path": ((str, Path), "a path"),
}

#: options that name a slot a method writes (checked by :func:`check_key`)
KEY_OPTIONS = ("key_added", "refined_key_added")


def _split_union(annotation: str) -> list[str]:
    """``'str | Sequence[str] | None'`` -> its members (a ``|`` inside brackets does not split)."""
    parts, depth, cur = [], 0, ""
    for ch in str(annotation):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return [p for p in parts if p]


_SEQUENCE_TYPES = ("Sequence", "list", "Iterable", "Collection")


def _member_accepts(member: str, value: Any) -> tuple[bool, str] | None:
    """Whether ``value`` fits one member of a union (None: this annotation is not understood)."""
    import pandas as pd

    if member in _SIMPLE_TYPES:
        types, what = _SIMPLE_TYPES[member]
        if member in ("int", "float") and isinstance(value, (bool, np.bool_)):
            return False, what  # True is not a number of epochs
        return isinstance(value, types), what
    if member in ("dict", "Mapping") or member.startswith(("dict[", "Mapping[")):
        return isinstance(value, Mapping), "a dict"
    if member in ("np.ndarray", "numpy.ndarray"):
        return isinstance(value, np.ndarray), "an array"
    head, _, inner = member.partition("[")
    inner = inner[:-1] if inner.endswith("]") else inner
    if head in _SEQUENCE_TYPES and inner in _SIMPLE_TYPES:
        what = f"a list of {_SIMPLE_TYPES[inner][1].removeprefix('an ').removeprefix('a ')}s"
        seq = isinstance(value, (list, tuple, np.ndarray, pd.Index, pd.Series)) or (head == "Iterable" and isinstance(value, range))
        if not seq or isinstance(value, str):
            return False, what
        items = list(value) if len(value) <= 10_000 else list(value[:10_000])
        return all(bool(_member_accepts(inner, v) and _member_accepts(inner, v)[0]) for v in items), what
    if head == "tuple" and inner:
        members = [m.strip() for m in inner.split(",")]
        if not all(m in _SIMPLE_TYPES for m in members):
            return None
        what = f"a pair ({', '.join(members)})" if len(members) == 2 else f"a tuple ({', '.join(members)})"
        if not isinstance(value, (list, tuple)) or len(value) != len(members):
            return False, what
        return all(_member_accepts(m, v)[0] for m, v in zip(members, value, strict=True)), what
    return None


def _accepts(annotation: str, value: Any) -> tuple[bool, str] | None:
    """Whether ``value`` fits an annotation such as ``'int | None'`` or ``'str | Sequence[str] | None'``
    (None: the annotation names a type this check does not know, so nothing is decided)."""
    verdicts = [_member_accepts(m, value) for m in _split_union(annotation)]
    if not verdicts or any(v is None for v in verdicts):
        return None
    return any(v[0] for v in verdicts), " or ".join(v[1] for v in verdicts)


def check_option_types(name: str, func: Any, options: Mapping[str, Any]) -> None:
    """Refuse option values whose type contradicts the method's annotation (``int``, ``float | None``, ...)."""
    import inspect

    params = inspect.signature(func).parameters
    for opt, value in options.items():
        p = params.get(opt)
        if p is None or p.annotation is p.empty or (value is None and p.default is None):
            continue
        verdict = _accepts(p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", ""), value)
        if verdict is None or verdict[0]:
            continue
        example = f" (the default is {p.default!r})" if p.default is not p.empty else ""
        raise InvalidInputError(f"{name}(): {opt} must be {verdict[1]}, not {value!r} ({type(value).__name__}){example}.")


#: options that mean the same in every method, with the values that make sense: (minimum, strict, what)
OPTION_RULES: dict[str, tuple[float, bool, str]] = {
    "seed": (0, False, "a non-negative integer or None"),
    "lr": (0, True, "a positive number (e.g. 1e-3)"),
    "n_top_genes": (1, False, "an integer >= 1 or None"),
    "n_comps": (1, False, "an integer >= 1"),
    "n_pcs": (1, False, "an integer >= 1 or None"),
    "n_neighbors": (1, False, "an integer >= 1"),
    "bins": (1, False, "an integer >= 1"),
    "batch_size": (1, False, "an integer >= 1 or None"),
    "max_epochs": (0, False, "an integer >= 0"),
    "n_clusters": (1, False, "an integer >= 1"),
    "n_domains": (1, False, "an integer >= 1"),
    "n_patterns": (1, False, "an integer >= 1"),
    "n_latent": (1, False, "an integer >= 1"),
    "n_hidden": (1, False, "an integer >= 1"),
    "n_layers": (1, False, "an integer >= 1"),
    "n_restarts": (1, False, "an integer >= 1"),
    "n_quantiles": (1, False, "an integer >= 1"),
    "n_components": (1, False, "an integer >= 1 or None"),
    "n_dims": (1, False, "an integer >= 1 or None"),
    "n_top": (1, False, "an integer >= 1"),
    "max_iter": (1, False, "an integer >= 1"),
    "epochs": (0, False, "an integer >= 0"),
    "pre_epochs": (0, False, "an integer >= 0"),
    "target_sum": (0, True, "a positive number or None"),
    "resolution": (0, True, "a positive number or None"),
    "tol": (0, False, "a number >= 0"),
    "max_tile_mb": (0, True, "a positive number"),
    "chunk_size": (1, False, "an integer >= 1 or None"),
    "n_runs": (1, False, "an integer >= 1"),
}


#: attribute holding ``{option: Interval}`` on a function decorated with :func:`option_ranges`
RANGES_ATTR = "__experimat_ranges__"


class Interval:
    """A range of sensible values written as in mathematics: ``"[0, 1]"``, ``"(0, 1)"``, ``"[0, inf)"``."""

    __slots__ = ("high", "high_closed", "low", "low_closed", "text")

    def __init__(self, text: str) -> None:
        t = text.strip()
        if len(t) < 5 or t[0] not in "[(" or t[-1] not in "])" or "," not in t:
            raise ValueError(f"not an interval: {text!r} (write e.g. '[0, 1]' or '(0, inf)')")
        lo, hi = (v.strip() for v in t[1:-1].split(","))
        self.low, self.high = float(lo), float(hi)
        self.low_closed, self.high_closed = t[0] == "[", t[-1] == "]"
        self.text = t

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return bool(above and below)

    def outside(self) -> float:
        """A value outside the interval (for tests)."""
        return self.low - 1.0 if math.isfinite(self.low) else self.high + 1.0

    def __repr__(self) -> str:
        return f"Interval({self.text!r})"


def _numbers(value: Any) -> list[float] | None:
    """The numbers of an option value (a number, or a tuple/list of numbers); None when it holds none."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return None
    if isinstance(value, (int, float, np.number)):
        return [float(value)]
    if isinstance(value, (tuple, list)) and value and all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) for v in value
    ):
        return [float(v) for v in value]
    return None


def check_option_values(name: str, options: Mapping[str, Any], ranges: Mapping[str, Interval] | None = None,
                        defaults: Mapping[str, Any] | None = None) -> None:
    """Refuse NaN numbers, values outside the sense of the options in :data:`OPTION_RULES` and values
    outside a method's declared ranges (:func:`option_ranges`; ``defaults`` are named in the message)."""
    for opt, value in options.items():
        if isinstance(value, (float, np.floating)) and math.isnan(value):
            raise InvalidInputError(f"{name}(): {opt} is NaN; pass a number (or leave the default).")
        interval = (ranges or {}).get(opt)
        numbers = _numbers(value)
        if interval is not None and numbers is not None and not all(v in interval for v in numbers):
            hint = f" (the default is {defaults[opt]!r})" if defaults and opt in defaults else ""
            raise InvalidInputError(f"{name}(): {opt} must lie in {interval.text}, not {value!r}; pass a value in that range{hint}.")
        rule = OPTION_RULES.get(opt)
        if rule is None or value is None or isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            continue
        minimum, strict, what = rule
        if value < minimum or (strict and value == minimum):
            raise InvalidInputError(f"{name}(): {opt} must be {what}, not {value!r}.")


def option_ranges(**intervals: str):
    """Declare the sensible values of a method's numeric options: ``@option_ranges(alpha="[0, inf)", p="(0, 1)")``.

    A value outside (``alpha=-1``, a probability of 1.5) is refused with an :class:`InvalidInputError` before
    any work: by the runner's checks when the method is called through an accessor, and by the decorated
    function itself when it is called directly (which also applies :data:`OPTION_RULES`, e.g. ``n_clusters >= 1``).
    Tuple options (``radius_quantiles=(0.001, 0.1)``) have each element checked.
    """
    import functools
    import inspect

    rules = {opt: Interval(text) for opt, text in intervals.items()}

    def decorate(func):
        params = inspect.signature(func).parameters
        unknown = set(rules) - set(params)
        if unknown:
            raise TypeError(f"option_ranges on {func.__name__}: no option(s) {sorted(unknown)}")
        merged = {**getattr(func, RANGES_ATTR, {}), **rules}
        defaults = {k: p.default for k, p in params.items() if p.default is not p.empty}

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check_option_values(func.__name__, kwargs, merged, defaults)
            return func(*args, **kwargs)

        setattr(wrapper, RANGES_ATTR, merged)
        return wrapper

    return decorate


def check_key(option: str, value: Any) -> None:
    """A slot name a method writes: a non-empty string without ``/`` that does not start with ``.``."""
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidInputError(f"{option} must be a string naming the result, not {value!r} ({type(value).__name__}).")
    problem = None
    if not value.strip():
        problem = "is empty"
    elif "/" in value:
        problem = "contains '/' (a project file cannot hold such a key)"
    elif value.startswith("."):
        problem = "starts with '.'"
    elif value != value.strip():
        problem = "has leading or trailing spaces"
    elif re.search(r"[\x00-\x1f\x7f]", value):
        problem = "contains control characters"
    if problem:
        raise InvalidInputError(f"{option}={value!r} {problem}; choose a name such as 'svg' or 'svg_run2'.")
