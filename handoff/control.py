"""The control socket: how `handoff status/stop/switch` reach a running session.

A unix stream socket, ``control.sock`` in the session's 0700 run directory
(only its owner can connect; nothing listens on a network port). The
protocol is JSON lines: the client writes one object per line with a
``command`` key and any arguments, and gets one object per line back::

    → {"command": "status"}
    ← {"ok": true, "result": {"profile": "demo", "phase": "running", ...}}
    → {"command": "stop", "force": true}
    ← {"ok": true, "result": {"stopping": true, "force": true}}
    → {"command": "nope"}
    ← {"ok": false, "error": "unknown command 'nope'", "fix": "known commands: status, stop"}

The session registers ``status`` and ``stop``; resources register their own
(the input resource registers ``switch``) through :class:`ControlCommands`,
which implements :class:`handoff.resources.ControlRegistry`. A handler
raising a :class:`HandoffError` answers ``ok: false`` with its message and
fix; the connection stays open for more requests.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from handoff.errors import HandoffError, SessionError, SessionNotRunningError
from handoff.resources import ControlHandler, JsonObject

__all__ = [
    "MAX_LINE",
    "ControlCommands",
    "ControlRequestError",
    "request",
    "serve_control",
]

log = logging.getLogger(__name__)

#: Longest request line accepted; a client sending more is disconnected.
MAX_LINE = 64 * 1024

#: How long the CLI waits for a session to answer.
CLIENT_TIMEOUT = 15.0


class ControlRequestError(SessionError):
    """The session answered a control request with an error."""


class ControlCommands:
    """The command table of one session's control socket (a ControlRegistry)."""

    def __init__(self) -> None:
        self._handlers: dict[str, ControlHandler] = {}

    def register(self, command: str, handler: ControlHandler) -> None:
        """Add ``command``; registering a name twice is a programming error."""
        if command in self._handlers:
            raise ValueError(f"control command {command!r} is already registered")
        self._handlers[command] = handler

    @property
    def commands(self) -> tuple[str, ...]:
        return tuple(sorted(self._handlers))

    async def dispatch(self, message: Mapping[str, Any]) -> JsonObject:
        """Answer one request object with a response object (never raises HandoffError)."""
        command = message.get("command")
        if not isinstance(command, str):
            return _failure(
                'a request needs a "command" string', 'send {"command": "status"}'
            )
        handler = self._handlers.get(command)
        if handler is None:
            return _failure(
                f"unknown command {command!r}", f"known commands: {', '.join(self.commands)}"
            )
        try:
            result = await handler(message)
        except HandoffError as exc:
            return _failure(exc.message, exc.fix)
        return {"ok": True, "result": result}


def _failure(message: str, fix: str | None) -> JsonObject:
    response: JsonObject = {"ok": False, "error": message}
    if fix:
        response["fix"] = fix
    return response


async def _serve_connection(stream: trio.SocketStream, commands: ControlCommands) -> None:
    buffer = b""
    async with stream:
        while True:
            try:
                data = await stream.receive_some(MAX_LINE)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError:
                    response = _failure("the request is not valid JSON", None)
                else:
                    if isinstance(message, dict):
                        response = await commands.dispatch(message)
                    else:
                        response = _failure("a request must be a JSON object", None)
                try:
                    await stream.send_all(json.dumps(response).encode() + b"\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            if len(buffer) > MAX_LINE:
                log.warning("control client sent an over-long line; disconnecting it")
                return


async def serve_control(
    path: Path,
    commands: ControlCommands,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``path`` (a unix socket in the 0700 run dir) until cancelled.

    A stale socket file from a crashed session is replaced (the caller holds
    the run directory lock, so it cannot belong to a live session). The
    socket file is removed on the way out.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    listener = trio.SocketListener(sock)
    try:
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                nursery.start_soon(_serve_connection, stream, commands)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def request(
    path: Path, message: Mapping[str, Any], *, timeout: float = CLIENT_TIMEOUT
) -> JsonObject:
    """Send one request to a session and return its ``result`` (blocking; for the CLI).

    Raises :class:`SessionNotRunningError` when nothing listens on ``path``
    and :class:`ControlRequestError` with the session's message and fix
    when it answers ``ok: false``.
    """
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        try:
            client.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise SessionNotRunningError(
                f"no session is running there (nothing answers on {path})",
                fix="start it with `handoff run PROFILE`; `handoff status` lists sessions",
            ) from exc
        except PermissionError as exc:
            raise SessionError(
                f"cannot reach {path}: permission denied (the run directory is private "
                "to the user who started the session)",
                fix="run this command as that user (usually root)",
            ) from exc
        try:
            client.sendall(json.dumps(dict(message)).encode() + b"\n")
            reply = _read_line(client)
        except TimeoutError as exc:
            raise SessionError(
                f"the session did not answer within {timeout:g} s on {path}",
                fix="it may be stuck; check `ps` for the supervisor and QEMU",
            ) from exc
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE):
                raise SessionNotRunningError(
                    f"the session closed the control connection ({path})"
                ) from exc
            raise
    finally:
        client.close()
    try:
        response = json.loads(reply)
    except ValueError as exc:
        raise SessionError(f"the session sent an unreadable answer on {path}") from exc
    if not isinstance(response, dict):
        raise SessionError(f"the session sent an unreadable answer on {path}")
    if not response.get("ok"):
        raise ControlRequestError(
            str(response.get("error", "the session refused the request")),
            fix=response.get("fix"),
        )
    result = response.get("result", {})
    return result if isinstance(result, dict) else {"result": result}


def _read_line(client: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = client.recv(MAX_LINE)
        if not chunk:
            raise SessionNotRunningError("the session closed the control connection")
        data += chunk
        if len(data) > 16 * MAX_LINE:
            raise SessionError("the session's answer is too long")
    return data.split(b"\n", 1)[0]
