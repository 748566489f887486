"""``handoff run`` before trio: the preflight, the resources, and QEMU spawned early.

:func:`prepare` runs the read-only preflight and builds the host resources
from its plan, without trio. A plan that needs no resource changes nothing
on the host but the session's own run directory (the demo; a VM with disks
and a user-mode NIC): for it :func:`prepare` also checks the control access,
creates and locks the run directory, creates the firmware vars and spawns
QEMU (paused, ``-S``; QMP on one end of a socketpair) exactly as the
supervisor would, and the supervisor (:class:`handoff.session.supervisor.Session`)
adopts that process. QEMU's own start (tens of milliseconds to its QMP
greeting) then overlaps the import of trio, qemu.qmp and the supervisor
instead of following it (bench/startup.py).

A plan with resources starts as before: the session acquires them (each
journals before it changes the host) and only then spawns QEMU.

Every exit path: until the session adopts QEMU, :meth:`Prepared.close`
(the command calls it however it ends) kills and reaps QEMU, closes the
monitor socket and releases the run directory; once adopted, the session's
cleanup does that, as for a QEMU it spawned itself. Signals: from before the
run directory exists until the session's own receiver is up, SIGINT, SIGTERM
and SIGHUP are held (:class:`HeldSignals`: recorded, not acted on in the
middle of an import); the session then stops for the first one as if it had
just arrived (QEMU never ran; exit 128 + the signal's number).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from types import FrameType
from typing import Any

from handoff.base.host import HostPaths
from handoff.control.access import ControlAccess
from handoff.control.accounts import resolve_access
from handoff.profile import Profile
from handoff.qemu.cmdline import format_argv
from handoff.qemu.firmware_vars import ensure_firmware_vars
from handoff.qemu.spawn import spawn_qemu
from handoff.session.plan import SessionPlan
from handoff.session.resources import HostResource
from handoff.session.rundir import RunDir
from handoff.session.start import Preflight, default_resources, preflight, print_line

__all__ = ["HELD_SIGNALS", "EarlyQemu", "HeldSignals", "Prepared", "prepare"]

log = logging.getLogger(__name__)

#: The signals that stop a session; held between the early spawn and the session.
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class HeldSignals:
    """SIGINT, SIGTERM and SIGHUP recorded instead of acted on, while installed.

    trio leaves a SIGINT handler that is not Python's default alone, so a
    Ctrl-C before the session's receiver is up is recorded here too, never
    raised as KeyboardInterrupt in the middle of an import or of trio's set-up.
    """

    def __init__(self) -> None:
        self.received: list[signal.Signals] = []
        self._saved: dict[signal.Signals, Any] = {}

    def install(self) -> None:
        for number in HELD_SIGNALS:
            self._saved[number] = signal.signal(number, self._record)

    def _record(self, number: int, _frame: FrameType | None) -> None:
        self.received.append(signal.Signals(number))

    @property
    def first(self) -> signal.Signals | None:
        """The first signal held (None: none arrived)."""
        return self.received[0] if self.received else None

    def restore(self) -> None:
        """The handlers from before :meth:`install` back. Idempotent."""
        while self._saved:
            number, handler = self._saved.popitem()
            signal.signal(number, handler)


@dataclass
class EarlyQemu:
    """QEMU spawned before trio: what the session adopts (then ``adopted`` is True)."""

    access: ControlAccess
    rundir: RunDir
    popen: subprocess.Popen[bytes]
    argv: tuple[str, ...]
    monitor: socket.socket  # the supervisor's end of QMP's socketpair
    signals: HeldSignals
    adopted: bool = False


@dataclass
class Prepared:
    """What ``handoff run`` did before importing trio (:func:`prepare`)."""

    checks: Preflight
    resources: tuple[HostResource, ...]
    qemu: EarlyQemu | None = None

    def close(self) -> None:
        """Undo an early start no session adopted; put the signal handlers back. Idempotent."""
        early = self.qemu
        if early is None:
            return
        try:
            if not early.adopted:
                early.monitor.close()
                if early.popen.poll() is None:
                    early.popen.kill()  # paused (-S): the guest never ran
                early.popen.wait()
                early.rundir.release()
                early.adopted = True  # nothing left to undo
        finally:
            early.signals.restore()


def prepare(
    profile: Profile,
    paths: HostPaths,
    *,
    binary: str = "qemu-system-x86_64",
    trace_file: os.PathLike[str] | None = None,
) -> Prepared:
    """Preflight and resources; with no resource, QEMU spawned too (see the module).

    Raises HandoffError (nothing changed: no run directory, no QEMU) as the
    session's own preflight and start would.
    """
    checks = preflight(profile, paths, binary=binary, trace_file=trace_file)
    resources = tuple(default_resources(checks.plan, paths, report=print_line))
    if resources:
        return Prepared(checks, resources)
    access = resolve_access(profile, os.environ)  # [control] users exist
    signals = HeldSignals()
    signals.install()
    try:
        rundir = RunDir.acquire(paths, profile.name, qemu_user=profile.vm.user)
        try:
            qemu = _spawn(checks.plan, rundir, access, signals)
        except BaseException:
            rundir.release()
            raise
    except BaseException:
        signals.restore()
        raise
    return Prepared(checks, resources, qemu)


def _spawn(
    plan: SessionPlan, rundir: RunDir, access: ControlAccess, signals: HeldSignals
) -> EarlyQemu:
    """The session's own start of QEMU (firmware vars, socketpair, the plan's argv)."""
    ensure_firmware_vars(plan.profile)  # the firmware the plan chose
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        argv = plan.argv_with_monitor_fd(theirs.fileno())
        log.info("QEMU command: %s", format_argv(argv))
        popen = spawn_qemu(
            argv, log_path=rundir.qemu_log, pass_fds=[theirs.fileno()],
            user=plan.profile.vm.user, scoped=plan.scoped, environment=plan.environment,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return EarlyQemu(access, rundir, popen, argv, ours, signals)
