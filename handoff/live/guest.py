"""The guest side of a live hand-off, over the VM's QMP: unplug, plug, confirm.

Unplug
    ``device_del`` of each slot's function 0 (:func:`handoff.live.sequence.del_ids`),
    then DEVICE_DELETED for every function's id, bounded (default
    :data:`RELEASE_TIMEOUT`). The guest decides when to let go: q35's ACPI
    hotplug asks its OS to eject the slot and never answers without one; a
    guest app holding the card, or a guest that refuses ejection, does the
    same. A wait that runs out raises :class:`GuestHeldError` and nothing on
    the host has changed (the group is still on vfio-pci, QEMU still holds it).
Plug
    ``device_add`` functions 1.. then function 0 (``multifunction=on``),
    then ``query-pci`` must list every id (:func:`confirm`).

A device_del sent again while QEMU still waits for the guest is refused by
QEMU ("already in the process of unplug"): that counts as sent. A device
already gone (the guest let go after an earlier refusal) is not waited for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, runtime_checkable

import trio

from handoff.base.errors import PciError
from handoff.live.sequence import GuestSlot, add_arguments, del_ids
from handoff.qemu.wire import QmpCommandError
from handoff.session.resources import VmHandle

__all__ = [
    "RELEASE_TIMEOUT",
    "EventHub",
    "EventSource",
    "GuestHeldError",
    "PlugError",
    "attach",
    "confirm",
    "guest_ids",
    "plug",
    "qemu_ids",
    "unplug",
]

#: Seconds the guest gets to let go of a live group (DEVICE_DELETED) by default.
RELEASE_TIMEOUT = 30.0

Event = dict[str, Any]


class GuestHeldError(PciError):
    """The guest did not release the group in time: nothing on the host changed."""


class PlugError(PciError):
    """device_add failed, or query-pci does not show every function; ``added``: the ids
    device_add had already added (the caller deletes them again)."""

    def __init__(self, message: str, *, fix: str | None = None,
                 added: Sequence[str] = ()) -> None:
        super().__init__(message, fix=fix)
        self.added = tuple(added)


@runtime_checkable
class EventSource(Protocol):
    """A VM handle that also delivers QMP events by name (the session's does)."""

    def subscribe(
        self, names: Iterable[str]
    ) -> AbstractContextManager[trio.MemoryReceiveChannel[Event]]: ...


class EventHub:
    """Fan-out of QMP events to subscribers by event name (unbounded: events are few)."""

    def __init__(self) -> None:
        self._subscribers: list[tuple[frozenset[str], trio.MemorySendChannel[Event]]] = []

    @contextmanager
    def subscribe(self, names: Iterable[str]) -> Iterator[trio.MemoryReceiveChannel[Event]]:
        send, receive = trio.open_memory_channel[Event](math.inf)
        entry = (frozenset(names), send)
        self._subscribers.append(entry)
        try:
            yield receive
        finally:
            self._subscribers.remove(entry)
            send.close()

    def deliver(self, event: Mapping[str, Any]) -> None:
        for names, send in self._subscribers:
            if event.get("event") in names:
                send.send_nowait(dict(event))


def _walk(buses: object) -> Iterator[str]:
    if not isinstance(buses, list):
        return
    for bus in buses:
        for device in bus.get("devices", []) if isinstance(bus, dict) else []:
            if device.get("qdev_id"):
                yield str(device["qdev_id"])
            bridge = device.get("pci_bridge")
            if isinstance(bridge, dict):
                yield from _walk([bridge])


async def guest_ids(vm: VmHandle) -> frozenset[str]:
    """Every device id query-pci lists, behind bridges and root ports too."""
    return frozenset(_walk(await vm.execute("query-pci")))


async def qemu_ids(vm: VmHandle) -> frozenset[str]:
    """The ids of the devices QEMU has (``/machine/peripheral``), whether or not the
    guest's firmware has numbered the bus behind their port yet (query-pci lists a
    device behind a root port only once it has)."""
    children = await vm.execute("qom-list", {"path": "/machine/peripheral"})
    if not isinstance(children, list):
        return frozenset()
    return frozenset(str(c["name"]) for c in children
                     if isinstance(c, dict) and str(c.get("type", "")).startswith("child<"))


async def confirm(vm: VmHandle, ids: Iterable[str]) -> None:
    """query-pci lists every id, or :class:`PlugError` names the missing ones."""
    missing = sorted(set(ids) - await guest_ids(vm))
    if missing:
        raise PlugError(
            f"the guest's PCI bus does not show {', '.join(missing)} after device_add",
            fix="see the QEMU log in the run directory; `handoff status` says where the GPU is",
        )


async def plug(vm: VmHandle, slots: Sequence[GuestSlot], *, driver: str = "vfio-pci") -> list[str]:
    """device_add every function, in order; returns the ids added. On a refusal,
    :class:`PlugError` (the ids added so far are in its ``added``)."""
    added: list[str] = []
    for slot in slots:
        for args in add_arguments(slot, driver):
            try:
                await vm.execute("device_add", args)
            except QmpCommandError as exc:
                raise PlugError(
                    f"device_add {args['id']} failed: {exc.description}",
                    fix="see the QEMU log in the run directory (`handoff status` names it); "
                    "the group went back to the host",
                    added=added,
                ) from exc
            added.append(str(args["id"]))
    return added


async def _send_del(vm: VmHandle, device_id: str) -> None:
    try:
        await vm.execute("device_del", {"id": device_id})
    except QmpCommandError as exc:
        if "process of unplug" not in exc.description:
            raise PlugError(
                f"device_del {device_id} failed: {exc.description}",
                fix="nothing changed on the host; the GPU stays in the guest",
            ) from exc


async def unplug(
    vm: VmHandle,
    events: EventSource,
    slots: Sequence[GuestSlot],
    *,
    release_within: float = RELEASE_TIMEOUT,
    present: frozenset[str] | None = None,
) -> float:
    """device_del each slot and wait for every id's DEVICE_DELETED; seconds waited.

    ``present``: the ids QEMU still has (:func:`qemu_ids`, asked when None);
    the others are already gone. A slot whose function 0 is not there (a plug
    undone before function 0 came) gets a device_del per present function.
    Raises :class:`GuestHeldError` when the
    guest has not let go after ``release_within`` seconds.
    """
    if present is None:
        present = await qemu_ids(vm)
    wanted = {i for slot in slots for i in slot.ids if i in present}
    start = time.monotonic()
    if not wanted:
        return 0.0
    with events.subscribe({"DEVICE_DELETED"}) as deleted:
        for slot in slots:
            first = del_ids(slot)
            ids = first if set(first) <= present else slot.ids
            for device_id in ids:
                if device_id in present:
                    await _send_del(vm, device_id)
        with trio.move_on_after(release_within):
            async for event in deleted:
                wanted.discard(str((event.get("data") or {}).get("device")))
                if not wanted:
                    break
    if wanted:
        raise GuestHeldError(
            f"the guest did not release {', '.join(sorted(wanted))} within {release_within:g} s "
            "(no DEVICE_DELETED): its OS did not eject the slot (no OS running, a program "
            "in the guest holding the card, or a guest that refuses ejection); nothing on the "
            "host changed, the GPU stays in the guest",
            fix="close what uses the GPU in the guest (in Windows: 'Safely Remove Hardware' "
            "must list it), make sure the guest has booted, then try again; "
            "`handoff gpu NAME host --timeout S` waits longer",
        )
    return time.monotonic() - start


async def attach(
    vm: VmHandle,
    events: EventSource,
    slots: Sequence[GuestSlot],
    *,
    driver: str = "vfio-pci",
    release_within: float = RELEASE_TIMEOUT,
) -> None:
    """:func:`plug` then :func:`confirm`; on a failure what was added is deleted again.

    Raises PlugError once the guest has let go of every added function (the
    caller may then return the group to the host), or GuestHeldError when
    the guest keeps a function it was given (the group stays in the guest).
    """
    try:
        await plug(vm, slots, driver=driver)
        await confirm(vm, (i for slot in slots for i in slot.ids))
    except PlugError as failure:
        present = await qemu_ids(vm)
        try:
            await unplug(vm, events, slots, release_within=release_within, present=present)
        except GuestHeldError as held:
            raise GuestHeldError(f"{failure.message}; and then: {held.message}",
                                 fix=held.fix) from failure
        raise
