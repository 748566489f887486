"""The QEMU guest agent's wire protocol, as pure functions (no socket, no clock).

The agent speaks QMP-like JSON, one object per line, without QMP's greeting
or capabilities negotiation. A connection can start in the middle of a
previous client's exchange, so every session begins with
``guest-sync-delimited``: the request is preceded by a 0xFF byte (the agent
drops any partial JSON it was reading), and the answer is preceded by a 0xFF
byte the client scans for; the answer echoes the client's random id, and
anything before it (a late answer to an earlier client) is skipped.

handoff sends only these commands: guest-sync-delimited, guest-ping,
guest-get-osinfo and guest-shutdown (no file or exec commands, ever).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handoff.base.errors import GuestAgentError

__all__ = [
    "SENTINEL",
    "AgentCommand",
    "LineBuffer",
    "OsInfo",
    "encode",
    "parse_osinfo",
    "parse_return",
    "sync_request",
]

#: The byte before guest-sync-delimited's request and its answer.
SENTINEL = b"\xff"


class AgentCommand(enum.Enum):
    """Every command handoff sends to a guest agent."""

    SYNC_DELIMITED = "guest-sync-delimited"
    PING = "guest-ping"
    GET_OSINFO = "guest-get-osinfo"
    SHUTDOWN = "guest-shutdown"


def encode(command: AgentCommand, arguments: Mapping[str, object] | None = None) -> bytes:
    """One request line."""
    message: dict[str, object] = {"execute": command.value}
    if arguments is not None:
        message["arguments"] = dict(arguments)
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def sync_request(sync_id: int) -> bytes:
    """0xFF, then guest-sync-delimited with ``sync_id`` (the agent flushes its parser)."""
    return SENTINEL + encode(AgentCommand.SYNC_DELIMITED, {"id": sync_id})


class LineBuffer:
    """Bytes in, JSON objects out; before the sync answer, everything up to the 0xFF.

    ``synced`` becomes True once the sentinel has been seen (feed it with
    ``wait_sentinel=True`` right after a sync request).
    """

    def __init__(self, *, wait_sentinel: bool = True) -> None:
        self._buffer = b""
        self.synced = not wait_sentinel

    def feed(self, data: bytes) -> list[Any]:
        """The complete messages ``data`` finishes; raises GuestAgentError for bad JSON."""
        self._buffer += data
        if not self.synced:
            index = self._buffer.rfind(SENTINEL)
            if index < 0:
                self._buffer = b""
                return []
            self._buffer = self._buffer[index + 1 :]
            self.synced = True
        messages: list[Any] = []
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            line = line.strip()
            if not line:
                continue
            try:
                messages.append(json.loads(line))
            except ValueError:
                raise GuestAgentError(
                    f"the guest agent answered with something that is not JSON: {line[:80]!r}",
                    fix="check that the guest runs the QEMU guest agent on "
                    "org.qemu.guest_agent.0 and nothing else",
                ) from None
        return messages


def parse_return(message: object, command: AgentCommand) -> object:
    """The ``return`` value of an answer; GuestAgentError for an ``error`` answer."""
    if isinstance(message, dict):
        if "return" in message:
            return message["return"]
        error = message.get("error")
        if isinstance(error, dict):
            raise GuestAgentError(
                f"the guest agent refused {command.value}: {error.get('desc', error)}",
                fix="update the guest agent in the guest (qemu-guest-agent, virtio-win)",
            )
    raise GuestAgentError(
        f"the guest agent answered {command.value} with {json.dumps(message)[:80]}",
        fix="check that the guest runs the QEMU guest agent on org.qemu.guest_agent.0",
    )


def is_sync_answer(message: object, sync_id: int) -> bool:
    """Whether ``message`` is the answer to this sync (earlier clients' answers are not)."""
    return isinstance(message, dict) and message.get("return") == sync_id


@dataclass(frozen=True)
class OsInfo:
    """What guest-get-osinfo says of the guest's OS (every field optional in the schema)."""

    name: str | None = None
    pretty_name: str | None = None
    version: str | None = None
    kernel_release: str | None = None

    def describe(self) -> str:
        """One phrase: "Debian GNU/Linux 12 (bookworm)", "Microsoft Windows 11"."""
        if self.pretty_name:
            return self.pretty_name
        words = [w for w in (self.name, self.version) if w]
        if words:
            return " ".join(words)
        return f"kernel {self.kernel_release}" if self.kernel_release else "unknown OS"


def parse_osinfo(value: object) -> OsInfo:
    """guest-get-osinfo's ``return`` object → :class:`OsInfo` (unknown keys ignored)."""
    if not isinstance(value, dict):
        raise GuestAgentError(
            f"guest-get-osinfo returned {json.dumps(value)[:80]}, not an object",
            fix="update the guest agent in the guest",
        )

    def text(key: str) -> str | None:
        item = value.get(key)
        return item if isinstance(item, str) and item else None

    return OsInfo(text("name"), text("pretty-name"), text("version"), text("kernel-release"))
