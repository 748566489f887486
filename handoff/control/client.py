"""The client side of the control socket (`handoff status/stop/switch`): blocking, no trio.

The protocol is described in :mod:`handoff.control.server`, which serves it. This
half is separate so that the commands a desktop shortcut runs start in the
time of the standard library: it imports neither trio nor the session.

A failure answer carries a machine-readable ``code`` (:class:`ControlErrorCode`)
next to its message and fix, so a client decides by the code, never by the
message's text.
"""

from __future__ import annotations

import errno
import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from handoff.base.errors import HandoffError, SessionError, SessionNotRunningError
from handoff.control.protocol import MAX_LINE, ControlErrorCode

__all__ = [
    "CLIENT_TIMEOUT",
    "ControlRequestError",
    "request",
]

#: How long the CLI waits for a session to answer.
CLIENT_TIMEOUT = 15.0


class ControlRequestError(SessionError):
    """The session answered a control request with an error."""

    def __init__(
        self, message: str, *, fix: str | None = None, code: ControlErrorCode | None = None
    ) -> None:
        super().__init__(message, fix=fix)
        self.code = code


def _code(value: object) -> ControlErrorCode | None:
    try:
        return ControlErrorCode(value)
    except ValueError:
        return None


def request(
    path: Path, message: Mapping[str, Any], *, timeout: float = CLIENT_TIMEOUT
) -> dict[str, Any]:
    """Send one request to a session and return its ``result`` (blocking; for the CLI).

    Raises :class:`SessionNotRunningError` when nothing listens on ``path``
    and :class:`ControlRequestError` with the session's message, fix and
    code when it answers ``ok: false``.
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
            code=_code(response.get("code")),
        )
    result = response.get("result", {})
    return result if isinstance(result, dict) else {"result": result}


def request_served(
    path: Path, message: Mapping[str, Any], *, missing: str, fix: str,
    timeout: float = CLIENT_TIMEOUT,
) -> dict[str, Any]:
    """:func:`request` of a command only some sessions serve (switch: an input hand-off;
    gpu: a live GPU): a session that does not know it is a :class:`HandoffError`
    saying what it lacks (``missing``) and how to get it (``fix``)."""
    try:
        return request(path, message, timeout=timeout)
    except ControlRequestError as exc:
        if exc.code is not ControlErrorCode.UNKNOWN_COMMAND:
            raise
        raise HandoffError(missing, fix=fix) from exc


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


def session_name(argument: str) -> str:
    """The session a light command means: a bare name, or the name inside a profile file."""
    from handoff.cli.profile_lookup import is_path_argument

    if is_path_argument(argument):
        from handoff.profile import load_profile

        return load_profile(Path(argument)).name
    return argument


def control_socket(name: str) -> Path:
    """The control socket of the session ``name``: under this user's own run root first,
    else a root session's socket for this user (:mod:`handoff.control.find`)."""
    import os

    from handoff.base.host import HostPaths
    from handoff.control.find import locate, system_run_root

    return locate(name, HostPaths.from_environment().run, system_run_root(os.environ),
                  os.geteuid())
