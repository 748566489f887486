"""Talking to the QEMU guest agent through the socket QEMU listens on. An edge.

Each request opens the socket (QEMU serves one client at a time), resyncs
with ``guest-sync-delimited`` and a random id (:mod:`.agent_protocol`), asks,
and closes. Every exchange is bounded by :data:`AGENT_TIMEOUT`: a guest
without an agent, or one still booting, simply does not answer, and the
caller moves on (the shutdown ladder to ACPI, ``handoff status`` to "does
not answer").
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from handoff.base.errors import GuestAgentError
from handoff.qemu.agent_protocol import (
    AgentCommand,
    LineBuffer,
    OsInfo,
    encode,
    is_sync_answer,
    parse_osinfo,
    parse_return,
    sync_request,
)

__all__ = ["AGENT_TIMEOUT", "GuestAgent"]

log = logging.getLogger(__name__)

#: Seconds one exchange with the agent may take (connect, sync, one command).
AGENT_TIMEOUT = 5.0


class _Exchange:
    """One connection to the agent, synced."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = LineBuffer()
        self.pending: list[Any] = []

    async def _next(self) -> Any:
        while not self.pending:
            data = await self.stream.receive_some(65536)
            if not data:
                raise GuestAgentError(
                    "the guest agent's socket closed during a request",
                    fix="QEMU is probably exiting; try again while the VM runs",
                )
            self.pending.extend(self.buffer.feed(data))
        return self.pending.pop(0)

    async def sync(self) -> None:
        sync_id = random.randrange(1, 2**31)  # noqa: S311 (a resync id, not a secret)
        await self.stream.send_all(sync_request(sync_id))
        while not is_sync_answer(await self._next(), sync_id):
            pass  # an earlier client's late answer

    async def call(
        self, command: AgentCommand, arguments: Mapping[str, object] | None = None
    ) -> object:
        await self.stream.send_all(encode(command, arguments))
        return parse_return(await self._next(), command)

    async def send(
        self, command: AgentCommand, arguments: Mapping[str, object] | None = None
    ) -> None:
        """A command that answers nothing on success (guest-shutdown)."""
        await self.stream.send_all(encode(command, arguments))


class GuestAgent:
    """The guest agent of one running VM, reached through ``socket``."""

    def __init__(self, socket: Path, *, timeout: float = AGENT_TIMEOUT) -> None:
        self.socket = socket
        self.timeout = timeout

    async def _open(self) -> _Exchange:
        try:
            stream = await trio.open_unix_socket(str(self.socket))
        except OSError as exc:
            raise GuestAgentError(
                f"cannot connect to the guest agent's socket {self.socket}: {exc.strerror}",
                fix="the VM must be running with [guest_agent] enabled = true",
            ) from None
        exchange = _Exchange(stream)
        try:
            await exchange.sync()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return exchange

    async def _ask(self, command: AgentCommand) -> object:
        with trio.fail_after(self.timeout):
            exchange = await self._open()
            async with exchange.stream:
                return await exchange.call(command)

    async def ping(self) -> bool:
        """Whether the agent answers guest-ping within the bound."""
        try:
            await self._ask(AgentCommand.PING)
        except (GuestAgentError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            log.debug("guest-ping: %s", exc)
            return False
        return True

    async def osinfo(self) -> OsInfo:
        """guest-get-osinfo; raises GuestAgentError or trio.TooSlowError."""
        return parse_osinfo(await self._ask(AgentCommand.GET_OSINFO))

    async def request_shutdown(self) -> bool:
        """guest-shutdown (powerdown) if the agent answers guest-ping in time; True if sent.

        The agent answers nothing on success: the guest powers off and QEMU exits.
        """
        try:
            with trio.fail_after(self.timeout):
                exchange = await self._open()
                async with exchange.stream:
                    await exchange.call(AgentCommand.PING)
                    await exchange.send(AgentCommand.SHUTDOWN, {"mode": "powerdown"})
        except (GuestAgentError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            log.debug("guest-shutdown: %s", exc)
            return False
        return True

    async def status(self) -> dict[str, object]:
        """For ``handoff status``: whether it answers, and the guest's OS."""
        try:
            info = await self.osinfo()
        except (GuestAgentError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            reason = exc.message if isinstance(exc, GuestAgentError) else (
                f"no answer within {self.timeout:g} s" if isinstance(exc, trio.TooSlowError)
                else str(exc)
            )
            return {"answers": False, "reason": reason}
        return {
            "answers": True, "os": info.describe(), "name": info.name, "version": info.version,
            "kernel": info.kernel_release,
        }
