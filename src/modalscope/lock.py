"""One writer per study folder: `with study_lock(DIR, "analyze"):` refuses, in one line, a second
process that would write into DIR while another one does.

Why: two `modalscope run --out DIR` started seconds apart both appended to the same zarr shards
(a lost update in a shared chunk, or a crash on the other's `.partial` file). Every command that
writes into DIR (run, extract, analyze, plot, report, export, neuron, demo) holds DIR's lock while
it runs.

How: `fcntl.flock` on `DIR/.modalscope.lock`. The kernel releases a flock when its process
dies, however it dies (SIGKILL included), so a lock left by a killed process never blocks the
next run: there is nothing stale to clean up by hand. The holder writes its pid, host and
command into the file, only so that the refusal can name them.

The file is removed when the lock is released; a process that opened the old file and locks it
after the release sees that the path no longer names the file it locked and starts over (the
usual unlink-safe protocol), so two holders never coexist. A DIR that the lock had to create is
removed again on release if nothing was written into it (a refused study leaves no folder).

Re-entrant within a process (`run_study` takes the lock the CLI already holds). Under torchrun
each rank locks its own file (`.modalscope.lock` for rank 0, `.modalscope.rank{r}.lock` for the
others), so one job's ranks share DIR and a second job's ranks are refused.

On a platform without `fcntl` (Windows) or a filesystem without flock support the folder is
used unlocked, as before.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from modalscope.ranks import Ranks
from modalscope.outputs import LOCK as LOCK_NAME  # the lock file's name; its one home: outputs.py

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]



class StudyLocked(ValueError):
    """DIR is held by another process (a one-line user error: exit 2)."""


@dataclass
class _Held:
    fd: int
    path: Path
    created: list[Path] = field(default_factory=list)
    count: int = 1


_HELD: dict[Path, _Held] = {}


def lock_path(out_dir: Path) -> Path:
    """DIR's lock file for this process's rank (ranks.py)."""
    rank = Ranks.from_env().rank
    name = LOCK_NAME if rank == 0 else f".modalscope.rank{rank}.lock"
    return Path(out_dir) / name


def holder(path: Path) -> str:
    """What the lock file says about its holder: 'pid 123 on host (modalscope run ...)'."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "another process"
    # printable characters only, and not too many: the file is DIR's, and DIR may be crafted
    fields = {key: "".join(ch for ch in value if ch.isprintable())[:300]
              for key, value in (line.split("=", 1) for line in text.splitlines() if "=" in line)}
    if "pid" not in fields:
        return "another process"
    since = f", since {fields['started']}" if fields.get("started") else ""
    command = f" ({fields['command']})" if fields.get("command") else ""
    return f"pid {fields['pid']} on {fields.get('host', '?')}{command}{since}"


def _make_dirs(out_dir: Path) -> list[Path]:
    """Create `out_dir` (and missing parents); the folders created, deepest first."""
    missing = []
    current = out_dir
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    return missing


def _refuse(out_dir: Path, path: Path) -> StudyLocked:
    return StudyLocked(f"{out_dir}: in use by {holder(path)}; wait for it to finish (a killed process "
                       "frees it at once) or use another folder")


def _acquire(out_dir: Path, command: str) -> _Held:
    created = _make_dirs(out_dir)
    path = lock_path(out_dir)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _refuse(out_dir, path) from None
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return _Held(-1, path, created)  # no flock here: unlocked, as before
            raise
        try:  # the file we locked must still be the one at `path` (a releaser unlinks it)
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    command = " ".join(command.split())  # one line in the file
    info = f"pid={os.getpid()}\nhost={socket.gethostname()}\ncommand={command}\nstarted={started}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode("utf-8"), 0)
    if path.name == LOCK_NAME:
        remove_stale_temporaries(out_dir)
    return _Held(fd, path, created)


# The folders whose files are written through files.atomic (a temporary `.NAME.PID.tmp` renamed).
WRITTEN = ("", "tables", "figures", "cards")


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """The `.NAME.PID.tmp` files a killed writer left in DIR (files.atomic removes its own on any
    exception, but SIGKILL runs no cleanup), removed when their process is gone; called once the
    lock is held, so no live writer of this folder is another process. Returns those removed."""
    removed = []
    for sub in WRITTEN:
        folder = Path(out_dir) / sub
        if not folder.is_dir():
            continue
        for tmp in folder.glob(".*.tmp"):
            pid = tmp.name.rsplit(".", 2)[-2] if tmp.name.count(".") >= 3 else ""
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)) and tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _release(held: _Held) -> None:
    if held.fd >= 0:
        try:
            held.path.unlink(missing_ok=True)  # while still locked: see the module's docstring
        finally:
            os.close(held.fd)
    for folder in held.created:  # deepest first; only those left empty
        try:
            folder.rmdir()
        except OSError:
            break


@contextmanager
def study_lock(out_dir: Path | str, command: str = "command") -> Iterator[None]:
    """Hold DIR's lock for the block (creating DIR if needed), or raise StudyLocked naming the
    process that holds it. `command` says who holds it (written in the lock file)."""
    out_dir = Path(out_dir)
    if fcntl is None:
        yield
        return
    key = Path(os.path.realpath(out_dir))
    held = _HELD.get(key)
    if held is not None:
        held.count += 1
        try:
            yield
        finally:
            held.count -= 1
        return
    held = _acquire(out_dir, command)
    _HELD[key] = held
    try:
        yield
    finally:
        del _HELD[key]
        _release(held)
