"""Argument handling shared by the spatial domain methods."""

from __future__ import annotations

from typing import Any

from experimat._errors import InvalidInputError
from experimat.methods._checks import check_positive_int


def check_stable(stable: Any, n_runs: Any) -> int:
    """Validate the seed-stable options (``stable`` a bool, ``n_runs`` a positive integer)."""
    if not isinstance(stable, bool):
        raise InvalidInputError(f"stable must be True or False; got {stable!r}.")
    return check_positive_int("n_runs", n_runs)
