"""Attacks on the project folder: two writers, hostile links, damaged manifests and history.

Each test sets up one way a shared project was seen to lose data (issue 16) and checks that it
is refused with an experimat error that names the fix, and that nothing on disk changed (or,
for recoveries, that the recovery is right). The long random loops are in
``test_integrity_slow.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_synthetic_experiment
from test_project import _snapshot

import experimat as em
import experimat.core.experiment as core_experiment


def _project(tmp_path: Path, n: int = 2) -> Path:
    root = tmp_path / "p"
    make_synthetic_experiment(n_samples=n, n_spots=60, n_genes=20, project=root).close()
    return root


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def _write_manifest(root: Path, m: dict) -> None:
    (root / "manifest.json").write_text(json.dumps(m))


def _sample_file(root: Path, sample: str = "s0") -> Path:
    return root / _manifest(root)["samples"]["spatial-bin"][sample]["file"]


def _dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def _start_ticks(pid: int) -> str:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return "ticks:" + raw[raw.rfind(b")") + 2 :].split()[19].decode()


def _lock(root: Path, **fields) -> None:
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": "then", "token": "someone-else"}
    info.update(fields)
    (root / ".lock").write_text(json.dumps(info))


# == two writers ================================================================================
def test_two_breakers_of_one_stale_lock_only_one_gets_in(tmp_path, monkeypatch):
    """B judges the lock stale; before B acts, A breaks it and takes the project. B must not get in."""
    root = _project(tmp_path)
    dead = _dead_pid()
    _lock(root, pid=dead)
    real_kill = os.kill
    opened = {}

    def kill(pid, sig):
        if pid == dead and not opened:  # B is looking at the dead holder: A breaks the lock right now
            opened["a"] = None
            opened["a"] = em.load_experiment(root, force=True)
        return real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    with pytest.raises(em.ProjectLockedError, match="this process"):
        em.load_experiment(root, force=True)  # B
    monkeypatch.setattr(os, "kill", real_kill)
    a = opened["a"]
    a.spatial_bin["s0"].uns["by"] = "a"
    a.save()  # A still holds the lock
    a.close()
    assert em.load_experiment(root, mode="r").spatial_bin["s0"].uns["by"] == "a"


def test_commit_refused_when_the_lock_was_taken_over(tmp_path):
    root = _project(tmp_path)
    expm = em.load_experiment(root)
    expm.spatial_bin["s0"].uns["x"] = 1
    os.unlink(root / ".lock")  # someone broke our lock and another writer took it
    _lock(root, pid=os.getppid(), token="other-writer")
    before = _snapshot(root)
    with pytest.raises(em.ProjectLockedError, match=f"pid {os.getppid()}"):
        expm.save()
    assert _snapshot(root) == before
    expm.close()
    assert json.loads((root / ".lock").read_text())["token"] == "other-writer"  # close leaves the other's lock alone


def test_force_never_breaks_a_live_lock_of_another_host(tmp_path):
    root = _project(tmp_path)
    _lock(root, host="node17.cluster", pid=os.getpid())
    lock_before = (root / ".lock").read_bytes()
    with pytest.raises(em.ProjectLockedError, match=r"em\.break_lock\(.*dead_host='node17\.cluster'\)") as e:
        em.load_experiment(root, force=True)
    assert "another machine" in str(e.value)
    assert (root / ".lock").read_bytes() == lock_before
    with pytest.raises(em.ProjectLockedError, match="not by host"):
        em.break_lock(root, dead_host="node18")
    assert (root / ".lock").read_bytes() == lock_before
    assert em.break_lock(root, dead_host="node17.cluster") is True
    em.load_experiment(root).close()


@pytest.mark.parametrize("how", ["close", "with"])
def test_save_on_a_closed_experiment_raises(tmp_path, how):
    root = _project(tmp_path)
    if how == "close":
        expm = em.load_experiment(root)
        expm.close()
    else:
        with em.load_experiment(root) as expm:
            pass
    expm.spatial_bin["s0"].uns["x"] = 1  # reading after close still works
    before = _snapshot(root)
    with pytest.raises(em.ProjectError, match=r"closed.*em\.load_experiment"):
        expm.save()
    with pytest.raises(em.ProjectError, match="closed"):
        expm.spatial_bin.normalize(run_on_samples=True, save=True, n_jobs=2)
    assert _snapshot(root) == before
    other = em.load_experiment(root)  # the closed one holds nothing
    other.close()


@pytest.mark.parametrize("kind", ["pid_start", "boot_id"])
def test_pid_reuse_is_recognised(tmp_path, kind):
    """A lock naming a live but unrelated process (the pid was reused after a reboot or in a container)."""
    root = _project(tmp_path)
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    fields = {"pid": os.getppid()}
    fields["pid_start" if kind == "pid_start" else "boot_id"] = "ticks:1" if kind == "pid_start" else "another-boot"
    if kind == "boot_id":
        fields["pid_start"] = _start_ticks(os.getppid())
    _lock(root, **fields)
    with pytest.raises(em.ProjectLockedError, match="not running any more.*force=True"):
        em.load_experiment(root)
    em.load_experiment(root, force=True).close()
    assert not (root / ".lock").exists()


def test_a_failed_open_releases_the_lock(tmp_path):
    root = _project(tmp_path)
    with pytest.raises(em.SampleNotFoundError):
        em.load_experiment(root, load_samples=["nope"])
    em.load_experiment(root).close()  # the same process can reopen at once
    m = _manifest(root)
    del m["files"][m["samples"]["spatial-bin"]["s1"]["file"]]
    _write_manifest(root, m)
    with pytest.raises(em.CorruptFileError):
        em.load_experiment(root)
    assert not (root / ".lock").exists()


def test_full_disk_while_taking_the_lock_leaves_no_lock(tmp_path):
    root = _project(tmp_path)
    code = textwrap.dedent(
        """
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        import experimat as em
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))  # every write fails: a full disk
        try:
            em.load_experiment(sys.argv[1])
        except em.ProjectError as e:
            print("REFUSED", e)
        """
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, env=env)
    assert "REFUSED" in out.stdout and "disk" in out.stdout, out.stdout + out.stderr
    assert not os.path.lexists(root / ".lock")
    assert not [p for p in root.iterdir() if p.name.startswith(".lock")]
    em.load_experiment(root).close()


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "empty"), (b'{"host": "h", "pid"', "not valid JSON"), (b'{"host": "h", "pid": "abc"}', "with an invalid pid"),
     (b"[1, 2]", "not a JSON object"), (b"\xff\xfe", "not valid JSON"), (None, "a folder")],
)
def test_malformed_lock(tmp_path, content, problem):
    root = _project(tmp_path)
    if content is None:
        (root / ".lock").mkdir()
        (root / ".lock" / "x").write_text("x")
    else:
        (root / ".lock").write_bytes(content)
    with pytest.raises(em.ProjectLockedError, match=f"malformed lock file \\({problem}.*force=True"):
        em.load_experiment(root)
    expm = em.load_experiment(root, force=True)
    expm.spatial_bin["s0"].uns["x"] = 1
    expm.save()
    expm.close()
    assert not os.path.lexists(root / ".lock")


# == links ======================================================================================
def _link_out(root: Path, rel: str, outside: Path) -> Path:
    """Move ``root/rel`` to ``outside`` and put a symlink in its place."""
    src = root / rel
    if src.exists():
        shutil.move(str(src), str(outside))
    else:
        outside.mkdir(parents=True)
        (outside / "precious").mkdir()
        (outside / "precious" / "data.npz").write_bytes(b"lab data")
    os.symlink(outside, src)
    return outside


@pytest.mark.parametrize("rel", ["samples/spatial-bin", "samples", "models", "history.jsonl"])
@pytest.mark.parametrize("when", ["before_open", "after_open"])
def test_symlinks_in_the_project_are_refused(tmp_path, rel, when):
    root = _project(tmp_path)
    expm = em.load_experiment(root, load_samples=True)
    expm.spatial_bin.normalize(run_on_samples=["s0"])  # writes history.jsonl
    if when == "before_open":
        expm.close()
    outside = _link_out(root, rel, tmp_path / "elsewhere")
    outside_before = _snapshot(outside) if outside.is_dir() else outside.read_bytes()
    if when == "before_open":
        for mode in ("r+", "r"):
            with pytest.raises(em.ProjectError, match=f"{rel} is a symbolic link.*Replace the link"):
                em.load_experiment(root, mode=mode)
    else:
        expm.spatial_bin["s1"].uns["x"] = 1
        with pytest.raises(em.ProjectError, match="is a symbolic link"):
            expm.spatial_bin.normalize(run_on_samples=["s1"])
        with pytest.raises(em.ProjectError, match="is a symbolic link"):
            expm.save()
        expm.close()
    assert (_snapshot(outside) if outside.is_dir() else outside.read_bytes()) == outside_before


def test_symlinked_sample_file_is_refused(tmp_path):
    root = _project(tmp_path)
    f = _sample_file(root)
    outside = tmp_path / "outside.h5ad"
    shutil.move(f, outside)
    os.symlink(outside, f)
    with pytest.raises(em.ProjectError, match="is a symbolic link"):
        em.load_experiment(root, mode="r")


def _rehash(root: Path, path: Path) -> None:
    m = _manifest(root)
    rel = path.relative_to(root).as_posix()
    m["files"][rel] = {"sha256": em.io.project.sha256_file(path), "size": path.stat().st_size}
    _write_manifest(root, m)


@pytest.mark.parametrize("kind", ["external link", "external storage", "virtual dataset"])
def test_hdf5_files_reading_outside_data_are_refused(tmp_path, kind):
    root = _project(tmp_path)
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        d = f.create_dataset("secret", data=np.arange(4.0))
        d.attrs["encoding-type"], d.attrs["encoding-version"] = "array", "0.2.0"
    raw = tmp_path / "secret.raw"
    raw.write_bytes(np.arange(4.0).tobytes())
    path = _sample_file(root)
    with h5py.File(path, "r+") as f:
        if kind == "external link":
            f["uns/stolen"] = h5py.ExternalLink(str(secret), "/secret")
        elif kind == "external storage":
            d = f.create_dataset("uns/stolen", shape=(4,), dtype="f8", external=[(str(raw), 0, 32)])
            d.attrs["encoding-type"], d.attrs["encoding-version"] = "array", "0.2.0"
        else:
            layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
            layout[:] = h5py.VirtualSource(str(secret), "secret", shape=(4,))
            d = f.create_virtual_dataset("uns/stolen", layout)
            d.attrs["encoding-type"], d.attrs["encoding-version"] = "array", "0.2.0"
    _rehash(root, path)
    expm = em.load_experiment(root, mode="r")
    with pytest.raises(em.CorruptFileError, match=f"{kind}.*outside"):
        expm.spatial_bin["s0"]
    with pytest.raises(em.CorruptFileError, match=kind):
        em.load_experiment(root, mode="r", load_samples=True)


# == manifest ===================================================================================
def _drop_files_entry(m):
    del m["files"][m["samples"]["spatial-bin"]["s1"]["file"]]


def _bad_sha(m):
    next(iter(m["files"].values()))["sha256"] = "abc"


def _negative_size(m):
    next(iter(m["files"].values()))["size"] = -1


def _no_sample_file(m):
    del m["samples"]["spatial-bin"]["s1"]["file"]


def _bad_modality(m):
    m["samples"]["visium"] = m["samples"].pop("spatial-bin")


def _models_not_object(m):
    m["models"] = [1]


def _files_not_object(m):
    m["files"] = [1, 2]


def _bad_table(m):
    m["sample_table"] = [{"sample": 1}]


@pytest.mark.parametrize(
    ("damage", "where"),
    [(_drop_files_entry, r"samples\['spatial-bin'\]\['s1'\]\.file"), (_bad_sha, r"\.sha256"), (_negative_size, r"\.size"),
     (_no_sample_file, r"\['s1'\]\.file is missing"), (_bad_modality, r"samples\['visium'\]"),
     (_models_not_object, "models must be an object"), (_files_not_object, "files is missing or not an object"),
     (_bad_table, r"sample_table\[0\]")],
)
def test_damaged_manifest_is_refused_before_anything_is_touched(tmp_path, damage, where):
    root = _project(tmp_path)
    m = _manifest(root)
    damage(m)
    _write_manifest(root, m)
    before = _snapshot(root)
    for mode in ("r+", "r"):
        with pytest.raises(em.CorruptFileError, match=f"{where}.*Restore manifest.json"):
            em.load_experiment(root, mode=mode)
    assert _snapshot(root) == before


def test_gc_never_deletes_a_file_the_manifest_on_disk_names(tmp_path):
    """A manifest on disk names a file this writer does not know (written behind its back, by a tool that
    ignored the lock): the writer refuses to commit over it, and the file stays."""
    root = _project(tmp_path)
    expm = em.load_experiment(root)
    expm.spatial_bin["s0"].uns["x"] = 1
    m = _manifest(root)
    extra = root / "samples" / "spatial-bin" / "s1.0123456789ab.h5ad"
    shutil.copyfile(_sample_file(root, "s1"), extra)
    old = m["samples"]["spatial-bin"]["s1"]["file"]
    m["files"][extra.relative_to(root).as_posix()] = m["files"].pop(old)
    m["samples"]["spatial-bin"]["s1"]["file"] = extra.relative_to(root).as_posix()
    _write_manifest(root, m)
    before = _snapshot(root)
    with pytest.raises(em.ProjectChangedError, match="replaced by another process.*nothing was committed"):
        expm.save()  # the writer will not overwrite (or collect) a manifest it did not write
    assert _snapshot(root) == before
    expm.close()
    expm = em.load_experiment(root)
    expm.spatial_bin["s0"].uns["x"] = 2
    expm.save()
    expm.close()
    assert extra.exists()


def test_leftover_temporary_files_are_cleaned(tmp_path):
    root = _project(tmp_path)
    leftovers = [root / ".manifest.json.0badc0de.tmp", root / "samples" / "spatial-bin" / ".s0.0123456789ab.h5ad.tmp",
                 root / ".integrated.0123456789ab.h5mu.tmp"]
    for p in leftovers:
        p.write_bytes(b"half a write")
    keep = root / "notes.txt"
    keep.write_text("mine")
    expm = em.load_experiment(root)
    expm.spatial_bin["s0"].uns["x"] = 1
    expm.save()
    expm.close()
    assert not [p for p in leftovers if p.exists()]
    assert keep.read_text() == "mine"


# == history ====================================================================================
def test_a_cut_history_line_does_not_swallow_the_next_record(tmp_path):
    root = _project(tmp_path)
    with open(root / "history.jsonl", "ab") as f:
        f.write(b'{"method": "normalize", "modality": "spati')  # a crash or a full disk cut this append
    expm = em.load_experiment(root)
    expm.spatial_bin.normalize(run_on_samples=["s0"])
    with pytest.warns(em.ExperimatWarning, match=r"skipped 1 damaged line \(1 cut or invalid JSON"):
        hist = expm.history()
    assert list(hist["sample"]) == ["s0"] and list(hist["outcome"]) == ["ok"]
    expm.close()


def test_damaged_history_lines_are_skipped_and_reported(tmp_path, capsys):
    root = _project(tmp_path)
    expm = em.load_experiment(root)
    expm.spatial_bin.normalize(run_on_samples=["s0"])
    good = (root / "history.jsonl").read_bytes()
    junk = [b"[1, 2]", b'"text"', b"null", b"[" * 100_000 + b"]" * 100_000, b'{"method": "normal\xff\xfeize"}',
            b'{"method": "normalize", "modality": "spatial-bin", "sample": ["s0"], "outcome": "ok"}', b"42"]
    (root / "history.jsonl").write_bytes(b"\n".join(junk) + b"\n" + good + b"{\"cut")
    with pytest.warns(em.ExperimatWarning, match="skipped 8 damaged lines") as rec:
        hist = expm.history()
    msg = str(rec[0].message)
    for what in ("4 not a JSON object", "1 nested too deeply", "1 invalid UTF-8", "1 not a history record", "1 cut or invalid JSON"):
        assert what in msg, msg
    assert list(hist["sample"]) == ["s0"]
    with pytest.warns(em.ExperimatWarning):
        res = expm.spatial_bin.normalize(run_on_samples=True, resume=True)
    assert set(res) == {"s1"}  # s0 finished (and saved) before: resume skips it
    expm.close()
    from experimat.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["history", str(root)]) == 0
    assert "normalize" in capsys.readouterr().out


def test_resume_counts_a_sample_only_once_its_result_is_committed(tmp_path):
    root = _project(tmp_path)
    expm = em.load_experiment(root)
    expm.spatial_bin.normalize(run_on_samples=True, save=False)
    assert expm.spatial_bin.normalize(run_on_samples=True, resume=True) == {}  # this session has the results
    expm.close()  # (or a crash): the results were never saved
    expm = em.load_experiment(root)
    assert set(expm.spatial_bin.normalize(run_on_samples=True, resume=True, save=False)) == {"s0", "s1"}
    expm.save()  # now they are committed
    expm.close()
    again = em.load_experiment(root)
    assert again.spatial_bin.normalize(run_on_samples=True, resume=True) == {}
    assert "lognorm" in again.spatial_bin["s0"].layers
    hist = again.history()
    assert list(hist["saved"]) == [False, False, False, False]  # recorded before the save ...
    assert [r for r in em.io.history.read_history(root / "history.jsonl") if r.get("event") == "commit"]  # ... committed
    again.close()


# == readers ====================================================================================
def test_reader_retries_an_hdf5_oserror_when_a_writer_removed_the_file(tmp_path, monkeypatch):
    """h5py raises a bare OSError (not FileNotFoundError) when the file vanishes while it opens it."""
    root = _project(tmp_path, n=1)
    read = core_experiment._read_sample
    pending = [1]

    def racing_read(path):
        if pending:
            pending.pop()
            monkeypatch.setattr(core_experiment, "_read_sample", read)
            writer = em.load_experiment(root)
            for v in (1, 2):
                writer.spatial_bin["s0"].uns["version"] = v
                writer.save()
            writer.close()
            monkeypatch.setattr(core_experiment, "_read_sample", racing_read)
            raise OSError(f"Unable to synchronously open file (unable to open file: name = '{path}', errno = 2)")
        return read(path)

    monkeypatch.setattr(core_experiment, "_read_sample", racing_read)
    expm = em.load_experiment(root, mode="r", load_samples=True)
    assert expm.spatial_bin["s0"].uns["version"] == 2
