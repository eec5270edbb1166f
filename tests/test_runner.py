"""Per-sample dispatch: signatures, slot checks, run_on_samples, isolation, resume, executors, CLI."""

from __future__ import annotations

import inspect
import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from _methods import fails_on, noisy_score, slow
from conftest import make_synthetic_experiment

import experimat as em
from experimat.core.registry import register_method

register_method(noisy_score, modalities=["spatial-bin"], reads=["layers/{layer}"], writes=["obs/{key_added}", "uns/{key_added}"])
register_method(fails_on, modalities=["spatial-bin"], writes=["obs/{key_added}"])
register_method(slow, modalities=["spatial-bin"], writes=["uns/{key_added}"])


def test_signature_synthesis(synth_project):
    sig = inspect.signature(synth_project.spatial_bin.noisy_score)
    params = sig.parameters
    assert list(params)[:4] == ["layer", "scale", "seed", "key_added"]
    assert params["layer"].default == "counts" and params["scale"].default == 1.0
    for p in ("run_on_samples", "n_jobs", "executor", "save", "resume"):
        assert params[p].kind is inspect.Parameter.KEYWORD_ONLY
    assert "Deterministic given the seed" in synth_project.spatial_bin.noisy_score.__doc__
    assert "run_on_samples" in synth_project.spatial_bin.noisy_score.__doc__
    assert "noisy_score" in dir(synth_project.spatial_bin)
    with pytest.raises(em.InvalidInputError, match="unknown options"):
        synth_project.spatial_bin.noisy_score(scal=2)
    with pytest.raises(em.InvalidInputError, match="keyword"):
        synth_project.spatial_bin.noisy_score("counts")


def test_registration_rejects_positional_options():
    def bad(adata, layer):
        return None

    with pytest.raises(em.InvalidInputError, match="keyword-only"):
        register_method(bad, modalities=["rna"])


def test_slot_check_names_producer(synth_project):
    with pytest.raises(em.MissingSlotError) as e:
        synth_project.spatial_bin.spatial_smooth(run_on_samples=True)
    msg = str(e.value)
    assert "layers['lognorm']" in msg and "normalize()" in msg
    assert not synth_project.history().shape[0]  # nothing ran


def test_run_on_samples_forms(synth_project):
    sb = synth_project.spatial_bin
    assert list(sb.noisy_score(run_on_samples=True)) == ["s0", "s1", "s2"]
    assert list(sb.noisy_score(run_on_samples="all")) == ["s0", "s1", "s2"]
    assert list(sb.noisy_score(run_on_samples="s1")) == ["s1"]
    assert list(sb.noisy_score(run_on_samples=["s2", "s0"])) == ["s0", "s2"]  # sheet order
    with pytest.raises(em.SampleNotFoundError, match="'s0', 's1', 's2'"):
        sb.noisy_score(run_on_samples=["s0", "s"])  # never silently dropped, no regex
    with pytest.raises(em.SampleNotFoundError):
        sb.noisy_score(run_on_samples="s.*")
    with pytest.raises(em.ProjectError, match="merge"):
        sb.noisy_score(run_on_samples=None)
    synth_project.merge()
    res = sb.noisy_score(run_on_samples=None)
    assert isinstance(res, float)
    assert "score" in synth_project.integrated.mod["spatial-bin"].obs


def test_params_and_history(synth_project):
    synth_project.spatial_bin.noisy_score(run_on_samples=["s0"], scale=2.5)
    a = synth_project.spatial_bin["s0"]
    assert a.uns["score"]["params"]["scale"] == 2.5
    h = synth_project.history()
    row = h.iloc[-1]
    assert row["method"] == "noisy_score" and row["sample"] == "s0" and row["outcome"] == "ok"
    assert row["params"]["scale"] == 2.5 and "numpy" in row["versions"] and row["host"]
    lines = (synth_project.project_path / "history.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["params_hash"] == row["params_hash"]


def test_seeds_per_sample(synth_project):
    res = synth_project.spatial_bin.noisy_score(run_on_samples=True)
    again = synth_project.spatial_bin.noisy_score(run_on_samples=True)
    assert res == again
    with em.settings.override(seed=7):
        other = synth_project.spatial_bin.noisy_score(run_on_samples=True)
    assert other != res
    fixed = synth_project.spatial_bin.noisy_score(run_on_samples=True, seed=42)
    assert fixed["s0"] == noisy_score(synth_project.spatial_bin["s0"].copy(), seed=42)


def test_error_isolation_keeps_and_saves_others(synth_project):
    with pytest.raises(em.SampleRunError) as e:
        synth_project.spatial_bin.fails_on(run_on_samples=True, bad="s1")
    err = e.value
    assert set(err.errors) == {"s1"} and isinstance(err.errors["s1"], ValueError)
    assert list(err.results) == ["s0", "s2"]
    assert "s1: ValueError: deliberate failure" in str(err)
    again = em.load_experiment(synth_project.project_path, mode="r")
    assert "fails" in again.spatial_bin["s0"].obs and "fails" not in again.spatial_bin["s1"].obs
    h = again.history()
    assert set(zip(h["sample"], h["outcome"])) >= {("s0", "ok"), ("s1", "error"), ("s2", "ok")}
    assert "deliberate failure" in h.loc[h["outcome"] == "error", "error"].iloc[0]


def test_serial_processes_and_dask_identical(tmp_path):
    ser = make_synthetic_experiment(project=tmp_path / "a")
    par = make_synthetic_experiment(project=tmp_path / "b")
    dsk = make_synthetic_experiment(project=tmp_path / "c")
    r1 = ser.spatial_bin.noisy_score(run_on_samples=True)
    r2 = par.spatial_bin.noisy_score(run_on_samples=True, n_jobs=2)
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        r3 = dsk.spatial_bin.noisy_score(run_on_samples=True, executor=client)
    assert r1 == r2 == r3
    for s in ser.spatial_bin.samples:
        a, b, c = (e.spatial_bin[s].obs["score"].to_numpy() for e in (ser, par, dsk))
        assert np.array_equal(a, b) and np.array_equal(a, c)
    # results were saved by the parallel runs too
    for root in ("b", "c"):
        back = em.load_experiment(tmp_path / root, mode="r")
        assert np.array_equal(back.spatial_bin["s2"].obs["score"].to_numpy(), ser.spatial_bin["s2"].obs["score"].to_numpy())
    assert set(em.load_experiment(tmp_path / "c", mode="r").history()["executor"]) == {"dask"}
    # error isolation in workers as well
    with pytest.raises(em.SampleRunError) as e:
        par.spatial_bin.fails_on(run_on_samples=True, bad="s2", n_jobs=2)
    assert set(e.value.errors) == {"s2"} and list(e.value.results) == ["s0", "s1"]
    for x in (ser, par, dsk):
        x.close()


def test_resume_after_killed_batch(tmp_path):
    root = tmp_path / "p"
    make_synthetic_experiment(n_samples=4, project=root).close()
    script = tmp_path / "batch.py"
    script.write_text(textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        import experimat as em
        from experimat.core.registry import register_method
        from _methods import slow
        register_method(slow, modalities=["spatial-bin"], writes=["uns/{{key_added}}"])
        expm = em.load_experiment(sys.argv[1])
        expm.spatial_bin.slow(run_on_samples=True, seconds=1.5)
        """
    ))
    proc = subprocess.Popen([sys.executable, str(script), str(root)])
    deadline = time.time() + 120
    hist = root / "history.jsonl"
    while time.time() < deadline:
        if hist.exists() and hist.read_text().count('"outcome": "ok"') >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    expm = em.load_experiment(root, force=True)
    finished = expm.finished_samples("slow", "spatial-bin")
    assert 2 <= len(finished) < 4
    res = expm.spatial_bin.slow(run_on_samples=True, seconds=1.5, resume=True)
    assert set(res) == set(expm.spatial_bin.samples) - set(finished)
    assert all("slow" in expm.spatial_bin[s].uns for s in expm.spatial_bin.samples)
    # a different parameter is not a resume
    res2 = expm.spatial_bin.slow(run_on_samples=True, seconds=0.01, resume=True)
    assert list(res2) == expm.spatial_bin.samples
    expm.close()


def test_cli_round_trip(tmp_path, capsys):
    from experimat.cli import main

    root = tmp_path / "p"
    make_synthetic_experiment(project=root).close()
    assert main(["info", str(root)]) == 0
    assert "s0" in capsys.readouterr().out
    assert main(["run", str(root), "normalize", "--modality", "spatial-bin", "--samples", "s0,s2", "--param", "target_sum=1000"]) == 0
    assert "finished on 2 samples" in capsys.readouterr().out
    back = em.load_experiment(root, mode="r")
    assert "lognorm" in back.spatial_bin["s0"].layers and "lognorm" not in back.spatial_bin["s1"].layers
    assert back.spatial_bin["s0"].uns["lognorm"]["params"]["target_sum"] == 1000
    assert main(["history", str(root)]) == 0
    assert "normalize" in capsys.readouterr().out
    assert main(["run", str(root), "normalize", "--samples", "zz"]) == 1
    err = capsys.readouterr().err
    assert "zz" in err and "Traceback" not in err
    out = subprocess.run([sys.executable, "-m", "experimat.cli", "run", str(root), "nonexistent"], capture_output=True, text=True)
    assert out.returncode == 1 and "no method 'nonexistent'" in out.stderr and "Traceback" not in out.stderr
