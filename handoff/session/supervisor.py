"""The supervisor: one VM session, in the foreground, under trio.

Steps:

1. preflight: profile host checks, host facts (accelerator, QEMU's user,
   IOMMU groups), the session plan (:mod:`handoff.session.plan`: the complete
   argv and the host changes), the plan's QEMU devices against the binary's.
   Read-only: a refusal here changes nothing.
2. run directory (0700) and its lock: one profile runs once.
3. host resources acquired in order (GPU to vfio-pci, input proxies, ...).
4. the plan's argv spawned (paused, in its own session); QMP connected over
   a socketpair; resources told the VM is up; ``cont``. For a plan with no
   resource, ``handoff run`` did steps 1, 2 and the spawn before importing
   trio (:mod:`handoff.session.early`); the session adopts that QEMU.
5. tasks: QMP events, control socket, signals, the resources' own tasks.
6. the VM ends (guest power-off, ``handoff stop``, Ctrl-C, SIGTERM, a crash,
   an exception in any task) → the shutdown ladder until QEMU is gone.
7. resources released in reverse order, then the run directory removed.

Steps 6 and 7 run on every exit path, inside a shielded cancel scope whose
every wait is bounded by a named constant, so cleanup can neither be
interrupted half-way nor hang forever.

The shutdown ladder is :mod:`handoff.session.ladder`; how an end becomes an exit
status and a sentence (and a failed launch a fix) is :mod:`handoff.session.end`.
Errors before the VM runs are raised as HandoffError (the CLI prints them and
exits 2).

Why it stays over 500 lines: it is one state machine (:class:`Session`), whose
steps share the state that makes every exit path safe (the phase, the stop
request, the acquired resources, QEMU's process and monitor); the parts that
can stand alone already do (plan, ladder, end classification, resources).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from handoff.base.errors import HandoffError, QemuLaunchError, QmpError, SessionError
from handoff.base.host import HostPaths
from handoff.control.accounts import resolve_access
from handoff.control.protocol import Command, Field
from handoff.control.server import ControlCommands, serve_control
from handoff.control.users import serve_user_control
from handoff.profile import Accelerator, Profile
from handoff.qemu.cmdline import format_argv
from handoff.qemu.firmware_vars import ensure_firmware_vars
from handoff.qemu.process import QemuProcess, read_log_tail
from handoff.qemu.qmp import (
    CONNECT_TIMEOUT,
    QmpConnection,
    QmpDisconnectedError,
    QmpEvent,
    connect_qmp,
)
from handoff.session.early import Prepared
from handoff.session.end import (
    ExitStatus,
    StopRequest,
    classify_end,
    launch_failure_fix,
)
from handoff.session.ladder import LadderTimeouts, Rung, shutdown_ladder
from handoff.session.plan import SessionPlan
from handoff.session.resources import HostResource, JsonObject, VmHandle
from handoff.session.rundir import RunDir
from handoff.session.start import (
    Preflight,
    default_resources,
    preflight,
    print_line,
    session_argv,
    session_plan,
)

if TYPE_CHECKING:
    from handoff.live.guest import EventHub
    from handoff.qemu.agent import GuestAgent

__all__ = [
    "LAUNCH_EXIT_GRACE",
    "RELEASE_TIMEOUT",
    "Outcome",
    "Phase",
    "Preflight",
    "Session",
    "SessionVm",
    "default_resources",
    "preflight",
    "session_argv",
    "session_plan",
]

log = logging.getLogger(__name__)

#: Seconds each resource's release() gets before the session moves on.
RELEASE_TIMEOUT = 60.0
#: Seconds a QEMU whose monitor hung up gets to exit, to report its exit code.
LAUNCH_EXIT_GRACE = 5.0

class Phase(enum.Enum):
    PREFLIGHT = "preflight"
    ACQUIRING = "acquiring"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    CLEANUP = "cleanup"
    ENDED = "ended"


@dataclass(frozen=True)
class Outcome:
    """How a session ended: the exit status and the sentence that explains it."""

    status: int
    summary: str
    qemu_returncode: int | None = None
    log_tail: str = ""


def describe_event(event: QmpEvent) -> str | None:
    """The status line for a QMP event that matters to a person (None: not shown)."""
    name = event.get("event")
    data = event.get("data") or {}
    if name == "SHUTDOWN":
        who = "guest" if data.get("guest") else "host"
        return f"SHUTDOWN by the {who} (reason: {data.get('reason', 'unknown')})"
    if name == "RESET":
        who = "guest" if data.get("guest") else "host"
        return f"RESET by the {who} (reason: {data.get('reason', 'unknown')})"
    if name == "STOP":
        return "STOP: the VM is paused"
    if name == "RESUME":
        return "RESUME: the VM runs"
    if name == "GUEST_PANICKED":
        info = data.get("info") or {}
        detail = f" ({info})" if info else ""
        return f"GUEST_PANICKED: the guest kernel panicked{detail}"
    return None


class SessionVm:
    """The :class:`handoff.session.resources.VmHandle` resources get: QEMU's pid and QMP."""

    def __init__(self, pid: int, qmp: QmpConnection) -> None:
        self._pid = pid
        self._qmp = qmp
        self._events: EventHub | None = None  # made by the first subscriber (start-up)

    def subscribe(
        self, names: Iterable[str]
    ) -> contextlib.AbstractContextManager[trio.MemoryReceiveChannel[dict[str, Any]]]:
        """QMP events named ``names`` from now on, while the context is open (typed
        subscription for resources: the live GPU waits for DEVICE_DELETED)."""
        if self._events is None:
            from handoff.live.guest import EventHub  # trio only: no edge module

            self._events = EventHub()
        return self._events.subscribe(names)

    def deliver(self, event: QmpEvent) -> None:
        if self._events is not None:  # else nobody subscribed: nobody to tell
            self._events.deliver(event)

    @property
    def pid(self) -> int:
        return self._pid

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        return await self._qmp.execute(command, arguments)


@dataclass
class _State:
    phase: Phase = Phase.PREFLIGHT
    started: float = field(default_factory=time.monotonic)
    stop: StopRequest | None = None
    force: bool = False
    shutdown: dict[str, Any] | None = None
    panicked: bool = False
    killed_by_ladder: bool = False
    accel: Accelerator | None = None
    accel_reason: str | None = None


class Session:
    """One foreground VM session. ``await Session(...).run()`` returns its Outcome.

    ``resources`` are acquired in order and released in reverse: a function
    that builds them from the preflight's plan (``handoff run`` passes
    :func:`handoff.session.start.default_resources`), or a list (test doubles). ``report`` gets
    one status line per phase and per QMP event that matters. ``timeouts``
    overrides the ladder's bounds (tests); ``handle_signals`` installs the
    SIGINT/SIGTERM/SIGHUP handlers (the CLI; off for in-process tests that
    drive stops through the control socket). ``trace_file`` turns on QEMU's
    input-event trace (tests and benchmarks observe forwarding there).
    ``prepared``: what ``handoff run`` did before importing trio
    (:func:`handoff.session.early.prepare`): its preflight is used instead of
    running one, and a QEMU it spawned early is adopted at once (from then on
    the session's cleanup covers it, and signals held since are acted on).
    """

    def __init__(
        self,
        profile: Profile,
        paths: HostPaths,
        resources: Sequence[HostResource] | Callable[[SessionPlan], Sequence[HostResource]],
        *,
        binary: str = "qemu-system-x86_64",
        report: Callable[[str], None] = print_line,
        timeouts: LadderTimeouts | None = None,
        handle_signals: bool = True,
        trace_file: os.PathLike[str] | None = None,
        memlock_bytes: int | None = None,
        greeting_timeout: float = CONNECT_TIMEOUT,
        on_qmp_ready: Callable[[], None] | None = None,
        prepared: Prepared | None = None,
    ) -> None:
        self.profile = profile
        self.paths = paths
        self._build = resources if callable(resources) else None
        self.resources: tuple[HostResource, ...] = () if callable(resources) else tuple(resources)
        self.binary = binary
        self.report = report
        self.timeouts = timeouts or LadderTimeouts.for_profile(profile)
        self.handle_signals = handle_signals
        self.trace_file = trace_file
        self.memlock_bytes = memlock_bytes
        self.greeting_timeout = greeting_timeout
        self.on_qmp_ready = on_qmp_ready
        self._prepared = prepared
        self.commands = ControlCommands()
        self.commands.register(Command.STATUS, self._control_status)
        self.commands.register(Command.STOP, self._control_stop)
        self._state = _State()
        self._process: QemuProcess | None = None
        self._acquired: list[HostResource] = []
        self._stop_requested = trio.Event()
        self._startup_scope: trio.CancelScope | None = None
        self._graceful_scope: trio.CancelScope | None = None
        self._events_done = trio.Event()
        self._agent: GuestAgent | None = None

    # ------------------------------------------------------------------ public

    @property
    def phase(self) -> Phase:
        return self._state.phase

    def request_stop(self, request: StopRequest, *, force: bool = False) -> None:
        """Start the ladder (graceful), or escalate a running one (force / second request)."""
        state = self._state
        if state.stop is not None or self._stop_requested.is_set():
            force = True
        if state.stop is None:
            state.stop = request
        if force and not state.force:
            state.force = True
            if self._graceful_scope is not None:
                self.report("forcing: not waiting for the guest any longer")
                self._graceful_scope.cancel()
        if self._startup_scope is not None and state.phase in (
            Phase.ACQUIRING,
            Phase.STARTING,
        ):
            self._startup_scope.cancel()
        self._stop_requested.set()

    def status(self) -> JsonObject:
        """The status object `handoff status` shows."""
        state = self._state
        process = self._process
        resources: dict[str, JsonObject] = {}
        for resource in self.resources:
            try:
                resources[resource.name] = resource.status()
            except Exception as exc:  # a status() bug must not break `handoff status`
                resources[resource.name] = {"error": f"{type(exc).__name__}: {exc}"}
        return {
            "profile": self.profile.name,
            "source": str(self.profile.source),
            "pid": os.getpid(),
            "qemu_pid": process.pid if process is not None else None,
            "accel": state.accel,
            "accel_reason": state.accel_reason,
            "phase": state.phase.value,
            "uptime": round(time.monotonic() - state.started, 3),
            "stopping": state.stop is not None,
            "resources": resources,
        }

    async def run(self) -> Outcome:
        """Run the session to its end. Raises HandoffError when it cannot start."""
        state = self._state
        state.started = time.monotonic()
        state.phase = Phase.PREFLIGHT
        prepared = self._prepared
        early = prepared.qemu if prepared is not None else None
        rundir = None
        if early is not None:  # adopted first: from here on every exit path is ours
            early.adopted = True
            rundir = early.rundir
            self._process = QemuProcess.adopt(early.popen, early.argv, rundir.qemu_log)
        try:
            if prepared is not None:
                checks = prepared.checks
            else:
                checks = preflight(
                    self.profile, self.paths, binary=self.binary, trace_file=self.trace_file
                )
            state.accel, state.accel_reason = checks.accel, checks.accel_reason
            if self._build is not None:
                self.resources = tuple(self._build(checks.plan))
            self.report(f"preflight ok: accelerator {checks.accel} ({checks.accel_reason})")
            for warning in checks.plan.warnings:
                self.report(f"warning: {warning}")
            for note in checks.plan.notes:
                self.report(note)
            if early is not None:
                access, locked = early.access, early.rundir
            else:
                access = resolve_access(self.profile, os.environ)  # [control] users exist
                locked = rundir = RunDir.acquire(
                    self.paths, self.profile.name, qemu_user=self.profile.vm.user
                )
            with _collapse_groups():
                async with trio.open_nursery() as top:
                    if self.handle_signals:
                        await top.start(self._signal_task)
                    # Up before any resource is acquired: `handoff stop` works
                    # during a slow GPU detach too.
                    await top.start(serve_control, locked.control_socket, self.commands)
                    await top.start(
                        serve_user_control, self.paths.run, self.profile.name, self.commands,
                        access,
                    )
                    try:
                        outcome = await self._run_locked(locked, checks)
                    finally:
                        top.cancel_scope.cancel()
            return outcome
        finally:
            if early is not None:
                self._end_unsupervised(early.monitor)
            if rundir is not None:
                state.phase = Phase.ENDED
                if not rundir.release():
                    self.report(
                        f"left {rundir.path} in place: it holds state for `handoff recover`"
                    )

    def _end_unsupervised(self, monitor: socket.socket) -> None:
        """An early-started QEMU the session failed before supervising (an error
        before the ladder could run): killed (paused: the guest never ran) and
        reaped; its monitor socket closed. Nothing to do when the cleanup ran."""
        monitor.close()
        process = self._process
        if process is None or process.returncode is not None:
            return
        if not process.kill_and_reap(LAUNCH_EXIT_GRACE):
            self.report(f"QEMU (pid {process.pid}) did not exit on SIGKILL")

    # ------------------------------------------------------------------ steps

    async def _run_locked(self, rundir: RunDir, checks: Preflight) -> Outcome:
        state = self._state
        qmp: QmpConnection | None = None
        try:
            with trio.CancelScope() as self._startup_scope:
                if state.stop is not None:  # stopped while preflight ran
                    self._startup_scope.cancel()
                agent_socket = checks.plan.paths.agent_socket
                if agent_socket is not None:
                    from handoff.qemu.agent import GuestAgent  # start-up: only when configured

                    self._agent = GuestAgent(agent_socket)
                if self._process is None:  # else started early, the vars made before
                    ensure_firmware_vars(checks.plan.profile)  # the firmware the plan chose
                state.phase = Phase.ACQUIRING
                for resource in self.resources:
                    await resource.acquire()
                    self._acquired.append(resource)
                    self.report(f"acquired {resource.name}")
                state.phase = Phase.STARTING
                qmp = await self._start_qemu(rundir, checks)
            self._startup_scope = None
            if qmp is None:
                assert state.stop is not None
                return await self._finish_cancelled_start()
            await self._supervise(qmp)
            return self._outcome()
        finally:
            with trio.CancelScope(shield=True):
                await self._cleanup(qmp)

    async def _start_qemu(self, rundir: RunDir, checks: Preflight) -> QmpConnection:
        early = self._prepared.qemu if self._prepared is not None else None
        if early is not None:  # spawned before trio was imported, adopted in run()
            ours = early.monitor
        else:
            ours = await self._spawn(rundir, checks)
        process = self._process
        assert process is not None
        self.report(f"QEMU started, pid {process.pid} (log: {rundir.qemu_log})")
        for resource in self._acquired:
            resource.note_qemu_pid(process.pid)
        try:
            qmp = await connect_qmp(
                ours, greeting_timeout=self.greeting_timeout, name=self.profile.name
            )
        except QmpError as exc:
            ours.close()
            raise await self._launch_failure(process, exc) from exc
        self.report("QMP connected")
        if self.on_qmp_ready is not None:
            self.on_qmp_ready()
        return qmp

    async def _spawn(self, rundir: RunDir, checks: Preflight) -> socket.socket:
        """QEMU spawned with the plan's argv; returns the supervisor's end of QMP's socketpair."""
        memlock = self._memlock_for_child()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = checks.plan.argv_with_monitor_fd(theirs.fileno())
            log.info("QEMU command: %s", format_argv(argv))
            self._process = await QemuProcess.start(
                argv,
                log_path=rundir.qemu_log,
                pass_fds=[theirs.fileno()],
                user=self.profile.vm.user,
                memlock_bytes=memlock,
                scoped=checks.plan.scoped,
                environment=checks.plan.environment,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    async def _launch_failure(
        self, process: QemuProcess, exc: HandoffError, detail: str = ""
    ) -> HandoffError:
        """The error to raise when QEMU's start failed at ``exc``.

        If QEMU exits within :data:`LAUNCH_EXIT_GRACE` it died: its exit status,
        command, log tail and the fix for what the log says. Else ``exc`` itself.
        """
        with trio.move_on_after(LAUNCH_EXIT_GRACE):
            await process.wait()
        returncode = process.returncode
        if returncode is None:
            return exc
        error = process.launch_error(returncode, detail)
        fix = launch_failure_fix(
            returncode,
            read_log_tail(process.log_path),
            user=self.profile.vm.user,
            run_dir=self.paths.run,
        )
        return QemuLaunchError(error.message, fix=fix)

    async def _start_resource(
        self, resource: HostResource, vm: VmHandle, nursery: trio.Nursery
    ) -> None:
        """``vm_started``; a failure because QEMU died meanwhile reports QEMU's death."""
        try:
            await resource.vm_started(vm, nursery, self.commands)
        except HandoffError as exc:
            process = self._process
            assert process is not None
            raise await self._launch_failure(
                process, exc, f"{resource.name}: {exc.message}"
            ) from exc

    def _memlock_for_child(self) -> int | None:
        """The RLIMIT_MEMLOCK QEMU needs: the largest any acquired resource asks for
        (the GPU resource does: VFIO pins all guest RAM), or the session's override."""
        wanted = [self.memlock_bytes] + [r.memlock_bytes for r in self._acquired]
        values = [v for v in wanted if v is not None]
        return max(values) if values else None

    async def _supervise(self, qmp: QmpConnection) -> None:
        process = self._process
        assert process is not None
        state = self._state
        vm = SessionVm(process.pid, qmp)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._event_task, qmp, vm)
            nursery.start_soon(self._ladder_task, qmp)
            for resource in self._acquired:
                await self._start_resource(resource, vm, nursery)
            if state.stop is None:
                try:
                    await qmp.execute("cont")
                except QmpDisconnectedError:
                    pass  # QEMU already exited: reported below
                else:
                    state.phase = Phase.RUNNING
                    self.report(
                        f"running (stop: Ctrl-C or `handoff stop {self.profile.name}`)"
                    )
            await process.wait()
            # The event channel ends when QMP hangs up; give it a moment to
            # deliver the last SHUTDOWN before the tasks are cancelled.
            with trio.move_on_after(1.0):
                await self._events_done.wait()
            nursery.cancel_scope.cancel()

    async def _finish_cancelled_start(self) -> Outcome:
        stop = self._state.stop
        assert stop is not None
        status = 128 + stop.signal_number if stop.signal_number is not None else ExitStatus.OK
        process = self._process
        rc = process.returncode if process is not None else None
        return Outcome(int(status), f"stopped on {stop.label} before the VM ran", rc)

    def _outcome(self) -> Outcome:
        process = self._process
        assert process is not None
        assert process.returncode is not None
        state = self._state
        status, summary = classify_end(
            process.returncode,
            state.shutdown,
            state.stop,
            killed_by_ladder=state.killed_by_ladder,
            panicked=state.panicked,
        )
        tail = process.log_tail() if status == ExitStatus.ABNORMAL else ""
        return Outcome(int(status), summary, process.returncode, tail)

    # ------------------------------------------------------------------ tasks

    async def _event_task(self, qmp: QmpConnection, vm: SessionVm) -> None:
        try:
            async for event in qmp.events:
                vm.deliver(event)
                name = event.get("event")
                if name == "SHUTDOWN":
                    self._state.shutdown = dict(event.get("data") or {})
                elif name == "GUEST_PANICKED":
                    self._state.panicked = True
                line = describe_event(event)
                if line is not None:
                    self.report(line)
        finally:
            self._events_done.set()

    async def _ladder_task(self, qmp: QmpConnection) -> None:
        await self._stop_requested.wait()
        await self._ladder(qmp, graceful=not self._state.force)

    async def _signal_task(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            task_status.started()
            early = self._prepared.qemu if self._prepared is not None else None
            for held in early.signals.received if early is not None else ():
                self._on_signal(held)  # held since before the early spawn
            async for number in signals:
                self._on_signal(number)

    def _on_signal(self, number: int) -> None:
        name = signal.Signals(number).name
        if self._state.stop is None:
            self.report(f"{name}: stopping (again to force)")
            self.request_stop(StopRequest("signal", number))
        elif not self._state.force:
            self.report(f"{name} again: forcing")
            self.request_stop(StopRequest("signal", number), force=True)
        else:
            self.report(f"{name}: already forcing; QEMU is being stopped")

    async def _control_status(self, _: Mapping[str, Any]) -> JsonObject:
        status = self.status()
        agent = self._agent
        if agent is not None and self._state.phase is Phase.RUNNING:
            status["guest_agent"] = await agent.status()
        return status

    async def _control_stop(self, message: Mapping[str, Any]) -> JsonObject:
        force = bool(message.get(Field.FORCE, False))
        self.report("stop requested through the control socket" + (" (force)" if force else ""))
        self.request_stop(StopRequest("control"), force=force)
        return {"stopping": True, Field.FORCE: self._state.force}

    # ------------------------------------------------------------------ ladder

    def _exited(self) -> bool:
        return self._process is not None and self._process.returncode is not None

    async def _ladder(self, qmp: QmpConnection | None, *, graceful: bool) -> None:
        """Bring QEMU down with :func:`shutdown_ladder`; the session's state follows it."""
        process = self._process
        assert process is not None
        if self._exited():
            return
        self._state.phase = Phase.STOPPING
        grace = trio.CancelScope() if graceful and not self._state.force else None
        self._graceful_scope = grace
        try:
            await shutdown_ladder(
                process, qmp, self.timeouts, grace=grace, report=self.report,
                on_rung=self._on_rung, agent=self._agent,
            )
        finally:
            self._graceful_scope = None

    def _on_rung(self, rung: Rung) -> None:
        if rung is not Rung.POWERDOWN:
            self._graceful_scope = None  # past the guest's rung: nothing left to force
        if rung is Rung.SIGKILL:
            self._state.killed_by_ladder = True

    # ------------------------------------------------------------------ cleanup

    async def _cleanup(self, qmp: QmpConnection | None) -> None:
        """Shielded: QEMU gone, QMP closed, resources released in reverse. Never hangs."""
        state = self._state
        state.phase = Phase.CLEANUP
        errors: list[str] = []
        process = self._process
        if process is not None and process.returncode is None:
            try:
                await self._ladder(qmp, graceful=False)
            except HandoffError as exc:
                errors.append(exc.message)
        if qmp is not None:
            await qmp.aclose()
        for resource in reversed(self._acquired):
            with trio.move_on_after(RELEASE_TIMEOUT) as scope:
                try:
                    await resource.release()
                except Exception as exc:
                    errors.append(f"releasing {resource.name} failed: {exc}")
                    self.report(f"releasing {resource.name} FAILED: {exc}")
                    continue
            if scope.cancelled_caught:
                errors.append(f"releasing {resource.name} took over {RELEASE_TIMEOUT:g} s")
                self.report(f"releasing {resource.name} timed out after {RELEASE_TIMEOUT:g} s")
            else:
                self.report(f"released {resource.name}")
        self._acquired.clear()
        if errors:
            raise SessionError(
                "the session did not end cleanly: " + "; ".join(errors),
                fix="`handoff recover` returns devices left behind; see the messages above",
            )


@contextlib.contextmanager
def _collapse_groups() -> Iterator[None]:
    """Re-raise a nursery's ExceptionGroup as its HandoffError when that is all it holds.

    trio wraps every task error in an ExceptionGroup; a person should see the
    HandoffError's message, not a group traceback.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        handoff = [leaf for leaf in leaves if isinstance(leaf, HandoffError)]
        if handoff and len(handoff) == len(leaves):
            raise handoff[0] from group
        if len(leaves) == 1:
            raise leaves[0] from group
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
