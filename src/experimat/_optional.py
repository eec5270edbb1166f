"""Optional-dependency guard.

Heavy or optional packages are imported inside the functions that need them through
:func:`import_optional`, which raises :class:`MissingDependencyError` naming the extra
to install.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.util import find_spec
from types import ModuleType

from ._errors import MissingDependencyError

#: package import name -> (pip name, experimat extra)
_EXTRAS: dict[str, tuple[str, str]] = {
    "jax": ("jax", "jax"),
    "torch": ("torch==2.13.0", "torch"),
    "dask": ("dask[distributed]", "dask"),
    "distributed": ("dask[distributed]", "dask"),
    "leidenalg": ("leidenalg", "leiden"),
    "igraph": ("igraph", "leiden"),
    "nbclient": ("nbclient", "test"),
    "sklearn": ("scikit-learn", "leiden"),
    "pyarrow": ("pyarrow", "platforms"),
    "tifffile": ("tifffile", "platforms"),
    "zarr": ("zarr", "platforms"),
    "spatialdata": ("spatialdata", "spatialdata"),
}


def has_package(name: str) -> bool:
    """Whether ``name`` is importable, without importing it."""
    return find_spec(name) is not None


def import_optional(name: str, *, purpose: str = "") -> ModuleType:
    """Import ``name`` or raise :class:`MissingDependencyError` naming the extra to install."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        pip_name, extra = _EXTRAS.get(name.split(".")[0], (name, None))
        why = f" for {purpose}" if purpose else ""
        hint = f"pip install 'experimat[{extra}]'" if extra else f"pip install {pip_name}"
        raise MissingDependencyError(f"{name!r} is required{why} but is not installed; run `{hint}`.") from e


@cache
def jax_device(use_gpu: bool = True) -> str:
    """``"gpu"`` when JAX sees a GPU and ``use_gpu`` is set, else ``"cpu"``."""
    jax = import_optional("jax", purpose="this method")
    if use_gpu:
        try:
            if jax.devices("gpu"):
                return "gpu"
        except RuntimeError:
            pass
    return "cpu"
