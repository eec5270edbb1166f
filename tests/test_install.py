"""The package as a user installs it: every imported package declared, and a built wheel runs the main job."""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "experimat"


def _requirement_names(reqs: list[str]) -> set[str]:
    out = set()
    for r in reqs:
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)", r)
        if m:
            out.add(re.sub(r"[-_.]+", "-", m.group(1)).lower())
    return out


def _imported_top_modules() -> dict[str, set[str]]:
    """Top-level module -> files importing it (``import x``, ``from x import``, ``import_optional("x")``)."""
    found: dict[str, set[str]] = {}
    for py in SRC.rglob("*.py"):
        tree = ast.parse(py.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "import_optional"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names = [node.args[0].value]
            for n in names:
                found.setdefault(n.split(".")[0], set()).add(str(py.relative_to(SRC)))
    return found


def test_every_imported_package_is_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        declared |= _requirement_names(extra)
    dists = md.packages_distributions()
    missing = []
    for mod, files in sorted(_imported_top_modules().items()):
        if mod == "experimat" or mod in sys.stdlib_module_names:
            continue
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(mod, [mod])}
        if not names & declared:
            missing.append(f"{mod} (distribution {sorted(names)}) imported in {sorted(files)[:3]}")
    assert not missing, "imported but not declared in pyproject.toml:\n" + "\n".join(missing)


def test_core_dependencies_cover_unconditional_imports():
    """Packages imported by the core methods (not behind an extra) are core dependencies."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _requirement_names(meta["dependencies"])
    for dist in ("scikit-learn", "pillow", "threadpoolctl", "scanpy", "anndata", "mudata", "h5py"):
        assert dist in core, f"{dist} must be a core dependency"


def _build_wheel(out: Path) -> Path:
    # the build backend (hatchling) comes from the test extra, so no network is needed
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = out.glob("experimat-*.whl")
    return wheel


def test_wheel_runs_demo_outside_the_repository(tmp_path):
    """``pip install`` of the built wheel (not editable), then ``experimat demo`` from an unrelated folder."""
    wheel = _build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    for needed in (
        "experimat/datasets/_data/visium_mouse_muscle/PROVENANCE.md",
        "experimat/datasets/_data/visium_mouse_muscle/Vis5A_2dpi/filtered_feature_bc_matrix.h5",
        "experimat/datasets/_data/visium_mouse_muscle/Vis7B_5dpi/spatial/tissue_positions_list.csv",
    ):
        assert needed in names, f"{needed} missing from the wheel"
    assert any(n.startswith("experimat/_database/") for n in names)
    assert not any(n.startswith("tests/") for n in names)

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPERIMAT_")}
    # dependencies come from the running environment; experimat itself only from the installed wheel
    env.update(PYTHONPATH=str(target), EXPERIMAT_PROGRESS="0", EXPERIMAT_DATA_DIR=str(tmp_path / "no-data"), MPLBACKEND="Agg")
    where = subprocess.run(
        [sys.executable, "-c", "import experimat, experimat.datasets as d; print(experimat.__file__); print(d.visium_mouse_muscle())"],
        cwd=work, env=env, check=True, capture_output=True, text=True,
    ).stdout.split()
    assert all(Path(p).resolve().is_relative_to(target.resolve()) for p in where), where

    script = target / "bin" / "experimat"
    cmd = [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "experimat.cli"]
    res = subprocess.run([*cmd, "--quiet", "demo", "--out", "demo"], cwd=work, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (work / "demo" / "manifest.json").is_file()
    assert "SpaGCN domains" in res.stdout and "Vis7B_5dpi" in res.stdout
