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


def check_spatial_prior(value: Any) -> float:
    """Validate the Potts prior strength ``spatial_prior`` (a finite number >= 0)."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise InvalidInputError(
            f"spatial_prior must be a finite number >= 0 (0: no spatial prior; 1: the integration's default); "
            f"got {value!r}."
        )
    return float(value)
