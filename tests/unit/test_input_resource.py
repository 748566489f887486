"""The input resource's contract with the session: QEMU arguments, switch command, status."""

from __future__ import annotations

import os
import types
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from handoff.base.errors import InputError, SessionError
from handoff.base.host import HostPaths
from handoff.base.run_layout import proxy_links
from handoff.input.codes import EV_KEY
from handoff.input.edge import InputRouter
from handoff.input.forward import QmpSocketTransport
from handoff.input.resource import InputHandoff
from handoff.input.router import RouterCore
from handoff.input.translate import Event
from handoff.input.virtio import VirtioProxies
from handoff.profile import Input, InputBackend, InputMode, Profile, Vm

KEY_A, KEY_SCROLLLOCK = 30, 70


def resource(tmp_path: Path, **fields: object) -> InputHandoff:
    profile = Profile(
        vm=Vm(name="demo", memory_mib=512),
        source=tmp_path / "demo.toml",
        input=Input(**fields),  # type: ignore[arg-type]
    )
    return InputHandoff(profile, HostPaths(run=tmp_path / "run"))


def test_the_qmp_backend_gives_qemu_a_monitor_of_its_own_in_its_socket_directory(
    tmp_path: Path,
) -> None:
    handoff = resource(tmp_path, backend=InputBackend.QMP)
    socket = tmp_path / "run" / "qemu" / "demo" / "input.qmp"
    assert handoff.monitor_path == socket
    assert handoff.qemu_args() == (
        "-chardev",
        f"socket,id=handoff-input,path={socket},server=on,wait=off",
        "-mon",
        "chardev=handoff-input,mode=control",
    )


def test_the_virtio_backend_gives_qemu_the_links_in_its_socket_directory(
    tmp_path: Path,
) -> None:
    links = tmp_path / "run" / "qemu" / "demo"
    assert resource(tmp_path, backend=InputBackend.VIRTIO).qemu_args() == (
        "-device",
        f"virtio-input-host-pci,id=handoff-keyboard,evdev={links / 'keyboard.evdev'}",
        "-device",
        f"virtio-input-host-pci,id=handoff-mouse,evdev={links / 'mouse.evdev'}",
    )


def test_without_a_backend_input_adds_nothing_and_pins_no_memory(tmp_path: Path) -> None:
    handoff = resource(tmp_path)
    assert handoff.qemu_args() == ()
    assert handoff.memlock_bytes is None
    assert handoff.status() == {"backend": "none", "mode": "host", "pending": None, "devices": []}


def test_a_bad_hotkey_or_selector_is_refused_before_anything_changes(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="CTRL"):
        resource(tmp_path, hotkey=("CTRL",))
    with pytest.raises(InputError, match="event3"):
        resource(tmp_path, devices=("event3",))


async def test_switch_names_the_modes_it_accepts(tmp_path: Path) -> None:
    handoff = resource(tmp_path, backend=InputBackend.QMP, start_in=InputMode.GUEST)
    with pytest.raises(SessionError) as caught:
        await handoff._switch({"command": "switch", "mode": "sideways"})
    assert caught.value.fix == "handoff switch NAME [host|guest|toggle]"
    with pytest.raises(InputError, match="not running"):
        await handoff._switch({"command": "switch", "mode": "host"})


class Keyboard:
    """A device handle that counts what is done to it (this host has no /dev/input)."""

    name = "kbd"
    fd = -1

    def __init__(self) -> None:
        self.grabbed = False
        self.closes = 0

    def read(self) -> list[object]:
        raise BlockingIOError

    def grab(self) -> None:
        self.grabbed = True

    def ungrab(self) -> None:
        self.grabbed = False

    def active_keys(self) -> list[int]:
        return []

    def close(self) -> None:
        self.closes += 1


class Guest:
    """The guest sink: every frame the router sends."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, list[Event]]] = []

    def submit(self, device: str, events: Sequence[Event]) -> None:
        self.frames.append((device, list(events)))

    def forget(self, device: str) -> None:
        """Nothing kept per device."""


async def test_release_is_idempotent(tmp_path: Path) -> None:
    handoff = resource(tmp_path, backend=InputBackend.QMP, start_in=InputMode.GUEST)
    await handoff.acquire()
    # What vm_started wires up, without QEMU and udev: a router whose guest holds
    # A on a grabbed keyboard, and the input monitor's socket.
    keyboard, guest = Keyboard(), Guest()
    router = InputRouter(RouterCore(frozenset({KEY_SCROLLLOCK}), InputMode.GUEST), guest)
    router.devices["kbd"] = keyboard
    router.core.add_device("kbd")
    router.core.frame("kbd", [(EV_KEY, KEY_A, 1)])
    keyboard.grab()
    ours, theirs = trio.socket.socketpair()
    handoff._router = router
    handoff._transport = QmpSocketTransport(trio.SocketStream(ours))

    await handoff.release()
    assert guest.frames == [("kbd", [(EV_KEY, KEY_A, 0)])]  # the guest let go of A
    assert not keyboard.grabbed
    assert keyboard.closes == 1
    assert await theirs.recv(1) == b""  # the monitor connection is closed

    await handoff.release()  # again: nothing more happens, nothing raises
    assert guest.frames == [("kbd", [(EV_KEY, KEY_A, 0)])]
    assert keyboard.closes == 1
    assert handoff.status()["mode"] == "host"
    theirs.close()


class StandInUinput:
    """Stands for an evdev.UInput here (no /dev/uinput on this host): its node and close()."""

    def __init__(self, node: Path) -> None:
        self.device = types.SimpleNamespace(path=str(node))

    def close(self) -> None:
        pass


def test_the_plans_links_point_at_the_proxies_nodes_and_go_with_them(tmp_path: Path) -> None:
    nodes = (tmp_path / "event7", tmp_path / "event8")
    proxies = VirtioProxies("demo")
    proxies.keyboard, proxies.mouse = (StandInUinput(n) for n in nodes)
    keyboard, mouse = proxy_links(HostPaths(run=tmp_path / "run"), "demo")
    keyboard.parent.mkdir(parents=True)
    keyboard.symlink_to("/dev/input/event99")  # a crashed session's stale link
    proxies.link(keyboard, mouse)
    assert (os.readlink(keyboard), os.readlink(mouse)) == tuple(map(str, nodes))
    assert sorted(p.name for p in keyboard.parent.iterdir()) == ["keyboard.evdev", "mouse.evdev"]
    proxies.destroy()
    assert list(keyboard.parent.iterdir()) == []
    proxies.destroy()  # idempotent
