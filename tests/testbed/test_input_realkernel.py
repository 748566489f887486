"""Input hand-off on a real kernel: uinput devices, udev, EVIOCGRAB, a nested QEMU's trace.

Runs inside the testbed VM (tests/testbed/testbed.sh), where /dev/uinput,
/dev/input and systemd-udevd are real. The nested QEMU runs q35 firmware
only and logs its input layer (``-trace input_event_*``), so what reached
QEMU is read back from the trace; the host side is read with EVIOCGKEY.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from handoff.base.host import HostPaths
from handoff.control.server import ControlCommands
from handoff.input.resource import InputHandoff
from handoff.profile import Input, InputBackend, InputMode, Profile
from handoff.profile import Vm as VmSpec
from handoff.qemu.process import QemuProcess
from handoff.qemu.qmp import QmpConnection, open_qmp
from handoff.session.rundir import qemu_socket_dir

pytestmark = [
    pytest.mark.realkernel,
    pytest.mark.usefixtures("testbed_uinput"),  # no /dev/uinput: fail, never skip
]

KBD_NAME, MOUSE_NAME = "testbed keyboard", "testbed mouse"
KEY_A, KEY_B, KEY_C, KEY_LEFTCTRL, KEY_RIGHTCTRL = 30, 48, 46, 29, 97
BTN_LEFT, BTN_SIDE, BTN_EXTRA = 0x110, 0x113, 0x114
EV_KEY, EV_REL = 1, 2
REL_X, REL_WHEEL, REL_HWHEEL, REL_WHEEL_HI_RES = 0, 8, 6, 11
TRACE = re.compile(r"input_event_(key_qcode|btn|rel) .*?(?:qcode|button|axis) (\S+), \w+ (-?\d+)")


def make_keyboard() -> Any:
    from evdev import UInput

    caps: dict[int, Sequence[int]] = {EV_KEY: list(range(1, 128))}
    return UInput(caps, name=KBD_NAME)


def make_mouse() -> Any:
    from evdev import UInput

    caps: dict[int, Sequence[int]] = {
        EV_KEY: [BTN_LEFT, 0x111, 0x112, BTN_SIDE, BTN_EXTRA],
        EV_REL: [REL_X, 1, REL_HWHEEL, REL_WHEEL, REL_WHEEL_HI_RES],
    }
    return UInput(caps, name=MOUSE_NAME)


def tap(ui: Any, *codes: int) -> None:
    for code in codes:
        ui.write(EV_KEY, code, 1)
        ui.syn()
    for code in reversed(codes):
        ui.write(EV_KEY, code, 0)
        ui.syn()


def parse(trace: Path) -> list[tuple[str, str, str]]:
    return [(m[1], m[2], m[3]) for m in map(TRACE.search, trace.read_text().splitlines()) if m]


def profile(backend: InputBackend, start: InputMode) -> Profile:
    return Profile(
        vm=VmSpec(name="tb", memory_mib=32),
        source=Path("tb.toml"),
        input=Input(
            backend=backend,
            start_in=start,
            devices=(f"name:{KBD_NAME}", f"name:{MOUSE_NAME}"),
        ),
    )


async def until(condition: Callable[[], bool], what: str, limit: float = 60.0) -> float:
    """Poll ``condition`` (state owned by other tasks) with a deadline; seconds it took."""
    start = time.monotonic()
    with trio.move_on_after(limit):
        while not condition():  # noqa: ASYNC110 (state of other tasks and of the kernel)
            await trio.sleep(0.01)
        return time.monotonic() - start
    raise AssertionError(f"timed out after {limit:g} s waiting for {what}")


@asynccontextmanager
async def nested_qemu(
    tmp_path: Path, extra: list[str], trace_events: str
) -> AsyncIterator[tuple[QemuProcess, QmpConnection, Path]]:
    ours, theirs = socket.socketpair()
    trace = tmp_path / "trace.log"
    argv = [
        "qemu-system-x86_64", "-nodefaults", "-machine", "q35", "-accel", "tcg", "-m", "32",
        "-display", "none",
        "-chardev", f"socket,id=qmp,fd={theirs.fileno()}", "-mon", "chardev=qmp,mode=control",
        "-trace", trace_events, "-D", str(trace), "-msg", "timestamp=on",
        *extra,
    ]  # fmt: skip
    process = await QemuProcess.start(
        argv, log_path=tmp_path / "qemu.log", pass_fds=[theirs.fileno()]
    )
    theirs.close()
    try:
        async with open_qmp(ours) as qmp:
            yield process, qmp, trace
            await qmp.execute("quit")
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def open_nodes(pid: int) -> set[str]:
    return {os.path.realpath(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}


def holds(pid: int, node: str) -> bool:
    """``pid`` has ``node`` open (``node`` may be a link to it, as the proxies' are)."""
    return os.path.realpath(node) in open_nodes(pid)


@dataclass
class Vm:
    """The VmHandle the session gives resources: the QEMU pid and its QMP connection."""

    qmp: QmpConnection
    pid: int

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        return await self.qmp.execute(command, arguments)


def grabbed(resource: InputHandoff) -> dict[str, bool]:
    return {d["name"]: d["grabbed"] for d in resource.status()["devices"]}


def held_on_host(ui: Any) -> list[int]:
    from evdev import InputDevice

    device = InputDevice(ui.device.path)
    try:
        return list(device.active_keys())
    finally:
        device.close()


@dataclass
class InputSession:
    """A QMP input hand-off to a nested QEMU tracing input events (:func:`qmp_input_session`)."""

    resource: InputHandoff
    control: ControlCommands
    trace: Path
    keyboard: Any
    mouse: Any
    both: dict[str, bool]  # what grabbed() says with both devices grabbed


@asynccontextmanager
async def qmp_input_session(tmp_path: Path) -> AsyncIterator[InputSession]:
    """A uinput keyboard and mouse handed to a nested QEMU by the QMP backend (starting in
    the guest), both grabbed before it yields; after, the VM stops, the resource is released
    and the devices (``session.keyboard`` as it is then) are closed."""
    keyboard, mouse = make_keyboard(), make_mouse()
    paths = HostPaths(run=tmp_path / "run")
    qemu_socket_dir(paths, "tb").mkdir(parents=True, mode=0o700)  # the input monitor's
    resource = InputHandoff(profile(InputBackend.QMP, InputMode.GUEST), paths)
    await resource.acquire()
    control = ControlCommands()
    both = {KBD_NAME: True, MOUSE_NAME: True}
    session: InputSession | None = None
    try:
        async with (
            nested_qemu(tmp_path, list(resource.qemu_args()), "input_event_*") as (
                process, qmp, trace,
            ),
            trio.open_nursery() as nursery,
        ):  # fmt: skip
            await resource.vm_started(Vm(qmp, process.pid), nursery, control)
            session = InputSession(resource, control, trace, keyboard, mouse, both)
            await until(lambda: grabbed(resource) == both, "both devices grabbed")
            yield session
            nursery.cancel_scope.cancel()
    finally:
        await resource.release()
        (keyboard if session is None else session.keyboard).close()
        mouse.close()


async def test_uinput_devices_are_handed_to_qemu_and_back_without_stuck_keys(
    tmp_path: Path,
) -> None:
    async with qmp_input_session(tmp_path) as session:
        keyboard, mouse, resource = session.keyboard, session.mouse, session.resource
        control, trace, both = session.control, session.trace, session.both

        tap(keyboard, KEY_A)
        mouse.write(EV_KEY, BTN_SIDE, 1)
        mouse.write(EV_REL, REL_X, 7)
        mouse.syn()
        mouse.write(EV_KEY, BTN_SIDE, 0)
        mouse.write(EV_REL, REL_WHEEL_HI_RES, 120)
        mouse.write(EV_REL, REL_WHEEL, 1)
        mouse.syn()

        # Guest → host by the hotkey while A is held: the switch waits for A.
        keyboard.write(EV_KEY, KEY_A, 1)
        keyboard.syn()
        tap(keyboard, KEY_LEFTCTRL, KEY_RIGHTCTRL)
        await until(lambda: resource.status()["pending"] == "host", "switch pending")
        assert resource.status()["mode"] == "guest"
        keyboard.write(EV_KEY, KEY_A, 0)
        keyboard.syn()
        await until(lambda: resource.status()["mode"] == "host", "host mode")
        assert not any(grabbed(resource).values())
        assert held_on_host(keyboard) == []

        tap(keyboard, KEY_C)  # the host's: never forwarded

        # Host → guest over the control socket while B is held: waits for B.
        keyboard.write(EV_KEY, KEY_B, 1)
        keyboard.syn()
        await until(lambda: held_on_host(keyboard) == [KEY_B], "B held")
        reply = await control.dispatch({"command": "switch", "mode": "guest"})
        assert reply == {"ok": True, "result": {"mode": "host", "pending": "guest"}}
        keyboard.write(EV_KEY, KEY_B, 0)
        keyboard.syn()
        await until(lambda: grabbed(resource) == both, "grabbed after B was released")

        # Re-plug: the keyboard disappears and comes back; grabbed again.
        keyboard.close()
        await until(lambda: KBD_NAME not in grabbed(resource), "unplug noticed")
        # No timing asserted here (TCG, shared cores): the re-plug latency is bench/'s.
        keyboard = session.keyboard = make_keyboard()  # closed by the session
        await until(lambda: grabbed(resource).get(KBD_NAME) is True, "re-plugged grab")
        tap(keyboard, KEY_B)
        b_up = ("key_qcode", "b", "0")
        await until(lambda: b_up in parse(trace), "b released in the trace", 60)

        # Cleanly back to the host at the end.
        await control.dispatch({"command": "switch", "mode": "host"})
        assert not any(grabbed(resource).values())
    events = parse(trace)
    keys = [(name, value) for kind, name, value in events if kind == "key_qcode"]
    assert keys == [
        ("a", "1"),
        ("a", "0"),
        ("a", "1"),  # held through the hotkey
        ("ctrl", "1"),
        ("ctrl", "0"),  # chord completed: released in the guest, ctrl_r never sent
        ("a", "0"),
        ("b", "1"),  # after the re-plug (the B held during the switch stayed the host's)
        ("b", "0"),
    ]
    buttons = [(name, value) for kind, name, value in events if kind == "btn"]
    assert buttons == [("side", "1"), ("side", "0"), ("wheel-up", "1"), ("wheel-up", "0")]
    assert [(n, v) for k, n, v in events if k == "rel"] == [("x", "7")]


async def test_the_virtio_backend_hands_qemu_its_proxies_and_copies_events_unchanged(
    tmp_path: Path,
) -> None:
    """QEMU holds both proxies; what the sources type comes out of the proxies as typed.

    A proxy held by QEMU is grabbed (nobody else reads it), so the copy is read
    back once QEMU has quit, while the router keeps running; the leg into a
    guest is test_input_virtio_guest.py's.
    """
    from evdev import InputDevice

    keyboard, mouse = make_keyboard(), make_mouse()
    paths = HostPaths(run=tmp_path / "run")
    resource = InputHandoff(profile(InputBackend.VIRTIO, InputMode.GUEST), paths)
    await resource.acquire()
    args = list(resource.qemu_args())
    proxy_nodes = [a.rsplit("evdev=", 1)[1] for a in args if "evdev=" in a]
    assert len(proxy_nodes) == 2
    control = ControlCommands()
    readers: list[Any] = []
    typed = [  # (source, frame): keys go to the keyboard proxy, the rest to the mouse's
        (keyboard, [(EV_KEY, KEY_A, 1)]),
        (mouse, [(EV_KEY, BTN_SIDE, 1), (EV_REL, REL_X, 7), (EV_REL, 1, -3)]),
        (keyboard, [(EV_KEY, KEY_B, 1)]),
        (keyboard, [(EV_KEY, KEY_B, 0)]),
        (mouse, [(EV_REL, REL_WHEEL_HI_RES, 120), (EV_REL, REL_WHEEL, 1)]),
        (mouse, [(EV_KEY, BTN_SIDE, 0), (EV_REL, REL_HWHEEL, -1)]),
        (keyboard, [(EV_KEY, KEY_A, 0)]),
        (mouse, [(EV_KEY, BTN_EXTRA, 1)]),
        (mouse, [(EV_KEY, BTN_EXTRA, 0)]),
    ]
    try:
        async with trio.open_nursery() as nursery:
            async with nested_qemu(tmp_path, args, "virtio_input_*") as (process, qmp, _):
                for node in proxy_nodes:  # QEMU holds both proxies (EVIOCGRAB)
                    probe = InputDevice(node)
                    with pytest.raises(OSError, match="busy") as caught:
                        probe.grab()
                    assert caught.value.errno == errno.EBUSY
                    probe.close()
                    assert holds(process.pid, node)
                await resource.vm_started(Vm(qmp, process.pid), nursery, control)
                both = {KBD_NAME: True, MOUSE_NAME: True}
                await until(lambda: grabbed(resource) == both, "both devices grabbed")
                # The session's own devices are never grabbed as inputs.
                assert set(grabbed(resource)) == {KBD_NAME, MOUSE_NAME}
            readers = [InputDevice(node) for node in proxy_nodes]  # QEMU let go of them
            for source, events in typed:
                for event in events:
                    source.write(*event)
                source.syn()
            expected = [
                [e for source, events in typed if source is ui for e in [*events, (0, 0, 0)]]
                for ui in (keyboard, mouse)
            ]
            got: list[list[tuple[int, int, int]]] = [[], []]
            with trio.fail_after(60):
                for reader, out, want in zip(readers, got, expected, strict=True):
                    while len(out) < len(want):
                        await trio.lowlevel.wait_readable(reader.fd)
                        out += [(e.type, e.code, e.value) for e in reader.read()]
            assert got == expected
            nursery.cancel_scope.cancel()
    finally:
        await resource.release()
        for reader in readers:
            reader.close()
        keyboard.close()
        mouse.close()


async def test_virtio_proxies_receive_extra_buttons_and_hi_res_wheels_unchanged(
    tmp_path: Path,
) -> None:
    """The copy leg, read back from the proxy on the real kernel (no QEMU holding it)."""
    from evdev import InputDevice

    from handoff.input.virtio import VirtioProxies

    proxies = VirtioProxies("copytest")
    proxies.create()
    try:
        reader = InputDevice(proxies.nodes[1])
        frame = [
            (EV_KEY, BTN_EXTRA, 1),
            (EV_REL, REL_HWHEEL, -1),
            (EV_REL, 12, -120),  # REL_HWHEEL_HI_RES
            (EV_REL, REL_WHEEL_HI_RES, 30),
        ]
        proxies.submit("mouse", frame)
        got: list[tuple[int, int, int]] = []
        with trio.fail_after(10):
            while len(got) < len(frame):
                await trio.lowlevel.wait_readable(reader.fd)
                got += [(e.type, e.code, e.value) for e in reader.read() if e.type != 0]
        assert got == frame
        reader.close()
    finally:
        proxies.destroy()


async def test_a_whole_session_forwards_uinput_typing_and_switches_over_the_control_socket(
    tmp_path: Path,
) -> None:
    """`handoff run` in-process: the real Session, its resources, its control socket."""
    from handoff.control import server as control
    from handoff.profile import Accel
    from handoff.session.supervisor import Phase, Session, default_resources

    keyboard, mouse = make_keyboard(), make_mouse()
    profile = Profile(
        vm=VmSpec(name="tbrun", memory_mib=64, cpus=1, accel=Accel.TCG, shutdown_timeout=0.5),
        source=tmp_path / "tbrun.toml",
        input=Input(
            backend=InputBackend.QMP,
            start_in=InputMode.GUEST,
            devices=(f"name:{KBD_NAME}", f"name:{MOUSE_NAME}"),
        ),
    )
    paths = HostPaths(run=tmp_path / "run")
    trace = tmp_path / "trace.log"
    lines: list[str] = []
    session = Session(
        profile,
        paths,
        lambda plan: default_resources(plan, paths),
        report=lines.append,
        handle_signals=False,
        trace_file=trace,
    )
    sock = paths.session_dir("tbrun") / "control.sock"

    async def ask(message: dict[str, object]) -> dict[str, Any]:
        return await trio.to_thread.run_sync(lambda: control.request(sock, message))

    def input_status() -> dict[str, Any]:
        status: dict[str, Any] = session.status()["resources"]["input"]
        return status

    try:
        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.run)
                await until(lambda: session.phase is Phase.RUNNING, "session running", 120)
                await until(
                    lambda: [d["grabbed"] for d in input_status()["devices"]] == [True, True],
                    "both devices grabbed",
                )
                tap(keyboard, KEY_A)
                mouse.write(EV_KEY, BTN_EXTRA, 1)
                mouse.syn()
                mouse.write(EV_KEY, BTN_EXTRA, 0)
                mouse.syn()
                await until(lambda: "extra" in trace.read_text(), "the click in the trace", 60)
                assert await ask({"command": "switch", "mode": "host"}) == {
                    "mode": "host",
                    "pending": None,
                }
                assert not any(d["grabbed"] for d in input_status()["devices"])
                tap(keyboard, KEY_C)  # the host's now
                assert await ask({"command": "switch", "mode": "toggle"}) == {
                    "mode": "guest",
                    "pending": None,
                }
                tap(keyboard, KEY_B)
                await until(
                    lambda: "qcode b, down 0" in trace.read_text(), "b released in the trace", 20
                )
                await ask({"command": "stop"})
    finally:
        keyboard.close()
        mouse.close()
    keys = [(n, v) for k, n, v in parse(trace) if k == "key_qcode"]
    assert keys == [("a", "1"), ("a", "0"), ("b", "1"), ("b", "0")]
    assert not paths.session_dir("tbrun").exists()
