"""Argument handling shared by the spatial domain methods."""

from __future__ import annotations

import warnings
from typing import Any

from experimat._errors import InvalidInputError
from experimat.methods._checks import check_positive_int


def deprecated_alias(old: str | None, new: str, default: str) -> str:
    """The output key from ``key_added`` or its deprecated alias ``result_key`` (not both)."""
    if old is None:
        return new
    if new != default and new != old:
        raise InvalidInputError(f"pass key_added={new!r} or the deprecated result_key={old!r}, not both.")
    warnings.warn("result_key is deprecated; pass key_added instead.", FutureWarning, stacklevel=3)
    return str(old)


def check_stable(stable: Any, n_runs: Any) -> int:
    """Validate the seed-stable options (``stable`` a bool, ``n_runs`` a positive integer)."""
    if not isinstance(stable, bool):
        raise InvalidInputError(f"stable must be True or False; got {stable!r}.")
    return check_positive_int("n_runs", n_runs)
