"""The host display hand-over as a session resource (see :mod:`handoff.session.resources`).

Acquired before the GPU resource, released after it (the session releases
in reverse), so the order on a single-GPU host is:

before the VM
    refuse (nothing changed yet) a supervisor that stopping the units would
    kill, and a GPU the hand-off would refuse anyway; then, each step
    journaled before it is made and verified after: stop ``stop_units`` and
    wait (bounded) until nobody holds the card's DRM, fbdev or audio nodes;
    unbind the framebuffer vtconsoles; unbind the firmware framebuffer on
    the card. The GPU resource then moves the group to vfio-pci.
after the VM (and in `handoff recover`)
    the card must be back on its host driver with its DRM node (else its
    reset is tried once and the GPU journal finished again); then the
    framebuffer device and the consoles are bound again and the units
    started. A card that does not come back keeps the journal and the units
    stopped, and the failure goes to the system journal, `handoff status`
    and `handoff recover`. A hand-over stopped after the consoles' unbind but
    before the card left its driver (a SIGKILL there, or the GPU hand-off
    refused) leaves fbcon without its framebuffer: the kernel ignores the
    bind then, so the card (unless in use) is probed onto its driver once
    more, whose fresh framebuffer fbcon takes the consoles over on.

Why it stays over 500 lines: acquire, release and recover walk the same
journaled steps in opposite directions; each step's undo sits next to it so
that a reader can check the two agree.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio

from handoff import journal as jr
from handoff.base import systemctl
from handoff.base.errors import BindError, HandoffError, PreflightRefusedError, SysfsWriteError
from handoff.base.host import HostPaths
from handoff.display import units as sd
from handoff.display.journal import DisplayJournal, list_display_journals, lock_stem
from handoff.display.model import (
    NO_FALLBACK,
    NO_FALLBACK_FIX,
    DisplayStep,
    ReturnFailure,
    Takeover,
    VtConsole,
    console_fallback,
    consoles_to_rebind,
    consoles_to_unbind,
    firmware_fb_on_card,
    plan_return,
)
from handoff.display.plan import choose_card, takeover_drift
from handoff.display.sysfs import (
    read_bars,
    read_firmware_fbs,
    read_vtconsoles,
    reset_methods,
)
from handoff.display.where import where_refusal
from handoff.pci.address import PciAddress
from handoff.pci.holders import find_holders, nodes_of
from handoff.pci.model import Holder, PciDevice
from handoff.pci.ops import (
    KernelWriter,
    SysfsWriter,
    platform_bind,
    reprobe,
    reset_function,
    vtconsole_bind,
)
from handoff.pci.plan import HandoffPlan, plan_handoff
from handoff.pci.snapshot import take_snapshot
from handoff.pci.sysfs import group_members, groups_of, read_device
from handoff.profile import Profile
from handoff.session.resources import ControlRegistry, JsonObject, VmHandle

log = logging.getLogger("handoff.display")

Report = Callable[[str], None]
#: Finishes the GPU journal of a profile again, if one is left (after a reset): its lines.
#: The GPU hand-off's own recovery, passed in by whoever composes the two
#: (:mod:`handoff.session.recovery`): the display never imports it.
ReturnCard = Callable[[str], Awaitable[list[str]]]

#: Seconds the units' processes get to let go of the card's nodes once stopped.
HOLDER_WAIT = 15.0
#: Seconds the card's DRM node gets to appear once its driver is back.
NODE_WAIT = 15.0
_POLL = 0.1  # no event tells when a process closes a node or udev makes one: bounded polls


#: Seconds a vtconsole's ``bind`` gets to show a (un)bind the write asked for.
SETTLE_WAIT = 10.0


def _log_report(line: str) -> None:
    log.info("%s", line)


async def _settle(
    left: Callable[[], tuple[VtConsole, ...]], wait: float | None = None
) -> tuple[VtConsole, ...]:
    """Bounded poll until ``left()`` is empty (what is left after the wait otherwise)."""
    found = left()
    with trio.move_on_after(SETTLE_WAIT if wait is None else wait):
        while found:
            await trio.sleep(_POLL)
            found = left()
    return found


class Restorer:
    """Brings the host's display back from a :class:`DisplayJournal` (session and recover)."""

    def __init__(
        self, paths: HostPaths, writer: SysfsWriter, runner: systemctl.Runner, report: Report,
        return_card: ReturnCard, *, node_wait: float = NODE_WAIT,
    ) -> None:
        self.paths = paths
        self.writer = writer
        self.runner = runner
        self.report = report
        self.return_card = return_card
        self.node_wait = node_wait

    async def restore(self, journal: DisplayJournal) -> None:
        """Every undo step in order; raises BindError (journal kept) when the card stays away."""
        problems: list[str] = []
        for step in plan_return(journal.made):
            if step is DisplayStep.CARD_BACK:
                await self._card_back(journal)
            elif step is DisplayStep.REBIND_FRAMEBUFFER:
                problems += self._rebind_framebuffer(journal)
            elif step is DisplayStep.REBIND_CONSOLES:
                problems += await self._rebind_consoles(journal)
            elif step is DisplayStep.START_UNITS:
                problems += await self._start_units(journal)
        if problems:
            journal.failure = "; ".join(problems)
            journal.save()
            raise BindError(
                "the host display came back only in part: " + "; ".join(problems),
                fix=f"see `journalctl -t handoff`; then `handoff recover` (journal {journal.path})",
            )
        journal.remove()

    # ------------------------------------------------------------------ the card

    def _card_state(self, journal: DisplayJournal) -> tuple[bool, str]:
        try:
            device = read_device(self.paths, PciAddress.parse(journal.card))
        except HandoffError:
            return False, "it is gone from the bus"
        if device.driver != journal.card_driver:
            return False, f"it is on {device.driver or 'no driver'}"
        cards = [n for n in device.drm_nodes if n.startswith("card")]
        if journal.card_driver is not None and not cards:
            return False, f"{journal.card_driver} made no DRM node"
        missing = [n for n in cards if not (self.paths.dev / "dri" / n).exists()]
        if missing:
            return False, f"/dev/dri/{missing[0]} did not appear"
        return True, ""

    async def _wait_card(self, journal: DisplayJournal) -> tuple[bool, str]:
        back, why = self._card_state(journal)
        with trio.move_on_after(self.node_wait):
            while not back:
                await trio.sleep(_POLL)
                back, why = self._card_state(journal)
        return back, why

    async def _card_back(self, journal: DisplayJournal) -> None:
        back, why = await self._wait_card(journal)
        if back:
            return
        self.report(f"{journal.card} is not back on {journal.card_driver}: {why}; trying a reset")
        reset = self._reset(journal)
        await self._return_group_again(journal)
        back, why = await self._wait_card(journal)
        if back:
            self.report(f"{journal.card} is back on {journal.card_driver} after the reset")
            return
        failure = ReturnFailure(journal.card, journal.card_driver or "its driver", why, reset)
        journal.failure = failure.text()
        journal.save()
        systemctl.system_journal(self.runner, failure.text())
        self.report(failure.text())
        raise BindError(failure.message(), fix=failure.fix)

    def _reset(self, journal: DisplayJournal) -> str:
        """The device's reset, once, by the methods the kernel lists (``reset_method``)."""
        address = PciAddress.parse(journal.card)
        methods = reset_methods(self.paths, address)
        if not methods:
            return "it has no reset method (reset_method is empty)"
        try:
            reset_function(self.paths, self.writer, address)
        except SysfsWriteError as exc:
            return f"its reset ({' '.join(methods)}) failed: {exc.message}"
        return f"its reset ({' '.join(methods)}) was done, the card still did not come back"

    async def _return_group_again(self, journal: DisplayJournal) -> None:
        """After a reset: finish the GPU journal of this profile again, if it is left."""
        for line in await self.return_card(journal.profile):
            self.report(f"after the reset: {line}")

    # ------------------------------------------------------------------ framebuffer, consoles

    def _rebind_framebuffer(self, journal: DisplayJournal) -> list[str]:
        device, driver = journal.framebuffer, journal.framebuffer_driver
        if device is None or driver is None:
            return []
        fbs = {fb.device: fb for fb in read_firmware_fbs(self.paths)}
        now = fbs.get(device)
        if now is None:
            self.report(f"{device} is gone (the card's driver replaced it): nothing to rebind")
            return []
        if now.driver is None:
            try:
                platform_bind(self.paths, self.writer, driver, device, bind=True)
            except SysfsWriteError as exc:
                return [f"binding {device} to {driver} failed: {exc.message}"]
            now = {fb.device: fb for fb in read_firmware_fbs(self.paths)}.get(device)
        if now is None or now.driver != driver:
            return [f"{device} is not on {driver} after the bind"]
        self.report(f"{device} is back on {driver}")
        return []

    async def _rebind_consoles(self, journal: DisplayJournal) -> list[str]:
        def left() -> tuple[VtConsole, ...]:
            return consoles_to_rebind(read_vtconsoles(self.paths), journal.consoles)

        failed: list[str] = []
        for console in left():
            try:
                vtconsole_bind(self.paths, self.writer, console.node, bind=True)
            except SysfsWriteError as exc:
                failed.append(f"binding {console.node} ({console.name}) failed: {exc.message}")
                break
        still = await _settle(left)
        if still:
            # The card never left its driver (a hand-over stopped between the consoles'
            # unbind and the GPU's move): fbcon let go of that driver's framebuffer and
            # the kernel does not bind it again on request. The driver registering its
            # framebuffer afresh makes fbcon take the consoles over, as after a VM.
            failed = await self._reregister_framebuffer(journal, still[0])
            still = left()
        if failed or still:
            return failed or [f"{still[0].node} ({still[0].name}) is still unbound"]
        if journal.consoles:
            self.report("framebuffer console bound again: " + ", ".join(journal.consoles))
        return []

    async def _reregister_framebuffer(
        self, journal: DisplayJournal, console: VtConsole
    ) -> list[str]:
        """The card off its host driver and probed onto it again, once, unless in use."""
        driver = journal.card_driver
        address = PciAddress.parse(journal.card)
        if driver is None:
            return []
        try:
            device = read_device(self.paths, address)
        except HandoffError as exc:
            return [f"{console.node} ({console.name}) is still unbound: {exc.message}"]
        holders = find_holders(self.paths, nodes_of(self.paths, device))
        if device.driver != driver or holders:
            who = ", ".join(sorted({h.describe() for found in holders.values() for h in found}))
            why = f"in use by {who}" if who else f"on {device.driver or 'no driver'}"
            return [f"{console.node} ({console.name}) is still unbound and {journal.card} is "
                    f"{why}: not re-probed"]
        self.report(f"{console.node} did not bind while {driver} kept its framebuffer: "
                    f"{journal.card} re-probed on {driver} so fbcon takes the consoles again")
        try:
            reprobe(self.paths, self.writer, address, driver)
        except HandoffError as exc:
            return [f"re-probing {journal.card} on {driver} failed: {exc.message}"]
        back, why = await self._wait_card(journal)
        if not back:
            return [f"{journal.card} did not come back after the re-probe: {why}"]
        await _settle(lambda: consoles_to_rebind(read_vtconsoles(self.paths), journal.consoles))
        return []

    # ------------------------------------------------------------------ units

    async def _start_units(self, journal: DisplayJournal) -> list[str]:
        if not journal.units:
            return []
        ran = await trio.to_thread.run_sync(systemctl.start_units, self.runner, journal.units)
        down = [u for u in journal.units if not systemctl.is_active(self.runner, u)]
        if ran.status != 0 or down:
            return [f"`systemctl start {' '.join(journal.units)}` left "
                    f"{', '.join(down) or 'an error'} (exit {ran.status})"]
        self.report("started " + ", ".join(journal.units))
        return []


class DisplayHandover:
    """Session resource: the host's display taken off the only GPU while the VM runs."""

    def __init__(
        self,
        profile: Profile,
        paths: HostPaths,
        *,
        writer: SysfsWriter | None = None,
        runner: systemctl.Runner | None = None,
        return_card: ReturnCard,
        report: Report = _log_report,
        environ: Mapping[str, str] | None = None,
        holder_wait: float = HOLDER_WAIT,
        node_wait: float = NODE_WAIT,
        gpu: HandoffPlan | None = None,
        gpu_refusal: HandoffError | None = None,
        planned: Takeover | None = None,
        planned_refusal: HandoffError | None = None,
    ) -> None:
        self.profile = profile
        # What the session plan decided: the GPU hand-off (its groups, members, the card)
        # and what the hand-over takes, or their refusals; None: read and planned here.
        self.gpu = gpu
        self.gpu_refusal = gpu_refusal
        self.planned = planned
        self.planned_refusal = planned_refusal
        self.paths = paths
        self.writer = writer or KernelWriter()
        self.runner = runner or systemctl.SubprocessRunner()
        self.report = report
        self.environ = os.environ if environ is None else environ
        self.holder_wait = holder_wait
        self.restorer = Restorer(
            paths, self.writer, self.runner, report, return_card, node_wait=node_wait
        )
        self.memlock_bytes: int | None = None
        self.takeover: Takeover | None = None
        self._journal: DisplayJournal | None = None
        self._lock: jr.Locks | None = None
        self._failure: str | None = None

    @property
    def name(self) -> str:
        return "display"

    def _addresses(self) -> list[PciAddress]:
        return [p.address for p in self.profile.passthrough if not p.live]

    def _card(self) -> PciDevice:
        wanted = self._addresses()
        devices = (
            [d for d in self.gpu.detach_order if d.address in wanted] if self.gpu is not None
            else [read_device(self.paths, a) for a in wanted]
        )
        return choose_card(devices)

    # ------------------------------------------------------------------ acquire

    def _check(self) -> Takeover:
        """Read-only: where it runs, the GPU hand-off's own checks, what will be taken."""
        settings = self.profile.host_display
        facts = sd.where_facts(self.paths, self.runner, settings.stop_units, self.environ)
        refusal = where_refusal(facts, self.profile.name)
        if refusal is not None:
            raise PreflightRefusedError(f"refusing the display hand-over: {refusal[0]}",
                                        fix=refusal[1])
        stale = [p for p in list_display_journals(self.paths) if p.stem == self.profile.name]
        if stale:
            raise PreflightRefusedError(
                f"refusing the display hand-over: {stale[0]} records an earlier one not "
                "finished",
                fix="`handoff recover` brings that display back first (it says what failed)",
            )
        # The GPU hand-off's own rules, checked now (the units' holders go when they
        # stop): the session plan's verdict, or read and planned here without one.
        if self.gpu_refusal is not None:
            raise self.gpu_refusal
        if self.gpu is None:
            addresses = self._addresses()
            snapshot = take_snapshot(
                self.paths, self.writer.module_loadable,
                groups=groups_of(self.paths, addresses), addresses=addresses,
            )
            plan_handoff(
                addresses, dataclasses.replace(snapshot, holders={}),
                allow_in_group=[a for p in self.profile.passthrough for a in p.allow_in_group],
                handover=True,
            )
        if self.planned_refusal is not None:
            raise self.planned_refusal
        if self.planned is not None:
            return self._as_planned(self.planned)
        card = self._card()
        consoles = read_vtconsoles(self.paths)
        if consoles_to_unbind(consoles) and not console_fallback(consoles):
            raise PreflightRefusedError(f"refusing the display hand-over: {NO_FALLBACK}",
                                        fix=NO_FALLBACK_FIX)
        active = tuple(u for u in settings.stop_units if systemctl.is_active(self.runner, u))
        framebuffer = firmware_fb_on_card(
            read_firmware_fbs(self.paths), str(card.address), read_bars(self.paths, card.address)
        )
        return Takeover(str(card.address), active, consoles_to_unbind(consoles), framebuffer)

    def _as_planned(self, planned: Takeover) -> Takeover:
        """The plan's takeover, checked against the consoles and framebuffers now; the
        units of it that run now (stopped, and started after)."""
        drift = takeover_drift(planned, read_vtconsoles(self.paths),
                               read_firmware_fbs(self.paths))
        if drift:
            raise PreflightRefusedError(
                "refusing the display hand-over: the host changed after the session was "
                "planned: " + "; ".join(drift),
                fix="run the session again: it plans from the host as it is then "
                "(`handoff run --dry-run` shows that plan); nothing was changed",
            )
        active = tuple(u for u in planned.units if systemctl.is_active(self.runner, u))
        return dataclasses.replace(planned, units=active)

    async def acquire(self) -> None:
        takeover = self._check()
        self.takeover = takeover
        self.report(takeover.render())
        card = read_device(self.paths, PciAddress.parse(takeover.card))
        self._lock = jr.lock_named(
            self.paths, lock_stem(self.profile.name), f"handoff run {self.profile.name}",
            f"the host display of {self.profile.name}",
        )
        journal = DisplayJournal.begin(self.paths, self.profile.name, takeover.card, card.driver)
        journal.units = list(takeover.units)
        journal.consoles = [c.name for c in takeover.consoles]
        if takeover.framebuffer is not None:
            journal.framebuffer = takeover.framebuffer.device
            journal.framebuffer_driver = takeover.framebuffer.driver
        self._journal = journal
        try:
            journal.save()
            await self._stop_units(journal)
            await self._wait_released()
            await self._unbind_consoles(journal, takeover)
            self._unbind_framebuffer(journal, takeover)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.release()
            raise

    async def _stop_units(self, journal: DisplayJournal) -> None:
        if not journal.units:
            return
        journal.begin_step(DisplayStep.STOP_UNITS)
        ran = await trio.to_thread.run_sync(systemctl.stop_units, self.runner, journal.units)
        still = [u for u in journal.units if systemctl.is_active(self.runner, u)]
        if ran.status != 0 or still:
            raise HandoffError(
                f"`systemctl stop {' '.join(journal.units)}` failed (exit {ran.status}); still "
                f"active: {', '.join(still) or 'none'}",
                fix="see `systemctl status` of those units; nothing else was changed",
            )
        self.report("stopped " + ", ".join(journal.units))

    def _holders(self) -> dict[str, tuple[Holder, ...]]:
        addresses = self._addresses()
        members = (
            [d.address for g in self.gpu.groups for d in g.members] if self.gpu is not None
            else [a for g in sorted(groups_of(self.paths, addresses))
                  for a in group_members(self.paths, g)]
        ) or addresses
        nodes = [n for a in members for n in nodes_of(self.paths, read_device(self.paths, a))]
        return find_holders(self.paths, nodes)

    async def _wait_released(self) -> None:
        """Bounded: until no process holds the card's nodes; names those that remain."""
        holders = self._holders()
        with trio.move_on_after(self.holder_wait):
            while holders:
                await trio.sleep(_POLL)
                holders = self._holders()
        if holders:
            who = ", ".join(
                sorted({h.describe() for found in holders.values() for h in found})
            )
            raise PreflightRefusedError(
                f"refusing the display hand-over: after stopping the units, the card is still "
                f"in use: {who}",
                fix="add their units to [host_display] stop_units, or close them; the display "
                "was brought back",
            )

    async def _unbind_consoles(self, journal: DisplayJournal, takeover: Takeover) -> None:
        if not takeover.consoles:
            return
        journal.begin_step(DisplayStep.UNBIND_CONSOLES)
        for console in takeover.consoles:
            try:
                vtconsole_bind(self.paths, self.writer, console.node, bind=False)
            except SysfsWriteError as exc:
                raise HandoffError(
                    f"unbinding {console.node} ({console.name}) failed: {exc.message}",
                    fix="check `dmesg`; the display was brought back",
                ) from exc
        # The kernel reports the unbind in ``bind`` a moment after the write returns.
        left = await _settle(lambda: consoles_to_unbind(read_vtconsoles(self.paths)))
        if left:
            raise HandoffError(
                f"{left[0].node} ({left[0].name}) is still bound after the unbind",
                fix="check `dmesg`; the display was brought back",
            )
        self.report("framebuffer console unbound: " + ", ".join(journal.consoles))

    def _unbind_framebuffer(self, journal: DisplayJournal, takeover: Takeover) -> None:
        fb = takeover.framebuffer
        if fb is None or fb.driver is None:
            return
        journal.begin_step(DisplayStep.UNBIND_FRAMEBUFFER)
        try:
            platform_bind(self.paths, self.writer, fb.driver, fb.device, bind=False)
        except SysfsWriteError as exc:
            raise HandoffError(
                f"unbinding {fb.device} from {fb.driver} failed: {exc.message}",
                fix="check `dmesg`; the display was brought back",
            ) from exc
        now = {f.device: f for f in read_firmware_fbs(self.paths)}.get(fb.device)
        if now is not None and now.driver is not None:
            raise HandoffError(f"{fb.device} is still on {now.driver} after the unbind",
                               fix="check `dmesg`; the display was brought back")
        self.report(f"{fb.device} unbound from {fb.driver}")

    # ------------------------------------------------------------------ the rest

    def note_qemu_pid(self, pid: int) -> None:
        return

    async def vm_started(
        self, vm: VmHandle, nursery: trio.Nursery, control: ControlRegistry
    ) -> None:
        return

    async def release(self) -> None:
        journal = self._journal
        if journal is None:
            return
        try:
            await self.restorer.restore(journal)
        except HandoffError as exc:
            self._failure = exc.message
            raise
        finally:
            # Done, or left to `handoff recover` (the journal stays): either way the
            # session ends now, so the lock goes and recover may take over at once.
            self._journal = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def status(self) -> JsonObject:
        takeover = self.takeover
        return {
            "card": takeover.card if takeover else None,
            "units": list(takeover.units) if takeover else [],
            "consoles": [c.node for c in takeover.consoles] if takeover else [],
            "framebuffer": takeover.framebuffer.device if takeover and takeover.framebuffer
            else None,
            "journal": str(self._journal.path) if self._journal else None,
            "failure": self._failure,
        }


def display_failures(paths: HostPaths) -> Sequence[str]:
    """Recorded failures of display returns (for `handoff status` with no session)."""
    lines = []
    for path in list_display_journals(paths):
        try:
            journal = DisplayJournal.load(path)
        except HandoffError as exc:
            lines.append(str(exc))
            continue
        if journal.failure:
            lines.append(f"{journal.profile}: {journal.failure}")
        else:
            lines.append(f"{journal.profile}: host display still handed over ({path}); "
                         "`handoff recover` brings it back once the session is gone")
    return lines
