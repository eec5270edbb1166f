"""The writer lock of a project folder (``.lock``): one writer at a time, for real.

- **Taking it** is one atomic, exclusive step: the lock's full content (host, pid, the process's
  start time, the boot id, a unique owner token) is written and fsynced under a temporary name,
  then hard-linked to ``.lock`` (``link`` fails if ``.lock`` exists). A reader therefore never
  sees an empty or half-written lock, and a full disk leaves no ``.lock`` at all. On file systems
  without hard links, ``O_CREAT | O_EXCL`` is used instead (and a failed write removes the file).
- **A dead holder** is recognised on the same host when its pid is gone, when the pid now
  belongs to another process (a different start time: PID reuse after a reboot or in
  containers), or when the machine has rebooted since (a different boot id).
- **Breaking a stale lock** (``force=True``) renames ``.lock`` to a unique name, which only one
  breaker can win, then checks that what it renamed is the very lock it judged stale (same inode
  and bytes); otherwise it puts the lock back and refuses.
- **A lock on another host** is never broken by ``force=True``: this machine cannot tell whether
  that process still runs. :func:`break_lock` with ``dead_host=`` breaks it when a person knows
  the host is gone.
- **Every commit** calls :meth:`WriterLock.verify` just before replacing the manifest; a lock that
  is not ours any more raises :class:`ProjectLockedError` naming the holder.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import socket
import stat
import time
import uuid
from pathlib import Path
from typing import Any

from .._errors import ProjectError, ProjectLockedError
from .._keys import FileName
from .._logging import logger
from ._durable import fsync_dir

_MAX_LOCK_BYTES = 4096


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def boot_id() -> str | None:
    """The kernel's boot id (changes at every reboot), or None where there is none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """An identifier of when process ``pid`` started (None: not running or unknown).

    ``/proc/<pid>/stat`` field 22 (start time in clock ticks since boot) on Linux; psutil's
    ``create_time`` elsewhere when psutil is installed."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None  # /proc works and the process is gone
    except OSError:
        pass
    else:
        fields = raw[raw.rfind(b")") + 2 :].split()  # the command name may hold spaces and ')'
        if len(fields) > 19:
            return f"ticks:{fields[19].decode()}"
        return None
    try:
        import psutil
    except ImportError:
        return None
    try:
        return f"ctime:{psutil.Process(pid).create_time():.3f}"
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True


class LockInfo:
    """What a ``.lock`` holds, parsed defensively: ``problem`` says why it is malformed."""

    def __init__(self, raw: bytes | None, st: os.stat_result | None, problem: str | None = None) -> None:
        self.raw, self.st, self.problem = raw, st, problem
        self.data: dict[str, Any] = {}
        if problem is None and raw is not None:
            try:
                data = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                self.problem = "empty" if not raw.strip() else "not valid JSON"
            else:
                if not isinstance(data, dict):
                    self.problem = "not a JSON object"
                elif not isinstance(data.get("host"), str) or not data["host"]:
                    self.problem = "without a host name"
                elif not isinstance(data.get("pid"), int) or isinstance(data.get("pid"), bool) or data["pid"] <= 0:
                    self.problem = f"with an invalid pid ({data.get('pid')!r})"
                else:
                    self.data = data

    @property
    def malformed(self) -> bool:
        return self.problem is not None

    @property
    def host(self) -> str | None:
        return self.data.get("host")

    @property
    def pid(self) -> int | None:
        return self.data.get("pid")

    @property
    def token(self) -> str | None:
        t = self.data.get("token")
        return t if isinstance(t, str) else None

    def describe(self) -> str:
        if self.malformed:
            return f"a malformed lock file ({self.problem})"
        d = self.data
        return f"host {d.get('host')!r}, pid {d.get('pid')}, since {d.get('started', '?')}"

    def same_file(self, other: LockInfo) -> bool:
        if self.st is None or other.st is None:
            return False
        return (self.st.st_dev, self.st.st_ino) == (other.st.st_dev, other.st.st_ino) and self.raw == other.raw


def read_lock(path: Path) -> LockInfo | None:
    """The lock at ``path`` (None: there is none). Never follows a symlink, never raises on junk."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return LockInfo(None, st, "a symbolic link")
    if stat.S_ISDIR(st.st_mode):
        return LockInfo(None, st, "a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        return LockInfo(None, st, "not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        return LockInfo(None, st, f"unreadable ({e.strerror})")
    try:
        st = os.fstat(fd)
        raw = os.read(fd, _MAX_LOCK_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > _MAX_LOCK_BYTES:
        return LockInfo(raw[:_MAX_LOCK_BYTES], st, "too large")
    return LockInfo(raw, st)


def holder_state(info: LockInfo) -> str:
    """``"malformed"``, ``"dead"`` (same host, holder gone), ``"alive"`` (same host) or ``"remote"``."""
    if info.malformed:
        return "malformed"
    if info.host != socket.gethostname():
        return "remote"
    recorded_boot = info.data.get("boot_id")
    if isinstance(recorded_boot, str) and (current := boot_id()) is not None and recorded_boot != current:
        return "dead"  # the machine rebooted since the lock was taken
    pid = info.pid
    if not pid_alive(pid):
        return "dead"
    recorded_start = info.data.get("pid_start")
    if isinstance(recorded_start, str):
        now = process_start(pid)
        if now is not None and now != recorded_start:
            return "dead"  # the pid now belongs to another process
    return "alive"


def _remove_entry(path: Path) -> None:
    """Remove a renamed-away lock entry (a file, a link, or a folder a person put there)."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        import shutil

        shutil.rmtree(path)
    else:
        os.unlink(path)


def _write_new_file(path: Path, data: bytes) -> None:
    """Create ``path`` exclusively with ``data``, durable; on any failure nothing is left."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


class WriterLock:
    """The ``.lock`` of a project folder; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / FileName.LOCK
        self.held = False
        self.released = False  # True after release(): the holder closed the project
        self._token = uuid.uuid4().hex

    @property
    def token(self) -> str:
        return self._token

    def info(self) -> LockInfo | None:
        return read_lock(self.path)

    def _payload(self) -> bytes:
        pid = os.getpid()
        return json.dumps({
            "host": socket.gethostname(), "pid": pid, "pid_start": process_start(pid), "boot_id": boot_id(),
            "started": _now_iso(), "token": self._token,
        }).encode()

    def _try_create(self) -> bool:
        """One atomic attempt to create ``.lock`` with our content; False if it exists."""
        data = self._payload()
        tmp = self.root / f".lock.new.{self._token}.{uuid.uuid4().hex[:8]}"
        try:
            _write_new_file(tmp, data)
        except OSError as e:
            raise ProjectError(
                f"could not write the writer lock in {self.root}: {e.strerror or e} (is the disk full or the folder "
                "read-only?). Nothing was changed; free space or fix the permissions, or open read-only with mode='r'."
            ) from e
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS, errno.EMLINK):
                raise ProjectError(f"could not take the writer lock {self.path}: {e.strerror or e}.") from e
            try:  # no hard links on this file system: exclusive creation, removed again if the write fails
                _write_new_file(self.path, data)
            except FileExistsError:
                return False
            except OSError as e2:
                raise ProjectError(
                    f"could not write the writer lock {self.path}: {e2.strerror or e2} (disk full?). Nothing was changed."
                ) from e2
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.root)
        return True

    def _break(self, seen: LockInfo) -> bool:
        """Atomically remove the lock ``seen`` (judged breakable). False if another process changed it first."""
        aside = self.root / f".lock.breaking.{self._token}.{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)  # only one breaker can win this
        except FileNotFoundError:
            return False
        moved = read_lock(aside)
        if moved is not None and moved.same_file(seen):
            _remove_entry(aside)
            return True
        # we renamed a lock that someone took after our look: put it back, never over a newer one
        try:
            if moved is not None and moved.st is not None and stat.S_ISREG(moved.st.st_mode):
                os.link(aside, self.path)
            elif not os.path.lexists(self.path):
                os.rename(aside, self.path)
        except OSError:
            logger.warning(f"the writer lock of {self.root} changed hands while a stale lock was broken; its holder will refuse to commit")
        if os.path.lexists(aside):
            _remove_entry(aside)
        return False

    def acquire(self, *, force: bool = False) -> None:
        if self.released:
            raise ProjectError(f"this experiment's project {self.root} was closed; reopen it with em.load_experiment().")
        for _ in range(20):
            if self._try_create():
                self.held = True
                return
            info = self.info()
            if info is None:
                continue  # released in between: try again
            state = holder_state(info)
            if force and state in ("dead", "malformed"):
                logger.warning(f"breaking the writer lock of {self.root} ({info.describe()}; force=True)")
                self._break(info)
                continue
            raise ProjectLockedError(self._locked_message(info, state)) from None
        raise ProjectLockedError(f"could not take the writer lock {self.path}: other processes keep taking it; try again.")

    def _locked_message(self, info: LockInfo, state: str) -> str:
        where = f"the project {self.root} is locked by a writer ({info.describe()})."
        if state == "malformed":
            return (f"{where} A lock is never written this way by experimat (another tool or a damaged disk). If no "
                    "experimat process has the project open, reopen with force=True to remove it.")
        if state == "dead":
            return f"{where} The holder is not running any more: reopen with force=True to break the stale lock."
        if state == "remote":
            return (f"{where} That process runs on another machine, so force=True does not break this lock. Wait for it "
                    f"to finish, or open read-only with mode='r'. If host {info.host!r} is known to be gone (shut down or "
                    f"crashed), break its lock with em.break_lock({str(self.root)!r}, dead_host={info.host!r}).")
        if info.pid == os.getpid():
            return f"{where} It is this process: close the other Experiment of this folder first (expm.close()), or open with mode='r'."
        return f"{where} Wait for it to finish or close it (expm.close()), or open read-only with mode='r'."

    def verify(self) -> None:
        """Raise unless ``.lock`` still holds our token (called just before every commit)."""
        if not self.held:
            if self.released:
                raise ProjectError(
                    f"this experiment was closed (expm.close() or the end of a `with` block) and no longer holds the "
                    f"writer lock of {self.root}; reopen it with em.load_experiment({str(self.root)!r}) to save."
                )
            raise ProjectError(f"this experiment does not hold the writer lock of {self.root}; reopen it with mode='r+'.")
        info = None
        for _ in range(5):  # a breaker that renamed our lock by mistake puts it back within moments
            info = self.info()
            if info is not None:
                break
            time.sleep(0.02)
        if info is not None and not info.malformed and info.token == self._token:
            return
        self.held = False
        holder = "nobody (the lock file was removed)" if info is None else info.describe()
        raise ProjectLockedError(
            f"this experiment lost the writer lock of {self.root}: it is now held by {holder}. Nothing was committed; "
            "another process broke the lock (force=True or em.break_lock) while this one was running. Reopen the "
            "project (em.load_experiment) after that writer has finished, and redo the unsaved work."
        )

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        self.released = True
        info = self.info()
        if info is not None and not info.malformed and info.token == self._token:
            self.path.unlink(missing_ok=True)


def break_lock(path: str | os.PathLike, *, dead_host: str) -> bool:
    """Break the writer lock of a project whose holder ran on a machine known to be gone.

    ``force=True`` only breaks locks whose holder is known to be dead on *this* machine; a lock
    taken on another machine cannot be checked from here. When a person knows that machine is
    gone (shut down, crashed, its job was killed), name it here.

    Parameters
    ----------
    path
        The project folder.
    dead_host
        The host name the lock names (as shown in the ``ProjectLockedError``); a lock of any other
        host is left alone.

    Returns
    -------
    True when a lock was removed, False when there was none.

    Examples
    --------
    >>> em.break_lock("projects/muscle", dead_host="node17")  # doctest: +SKIP
    """
    root = Path(path).resolve()
    if not isinstance(dead_host, str) or not dead_host:
        from .._errors import InvalidInputError

        raise InvalidInputError("dead_host must be the host name the lock names (see the ProjectLockedError message).")
    lock = WriterLock(root)
    info = lock.info()
    if info is None:
        return False
    if info.malformed:
        raise ProjectLockedError(f"the lock of {root} is {info.describe()}; reopen with force=True to remove it.")
    if info.host != dead_host:
        raise ProjectLockedError(f"the lock of {root} is held by {info.describe()}, not by host {dead_host!r}; nothing was broken.")
    if holder_state(info) == "alive":
        raise ProjectLockedError(f"the lock of {root} is held by a process that is running on this machine ({info.describe()}).")
    logger.warning(f"breaking the writer lock of {root} ({info.describe()}; host {dead_host!r} declared gone)")
    if not lock._break(info):
        raise ProjectLockedError(f"the lock of {root} changed while it was being broken; look again (it may be a new writer).")
    return True
