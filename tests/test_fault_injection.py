"""Crash safety: a child process saves while the parent kills it (SIGKILL) at random moments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import make_synthetic_experiment

import experimat as em

N_TRIALS = 30

CHILD = textwrap.dedent(
    """
    import sys, experimat as em
    root, version = sys.argv[1], int(sys.argv[2])
    expm = em.load_experiment(root, force=True)
    for s in expm.spatial_bin.samples:
        a = expm.spatial_bin[s]
        a.obs["version"] = version
        a.uns["version"] = version
    expm.merge()
    print("READY", flush=True)
    expm.save()
    print("SAVED", flush=True)
    """
)


def _state(root) -> set[int]:
    """Load the project (verifying checksums) and return the set of versions it holds."""
    expm = em.load_experiment(root, mode="r", load_samples=True, verify=True)
    versions = {int(expm.spatial_bin[s].uns.get("version", 0)) for s in expm.spatial_bin.samples}
    if expm.integrated is not None:
        v = expm.integrated.mod["spatial-bin"].obs["version"].unique()
        versions |= {int(x) for x in v}
    return versions


def test_sigkill_during_save_leaves_old_or_new(tmp_path):
    root = tmp_path / "p"
    make_synthetic_experiment(n_samples=3, n_spots=300, n_genes=40, project=root).close()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = np.random.default_rng(2024)
    current = 0
    outcomes = {"old": 0, "new": 0}
    for trial in range(1, N_TRIALS + 1):
        proc = subprocess.Popen([sys.executable, str(script), str(root), str(trial)], stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        assert line.strip() == "READY", line
        time.sleep(rng.uniform(0.0, 0.25))  # the save takes a few hundred ms: kill at a random moment in it
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        versions = _state(root)
        assert len(versions) == 1, f"trial {trial}: mixed state {versions}"
        (v,) = versions
        assert v in (current, trial), f"trial {trial}: unexpected version {v}"
        outcomes["new" if v == trial else "old"] += 1
        current = v
        # no temporary file is mistaken for data, and the manifest names only existing files
        m = json.loads((root / "manifest.json").read_text())
        for rel in m["files"]:
            assert (root / rel).is_file()
    assert sum(outcomes.values()) == N_TRIALS
    assert outcomes["old"] > 0, outcomes  # the kills did land inside saves
    # after all that, a writer can still open (stale lock broken with force) and save
    expm = em.load_experiment(root, force=True)
    expm.spatial_bin["s0"].uns["version"] = 999
    expm.save()
    expm.close()
    assert 999 in {int(em.load_experiment(root, mode="r").spatial_bin["s0"].uns["version"])}
    leftovers = [p.name for p in (root / "samples" / "spatial-bin").iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


def test_reader_during_writer_sees_consistent_state(tmp_path):
    root = tmp_path / "p"
    make_synthetic_experiment(n_samples=3, n_spots=300, n_genes=50, project=root).close()
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(
        """
        import sys, experimat as em
        expm = em.load_experiment(sys.argv[1])
        for v in range(1, 9):
            for s in expm.spatial_bin.samples:
                expm.spatial_bin[s].uns["version"] = v
            expm.save()
        expm.close()
        """
    ))
    proc = subprocess.Popen([sys.executable, str(script), str(root)])
    seen = set()
    try:
        while proc.poll() is None:
            versions = _state(root)
            assert len(versions) == 1, f"reader saw a mixed state {versions}"
            seen |= versions
    finally:
        proc.wait()
    assert proc.returncode == 0
    assert _state(root) == {8}
    assert len(seen) >= 1


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_lock_released_on_normal_exit(tmp_path):
    root = tmp_path / "p"
    make_synthetic_experiment(n_samples=1, project=root).close()
    subprocess.run([sys.executable, "-c", f"import experimat as em; e = em.load_experiment({str(root)!r})"], check=True)
    assert not (root / ".lock").exists()


def test_file_removed_between_check_and_read(tmp_path, monkeypatch):
    """A writer commits (and removes the old sample file) after a reader checked the file but before
    it opened it: a lazy read says the project changed; load_experiment retries with the new manifest."""
    import experimat.core.experiment as core_experiment
    from experimat._errors import ProjectChangedError

    root = tmp_path / "p"
    make_synthetic_experiment(n_samples=1, project=root).close()
    read = core_experiment._read_sample
    pending = [1]

    def racing_read(path):
        if pending:
            v = pending.pop(0)
            monkeypatch.setattr(core_experiment, "_read_sample", read)
            writer = em.load_experiment(root)
            for version in (v, v + 1):  # two commits: the files of the opened generation are gone after the second
                writer.spatial_bin["s0"].uns["version"] = version
                writer.save()
            writer.close()
            monkeypatch.setattr(core_experiment, "_read_sample", racing_read)
        return read(path)

    reader = em.load_experiment(root, mode="r")
    monkeypatch.setattr(core_experiment, "_read_sample", racing_read)
    with pytest.raises(ProjectChangedError, match="reopen"):
        reader.spatial_bin["s0"]
    expm = em.load_experiment(root, mode="r", load_samples=True)
    assert expm.spatial_bin["s0"].uns["version"] == 2
