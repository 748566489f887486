"""Who owns the keyboard and mouse: the host or the guest. Pure core.

:class:`RouterCore` is a state machine fed with what the devices report
(frames, resyncs, plug/unplug, grab results) and with switch requests; it
answers with :data:`Action` values (forward these events to the guest, grab
or ungrab this device, the mode changed). It does no I/O, so every rule
below is tested directly, including with random interleavings.

Rules (QEMU's input-linux is the model):

* Bookkeeping per device: ``held`` is what the kernel says is down on that
  device (from our own reading of its events, resynced from EVIOCGKEY after a
  SYN_DROPPED). ``guest_down`` is what the guest believes is down, per code,
  with the set of devices holding it, so two keyboards pressing Shift give
  the guest one press and one release, never a release while one still holds
  it. The guest only ever gets a release for a press it saw.
* A device's events reach the guest only while that device is grabbed; an
  ungrabbed device is seen by the host directly, forwarding it too would
  type twice.
* Switching to the guest waits until no key or button is held on *any*
  device, then grabs. Otherwise the host has seen a press whose release it
  will never see (a stuck key on the host). The edge also checks EVIOCGKEY
  right after EVIOCGRAB and reports :meth:`RouterCore.grab_refused` when a
  key went down in between; the device is then released and retried when
  its keys are up.
* Switching to the host releases, in the guest, every key and button the
  guest still sees pressed, then ungrabs. The host then only sees releases
  for keys it never saw pressed, which input stacks ignore.
* The hotkey chord (default both Ctrls) toggles like input-linux: completing
  the chord *requests* the switch, which happens when every key is up. The
  chord is never forwarded as a chord: in guest mode the key that completes
  it is swallowed and the other chord keys the guest saw go down are
  released right away, so the guest never holds the whole chord (it sees,
  at most, a tap of the first Ctrl, which is unavoidable without delaying
  every Ctrl press). A one-key chord (ScrollLock) never reaches the guest
  at all. Keys of a completed chord stay swallowed until released. In host
  mode nothing is grabbed, so the host sees the chord itself; it also sees
  every release, because the grab waits for them.
* Control requests: ``guest`` waits for released keys like the hotkey;
  ``host`` is immediate (release in guest, ungrab); ``toggle`` cancels a
  pending switch, else switches to the other side.
* Autorepeat (value 2) is never forwarded; the guest repeats by itself.
* Unplug releases, in the guest, what that device held. A device plugged in
  while in guest mode is grabbed once it has no keys held.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from handoff.input.forward import read_events
from handoff.input.translate import EV_KEY, EV_REL, EV_SYN, SYN_DROPPED, SYN_REPORT, Event
from handoff.profile import InputMode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToGuest:
    """Events (one frame) the guest must see, as evdev (type, code, value)."""

    device: str
    events: tuple[Event, ...]


@dataclass(frozen=True)
class Grab:
    device: str


@dataclass(frozen=True)
class Ungrab:
    device: str


@dataclass(frozen=True)
class ModeChanged:
    mode: InputMode


Action = ToGuest | Grab | Ungrab | ModeChanged


def _other(mode: InputMode) -> InputMode:
    return InputMode.GUEST if mode is InputMode.HOST else InputMode.HOST


class RouterCore:
    """The host ⇄ guest state machine (see the module docstring for the rules)."""

    def __init__(self, hotkey: Iterable[int], start: InputMode = InputMode.HOST) -> None:
        self.hotkey = frozenset(hotkey)
        if not self.hotkey:
            raise ValueError("the hotkey chord needs at least one key")
        self.mode = InputMode.HOST
        self.pending: InputMode | None = InputMode.GUEST if start is InputMode.GUEST else None
        self.held: dict[str, set[int]] = {}
        self.grabbed: set[str] = set()
        self.guest_down: dict[int, set[str]] = {}
        self.suppressed: set[tuple[str, int]] = set()

    # ------------------------------------------------------------------ queries

    def any_held(self) -> bool:
        return any(self.held.values())

    def _chord_held(self) -> bool:
        return all(any(k in keys for keys in self.held.values()) for k in self.hotkey)

    # ------------------------------------------------------------------ inputs

    def add_device(self, device: str, held: Iterable[int] = ()) -> list[Action]:
        """A device appeared; ``held`` is its EVIOCGKEY state when opened."""
        self.held[device] = set(held)
        return self._settle()

    def remove_device(self, device: str) -> list[Action]:
        """A device is gone (unplugged, ENODEV): the guest lets go of its keys."""
        actions = self._release_in_guest(device)
        self.held.pop(device, None)
        self.grabbed.discard(device)
        self.suppressed = {(d, c) for d, c in self.suppressed if d != device}
        return actions + self._settle()

    def frame(self, device: str, events: Sequence[Event]) -> list[Action]:
        """One frame (the events before a SYN_REPORT) read from ``device``."""
        grabbed = device in self.grabbed
        if all(event[0] == EV_REL for event in events):
            # Motion only (most frames of a fast mouse): no key state changes,
            # so nothing to settle.
            return [ToGuest(device, tuple(events))] if grabbed and events else []
        held = self.held.setdefault(device, set())
        out: list[Event] = []
        for event in events:
            etype, code, value = event
            if etype == EV_KEY:
                if value == 1:
                    newly = code not in held
                    held.add(code)
                    if newly and code in self.hotkey and self._chord_held():
                        out.extend(self._chord_completed())
                        continue
                    if (device, code) in self.suppressed or not grabbed:
                        continue
                    holders = self.guest_down.get(code)
                    if holders is None:
                        self.guest_down[code] = {device}
                        out.append((EV_KEY, code, 1))
                    else:
                        holders.add(device)
                elif value == 0:
                    held.discard(code)
                    if (device, code) in self.suppressed:
                        self.suppressed.discard((device, code))
                        continue
                    out.extend(self._guest_release(device, code))
            elif etype == EV_REL and grabbed:
                out.append(event)
        actions: list[Action] = [ToGuest(device, tuple(out))] if out else []
        return actions + self._settle()

    def resync(self, device: str, held: Iterable[int]) -> list[Action]:
        """After SYN_DROPPED: the kernel's key state (EVIOCGKEY) replaces ours.

        Keys released during the gap are released in the guest; keys pressed
        during the gap are recorded as held (so switching waits for them) but
        not pressed in the guest, whose press would arrive late and out of
        order; their release is then not forwarded either.
        """
        now = set(held)
        before = self.held.setdefault(device, set())
        out: list[Event] = []
        for code in sorted(before - now):
            self.suppressed.discard((device, code))
            out.extend(self._guest_release(device, code))
        self.held[device] = now
        actions: list[Action] = [ToGuest(device, tuple(out))] if out else []
        return actions + self._settle()

    def grab_refused(self, device: str, held: Iterable[int]) -> list[Action]:
        """The edge grabbed, found keys down (EVIOCGKEY) and let go again."""
        self.grabbed.discard(device)
        return self.resync(device, held)

    def request(self, target: str) -> list[Action]:
        """A switch asked for over the control socket: ``host``, ``guest`` or ``toggle``."""
        if target == "toggle":
            if self.pending is not None:
                self.pending = None
                return []
            target = _other(self.mode).value
        if target == InputMode.HOST.value:
            self.pending = None
            return self._to_host() if self.mode is InputMode.GUEST else []
        if target == InputMode.GUEST.value:
            if self.mode is InputMode.HOST:
                self.pending = InputMode.GUEST
            return self._settle()
        raise ValueError(f"unknown switch target {target!r}")

    def shutdown(self) -> list[Action]:
        """The session ends: the guest lets go of everything, every grab is released."""
        self.pending = None
        if self.mode is InputMode.GUEST or self.grabbed:
            return self._to_host()
        return []

    # ------------------------------------------------------------------ internals

    def _chord_completed(self) -> list[Event]:
        """Request the other side; release the chord keys the guest has seen."""
        self.pending = _other(self.mode)
        out: list[Event] = []
        for device, keys in self.held.items():
            for code in keys & self.hotkey:
                self.suppressed.add((device, code))
        for code in sorted(self.hotkey):
            if self.guest_down.pop(code, None):
                out.append((EV_KEY, code, 0))
        return out

    def _guest_release(self, device: str, code: int) -> list[Event]:
        holders = self.guest_down.get(code)
        if holders is None or device not in holders:
            return []
        holders.discard(device)
        if holders:
            return []
        del self.guest_down[code]
        return [(EV_KEY, code, 0)]

    def _release_in_guest(self, device: str) -> list[Action]:
        out: list[Event] = []
        for code in sorted(self.guest_down):
            out.extend(self._guest_release(device, code))
        return [ToGuest(device, tuple(out))] if out else []

    def _to_host(self) -> list[Action]:
        actions: list[Action] = []
        for device in sorted({d for holders in self.guest_down.values() for d in holders}):
            actions.extend(self._release_in_guest(device))
        self.guest_down.clear()
        actions.extend(Ungrab(d) for d in sorted(self.grabbed))
        self.grabbed.clear()
        if self.mode is not InputMode.HOST:
            self.mode = InputMode.HOST
            actions.append(ModeChanged(InputMode.HOST))
        return actions

    def _settle(self) -> list[Action]:
        if self.pending is None and (
            self.mode is InputMode.HOST or len(self.grabbed) == len(self.held)
        ):
            return []
        actions: list[Action] = []
        if self.pending is not None and not self.any_held():
            target, self.pending = self.pending, None
            if target is InputMode.GUEST and self.mode is InputMode.HOST:
                self.mode = InputMode.GUEST
                actions.append(ModeChanged(InputMode.GUEST))
            elif target is InputMode.HOST and self.mode is InputMode.GUEST:
                actions.extend(self._to_host())
        if self.mode is InputMode.GUEST:
            for device in sorted(self.held):
                if device not in self.grabbed and not self.held[device]:
                    self.grabbed.add(device)
                    actions.append(Grab(device))
        return actions


@dataclass(frozen=True)
class Resync:
    """The assembler lost events (SYN_DROPPED): resync key state from EVIOCGKEY."""


class FrameAssembler:
    """Cuts one device's event stream into frames; handles SYN_DROPPED.

    After SYN_DROPPED the kernel's buffer overflowed: every event up to and
    including the next SYN_REPORT is discarded (the evdev protocol's rule),
    then the owner resyncs key state with EVIOCGKEY.
    """

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._dropping = False

    def feed(self, event: Event) -> list[Event] | Resync | None:
        etype, code, _ = event
        if etype == EV_SYN:
            if code == SYN_DROPPED:
                self._events.clear()
                self._dropping = True
                return None
            if code == SYN_REPORT:
                if self._dropping:
                    self._dropping = False
                    return Resync()
                frame, self._events = self._events, []
                return frame
            return None
        if not self._dropping:
            self._events.append(event)
        return None


# --------------------------------------------------------------------------- trio edge


class GuestSink(Protocol):
    """Where forwarded frames go: the qmp backend's queue or the virtio proxies."""

    def submit(self, device: str, events: Sequence[Event]) -> None:
        """Take one frame; must not block (the readers must keep draining)."""
        ...

    def forget(self, device: str) -> None:
        """The device is gone; drop per-device state (scroll remainders)."""
        ...


class DeviceHandle(Protocol):
    """What the edge needs of an open :class:`evdev.InputDevice`."""

    @property
    def fd(self) -> int: ...

    @property
    def name(self) -> str: ...

    def read(self) -> Any: ...

    def grab(self) -> None: ...

    def ungrab(self) -> None: ...

    def active_keys(self) -> list[int]: ...

    def close(self) -> None: ...


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
    ) -> None:
        self.core = core
        self.sink = sink
        self._on_mode = on_mode
        self.devices: dict[str, DeviceHandle] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._drains: dict[str, Callable[[], None]] = {}
        #: SYN_DROPPED seen (the kernel's buffer overflowed: events were lost).
        self.dropped = 0

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
                self._apply(self.core.add_device(identity, handle.active_keys()))
                assembler = FrameAssembler()

                def deliver(events: list[tuple[int, int, int, float]]) -> None:
                    for etype, code, value, _ in events:
                        result = assembler.feed((etype, code, value))
                        if result is None:
                            continue
                        if isinstance(result, Resync):
                            self.dropped += 1
                            actions = self.core.resync(identity, handle.active_keys())
                        else:
                            actions = self.core.frame(identity, result)
                        if actions:
                            self._apply(actions)

                def drain() -> None:
                    """Route what the kernel still queues for us (EVIOCGKEY would flush it)."""
                    while True:
                        try:
                            events = [(e.type, e.code, e.value, 0.0) for e in handle.read()]
                        except BlockingIOError:
                            return
                        deliver(events)

                self._drains[identity] = drain
                await read_events(handle, deliver)
                log.info("input device %s is gone", handle.name)
        finally:
            if self._scopes.get(identity) is scope:
                self._forget(identity)
            with contextlib.suppress(OSError):
                handle.close()

    def _forget(self, identity: str) -> None:
        self._scopes.pop(identity, None)
        self._drains.pop(identity, None)
        self.devices.pop(identity, None)
        self._apply(self.core.remove_device(identity))
        self.sink.forget(identity)

    def request(self, target: str) -> None:
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
