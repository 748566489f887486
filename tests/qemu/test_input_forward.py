"""The qmp input backend against a real QEMU, observed through QEMU's input trace.

QEMU started with ``-trace 'input_event_*' -D FILE -msg timestamp=on`` logs
every event its input layer receives; the VM must run (input-send-event says
"VM not running" under -S), so a q35 with only its firmware runs briefly.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from handoff.input.forward import ExecuteTransport, QmpBackend, QmpSocketTransport
from handoff.input.keymap import (
    KEY_TABLE,
    LINUX_TO_QCODE,
    qkeycodes_from_schema,
    restrict_to,
    unsupported,
)
from handoff.input.translate import (
    EV_KEY,
    EV_REL,
    REL_HWHEEL,
    REL_WHEEL,
    REL_WHEEL_HI_RES,
    REL_X,
    REL_Y,
)
from handoff.qemu.process import QemuProcess
from handoff.qemu.qmp import QmpConnection, open_qmp

from .conftest import bare_argv

pytestmark = pytest.mark.qemu

TRACE_LINE = re.compile(r"^\d+@(?P<ts>[\d.]+):input_event_(?P<kind>\w+) (?P<rest>.*)$")
KEY_A, KEY_B, KEY_LEFTSHIFT = 30, 48, 42
BTN_LEFT, BTN_SIDE, BTN_EXTRA = 0x110, 0x113, 0x114


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
