"""The control socket: how `handoff status/stop/switch` reach a running session.

A unix stream socket, ``control.sock`` (mode :data:`SOCKET_MODE`, 0600) in
the session's private run directory: only its owner can connect (connecting
needs write permission on the socket file, and the directory lets nobody
else list it); nothing listens on a network port. The
protocol is JSON lines: the client writes one object per line with a
``command`` key and any arguments, and gets one object per line back::

    → {"command": "status"}
    ← {"ok": true, "result": {"profile": "demo", "phase": "running", ...}}
    → {"command": "stop", "force": true}
    ← {"ok": true, "result": {"stopping": true, "force": true}}
    → {"command": "switch", "mode": "guest"}
    ← {"ok": true, "result": {"mode": "host", "pending": "guest"}}
    → {"command": "nope"}
    ← {"ok": false, "error": "unknown command 'nope'", "fix": "known commands: status, stop",
       "code": "unknown-command"}

The session registers ``status`` and ``stop``; resources register their own
(the input resource registers ``switch``, whose ``mode`` string it parses
into a :class:`~handoff.control.protocol.Side` with
:func:`~handoff.control.protocol.switch_target`) through :class:`ControlCommands`,
which implements :class:`handoff.session.resources.ControlRegistry`. A handler
raising a :class:`HandoffError` answers ``ok: false`` with its message and
fix; the connection stays open for more requests. Every failure carries a
``code`` (:class:`handoff.control.protocol.ControlErrorCode`) that clients
decide by. The client half (:func:`request`) lives in
:mod:`handoff.control.client`, which does not import trio.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from handoff.base.errors import HandoffError
from handoff.control.client import CLIENT_TIMEOUT, ControlRequestError, request
from handoff.control.protocol import MAX_LINE, ControlErrorCode
from handoff.session.resources import ControlHandler, JsonObject

__all__ = [
    "CLIENT_TIMEOUT",
    "MAX_LINE",
    "SOCKET_MODE",
    "ControlCommands",
    "ControlRequestError",
    "request",
    "serve_control",
]

log = logging.getLogger(__name__)

#: The control socket's mode: connectable by its owner only.
SOCKET_MODE = 0o600


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
                'a request needs a "command" string',
                'send {"command": "status"}',
                ControlErrorCode.BAD_REQUEST,
            )
        handler = self._handlers.get(command)
        if handler is None:
            return _failure(
                f"unknown command {command!r}",
                f"known commands: {', '.join(self.commands)}",
                ControlErrorCode.UNKNOWN_COMMAND,
            )
        try:
            result = await handler(message)
        except HandoffError as exc:
            return _failure(exc.message, exc.fix, ControlErrorCode.FAILED)
        return {"ok": True, "result": result}


def _failure(message: str, fix: str | None, code: ControlErrorCode) -> JsonObject:
    response: JsonObject = {"ok": False, "error": message, "code": code.value}
    if fix:
        response["fix"] = fix
    return response


def peer_uid(stream: trio.SocketStream) -> int | None:
    """The connected client's uid, from the kernel (SO_PEERCRED: pid, uid, gid)."""
    try:
        raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _, uid, _ = struct.unpack("3i", raw)
    return int(uid)


def _not_allowed(command: object) -> JsonObject:
    return _failure(
        f"{command!r} is for root only: a desktop user may run status, switch, gpu and stop",
        "run it as root (sudo handoff ...)",
        ControlErrorCode.NOT_ALLOWED,
    )


async def _serve_connection(
    stream: trio.SocketStream, commands: ControlCommands,
    allowed: Callable[[object], bool] | None = None,
) -> None:
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
                    response = _failure(
                        "the request is not valid JSON", None, ControlErrorCode.BAD_REQUEST
                    )
                else:
                    if isinstance(message, dict) and allowed is not None and not allowed(
                        message.get("command")
                    ):
                        response = _not_allowed(message.get("command"))
                    elif isinstance(message, dict):
                        response = await commands.dispatch(message)
                    else:
                        response = _failure(
                            "a request must be a JSON object", None, ControlErrorCode.BAD_REQUEST
                        )
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
    owner: tuple[int, int] | None = None,
    mode: int = SOCKET_MODE,
    admit: Callable[[int | None], bool] | None = None,
    allowed: Callable[[object], bool] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``path`` (a unix socket in the 0700 run dir) until cancelled.

    A stale socket file from a crashed session is replaced (the caller holds
    the run directory lock, so it cannot belong to a live session). The
    socket file is removed on the way out. A desktop user's socket
    (:mod:`handoff.control.users`) is given to ``owner`` (uid, gid) with
    ``mode``, admits only the peers ``admit`` accepts (by SO_PEERCRED uid)
    and answers only the commands ``allowed`` accepts.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        os.chmod(path, mode)  # not the umask's choice; before anyone can connect
        if owner is not None:  # a directory only root writes: the name is the socket
            os.chown(path, *owner, follow_symlinks=False)
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
                if admit is not None and not admit(peer_uid(stream)):
                    log.warning("control socket %s: refused a connection from uid %s",
                                path, peer_uid(stream))
                    await stream.aclose()
                    continue
                nursery.start_soon(_serve_connection, stream, commands, allowed)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

