"""What runs inside a worker process (local pool or Dask worker).

A task reads its sample from an ``.h5ad`` file (the project folder, or a scratch copy), runs
the pure method, and returns only the slots the method added or changed (a *delta*), never
the whole AnnData. Top-level imports stay light so that thread limits set by
:func:`init_worker` apply before numpy/BLAS load.
"""

from __future__ import annotations

import os
import time
from typing import Any

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
_MAPPINGS = ("obsm", "varm", "obsp", "layers")


def thread_env(n_threads: int) -> dict[str, str]:
    env = {v: str(n_threads) for v in _THREAD_VARS}
    env["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen={'true' if n_threads > 1 else 'false'}"
        f" intra_op_parallelism_threads={n_threads}"
    ).strip()
    return env


def init_worker(n_threads: int, settings: dict[str, Any] | None = None) -> None:
    """Limit BLAS / OpenMP / XLA / torch threads so that k workers do not oversubscribe the cores."""
    os.environ.update(thread_env(n_threads))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n_threads)
    except ImportError:
        pass
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n_threads)
    if settings:
        from .._settings import settings as s

        for k, v in settings.items():
            setattr(s, k, v)


def _col_hash(series) -> int:
    import pandas as pd

    return int(pd.util.hash_pandas_object(series, index=False).sum()) ^ hash(str(series.dtype))


def snapshot(adata) -> dict[str, Any]:
    import hashlib

    from ._fingerprint import _update_obj
    from ._fingerprint import fingerprint as _fp_obj  # noqa: F401  (import check)

    def uns_hash(v) -> str:
        h = hashlib.blake2b(digest_size=16)
        _update_obj(h, v)
        return h.hexdigest()

    return {
        "shape": adata.shape,
        "X": id(adata.X),
        "obs": {c: _col_hash(adata.obs[c]) for c in adata.obs.columns},
        "var": {c: _col_hash(adata.var[c]) for c in adata.var.columns},
        **{m: {k: id(v) for k, v in getattr(adata, m).items()} for m in _MAPPINGS},
        "uns": {k: uns_hash(v) for k, v in adata.uns.items()},
    }


def diff(adata, before: dict[str, Any], *, subsets: bool = False) -> dict[str, Any]:
    """The slots added, changed or removed since ``before`` (a :func:`snapshot`).

    ``subsets``: the method declares that it removes observations or genes
    (:func:`~experimat.methods._checks.subsets_sample`); a change of shape then travels as the
    kept ``obs_names``/``var_names`` (applied to the parent's copy by :func:`apply_delta`) plus
    the ``uns`` entries it set.
    """
    from .._errors import ExperimatError

    if subsets and adata.shape != before["shape"]:
        after_uns = snapshot(adata)["uns"]
        return {
            "subset": {"obs": adata.obs_names.to_numpy(), "var": adata.var_names.to_numpy()},
            "set": {"uns": {k: adata.uns[k] for k, h in after_uns.items() if before["uns"].get(k) != h}},
            "drop": {},
        }
    if adata.shape != before["shape"]:
        raise ExperimatError(
            f"the method changed the shape of the data {before['shape']} -> {adata.shape}; methods run per sample must not "
            "subset observations or variables (return a filtered copy instead)."
        )
    after = snapshot(adata)
    delta: dict[str, Any] = {"set": {}, "drop": {}}
    if after["X"] != before["X"]:
        delta["set"]["X"] = adata.X
    for where in ("obs", "var"):
        df = getattr(adata, where)
        changed = {c: df[c] for c, h in after[where].items() if before[where].get(c) != h}
        if changed:
            delta["set"][where] = changed
        dropped = [c for c in before[where] if c not in after[where]]
        if dropped:
            delta["drop"][where] = dropped
    for where in (*_MAPPINGS, "uns"):
        mapping = adata.uns if where == "uns" else getattr(adata, where)
        changed = {k: mapping[k] for k, h in after[where].items() if before[where].get(k) != h}
        if changed:
            delta["set"][where] = changed
        dropped = [k for k in before[where] if k not in after[where]]
        if dropped:
            delta["drop"][where] = dropped
    return delta


def apply_delta(adata, delta: dict[str, Any]) -> None:
    """Apply a :func:`diff` result to the parent's copy of the sample."""
    if "subset" in delta:
        from .._errors import ExperimatError

        for axis, names in delta["subset"].items():
            index = adata.obs_names if axis == "obs" else adata.var_names
            if len(names) == len(index) and (index == names).all():
                continue
            pos = index.get_indexer(names)
            if (pos < 0).any() or not index.is_unique:
                raise ExperimatError(f"cannot apply the worker's subset of {axis}_names: names are missing or not unique.")
            if axis == "obs":
                adata._inplace_subset_obs(pos)
            else:
                adata._inplace_subset_var(pos)
    for where, items in delta.get("set", {}).items():
        if where == "X":
            adata.X = items
        elif where in ("obs", "var"):
            df = getattr(adata, where)
            for c, s in items.items():
                df[c] = s.to_numpy() if hasattr(s, "to_numpy") and not hasattr(s, "cat") else s.values
        elif where == "uns":
            for k, v in items.items():
                adata.uns[k] = v
        else:
            mapping = getattr(adata, where)
            for k, v in items.items():
                mapping[k] = v
    for where, keys in delta.get("drop", {}).items():
        if where in ("obs", "var"):
            getattr(adata, where).drop(columns=keys, inplace=True)
        else:
            mapping = adata.uns if where == "uns" else getattr(adata, where)
            for k in keys:
                del mapping[k]


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
    """Run one method on one sample read from ``task['path']``; return result + delta or the error."""
    import anndata as ad

    start = time.time()
    if task.get("threads"):  # Dask workers: apply the same thread limits as the local pool
        init_worker(int(task["threads"]), task.get("settings"))
    try:
        adata = ad.read_h5ad(task["path"])
        before = snapshot(adata)
        result = task["func"](adata, **task["options"])
        delta = diff(adata, before, subsets=bool(task.get("subsets")))
    except Exception as e:  # noqa: BLE001 - isolated per sample and reported to the parent
        return {"sample": task["sample"], "error": _picklable(e), "start": start, "end": time.time()}
    return {"sample": task["sample"], "result": result, "delta": delta, "start": start, "end": time.time()}
