"""The documentation site builds with warnings as errors (``sphinx-build -W``), from the ``docs`` extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip("myst_nb", reason="the docs extra is not installed (pip install -e '.[docs]')")
    out = tmp_path / "html"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MPLBACKEND": "Agg"}
    res = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
         str(ROOT / "docs"), str(out)],
        capture_output=True, text=True, env=env,
    )
    assert res.returncode == 0, res.stderr[-5000:]
    for page in ("index", "install", "project-folder", "tutorials", "api", "generated/accessors",
                 "generated/experimat.Experiment", "generated/experimat.pl.plot_spatial"):
        assert (out / f"{page}.html").is_file(), page
    # every tutorial is rendered with its committed outputs (figures included)
    for nb in sorted((ROOT / "tutorials").glob("*.ipynb")):
        html = (out / "tutorials" / f"{nb.stem}.html").read_text()
        assert "<img" in html, f"{nb.name}: rendered without its figures (commit the notebook with outputs)"
    # every method registered on an accessor has its entry, with the runner options
    # the registry is read in a fresh process: other tests register throw-away methods in this one
    listing = subprocess.run(
        [sys.executable, "-c", "from experimat.core.registry import load_plugins, methods_for; load_plugins(); "
         "print('\\n'.join(n for m in ('rna', 'spatial-bin', 'spatial-cell') for n in methods_for(m)))"],
        capture_output=True, text=True, env=env, check=True,
    )
    text = (out / "generated" / "accessors.html").read_text()
    names = set(listing.stdout.split())
    missing = [n for n in sorted(names) if f'id="experimat.core.accessor.ModalityAccessor.{n}"' not in text]
    assert not missing, missing
    assert "run_on_samples" in text
