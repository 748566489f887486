"""QMP for a trio program: qemu.qmp on a private asyncio loop, seen as trio coroutines.

qemu.qmp is asyncio-only and the supervisor is trio. Rather than mixing the
two event loops (trio-asyncio patches asyncio's deprecated policy system and
does not import on newer Pythons), asyncio is confined to this module: one
:class:`qemu.qmp.QMPClient` lives on its own asyncio event loop in a
dedicated daemon thread, and the rest of handoff sees a
:class:`QmpConnection` with plain trio coroutines (:meth:`~QmpConnection.execute`,
:meth:`~QmpConnection.aclose`) and a trio receive channel of QMP events.

How the two loops talk:

* trio → asyncio: each call is submitted with
  :func:`asyncio.run_coroutine_threadsafe`; its completion wakes the trio
  task through a :class:`trio.lowlevel.TrioToken`. If the trio task is
  cancelled while waiting, the concurrent future is cancelled, which cancels
  the asyncio task (and qemu.qmp forgets the pending reply; QEMU's late
  answer is dropped by id, as the QMP spec says clients should).
* asyncio → trio: an asyncio task drains qemu.qmp's default event listener
  and hands every event to trio with ``TrioToken.run_sync_soon`` into an
  unbounded memory channel (QMP events are few: state changes, not input).
  The channel is closed when the QMP connection ends, so ``async for`` over
  :attr:`QmpConnection.events` finishes when QEMU hangs up.

Pipelining: :meth:`QmpConnection.execute` may be called concurrently from
several trio tasks (the supervisor, control commands). qemu.qmp tags every
request with its own id and routes each reply back to its caller, so
concurrent calls are safe. QEMU serves a monitor one request at a time and
queues at most 8 (then stops reading the socket); a :class:`trio.Semaphore`
of :data:`handoff.qemu.wire.IN_FLIGHT` keeps the rest waiting in trio,
fairly (FIFO) and cancellably, instead of in QEMU's queue.

The socket: QEMU's own python/qemu/machine/machine.py hands QEMU one end of
a socketpair (``-chardev socket,id=qmp,fd=N -mon chardev=qmp,mode=control``)
so no monitor path exists on disk; :func:`open_qmp` accepts that socket, or
a unix socket path in the 0700 run directory when a user wants one. On the
socketpair the greeting and ``qmp_capabilities`` are read and sent in trio,
straight on the socket, by :mod:`handoff.qemu.wire` (the one QMP framing
and handshake of handoff; it reads no byte past each line, so nothing meant
for qemu.qmp is consumed), and qemu.qmp takes over the negotiated socket:
QMP is ready as soon as QEMU can answer (bench/startup.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import socket
import threading
from collections.abc import AsyncIterator, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import trio
from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, QMPError
from qemu.qmp.protocol import Runstate, StateError

from handoff.base.errors import QmpError
from handoff.qemu.wire import (
    CONNECT_TIMEOUT,
    IN_FLIGHT,
    HandoverSocket,
    Message,
    QmpCommandError,
    QmpDisconnectedError,
    QmpWire,
    connect_timeout_error,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "IN_FLIGHT",
    "QmpCommandError",
    "QmpConnection",
    "QmpDisconnectedError",
    "QmpEvent",
    "connect_qmp",
    "open_qmp",
]

log = logging.getLogger(__name__)

#: Seconds closing the connection (disconnect, then the thread) may take.
CLOSE_TIMEOUT = 5.0

#: A QMP event as QEMU sends it: ``{"event": NAME, "data": {...}, "timestamp": {...}}``.
QmpEvent = dict[str, Any]

T = TypeVar("T")


class _AsyncioThread:
    """An asyncio event loop running forever in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # Cancel whatever is left and let it finish, then close the loop.
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def stop(self) -> None:
        """Stop the loop and wait (in a worker thread) for its thread to end."""
        if self.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            self.loop.call_soon_threadsafe(self.loop.stop)
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            await trio.to_thread.run_sync(self._thread.join, abandon_on_cancel=True)
        if scope.cancelled_caught:  # a daemon thread: abandoning it leaks, never hangs
            log.warning("the QMP thread did not stop within %g s; abandoning it", CLOSE_TIMEOUT)


async def _await_future(future: concurrent.futures.Future[T], token: trio.lowlevel.TrioToken) -> T:
    """Wait in trio for a future completed on the asyncio thread.

    Cancelling the trio task cancels the future (and so the asyncio task).
    """
    done = trio.Event()

    def wake(_: concurrent.futures.Future[T]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        future.cancel()
        raise
    return future.result()


class QmpConnection:
    """A connected, negotiated QMP session, used from trio.

    Create it with :func:`open_qmp`. ``execute`` is safe to call from several
    trio tasks at once; ``events`` yields every QMP event in arrival order and
    ends when the connection ends.
    """

    def __init__(
        self,
        client: QMPClient,
        thread: _AsyncioThread,
        token: trio.lowlevel.TrioToken,
        events: trio.MemoryReceiveChannel[QmpEvent],
        pump: concurrent.futures.Future[None],
    ) -> None:
        self._client = client
        self._thread = thread
        self._token = token
        self._pump = pump
        self._slots = trio.Semaphore(IN_FLIGHT)
        self._closed = False
        #: Every QMP event, in order; closed when QEMU hangs up.
        self.events = events

    @property
    def connected(self) -> bool:
        """True while the QMP session is up (False once QEMU hung up or aclose ran)."""
        return not self._closed and self._client.runstate == Runstate.RUNNING

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return await _await_future(self._thread.submit(coro), self._token)

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        """Run one QMP command and return its ``return`` value.

        Raises :class:`QmpCommandError` when QEMU refuses the command and
        :class:`QmpDisconnectedError` when the connection is (or goes) away.
        """
        if self._closed:
            raise QmpDisconnectedError(
                f"QMP command {command!r} not sent: the connection is closed"
            )
        async with self._slots:
            try:
                return await self._call(self._client.execute(command, arguments))
            except ExecuteError as exc:
                raise QmpCommandError(command, exc.error_class, exc.error.error.desc) from exc
            except (ExecInterruptedError, StateError, EOFError, ConnectionError) as exc:
                raise QmpDisconnectedError(
                    f"QMP command {command!r} got no answer: QEMU closed the monitor connection"
                ) from exc
            except QMPError as exc:
                raise QmpError(f"QMP command {command!r} failed: {exc}") from exc

    async def aclose(self) -> None:
        """Disconnect (if still connected) and stop the asyncio thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            try:
                # Bounded: a wedged QEMU that reads nothing would keep the
                # writer's flush (and so the disconnect) waiting forever.
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self._call(_disconnect_quietly(self._client))
            finally:
                self._pump.cancel()
                await self._thread.stop()


async def _disconnect_quietly(client: QMPClient) -> None:
    """Disconnect; a peer that already hung up (EOF) is the normal end, not an error."""
    try:
        await client.disconnect()
    except (EOFError, OSError, QMPError) as exc:
        log.debug("QMP disconnect: %s", type(exc).__name__)


async def _pump_events(
    client: QMPClient,
    token: trio.lowlevel.TrioToken,
    send: trio.MemorySendChannel[QmpEvent],
) -> None:
    """(asyncio side) forward events to trio until the connection ends, then close."""

    def deliver(event: QmpEvent) -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            send.send_nowait(event)

    def close() -> None:
        send.close()

    async def forward() -> None:
        while True:
            message = await client.events.get()
            token.run_sync_soon(deliver, dict(message))

    async def until_disconnected() -> None:
        while client.runstate == Runstate.RUNNING:
            await client.runstate_changed()

    forwarder = asyncio.ensure_future(forward())
    try:
        await until_disconnected()
        # qemu.qmp queues every event before it notices the hang-up, so the
        # SHUTDOWN that preceded QEMU's exit is already queued: hand it over
        # before the channel closes.
        # Cancelling a Queue.get() never loses an item, so drain what is left.
        forwarder.cancel()
        while not client.events.empty():
            token.run_sync_soon(deliver, dict(await client.events.get()))
    finally:
        forwarder.cancel()
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(close)


def _close(address: socket.socket | Path) -> None:
    """Close the socket connect_qmp took ownership of (a path needs nothing)."""
    if isinstance(address, socket.socket):
        address.close()


async def _handshake(sock: socket.socket) -> Message:
    """Greeting and ``qmp_capabilities`` in trio, straight on the socket (handoff.qemu.wire).

    Done here rather than by qemu.qmp so QMP is ready one thread hop and a
    few asyncio layers sooner (bench/startup.py); qemu.qmp then takes over an
    already negotiated socket (``await_greeting``/``negotiate`` off).
    """
    return await QmpWire(HandoverSocket(sock), "QEMU's monitor").negotiate()


async def connect_qmp(
    address: socket.socket | Path,
    *,
    greeting_timeout: float = CONNECT_TIMEOUT,
    name: str = "handoff",
) -> QmpConnection:
    """Connect to QEMU's monitor, negotiate capabilities, return the connection.

    ``address`` is the supervisor's end of the socketpair QEMU inherited (this
    function takes ownership of it) or a unix socket path. Raises
    :class:`handoff.base.errors.QmpError` if QEMU does not greet within
    ``greeting_timeout`` seconds or hangs up first (QEMU exited: the caller
    then reports the exit code and log). The caller must ``aclose()`` the
    result; :func:`open_qmp` does that for you.
    """
    token = trio.lowlevel.current_trio_token()
    # The thread starts while QEMU is still booting: off the critical path.
    thread = _AsyncioThread(f"qmp-{name}")
    client = QMPClient(name)
    send, receive = trio.open_memory_channel[QmpEvent](math.inf)
    target: socket.socket | str
    try:
        with trio.move_on_after(greeting_timeout) as scope:
            if isinstance(address, socket.socket):
                await _handshake(address)
                client.await_greeting = False  # done above, in trio
                client.negotiate = False
                target = address
            else:
                target = str(address)
            await _await_future(thread.submit(client.connect(target)), token)
    except ConnectError as exc:
        _close(address)
        await thread.stop()
        raise QmpError(
            f"could not connect to QEMU's monitor: {exc.error_message}: {_cause(exc)}"
        ) from exc
    except (OSError, EOFError) as exc:  # any other way QEMU's hang-up can surface
        _close(address)
        await thread.stop()
        raise QmpDisconnectedError(
            f"could not connect to QEMU's monitor: {type(exc).__name__}: {exc} "
            "(QEMU probably exited)"
        ) from exc
    except BaseException:
        _close(address)
        with trio.CancelScope(shield=True):
            await thread.stop()
        raise
    if scope.cancelled_caught:
        _close(address)
        await thread.stop()
        raise connect_timeout_error("QEMU's monitor", greeting_timeout)
    pump = thread.submit(_pump_events(client, token, send))
    return QmpConnection(client, thread, token, receive, pump)


@contextlib.asynccontextmanager
async def open_qmp(
    address: socket.socket | Path,
    *,
    greeting_timeout: float = CONNECT_TIMEOUT,
    name: str = "handoff",
) -> AsyncIterator[QmpConnection]:
    """:func:`connect_qmp` as an async context manager that closes the connection."""
    connection = await connect_qmp(address, greeting_timeout=greeting_timeout, name=name)
    try:
        yield connection
    finally:
        await connection.aclose()


def _cause(exc: ConnectError) -> str:
    inner = exc.exc
    if isinstance(inner, EOFError):
        return "QEMU closed the connection (it probably exited)"
    return str(inner) or type(inner).__name__
