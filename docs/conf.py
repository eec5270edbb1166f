"""Sphinx configuration of the experimat documentation (MyST-NB, as the scverse packages do).

Build: ``pip install -e ".[docs]"`` then ``sphinx-build -W -b html docs docs/_build/html``.
The tutorials are rendered from ``tutorials/*.ipynb`` with their committed outputs (never executed here).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE / "_ext"))

import experimat  # noqa: E402

project = "experimat"
author = "experimat developers"
copyright = "experimat developers"
release = version = experimat.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "experimat_accessors",
]

# the tutorials live at the repository's top (the test suite executes them there); render copies with their outputs
_TUT = HERE / "tutorials"
shutil.rmtree(_TUT, ignore_errors=True)
_TUT.mkdir()
for nb in sorted((ROOT / "tutorials").glob("*.ipynb")):
    shutil.copy2(nb, _TUT / nb.name)

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
nb_execution_mode = "off"
nb_output_stderr = "remove"
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_custom_sections = [("Runner options (added by experimat)", "params_style")]
default_role = "literal"
nitpicky = False

intersphinx_mapping = {}  # built offline: no inventories are fetched

html_theme = "sphinx_book_theme"
html_title = "experimat"
html_theme_options = {"repository_url": "https://github.com/experimat/experimat", "use_repository_button": True}
suppress_warnings = ["mystnb.unknown_mime_type"]
