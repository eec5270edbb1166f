"""Execute the tutorials in place (outputs kept, machine-specific paths and stderr removed;
the removed stderr, warnings included, is printed to the console).

Run from the repository root: ``python dev/run_tutorials.py [tutorials/NN-name.ipynb ...]`` (all when none are
named). Data sets are found through ``EXPERIMAT_DATA_DIR``; its path is removed from the outputs too.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

paths = [Path(a) for a in sys.argv[1:]] or sorted(Path("tutorials").glob("*.ipynb"))
data_dir = os.environ.get("EXPERIMAT_DATA_DIR")
for path in paths:
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": tmp}}).execute()
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                stderr = [o for o in cell.outputs if o.get("output_type") == "stream" and o.get("name") == "stderr"]
                for o in stderr:  # not kept in the notebook, but shown: a warning must not pass unseen
                    print(f"{path} cell {i} stderr:\n{o.get('text', '')}", file=sys.stderr)
                cell.outputs = [o for o in cell.outputs if not any(o is e for e in stderr)]
        text = nbformat.writes(nb).replace(str(Path(tmp).resolve()) + "/", "").replace(tmp + "/", "")
        if data_dir:
            text = text.replace(str(Path(data_dir).resolve()), "$EXPERIMAT_DATA_DIR").replace(data_dir, "$EXPERIMAT_DATA_DIR")
    path.write_text(text)
    print("executed", path)
