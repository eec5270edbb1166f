"""Exception and warning classes of experimat.

Every error a user can trigger derives from :class:`ExperimatError`, so that
``except em.ExperimatError`` catches exactly ours. Messages name the fix.
"""

from __future__ import annotations

from collections.abc import Iterable


def _listing(valid: Iterable[object], limit: int = 20) -> str:
    items = [repr(v) for v in valid]
    if len(items) > limit:
        items = [*items[:limit], f"... ({len(items) - limit} more)"]
    return ", ".join(items) if items else "(none)"


def _restore_error(cls: type, args: tuple, state: dict) -> BaseException:
    err = Exception.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class ExperimatError(Exception):
    """Base class of all experimat errors (picklable, so they cross process boundaries)."""

    def __reduce__(self):
        return (_restore_error, (type(self), self.args, self.__dict__))


class InvalidInputError(ExperimatError, ValueError):
    """Input data or arguments are invalid; the message says what to change."""


class KeyNotFoundError(ExperimatError, KeyError):
    """A named item (sample, layer, key, gene, ...) does not exist.

    The message lists the valid names.
    """

    def __init__(self, what: str, name: object, valid: Iterable[object], hint: str = ""):
        self.what, self.name, self.valid = what, name, list(valid)
        msg = f"{what} {name!r} not found; available: {_listing(self.valid)}."
        if hint:
            msg += f" {hint}"
        self.message = msg
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.message


class SampleNotFoundError(KeyNotFoundError):
    """An unknown sample name was given."""

    def __init__(self, name: object, valid: Iterable[object], modality: str | None = None):
        what = f"sample (modality {modality!r})" if modality else "sample"
        super().__init__(what, name, valid)


class MissingSlotError(ExperimatError, KeyError):
    """A method's input slot (layer, obsm key, var column, ...) is absent."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


class NotCountsError(InvalidInputError):
    """A counts-based method received data that are not non-negative integers."""


class ProjectError(ExperimatError):
    """The project folder is missing, corrupt, locked or of an unknown format."""


class ProjectLockedError(ProjectError):
    """Another process holds the project's writer lock."""


class CorruptFileError(ProjectError):
    """A file of the project is missing or does not match its checksum."""


class ProjectChangedError(ProjectError):
    """Another writer saved the project after it was opened; reopen it."""


class FormatVersionError(ProjectError):
    """The project folder was written by a newer (or unknown) format."""


class ReadOnlyError(ProjectError):
    """A write was attempted on an experiment opened with ``mode='r'``."""


class MissingDependencyError(ExperimatError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


class SampleRunError(ExperimatError):
    """One or more samples failed during a per-sample run.

    Attributes
    ----------
    errors
        ``{sample: exception}`` of every failed sample.
    results
        ``{sample: result}`` of the samples that succeeded (already stored).
    """

    def __init__(self, method: str, errors: dict[str, BaseException], results: dict[str, object]):
        self.method, self.errors, self.results = method, errors, results
        lines = [f"{method}: {len(errors)} of {len(errors) + len(results)} samples failed:"]
        for name, err in errors.items():
            lines.append(f"  - {name}: {type(err).__name__}: {err}")
        if results:
            lines.append(f"Results of the other samples were kept: {', '.join(results)}.")
        super().__init__("\n".join(lines))


class ContractError(ExperimatError):
    """A registered method broke its contract: it changed slots it does not declare in ``writes``.

    Raised only when ``em.settings.check_contract`` is on (the test suite turns it on).
    """


class ExperimatWarning(UserWarning):
    """Base class of experimat warnings."""
