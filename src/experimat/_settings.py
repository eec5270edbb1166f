"""Typed global settings (``em.settings``).

Values are validated on assignment; environment variables give the defaults:

``EXPERIMAT_DATA_DIR``
    Where large data sets for tutorials and benchmarks live (default ``~/experimat-data``).
``EXPERIMAT_DATABASE_DIR``
    Where the gene database lives (default: the copy shipped with the package).
``EXPERIMAT_VERBOSITY``
    ``error``, ``warning``, ``info`` (default) or ``debug``.
``EXPERIMAT_PROGRESS``
    ``0`` to silence progress bars.
``EXPERIMAT_CHECK_CONTRACT``
    ``1`` to make a method that changes slots it does not declare an error (the test suite).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._errors import InvalidInputError

VERBOSITY_LEVELS = ("error", "warning", "info", "debug")
_PKG_DIR = Path(__file__).resolve().parent


def _default_database_dir() -> Path:
    env = os.environ.get("EXPERIMAT_DATABASE_DIR")
    if env:
        return Path(env).expanduser()
    shipped = _PKG_DIR / "_database"  # inside a wheel
    if shipped.is_dir():
        return shipped
    return _PKG_DIR.parent.parent / "database"  # source checkout / editable install


class Settings:
    """Global settings of experimat.

    Attributes
    ----------
    verbosity
        Logging level: ``"error"``, ``"warning"``, ``"info"`` or ``"debug"``.
    progress
        Show rich progress bars.
    data_dir
        Folder of large data sets used by tutorials and benchmarks.
    database_dir
        Folder of the gene database.
    n_jobs
        Default number of worker processes for per-sample runs (1: serial).
    seed
        Global random seed; each sample's task derives its own seed from it.
    check_contract
        Raise :class:`~experimat.ContractError` when a registered method changes a slot it does
        not declare in ``writes`` (costs one digest of the sample per call; on in the test suite).

    Examples
    --------
    >>> import experimat as em
    >>> em.settings.verbosity = "warning"
    >>> with em.settings.override(progress=False):
    ...     pass
    """

    _fields = ("verbosity", "progress", "data_dir", "database_dir", "n_jobs", "seed", "check_contract")

    def __init__(self) -> None:
        self._verbosity = "info"
        self.verbosity = os.environ.get("EXPERIMAT_VERBOSITY", "info")
        self.progress = os.environ.get("EXPERIMAT_PROGRESS", "1") not in ("0", "false", "False")
        self.data_dir = Path(os.environ.get("EXPERIMAT_DATA_DIR", "~/experimat-data"))
        self.database_dir = _default_database_dir()
        self.n_jobs = 1
        self.seed = 0
        self.check_contract = os.environ.get("EXPERIMAT_CHECK_CONTRACT", "0") in ("1", "true", "True")

    # -- typed properties -------------------------------------------------------------
    @property
    def verbosity(self) -> str:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: str | int) -> None:
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < len(VERBOSITY_LEVELS):
                raise InvalidInputError(f"verbosity must be 0..3 or one of {VERBOSITY_LEVELS}")
            value = VERBOSITY_LEVELS[value]
        if value not in VERBOSITY_LEVELS:
            raise InvalidInputError(f"verbosity {value!r} is invalid; use one of {VERBOSITY_LEVELS}.")
        self._verbosity = value
        from ._logging import _set_level

        _set_level(value)

    @property
    def progress(self) -> bool:
        return self._progress

    @progress.setter
    def progress(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise InvalidInputError(f"progress must be True or False, not {value!r}.")
        self._progress = value
        from ._logging import _set_progress

        _set_progress(value)

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @data_dir.setter
    def data_dir(self, value: str | os.PathLike) -> None:
        self._data_dir = Path(value).expanduser()

    @property
    def database_dir(self) -> Path:
        return self._database_dir

    @database_dir.setter
    def database_dir(self, value: str | os.PathLike) -> None:
        self._database_dir = Path(value).expanduser()

    @property
    def n_jobs(self) -> int:
        return self._n_jobs

    @n_jobs.setter
    def n_jobs(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInputError(f"n_jobs must be a positive integer, not {value!r}.")
        self._n_jobs = value

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInputError(f"seed must be a non-negative integer, not {value!r}.")
        self._seed = value

    @property
    def check_contract(self) -> bool:
        return self._check_contract

    @check_contract.setter
    def check_contract(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise InvalidInputError(f"check_contract must be True or False, not {value!r}.")
        self._check_contract = value

    # -- helpers ----------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self._fields}

    @contextmanager
    def override(self, **values: Any):
        """Temporarily change settings inside a ``with`` block."""
        unknown = set(values) - set(self._fields)
        if unknown:
            raise InvalidInputError(f"unknown settings {sorted(unknown)}; valid: {list(self._fields)}.")
        old = {k: getattr(self, k) for k in values}
        try:
            for k, v in values.items():
                setattr(self, k, v)
            yield self
        finally:
            for k, v in old.items():
                setattr(self, k, v)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name not in self._fields:
            raise InvalidInputError(f"unknown setting {name!r}; valid: {list(self._fields)}.")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        body = "\n".join(f"  {k}: {v!r}" for k, v in self.as_dict().items())
        return f"experimat settings\n{body}"


settings = Settings()
