"""Run a check as an ordinary user, so a permission test means the same as root in CI.

Root reads and writes any file, so a test of "permission denied" would have to
skip there (and CI runs as root). Instead the check runs in a forked child
that has dropped to ``nobody`` (no supplementary groups), on files in a
directory that user may enter.
"""

from __future__ import annotations

import os
import pwd
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = "nobody"


@contextmanager
def open_directory() -> Iterator[Path]:
    """A fresh directory every user may enter (a test's tmp_path is root's 0700)."""
    with tempfile.TemporaryDirectory(prefix="handoff-unpriv-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


def run_as_nobody(check: Callable[[], None]) -> None:
    """Run ``check`` in a child as ``nobody``; re-raise its failure here as AssertionError.

    As an ordinary user already, ``check`` runs in the child all the same.
    """
    entry = pwd.getpwnam(NOBODY)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, run, report, never return into pytest
        os.close(read)
        status = 0
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
                os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
            check()
        except BaseException:
            os.write(write, traceback.format_exc().encode())
            status = 1
        os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise AssertionError(f"the check failed as {NOBODY}:\n{report}")
