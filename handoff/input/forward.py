"""The ``qmp`` backend that feeds QEMU (devices are read by :mod:`handoff.input.edge`).

The ``qmp`` backend turns each forwarded frame into one ``input-send-event``
batch (:mod:`handoff.input.translate`) and sends the batches in order. QEMU
processes one monitor request at a time and queues at most 8, so a mouse at
1-8 kHz outruns it as soon as a round trip costs more than the report
interval. Therefore:

* at most :data:`handoff.qemu.wire.IN_FLIGHT` (2, measured; QEMU's own
  queue holds 8) requests are outstanding;
* while they are, batches wait in a :class:`BatchQueue`, where a batch that
  is only relative motion is merged into the waiting tail batch (its x/y
  added): total motion in = total motion out, only its granularity changes;
* keys and buttons are never merged, dropped or reordered.

Transports: :class:`QmpSocketTransport` speaks raw QMP
(:mod:`handoff.qemu.wire`: framing, greeting, ``qmp_capabilities``) on a monitor of its
own (``-chardev socket,...,path=<run dir>/input.qmp -mon ...,mode=control``,
added by the input resource), writing pre-encoded requests and counting
replies; that is what makes pipelining possible with a strict order.
:class:`ExecuteTransport` uses any ``execute(command, arguments)`` (the
session's :class:`handoff.qemu.qmp.QmpConnection`) one request at a time:
correct and ordered, coalescing more under load.

Nothing here logs event contents: error replies are logged by class only
(QEMU's description can quote a key name).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import trio

from handoff.base.errors import InputError
from handoff.input.keymap import LINUX_TO_QCODE
from handoff.input.translate import Event, FrameTranslator, InputEvent, is_motion_only
from handoff.qemu.wire import (
    CONNECT_TIMEOUT,
    IN_FLIGHT,
    QEMU_REQUEST_QUEUE,
    Message,
    QmpCommandError,
    QmpDisconnectedError,
    QmpWire,
    connect_timeout_error,
    encode_command,
    open_unix,
    reply_value,
)

log = logging.getLogger(__name__)



class BatchQueue:
    """Batches waiting for a free request slot; coalesces motion-only batches.

    ``put`` never blocks (the evdev reader must keep draining the kernel
    buffer, or the kernel drops events with SYN_DROPPED); ``get`` waits.
    """

    def __init__(self) -> None:
        self._batches: deque[list[InputEvent]] = deque()
        self._tail_motion: dict[str, InputEvent] | None = None
        self._ready = trio.Event()
        self._empty = trio.Event()
        self.merged = 0  #: batches folded into a waiting one (for benchmarks)

    def __len__(self) -> int:
        return len(self._batches)

    def put(self, batch: list[InputEvent]) -> None:
        """Queue one batch (fresh objects: the queue may change its motion values)."""
        if not batch:
            return
        if self._batches and self._tail_motion is not None and is_motion_only(batch):
            for event in batch:
                axis = event["data"]["axis"]
                existing = self._tail_motion.get(axis)
                if existing is None:
                    self._batches[-1].append(event)
                    self._tail_motion[axis] = event
                else:
                    existing["data"]["value"] += event["data"]["value"]
            self.merged += 1
            return
        self._batches.append(batch)
        self._tail_motion = {e["data"]["axis"]: e for e in batch if e["type"] == "rel"}
        self._ready.set()

    def get_nowait(self) -> list[InputEvent] | None:
        if not self._batches:
            return None
        batch = self._batches.popleft()
        if not self._batches:
            self._tail_motion = None
            self._ready = trio.Event()
            self._empty.set()
        return batch

    async def wait_empty(self) -> None:
        while self._batches:
            self._empty = trio.Event()
            await self._empty.wait()

    async def get(self) -> list[InputEvent]:
        while True:
            batch = self.get_nowait()
            if batch is not None:
                return batch
            await self._ready.wait()


class _Idle:
    """Counts batches taken from the queue and not yet answered; ``wait`` for zero."""

    def __init__(self) -> None:
        self.outstanding = 0
        self._zero = trio.Event()
        self._zero.set()

    def take(self) -> None:
        self.outstanding += 1
        if self._zero.is_set():
            self._zero = trio.Event()

    def done(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self._zero.set()

    async def wait(self) -> None:
        await self._zero.wait()


class Executor(Protocol):
    async def execute(
        self, command: str, arguments: Mapping[str, object] | None = None
    ) -> object: ...


class ExecuteTransport:
    """Sends batches through ``execute`` one at a time (strict order, 1 in flight).

    qemu.qmp logs every message it sends at DEBUG, input-send-event included,
    which would put typed keys in a debug log. So while this transport is in
    use the ``qemu.qmp`` loggers are held at INFO or above. The supervisor
    uses :class:`QmpSocketTransport`; this one serves tests and benchmarks.
    """

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self.sent = 0
        self.idle = _Idle()

    async def run(self, queue: BatchQueue) -> None:
        qmp_log = logging.getLogger("qemu.qmp")
        if qmp_log.getEffectiveLevel() < logging.INFO:
            qmp_log.setLevel(logging.INFO)
        while True:
            batch = await queue.get()
            self.idle.take()
            try:
                await self._executor.execute("input-send-event", {"events": batch})
            except InputError:
                raise
            except Exception as exc:  # a refused batch must not stop forwarding
                log.warning("QEMU refused an input batch (%s)", type(exc).__name__)
            finally:
                self.idle.done()
            self.sent += 1


class QmpSocketTransport:
    """Raw, pipelined QMP on a monitor reserved for input (:mod:`handoff.qemu.wire`).

    Requests carry no ``id``: QEMU answers a monitor's requests in order, so
    the n-th reply belongs to the n-th request, and a slot is freed per reply.
    When QEMU hangs up, :meth:`run` returns: the session reports QEMU's end.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        max_in_flight: int = IN_FLIGHT,
        where: str = "QEMU's input monitor",
    ) -> None:
        if not 1 <= max_in_flight <= QEMU_REQUEST_QUEUE:
            raise ValueError(f"max_in_flight must be 1..{QEMU_REQUEST_QUEUE}")
        self._stream = stream
        self._wire = QmpWire(stream, where)
        self._slots = trio.Semaphore(max_in_flight)
        self.sent = 0
        self.replies = 0
        self.errors = 0
        self.idle = _Idle()

    @classmethod
    async def connect(
        cls, path: Path, deadline: float = CONNECT_TIMEOUT, max_in_flight: int = IN_FLIGHT
    ) -> QmpSocketTransport:
        """Connect to ``path``, read the greeting, negotiate capabilities.

        QEMU creates the socket while it starts, so the connection is retried;
        all of it within ``deadline`` seconds. Raises
        :class:`~handoff.qemu.wire.QmpDisconnectedError` if QEMU hangs up
        (exits) meanwhile, :class:`~handoff.base.errors.QmpError` otherwise.
        """
        where = f"QEMU's input monitor {path}"
        stream: trio.SocketStream | None = None
        try:
            with trio.move_on_after(deadline):
                stream = await open_unix(path)
                transport = cls(stream, max_in_flight, where)
                await transport._wire.negotiate()
                return transport
        except BaseException:
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
            raise
        if stream is not None:
            await stream.aclose()
        raise connect_timeout_error(where, deadline)

    async def _read_reply(self) -> Message:
        return await self._wire.receive_reply()

    async def run(self, queue: BatchQueue) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_replies, nursery.cancel_scope)
            try:
                while True:
                    batch = await queue.get()
                    self.idle.take()
                    await self._slots.acquire()
                    # Motion that arrived while waiting for the slot is in the queue,
                    # merged; it follows in the next request.
                    await self._wire.send(encode_command("input-send-event", {"events": batch}))
                    self.sent += 1
            except QmpDisconnectedError:
                self._hung_up(nursery.cancel_scope)

    async def _receive_replies(self, forwarding: trio.CancelScope) -> None:
        while True:
            try:
                reply = await self._read_reply()
            except QmpDisconnectedError:
                self._hung_up(forwarding)
                return
            self.replies += 1
            try:
                reply_value("input-send-event", reply)
            except QmpCommandError as exc:  # the description may quote a key: not logged
                self.errors += 1
                log.warning("QEMU refused an input batch (%s)", exc.error_class)
            self._slots.release()
            self.idle.done()

    def _hung_up(self, forwarding: trio.CancelScope) -> None:
        """QEMU closed the monitor (it is exiting): stop; the session reports the end."""
        if not forwarding.cancel_called:
            log.info("QEMU closed the input monitor: input forwarding stops")
        forwarding.cancel()

    async def aclose(self) -> None:
        await self._stream.aclose()


class Transport(Protocol):
    @property
    def idle(self) -> _Idle: ...

    async def run(self, queue: BatchQueue) -> None: ...


class QmpBackend:
    """The ``qmp`` backend: a guest sink that queues translated frames for a transport."""

    def __init__(self, keymap: Mapping[int, str] = LINUX_TO_QCODE) -> None:
        self.translator = FrameTranslator(keymap)
        self.queue = BatchQueue()
        self.frames = 0

    def submit(self, device: str, events: Sequence[Event]) -> None:
        self.frames += 1
        self.queue.put(self.translator.translate(device, events))

    def forget(self, device: str) -> None:
        self.translator.forget(device)

    async def run(self, transport: Transport) -> None:
        await transport.run(self.queue)

    async def wait_idle(self, transport: Transport) -> None:
        """Return once every submitted frame has been answered by QEMU."""
        while len(self.queue) or transport.idle.outstanding:
            if len(self.queue):
                await self.queue.wait_empty()
            else:
                await transport.idle.wait()
