"""Execute the tutorials in place (outputs kept, machine-specific paths and stderr removed).

Run from the repository root: ``python dev/run_tutorials.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

for path in sorted(Path("tutorials").glob("*.ipynb")):
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": tmp}}).execute()
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        text = nbformat.writes(nb).replace(str(Path(tmp).resolve()) + "/", "").replace(tmp + "/", "")
    path.write_text(text)
    print("executed", path)
