"""One logger with timings, and one progress helper (rich) that can be silenced.

Usage, as in scanpy::

    from experimat._logging import logger, timed, progress

    start = logger.info("computing SVGs")
    ...
    logger.info("finished", time=start)

    for item in progress(items, description="samples"):
        ...
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

_LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}


class _TimedLogger:
    """Thin wrapper of :mod:`logging` whose calls return a start time and accept ``time=``."""

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)
        if not self._log.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            self._log.addHandler(handler)
            self._log.propagate = False
        self._log.setLevel(logging.INFO)

    @property
    def logger(self) -> logging.Logger:
        return self._log

    def _emit(self, level: int, msg: str, time_: float | None) -> float:
        now = time.perf_counter()
        if time_ is not None:
            msg = f"{msg} ({now - time_:.2f} s)"
        self._log.log(level, msg)
        return now

    def debug(self, msg: str, *, time: float | None = None) -> float:
        return self._emit(logging.DEBUG, msg, time)

    def info(self, msg: str, *, time: float | None = None) -> float:
        return self._emit(logging.INFO, msg, time)

    def warning(self, msg: str, *, time: float | None = None) -> float:
        return self._emit(logging.WARNING, msg, time)

    def error(self, msg: str, *, time: float | None = None) -> float:
        return self._emit(logging.ERROR, msg, time)

    def is_enabled(self, level: str) -> bool:
        return self._log.isEnabledFor(_LEVELS[level])


logger = _TimedLogger("experimat")


def _set_level(level: str) -> None:
    logger.logger.setLevel(_LEVELS[level])


#: whether progress bars are shown; set by ``em.settings.progress`` (settings push into logging, never the reverse)
_PROGRESS = {"on": True}


def _set_progress(on: bool) -> None:
    _PROGRESS["on"] = bool(on)


@contextmanager
def timed(msg: str, level: str = "info"):
    """Log ``msg`` on entry and ``msg: done (x s)`` on exit."""
    emit = getattr(logger, level)
    start = emit(msg)
    yield
    emit(f"{msg}: done", time=start)


def progress(
    items: Iterable[T], *, description: str = "", total: int | None = None, disable: bool | None = None
) -> Iterator[T]:
    """Iterate with a rich progress bar unless ``em.settings.progress`` is False."""
    if disable is None:
        disable = not _PROGRESS["on"]
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if disable or (not sys.stderr.isatty() and not _in_notebook()):
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=description, total=total, transient=True)


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


class ProgressBar:
    """A manually advanced progress bar (e.g. over epochs); a no-op when disabled."""

    def __init__(self, total: int, description: str = "", *, disable: bool | None = None) -> None:
        if disable is None:
            disable = not _PROGRESS["on"] or (not sys.stderr.isatty() and not _in_notebook())
        self._bar = None
        if not disable:
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._task = self._bar.add_task(description, total=total)

    def __enter__(self) -> ProgressBar:
        if self._bar is not None:
            self._bar.start()
        return self

    def update(self, advance: int = 1, description: str | None = None) -> None:
        if self._bar is not None:
            kw = {"description": description} if description else {}
            self._bar.update(self._task, advance=advance, **kw)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
