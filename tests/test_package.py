"""Package-level contracts: light import, settings, version(), no pickle (layer rules: tests/test_imports.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import experimat as em

SRC = Path(em.__file__).parent

# the layer rules and the no-cycles rule are import contracts: pyproject.toml [tool.importlinter], tests/test_imports.py


def test_import_is_light():
    code = (
        "import sys, experimat as em; em.settings; "
        "heavy = [m for m in ('numpy','pandas','anndata','scanpy','jax','torch','matplotlib','mudata','h5py') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing experimat pulled in heavy modules: {out}"


def test_version_and_settings(capsys, tmp_path):
    assert isinstance(em.__version__, str) and em.__version__
    em.version()
    out = capsys.readouterr().out
    for key in ("experimat", "python", "platform", "anndata", "numpy", "torch", "jax", "data dir", "database dir", "resident memory"):
        assert key in out
    with pytest.raises(em.InvalidInputError, match="verbosity"):
        em.settings.verbosity = "loud"
    with pytest.raises(em.InvalidInputError, match="n_jobs"):
        em.settings.n_jobs = 0
    with pytest.raises(em.InvalidInputError, match="unknown setting"):
        em.settings.colour = "red"
    with em.settings.override(seed=5, data_dir=tmp_path):
        assert em.settings.seed == 5 and em.settings.data_dir == tmp_path
    assert em.settings.seed == 0


def test_setwd(tmp_path):
    import os

    old = os.getcwd()
    try:
        em.setwd(tmp_path)
        assert Path(os.getcwd()).resolve() == tmp_path.resolve()
        with pytest.raises(em.InvalidInputError):
            em.setwd(tmp_path / "missing")
    finally:
        os.chdir(old)


def test_no_unpickling_in_source():
    offenders = []
    for py in SRC.rglob("*.py"):
        text = py.read_text()
        for needle in ("pickle.load(", "pickle.loads(", "joblib.load(", "pd.read_pickle("):
            if needle in text:
                offenders.append(f"{py.name}: {needle}")
        for line in text.splitlines():
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{py.name}: {line.strip()}")
    assert not offenders, offenders
