"""``em.version()``: package, Python, platform, dependency versions, devices, folders, memory."""

from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _v
from importlib.util import find_spec

_PACKAGES = ("anndata", "mudata", "scanpy", "numpy", "scipy", "pandas", "h5py", "matplotlib", "rich", "jax", "jaxlib", "torch", "dask", "distributed")


def _rss_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024
    except ImportError:
        return None


def version_info(*, devices: bool = True) -> dict[str, object]:
    from ._settings import settings
    from ._version import __version__

    info: dict[str, object] = {"experimat": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in _PACKAGES:
        try:
            info[pkg] = _v(pkg)
        except PackageNotFoundError:
            info[pkg] = "not installed"
    if devices:
        if find_spec("jax") is not None:
            try:
                import jax

                info["jax devices"] = ", ".join(str(d) for d in jax.devices())
            except RuntimeError as e:
                info["jax devices"] = f"unavailable ({e})"
        if find_spec("torch") is not None:
            import torch

            info["torch device"] = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    info["data dir"] = str(settings.data_dir)
    info["database dir"] = str(settings.database_dir)
    rss = _rss_mib()
    info["resident memory"] = f"{rss:.0f} MiB" if rss is not None else "unknown"
    return info


def version(*, devices: bool = True) -> None:
    """Print experimat's version, Python, platform, key dependency versions, JAX / torch devices,
    the data and database folders and the resident memory of this process.

    Examples
    --------
    >>> em.version()  # doctest: +SKIP
    """
    info = version_info(devices=devices)
    width = max(map(len, info))
    for k, v in info.items():
        print(f"{k:<{width}}  {v}")
