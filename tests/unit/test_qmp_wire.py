"""handoff.qemu.wire, the one QMP framing and handshake, on a real socketpair.

The far end plays QEMU by writing bytes as QEMU's monitor does; the near end
is the wire on a trio stream (the input transport's) or on a
:class:`HandoverSocket` (the session's handshake before qemu.qmp takes over).
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing

from handoff.base.errors import QmpError
from handoff.input.forward import QmpBackend, QmpSocketTransport
from handoff.qemu.wire import (
    ByteStream,
    HandoverSocket,
    LineFramer,
    QmpCommandError,
    QmpDisconnectedError,
    QmpWire,
    encode_command,
    reply_value,
)

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""},'
    b' "capabilities": ["oob"]}}\r\n'
)
OK = b'{"return": {}}\r\n'
EVENT = b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}\r\n'
CAPABILITIES = b'{"execute":"qmp_capabilities"}\n'
EV_KEY = 1
T = TypeVar("T")


async def soon(awaitable: Awaitable[T]) -> T:
    """Await with a deadline: a broken wire fails its test instead of waiting for a line."""
    with trio.fail_after(20):
        return await awaitable


class CountingStream:
    """A ByteStream that counts the reads the wire makes."""

    def __init__(self, inner: ByteStream) -> None:
        self.inner = inner
        self.reads = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self.reads += 1
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)


class Pair:
    """The wire under test and the far end (a blocking stdlib socket with a timeout)."""

    def __init__(self, kind: str) -> None:
        self.ours, self.qemu = socket.socketpair()
        self.qemu.settimeout(10)
        inner: ByteStream
        if kind == "stream":
            inner = trio.SocketStream(trio.socket.from_stdlib_socket(self.ours))
        else:
            inner = HandoverSocket(self.ours)
        self.stream = CountingStream(inner)
        self.wire = QmpWire(self.stream, "test monitor")
        self._requests = b""

    def request(self) -> bytes:
        """The next request line as QEMU reads it."""
        while b"\n" not in self._requests:
            chunk = self.qemu.recv(65536)
            assert chunk, "the wire closed the socket"
            self._requests += chunk
        line, self._requests = self._requests.split(b"\n", 1)
        return line + b"\n"

    def close(self) -> None:
        self.ours.close()
        self.qemu.close()


@pytest.fixture(params=["stream", "handover"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    p = Pair(request.param)
    try:
        yield p
    finally:
        p.close()


# --------------------------------------------------------------------------- framing


async def test_a_message_split_across_reads_is_received_whole(pair: Pair) -> None:
    got: list[dict[str, object]] = []

    async def read() -> None:
        got.append(await soon(pair.wire.receive()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        for piece in (GREETING[:7], GREETING[7:60], GREETING[60:]):
            await trio.testing.wait_all_tasks_blocked()
            pair.qemu.sendall(piece)
    assert got == [json.loads(GREETING)]
    assert pair.stream.reads == 3, "the three pieces were not three reads"


async def test_two_messages_in_one_read_are_two_messages_in_order(pair: Pair) -> None:
    pair.qemu.sendall(EVENT + OK)
    await trio.testing.wait_all_tasks_blocked()
    assert await soon(pair.wire.receive()) == json.loads(EVENT)
    assert await soon(pair.wire.receive()) == {"return": {}}


async def test_a_trio_stream_takes_two_messages_in_one_read() -> None:
    p = Pair("stream")
    try:
        p.qemu.sendall(EVENT + OK)
        assert await soon(p.wire.receive()) == json.loads(EVENT)
        assert await soon(p.wire.receive()) == {"return": {}}
        assert p.stream.reads == 1
    finally:
        p.close()


async def test_a_reply_skips_the_events_before_it(pair: Pair) -> None:
    pair.qemu.sendall(EVENT + EVENT + OK)
    assert await soon(pair.wire.receive_reply()) == {"return": {}}


async def test_the_handover_socket_leaves_what_follows_the_handshake_in_the_socket() -> None:
    p = Pair("handover")
    try:
        p.qemu.sendall(GREETING)

        async def qemu() -> None:
            assert await trio.to_thread.run_sync(p.request) == CAPABILITIES
            p.qemu.sendall(OK + EVENT)  # an event right after: qemu.qmp's to read

        async with trio.open_nursery() as nursery:
            nursery.start_soon(qemu)
            assert await soon(p.wire.negotiate()) == json.loads(GREETING)
        p.ours.setblocking(True)
        p.ours.settimeout(5)
        assert p.ours.recv(4096) == EVENT
    finally:
        p.close()


def test_the_framer_keeps_a_partial_line_and_skips_blank_ones() -> None:
    framer = LineFramer()
    framer.feed(b'\r\n{"a": ')
    assert framer.next_line() is None
    assert framer.partial
    framer.feed(b'1}\n{"b"')
    assert framer.next_line() == b'{"a": 1}'
    assert framer.next_line() is None
    assert framer.partial


def test_an_over_long_line_is_refused() -> None:
    framer = LineFramer(limit=64)
    framer.feed(b"x" * 65)
    with pytest.raises(QmpError, match="longer than 64 bytes"):
        framer.next_line()


# --------------------------------------------------------------------------- errors


async def test_an_error_reply_is_a_command_error_with_qemus_class(pair: Pair) -> None:
    pair.qemu.sendall(
        b'{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}\n'
    )
    with pytest.raises(QmpCommandError) as caught:
        await soon(pair.wire.execute("nope"))
    assert pair.request() == b'{"execute":"nope"}\n'
    assert caught.value.error_class == "CommandNotFound"
    assert caught.value.description == "The command nope has not been found"
    assert caught.value.command == "nope"


def test_a_reply_value_is_its_return() -> None:
    assert reply_value("query-status", {"return": {"running": True}}) == {"running": True}
    with pytest.raises(QmpError, match="neither return nor error"):
        reply_value("query-status", {"id": 3})


async def test_eof_in_the_middle_of_a_line_is_a_disconnect(pair: Pair) -> None:
    pair.qemu.sendall(GREETING[:30])
    pair.qemu.shutdown(socket.SHUT_WR)
    with pytest.raises(QmpDisconnectedError, match="closed the connection in the middle"):
        await soon(pair.wire.receive())


async def test_eof_between_messages_is_a_disconnect(pair: Pair) -> None:
    pair.qemu.sendall(EVENT)
    pair.qemu.shutdown(socket.SHUT_WR)
    assert await soon(pair.wire.receive()) == json.loads(EVENT)
    with pytest.raises(QmpDisconnectedError) as caught:
        await soon(pair.wire.receive())
    assert "middle" not in caught.value.message
    assert "test monitor: QEMU closed the connection" in caught.value.message


async def test_qemu_exiting_with_the_capabilities_request_unread_is_a_disconnect(
    pair: Pair,
) -> None:
    pair.qemu.sendall(GREETING)

    async def qemu_dies() -> None:
        await trio.to_thread.run_sync(lambda: pair.qemu.recv(1, socket.MSG_PEEK))
        pair.qemu.close()  # our request is unread: ECONNRESET on our next read

    async with trio.open_nursery() as nursery:
        nursery.start_soon(qemu_dies)
        with pytest.raises(QmpDisconnectedError, match="closed the connection"):
            await soon(pair.wire.negotiate())


async def test_a_greeting_that_is_not_qmp_is_a_qmp_error_not_a_disconnect(pair: Pair) -> None:
    pair.qemu.sendall(b'{"hello": {"version": 1}}\n')
    with pytest.raises(QmpError, match="not a QMP greeting") as caught:
        await soon(pair.wire.negotiate())
    assert not isinstance(caught.value, QmpDisconnectedError)
    assert "hello" in caught.value.message


async def test_a_human_monitor_is_not_json_and_its_text_is_not_quoted(pair: Pair) -> None:
    pair.qemu.sendall(b"QEMU 7.2.22 monitor - type 'help' for more information\r\n(qemu) ")
    with pytest.raises(QmpError, match="not JSON") as caught:
        await soon(pair.wire.negotiate())
    assert "help" not in caught.value.message
    assert caught.value.fix is not None


async def test_refused_capabilities_are_a_command_error(pair: Pair) -> None:
    pair.qemu.sendall(GREETING)
    pair.qemu.sendall(
        b'{"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation"}}\n'
    )
    with pytest.raises(QmpCommandError, match="qmp_capabilities"):
        await soon(pair.wire.negotiate())
    assert pair.request() == CAPABILITIES


# --------------------------------------------------------------------------- no logging

SECRET_QCODES = ("h", "u", "n", "t", "e", "r")


async def test_keys_sent_and_refused_on_the_wire_never_reach_a_log_record(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pair.qemu.sendall(GREETING + OK)
    await soon(pair.wire.negotiate())
    events = [
        {"type": "key", "data": {"down": down, "key": {"type": "qcode", "data": q}}}
        for q in SECRET_QCODES
        for down in (True, False)
    ]
    pair.qemu.sendall(OK)
    await soon(pair.wire.execute("input-send-event", {"events": events}))
    pair.qemu.sendall(
        b'{"error": {"class": "GenericError", "desc": "Parameter \'data\' does '
        b"not accept value 'hunter'\"}}\n"
    )
    with pytest.raises(QmpCommandError):
        await soon(pair.wire.execute("input-send-event", {"events": events}))
    assert pair.request() == CAPABILITIES
    assert json.loads(pair.request())["arguments"]["events"] == events  # it was sent
    assert any(r.name == "handoff.qemu.wire" for r in caplog.records), "the wire was not heard"
    for record in caplog.records:
        text = record.getMessage()
        assert "qcode" not in text, text
        assert "hunter" not in text, text
        assert "input-send" not in text, text
        assert not any(f"'{q}'" in text or f'"{q}"' in text for q in SECRET_QCODES), text


# --------------------------------------------------------------------------- the input transport


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory for a unix socket (pytest's tmp_path can exceed sun_path's 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="wire-"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


Script = Callable[[trio.socket.SocketType], Awaitable[None]]


@pytest.fixture
async def fake_qemu(short_dir: Path) -> AsyncIterator[Callable[[Script], Awaitable[Path]]]:
    """Start a monitor at a path whose one connection runs ``script`` (QEMU's side)."""
    async with trio.open_nursery() as nursery:

        async def start(script: Script) -> Path:
            path = short_dir / "input.qmp"
            listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await listener.bind(str(path))
            listener.listen(1)

            async def serve() -> None:
                with listener:
                    conn, _ = await listener.accept()
                    with conn:
                        await script(conn)

            nursery.start_soon(serve)
            return path

        yield start
        nursery.cancel_scope.cancel()


async def read_line(conn: trio.socket.SocketType) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await conn.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


async def test_the_input_transport_connects_through_the_wire(
    fake_qemu: Callable[[Script], Awaitable[Path]],
) -> None:
    seen: list[bytes] = []

    async def qemu(conn: trio.socket.SocketType) -> None:
        await conn.send(GREETING)
        seen.append(await read_line(conn))
        await conn.send(OK)
        await trio.sleep_forever()

    path = await fake_qemu(qemu)
    with trio.fail_after(10):
        transport = await QmpSocketTransport.connect(path)
    await transport.aclose()
    assert seen == [CAPABILITIES]


async def test_a_silent_input_monitor_times_out_with_its_path(
    fake_qemu: Callable[[Script], Awaitable[Path]],
) -> None:
    async def qemu(conn: trio.socket.SocketType) -> None:
        await trio.sleep_forever()  # accepted, never greets

    path = await fake_qemu(qemu)
    with pytest.raises(QmpError, match=r"did not answer within 0\.2 s") as caught:
        await QmpSocketTransport.connect(path, deadline=0.2)
    assert str(path) in caught.value.message


async def test_qemu_dying_during_the_input_handshake_is_a_disconnect(
    fake_qemu: Callable[[Script], Awaitable[Path]],
) -> None:
    async def qemu(conn: trio.socket.SocketType) -> None:
        await conn.send(GREETING)
        await conn.recv(1, socket.MSG_PEEK)  # the request arrived; QEMU exits unread

    path = await fake_qemu(qemu)
    with trio.fail_after(10), pytest.raises(QmpDisconnectedError) as caught:
        await QmpSocketTransport.connect(path)
    assert f"QEMU's input monitor {path}: QEMU closed the connection" in caught.value.message


async def test_forwarding_ends_quietly_when_qemu_hangs_up_while_input_keeps_coming(
    fake_qemu: Callable[[Script], Awaitable[Path]],
) -> None:
    async def qemu(conn: trio.socket.SocketType) -> None:
        await conn.send(GREETING)
        await read_line(conn)
        await conn.send(OK)
        await read_line(conn)  # one batch, then QEMU exits unanswered

    path = await fake_qemu(qemu)
    backend = QmpBackend()
    transport = await QmpSocketTransport.connect(path)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend.run, transport)
            for _ in range(50):  # a mouse still moving as the guest powers off
                backend.submit("mouse", [(2, 0, 1)])
                await trio.sleep(0.005)
    await transport.aclose()
    assert transport.sent >= 1


async def test_an_input_batch_qemu_refuses_is_counted_and_forwarding_goes_on(
    fake_qemu: Callable[[Script], Awaitable[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def qemu(conn: trio.socket.SocketType) -> None:
        await conn.send(GREETING)
        await read_line(conn)
        await conn.send(OK)
        await read_line(conn)
        await conn.send(
            b'{"error": {"class": "GenericError", "desc": "Invalid parameter \'f13\'"}}\n'
        )
        await read_line(conn)
        await conn.send(OK)
        await trio.sleep_forever()

    path = await fake_qemu(qemu)
    backend = QmpBackend()
    transport = await QmpSocketTransport.connect(path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(backend.run, transport)
        backend.submit("kbd", [(EV_KEY, 183, 1)])  # F13
        backend.submit("kbd", [(EV_KEY, 30, 1)])  # A: a new batch (keys are never merged)
        with trio.fail_after(10):
            await backend.wait_idle(transport)
        nursery.cancel_scope.cancel()
    await transport.aclose()
    assert (transport.sent, transport.replies, transport.errors) == (2, 2, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["QEMU refused an input batch (GenericError)"]
    assert not any("f13" in r.getMessage() for r in caplog.records)


def test_a_request_line_is_compact_json_with_its_arguments() -> None:
    line = encode_command("input-send-event", {"events": []})
    assert line == b'{"execute":"input-send-event","arguments":{"events":[]}}\n'
    assert encode_command("qmp_capabilities") == CAPABILITIES
