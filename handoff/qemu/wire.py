"""QMP on the wire: the one implementation of framing, greeting and ``qmp_capabilities``.

QMP is JSON, one object per line (QEMU ends every message with a newline).
Two clients use this module:

* :mod:`handoff.qemu.qmp` reads the greeting and negotiates capabilities on
  the session's socketpair here, in trio, then hands the socket to qemu.qmp
  (:class:`HandoverSocket` reads no byte past each line, so nothing meant for
  qemu.qmp is consumed);
* :mod:`handoff.input.forward` speaks to a monitor of its own for input, in
  strict order, with :data:`IN_FLIGHT` requests outstanding; it does not use
  qemu.qmp, which logs every message at DEBUG (typed keys included).

What QEMU sends is never logged here, at any level: an ``input-send-event``
request carries key names and an error reply can quote one. Log records of
this module name the monitor and the message kind only.

Errors: QEMU hanging up (EOF, ECONNRESET, EPIPE; also in the middle of a
line) is :class:`QmpDisconnectedError`; an error reply is
:class:`QmpCommandError` (class and description); anything else that is not
QMP (not JSON, a greeting without ``QMP``, an over-long line) is
:class:`handoff.base.errors.QmpError`.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import trio

from handoff.base.errors import QmpError

__all__ = [
    "CONNECT_TIMEOUT",
    "IN_FLIGHT",
    "LINE_MAX",
    "QEMU_REQUEST_QUEUE",
    "HandoverSocket",
    "LineFramer",
    "Message",
    "QmpCommandError",
    "QmpDisconnectedError",
    "QmpWire",
    "check_greeting",
    "connect_timeout_error",
    "encode_command",
    "hung_up",
    "open_unix",
    "parse_message",
    "qemu_version",
    "reply_value",
]

log = logging.getLogger(__name__)

#: Seconds QEMU gets, from the connect, to greet on a monitor and accept
#: ``qmp_capabilities``. QEMU greets once machine init is done, which with
#: passthrough includes pinning all guest RAM (tens of seconds for a large VM).
CONNECT_TIMEOUT = 120.0

#: QEMU's per-monitor request queue (QMP_REQ_QUEUE_LEN_MAX in monitor/qmp.c):
#: with 8 requests queued QEMU stops reading the socket. A bound, not a choice.
QEMU_REQUEST_QUEUE = 8

#: Requests handoff keeps outstanding on one monitor. QEMU serves a monitor
#: one request at a time, so each request queued behind the one being served
#: adds a whole service time to everything after it. Measured 2026-11-29 with
#: bench/input_latency.py in the testbed (TCG in TCG, 250 Hz mouse, p50/p99
#: submit -> QEMU's input trace): 1 in flight 46/138 ms, 2 in flight 42/109 ms,
#: 8 in flight 151/561 ms. Two keep QEMU busy (the next request is there when
#: one finishes) without building a queue; motion waiting in handoff's own
#: queue is merged instead (bench/README.md).
IN_FLIGHT = 2

#: The longest line accepted. The wire reads greetings and short replies
#: (qemu.qmp reads the session's long ones, such as query-qmp-schema).
LINE_MAX = 1 << 20

#: Bytes asked of the socket per read.
_CHUNK = 65536

#: One QMP message: greeting, reply or event.
Message = dict[str, Any]

_FIX = "look at QEMU's log in the run directory"


class QmpCommandError(QmpError):
    """QEMU answered a command with an error (the command ran and was refused)."""

    def __init__(self, command: str, error_class: str, description: str) -> None:
        super().__init__(f"QMP command {command!r} failed: {error_class}: {description}")
        self.command = command
        self.error_class = error_class
        self.description = description


class QmpDisconnectedError(QmpError):
    """The QMP connection is gone (QEMU exited or closed the monitor)."""


# --------------------------------------------------------------------------- pure


class LineFramer:
    """Bytes in, complete lines out; keeps a partial line for the next ``feed``."""

    def __init__(self, limit: int = LINE_MAX) -> None:
        self._buffer = bytearray()
        self._limit = limit

    @property
    def partial(self) -> bool:
        """True when bytes of an unfinished line are waiting."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_line(self) -> bytes | None:
        """The next complete non-blank line (newline stripped), or None if none is complete."""
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self._limit:
                    raise QmpError(f"QEMU's monitor sent a line longer than {self._limit} bytes")
                return None
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if line.strip():
                return line


def parse_message(line: bytes) -> Message:
    """One line → one QMP message (a JSON object); raises QmpError for anything else.

    The message text is never quoted: it may carry key names.
    """
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise QmpError(
            f"QEMU's monitor sent something that is not JSON ({len(line)} bytes)",
            fix="is the socket a QEMU monitor in control mode (-mon ...,mode=control)?",
        ) from exc
    if not isinstance(message, dict):
        raise QmpError(f"QEMU's monitor sent a JSON {type(message).__name__}, not an object")
    return message


def check_greeting(message: Message, where: str) -> None:
    """A QMP greeting is ``{"QMP": {"version": ..., "capabilities": [...]}}``."""
    if "QMP" not in message:
        raise QmpError(
            f"{where}: the first message is not a QMP greeting (its keys: "
            f"{', '.join(sorted(message)[:5]) or 'none'})",
            fix="is the socket a QEMU monitor in control mode (-mon ...,mode=control)?",
        )


def qemu_version(greeting: Message) -> str:
    """``major.minor.micro`` from a greeting, or ``unknown``."""
    try:
        v = greeting["QMP"]["version"]["qemu"]
        return f"{int(v['major'])}.{int(v['minor'])}.{int(v['micro'])}"
    except (KeyError, TypeError, ValueError):
        return "unknown"


def reply_value(command: str, reply: Message) -> object:
    """A reply's ``return`` value; an ``error`` reply raises :class:`QmpCommandError`."""
    if "return" in reply:
        return reply["return"]
    error = reply.get("error")
    if isinstance(error, dict):
        raise QmpCommandError(command, str(error.get("class", "error")), str(error.get("desc", "")))
    raise QmpError(f"QEMU answered {command!r} with neither return nor error")


def encode_command(command: str, arguments: Mapping[str, object] | None = None) -> bytes:
    """One request line (no ``id``: a monitor answers in order)."""
    request: dict[str, object] = {"execute": command}
    if arguments is not None:
        request["arguments"] = arguments
    return json.dumps(request, separators=(",", ":")).encode() + b"\n"


def hung_up(
    where: str, exc: BaseException | None = None, *, mid_line: bool = False
) -> QmpDisconnectedError:
    """QEMU closed the monitor: it exited (the caller reports how)."""
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    how = ""
    if isinstance(cause, OSError):
        how = f" ({cause.strerror or type(cause).__name__})"
    middle = " in the middle of a message" if mid_line else ""
    return QmpDisconnectedError(
        f"{where}: QEMU closed the connection{middle}{how} (it probably exited)", fix=_FIX
    )


def connect_timeout_error(where: str, seconds: float) -> QmpError:
    """QEMU did not greet (or negotiate) on a monitor in time."""
    return QmpError(
        f"{where}: QEMU did not answer within {seconds:g} s",
        fix=f"{_FIX}; raise the limit if the host is slow",
    )


# --------------------------------------------------------------------------- I/O


class ByteStream(Protocol):
    """What the wire reads and writes: :class:`trio.SocketStream` or :class:`HandoverSocket`."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...


class HandoverSocket:
    """A non-blocking stdlib socket read no further than the end of each line.

    ``MSG_PEEK`` finds the newline first, so what QEMU sends after a line
    (an event right after negotiation) stays in the socket for the client
    the socket is handed to. The socket is not closed here.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        limit = max_bytes or _CHUNK
        while True:
            await trio.lowlevel.wait_readable(self._sock)
            try:
                data = self._sock.recv(limit, socket.MSG_PEEK)
                if not data:
                    return b""
                end = data.find(b"\n")
                return self._sock.recv(len(data) if end < 0 else end + 1)
            except BlockingIOError:
                continue

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            await trio.lowlevel.wait_writable(self._sock)
            try:
                view = view[self._sock.send(view) :]
            except BlockingIOError:
                continue


class QmpWire:
    """One QMP connection on a byte stream: messages in, request lines out.

    ``where`` names the monitor in error messages (``"QEMU's input monitor
    /run/.../input.qmp"``). Not safe for two concurrent readers.
    """

    def __init__(self, stream: ByteStream, where: str = "QEMU's monitor") -> None:
        self.stream = stream
        self.where = where
        self._framer = LineFramer()

    async def receive(self) -> Message:
        """The next message (greeting, reply or event), however the reads split it."""
        while True:
            line = self._framer.next_line()
            if line is not None:
                return parse_message(line)
            try:
                chunk = await self.stream.receive_some(_CHUNK)
            except (OSError, trio.BrokenResourceError) as exc:  # ECONNRESET
                raise hung_up(self.where, exc, mid_line=self._framer.partial) from exc
            if not chunk:
                raise hung_up(self.where, mid_line=self._framer.partial)
            self._framer.feed(chunk)

    async def receive_reply(self) -> Message:
        """The next reply; events before it are skipped (the supervisor gets them elsewhere)."""
        while True:
            message = await self.receive()
            if "event" not in message:
                return message

    async def send(self, line: bytes) -> None:
        """Write one encoded request (:func:`encode_command`)."""
        try:
            await self.stream.send_all(line)
        except (OSError, trio.BrokenResourceError) as exc:  # EPIPE: QEMU exited
            raise hung_up(self.where, exc) from exc

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        """Send one command and return its reply's value (one request at a time)."""
        await self.send(encode_command(command, arguments))
        return reply_value(command, await self.receive_reply())

    async def negotiate(self) -> Message:
        """Read the greeting, leave capabilities negotiation mode; returns the greeting."""
        greeting = await self.receive()
        check_greeting(greeting, self.where)
        await self.execute("qmp_capabilities")
        log.debug("%s: QMP negotiated (QEMU %s)", self.where, qemu_version(greeting))
        return greeting


async def open_unix(path: Path, poll: float = 0.02) -> trio.SocketStream:
    """Connect to a monitor socket QEMU may still be creating (retried until cancelled).

    The caller bounds it (with the handshake) by :data:`CONNECT_TIMEOUT`.
    """
    while True:
        try:
            return await trio.open_unix_socket(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            await trio.sleep(poll)
