"""The method contract at work: collect a method's declared output slots and apply them.

A registered method declares the slots it writes as patterns such as ``"var/moran.*"``,
``"obs/spagcn.domain"`` or ``"uns/moran"`` (its ``writes`` templates formatted with the call's
options). Every run — serial, local worker processes or Dask — goes through the same two steps:

1. :func:`run_declared` runs the method on a private copy of the sample and returns the
   current content of every slot that matches a declared pattern (:func:`collect`), by
   value, so in-place edits are included;
2. :func:`apply` makes the parent's sample hold exactly that content for the declared
   patterns: entries are set, and entries matching a pattern that the method no longer
   produced are removed.

Nothing outside the declared slots reaches the saved sample. With
``em.settings.check_contract`` (the test suite turns it on) a change outside the declared
slots is an error naming the slot, found by comparing exact per-slot digests before and after.
"""

from __future__ import annotations

import fnmatch
import hashlib
from typing import Any

_MAPPINGS = ("obsm", "varm", "obsp", "varp", "layers")


def _entries(adata: Any) -> dict[str, Any]:
    """Every concrete slot of ``adata`` as ``{"obs/col": value, ...}`` (values not copied)."""
    out: dict[str, Any] = {}
    if adata.X is not None:
        out["X"] = adata.X
    for where in ("obs", "var"):
        df = getattr(adata, where)
        for c in df.columns:
            out[f"{where}/{c}"] = df[c]
    for where in _MAPPINGS:
        mapping = getattr(adata, where)
        for k in mapping.keys():
            out[f"{where}/{k}"] = mapping[k]
    for k, v in adata.uns.items():
        out[f"uns/{k}"] = v
    return out


def matches(slot: str, patterns: list[str]) -> bool:
    return any(slot == p or fnmatch.fnmatchcase(slot, p) for p in patterns)


def collect(adata: Any, patterns: list[str]) -> dict[str, Any]:
    """The content of the slots of ``adata`` that match the declared ``patterns``."""
    out: dict[str, Any] = {}
    for slot, value in _entries(adata).items():
        if matches(slot, patterns):
            out[slot] = value.array if slot.startswith(("obs/", "var/")) else value
    return out


def _delete(adata: Any, slot: str) -> None:
    where, _, key = slot.partition("/")
    if where in ("obs", "var"):
        getattr(adata, where).drop(columns=[key], inplace=True)
    elif where == "uns":
        del adata.uns[key]
    else:
        del getattr(adata, where)[key]


def clear_outputs(adata: Any, patterns: list[str], reads: list[str]) -> None:
    """Remove a previous run's outputs (slots matching ``patterns`` that are not also inputs).

    A run into an existing key then replaces the old results completely (no stale columns
    of a run with other parameters survive).
    """
    for slot in list(_entries(adata)):
        if slot != "X" and matches(slot, patterns) and not matches(slot, reads):
            _delete(adata, slot)


_SUBSET = "__subset__"


def _apply_subset(adata: Any, subset: dict[str, Any]) -> None:
    """Subset ``adata`` in place to the kept ``obs``/``var`` names of a method marked ``subsets_sample``."""
    from .._errors import ExperimatError

    for axis, names in subset.items():
        index = adata.obs_names if axis == "obs" else adata.var_names
        if len(names) == len(index) and (index == names).all():
            continue
        pos = index.get_indexer(names)
        if (pos < 0).any() or not index.is_unique:
            raise ExperimatError(f"cannot apply the method's subset of {axis}_names: names are missing or not unique.")
        if axis == "obs":
            adata._inplace_subset_obs(pos)
        else:
            adata._inplace_subset_var(pos)


def apply(adata: Any, patterns: list[str], payload: dict[str, Any]) -> None:
    """Make the declared slots of ``adata`` hold exactly ``payload`` (see :func:`collect`).

    For a method that removes observations or genes (``subsets_sample``), the parent's sample is
    first subset to the kept names, then the declared slots are set.
    """
    payload = dict(payload)
    subset = payload.pop(_SUBSET, None)
    if subset is not None:
        _apply_subset(adata, subset)
    for slot in list(_entries(adata)):
        if slot != "X" and matches(slot, patterns) and slot not in payload:
            _delete(adata, slot)
    for slot, value in payload.items():
        if slot == "X":
            adata.X = value
            continue
        where, _, key = slot.partition("/")
        if where in ("obs", "var"):
            getattr(adata, where)[key] = value
        elif where == "uns":
            adata.uns[key] = value
        else:
            getattr(adata, where)[key] = value


def record_params(payload: dict[str, Any], key_added: Any, params: dict[str, Any]) -> None:
    """Make ``uns[key_added]["params"]`` of a payload hold the call's bound options (the seed used included).

    The runner binds the options against the method's signature and fills in the per-sample
    seed, so this record is complete even where a method's own record is not.
    """
    from ..methods._checks import to_json_safe

    slot = f"uns/{key_added}"
    entry = payload.get(slot)
    if not isinstance(key_added, str) or not isinstance(entry, dict):
        return
    old = entry.get("params")
    payload[slot] = {**entry, "params": {**(old if isinstance(old, dict) else {}), **to_json_safe(dict(params))}}


def _digest(value: Any) -> str:
    from ._fingerprint import _update_obj, _update_values

    h = hashlib.blake2b(digest_size=16)
    if hasattr(value, "dtype") and hasattr(value, "index") and not hasattr(value, "columns"):  # a Series
        h.update(str(value.dtype).encode())
        _update_values(h, value.array)
    else:
        _update_obj(h, value)
    return h.hexdigest()


def digests(adata: Any) -> dict[str, str]:
    """Exact per-slot content digests (for the contract check in the test suite)."""
    out = {slot: _digest(v) for slot, v in _entries(adata).items()}
    out["shape"] = str(adata.shape)
    out["obs_names"] = _digest(adata.obs_names.to_series())
    out["var_names"] = _digest(adata.var_names.to_series())
    out["raw"] = "none" if adata.raw is None else _digest(adata.raw.X)
    return out


def undeclared_changes(before: dict[str, str], after: dict[str, str], patterns: list[str]) -> list[str]:
    """Slots added, changed or removed outside the declared ``patterns``."""
    changed = [s for s in sorted(set(before) | set(after)) if before.get(s) != after.get(s)]
    return [s for s in changed if not matches(s, patterns)]


def check_shape(adata: Any, shape: tuple[int, int]) -> None:
    from .._errors import ExperimatError

    if adata.shape != shape:
        raise ExperimatError(
            f"the method changed the shape of the data {shape} -> {adata.shape}; methods run per sample must not "
            "subset observations or variables (return a filtered copy instead)."
        )


def run_declared(
    func: Any, adata: Any, options: dict[str, Any], patterns: list[str], *, reads: list[str], name: str, copy: bool,
    check: bool,
) -> tuple[Any, dict[str, Any]]:
    """Run ``func(adata, **options)`` and return ``(result, declared slots)``.

    The previous outputs are cleared first (:func:`clear_outputs`); ``copy=True`` runs on a copy
    (the parent's sample is only changed through :func:`apply`); ``check=True`` raises
    :class:`~experimat.ContractError` for a change outside ``patterns``.
    """
    work = adata.copy() if copy else adata
    subsets = getattr(func, "__experimat_subsets__", None) is not None  # a declared whole-sample replacement
    if not subsets:  # a filter keeps (a subset of) every slot: nothing to clear
        clear_outputs(work, patterns, reads)
    shape = work.shape
    before = digests(work) if check else None
    result = func(work, **options)
    if not subsets:
        check_shape(work, shape)
    if check:
        allowed = [*patterns, "shape", "obs_names", "var_names", "raw"] if subsets else patterns
        bad = undeclared_changes(before, digests(work), allowed)
        if bad:
            from .._errors import ContractError

            raise ContractError(
                f"{name} changed slots it does not declare: {bad[:10]}; declared writes: {patterns}. Add them to the "
                "method's writes= in register_method (or stop writing them)."
            )
    out = collect(work, patterns)
    if subsets:
        out[_SUBSET] = {"obs": work.obs_names.to_numpy(), "var": work.var_names.to_numpy()}
    return result, out
