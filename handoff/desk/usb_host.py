"""[[usb]] as a host resource: the refusals checked, each passed node handed to vm.user.

QEMU's usb-host opens ``/dev/bus/usb/BBB/DDD`` of each device an entry
matches, whenever one is there (at start, and again after a re-plug). As root
it can; as ``vm.user`` the node must be that user's: the resource records
each node's owner and mode in the desk journal (``<profile>+usb.json``)
before it changes them, and a udev monitor does the same for a device that
appears while the VM runs (a re-plugged device gets a new node). After QEMU
has exited, and in ``handoff recover``, each node still there gets its owner
and mode back.

Reading the host (:func:`read_host_usb`) goes through pyudev for the input
side (which evdev nodes are keyboards, which the input hand-off would take:
the same :class:`handoff.input.devices.Selection` it uses) and sysfs for the
rest.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from handoff import journal as jr
from handoff.base.errors import DeskError
from handoff.base.host import HostPaths, qemu_account
from handoff.desk import usb as core
from handoff.desk.journal import DeskHold
from handoff.profile import InputBackend, Profile
from handoff.session.resources import ControlRegistry, JsonObject, VmHandle


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _inputs(profile: Profile) -> dict[str, tuple[list[str], list[str]]]:
    """USB device name -> (its keyboard event nodes, the nodes input would take); plus
    "" -> every keyboard of the host."""
    import pyudev

    from handoff.input.devices import Selection, describe

    selection = None
    if profile.input.backend is not InputBackend.NONE:
        selection = Selection.from_profile(profile.input.devices, profile.input.exclude)
    found: dict[str, tuple[list[str], list[str]]] = {"": ([], [])}
    for device in pyudev.Context().list_devices(subsystem="input"):
        info = describe(device)
        if info is None or info.is_proxy:
            continue
        parent = device.find_parent("usb", "usb_device")
        name = parent.sys_name if parent is not None else None
        if info.keyboard:
            found[""][0].append(info.node)
        if name is None:
            continue
        keyboards, grabbed = found.setdefault(name, ([], []))
        if info.keyboard:
            keyboards.append(info.node)
        if selection is not None and selection.wants(info):
            grabbed.append(info.node)
    return found


def read_host_usb(paths: HostPaths, profile: Profile) -> tuple[list[core.HostUsb], int]:
    """Every USB device on the host (root hubs left out) and the host's keyboard count."""
    inputs = _inputs(profile)
    devices = []
    root = paths.sys / "bus" / "usb" / "devices"
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        vendor = _read(entry / "idVendor")
        if not vendor or entry.name.startswith("usb") or ":" in entry.name:
            continue
        keyboards, grabbed = inputs.get(entry.name, ([], []))
        devices.append(core.HostUsb(
            name=entry.name, busnum=int(_read(entry / "busnum") or 0),
            devnum=int(_read(entry / "devnum") or 0), vendor=vendor.lower(),
            product=_read(entry / "idProduct").lower(), product_name=_read(entry / "product"),
            keyboards=tuple(keyboards), grabbed=tuple(grabbed),
        ))
    return devices, len(inputs[""][0])


class UsbPassthrough:
    """The ``usb`` resource (:class:`handoff.session.resources.HostResource`)."""

    name = "usb"

    def __init__(
        self, profile: Profile, paths: HostPaths, *, report: Callable[[str], None] = print
    ) -> None:
        self.profile = profile
        self.paths = paths
        self.report = report
        self._hold = DeskHold(paths)
        self._owner: tuple[int, int] | None = None
        self._qemu_pid: int | None = None

    @property
    def memlock_bytes(self) -> int | None:
        return None

    def check(self) -> list[core.HostUsb]:
        """The refusals (two owners, the only keyboard), before anything changes."""
        devices, keyboards = read_host_usb(self.paths, self.profile)
        problem = core.refusal(self.profile.usb, devices, keyboards)
        if problem is not None:
            raise DeskError(f"[[usb]]: {problem[0]}", fix=problem[1])
        return [d for d in devices if any(core.matches(u, d) for u in self.profile.usb)]

    async def acquire(self) -> None:
        passed = self.check()
        user = self.profile.vm.user
        if user is not None:
            account = qemu_account(user)
            if account.pw_uid != os.geteuid():
                self._owner = (account.pw_uid, account.pw_gid)
                name = self.profile.name
                self._hold.take(name, "usb", f"the USB nodes of {name}")
                try:
                    for device in passed:
                        self._hand_over(self.paths.dev / device.node.removeprefix("/dev/"))
                except BaseException:
                    await self.release()
                    raise
        for usb in self.profile.usb:
            now = [d for d in passed if core.matches(usb, d)]
            where = ", ".join(f"{d.name} ({d.product_name or d.node})" for d in now)
            where = where or "not plugged in (attached when it is)"
            self.report(f"USB: {core.describe(usb)}: {where}")

    def _hand_over(self, node: Path) -> None:
        """Record the node's owner and mode (write-ahead), then give it to QEMU's user."""
        journal, owner = self._hold.journal, self._owner
        assert journal is not None
        assert owner is not None
        try:
            st = os.stat(node)
        except FileNotFoundError:
            return
        if not any(n.path == str(node) for n in journal.nodes):
            mode = st.st_mode & 0o7777
            journal.nodes.append(jr.NodeRecord(str(node), st.st_uid, st.st_gid, mode))
            journal.save()
        try:
            os.chown(node, *owner)
            os.chmod(node, 0o660)
        except OSError as exc:
            raise DeskError(f"[[usb]]: cannot give {node} to vm.user: {exc.strerror}",
                            fix="run handoff as root") from exc

    def note_qemu_pid(self, pid: int) -> None:
        self._qemu_pid = pid
        self._hold.note_qemu_pid(pid)

    async def vm_started(
        self, vm: VmHandle, nursery: trio.Nursery, control: ControlRegistry
    ) -> None:
        if self._hold.journal is not None:
            nursery.start_soon(self._follow_plugs)

    async def _follow_plugs(self) -> None:
        """A matching device plugged in while the VM runs: its new node to vm.user, at once
        (QEMU's usb-host retries opening it)."""
        import pyudev

        context = pyudev.Context()
        monitor = pyudev.Monitor.from_netlink(context, source="udev")
        monitor.filter_by("usb", "usb_device")
        monitor.start()
        while True:
            await trio.lowlevel.wait_readable(monitor.fileno())
            while (device := monitor.poll(timeout=0)) is not None:
                if device.action == "add":
                    self._plugged(device)

    def _plugged(self, device: Any) -> None:
        attrs = device.attributes
        try:
            host = core.HostUsb(
                name=device.sys_name, busnum=int(attrs.asstring("busnum")),
                devnum=int(attrs.asstring("devnum")),
                vendor=attrs.asstring("idVendor").lower(),
                product=attrs.asstring("idProduct").lower(),
            )
        except (KeyError, ValueError):
            return
        if any(core.matches(u, host) for u in self.profile.usb):
            self._hand_over(self.paths.dev / host.node.removeprefix("/dev/"))
            self.report(f"USB: {host.name} plugged in: {host.node} handed to vm.user")

    async def release(self) -> None:
        self._hold.end()

    def _held_by_qemu(self) -> set[str]:
        pid = self._qemu_pid
        held: set[str] = set()
        if pid is None:
            return held
        fds = self.paths.proc / str(pid) / "fd"
        with contextlib.suppress(OSError):
            for fd in fds.iterdir():
                with contextlib.suppress(OSError):
                    held.add(os.readlink(fd))
        return held

    def status(self) -> JsonObject:
        try:
            devices, _ = read_host_usb(self.paths, self.profile)
        except Exception:  # status must answer whatever the host does
            devices = []
        held = self._held_by_qemu()
        entries = []
        for usb in self.profile.usb:
            now = [d for d in devices if core.matches(usb, d)]
            entries.append({
                "entry": core.describe(usb),
                "host": [f"{d.name} {d.node}" for d in now],
                "attached": any(d.node in held for d in now),
            })
        return {"devices": entries}
