"""Spawning QEMU, without trio: the one place its process is created.

QEMU starts in its own session (``start_new_session``) so the Ctrl-C a
person types reaches the supervisor only; the supervisor then decides how
QEMU ends (the shutdown ladder in handoff.session.supervisor). QEMU's stdout and stderr
go to a log file in the 0700 run directory: its own messages ("terminating
on signal 15", a vfio error) stay readable after it exits.

QEMU may run as an unprivileged user (``profile.vm.user``): subprocess
switches uid, gid and supplementary groups in the child itself, without a
Python ``preexec_fn`` (which is unsafe with the QMP bridge's thread).
RLIMIT_MEMLOCK for the child (VFIO pins all guest RAM) is raised in the
supervisor just around the fork, so the child inherits it before it execs;
libvirt does the same in its pre-exec hook.

No trio here: ``handoff run`` of a profile that changes nothing on the host
spawns QEMU before it imports trio (:mod:`handoff.session.supervisor.early`), and
:class:`handoff.qemu.process.QemuProcess` adopts the process.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from handoff.base.errors import HostError, QemuNotFoundError
from handoff.base.host import qemu_account

__all__ = ["raised_memlock", "spawn_qemu"]


@contextlib.contextmanager
def raised_memlock(limit_bytes: int | None) -> Iterator[None]:
    """Raise this process's RLIMIT_MEMLOCK to ``limit_bytes`` while forking a child.

    The child inherits the raised limit; ours is restored afterwards. ``None``
    changes nothing. Raising the hard limit needs CAP_SYS_RESOURCE.
    """
    if limit_bytes is None:
        yield
        return
    old = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    soft, hard = old
    if soft == resource.RLIM_INFINITY or soft >= limit_bytes:
        yield
        return
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= limit_bytes else limit_bytes
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit_bytes, new_hard))
    except (ValueError, OSError) as exc:
        raise HostError(
            f"cannot raise RLIMIT_MEMLOCK to {limit_bytes // (1024 * 1024)} MiB for QEMU "
            f"(hard limit {_limit_text(hard)}): {exc}",
            fix="run handoff as root, or raise the memlock limit in /etc/security/limits.d/",
        ) from exc
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, old)


def _limit_text(value: int) -> str:
    if value == resource.RLIM_INFINITY:
        return "unlimited"
    return f"{value // (1024 * 1024)} MiB"


@dataclass(frozen=True)
class _Identity:
    """uid, gid and supplementary groups the child switches to before exec."""

    uid: int
    gid: int
    groups: tuple[int, ...]


def _identity(user: str | None) -> _Identity | None:
    """The identity QEMU runs as for ``vm.user`` (None: the supervisor's own)."""
    if user is None:
        return None
    entry = qemu_account(user)
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise HostError(
            f"vm.user: running QEMU as {user!r} needs root",
            fix="run handoff as root, or remove vm.user from the profile",
        )
    return _Identity(entry.pw_uid, entry.pw_gid, tuple(os.getgrouplist(user, entry.pw_gid)))


def spawn_qemu(
    argv: Sequence[str],
    *,
    log_path: Path,
    pass_fds: Sequence[int] = (),
    user: str | None = None,
    memlock_bytes: int | None = None,
    scoped: bool = False,
    environment: Sequence[tuple[str, str]] = (),
) -> subprocess.Popen[bytes]:
    """Spawn QEMU in its own session with its output appended to ``log_path``.

    ``pass_fds`` are inherited under the same numbers (the QMP socketpair
    end). Raises QemuNotFoundError when the binary is missing. ``scoped``:
    ``argv`` is QEMU wrapped in ``systemd-run --scope`` (``cpu.isolate``),
    which must start as root and switches to ``user`` itself (``--uid``)
    after making the scope; the child only sets the user's groups.
    ``environment``: variables added to the supervisor's (the plan's).
    """
    identity = _identity(user)
    switch = None if identity is None or scoped else identity
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        if identity is not None:
            # QEMU running as the user must still be able to write its log.
            os.fchown(log_fd, identity.uid, -1)
        with raised_memlock(memlock_bytes):
            return subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                pass_fds=tuple(pass_fds),
                start_new_session=True,
                user=None if switch is None else switch.uid,
                group=None if switch is None else switch.gid,
                extra_groups=None if identity is None else identity.groups,
                env={**os.environ, **dict(environment)} if environment else None,
            )
    except FileNotFoundError as exc:
        raise QemuNotFoundError(
            f"QEMU is not installed: {argv[0]} not found",
            fix="apt-get install qemu-system-x86 (or set the binary in the profile)",
        ) from exc
    except PermissionError as exc:
        raise QemuNotFoundError(
            f"cannot execute {argv[0]}: {exc.strerror}",
            fix=f"check the permissions of {argv[0]}",
        ) from exc
    finally:
        os.close(log_fd)
