"""The reset ladder: a card that came back from the VM dead, brought back before its return.

Run by :meth:`handoff.pci.engine.Engine.give_back` (so by a session's
release, `handoff attach` and `handoff recover` alike) before the normal
return, in its worker thread. Each function's config space is read afresh
(``config``, :func:`handoff.pci.reset_sysfs.function_health`); a card with
a dead function (0xffff) or a vanished one climbs the ladder
:func:`handoff.pci.reset.next_rung` decides: the kernel's ``reset`` of the
dead functions once, then ``remove`` of the card's functions and a bus
``rescan``, then the normal return. Each rung's journal step is written
before its sysfs writes (``resetting``, ``rescanning``), so a supervisor
killed half-way leaves a journal `handoff recover` finishes the same way;
every write is a checked operation of :mod:`handoff.pci.ops`.

Each rung goes to the log (the returned notes) and to the system journal
(``logger -t handoff``); a card that stays dead keeps its record in the
journal with the outcome (`handoff status` shows it) and the fix.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from handoff import journal as jr
from handoff.base.errors import HandoffError
from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.pci.ops import DeviceOps, SysfsWriter, Ticket
from handoff.pci.reset import Health, Rung, cards, give_up_fix, next_rung
from handoff.pci.reset_sysfs import function_health
from handoff.pci.sysfs import device_dir

log = logging.getLogger("handoff.pci")

#: (text, error): one entry in the system journal.
SystemLog = Callable[[str, bool], None]
LOGGER_TIMEOUT = 10.0


def system_log(text: str, error: bool) -> None:
    """One entry in the system journal (syslog), tagged handoff, as the display hand-over's."""
    priority = "daemon.err" if error else "daemon.notice"
    try:
        subprocess.run(
            ["logger", "--tag", "handoff", "--priority", priority, "--", text],
            capture_output=True, timeout=LOGGER_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not write to the system journal (logger): %s", exc)


@dataclass
class LadderResult:
    """What the ladder did: lines for the log, and the functions it gave up on."""

    notes: list[str] = field(default_factory=list)
    given_up: dict[str, str] = field(default_factory=dict)  # address -> outcome


def revive(
    paths: HostPaths,
    writer: SysfsWriter,
    ticket: Ticket,
    journal: jr.Journal,
    syslog: SystemLog,
) -> LadderResult:
    """Every card of the journal with a dead or vanished function through the ladder."""
    result = LadderResult()
    records = {r.address: r for r in journal.devices}
    for card in cards([PciAddress.parse(a) for a in records]):
        _climb(paths, writer, ticket, journal, [records[str(a)] for a in card], result, syslog)
    return result


def _climb(
    paths: HostPaths,
    writer: SysfsWriter,
    ticket: Ticket,
    journal: jr.Journal,
    card: list[jr.DeviceRecord],
    result: LadderResult,
    syslog: SystemLog,
) -> None:
    def ops(record: jr.DeviceRecord) -> DeviceOps:
        ticket.address = record.address
        return DeviceOps(paths, writer, ticket, PciAddress.parse(record.address))

    def say(text: str, error: bool = False) -> None:
        result.notes.append(text)
        syslog(text, error)

    def short(record: jr.DeviceRecord) -> str:
        return PciAddress.parse(record.address).short

    def save() -> None:
        ticket.check()
        journal.save()

    names = ", ".join(short(r) for r in card)
    reset_tried = any(r.step in (jr.DeviceStep.RESETTING, jr.DeviceStep.RESCANNING) for r in card)
    rescan_done = climbed = False
    while True:
        healths = [function_health(paths, PciAddress.parse(r.address)) for r in card]
        dead = [r for r, h in zip(card, healths, strict=True) if h is Health.DEAD]
        resettable = [
            r for r in dead if (device_dir(paths, PciAddress.parse(r.address)) / "reset").exists()
        ]
        rung = next_rung(healths, can_reset=bool(resettable), reset_tried=reset_tried,
                         rescan_done=rescan_done)  # fmt: skip
        if rung is Rung.RETURN:
            if climbed:
                say(f"{names}: the card answers again (config space reads its ids)")
            return
        if not climbed:
            bad = ", ".join(
                f"{short(r)} {'reads ffff (dead)' if h is Health.DEAD else 'is gone from the bus'}"
                for r, h in zip(card, healths, strict=True) if h is not Health.ALIVE
            )
            say(f"after the VM {bad}: bringing the card back")
            climbed = True
        if rung is Rung.RESET:
            for record in resettable:
                record.step = jr.DeviceStep.RESETTING
                save()
                try:
                    ops(record).reset()
                    say(f"{short(record)}: the kernel's reset done")
                except HandoffError as exc:
                    say(f"{short(record)}: the kernel's reset failed: {exc.message}")
            reset_tried = True
        elif rung is Rung.RESCAN:
            for record in card:
                record.step = jr.DeviceStep.RESCANNING
            save()
            # A dead function: the whole card is re-enumerated. Only vanished ones: a
            # rescan finds them again without disturbing the functions that answer.
            remove = bool(dead)
            what = "removing the card's functions and rescanning" if remove else "rescanning"
            say(f"{names}: {what} the PCI bus")
            for record, state in reversed(list(zip(card, healths, strict=True))):
                if remove and state is not Health.GONE:
                    try:
                        ops(record).remove()
                    except HandoffError as exc:
                        say(f"{short(record)}: remove failed: {exc.message}")
            try:
                ops(card[0]).rescan()
            except HandoffError as exc:
                say(f"{names}: {exc.message}")
            rescan_done = reset_tried = True
        else:
            for record, state in zip(card, healths, strict=True):
                if state is Health.DEAD:
                    address = PciAddress.parse(record.address)
                    vendor, device = (int(x, 16) for x in record.ids.split(":"))
                    record.outcome = (
                        f"{address.short} is still dead (config space reads ffff) after the "
                        "kernel's reset and a remove + rescan"
                    )
                    result.given_up[record.address] = give_up_fix(vendor, device, address)
                    say(record.outcome, error=True)
            save()
            return


def ladder_failures(paths: HostPaths) -> list[str]:
    """Cards the ladder gave up on, from the journals left (for `handoff status`)."""
    lines = []
    for path in jr.list_journals(paths):
        try:
            journal = jr.Journal.load(path)
        except HandoffError as exc:
            lines.append(str(exc))
            continue
        for record in journal.devices:
            if record.outcome:
                address = PciAddress.parse(record.address)
                vendor, device = (int(x, 16) for x in record.ids.split(":"))
                lines.append(f"{journal.owner}: {record.outcome}\n  fix: "
                             f"{give_up_fix(vendor, device, address)}")
    return lines


def print_ladder_failures(paths: HostPaths) -> None:
    """`handoff status`: each card the ladder gave up on, with the fix."""
    for line in ladder_failures(paths):
        print(f"reset: {line}")
