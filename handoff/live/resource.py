"""The live GPU groups as a session resource (see :mod:`handoff.session.resources`).

acquire
    as :class:`handoff.pci.resource.GpuHandoff` does for the other groups:
    recovery of earlier journals, preflight, the group locks (held for the
    whole session, whichever side the group is on), the journaled detach.
    The group starts in the guest: the plan's argv cold-plugs it behind its
    hotplug-capable root port.
vm_started
    registers the control command ``gpu`` (``{"command": "gpu", "to":
    "host"|"guest"|"toggle", "release_within": S}``). ``input.gpu_hotkey``
    reaches :meth:`LiveGpu.move` (toggle) through the input resource (the
    session wires it), as the command does.
move to the host
    journal step RELEASING first; device_del and DEVICE_DELETED, bounded
    (:func:`handoff.live.guest.unplug`); a guest that does not let go
    changes nothing on the host (step back to IN_GUEST, GuestHeldError).
    Then the engine returns the group exactly as at shutdown (journaled,
    verified); its journal is removed: ON_HOST.
move to the guest
    preflight as before boot (a host process holding the card is named with
    its PID and refused); a new journal with step ATTACHING; the engine's
    detach to vfio-pci; the QEMU pid noted; device_add in order; query-pci
    confirms; step IN_GUEST. A failing device_add (or confirmation) deletes
    what was added and returns the group to the host.
release
    after QEMU exited: a group in the guest (or mid-way) returns as today;
    one on the host stays there (nothing to do).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from handoff import journal as jr
from handoff.base.errors import HandoffError, PciError
from handoff.base.host import HostPaths
from handoff.control.protocol import Command, Field, Side, requested_side
from handoff.journal.recover import recover
from handoff.live.guest import RELEASE_TIMEOUT, EventSource, GuestHeldError, attach, unplug
from handoff.live.recovery import live_recoverer
from handoff.live.sequence import live_slots
from handoff.live.state import LiveEvent, LiveState, LiveStep, transition
from handoff.pci.engine import WRITE_TIMEOUT, Engine
from handoff.pci.ops import KernelWriter, SysfsWriter
from handoff.pci.plan import HandoffPlan, plan_handoff
from handoff.pci.resource import prepare, qemu_owner, settled_snapshot
from handoff.pci.sysfs import groups_of
from handoff.profile import Profile
from handoff.session.memlock import check_memlock
from handoff.session.resources import ControlRegistry, JsonObject, VmHandle

log = logging.getLogger("handoff.live")

__all__ = ["LiveGpu", "live_journal_name"]


def live_journal_name(profile_name: str) -> str:
    """``<profile>@live``: '@' cannot occur in a profile name, so no profile's own
    journal can have this name."""
    return f"{profile_name}@live"


Moved = Callable[[LiveState], Awaitable[None]]


def _log_report(line: str) -> None:
    log.info("%s", line)


class LiveGpu:
    """Session resource: the profile's ``live = true`` groups, movable while the VM runs."""

    def __init__(
        self,
        profile: Profile,
        paths: HostPaths,
        *,
        writer: SysfsWriter | None = None,
        write_timeout: float = WRITE_TIMEOUT,
        report: Callable[[str], None] = _log_report,
        release_within: float = RELEASE_TIMEOUT,
        driver: str = "vfio-pci",
        memlock_check: Callable[[Profile, HostPaths], int | None] = check_memlock,
        clock: Callable[[], float] = time.time,
        planned: HandoffPlan | None = None,
        refusal: HandoffError | None = None,
    ) -> None:
        self.profile = profile
        # The live groups' hand-off the session plan decided, or its refusal; None, None:
        # read and planned at acquire.
        self.planned = planned
        self.refusal = refusal
        self.paths = paths
        self.engine = Engine(paths, writer or KernelWriter(), write_timeout=write_timeout)
        self.report = report
        self.release_within = release_within
        self.driver = driver  # vfio-pci; tests stand an emulated device in
        self.entries = tuple(p for p in profile.passthrough if p.live)
        self.slots = live_slots(profile.passthrough)
        self._memlock_check = memlock_check
        self._clock = clock
        self.memlock_bytes: int | None = None
        self.on_moved: Moved | None = None  # follow_gpu: the input resource's hook
        self.state = LiveState.IN_GUEST
        self.since = clock()
        self.plan: HandoffPlan | None = None
        self.last_error: str | None = None
        self.timings: dict[str, float] = {}
        self._locks: jr.Locks | None = None
        self._journal: jr.Journal | None = None
        self._vm: VmHandle | None = None
        self._events: EventSource | None = None
        self._qemu_pid: int | None = None

    @property
    def name(self) -> str:
        return "live-gpu"

    # ------------------------------------------------------------------ lifecycle

    async def acquire(self) -> None:
        if not self.entries:
            return
        self.memlock_bytes = self._memlock_check(self.profile, self.paths)
        addresses = [p.address for p in self.entries]
        groups = groups_of(self.paths, addresses)
        # Its own journals only: a boot-time GPU journal on these groups is the GPU
        # hand-off's, and prepare() below refuses it with `handoff recover` as the fix.
        recovered = await recover(
            self.paths, [live_recoverer(self.engine)],
            select=lambda journal: journal.kind is jr.Kind.SESSION
            and bool(groups.intersection(journal.groups)),
        )
        for line in recovered.returned + recovered.discarded:
            self.report(f"recovered from an earlier session: {line}")
        planned, refusal = self.planned, self.refusal
        if recovered.returned:  # the host changed under the plan: planned again
            planned, refusal = None, None
        if refusal is not None:
            raise refusal
        prepared = await prepare(
            self.paths, self.engine.writer, addresses,
            allow_in_group=[a for p in self.entries for a in p.allow_in_group],
            owner=f"handoff run {self.profile.name} (live GPU)",
            planned=planned,
        )
        self._locks = prepared.locks
        self.plan = prepared.plan
        self.report("live GPU hand-off plan:\n" + prepared.plan.render())
        journal = self._new_journal(LiveStep.IN_GUEST)
        try:
            await self.engine.detach(prepared.plan, journal, vfio_owner=self._owner())
        except BaseException:
            self._drop_locks()
            raise
        self._journal = journal
        self._set(LiveState.IN_GUEST)

    def note_qemu_pid(self, pid: int) -> None:
        self._qemu_pid = pid
        if self._journal is not None:
            self._journal.note_qemu(pid, jr.process_start_time(self.paths, pid))

    async def vm_started(
        self, vm: VmHandle, nursery: trio.Nursery, control: ControlRegistry
    ) -> None:
        if not self.entries:
            return
        if not isinstance(vm, EventSource):
            raise PciError("the live GPU needs QMP events from the session (a bug in handoff)")
        self._vm, self._events = vm, vm
        control.register(Command.GPU, self._control)

    async def release(self) -> None:
        journal = self._journal
        try:
            if journal is not None:
                for line in await self.engine.give_back(journal):
                    self.report(line)
                self._journal = None
                self._set(LiveState.ON_HOST)
        finally:
            self._drop_locks()

    def status(self) -> JsonObject:
        return {
            "state": self.state.value,
            "since": self.since,
            "since_text": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)),
            "groups": list(self.plan.group_ids) if self.plan else [],
            "devices": [str(p.address) for p in self.entries],
            "journal": str(self._journal.path) if self._journal else None,
            "last_error": self.last_error,
            "timings": dict(self.timings),
        }

    # ------------------------------------------------------------------ moves

    async def move(self, target: Side, *, release_within: float | None = None) -> JsonObject:
        """Move the live groups to ``target``; the status afterwards. HandoffError to refuse."""
        if self._vm is None:
            raise PciError("gpu: the VM is not running yet", fix="wait for `running`, retry")
        if target is Side.TOGGLE:
            target = Side.HOST if self.state is LiveState.IN_GUEST else Side.GUEST
        event = LiveEvent.TO_HOST if target is Side.HOST else LiveEvent.TO_GUEST
        if transition(self.state, event) is None:
            if self.state.value == target.value:
                return {**self.status(), "changed": False}
            raise PciError(
                f"gpu: a move is under way ({self.state.value})",
                fix="wait for it to finish (`handoff status`)",
            )
        try:
            if event is LiveEvent.TO_HOST:
                await self._to_host(release_within or self.release_within)
            else:
                await self._to_guest()
        except HandoffError as exc:
            self.last_error = exc.message
            raise
        self.last_error = None
        if self.on_moved is not None:
            await self.on_moved(self.state)
        return {**self.status(), "changed": True}

    async def _to_host(self, within: float) -> None:
        assert self._vm is not None
        assert self._events is not None
        journal = self._journal
        assert journal is not None
        self._step(journal, LiveEvent.TO_HOST)
        start = time.monotonic()
        try:
            await unplug(self._vm, self._events, self.slots, release_within=within)
        except HandoffError:
            self._step(journal, LiveEvent.REFUSED)
            raise
        released = time.monotonic()
        for line in await self.engine.give_back(journal):
            self.report(line)
        self._journal = None
        self.timings = {"guest_release": released - start, "host_return": time.monotonic()
                        - released}
        self._set(LiveState.ON_HOST)  # RELEASED: no journal step (the journal is gone)
        self.report("live GPU: on the host")

    async def _to_guest(self) -> None:
        assert self._vm is not None
        assert self._events is not None
        addresses = [p.address for p in self.entries]
        start = time.monotonic()
        self._set(LiveState.TO_GUEST_ATTACHING)
        try:
            snapshot = await settled_snapshot(
                self.paths, self.engine.writer, groups=groups_of(self.paths, addresses),
                addresses=addresses,
            )
            plan = plan_handoff(addresses, snapshot,
                                allow_in_group=[a for p in self.entries for a in p.allow_in_group])
            checked = time.monotonic()
            journal = self._new_journal(LiveStep.ATTACHING)
            await self.engine.detach(plan, journal, vfio_owner=self._owner())
        except BaseException:
            self._set(LiveState.ON_HOST)
            raise
        self._journal = journal
        if self._qemu_pid is not None:
            self.note_qemu_pid(self._qemu_pid)
        on_vfio = time.monotonic()
        try:
            await attach(self._vm, self._events, self.slots, driver=self.driver,
                         release_within=self.release_within)
        except GuestHeldError:
            self._step(journal, LiveEvent.ATTACHED)  # the guest keeps what it got
            raise
        except HandoffError:
            with trio.CancelScope(shield=True):
                await self.engine.give_back(journal)
            self._journal = None
            self._set(LiveState.ON_HOST)
            raise
        self._step(journal, LiveEvent.ATTACHED)
        self.timings = {"preflight": checked - start, "to_vfio": on_vfio - checked,
                        "guest_attach": time.monotonic() - on_vfio}
        self.report("live GPU: in the guest")

    # ------------------------------------------------------------------ helpers

    def _new_journal(self, step: LiveStep) -> jr.Journal:
        journal = jr.Journal.begin(
            self.paths, live_journal_name(self.profile.name), jr.Kind.SESSION, self.profile.name
        )
        journal.live = step.value
        return journal

    def _step(self, journal: jr.Journal, event: LiveEvent) -> None:
        """Write-ahead: the transition's journal step, then the new state."""
        move = transition(self.state, event)
        if move is None:
            raise AssertionError(f"live GPU: {event.value} in {self.state.value}")
        journal.live = move.step.value
        journal.save()
        self._set(move.to)

    def _set(self, state: LiveState) -> None:
        if state is not self.state:
            self.state = state
            self.since = self._clock()

    def _owner(self) -> tuple[int, int] | None:
        return qemu_owner(self.profile.vm.user)

    def _drop_locks(self) -> None:
        if self._locks is not None:
            self._locks.release()
            self._locks = None

    async def _control(self, message: Mapping[str, Any]) -> JsonObject:
        within = message.get(Field.RELEASE_WITHIN)
        if within is not None and (not isinstance(within, int | float) or within <= 0):
            raise PciError(f"gpu: release_within {within!r} is not a positive number of seconds")
        return await self.move(requested_side(message, Command.GPU),
                               release_within=float(within) if within is not None else None)
