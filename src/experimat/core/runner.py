"""Run a registered method per sample: serially, in local worker processes, or on Dask.

Guarantees:

- every sample named in ``run_on_samples`` is run (unknown names raise before any work);
- input slots are checked on every chosen sample before any work;
- a failing sample does not lose the others: finished samples are stored (and saved when
  ``save``), and one :class:`SampleRunError` at the end names each failure;
- each sample gets a seed derived from ``em.settings.seed`` and its name (unless the call
  gives ``seed=``), so serial, ``n_jobs=k`` and Dask runs give identical results;
- one ``history.jsonl`` line per sample and call, success or failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import socket
import tempfile
import time
from functools import cache
from typing import TYPE_CHECKING, Any

from .._errors import InvalidInputError, ProjectError, ReadOnlyError, SampleRunError
from .._logging import ProgressBar, logger
from .._settings import settings
from ..methods._checks import preflight, to_json_safe
from . import _slots, _worker
from .registry import MethodSpec, check_slots

if TYPE_CHECKING:
    from .experiment import Experiment

_KEY_PACKAGES = ("anndata", "mudata", "scanpy", "numpy", "scipy", "pandas", "jax", "torch")


@cache
def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("experimat", *_KEY_PACKAGES):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def derive_seed(global_seed: int, sample: str) -> int:
    """A per-sample seed from the global seed and the sample name (stable across processes)."""
    digest = hashlib.sha256(f"{global_seed}:{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _now() -> str:
    from ..io.project import now_iso

    return now_iso()


class _Recorder:
    """Builds history records for one call."""

    def __init__(self, spec: MethodSpec, modality: str, n_jobs: int, executor: Any) -> None:
        self.spec, self.modality = spec, modality
        self.base = {
            "method": spec.name,
            "modality": modality,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "versions": package_versions(),
            "executor": "dask" if executor is not None else ("processes" if n_jobs > 1 else "serial"),
        }

    def record(self, sample: str | None, params: dict[str, Any], start: float, end: float, error: BaseException | None) -> dict[str, Any]:
        safe = to_json_safe(params)
        return {
            **self.base,
            "sample": sample,
            "params": safe,
            "params_hash": params_hash(safe),
            "start": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start)) + "Z",
            "end": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(end)) + "Z",
            "duration_s": round(end - start, 4),
            "outcome": "ok" if error is None else "error",
            "error": None if error is None else f"{type(error).__name__}: {error}",
        }


def _is_plugin(spec: MethodSpec) -> bool:
    """A method defined outside experimat: samples it gets directly (views, queries) count as handed
    to user code, so an edit in place is noticed and saved."""
    return not str(getattr(spec.func, "__module__", "")).startswith("experimat.")


def _sample_options(spec: MethodSpec, options: dict[str, Any], user_kwargs: dict[str, Any], sample: str) -> dict[str, Any]:
    opts = dict(options)
    if spec.accepts_seed and user_kwargs.get("seed") is None:
        opts["seed"] = derive_seed(settings.seed, sample)
    return opts


def _check_runner_options(run_on_samples: Any, n_jobs: Any, executor: Any, save: Any, resume: Any) -> None:
    if not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs < 1:
        raise InvalidInputError(f"n_jobs must be a positive integer, not {n_jobs!r}.")
    if save is not None and not isinstance(save, bool):
        raise InvalidInputError(f"save must be True, False or None (save when the project is writable), not {save!r}.")
    if not isinstance(resume, bool):
        raise InvalidInputError(f"resume must be True or False, not {resume!r}.")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise InvalidInputError(
            f"executor must be a dask.distributed.Client (e.g. Client(LocalCluster())) or None, not {type(executor).__name__}."
        )
    ok = run_on_samples is None or isinstance(run_on_samples, (bool, str))
    if not ok:
        items = run_on_samples.tolist() if hasattr(run_on_samples, "tolist") else run_on_samples
        ok = isinstance(items, (list, tuple, set, frozenset)) and all(isinstance(s, str) for s in items)
    if not ok:
        raise InvalidInputError(
            f"run_on_samples must be True, 'all', a sample name, a list of names or None (the integrated data); "
            f"got {run_on_samples!r}."
        )


def run_method(
    expm: Experiment,
    modality: str,
    spec: MethodSpec,
    kwargs: dict[str, Any],
    *,
    run_on_samples: Any = True,
    n_jobs: int | None = None,
    executor: Any = None,
    save: bool | None = None,
    resume: bool = False,
) -> Any:
    """Run ``spec`` on the chosen samples of ``modality`` (see :mod:`experimat.core.runner`)."""
    n_jobs = settings.n_jobs if n_jobs is None else n_jobs
    _check_runner_options(run_on_samples, n_jobs, executor, save, resume)
    spec, kwargs = spec.resolve(kwargs, modality)
    options = spec.bind(kwargs)
    spec.check_output_keys(options)
    if n_jobs > 1 and executor is None and run_on_samples is not None:
        n_jobs = _serial_if_unguarded(spec, n_jobs)
    save = _resolve_save(expm, save)

    writes = spec.kind in ("per_sample", "joint")
    if run_on_samples is None:
        preflight(spec, expm._integrated_mod(modality), options, sample="integrated", writes=writes)
        return _run_integrated(expm, modality, spec, options, kwargs, save=save)

    samples = expm.resolve_samples(modality, run_on_samples)
    for s in samples:  # cheap input checks of every chosen sample, before any work or write
        preflight(spec, expm._sample(modality, s), options, sample=s, writes=writes)
    if writes:  # declared inputs too, before the set-up (which may fit a reference across samples)
        for s in samples:
            check_slots(spec, expm._sample(modality, s), options, sample=s, modality=modality)
    if spec.setup is not None:
        options = spec.setup(expm, modality, options)
    if spec.kind in ("view", "query"):
        return _run_readonly(expm, modality, spec, options, samples)

    recorder = _Recorder(spec, modality, n_jobs, executor)
    if spec.kind == "joint":
        return _run_joint(expm, modality, spec, options, kwargs, samples, recorder, save=save)

    samples_to_run = _not_finished(expm, modality, spec, options, kwargs, samples) if resume else list(samples)
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    start_all = logger.info(f"{spec.name} on {len(samples_to_run)} {modality} samples")

    def finish(sample: str, opts: dict[str, Any], start: float, end: float, result: Any = None, error: BaseException | None = None) -> None:
        if error is None:
            results[sample] = result
            expm.mark_modified(modality, sample)
            if save:
                expm.save_samples([(modality, sample)])
                _store_model(expm, spec, opts, result, sample)
            logger.info(f"  {sample}: done ({end - start:.2f} s)")
        else:
            errors[sample] = error
            logger.warning(f"  {sample}: failed: {type(error).__name__}: {error}")
        expm.add_history([recorder.record(sample, opts, start, end, error)])

    if executor is None and n_jobs == 1:
        _run_serial(expm, modality, spec, options, kwargs, samples_to_run, finish)
    else:
        _run_parallel(expm, modality, spec, options, kwargs, samples_to_run, n_jobs, executor, save, finish)

    logger.info(f"{spec.name}: {len(results)} ok, {len(errors)} failed", time=start_all)
    ordered = {s: results[s] for s in samples if s in results}
    if errors:
        if len(samples_to_run) == 1:  # a single sample: its own exception is the clearest error
            raise next(iter(errors.values()))
        raise SampleRunError(spec.name, errors, ordered)
    return ordered


def _serial_if_unguarded(spec: MethodSpec, n_jobs: int) -> int:
    """``n_jobs``, or 1 with a warning when the running script lacks a ``__main__`` guard."""
    script = _main_script_unguarded()
    if script is None:
        return n_jobs
    import warnings

    from .._errors import ExperimatWarning

    warnings.warn(
        f"{spec.name}: n_jobs={n_jobs} runs serially because the script {os.path.basename(script)} has no "
        "`if __name__ == \"__main__\":` guard (worker processes re-run a script's top level); put the code "
        "under that guard to use worker processes.",
        ExperimatWarning,
        stacklevel=4,
    )
    return 1


def _resolve_save(expm: Experiment, save: bool | None) -> bool:
    """The runner's ``save``: None saves when the project is writable; True needs a writable project."""
    if save is None:
        return expm.is_writable_backed
    if save and not expm.is_writable_backed:
        if expm.project_path is not None:
            raise ReadOnlyError(f"save=True, but {expm.project_path} was opened with mode='r'; reopen it with mode='r+'.")
        raise ProjectError("save=True needs a project folder: create the experiment with project=..., or call expm.save(path) first.")
    return save


def _run_readonly(expm: Experiment, modality: str, spec: MethodSpec, options: dict[str, Any], samples: list[str]) -> Any:
    """A view (all samples at once) or a query (per sample): reads the samples and changes nothing."""
    # a plugin's view gets the samples themselves: treat them as handed out (in-place edits are saved)
    get = expm.get_sample if _is_plugin(spec) else expm._sample
    adatas = {s: get(modality, s) for s in samples}
    before = {s: _slots.digests(a) for s, a in adatas.items()} if settings.check_contract else None
    if spec.kind == "view":
        out = spec.func(adatas, **options)
    else:
        out = {s: spec.func(a, **options) for s, a in adatas.items()}
    if before is not None:
        for s, a in adatas.items():
            bad = _slots.undeclared_changes(before[s], _slots.digests(a), [])
            if bad:
                from .._errors import ContractError

                raise ContractError(f"{spec.name} is registered as a read-only {spec.kind} but changed {bad[:10]} "
                                    f"of sample {s!r}; register it as kind='per_sample' with writes=[...].")
    return out


def _not_finished(expm: Experiment, modality: str, spec: MethodSpec, options: dict[str, Any], kwargs: dict[str, Any],
                  samples: list[str]) -> list[str]:
    """``resume=True``: the samples without a finished run of this method with the same parameters."""
    done = expm.finished_samples(spec.name, modality)
    todo, skipped = [], []
    for s in samples:
        opts = _sample_options(spec, options, kwargs, s)
        (skipped if done.get(s) == params_hash(to_json_safe(opts)) else todo).append(s)
    if skipped:
        logger.info(f"{spec.name}: resume skips {len(skipped)} finished samples: {', '.join(skipped)}")
    return todo


def _run_serial(expm: Experiment, modality: str, spec: MethodSpec, options: dict[str, Any], kwargs: dict[str, Any],
                samples: list[str], finish) -> None:
    """The samples one after the other in this process, by the same path as a worker's: the method
    runs on a copy, then exactly the declared slots are applied to the sample."""
    with ProgressBar(len(samples), description=spec.name) as bar:
        for s in samples:
            opts = _sample_options(spec, options, kwargs, s)
            adata = expm._sample(modality, s)
            t0 = time.time()
            try:
                writes = spec.write_slots(opts)
                res, slots = _slots.run_declared(
                    spec.func, adata, opts, writes, reads=spec.slots(spec.reads, opts), name=spec.name, copy=True,
                    check=settings.check_contract,
                )
                _slots.record_params(slots, opts.get("key_added"), opts)
                _slots.apply(adata, writes, slots)
            except Exception as e:  # noqa: BLE001 - isolate the failure to this sample
                finish(s, opts, t0, time.time(), error=e)
            else:
                finish(s, opts, t0, time.time(), result=res)
            bar.update()


def _run_parallel(expm, modality, spec, options, kwargs, samples, n_jobs, executor, save, finish) -> None:
    scratch = None
    try:
        paths: dict[str, str] = {}
        need_copy = []
        if save and expm.is_writable_backed:
            expm.save_samples([(modality, s) for s in samples if expm.is_modified(modality, s)])
        for s in samples:
            p = expm.clean_sample_file(modality, s)
            if p is None:
                need_copy.append(s)
            else:
                paths[s] = str(p)
        if need_copy:
            # Dask workers may run on other hosts: a writer shares its copies through the project folder
            # (the lab's shared file system); a reader (mode="r") never writes there and uses a temporary folder
            base = str(expm.project_path) if executor is not None and expm.is_writable_backed else None
            scratch = tempfile.mkdtemp(prefix=".experimat-scratch-", dir=base)
            for s in need_copy:
                p = os.path.join(scratch, f"{len(paths)}.h5ad")
                expm._sample(modality, s).write_h5ad(p)
                paths[s] = p
        tasks = {}
        for s in samples:
            opts = _sample_options(spec, options, kwargs, s)
            task = {"func": spec.func, "name": spec.name, "sample": s, "path": paths[s], "options": opts,
                    "writes": spec.write_slots(opts), "reads": spec.slots(spec.reads, opts), "check": settings.check_contract}
            tasks[s] = (task, opts)

        def handle(out: dict[str, Any]) -> None:
            s = out["sample"]
            task, opts = tasks[s]
            if "error" in out:
                finish(s, opts, out["start"], out["end"], error=out["error"])
                return
            try:
                _slots.record_params(out["slots"], opts.get("key_added"), opts)
                _slots.apply(expm._sample(modality, s), task["writes"], out["slots"])
            except Exception as e:  # noqa: BLE001 - isolate
                finish(s, opts, out["start"], out["end"], error=e)
                return
            finish(s, opts, out["start"], out["end"], result=out["result"])

        with ProgressBar(len(samples), description=spec.name) as bar:
            if executor is not None:
                _run_dask(executor, tasks, handle, bar)
            else:
                _run_processes(n_jobs, tasks, handle, bar)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _worker_settings() -> dict[str, Any]:
    return {"seed": settings.seed, "progress": False, "verbosity": settings.verbosity, "check_contract": settings.check_contract}


#: the local worker pool, kept between calls (spawning workers and importing the method
#: modules costs seconds): ``(n_workers, threads) -> ProcessPoolExecutor``
_POOL: dict[str, Any] = {}


def _pool(n_workers: int, threads: int):
    import atexit
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    key = (n_workers, threads)
    if _POOL.get("key") == key and _POOL.get("pool") is not None:
        return _POOL["pool"]
    shutdown_pool()
    saved_env = {k: os.environ.get(k) for k in _worker.thread_env(threads)}
    os.environ.update(_worker.thread_env(threads))  # inherited by the spawned workers before numpy loads
    try:
        pool = ProcessPoolExecutor(
            max_workers=n_workers, mp_context=mp.get_context("spawn"), initializer=_worker.init_worker,
            initargs=(threads, _worker_settings(), os.getpid()),
        )
        # spawn the workers now, while the thread limits are in the environment
        list(pool.map(_worker.ping, range(n_workers)))
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if not _POOL.get("atexit"):
        atexit.register(shutdown_pool)
        _POOL["atexit"] = True
    _POOL.update(key=key, pool=pool)
    return pool


def shutdown_pool() -> None:
    """Stop the local worker processes kept between calls (they are also stopped at exit)."""
    pool = _POOL.pop("pool", None)
    _POOL.pop("key", None)
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def _main_script_unguarded() -> str | None:
    """The path of the running script when it has no ``if __name__ == "__main__":`` guard.

    Worker processes are spawned: each re-runs the top level of the main script, so a script
    without the guard would start the whole analysis again in every worker.
    """
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py") or not os.path.isfile(path):
        return None  # interactive sessions, notebooks, `python -m` of an installed module
    try:
        with open(path, encoding="utf-8") as fh:
            src = fh.read()
    except (OSError, UnicodeDecodeError):
        return None
    return None if "__main__" in src else str(path)


def _run_processes(n_jobs: int, tasks: dict, handle, bar) -> None:
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    n_workers = min(n_jobs, len(tasks)) or 1
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    try:
        pool = _pool(n_workers, threads)
        futures = [pool.submit(_worker.run_task, {**task, "settings": _worker_settings()}) for task, _ in tasks.values()]
        for fut in as_completed(futures):
            handle(fut.result())
            bar.update()
    except BrokenProcessPool as e:
        shutdown_pool()
        from .._errors import ExperimatError

        raise ExperimatError(
            "the worker processes of n_jobs>1 died. When running a script, put the code that calls experimat under "
            "`if __name__ == \"__main__\":` (workers are spawned and re-run the script's top level); otherwise a "
            "worker ran out of memory: use fewer n_jobs."
        ) from e


def _run_dask(client: Any, tasks: dict, handle, bar) -> None:
    try:
        from distributed import as_completed
    except ImportError as e:
        from .._errors import MissingDependencyError

        raise MissingDependencyError("executor= needs dask.distributed; run `pip install 'experimat[dask]'`.") from e
    try:
        info = client.scheduler_info()
        workers = list(info.get("workers", {}).values())
        threads = max(1, min(int(w.get("nthreads", 1)) for w in workers)) if workers else 1
    except (AttributeError, KeyError, TypeError, ValueError):
        threads = 1
    settings_state = _worker_settings()
    futures = []
    for task, _ in tasks.values():
        task = {**task, "threads": threads, "settings": settings_state}
        futures.append(client.submit(_worker.run_task, task, pure=False, key=f"experimat-{task['sample']}-{time.time_ns()}"))
    for fut in as_completed(futures):
        handle(fut.result())
        bar.update()


def _run_joint(expm, modality, spec, options, kwargs, samples, recorder, *, save) -> Any:
    adatas = {s: expm._sample(modality, s) for s in samples}
    opts = dict(options)
    if spec.accepts_seed and kwargs.get("seed") is None:
        opts["seed"] = derive_seed(settings.seed, ",".join(samples))
    t0 = time.time()
    writes = spec.write_slots(opts)
    try:
        result, slots = _run_joint_declared(spec, adatas, opts, writes)
    except Exception as e:
        expm.add_history([recorder.record(s, opts, t0, time.time(), e) for s in samples])
        raise
    for s in samples:
        _slots.record_params(slots[s], opts.get("key_added"), opts)
        _slots.apply(adatas[s], writes, slots[s])
        expm.mark_modified(modality, s)
    if save:
        expm.save_samples([(modality, s) for s in samples])
        _store_model(expm, spec, opts, result, None)  # a fitted reference is stored once in the project and reused
    expm.add_history([recorder.record(s, opts, t0, time.time(), None) for s in samples])
    return result


def _store_model(expm, spec: MethodSpec, opts: dict[str, Any], result: Any, sample: str | None) -> None:
    """Store a model the method returned (the result itself, or ``result.attrs["model"]``) in ``models/``.

    Named ``<key_added>`` for a joint call and ``<key_added>.<sample>`` for a per-sample one.
    """
    from .._saved_model import SavedModel

    attrs = getattr(result, "attrs", None)
    model = result if isinstance(result, SavedModel) else (attrs.get("model") if isinstance(attrs, dict) else None)
    if not isinstance(model, SavedModel):
        return
    key = str(opts.get("key_added") or spec.name)
    name = key if sample is None else f"{key}.{sample}"
    expm.save_model(name, model)
    logger.info(f"{spec.name}: model stored as models/{name} (expm.load_model({name!r}))")


def _run_joint_declared(spec: MethodSpec, adatas: dict, opts: dict[str, Any], writes: list[str]) -> tuple[Any, dict]:
    """A joint method on copies of the samples; returns the result and each sample's declared slots."""
    works = {s: a.copy() for s, a in adatas.items()}
    for a in works.values():
        _slots.clear_outputs(a, writes, spec.slots(spec.reads, opts))
    check = settings.check_contract
    before = {s: _slots.digests(a) for s, a in works.items()} if check else {}
    shapes = {s: a.shape for s, a in works.items()}
    result = spec.func(works, **opts)
    for s, a in works.items():
        _slots.check_shape(a, shapes[s])
        if check:
            bad = _slots.undeclared_changes(before[s], _slots.digests(a), writes)
            if bad:
                from .._errors import ContractError

                raise ContractError(
                    f"{spec.name} changed slots it does not declare in sample {s!r}: {bad[:10]}; declared writes: "
                    f"{writes}. Add them to the method's writes= in register_method (or stop writing them)."
                )
    return result, {s: _slots.collect(a, writes) for s, a in works.items()}


def _run_integrated(expm, modality, spec, options, kwargs, *, save) -> Any:
    adata = expm._integrated_mod(modality)
    check_slots(spec, adata, options, sample="integrated", modality=modality)
    recorder = _Recorder(spec, modality, 1, None)
    opts = dict(options)
    if spec.accepts_seed and kwargs.get("seed") is None:
        opts["seed"] = derive_seed(settings.seed, "integrated")
    if spec.kind in ("view", "query"):
        if _is_plugin(spec):
            adata = expm.integrated_modality(modality)  # handed out: in-place edits are saved
        return spec.func({"integrated": adata}, **opts) if spec.kind == "view" else spec.func(adata, **opts)
    t0 = time.time()
    writes = spec.write_slots(opts)
    try:
        if spec.kind == "joint":
            result, slots = _run_joint_declared(spec, {"integrated": adata}, opts, writes)
            slots = slots["integrated"]
        else:
            result, slots = _slots.run_declared(
                spec.func, adata, opts, writes, reads=spec.slots(spec.reads, opts), name=spec.name, copy=True,
                check=settings.check_contract,
            )
    except Exception as e:
        expm.add_history([recorder.record("integrated", opts, t0, time.time(), e)])
        raise
    _slots.record_params(slots, opts.get("key_added"), opts)
    _slots.apply(adata, writes, slots)
    expm.mark_integrated_modified()
    if save:
        expm.save()
    expm.add_history([recorder.record("integrated", opts, t0, time.time(), None)])
    return result

