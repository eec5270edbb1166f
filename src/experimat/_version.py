"""The package version (a base module: the package root, ``em.version()`` and the manifest read it here)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version

try:
    __version__ = _pkg_version("experimat")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.1.0"
