"""The method-run records of an experiment (``history.jsonl``) and what they say about saving.

A run record says whether its sample's result was already committed when it was written
(``saved``). Runs whose result was committed later get a ``commit`` line naming their samples, so
``resume=True`` counts a run as finished only once its result is on disk (or in this session's
memory). An experiment without a writable project keeps its records pending until it is saved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..io.history import finished_samples, run_key
from ..io.project import now_iso

if TYPE_CHECKING:
    from ..io.project import ProjectStore

SampleKey = tuple[str, str]


class RunLog:
    """History records not yet written, runs whose results are not yet committed, this session's runs."""

    def __init__(self) -> None:
        self.pending: list[dict[str, Any]] = []
        self.unsaved: set[SampleKey] = set()  # samples with run records written as saved=false
        self.session: set[tuple] = set()  # ok runs of this object (their results are in memory)

    def add(self, records: Iterable[dict[str, Any]], store: ProjectStore | None,
            result_saved: Callable[[Any, Any], bool]) -> None:
        """Record method runs; ``store`` is the writable project (None: keep them pending)."""
        marked = []
        for r in records:
            r = dict(r)
            if "method" in r:
                r["saved"] = bool(store is not None and result_saved(r.get("modality"), r.get("sample")))
                if r.get("outcome") == "ok":
                    self.session.add(run_key(r))
                    if not r["saved"]:
                        self.unsaved.add((r.get("modality"), r.get("sample")))
            marked.append(r)
        if store is not None:
            store.append_history(marked)
        else:
            self.pending.extend(marked)

    def committed(self, store: ProjectStore, generation: int, saved: Iterable[SampleKey]) -> None:
        """A commit of ``generation`` wrote the samples ``saved``: flush pending records and say
        which earlier runs' results are now committed."""
        if self.pending:
            store.append_history(self.pending)
            self.pending = []
        now_saved = sorted(k for k in saved if k in self.unsaved)
        if now_saved:
            store.append_history([{"event": "commit", "generation": generation, "time": now_iso(),
                                   "samples": [list(k) for k in now_saved]}])
            self.unsaved.difference_update(now_saved)

    def moved(self, store: ProjectStore) -> None:
        """Everything was written to the new project ``store`` (save-as): its results are all committed."""
        if self.pending:
            store.append_history([{**r, "saved": True} if "method" in r else r for r in self.pending])
            self.pending = []
        self.unsaved.clear()

    def lines(self, store: ProjectStore | None) -> list[dict[str, Any]]:
        saved = store.read_history() if store is not None else []
        return saved + list(self.pending)

    def finished(self, store: ProjectStore | None, method: str, modality: str) -> dict[str, str]:
        return finished_samples(self.lines(store), method, modality, self.session)
