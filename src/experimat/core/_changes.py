"""Which samples changed since they were last saved (what ``Experiment.save`` rewrites).

Changes are recorded where they happen: the runner marks every sample whose slots it applied,
``set_sample`` / ``add_sample`` / ``merge`` mark what they replace or add. A sample that has been
handed to user code (``expm.rna[name]``, ``accessor.items()``, ``expm.get_sample``, a plugin's view)
may also have been edited in place; only those samples get a content fingerprint
(:func:`~experimat.core._fingerprint.fingerprint`), taken when they are handed out and compared at
save. Samples only the runner touched are never hashed.
"""

from __future__ import annotations

from typing import Any

from ._fingerprint import fingerprint

SampleKey = tuple[str, str]
#: the key of the integrated MuData
INTEGRATED: SampleKey = ("", "integrated")


class ChangeTracker:
    """Explicit change records plus content fingerprints of the samples handed out."""

    def __init__(self) -> None:
        self._marked: set[SampleKey] = set()
        #: key -> fingerprint when handed out (None: marked then, fingerprinted after the next save)
        self._handed: dict[SampleKey, str | None] = {}
        self._checked: dict[SampleKey, str] = {}  # fingerprints computed by a check, reused by the save

    def mark(self, key: SampleKey) -> None:
        """Record that ``key`` changed (it is rewritten by the next save)."""
        self._marked.add(key)

    def is_marked(self, key: SampleKey) -> bool:
        return key in self._marked

    def hand_out(self, key: SampleKey, obj: Any) -> None:
        """``obj`` (the sample of ``key``) is now held by user code and may be edited in place."""
        if key not in self._handed:
            self._handed[key] = None if key in self._marked else fingerprint(obj)

    def changed(self, key: SampleKey, obj: Any) -> bool:
        """Whether the in-memory ``obj`` of ``key`` differs from its last saved state."""
        if key in self._marked:
            return True
        base = self._handed.get(key)
        if base is None:  # never handed out (or marked, which returned above): unchanged
            return False
        fp = fingerprint(obj)
        self._checked[key] = fp
        return fp != base

    def saved(self, key: SampleKey, obj: Any | None) -> None:
        """``obj`` was written: it is the saved state of ``key`` now (None: not in memory, nothing to note)."""
        if obj is None:
            self._marked.discard(key)
            return
        self._checked.pop(key, None)
        if key in self._handed:
            # taken again after the write: writing an h5ad turns string columns into categoricals in place, so
            # a fingerprint from before the write would make the next save rewrite an unchanged sample
            self._handed[key] = fingerprint(obj)
        self._marked.discard(key)

    def all_saved(self, objs: dict[SampleKey, Any]) -> None:
        """Every object in ``objs`` was written (a save-as)."""
        for key, obj in objs.items():
            self.saved(key, obj)
        self._marked.clear()
