"""The router's edge: reads real evdev devices under trio and applies the pure core's actions.

:class:`InputRouter` feeds a :class:`~handoff.input.router.RouterCore` with
what each device reports and carries out its answers (grab, ungrab, hand a
frame to the guest sink). All decisions stay in the core; this module must
never decide who owns a key, and never log an event's contents.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import struct
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from handoff.control.protocol import Side
from handoff.input.codes import INPUT_EVENT
from handoff.input.router import (
    Action,
    EscapeChord,
    FrameAssembler,
    GpuToggle,
    Grab,
    Resync,
    RouterCore,
    ToGuest,
    ToHost,
    Ungrab,
)
from handoff.input.translate import Event
from handoff.profile import InputMode

log = logging.getLogger(__name__)

#: Events taken per read(2); evdev returns whole events only, as many as fit.
READ_EVENTS = 256

#: EVIOCSCLOCKID = _IOW('E', 0xa0, int) (linux/input.h): which clock stamps
#: this reader's events.
EVIOCSCLOCKID = 0x400445A0


class GuestSink(Protocol):
    """Where forwarded frames go: the qmp backend's queue or the virtio proxies."""

    def submit(self, device: str, events: Sequence[Event]) -> None:
        """Take one frame; must not block (the readers must keep draining)."""
        ...

    def forget(self, device: str) -> None:
        """The device is gone; drop per-device state (scroll remainders)."""
        ...


class DeviceHandle(Protocol):
    """What the edge needs of an open :class:`evdev.InputDevice` (fd non-blocking)."""

    @property
    def fd(self) -> int: ...

    @property
    def name(self) -> str: ...

    def grab(self) -> None: ...

    def ungrab(self) -> None: ...

    def active_keys(self) -> list[int]: ...

    def close(self) -> None: ...


def read_queued(fd: int, times: list[float] | None = None) -> list[Event] | None:
    """One read(2) of ``struct input_event`` records from an evdev fd, as (type, code, value).

    Reads the kernel's documented record layout (:data:`INPUT_EVENT`) into
    plain tuples: no per-event objects at thousands of events a second.
    None when the device is unplugged (ENODEV, or end of file); raises
    BlockingIOError when nothing is queued. ``times``, when given, is
    replaced by each event's kernel timestamp in seconds (the escape chord's
    clock).
    """
    try:
        data = os.read(fd, INPUT_EVENT.size * READ_EVENTS)
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return None
        raise
    if not data:
        return None
    if times is not None:
        records = list(INPUT_EVENT.iter_unpack(data))
        times[:] = [sec + usec / 1e6 for sec, usec, _, _, _ in records]
        return [(etype, code, value) for _, _, etype, code, value in records]
    return [(etype, code, value) for _, _, etype, code, value in INPUT_EVENT.iter_unpack(data)]


def use_monotonic_clock(fd: int) -> None:
    """Stamp this reader's events with CLOCK_MONOTONIC (:func:`time.monotonic`'s clock),
    so the escape chord's deadline compares them with "now". Per open file, so
    nobody else's events change; a fd that is not an evdev node is left alone."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, EVIOCSCLOCKID, struct.pack("i", time.CLOCK_MONOTONIC))


def interrupt_self() -> None:
    """What the escape chord does: SIGINT to this supervisor, i.e. the Ctrl-C ladder."""
    os.kill(os.getpid(), signal.SIGINT)


async def read_events(
    device: DeviceHandle, deliver: Callable[[list[Event]], None],
    times: list[float] | None = None,
) -> None:
    """Drain ``device`` until it is unplugged, handing each read's events to ``deliver``
    (their timestamps in ``times`` when given)."""
    while True:
        await trio.lowlevel.wait_readable(device.fd)
        try:
            events = read_queued(device.fd, times)
        except BlockingIOError:
            continue
        if events is None:
            return
        deliver(events)


class InputRouter:
    """Runs a :class:`RouterCore` against real devices and a guest sink.

    One reader task per device (:meth:`run_device`), all on the trio thread, so
    the core sees one totally ordered stream and needs no locks. Actions are
    applied synchronously: a frame is in the sink before the next read.
    Grabs are released by :meth:`close` (and by the kernel when a device's
    fd closes, which every reader does on the way out).
    """

    def __init__(
        self,
        core: RouterCore,
        sink: GuestSink,
        on_mode: Callable[[InputMode], None] | None = None,
        *,
        escape: EscapeChord | None = None,
        on_escape: Callable[[], None] = interrupt_self,
        on_gpu: Callable[[], None] | None = None,
        now: Callable[[], float] = time.monotonic,
        to_host: Callable[[Sequence[Event]], None] | None = None,
    ) -> None:
        self.core = core
        self.sink = sink
        self._on_mode = on_mode
        self.escape = escape
        self._on_escape = on_escape
        self._on_gpu = on_gpu  # the gpu chord; must not block (it starts a task)
        self._to_host = to_host  # the "handoff host keys" device's write
        self.devices: dict[str, DeviceHandle] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._drains: dict[str, Callable[[], None]] = {}
        #: SYN_DROPPED seen (the kernel's buffer overflowed: events were lost).
        self.dropped = 0
        #: The events' clock (CLOCK_MONOTONIC, set on every device read here).
        self._now = now
        self._escape_changed = trio.Event()

    async def run_device(self, identity: str, handle: DeviceHandle) -> None:
        """Route ``handle``'s events until it is unplugged or cancelled; then let go of it."""
        old = self._scopes.get(identity)
        if old is not None:  # re-plugged before the old node reported ENODEV
            old.cancel()
            self._forget(identity)
        scope = trio.CancelScope()
        self._scopes[identity] = scope
        self.devices[identity] = handle
        try:
            with scope:
                if self.escape is not None:
                    use_monotonic_clock(handle.fd)
                self._apply(self.core.add_device(identity, handle.active_keys()))
                times: list[float] | None = [] if self.escape is not None else None
                deliver = self._deliverer(identity, handle, times)

                def drain() -> None:
                    """Route what the kernel still queues for us (EVIOCGKEY would flush it)."""
                    while True:
                        try:
                            events = read_queued(handle.fd, times)
                        except BlockingIOError:
                            return
                        if events is None:
                            return
                        deliver(events)

                self._drains[identity] = drain
                await read_events(handle, deliver, times)
                log.info("input device %s is gone", handle.name)
        finally:
            if self._scopes.get(identity) is scope:
                self._forget(identity)
            with contextlib.suppress(OSError):
                handle.close()

    def _deliverer(
        self, identity: str, handle: DeviceHandle, times: list[float] | None = None
    ) -> Callable[[list[Event]], None]:
        """Cut ``identity``'s events into frames and feed them to the core (and each key
        event, with its timestamp, to the escape chord)."""
        assembler = FrameAssembler()
        escape = self.escape

        def deliver(events: list[Event]) -> None:
            before = escape.deadline() if escape is not None else None
            for index, event in enumerate(events):
                if escape is not None and times and escape.feed(identity, event, times[index]):
                    self._escape_fired()
                result = assembler.feed(event)
                if result is None:
                    continue
                if isinstance(result, Resync):
                    if escape is not None:
                        escape.forget(identity)
                    self.dropped += 1
                    actions = self.core.resync(identity, handle.active_keys())
                else:
                    actions = self.core.frame(identity, result)
                if actions:
                    self._apply(actions)
            if escape is not None and escape.deadline() != before:
                self._escape_changed.set()

        return deliver

    def _escape_fired(self) -> None:
        assert self.escape is not None
        log.warning("escape hotkey held %g s: stopping the VM", self.escape.hold)
        self._on_escape()

    async def run_escape(self) -> None:
        """The escape chord's deadline: fire ``hold`` seconds after the chord completed
        even when no further event comes (a keyboard that does not repeat). The
        core decides, from the events' timestamps and the clock read here."""
        escape = self.escape
        if escape is None:
            return
        while True:
            changed = self._escape_changed = trio.Event()
            deadline = escape.deadline()
            if deadline is None:
                await changed.wait()
                continue
            delay = deadline - self._now()
            if delay > 0:
                with trio.move_on_after(delay):
                    await changed.wait()
                continue
            if escape.tick(self._now()):
                self._escape_fired()
            else:  # the clocks disagree by a rounding: look again a moment later
                await trio.sleep(0.001)

    def _forget(self, identity: str) -> None:
        if self.escape is not None:
            self.escape.forget(identity)
            self._escape_changed.set()
        self._scopes.pop(identity, None)
        self._drains.pop(identity, None)
        self.devices.pop(identity, None)
        self._apply(self.core.remove_device(identity))
        self.sink.forget(identity)

    def request(self, target: Side) -> None:
        """A switch from the control socket.

        What the devices queued is routed first, then the kernel's key state
        (EVIOCGKEY) is read, so the wait for released keys sees a key pressed
        a moment ago. The order matters: EVIOCGKEY flushes the key events
        still queued for its reader, so without the drain keys typed just
        before the switch would never reach the guest.
        """
        for identity, handle in list(self.devices.items()):
            with contextlib.suppress(OSError):
                drain = self._drains.get(identity)
                if drain is not None:
                    drain()
                self._apply(self.core.resync(identity, handle.active_keys()))
        self._apply(self.core.request(target))

    def close(self) -> None:
        """Release everything: the guest lets go of its keys, every grab is dropped."""
        self._apply(self.core.shutdown())
        for handle in self.devices.values():
            with contextlib.suppress(OSError):
                handle.ungrab()

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ToGuest):
                self.sink.submit(action.device, action.events)
            elif isinstance(action, Grab):
                self._grab(action.device)
            elif isinstance(action, Ungrab):
                handle = self.devices.get(action.device)
                if handle is not None:
                    with contextlib.suppress(OSError):
                        handle.ungrab()
            elif isinstance(action, ToHost):
                if self._to_host is not None:
                    with contextlib.suppress(OSError):
                        self._to_host(action.events)
            elif isinstance(action, GpuToggle):
                log.info("gpu hotkey: moving the live GPU to the other side")
                if self._on_gpu is not None:
                    self._on_gpu()
            else:
                log.info("input now goes to the %s", action.mode.value)
                if self._on_mode is not None:
                    self._on_mode(action.mode)

    def _grab(self, identity: str) -> None:
        handle = self.devices.get(identity)
        if handle is None:
            return
        try:
            handle.grab()
        except OSError as exc:
            log.warning(
                "cannot grab input device %s (%s): another program holds it; "
                "it stays with the host",
                handle.name,
                exc.strerror,
            )
            scope = self._scopes.get(identity)
            if scope is not None:
                scope.cancel()
            self._forget(identity)
            return
        held = handle.active_keys()
        if held:  # a key went down between our last read and the grab
            with contextlib.suppress(OSError):
                handle.ungrab()
            self._apply(self.core.grab_refused(identity, held))
