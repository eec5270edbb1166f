"""Modality accessors: ``expm.rna``, ``expm.spatial_bin``, ``expm.spatial_cell``."""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from typing import TYPE_CHECKING, Any, Literal

from .._keys import Modality
from .describe import describe_anndata
from .registry import MethodSpec, load_plugins, method_alias, methods_for

if TYPE_CHECKING:
    from anndata import AnnData

    from .experiment import Experiment

_RUNNER_DOC = """
Runner options (added by experimat)
-----------------------------------
run_on_samples
    ``True`` or ``"all"``: every sample of the modality; a name or a list of names: exactly
    those (unknown names raise :class:`~experimat.SampleNotFoundError`); ``None``: the
    integrated data (after ``expm.merge``). Returns ``{sample: result}`` in sheet order.
    When samples fail, the others' results are kept (and saved); then one
    :class:`~experimat.SampleRunError` names every failure (a run of a single sample raises
    that sample's own exception).
n_jobs
    Number of local worker processes (default ``em.settings.n_jobs``).
executor
    A ``dask.distributed.Client``: run the samples on that cluster.
save
    Save each finished sample right away (default: True when the project is opened ``r+``).
resume
    Skip samples whose history records a finished run with the same parameters.
"""


_VIEW_DOC = """
Runner options (added by experimat)
-----------------------------------
run_on_samples
    ``True`` or ``"all"``: every sample of the modality; a name or a list of names: exactly
    those; ``None``: the integrated data (after ``expm.merge``).
save
    A file name (``"fig.png"``, ``"fig.pdf"``, ...): the figure is also written there, the
    format taken from the extension (matplotlib's ``savefig``, ``bbox_inches="tight"``). Nothing
    is written into the project: plots never change it.
"""

_QUERY_DOC = """
Runner options (added by experimat)
-----------------------------------
run_on_samples
    ``True`` or ``"all"``: every sample of the modality (returns ``{sample: result}``); a name
    or a list of names: exactly those; ``None``: the integrated data. Read-only: nothing is
    saved or recorded.
"""


def _bind_readonly(expm: Experiment, modality: str, spec: MethodSpec):
    """Views (figures) and queries read the samples and change nothing, so the runner's
    execution options (``n_jobs``, ``executor``, ``resume``, the project ``save``) do not apply;
    a view's ``save`` is the figure's file name, as in scanpy."""
    from .runner import run_method

    view = spec.kind == "view"

    @functools.wraps(spec.func)
    def method(*args: Any, run_on_samples: Any = True, save: Any = None, **kwargs: Any) -> Any:
        from .._errors import InvalidInputError

        if args:
            raise InvalidInputError(f"{spec.name}() takes keyword arguments only (got {len(args)} positional).")
        if not view and save is not None:
            raise InvalidInputError(f"{spec.name}() reads the samples and saves nothing; drop save=.")
        if view and save is not None and not isinstance(save, str | os.PathLike):
            raise InvalidInputError(f"save= is the file name of the figure (e.g. save='fig.png'), not {save!r}.")
        result = run_method(expm, modality, spec, kwargs, run_on_samples=run_on_samples, n_jobs=None,
                            executor=None, save=False, resume=False)
        if save is not None:
            if not hasattr(result, "savefig"):
                raise InvalidInputError(f"{spec.name}() returns {type(result).__name__}, not a figure; save= writes figures.")
            result.savefig(os.fspath(save), bbox_inches="tight")
        return result

    kw = inspect.Parameter.KEYWORD_ONLY
    params = [p for p in spec.options if p.kind == p.KEYWORD_ONLY]
    params.append(inspect.Parameter("run_on_samples", kw, default=True, annotation="bool | str | list[str] | None"))
    if view:
        params.append(inspect.Parameter("save", kw, default=None, annotation="str | os.PathLike | None"))
    var_kw = [p for p in spec.options if p.kind == p.VAR_KEYWORD]
    method.__signature__ = inspect.Signature(params + var_kw, return_annotation=spec.signature.return_annotation)
    method.__doc__ = inspect.cleandoc(spec.func.__doc__ or "") + "\n" + (_VIEW_DOC if view else _QUERY_DOC)
    method.__name__ = spec.name
    del method.__wrapped__
    return method


def _runner_parameters() -> list[inspect.Parameter]:
    kw = inspect.Parameter.KEYWORD_ONLY
    return [
        inspect.Parameter("run_on_samples", kw, default=True, annotation="bool | str | list[str] | None"),
        inspect.Parameter("n_jobs", kw, default=None, annotation="int | None"),
        inspect.Parameter("executor", kw, default=None, annotation="Any"),
        inspect.Parameter("save", kw, default=None, annotation="bool | None"),
        inspect.Parameter("resume", kw, default=False, annotation="bool"),
    ]


def _variants_doc(name: str, variants: dict[str, str], specs: dict[str, MethodSpec]) -> str:
    lines = ["", "Variants (the options of each method=, checked before any work)", "-" * 62]
    for choice, target in variants.items():
        opts = [p for p in specs[target].options if p.kind == p.KEYWORD_ONLY]
        sig = inspect.Signature(opts)
        lines.append(f"{name}(method={choice!r}, ...) runs {target}{sig}")
    return "\n".join(lines) + "\n"


class ModalityAccessor:
    """The samples of one modality and the methods registered for it.

    ``expm.spatial_bin[sample]`` returns the AnnData; ``expm.spatial_bin.<method>(...)`` runs
    a registered method per sample.
    """

    def __init__(self, experiment: Experiment, modality: str) -> None:
        load_plugins()
        self._expm = experiment
        self.modality = Modality(modality).value

    # -- samples -------------------------------------------------------------------------------
    @property
    def samples(self) -> list[str]:
        """Sample names of this modality, in sample-sheet order."""
        return self._expm.table.samples(self.modality)

    def __getitem__(self, sample: str) -> AnnData:
        return self._expm.get_sample(self.modality, sample)

    def __setitem__(self, sample: str, adata: AnnData) -> None:
        self._expm.set_sample(self.modality, sample, adata)

    def __contains__(self, sample: object) -> bool:
        return sample in self.samples

    def __iter__(self):
        return iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def items(self):
        for s in self.samples:
            yield s, self[s]

    def view(self, sample: str) -> None:
        """Print the slots of one sample (obs/var/layers/obsm/varm/obsp/uns) with dtypes and shapes."""
        print(describe_anndata(self._expm._sample(self.modality, sample), title=f"{self.modality} sample {sample!r}"))

    # -- methods -------------------------------------------------------------------------------
    @property
    def methods(self) -> list[str]:
        """Names of the methods registered for this modality."""
        return sorted(methods_for(self.modality))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        specs = methods_for(self.modality)
        current = method_alias(self.modality, name)
        if name not in specs and current in specs:
            warnings.warn(f"{name}() is a deprecated alias of {current}(); call {current}() instead.",
                          FutureWarning, stacklevel=2)
            return self._bind(specs[current])
        if name not in specs:
            import difflib

            close = difflib.get_close_matches(name, list(specs), n=5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise AttributeError(f"no method {name!r} for modality {self.modality!r}.{hint} Available: {sorted(specs)}")
        return self._bind(specs[name])

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *methods_for(self.modality)})

    def _bind(self, spec: MethodSpec):
        from .runner import run_method

        expm, modality = self._expm, self.modality

        @functools.wraps(spec.func)
        def method(*args: Any, run_on_samples: Any = True, n_jobs: int | None = None, executor: Any = None,
                   save: bool | None = None, resume: bool = False, **kwargs: Any) -> Any:
            if args:
                from .._errors import InvalidInputError

                raise InvalidInputError(f"{spec.name}() takes keyword arguments only (got {len(args)} positional).")
            return run_method(expm, modality, spec, kwargs, run_on_samples=run_on_samples, n_jobs=n_jobs,
                              executor=executor, save=save, resume=resume)

        if spec.kind in ("view", "query"):
            return _bind_readonly(expm, modality, spec)
        params = [p for p in spec.options if p.kind == p.KEYWORD_ONLY]
        var_kw = [p for p in spec.options if p.kind == p.VAR_KEYWORD]
        doc = inspect.cleandoc(spec.func.__doc__ or "")
        if spec.variants:
            variants = {m: n for m, n in spec.variants.items() if n in methods_for(modality)}
            choice = Literal[tuple(variants)]  # type: ignore[valid-type]
            params = [inspect.Parameter("method", inspect.Parameter.KEYWORD_ONLY, default=spec.default_variant,
                                        annotation=choice)]
            params += [p for p in spec.options if p.kind == p.KEYWORD_ONLY and p.name not in ("method", "seed")]
            var_kw = [inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD, annotation="Any")]
            doc += _variants_doc(spec.name, variants, methods_for(modality))
        params += _runner_parameters()
        method.__signature__ = inspect.Signature(params + var_kw, return_annotation="dict[str, Any]")
        method.__doc__ = doc + "\n" + _RUNNER_DOC
        method.__name__ = spec.name
        del method.__wrapped__  # inspect.signature must show the synthesised signature
        return method

    def __repr__(self) -> str:
        return f"<{self.modality} accessor: {len(self.samples)} samples; methods: {', '.join(self.methods) or '(none)'}>"
