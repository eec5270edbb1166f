"""experimat: multi-sample spatial and single-cell transcriptomics experiments.

>>> import experimat as em
>>> expm = em.load_experiment("projects/visium")  # doctest: +SKIP

Importing is cheap: submodules (anndata, scanpy, JAX, torch, ...) load on first use.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from ._errors import (
    ContractError,
    CorruptFileError,
    ExperimatError,
    ExperimatWarning,
    FormatVersionError,
    InvalidInputError,
    KeyNotFoundError,
    MissingDependencyError,
    MissingSlotError,
    NotCountsError,
    ProjectChangedError,
    ProjectError,
    ProjectLockedError,
    ReadOnlyError,
    SampleNotFoundError,
    SampleRunError,
)
from ._settings import settings
from ._version import __version__

if TYPE_CHECKING:
    from . import database, io, methods, pl, pp  # noqa: F401
    from ._saved_model import SavedModel, register_model, registered_models
    from .core.experiment import Experiment
    from .core.load import load_experiment
    from .core.registry import register_method
    from .core.sample_table import SampleTable
    from .io.lock import break_lock
    from .io.project import migrate

_LAZY_MODULES = {"io", "pl", "pp", "database", "methods", "core", "cli", "datasets"}
_LAZY_ATTRS = {
    "Experiment": "experimat.core.experiment",
    "load_experiment": "experimat.core.load",
    "migrate": "experimat.io.project",
    "break_lock": "experimat.io.lock",
    "SampleTable": "experimat.core.sample_table",
    "register_method": "experimat.core.registry",
    "register_model": "experimat._saved_model",
    "registered_models": "experimat._saved_model",
    "SavedModel": "experimat._saved_model",
    "version": "experimat._version_info",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        mod = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = mod
        return mod
    if name in _LAZY_ATTRS:
        value = getattr(importlib.import_module(_LAZY_ATTRS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'experimat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_MODULES, *_LAZY_ATTRS])


def setwd(path: str | os.PathLike) -> None:
    """Change the working directory (as R's ``setwd``), creating nothing.

    Relative project paths given afterwards resolve against ``path``.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise InvalidInputError(f"{path!r} is not an existing directory.")
    os.chdir(path)


__all__ = [
    "ContractError",
    "CorruptFileError",
    "ExperimatError",
    "ExperimatWarning",
    "Experiment",
    "FormatVersionError",
    "InvalidInputError",
    "KeyNotFoundError",
    "MissingDependencyError",
    "MissingSlotError",
    "NotCountsError",
    "ProjectChangedError",
    "ProjectError",
    "ProjectLockedError",
    "ReadOnlyError",
    "SampleNotFoundError",
    "SampleRunError",
    "SampleTable",
    "SavedModel",
    "__version__",
    "break_lock",
    "load_experiment",
    "migrate",
    "register_method",
    "register_model",
    "registered_models",
    "settings",
    "setwd",
    "version",
]
