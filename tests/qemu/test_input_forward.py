"""The qmp input backend against a real QEMU, observed through QEMU's input trace.

QEMU started with ``-trace 'input_event_*' -D FILE -msg timestamp=on`` logs
every event its input layer receives; the VM must run (input-send-event says
"VM not running" under -S), so a q35 with only its firmware runs briefly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from handoff.control.protocol import Side
from handoff.input.codes import (
    BTN_EXTRA,
    BTN_LEFT,
    BTN_SIDE,
    EV_KEY,
    EV_REL,
    REL_HWHEEL,
    REL_WHEEL,
    REL_WHEEL_HI_RES,
    REL_X,
    REL_Y,
    SYN_DROPPED,
)
from handoff.input.edge import InputRouter
from handoff.input.forward import ExecuteTransport, QmpBackend, QmpSocketTransport
from handoff.input.keymap import (
    KEY_TABLE,
    LINUX_TO_QCODE,
    qkeycodes_from_schema,
    restrict_to,
    unsupported,
)
from handoff.input.router import RouterCore
from handoff.profile import InputMode
from handoff.qemu.process import QemuProcess
from handoff.qemu.qmp import QmpConnection, open_qmp

from .conftest import bare_argv

pytestmark = pytest.mark.qemu

TRACE_LINE = re.compile(r"^\d+@(?P<ts>[\d.]+):input_event_(?P<kind>\w+) (?P<rest>.*)$")
KEY_A, KEY_B, KEY_LEFTSHIFT = 30, 48, 42


def parse_trace(path: Path) -> list[tuple[str, ...]]:
    """QEMU's input trace as tuples: ("key", qcode, down), ("btn", name, down), ("rel", axis, v)."""
    out: list[tuple[str, ...]] = []
    for line in path.read_text().splitlines():
        m = TRACE_LINE.match(line)
        if not m:
            continue
        kind, rest = m["kind"], m["rest"]
        if kind == "key_qcode":
            k = re.search(r"key qcode (\S+), down (\d)", rest)
            assert k
            out.append(("key", k[1], k[2]))
        elif kind == "btn":
            b = re.search(r"button (\S+), down (\d)", rest)
            assert b
            out.append(("btn", b[1], b[2]))
        elif kind == "rel":
            r = re.search(r"axis (\S+), value (-?\d+)", rest)
            assert r
            out.append(("rel", r[1], r[2]))
        elif kind == "sync":
            out.append(("sync",))
    return out


@dataclass
class TracedQemu:
    process: QemuProcess
    monitor: socket.socket
    input_socket: Path
    trace: Path

    async def quit(self, qmp: QmpConnection) -> list[tuple[str, ...]]:
        await qmp.execute("quit")
        await self.process.wait()
        return parse_trace(self.trace)


@pytest.fixture
async def traced(tmp_path: Path, log_path: Path) -> AsyncIterator[TracedQemu]:
    ours, theirs = socket.socketpair()
    input_socket = tmp_path / "input.qmp"
    trace = tmp_path / "trace.log"
    argv = bare_argv(
        theirs.fileno(),
        "-chardev",
        f"socket,id=handoff-input,path={input_socket},server=on,wait=off",
        "-mon",
        "chardev=handoff-input,mode=control",
        "-trace",
        "input_event_*",
        "-D",
        str(trace),
        "-msg",
        "timestamp=on",
    )
    process = await QemuProcess.start(argv, log_path=log_path, pass_fds=[theirs.fileno()])
    theirs.close()
    try:
        yield TracedQemu(process, ours, input_socket, trace)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        ours.close()


async def drain(transport: QmpSocketTransport, backend: QmpBackend) -> None:
    with trio.fail_after(20):
        await backend.wait_idle(transport)


def without_sync(trace: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [t for t in trace if t[0] != "sync"]


async def test_every_qcode_in_the_table_is_known_to_the_running_qemu(
    traced: TracedQemu,
) -> None:
    async with open_qmp(traced.monitor) as qmp:
        schema = await qmp.execute("query-qmp-schema")
        assert isinstance(schema, list)
        qcodes = qkeycodes_from_schema(schema)
        # keycodemapdb is newer than QEMU 7.2: only F13-F24 may be missing.
        missing = unsupported(LINUX_TO_QCODE, qcodes)
        assert set(missing) <= {f"KEY_F{n}" for n in range(13, 25)}, missing
        table = restrict_to(LINUX_TO_QCODE, qcodes)
        assert len(table) == len(KEY_TABLE) - len(missing)
        # QEMU accepts every one of them, in one batch.
        events = [
            {"type": "key", "data": {"down": down, "key": {"type": "qcode", "data": q}}}
            for q in table.values()
            for down in (True, False)
        ]
        await qmp.execute("input-send-event", {"events": events})
        trace = await traced.quit(qmp)
    keys = [t for t in trace if t[0] == "key"]
    assert [t[1] for t in keys[::2]] == list(table.values())


async def test_frames_sent_through_the_qmp_backend_reach_qemu_in_order(
    traced: TracedQemu,
) -> None:
    async with open_qmp(traced.monitor) as qmp:
        backend = QmpBackend()
        transport = await QmpSocketTransport.connect(traced.input_socket)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend.run, transport)
            backend.submit("kbd", [(EV_KEY, KEY_LEFTSHIFT, 1), (EV_KEY, KEY_A, 1)])
            backend.submit("kbd", [(EV_KEY, KEY_A, 0), (EV_KEY, KEY_LEFTSHIFT, 0)])
            backend.submit(
                "mouse", [(EV_KEY, BTN_SIDE, 1), (EV_REL, REL_X, 7), (EV_REL, REL_Y, -3)]
            )
            backend.submit("mouse", [(EV_KEY, BTN_SIDE, 0), (EV_KEY, BTN_EXTRA, 1)])
            backend.submit("mouse", [(EV_REL, REL_WHEEL, -1), (EV_REL, REL_HWHEEL, 1)])
            backend.submit("mouse", [(EV_REL, REL_WHEEL_HI_RES, 120), (EV_REL, REL_WHEEL, 1)])
            backend.submit("mouse", [(EV_KEY, BTN_EXTRA, 0)])
            await drain(transport, backend)
            nursery.cancel_scope.cancel()
        await transport.aclose()
        assert transport.errors == 0
        trace = await traced.quit(qmp)
    assert without_sync(trace) == [
        ("key", "shift", "1"),
        ("key", "a", "1"),
        ("key", "a", "0"),
        ("key", "shift", "0"),
        ("btn", "side", "1"),
        ("rel", "x", "7"),
        ("rel", "y", "-3"),
        ("btn", "side", "0"),
        ("btn", "extra", "1"),
        ("btn", "wheel-down", "1"),
        ("btn", "wheel-down", "0"),
        ("btn", "wheel-right", "1"),
        ("btn", "wheel-right", "0"),
        ("btn", "wheel-up", "1"),
        ("btn", "wheel-up", "0"),
        ("btn", "extra", "0"),
    ]
    # One batch, one sync: seven frames.
    assert trace.count(("sync",)) == 7


async def test_a_burst_of_motion_is_coalesced_without_losing_motion_or_keys(
    traced: TracedQemu,
) -> None:
    async with open_qmp(traced.monitor) as qmp:
        backend = QmpBackend()
        transport = await QmpSocketTransport.connect(traced.input_socket)
        want_x = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend.run, transport)
            for i in range(3000):
                backend.submit("mouse", [(EV_REL, REL_X, i % 7 - 2)])
                want_x += i % 7 - 2
                if i % 300 == 0:
                    code = KEY_A if (i // 300) % 2 else KEY_B
                    backend.submit("kbd", [(EV_KEY, code, 1)])
                    backend.submit("kbd", [(EV_KEY, code, 0)])
                if i % 50 == 0:
                    await trio.lowlevel.checkpoint()  # let the sender run, as reads do
            await drain(transport, backend)
            nursery.cancel_scope.cancel()
        await transport.aclose()
        trace = await traced.quit(qmp)
    assert transport.sent < backend.frames, "nothing was coalesced"
    assert sum(int(t[2]) for t in trace if t[0] == "rel") == want_x
    keys = [(t[1], t[2]) for t in trace if t[0] == "key"]
    expected = ["b" if n % 2 == 0 else "a" for n in range(10)]
    assert keys == [(k, d) for k in expected for d in ("1", "0")]


async def test_the_execute_transport_over_the_session_bridge_keeps_order(
    traced: TracedQemu,
) -> None:
    async with open_qmp(traced.monitor) as qmp:
        backend = QmpBackend()
        transport = ExecuteTransport(qmp)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend.run, transport)
            for i in range(200):
                backend.submit("mouse", [(EV_REL, REL_X, 1)])
                if i % 20 == 0:
                    backend.submit("mouse", [(EV_KEY, BTN_LEFT, 1)])
                    backend.submit("mouse", [(EV_KEY, BTN_LEFT, 0)])
            with trio.fail_after(20):
                await backend.wait_idle(transport)
            nursery.cancel_scope.cancel()
        trace = await traced.quit(qmp)
    assert sum(int(t[2]) for t in trace if t[0] == "rel") == 200
    assert [t[2] for t in trace if t[0] == "btn"] == ["1", "0"] * 10


# --------------------------------------------------------------------------- the router edge


class PipeDevice:
    """An evdev-shaped device on a pipe: struct input_event records, EVIOCGKEY state, grab flag.

    This host has no /dev/input and no uinput; everything around the device
    (router edge, reader, qmp backend, QEMU) is real here, and the testbed
    runs the same flows with real uinput devices (tests/testbed/test_input_*).
    ``host_seen`` is what the host's own input stack would have received.
    """

    RECORD = struct.Struct("llHHi")

    def __init__(self, name: str) -> None:
        self.name = name
        self.fd, self._writer = os.pipe()
        os.set_blocking(self.fd, False)
        self.kernel: set[int] = set()
        self.grabbed = False
        self.host_seen: list[tuple[int, int, int]] = []
        self.closed = False

    def emit(self, etype: int, code: int, value: int) -> None:
        if etype == EV_KEY:
            (self.kernel.add if value else self.kernel.discard)(code)
        if not self.grabbed:
            self.host_seen.append((etype, code, value))
        now = time.time()
        os.write(self._writer, self.RECORD.pack(int(now), int(now % 1 * 1e6), etype, code, value))

    def frame(self, *events: tuple[int, int, int]) -> None:
        for event in events:
            self.emit(*event)
        self.emit(0, 0, 0)

    def tap(self, *codes: int) -> None:
        for code in codes:
            self.frame((EV_KEY, code, 1))
        for code in reversed(codes):
            self.frame((EV_KEY, code, 0))

    def overflow(self, *lost: tuple[int, int, int]) -> None:
        """The kernel buffer overflowed: ``lost`` changed the key state but is never read.

        evdev leaves SYN_DROPPED in the buffer, then the end of the newest frame.
        """
        for etype, code, value in lost:
            if etype == EV_KEY:
                (self.kernel.add if value else self.kernel.discard)(code)
        self.emit(0, SYN_DROPPED, 0)
        self.emit(0, 0, 0)

    def unplug(self) -> None:
        os.close(self._writer)

    # what the router edge uses (besides reading ``fd``: at the end of the pipe it
    # reads end of file, which it takes for an unplugged device, as ENODEV)
    def is_grabbed(self) -> bool:
        return self.grabbed

    def grab(self) -> None:
        self.grabbed = True

    def ungrab(self) -> None:
        self.grabbed = False

    def active_keys(self) -> list[int]:
        """EVIOCGKEY; like evdev, it flushes the key events still queued for this reader."""
        try:
            queued = os.read(self.fd, self.RECORD.size * 4096)
        except BlockingIOError:
            queued = b""
        kept: list[bytes] = []
        packet = False
        for record in self.RECORD.iter_unpack(queued):
            etype, code = record[2], record[3]
            if etype == EV_KEY or (etype == 0 and code == 0 and not packet):
                continue  # a key event, or the SYN_REPORT of a packet left empty
            packet = etype != 0 or code != 0
            kept.append(self.RECORD.pack(*record))
        if kept:
            os.write(self._writer, b"".join(kept))
        return sorted(self.kernel)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.grabbed = False
            os.close(self.fd)


KEY_LEFTCTRL, KEY_RIGHTCTRL, KEY_H, KEY_I, KEY_X, KEY_Y = 29, 97, 35, 23, 45, 21


async def settle(backend: QmpBackend, transport: QmpSocketTransport) -> None:
    """Wait until the readers drained their pipes and QEMU answered every batch."""
    await trio.testing.wait_all_tasks_blocked(0.02)
    with trio.fail_after(20):
        await backend.wait_idle(transport)


@dataclass
class Forwarding:
    """The whole forwarding path of a test: devices, the router, the QMP backend, the
    input socket, a real QEMU; ``trace``: what QEMU received, once the path is closed."""

    backend: QmpBackend
    transport: QmpSocketTransport
    router: InputRouter
    nursery: trio.Nursery
    trace: list[tuple[str, ...]] = field(default_factory=list)

    async def settle(self) -> None:
        await settle(self.backend, self.transport)

    def plug(self, name: str, device: PipeDevice) -> None:
        self.nursery.start_soon(self.router.run_device, name, device)


@contextlib.asynccontextmanager
async def forwarding(traced: TracedQemu, **devices: PipeDevice) -> AsyncIterator[Forwarding]:
    """Route ``devices`` (name=device) to ``traced`` (the hotkey: both Ctrls; starting
    in the guest); on exit the tasks end, QEMU quits and its trace is read."""
    async with open_qmp(traced.monitor) as qmp:
        backend = QmpBackend()
        transport = await QmpSocketTransport.connect(traced.input_socket)
        router = InputRouter(RouterCore({KEY_LEFTCTRL, KEY_RIGHTCTRL}, InputMode.GUEST), backend)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend.run, transport)
            path = Forwarding(backend, transport, router, nursery)
            for name, device in devices.items():
                path.plug(name, device)
            yield path
            nursery.cancel_scope.cancel()
        await transport.aclose()
        path.trace = await traced.quit(qmp)


async def test_typing_through_the_router_reaches_qemu_and_the_hotkey_hands_back(
    traced: TracedQemu,
) -> None:
    keyboard = PipeDevice("test keyboard")
    async with forwarding(traced, kbd=keyboard) as path:
        await path.settle()
        assert keyboard.is_grabbed()
        keyboard.tap(KEY_H)
        keyboard.tap(KEY_I)
        keyboard.tap(KEY_LEFTCTRL, KEY_RIGHTCTRL)  # the hotkey: back to the host
        await path.settle()
        assert not keyboard.is_grabbed()
        keyboard.tap(KEY_X)  # the host's
        await path.settle()
        path.router.request(Side.GUEST)
        assert keyboard.is_grabbed()
        keyboard.tap(KEY_Y)
        await path.settle()
        path.router.close()
    trace = path.trace
    keys = [(t[1], t[2]) for t in trace if t[0] == "key"]
    assert keys == [
        ("h", "1"),
        ("h", "0"),
        ("i", "1"),
        ("i", "0"),
        ("ctrl", "1"),
        ("ctrl", "0"),  # released in the guest as the chord completed; ctrl_r never sent
        ("y", "1"),
        ("y", "0"),
    ]
    assert (EV_KEY, KEY_X, 1) in keyboard.host_seen
    assert (EV_KEY, KEY_H, 1) not in keyboard.host_seen
    assert keyboard.closed


async def test_an_unplugged_keyboard_lets_go_in_the_guest_and_is_taken_again_when_back(
    traced: TracedQemu,
) -> None:
    first = PipeDevice("test keyboard")
    async with forwarding(traced, kbd=first) as path:
        await path.settle()
        first.frame((EV_KEY, KEY_H, 1))  # held while the cable is pulled
        await path.settle()
        first.unplug()
        await path.settle()
        assert first.closed
        again = PipeDevice("test keyboard")
        path.plug("kbd", again)
        await path.settle()
        assert again.is_grabbed()
        again.tap(KEY_I)
        await path.settle()
        path.router.close()
    trace = path.trace
    keys = [(t[1], t[2]) for t in trace if t[0] == "key"]
    assert keys == [("h", "1"), ("h", "0"), ("i", "1"), ("i", "0")]


async def test_switching_to_the_host_releases_in_the_guest_every_key_and_button_held(
    traced: TracedQemu,
) -> None:
    keyboard, mouse = PipeDevice("test keyboard"), PipeDevice("test mouse")
    async with forwarding(traced, kbd=keyboard, mouse=mouse) as path:
        await path.settle()
        keyboard.frame((EV_KEY, KEY_H, 1), (EV_KEY, KEY_LEFTSHIFT, 1))
        mouse.frame((EV_KEY, BTN_LEFT, 1))
        await path.settle()
        path.router.request(Side.HOST)  # immediate, with all three still held
        await path.settle()
        assert not keyboard.is_grabbed()
        assert not mouse.is_grabbed()
        held_in_guest = parse_trace(traced.trace)
        keyboard.frame((EV_KEY, KEY_H, 0), (EV_KEY, KEY_LEFTSHIFT, 0))  # the host's now
        mouse.frame((EV_KEY, BTN_LEFT, 0))
        await path.settle()
        path.router.close()
    trace = path.trace
    assert trace == held_in_guest, "nothing reached the guest after the switch"
    pressed = [t[1:] for t in trace if t[0] in ("key", "btn")]
    assert sorted(pressed[:3]) == [("h", "1"), ("left", "1"), ("shift", "1")]
    assert sorted(pressed[3:]) == [("h", "0"), ("left", "0"), ("shift", "0")]
    assert (EV_KEY, KEY_H, 0) in keyboard.host_seen
    assert (EV_KEY, BTN_LEFT, 0) in mouse.host_seen


async def test_keys_typed_just_before_a_switch_to_the_host_still_reach_the_guest(
    traced: TracedQemu,
) -> None:
    """The switch reads EVIOCGKEY, which flushes queued key events: they are routed first."""
    keyboard = PipeDevice("test keyboard")
    async with forwarding(traced, kbd=keyboard) as path:
        await path.settle()
        keyboard.tap(KEY_H)  # still queued: the router has not read it yet
        keyboard.frame((EV_KEY, KEY_I, 1))
        path.router.request(Side.HOST)
        await path.settle()
        assert not keyboard.is_grabbed()
        keyboard.frame((EV_KEY, KEY_I, 0))
        await path.settle()
        path.router.close()
    trace = path.trace
    keys = [(t[1], t[2]) for t in trace if t[0] == "key"]
    assert keys == [("h", "1"), ("h", "0"), ("i", "1"), ("i", "0")]  # I: released by the switch


async def test_a_release_lost_in_a_kernel_overflow_is_given_to_the_guest_after_syn_dropped(
    traced: TracedQemu,
) -> None:
    """SYN_DROPPED at the router edge: EVIOCGKEY tells what the lost events changed."""
    keyboard = PipeDevice("test keyboard")
    async with forwarding(traced, kbd=keyboard) as path:
        await path.settle()
        keyboard.frame((EV_KEY, KEY_H, 1))
        await path.settle()
        # H is let go and X pressed, both lost in an overflow of the kernel buffer.
        keyboard.overflow((EV_KEY, KEY_H, 0), (EV_KEY, KEY_X, 1))
        await path.settle()
        assert path.router.dropped == 1
        assert path.router.core.guest_down == {}, "the guest still holds a key the host let go"
        assert path.router.core.held == {"kbd": {KEY_X}}  # X: held, so a switch waits for it
        keyboard.frame((EV_KEY, KEY_X, 0))  # its press never reached the guest: nor this
        keyboard.tap(KEY_I)
        await path.settle()
        path.router.close()
    trace = path.trace
    keys = [(t[1], t[2]) for t in trace if t[0] == "key"]
    assert keys == [("h", "1"), ("h", "0"), ("i", "1"), ("i", "0")]


SECRET = "Hunter2!"
#: A key event in a log text: (EV_KEY, code, value) as the router holds it, or evdev's str().
EVENT_REPRS = (
    re.compile(r"\(\s*1,\s*(\d+),\s*-?\d+\s*\)"),
    re.compile(r"code (\d+), type 0*1\b"),
)
SECRET_KEYS = {  # Linux codes typed for SECRET (with shift)
    "H": (42, 35),
    "u": (22,),
    "n": (49,),
    "t": (20,),
    "e": (18,),
    "r": (19,),
    "2": (3,),
    "!": (42, 2),
}


async def type_the_secret(traced: TracedQemu) -> list[tuple[str, ...]]:
    """Type SECRET (and a key QEMU refuses, and the hotkey) through the whole forwarding
    path: a device, the router, the QMP backend, the input socket, a real QEMU."""
    keyboard = PipeDevice("test keyboard")
    async with forwarding(traced, kbd=keyboard) as path:
        await path.settle()
        for char in SECRET:
            keyboard.tap(*SECRET_KEYS[char])
        keyboard.frame((EV_KEY, 183, 1))  # F13: unknown to QEMU 7.2, refused
        keyboard.frame((EV_KEY, 183, 0))
        keyboard.tap(KEY_LEFTCTRL, KEY_RIGHTCTRL)
        await path.settle()
        keyboard.unplug()
        await path.settle()
    trace = path.trace
    assert len([t for t in trace if t[0] == "key"]) >= 2 * len(SECRET)  # it was typed
    return trace


def key_leaks(records: list[logging.LogRecord]) -> list[str]:
    """The log texts that give a typed key away: the text, a key name, a qcode, a code."""
    codes = {c for keys in SECRET_KEYS.values() for c in keys}
    names = {n for n, c in ((n, c) for n, c, _ in KEY_TABLE) if c in codes}
    qcodes = {LINUX_TO_QCODE[c] for c in codes}
    leaks: list[str] = []
    for record in records:
        text = record.getMessage()
        args = record.args if isinstance(record.args, tuple) else ()
        # An event as the router holds it, (EV_KEY, code, value), or as evdev prints one.
        events = {int(m[1]) for pattern in EVENT_REPRS for m in pattern.finditer(text)}
        if (
            SECRET in text or SECRET.lower() in text or "qcode" in text
            or any(name in text for name in names)
            or any(f"'{q}'" in text or f'"{q}"' in text for q in qcodes)
            or any(isinstance(a, int) and a in codes for a in args)
            or events & codes
        ):
            leaks.append(text)
    return leaks


async def test_typed_text_never_reaches_any_log_record(
    traced: TracedQemu, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await type_the_secret(traced)
    assert caplog.records, "logging was not captured at all"
    heard = {record.name for record in caplog.records}
    assert "handoff.qemu.wire" in heard, "the QMP wire's records were not captured"
    assert key_leaks(caplog.records) == []


async def test_the_log_check_catches_a_key_the_wire_would_log(
    traced: TracedQemu, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above is not vacuous: a wire that logged what it sends is caught."""
    from handoff.qemu import wire

    send = wire.QmpWire.send

    async def logging_send(self: wire.QmpWire, line: bytes) -> None:
        logging.getLogger("handoff.qemu.wire").debug("sent %s", line.decode())
        await send(self, line)

    monkeypatch.setattr(wire.QmpWire, "send", logging_send)
    caplog.set_level(logging.DEBUG)
    await type_the_secret(traced)
    assert key_leaks(caplog.records) != []
