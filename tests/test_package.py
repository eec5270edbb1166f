"""Package-level contracts: light import, settings, version(), layer rules, no pickle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import experimat as em

SRC = Path(em.__file__).parent

# a layer may import only the layers listed for it (plus the base modules, always allowed)
ALLOWED = {
    "methods": {"methods", "datasets"},
    "datasets": {"datasets"},
    "database": {"database", "methods"},
    "io": {"io", "methods", "database"},
    "core": {"core", "io", "methods", "database"},
    "modalities": {"modalities", "core", "methods", "pl", "database"},
    "pl": {"pl", "methods", "datasets"},
    "pp": {"pp", "methods"},
}


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


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    layers = set()
    pkg_parts = path.relative_to(SRC).parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg_parts[: len(pkg_parts) - (node.level - 1)]) if node.level - 1 <= len(pkg_parts) else []
                target = base + (node.module.split(".") if node.module else [])
                names = [target] if node.module else [base + [a.name] for a in node.names]
            elif node.module and node.module.startswith("experimat"):
                names = [node.module.split(".")[1:]]
            else:
                continue
            for t in names:
                if t:
                    layers.add(t[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("experimat."):
                    layers.add(a.name.split(".")[1])
    return {name for name in layers if not name.startswith("_")}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_rules(layer):
    folder = SRC / layer
    if not folder.exists():
        pytest.skip(f"{layer} not present")
    bad = []
    for py in folder.rglob("*.py"):
        extra = _imports(py) - ALLOWED[layer]
        if extra:
            bad.append(f"{py.relative_to(SRC)} imports {sorted(extra)}")
    assert not bad, "layer rule violated:\n" + "\n".join(bad)


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
