"""Long fault-injection loops on the project folder (opt-in: ``pytest -m slow``).

- random SIGKILLs of a writer during saves, and during ``n_jobs=2`` runs;
- two processes racing to break the same stale lock;
- readers loading the project while a writer saves over and over.

Each loop prints its counts (run with ``-s`` to see them) and asserts: no double writer, no file
touched outside the project folder, no unreadable sample, no lost history record.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_synthetic_experiment
from test_fault_injection import _state

import experimat as em

pytestmark = pytest.mark.slow

N_KILLS = 50
N_RACES = 50
N_READS = 200


def _outside(tmp_path: Path) -> tuple[Path, dict]:
    """A folder next to the project that nothing may touch; returns it and its snapshot."""
    out = tmp_path / "outside"
    (out / "sub").mkdir(parents=True)
    (out / "data.h5ad").write_bytes(b"not ours")
    (out / "sub" / "history.jsonl").write_bytes(b"{}\n")
    return out, _stat_tree(out)


def _stat_tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) for p in root.rglob("*")}


def _descendants(pid: int) -> list[int]:
    """Pids of all processes below ``pid`` (from /proc)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                raw = (d / "stat").read_bytes()
            except OSError:
                continue
            parent[int(d.name)] = int(raw[raw.rfind(b")") + 2 :].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def _running(pid: int) -> bool:
    try:
        return b") Z" not in Path(f"/proc/{pid}/stat").read_bytes()  # a zombie has exited
    except OSError:
        return False


def _kill_tree(proc: subprocess.Popen) -> int:
    """SIGKILL ``proc``; then end the worker processes it left behind (returns how many outlived it by 5 s)."""
    children = _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 5  # workers are to exit by themselves once their parent is gone
    alive = list(children)
    while alive and time.time() < deadline:
        alive = [c for c in alive if _running(c)]
        time.sleep(0.1)
    for c in alive:
        try:
            os.kill(c, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(alive)


def _history_lines(root: Path) -> list[str]:
    from experimat.io.history import read_history

    return [json.dumps(r, sort_keys=True) for r in read_history(root / "history.jsonl", warn=False)]


SAVER = textwrap.dedent(
    """
    import sys
    import experimat as em

    if __name__ == "__main__":  # (n_jobs=2 spawns workers that import this file)
        root, version, n_jobs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        expm = em.load_experiment(root, force=True)
        for s in expm.spatial_bin.samples:
            a = expm.spatial_bin[s]
            a.obs["version"] = version
            a.uns["version"] = version
        expm.merge()
        print("READY", flush=True)
        if n_jobs > 1:
            expm.spatial_bin.qc_metrics(run_on_samples=True, n_jobs=n_jobs, save=True)
        else:
            expm.spatial_bin.normalize(run_on_samples=True, save=True)  # commits sample by sample
        expm.save()  # the integrated data
        print("SAVED", flush=True)
    """
)


def _versions(root: Path) -> tuple[dict[str, int], set[int]]:
    """Load everything (checksums verified): each sample's version and the integrated data's versions."""
    expm = em.load_experiment(root, mode="r", load_samples=True, verify=True)
    samples = {s: int(expm.spatial_bin[s].uns.get("version", 0)) for s in expm.spatial_bin.samples}
    integ = set()
    if expm.integrated is not None:
        integ = {int(x) for x in expm.integrated.mod["spatial-bin"].obs["version"].unique()}
    return samples, integ


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_random_sigkills(tmp_path, n_jobs):
    """Samples are committed one by one, so after a kill each sample (and the integrated data)
    holds either its previous or the new version, complete and verified."""
    root = tmp_path / "p"
    make_synthetic_experiment(n_samples=3, n_spots=300, n_genes=40, project=root).close()
    outside, outside_before = _outside(tmp_path)
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    proc = subprocess.Popen([sys.executable, str(script), str(root), "0", str(n_jobs)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    t0 = time.perf_counter()
    assert proc.stdout.readline().strip() == "SAVED"
    max_delay = 1.3 * (time.perf_counter() - t0)  # kill anywhere in a whole run (the machine's load varies)
    proc.wait()
    current, integ_now = _versions(root)
    counts = {"old": 0, "partial": 0, "new": 0, "unreadable": 0, "lost_records": 0, "orphan_workers": 0}
    for trial in range(1, N_KILLS + 1):
        records_before = _history_lines(root)
        proc = subprocess.Popen([sys.executable, str(script), str(root), str(trial), str(n_jobs)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "READY"
        time.sleep(rng_uniform(trial, max_delay))
        counts["orphan_workers"] += _kill_tree(proc)
        try:
            samples, integ = _versions(root)
        except em.ExperimatError as e:
            counts["unreadable"] += 1
            print(f"trial {trial}: unreadable: {e}")
            continue
        for s, v in samples.items():
            assert v in (current[s], trial), f"trial {trial}: sample {s} holds version {v}"
        assert len(integ) == 1 and integ <= integ_now | {trial}, f"trial {trial}: integrated {integ}"
        n_new = sum(v == trial for v in samples.values())
        counts["new" if n_new == len(samples) and integ == {trial} else ("old" if n_new == 0 else "partial")] += 1
        current, integ_now = samples, integ
        after = _history_lines(root)
        counts["lost_records"] += sum(1 for r in records_before if r not in set(after))
        assert after[: len(records_before)] == records_before, f"trial {trial}: history records lost or reordered"
    print(f"\nSIGKILL during {'n_jobs=2 runs' if n_jobs > 1 else 'saves'}: {N_KILLS} kills, {counts}, load {os.getloadavg()}")
    assert counts["unreadable"] == 0 and counts["lost_records"] == 0
    assert counts["orphan_workers"] == 0, counts  # workers exit by themselves once their parent is gone
    assert counts["old"] + counts["partial"] > 0 and counts["new"] > 0, counts  # kills landed inside and after runs
    assert _stat_tree(outside) == outside_before  # 0 files touched outside the folder
    leftovers = [p for p in (root / "samples" / "spatial-bin").iterdir() if p.name.endswith(".tmp")]
    expm = em.load_experiment(root, force=True)
    expm.spatial_bin["s0"].uns["version"] = 999
    expm.save()
    expm.close()
    assert not [p for p in leftovers if p.exists()]  # the next writer removed crashed writers' temporary files


def rng_uniform(trial: int, high: float) -> float:
    return float(np.random.default_rng(1600 + trial).uniform(0.0, high))


RACER = textwrap.dedent(
    """
    import os, sys, time, json
    from pathlib import Path
    import experimat as em
    root, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    other = "b" if me == "a" else "a"
    state = {}

    def report(r, text):  # atomically: the parent reads it as soon as it exists
        tmp = root.parent / f".res.{r}.{me}"
        tmp.write_text(text)
        os.replace(tmp, root.parent / f"res.{r}.{me}")

    def barrier(verdict):  # scheduling injection: both racers judge the lock dead before either breaks it
        if verdict and "round" in state and not state.get("waited"):
            state["waited"] = True
            (root.parent / f"judged.{state['round']}.{me}").touch()
            mine = root.parent / f"judged.{state['round']}.{other}"
            t = time.time()
            while not mine.exists() and time.time() - t < 20:
                time.sleep(0.0005)
            state["raced"] = mine.exists()

    try:
        import experimat.io.lock as lock_module
    except ImportError:  # the lock of experimat before issue 16 (to show that the test fails there)
        import experimat.io.project as old
        judged_old = old.WriterLock.is_stale

        def is_stale(self, info):
            verdict = judged_old(self, info)
            barrier(verdict)
            return verdict

        old.WriterLock.is_stale = is_stale
    else:
        judged = lock_module.holder_state

        def holder_state(info):
            verdict = judged(info)
            barrier(verdict == "dead")
            return verdict

        lock_module.holder_state = holder_state
    for r in range(n):
        state.clear()
        state["round"] = r
        go = root.parent / f"go.{r}"
        while not go.exists():
            time.sleep(0.002)
        try:
            expm = em.load_experiment(root, force=True)
        except em.ProjectLockedError:
            report(r, f"lost {state.get('raced', False)}")
            continue
        token = expm._store.lock._token
        time.sleep(0.05)  # hold it a moment: a second winner would overlap
        held = json.loads((root / ".lock").read_text()).get("token") == token
        expm.spatial_bin["s0"].uns["round"] = r
        try:
            expm.save()
            ok = "won" if held else "won-but-lock-gone"
        except em.ProjectLockedError:
            ok = "won-then-refused"
        expm.close()
        report(r, f"{ok} {state.get('raced', False)}")
    """
)


def test_two_processes_break_one_stale_lock(tmp_path):
    root = tmp_path / "p"
    make_synthetic_experiment(n_samples=1, n_spots=50, n_genes=20, project=root).close()
    outside, outside_before = _outside(tmp_path)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    procs = [subprocess.Popen([sys.executable, str(script), str(root), name, str(N_RACES)]) for name in ("a", "b")]
    stale = json.dumps({"host": socket.gethostname(), "pid": dead, "pid_start": "ticks:0", "started": "then", "token": "dead"})
    counts = {"one_winner": 0, "double_writers": 0, "no_winner": 0, "refused_commits": 0, "both_judged_stale": 0}
    try:
        for r in range(N_RACES):
            (root / ".lock").write_text(stale)
            (tmp_path / f"go.{r}").touch()
            deadline = time.time() + 120
            while not all((tmp_path / f"res.{r}.{n}").exists() for n in "ab"):
                assert time.time() < deadline, f"round {r}: racers stuck"
                assert all(p.poll() is None for p in procs), "a racer died"
                time.sleep(0.01)
            res = {n: (tmp_path / f"res.{r}.{n}").read_text().split() for n in "ab"}
            winners = [n for n, (v, _) in res.items() if v.startswith("won")]
            counts["refused_commits"] += sum(v == "won-then-refused" for v, _ in res.values())
            counts["both_judged_stale"] += all(raced == "True" for _, raced in res.values())
            if len(winners) == 1:
                counts["one_winner"] += 1
            elif len(winners) == 2:
                counts["double_writers"] += 1
            else:
                counts["no_winner"] += 1
            assert not (root / ".lock").exists()
    finally:
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    print(f"\nstale-lock races: {N_RACES} rounds, {counts}, load {os.getloadavg()}")
    assert counts["double_writers"] == 0 and counts["refused_commits"] == 0
    assert counts["one_winner"] == N_RACES
    assert counts["both_judged_stale"] == N_RACES  # every round was a real race of two breakers
    assert _stat_tree(outside) == outside_before
    assert em.load_experiment(root, mode="r").spatial_bin["s0"].uns["round"] in range(N_RACES)


WRITER = textwrap.dedent(
    """
    import sys, experimat as em
    from pathlib import Path
    root, stop = sys.argv[1], Path(sys.argv[2])
    expm = em.load_experiment(root)
    v = 0
    while not stop.exists():
        v += 1
        for s in expm.spatial_bin.samples:
            expm.spatial_bin[s].uns["version"] = v
        expm.save()
    expm.close()
    print(v)
    """
)


def test_readers_during_repeated_saves(tmp_path):
    root = tmp_path / "p"
    make_synthetic_experiment(n_samples=3, n_spots=200, n_genes=40, project=root).close()
    outside, outside_before = _outside(tmp_path)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    stop = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, str(script), str(root), str(stop)], stdout=subprocess.PIPE, text=True)
    counts = {"loads": 0, "unreadable": 0, "mixed": 0}
    seen: set[int] = set()
    try:
        while counts["loads"] < N_READS:
            assert proc.poll() is None, "the writer died"
            counts["loads"] += 1
            try:
                versions = _state(root)
            except em.ExperimatError as e:
                counts["unreadable"] += 1
                print(f"load {counts['loads']}: {type(e).__name__}: {e}")
                continue
            counts["mixed"] += len(versions) != 1
            seen |= versions
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=120)
    n_saves = int(out.strip().splitlines()[-1])
    print(f"\nreaders: {counts}, {n_saves} saves by the writer, {len(seen)} distinct versions seen, load {os.getloadavg()}")
    assert proc.returncode == 0
    assert counts["unreadable"] == 0 and counts["mixed"] == 0
    assert len(seen) > 1  # the loads did overlap the saves
    assert _stat_tree(outside) == outside_before
