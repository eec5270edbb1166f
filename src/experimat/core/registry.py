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

from .._compat import renamed_of, translate_renamed
from .._errors import InvalidInputError, MissingSlotError
from .._keys import MODALITIES, Modality

Kind = Literal["per_sample", "joint", "view", "query"]
SLOTS = ("X", "obs", "var", "obsm", "varm", "obsp", "varp", "layers", "uns")

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
    #: options consumed by ``setup`` (shown in the signature, never passed to ``func``)
    setup_options: tuple[inspect.Parameter, ...] = ()
    #: a family dispatcher: ``{choice of method=: name of the registered variant}``
    variants: dict[str, str] = field(default_factory=dict)
    #: options whose ``None`` default the method derives from others: ``{"key_added": "metagene.{target_domain}"}``
    derived: dict[str, str] = field(default_factory=dict)
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
        names = {p.name for p in out}
        extra = [p for p in self.setup_options if p.name not in names]
        if extra:
            var_kw = [p for p in out if p.kind == p.VAR_KEYWORD]
            out = [p for p in out if p.kind != p.VAR_KEYWORD] + extra + var_kw
        return out

    @property
    def default_variant(self) -> str:
        p = self.signature.parameters.get("method")
        if p is None or p.default is p.empty:
            return next(iter(self.variants))
        return p.default

    def resolve(self, kwargs: dict[str, Any], modality: str) -> tuple[MethodSpec, dict[str, Any]]:
        """For a family dispatcher: the chosen variant's spec and the options without ``method``.

        An unknown ``method=`` (or one not registered for ``modality``) fails here, before any
        work, listing the valid choices.
        """
        if not self.variants:
            return self, kwargs
        rest = dict(kwargs)
        method = rest.pop("method", self.default_variant)
        specs = _REGISTRY[modality]
        valid = [m for m, n in self.variants.items() if n in specs]
        if not isinstance(method, str) or method not in valid:
            raise InvalidInputError(f"{self.name}(): method={method!r} is not valid for {modality!r}; valid: {valid}.")
        return specs[self.variants[method]], rest

    @property
    def accepts_seed(self) -> bool:
        return "seed" in self.signature.parameters

    def bind(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Validate options and return them with defaults applied (no adata).

        Deprecated option names (:func:`experimat._compat.renamed_options`) are translated first.
        """
        kwargs = translate_renamed(self.name, renamed_of(self.func), kwargs, stacklevel=5)
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
        for name, template in self.derived.items():
            if out.get(name) is None:
                out[name] = template.format(**out)
        return out

    def slots(self, templates: Iterable[str], options: dict[str, Any]) -> list[str]:
        out = []
        for t in templates:
            try:
                slot = t.format(**options)
            except (KeyError, IndexError) as e:
                raise InvalidInputError(f"{self.name}: slot template {t!r} names an unknown option ({e}).") from e
            if slot == "X":
                out.append(slot)
                continue
            key = slot.split("/", 1)[-1]
            if key in ("None", "X") or key.startswith("None."):
                continue  # an unset option (e.g. layer=None: use X) names no slot
            out.append(slot)
        return out

    def output_keys(self) -> list[str]:
        """Options that name output slots: those used in ``writes`` templates, plus ``key_added``."""
        import string

        names = {f for t in self.writes for _, f, _, _ in string.Formatter().parse(t) if f}
        names |= {p.name for p in self.options if p.name == "key_added" or p.name.endswith("_key_added")}
        return sorted(names)

    def check_output_keys(self, options: dict[str, Any]) -> None:
        """Refuse output keys that cannot be stored: empty, containing ``/``, or starting with ``.``."""
        for name in self.output_keys():
            value = options.get(name)
            if value is None:
                continue  # an unset optional output (e.g. refined_key_added=None) writes nothing
            if not isinstance(value, str) or not value.strip() or "/" in value or value.startswith(".") or any(
                ord(c) < 32 for c in value
            ):
                raise InvalidInputError(
                    f"{self.name}(): {name}={value!r} cannot name a stored slot; use a non-empty string without '/', "
                    f"control characters or a leading '.', e.g. {name}={self.name.split('_')[-1]!r}."
                )

    def write_slots(self, options: dict[str, Any]) -> list[str]:
        """The concrete slot patterns this call writes (its ``writes`` formatted with ``options``)."""
        return self.slots(self.writes, options)


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
    setup_options: Iterable[inspect.Parameter] = (),
    variants: dict[str, str] | None = None,
    derived: dict[str, str] | None = None,
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
    setup_options
        Keyword-only parameters that only ``setup`` consumes (shown in the accessor's signature).
    variants
        Makes ``func`` a family dispatcher: ``{value of method=: name of a registered method}``.
        The accessor checks ``method=`` and the chosen variant's options before any work and then
        runs the variant (its reads, writes, seed and record); ``func`` itself is not called.
    derived
        Options whose ``None`` default the method derives from other options, as templates
        (``{"key_added": "metagene.{target_domain}"}``): the runner fills them in, so the declared
        slots and the recorded parameters name the real key.

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
        func=func, name=name or func.__name__, modalities=mods, reads=tuple(reads), writes=tuple(writes), kind=kind,
        setup=setup, setup_options=tuple(setup_options), variants=dict(variants or {}),
        derived=dict(derived or {}),
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


#: modality -> deprecated method name -> the registered method that replaced it
_ALIASES: dict[str, dict[str, str]] = {m: {} for m in MODALITIES}


def register_method_alias(old_name: str, new_name: str) -> None:
    """Keep a renamed method reachable on the accessors under ``old_name`` (with a FutureWarning).

    Registered for every modality that has ``new_name``; the old name is not listed in
    ``expm.<modality>.methods`` and runs (and is recorded as) the new method.
    """
    mods = [m for m in MODALITIES if new_name in _REGISTRY[m]]
    if not mods:
        raise InvalidInputError(f"register_method_alias: no registered method {new_name!r}.")
    for m in mods:
        _ALIASES[m][old_name] = new_name


def method_alias(modality: str, name: str) -> str | None:
    """The current name of the deprecated method ``name`` (``None`` when it is not an alias)."""
    return _ALIASES[Modality(modality).value].get(name)


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
    if slot == "X" or where == "X":
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
