"""The tutorials run from top to bottom (so they never rot), with the short settings.

A notebook that needs public data sets names them in its metadata (``experimat.datasets``); they are taken from the
data folder of the tests (``EXPERIMAT_DATA_DIR`` or the ``shared/data`` folder beside the repository) and verified
against the registry's checksums, and the notebook is skipped when they are absent. ``EXPERIMAT_TUTORIAL_QUICK=1``
selects each notebook's short settings (the committed outputs come from the full settings).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import shared_data_dir

TUTORIALS = sorted((Path(__file__).parents[1] / "tutorials").glob("*.ipynb"))


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    needed = nb.metadata.get("experimat", {}).get("datasets", [])
    if needed:
        root = shared_data_dir()
        missing = [d for d in needed if root is None or not (root / d).is_dir()]
        if missing:
            pytest.skip(f"data sets {missing} not found (set EXPERIMAT_DATA_DIR)")
        monkeypatch.setenv("EXPERIMAT_DATA_DIR", str(root))
    monkeypatch.setenv("EXPERIMAT_TUTORIAL_QUICK", "1")
    monkeypatch.setenv("EXPERIMAT_PROGRESS", "0")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # the committed notebook carries the outputs of its full run (the documentation renders them)
    committed = nbformat.read(path, as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), f"{path.name}: commit it executed, with outputs"
