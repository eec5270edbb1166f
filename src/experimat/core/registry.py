"""Registration of pure methods onto modality accessors.

``register_method(func, modalities=..., reads=..., writes=...)`` turns
``func(adata, *, option=..., key_added=...)`` into ``expm.<modality>.<name>(...)`` whose
signature is the function's own options plus keyword-only ``run_on_samples``, ``n_jobs``,
``executor``, ``save`` and ``resume``.

Slots are declared as ``"<slot>/<key template>"`` with ``slot`` one of ``X, obs, var, obsm,
varm, obsp, layers, uns``; templates are formatted with the call's bound arguments (defaults
applied), e.g. ``"layers/{layer}"`` or ``"var/{key_added}.*"``. Missing inputs fail before any
work, naming the slot and the registered methods that produce it.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from .._errors import InvalidInputError, MissingSlotError
from .._keys import MODALITIES, Modality

Kind = Literal["per_sample", "joint", "view", "query"]
SLOTS = ("X", "obs", "var", "obsm", "varm", "obsp", "layers", "uns")

#: slots produced outside registered methods (readers, users)
EXTERNAL_PRODUCERS = {
    "layers/counts": "the em.io readers (raw counts are stored there when a sample is created)",
    "obsm/spatial": "the em.io readers (spot coordinates)",
    "obs/sample": "the Experiment (sample columns)",
}

RUNNER_PARAMS = ("run_on_samples", "n_jobs", "executor", "save", "resume")


@dataclass
class MethodSpec:
    """A registered method."""

    func: Callable[..., Any]
    name: str
    modalities: tuple[str, ...]
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    kind: Kind = "per_sample"
    setup: Callable[..., dict[str, Any]] | None = None
    signature: inspect.Signature = field(init=False)

    def __post_init__(self) -> None:
        self.signature = inspect.signature(self.func)
        params = list(self.signature.parameters.values())
        if not params:
            raise InvalidInputError(f"{self.name}: a method takes the AnnData (or dict of AnnData) as first argument.")
        for p in params[1:]:
            optional_positional = p.kind == p.POSITIONAL_OR_KEYWORD and p.default is not p.empty
            if p.kind not in (p.KEYWORD_ONLY, p.VAR_KEYWORD) and not optional_positional:
                raise InvalidInputError(
                    f"{self.name}: option {p.name!r} must be keyword-only (write `def f(adata, *, {p.name}=...)`)."
                )
            if p.name in RUNNER_PARAMS:
                raise InvalidInputError(f"{self.name}: option name {p.name!r} is reserved for the runner.")

    @property
    def options(self) -> list[inspect.Parameter]:
        """The method's options, all keyword-only for the accessor (``adata`` excluded)."""
        out = []
        for p in list(self.signature.parameters.values())[1:]:
            out.append(p.replace(kind=p.KEYWORD_ONLY) if p.kind == p.POSITIONAL_OR_KEYWORD else p)
        return out

    @property
    def accepts_seed(self) -> bool:
        return "seed" in self.signature.parameters

    def bind(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Validate options and return them with defaults applied (no adata)."""
        known = {p.name for p in self.options if p.kind == p.KEYWORD_ONLY}
        has_var_kw = any(p.kind == p.VAR_KEYWORD for p in self.options)
        unknown = set(kwargs) - known
        if unknown and not has_var_kw:
            raise InvalidInputError(
                f"{self.name}() got unknown options {sorted(unknown)}; valid options: {sorted(known)} "
                f"plus {list(RUNNER_PARAMS)}."
            )
        out = {p.name: p.default for p in self.options if p.kind == p.KEYWORD_ONLY and p.default is not p.empty}
        out.update(kwargs)
        missing = [p.name for p in self.options if p.kind == p.KEYWORD_ONLY and p.name not in out]
        if missing:
            raise InvalidInputError(f"{self.name}() is missing required options {missing}.")
        return out

    def slots(self, templates: Iterable[str], options: dict[str, Any]) -> list[str]:
        out = []
        for t in templates:
            try:
                slot = t.format(**options)
            except (KeyError, IndexError) as e:
                raise InvalidInputError(f"{self.name}: slot template {t!r} names an unknown option ({e}).") from e
            key = slot.split("/", 1)[-1]
            if key in ("None", "X") or key.startswith("None."):
                continue  # an unset option (e.g. layer=None: use X) names no slot
            out.append(slot)
        return out


#: modality -> method name -> spec
_REGISTRY: dict[str, dict[str, MethodSpec]] = {m: {} for m in MODALITIES}


def register_method(
    func: Callable[..., Any],
    *,
    modalities: Iterable[str] = ("spatial-bin", "spatial-cell"),
    name: str | None = None,
    reads: Iterable[str] = (),
    writes: Iterable[str] = (),
    kind: Kind = "per_sample",
    setup: Callable[..., dict[str, Any]] | None = None,
) -> Callable[..., Any]:
    """Bind a pure method to modality accessors.

    Parameters
    ----------
    func
        ``func(adata, *, ...)`` (``kind="per_sample"``) or ``func(adatas: dict, *, ...)``
        (``kind="joint"``: one call over all chosen samples, e.g. integration; ``kind="view"``:
        read-only over all chosen samples, e.g. plots; ``kind="query"``: read-only per sample,
        e.g. a marker table; nothing is saved or recorded for views and queries).
    modalities
        Modalities whose accessors get the method.
    name
        Accessor attribute name (default: ``func.__name__``).
    reads, writes
        Slot templates such as ``"layers/{layer}"``, ``"obsm/{spatial_key}"``, ``"var/{key_added}.*"``.
    setup
        Optional ``setup(experiment, modality, options) -> options`` run once before the
        per-sample calls: the cross-sample step (e.g. fitting a reference once and reusing it).

    Returns
    -------
    ``func`` unchanged, so this can be used as a decorator.

    Examples
    --------
    >>> def smooth(adata, *, layer="counts", key_added="smooth"): ...  # doctest: +SKIP
    >>> em.register_method(smooth, modalities=["spatial-bin"], reads=["layers/{layer}"],
    ...                    writes=["layers/{key_added}"])  # doctest: +SKIP
    """
    if kind not in ("per_sample", "joint", "view", "query"):
        raise InvalidInputError(f"kind must be 'per_sample', 'joint', 'view' or 'query', not {kind!r}.")
    mods = tuple(Modality(m).value for m in modalities)
    for t in (*reads, *writes):
        if t.split("/", 1)[0] not in SLOTS:
            raise InvalidInputError(f"slot {t!r} must start with one of {SLOTS} followed by '/'.")
    spec = MethodSpec(
        func=func, name=name or func.__name__, modalities=mods, reads=tuple(reads), writes=tuple(writes), kind=kind, setup=setup
    )
    for m in mods:
        _REGISTRY[m][spec.name] = spec
    return func


#: modules whose import registers methods: the built-in bindings, then installed plugins
#: (packages that declare an ``experimat.methods`` entry point)
BUILTIN_PLUGINS = ("experimat.modalities",)
_plugins_loaded = False


def load_plugins() -> None:
    """Import the modules that register methods (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import importlib
    from importlib.metadata import entry_points

    for mod in BUILTIN_PLUGINS:
        importlib.import_module(mod)
    for ep in entry_points(group="experimat.methods"):
        ep.load()


def methods_for(modality: str) -> dict[str, MethodSpec]:
    return _REGISTRY[Modality(modality).value]


def producers_of(slot: str, modality: str) -> list[str]:
    """Names of registered methods (and external producers) that write ``slot``."""
    out = []
    for spec in _REGISTRY[modality].values():
        defaults = {p.name: p.default for p in spec.options if p.default is not p.empty}
        for t in spec.writes:
            try:
                pattern = t.format(**defaults)
            except (KeyError, IndexError):
                continue
            if fnmatch.fnmatchcase(slot, pattern) or (fnmatch.fnmatchcase(slot, t.split("{")[0] + "*") and "{" in t):
                out.append(f"{spec.name}()")
                break
    if slot in EXTERNAL_PRODUCERS:
        out.append(EXTERNAL_PRODUCERS[slot])
    return out


def has_slot(adata: Any, slot: str) -> bool:
    where, _, key = slot.partition("/")
    if where == "X":
        return adata.X is not None
    if where in ("obs", "var"):
        cols = getattr(adata, where).columns
        return any(fnmatch.fnmatchcase(str(c), key) for c in cols) if "*" in key else key in cols
    mapping = getattr(adata, where)
    keys = list(mapping.keys())
    return any(fnmatch.fnmatchcase(str(k), key) for k in keys) if "*" in key else key in keys


def check_slots(spec: MethodSpec, adata: Any, options: dict[str, Any], *, sample: str, modality: str) -> None:
    """Raise :class:`MissingSlotError` for the first missing input slot, naming its producers."""
    for slot in spec.slots(spec.reads, options):
        if has_slot(adata, slot):
            continue
        where, _, key = slot.partition("/")
        present = list(getattr(adata, where).columns if where in ("obs", "var") else getattr(adata, where).keys())
        producers = producers_of(slot, modality)
        made_by = f" It is produced by: {', '.join(producers)}." if producers else ""
        raise MissingSlotError(
            f"{spec.name}: sample {sample!r} lacks {where}[{key!r}] (available {where}: {present[:20]}).{made_by}"
        )
