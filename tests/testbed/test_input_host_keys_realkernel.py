"""``[input] host_keys`` on a real kernel: keys that stay with the host while the guest types.

A uinput keyboard (udev, EVIOCGRAB, the real input core) is handed to a
nested QEMU with the qmp backend; its input layer is traced
(``-trace input_event_*``). The "handoff host keys" device is read with
evdev on the host side, as the desktop would.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import trio

from handoff.base.errors import InputError
from handoff.base.host import HostPaths
from handoff.control.server import ControlCommands
from handoff.input.resource import InputHandoff
from handoff.profile import Input, InputBackend, InputMode, Profile
from handoff.profile import Vm as VmSpec
from handoff.session.rundir import qemu_socket_dir
from tests.testbed.test_input_realkernel import (
    EV_KEY,
    KBD_NAME,
    KEY_A,
    Vm,
    grabbed,
    make_keyboard,
    nested_qemu,
    parse,
    tap,
    until,
)

pytestmark = [
    pytest.mark.realkernel,
    pytest.mark.usefixtures("testbed_uinput"),  # no /dev/uinput: fail, never skip
]

KEY_MUTE, KEY_VOLUMEUP = 113, 115


def profile() -> Profile:
    return Profile(
        vm=VmSpec(name="tb", memory_mib=32),
        source=Path("tb.toml"),
        input=Input(
            backend=InputBackend.QMP,
            start_in=InputMode.GUEST,
            devices=(f"name:{KBD_NAME}",),
            host_keys=("KEY_MUTE", "KEY_VOLUMEUP"),
        ),
    )


class HostSide:
    """The host's view of the "handoff host keys" device: its key events and its state."""

    def __init__(self, node: str) -> None:
        from evdev import InputDevice

        self.device: Any = InputDevice(node)
        # EVIOCGKEY flushes the key events queued for its reader: state on a reader of its own.
        self.state: Any = InputDevice(node)
        self.events: list[tuple[int, int]] = []

    def drain(self) -> list[tuple[int, int]]:
        try:
            for event in self.device.read():
                if event.type == EV_KEY:
                    self.events.append((event.code, event.value))
        except BlockingIOError:
            pass
        return self.events

    def held(self) -> list[int]:
        return list(self.state.active_keys())


async def test_host_keys_reach_the_host_device_never_the_guest_and_are_released_on_a_switch(
    tmp_path: Path,
) -> None:
    keyboard = make_keyboard()  # keys 1-127: KEY_MUTE and KEY_VOLUMEUP, no KEY_PLAYPAUSE
    paths = HostPaths(run=tmp_path / "run")
    # A host key the grabbed keyboard does not have is refused before anything changes.
    media = dataclasses.replace(profile().input, host_keys=("KEY_MUTE", "KEY_PLAYPAUSE"))
    with pytest.raises(InputError, match=r'"KEY_PLAYPAUSE" is not a key of any device') as refused:
        await InputHandoff(dataclasses.replace(profile(), input=media), paths).acquire()
    assert f"'{KBD_NAME}' (/dev/input/event" in refused.value.message
    assert not paths.run.exists()
    qemu_socket_dir(paths, "tb").mkdir(parents=True, mode=0o700)  # the input monitor's
    resource = InputHandoff(profile(), paths)
    await resource.acquire()
    control = ControlCommands()
    host: HostSide | None = None
    try:
        async with (
            nested_qemu(tmp_path, list(resource.qemu_args()), "input_event_*") as (
                process, qmp, trace,
            ),
            trio.open_nursery() as nursery,
        ):  # fmt: skip
            await resource.vm_started(Vm(qmp, process.pid), nursery, control)
            status = resource.status()
            host = HostSide(str(status["host_keys_device"]))
            assert host.device.name == "handoff host keys"
            await until(lambda: grabbed(resource) == {KBD_NAME: True}, "the keyboard grabbed")
            assert "handoff host keys" not in grabbed(resource)  # never grabbed by handoff

            tap(keyboard, KEY_MUTE)
            tap(keyboard, KEY_A)
            await until(lambda: ("key_qcode", "a", "0") in parse(trace), "a in the trace")
            await until(lambda: (KEY_MUTE, 0) in host.drain(), "mute on the host device")
            assert host.drain() == [(KEY_MUTE, 1), (KEY_MUTE, 0)]

            # Volume up held, then input goes to the host: released on the host device.
            keyboard.write(EV_KEY, KEY_VOLUMEUP, 1)
            keyboard.syn()
            await until(lambda: host.held() == [KEY_VOLUMEUP], "volume up held on the host")
            reply = await control.dispatch({"command": "switch", "mode": "host"})
            assert reply == {"ok": True, "result": {"mode": "host", "pending": None}}
            assert host.held() == []
            keyboard.write(EV_KEY, KEY_VOLUMEUP, 0)
            keyboard.syn()
            await until(lambda: (KEY_VOLUMEUP, 0) in host.drain(), "volume up released")
            assert not any(grabbed(resource).values())
            nursery.cancel_scope.cancel()
    finally:
        await resource.release()
        keyboard.close()
        if host is not None:
            host.device.close()
            host.state.close()
    assert host.events == [(KEY_MUTE, 1), (KEY_MUTE, 0), (KEY_VOLUMEUP, 1), (KEY_VOLUMEUP, 0)]
    keys = [(name, value) for kind, name, value in parse(trace) if kind == "key_qcode"]
    assert keys == [("a", "1"), ("a", "0")]  # mute and volume up never reached QEMU
    assert resource.status().get("host_keys_device") is None  # removed at release
