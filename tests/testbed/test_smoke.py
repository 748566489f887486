"""The testbed itself: the kernel facts every GPU and input test relies on.

These use plain sysfs writes and python-evdev directly (not handoff's engine):
they prove the testbed, so a failure here means the VM, not handoff, is wrong.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from handoff.pci.address import PciAddress
from tests.testbed import guest
from tests.testbed.devices import GpuLookalike, Ich9Group

pytestmark = pytest.mark.realkernel


def test_the_gpu_lookalike_and_its_audio_share_one_iommu_group_alone(
    gpu_lookalike: GpuLookalike,
) -> None:
    assert guest.iommu_group_of(gpu_lookalike.audio) == gpu_lookalike.group
    assert guest.group_members(gpu_lookalike.group) == [gpu_lookalike.vga, gpu_lookalike.audio]
    assert guest.driver_of(gpu_lookalike.vga) == "bochs-drm"
    assert guest.driver_of(gpu_lookalike.audio) == "snd_hda_intel"


def test_the_ich9_chipset_functions_share_one_iommu_group(ich9_group: Ich9Group) -> None:
    assert guest.group_members(ich9_group.group) == sorted(ich9_group.functions)
    drivers = [guest.driver_of(f) for f in ich9_group.functions]
    assert drivers == ["lpc_ich", "ahci", "i801_smbus"]


def test_edu_and_e1000e_each_have_an_iommu_group_of_their_own(
    edu: PciAddress, e1000e: PciAddress
) -> None:
    assert guest.group_members(guest.iommu_group_of(edu)) == [edu]
    assert guest.group_members(guest.iommu_group_of(e1000e)) == [e1000e]
    assert guest.driver_of(edu) is None
    assert guest.driver_of(e1000e) == "e1000e"


@pytest.mark.usefixtures("vfio_pci")
def test_the_gpu_lookalike_moves_to_vfio_pci_and_back_to_its_drivers(
    gpu_lookalike: GpuLookalike,
) -> None:
    vga, audio = gpu_lookalike.functions
    for function in (audio, vga):
        guest.bind_to(function, "vfio-pci")
    assert guest.driver_of(vga) == "vfio-pci"
    assert guest.driver_of(audio) == "vfio-pci"
    assert Path(f"/dev/vfio/{gpu_lookalike.group}").is_char_device()
    assert not (guest.device_dir(vga) / "drm").exists()

    for function in (vga, audio):
        guest.release_override(function)
    guest.wait_for_driver(vga, "bochs-drm")
    guest.wait_for_driver(audio, "snd_hda_intel")
    assert (guest.device_dir(vga) / "driver_override").read_text().strip() == "(null)"
    guest.wait_for(lambda: (guest.device_dir(vga) / "drm").is_dir(), "bochs-drm's DRM device")


def _wait_for_adds(monitor: Any, nodes: set[str], timeout: float = 60.0) -> dict[str, Any]:
    """udev's `add` events of the input devices with these /dev nodes (in any order)."""
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while set(seen) != nodes and time.monotonic() < deadline:
        device = monitor.poll(timeout=max(0.0, deadline - time.monotonic()))
        if device is not None and device.action == "add" and device.device_node in nodes:
            seen[device.device_node] = device
    missing = sorted(nodes - set(seen))
    assert not missing, f"no udev add event for {missing} within {timeout:.0f}s"
    return seen


def _read_events(
    devices: dict[str, Any], wanted: dict[str, int], timeout: float
) -> dict[str, list[tuple[int, int, int]]]:
    got: dict[str, list[tuple[int, int, int]]] = {name: [] for name in devices}
    by_fd = {dev.fd: name for name, dev in devices.items()}
    from evdev import ecodes

    deadline = time.monotonic() + timeout
    while any(len(got[n]) < wanted[n] for n in got) and time.monotonic() < deadline:
        ready, _, _ = select.select(list(by_fd), [], [], max(0.0, deadline - time.monotonic()))
        for fd in ready:
            name = by_fd[fd]
            for event in devices[name].read():
                if event.type != ecodes.EV_SYN:
                    got[name].append((event.type, event.code, event.value))
    return got


def test_uinput_keyboard_and_mouse_are_classified_by_udev_and_read_back_under_grab(
    udev: Any,
) -> None:
    import pyudev
    from evdev import InputDevice, UInput, ecodes

    monitor = pyudev.Monitor.from_netlink(udev)
    monitor.filter_by("input")
    monitor.start()
    keyboard = UInput({ecodes.EV_KEY: list(range(1, 128))}, name="testbed keyboard")
    mouse = UInput(
        {
            ecodes.EV_KEY: [ecodes.BTN_LEFT, ecodes.BTN_RIGHT, ecodes.BTN_MIDDLE],
            ecodes.EV_REL: [ecodes.REL_X, ecodes.REL_Y, ecodes.REL_WHEEL],
        },
        name="testbed mouse",
    )
    try:
        keyboard_node = str(keyboard.device.path)
        mouse_node = str(mouse.device.path)
        seen = _wait_for_adds(monitor, {keyboard_node, mouse_node})
        seen_keyboard, seen_mouse = seen[keyboard_node], seen[mouse_node]
        assert seen_keyboard.properties.get("ID_INPUT_KEYBOARD") == "1"
        assert seen_mouse.properties.get("ID_INPUT_MOUSE") == "1"
        assert seen_mouse.properties.get("ID_INPUT_KEYBOARD") != "1"

        readers = {"keyboard": InputDevice(keyboard_node), "mouse": InputDevice(mouse_node)}
        for reader in readers.values():
            reader.grab()
        try:
            keyboard.write(ecodes.EV_KEY, ecodes.KEY_LEFTCTRL, 1)
            keyboard.write(ecodes.EV_KEY, ecodes.KEY_A, 1)
            keyboard.syn()
            keyboard.write(ecodes.EV_KEY, ecodes.KEY_A, 0)
            keyboard.write(ecodes.EV_KEY, ecodes.KEY_LEFTCTRL, 0)
            keyboard.syn()
            mouse.write(ecodes.EV_REL, ecodes.REL_X, 5)
            mouse.write(ecodes.EV_REL, ecodes.REL_Y, -3)
            mouse.write(ecodes.EV_KEY, ecodes.BTN_LEFT, 1)
            mouse.syn()
            got = _read_events(readers, {"keyboard": 4, "mouse": 3}, timeout=30.0)
        finally:
            for reader in readers.values():
                reader.ungrab()
                reader.close()
        assert got["keyboard"] == [
            (ecodes.EV_KEY, ecodes.KEY_LEFTCTRL, 1),
            (ecodes.EV_KEY, ecodes.KEY_A, 1),
            (ecodes.EV_KEY, ecodes.KEY_A, 0),
            (ecodes.EV_KEY, ecodes.KEY_LEFTCTRL, 0),
        ]
        assert got["mouse"] == [
            (ecodes.EV_REL, ecodes.REL_X, 5),
            (ecodes.EV_REL, ecodes.REL_Y, -3),
            (ecodes.EV_KEY, ecodes.BTN_LEFT, 1),
        ]
    finally:
        keyboard.close()
        mouse.close()


class _Qmp:
    """Just enough QMP over a socket to ask a stopped QEMU what it holds."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(120)
        self.file = sock.makefile("rw", encoding="utf-8")
        self.greeting = json.loads(self.file.readline())
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.file.write(json.dumps(message) + "\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "event" in reply:
                continue
            assert "error" not in reply, reply
            return reply["return"]


@pytest.mark.usefixtures("vfio_pci")
def test_a_nested_qemu_opens_edu_through_vfio_and_answers_qmp(edu: PciAddress) -> None:
    group = guest.iommu_group_of(edu)
    guest.bind_to(edu, "vfio-pci")
    assert guest.driver_of(edu) == "vfio-pci"
    assert Path(f"/dev/vfio/{group}").is_char_device()

    ours, theirs = socket.socketpair()
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-m", "64M",
        "-nodefaults", "-display", "none", "-S",
        "-device", f"vfio-pci,host={edu},id=hostdev0",
        "-chardev", f"socket,id=qmp,fd={theirs.fileno()}", "-mon", "chardev=qmp,mode=control",
    ]  # fmt: skip
    qemu = subprocess.Popen(
        argv,
        pass_fds=[theirs.fileno()],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    theirs.close()
    try:
        qmp = _Qmp(ours)
        assert qmp.execute("query-status")["status"] == "prelaunch"
        fds = Path(f"/proc/{qemu.pid}/fd")
        held = {os.readlink(fd) for fd in fds.iterdir()}
        assert f"/dev/vfio/{group}" in held
        assert "/dev/vfio/vfio" in held
        pci = [d for bus in qmp.execute("query-pci") for d in bus["devices"]]
        passed = [d for d in pci if d.get("qdev_id") == "hostdev0"]
        assert [(d["id"]["vendor"], d["id"]["device"]) for d in passed] == [(0x1234, 0x11E8)]
        qmp.execute("quit")
        output, _ = qemu.communicate(timeout=60)
        assert qemu.returncode == 0, output.decode(errors="replace")
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.communicate()
        ours.close()
    guest.release_override(edu)
    guest.wait_for_driver(edu, None)
    assert (guest.device_dir(edu) / "driver_override").read_text().strip() == "(null)"
