"""Deprecated names kept working.

Option names were made to explain themselves (``*_key`` for inputs, ``key_added`` for outputs)
and some functions were renamed; the old names stay accepted, with a :class:`FutureWarning`,
so notebooks written against earlier releases keep running.

- :func:`renamed_options` decorates a function whose options were renamed. The old names are
  translated by the wrapper when the function is called directly and by the runner
  (:meth:`experimat.core.registry.MethodSpec.bind`) when it is called through an accessor, so
  ``help()`` shows only the new names.
- :func:`deprecated_alias` gives a renamed function its old name.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from ._errors import InvalidInputError

F = TypeVar("F", bound=Callable[..., Any])

#: attribute holding ``{old option name: new option name}`` on a decorated function
RENAMED_ATTR = "__experimat_renamed__"


def translate_renamed(name: str, renames: dict[str, str], kwargs: dict[str, Any], *, stacklevel: int = 3) -> dict[str, Any]:
    """``kwargs`` with deprecated option names replaced by their new names (a new dict).

    Warns once per old name used; passing both the old and the new name is an error.
    """
    if not renames or not renames.keys() & kwargs.keys():
        return kwargs
    out = dict(kwargs)
    for old, new in renames.items():
        if old not in out:
            continue
        if new in out:
            raise InvalidInputError(f"{name}() got both {old}= (deprecated) and {new}=; pass only {new}=.")
        warnings.warn(f"{name}(): option {old}= is deprecated and will be removed; use {new}= instead.",
                      FutureWarning, stacklevel=stacklevel)
        out[new] = out.pop(old)
    return out


def renamed_options(**renames: str) -> Callable[[F], F]:
    """Accept old option names as deprecated aliases: ``@renamed_options(key="svg_key")``."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **translate_renamed(func.__name__, merged, kwargs))

        merged = {**getattr(func, RENAMED_ATTR, {}), **renames}
        setattr(wrapper, RENAMED_ATTR, merged)
        return wrapper  # type: ignore[return-value]

    return decorate


def renamed_of(func: Callable[..., Any]) -> dict[str, str]:
    """The deprecated option names of ``func`` (``{}`` when none)."""
    return dict(getattr(func, RENAMED_ATTR, {}))


def deprecated_alias(func: F, old_name: str) -> F:
    """``func`` under its former name ``old_name``, warning on each call."""

    @functools.wraps(func)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(f"{old_name}() is a deprecated alias of {func.__name__}(); call {func.__name__}() instead.",
                      FutureWarning, stacklevel=2)
        return func(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old_name
    alias.__doc__ = f"Deprecated alias of :func:`{func.__module__}.{func.__name__}`.\n\n{func.__doc__ or ''}"
    return alias  # type: ignore[return-value]


def positional_options(*names: str) -> Callable[[F], F]:
    """Keep old positional calls working after options became keyword-only: ``@positional_options("reference", "ct")``.

    ``f(adata, ref, "Astro")`` is translated to ``f(adata, reference=ref, ct="Astro")`` with a
    :class:`FutureWarning`; the signature (``help()``, the accessors) shows the keyword-only options.
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(adata: Any, *args: Any, **kwargs: Any) -> Any:
            if args:
                if len(args) > len(names):
                    raise InvalidInputError(
                        f"{func.__name__}() takes the data and at most {len(names)} positional options "
                        f"({', '.join(names)}); pass the others by name."
                    )
                given = dict(zip(names, args, strict=False))
                both = sorted(given.keys() & kwargs.keys())
                if both:
                    raise InvalidInputError(f"{func.__name__}() got {both} both by position and by name.")
                warnings.warn(
                    f"{func.__name__}(): passing {', '.join(given)} by position is deprecated; pass "
                    + ", ".join(f"{n}=..." for n in given) + " by name.",
                    FutureWarning,
                    stacklevel=2,
                )
                kwargs.update(given)
            return func(adata, **kwargs)

        return wrapper  # type: ignore[return-value]  (functools.wraps keeps the markers in func.__dict__)

    return decorate
