"""The device_add / device_del sequence for a live group. Pure.

The guest layout is the one :func:`handoff.qemu.cmdline.passthrough_args`
gives at boot: each host slot of the profile's [[passthrough]] entries, in
profile order, behind its own root port ``rp<N>``; functions keep their
numbers when the slot's first member is function 0, else are numbered from
0; each device's id is :func:`~handoff.qemu.cmdline.vfio_device_id`. A live
group is plugged back into exactly that place, so the guest sees the same
card at the same address.

Order (measured in the testbed with the GPU lookalike):

plug
    functions 1.. first, then function 0 with ``multifunction=on`` (the guest
    scans the slot when function 0 appears, and finds the others there).
unplug
    ``device_del`` of function 0 only: it removes the whole slot (QEMU and
    the guest eject a slot, not a function); DEVICE_DELETED then comes for
    every function's id, which is what the release waits for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from handoff.pci.address import PciAddress
from handoff.profile import Passthrough
from handoff.qemu.cmdline import vfio_device_id

__all__ = ["GuestFunction", "GuestSlot", "add_arguments", "del_ids", "guest_slots", "live_slots"]


@dataclass(frozen=True)
class GuestFunction:
    """One passed-through function where the guest sees it."""

    address: PciAddress
    device_id: str
    bus: str
    function: int
    multifunction: bool
    x_vga: bool = False
    romfile: str | None = None


@dataclass(frozen=True)
class GuestSlot:
    """One host slot's functions behind root port ``bus`` (index ``port``)."""

    port: int
    bus: str
    functions: tuple[GuestFunction, ...]
    live: bool

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(f.device_id for f in self.functions)


def guest_slots(devices: Sequence[Passthrough]) -> tuple[GuestSlot, ...]:
    """Every root port of the boot argv and what sits behind it (cmdline's layout)."""
    slots: dict[str, list[Passthrough]] = {}
    for dev in devices:
        slots.setdefault(dev.address.slot_address, []).append(dev)
    out: list[GuestSlot] = []
    for port, members in enumerate(slots.values()):
        bus = f"rp{port}"
        members = sorted(members, key=lambda d: d.address.function)
        keep = members[0].address.function == 0
        functions: list[GuestFunction] = []
        for position, dev in enumerate(members):
            function = dev.address.function if keep else position
            functions.append(
                GuestFunction(
                    address=dev.address,
                    device_id=vfio_device_id(dev.address),
                    bus=bus,
                    function=function,
                    multifunction=function == 0 and (len(members) > 1 or dev.multifunction),
                    x_vga=dev.x_vga,
                    romfile=str(dev.romfile) if dev.romfile is not None else None,
                )
            )
        out.append(GuestSlot(port, bus, tuple(functions), live=any(m.live for m in members)))
    return tuple(out)


def live_slots(devices: Sequence[Passthrough]) -> tuple[GuestSlot, ...]:
    """The slots whose entries say ``live = true`` (a slot moves as one)."""
    return tuple(slot for slot in guest_slots(devices) if slot.live)


def add_arguments(slot: GuestSlot, driver: str = "vfio-pci") -> tuple[dict[str, object], ...]:
    """QMP ``device_add`` arguments for ``slot``, in order: functions 1.. then function 0."""
    ordered = sorted(slot.functions, key=lambda f: (f.function == 0, f.function))
    out: list[dict[str, object]] = []
    for f in ordered:
        args: dict[str, object] = {"driver": driver}
        if driver == "vfio-pci":
            args["host"] = str(f.address)
        args.update({"id": f.device_id, "bus": f.bus, "addr": f"00.{f.function}"})
        if f.multifunction:
            args["multifunction"] = "on"
        if f.x_vga:
            args["x-vga"] = "on"
        if f.romfile is not None:
            args["romfile"] = f.romfile
        out.append(args)
    return tuple(out)


def del_ids(slot: GuestSlot) -> tuple[str, ...]:
    """The ids ``device_del`` is sent for: function 0's (it removes the slot).

    A slot without a function 0 cannot exist in the guest (cmdline renumbers
    from 0), so this is always one id.
    """
    return tuple(f.device_id for f in slot.functions if f.function == 0)
