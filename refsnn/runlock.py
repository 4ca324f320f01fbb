"""One writer per output folder: a lock file holding the owner's PID, host and start time.

A run folder (training ``--out``) is written by one process at a time. :class:`RunLock` creates
``<folder>/run.lock`` and holds an advisory ``flock`` on it while the owner runs; a second
process is refused with a message naming the owner. A lock left behind by a process that died
(same host, PID no longer running) is taken over with a notice; a lock from another host, or one
whose owner is still running, is never taken over (delete the file by hand if you know the run
is gone). This module is the bottom layer: it imports nothing from refsnn.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

try:  # advisory locks are released by the kernel when the owner dies, however it dies
    import fcntl
except ImportError:  # pragma: no cover - Windows: the PID/host record alone decides
    fcntl = None

LOCK_NAME = "run.lock"


class RunLockError(ValueError):
    """The folder is in use by another process (or its lock file cannot be read)."""


def host_name() -> str:
    return socket.gethostname()


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(path: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """The owner record of lock file ``path``; ``None`` when the file is empty (a writer died
    between creating and filling it). Raises :class:`RunLockError` when it is not ours."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        return None
    try:
        record = json.loads(text)
        if not isinstance(record, dict) or not isinstance(record.get("pid"), int) \
                or not isinstance(record.get("host"), str):
            raise ValueError("needs an integer pid and a host name")
    except ValueError as error:
        raise RunLockError(f"lock file {path} is malformed ({error}); if no run is using "
                           f"{Path(path).parent}, delete {path} and start again") from None
    return record


def _describe(record: Dict[str, Any]) -> str:
    started = record.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"PID {record['pid']} on host {record['host']} (started {when})"


class RunLock:
    """Exclusive use of ``folder`` by this process (a context manager).

    ``notice``: after :meth:`acquire`, a line saying which stale lock was taken over, else ``None``.
    """

    def __init__(self, folder: Union[str, os.PathLike], name: str = LOCK_NAME):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.notice: Optional[str] = None
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    os.close(fd)
                    if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                    raise RunLockError(self._held_message(read_lock_quietly(self.path))) from None
            try:  # the previous owner may have removed the file between our open and our flock
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - only under a storm of concurrent starts
            raise RunLockError(f"could not lock {self.path}: other processes keep replacing it; try again")
        try:
            self._check_previous_owner()
            record = {"pid": os.getpid(), "host": host_name(), "started": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _check_previous_owner(self) -> None:
        previous = read_lock(self.path)
        if previous is None:
            return
        if previous["host"] != host_name():
            raise RunLockError(self._held_message(previous) + f"; it cannot be checked from host {host_name()}: "
                               f"if that run is gone, delete {self.path}")
        if previous["pid"] == os.getpid() or pid_running(previous["pid"]):
            raise RunLockError(self._held_message(previous))
        self.notice = f"note: took over the stale lock {self.path} of {_describe(previous)}, which is no longer running"

    def _held_message(self, record: Optional[Dict[str, Any]]) -> str:
        owner = _describe(record) if record else "another process"
        return (f"{self.folder} is in use by {owner} (lock {self.path}); wait for it to finish, stop it, "
                "or write to another --out")

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # unlink while still holding the flock, so no newcomer locks a file about to vanish
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def read_lock_quietly(path: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """:func:`read_lock` for messages: ``None`` instead of an error."""
    try:
        return read_lock(path)
    except (OSError, RunLockError):
        return None


# --- results that are never silently replaced ------------------------------------------------------

class ResultExistsError(ValueError):
    """An output file holds a different result and ``--overwrite`` was not given."""


def guard_result(path: Union[str, os.PathLike], identity: Dict[str, Any], overwrite: bool = False,
                 option: str = "--out") -> None:
    """Refuses (:class:`ResultExistsError`) to replace the JSON result ``path`` unless its stored
    ``"identity"`` (every argument that changes the result) equals ``identity``, or ``overwrite``.

    A rerun of the same result may rewrite it; a different one (another eps, set, model, ...) or a
    file that is not a readable result is never replaced silently."""
    path = Path(path)
    if overwrite or not path.exists():
        return
    wanted = json.loads(json.dumps(identity, sort_keys=True, default=str))
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ResultExistsError(f"{path} exists and is not a readable result ({' '.join(str(error).split())}); "
                                f"choose another {option} or pass --overwrite to replace it") from None
    previous = stored.get("identity") if isinstance(stored, dict) else None
    if previous == wanted:
        return
    if isinstance(previous, dict):
        keys = [key for key in sorted(set(previous) | set(wanted)) if previous.get(key) != wanted.get(key)]
        what = ", ".join(f"{key} {previous.get(key)!r} there, {wanted.get(key)!r} now" for key in keys[:4])
    else:
        what = "written without the arguments that identify it"
    raise ResultExistsError(f"{path} holds a different result ({what}); choose another {option} or pass "
                            "--overwrite to replace it")


def result_key(identity: Dict[str, Any]) -> str:
    """8 hex digits of the SHA-256 of ``identity`` (canonical JSON): a short name part that differs
    whenever any argument that changes the result differs."""
    import hashlib

    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
