"""What runs inside a worker process (local pool or Dask worker).

A task reads its sample from an ``.h5ad`` file (the project folder, or a scratch copy), runs
the pure method, and returns exactly the slots the method declares in ``writes``, by value
(:mod:`experimat.core._slots`), never the whole AnnData. Top-level imports stay light so that thread limits set by
:func:`init_worker` apply before numpy/BLAS load.
"""

from __future__ import annotations

import os
import time
from typing import Any

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def thread_env(n_threads: int) -> dict[str, str]:
    env = {v: str(n_threads) for v in _THREAD_VARS}
    env["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen={'true' if n_threads > 1 else 'false'}"
        f" intra_op_parallelism_threads={n_threads}"
    ).strip()
    return env


def _watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Exit this worker as soon as its parent is gone (killed parents must not leave workers behind)."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="experimat-parent-watchdog", daemon=True).start()


def ping(i: int) -> int:
    """A no-op task (starts the pool's workers)."""
    return i


def apply_settings(settings: dict[str, Any] | None) -> None:
    if settings:
        from .._settings import settings as s

        for k, v in settings.items():
            setattr(s, k, v)


def init_worker(n_threads: int, settings: dict[str, Any] | None = None, parent_pid: int | None = None) -> None:
    """Limit BLAS / OpenMP / XLA / torch threads so that k workers do not oversubscribe the cores.

    With ``parent_pid`` (local worker processes), a watchdog thread ends the worker when the
    parent process dies.
    """
    if parent_pid is not None:
        _watch_parent(parent_pid)
    os.environ.update(thread_env(n_threads))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n_threads)
    except ImportError:
        pass
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n_threads)
    apply_settings(settings)


def _picklable(e: BaseException) -> BaseException:
    import copy
    import pickle

    try:
        pickle.dumps(e)
        copy.copy(e)  # rebuilds through __reduce__, as unpickling in the parent would
        return e
    except Exception:  # noqa: BLE001 - any failure to round-trip means: wrap it
        from .._errors import ExperimatError

        return ExperimatError(f"{type(e).__name__}: {e}")


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Run one method on one sample read from ``task['path']``; return result + declared slots, or the error."""
    import anndata as ad

    from ._slots import run_declared

    start = time.time()
    if task.get("threads"):  # Dask workers: apply the same thread limits as the local pool
        init_worker(int(task["threads"]))
    apply_settings(task.get("settings"))
    try:
        adata = ad.read_h5ad(task["path"])
        result, slots = run_declared(
            task["func"], adata, task["options"], task["writes"], reads=task["reads"], name=task["name"], copy=False,
            check=task["check"],
        )
    except Exception as e:  # noqa: BLE001 - isolated per sample and reported to the parent
        return {"sample": task["sample"], "error": _picklable(e), "start": start, "end": time.time()}
    return {"sample": task["sample"], "result": result, "slots": slots, "start": start, "end": time.time()}
