"""Who owns the keyboard and mouse, host or guest: the pure core of the input hand-off.

:class:`RouterCore` is a state machine fed with what the devices report
(frames, resyncs, plug/unplug, grab results) and switch requests; it answers
with :data:`Action` values. :class:`FrameAssembler` cuts an event stream into
frames. Must never do I/O or import trio, evdev or an edge module (the edge
that runs it is :mod:`handoff.input.edge`). The rules are on
:class:`RouterCore`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from handoff.control.protocol import Side
from handoff.input.codes import EV_KEY, EV_REL, EV_SYN, SYN_DROPPED, SYN_REPORT
from handoff.input.translate import Event
from handoff.profile import InputMode


@dataclass(frozen=True)
class ToGuest:
    """Events (one frame) the guest must see, as evdev (type, code, value)."""

    device: str
    events: tuple[Event, ...]


@dataclass(frozen=True)
class ToHost:
    """Key events (one frame) for the "handoff host keys" device: ``[input] host_keys``
    typed while the guest has the keyboard."""

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


@dataclass(frozen=True)
class GpuToggle:
    """The gpu chord completed: move the live GPU groups to the other side."""


Action = ToGuest | ToHost | Grab | Ungrab | ModeChanged | GpuToggle


def _other(mode: InputMode) -> InputMode:
    return InputMode.GUEST if mode is InputMode.HOST else InputMode.HOST


class RouterCore:
    """The host ⇄ guest state machine (QEMU's input-linux is the model).

    * The guest gets a device's events only while it is grabbed, and only a
      release for a press it saw (per code, counted over devices).
    * A switch to the guest waits until no key is held on any device; a
      switch to the host first releases in the guest what it holds.
    * The hotkey chord requests the other side and never reaches the guest
      whole; autorepeat is never forwarded.
    * The gpu chord (``gpu_hotkey``) answers :class:`GpuToggle` and, like the
      hotkey, never reaches the guest whole; input stays where it is.
    * After SYN_DROPPED the kernel's key state replaces ours; unplug
      releases in the guest what the device held.
    * ``host_keys`` typed on a grabbed device go to the host's "handoff host
      keys" device (:class:`ToHost`: press, autorepeat, release), never to the
      guest; that device, too, only gets a release for a press it saw, and
      lets go of everything when input goes back to the host (the host then
      reads the real keyboard again).
    """

    def __init__(
        self, hotkey: Iterable[int], start: InputMode = InputMode.HOST,
        *, gpu_hotkey: Iterable[int] = (), host_keys: Iterable[int] = (),
    ) -> None:
        self.hotkey = frozenset(hotkey)
        if not self.hotkey:
            raise ValueError("the hotkey chord needs at least one key")
        self.gpu_hotkey = frozenset(gpu_hotkey)
        if self.gpu_hotkey == self.hotkey:
            raise ValueError("the gpu chord must differ from the hotkey")
        self.host_keys = frozenset(host_keys)
        if self.host_keys & (self.hotkey | self.gpu_hotkey):
            raise ValueError("a host key cannot be part of a chord")
        #: Host key → devices whose press the host-keys device saw (it holds it down).
        self.host_down: dict[int, set[str]] = {}
        self.mode = InputMode.HOST
        self.pending: InputMode | None = InputMode.GUEST if start is InputMode.GUEST else None
        self.held: dict[str, set[int]] = {}
        self.grabbed: set[str] = set()
        self.guest_down: dict[int, set[str]] = {}
        self.suppressed: set[tuple[str, int]] = set()

    # ------------------------------------------------------------------ queries

    def any_held(self) -> bool:
        return any(self.held.values())

    def _chord_held(self, chord: frozenset[int]) -> bool:
        return all(any(k in keys for keys in self.held.values()) for k in chord)

    # ------------------------------------------------------------------ inputs

    def add_device(self, device: str, held: Iterable[int] = ()) -> list[Action]:
        """A device appeared; ``held`` is its EVIOCGKEY state when opened."""
        self.held[device] = set(held)
        return self._settle()

    def remove_device(self, device: str) -> list[Action]:
        """A device is gone (unplugged, ENODEV): the guest lets go of its keys."""
        actions = self._release_in_guest(device) + self._release_on_host(device)
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
        host: list[Event] = []
        toggles: list[Action] = []
        for event in events:
            etype, code, value = event
            if etype == EV_KEY and code in self.host_keys:
                if value == 1:
                    held.add(code)
                elif value == 0:
                    held.discard(code)
                host.extend(self._host_key(device, code, value, grabbed))
            elif etype == EV_KEY:
                if value == 1:
                    newly = code not in held
                    held.add(code)
                    switch = newly and code in self.hotkey and self._chord_held(self.hotkey)
                    gpu = newly and code in self.gpu_hotkey and self._chord_held(self.gpu_hotkey)
                    if switch:
                        self.pending = _other(self.mode)
                        out.extend(self._swallow(self.hotkey))
                    if gpu:
                        toggles.append(GpuToggle())
                        out.extend(self._swallow(self.gpu_hotkey))
                    if switch or gpu:
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
        if host:
            actions.append(ToHost(tuple(host)))
        return actions + toggles + self._settle()

    def resync(self, device: str, held: Iterable[int]) -> list[Action]:
        """After SYN_DROPPED: the kernel's key state (EVIOCGKEY) replaces ours.

        Keys released during the gap are released in the guest; keys pressed
        during the gap are recorded as held (switching waits for them) but
        never pressed in the guest.
        """
        now = set(held)
        before = self.held.setdefault(device, set())
        out: list[Event] = []
        host: list[Event] = []
        for code in sorted(before - now):
            self.suppressed.discard((device, code))
            out.extend(self._guest_release(device, code))
            host.extend(self._host_release(device, code))
        self.held[device] = now
        actions: list[Action] = [ToGuest(device, tuple(out))] if out else []
        if host:
            actions.append(ToHost(tuple(host)))
        return actions + self._settle()

    def grab_refused(self, device: str, held: Iterable[int]) -> list[Action]:
        """The edge grabbed, found keys down (EVIOCGKEY) and let go again."""
        self.grabbed.discard(device)
        return self.resync(device, held)

    def request(self, target: Side) -> list[Action]:
        """A switch asked for over the control socket."""
        if target is Side.TOGGLE:
            if self.pending is not None:
                self.pending = None
                return []
            side = _other(self.mode)
        else:
            side = InputMode.HOST if target is Side.HOST else InputMode.GUEST
        if side is InputMode.HOST:
            self.pending = None
            return self._to_host() if self.mode is InputMode.GUEST else []
        if self.mode is InputMode.HOST:
            self.pending = InputMode.GUEST
        return self._settle()

    def shutdown(self) -> list[Action]:
        """The session ends: the guest lets go of everything, every grab is released."""
        self.pending = None
        if self.mode is InputMode.GUEST or self.grabbed:
            return self._to_host()
        return []

    # ------------------------------------------------------------------ internals

    def _swallow(self, chord: frozenset[int]) -> list[Event]:
        """A chord completed: its keys stay out of the guest until released; the guest
        lets go of those it has seen."""
        out: list[Event] = []
        for device, keys in self.held.items():
            for code in keys & chord:
                self.suppressed.add((device, code))
        for code in sorted(chord):
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

    def _host_key(self, device: str, code: int, value: int, grabbed: bool) -> list[Event]:
        """A host key on ``device``: to the host-keys device while the guest has it
        (a device not grabbed reaches the host by itself)."""
        if value == 0:
            return self._host_release(device, code)
        holders = self.host_down.get(code)
        if value == 1 and grabbed:
            if holders is None:
                self.host_down[code] = {device}
                return [(EV_KEY, code, 1)]
            holders.add(device)
            return []
        if value == 2 and holders is not None and device in holders:
            return [(EV_KEY, code, 2)]  # the keyboard's own autorepeat
        return []

    def _host_release(self, device: str, code: int) -> list[Event]:
        holders = self.host_down.get(code)
        if holders is None or device not in holders:
            return []
        holders.discard(device)
        if holders:
            return []
        del self.host_down[code]
        return [(EV_KEY, code, 0)]

    def _release_on_host(self, device: str) -> list[Action]:
        out: list[Event] = []
        for code in sorted(self.host_down):
            out.extend(self._host_release(device, code))
        return [ToHost(tuple(out))] if out else []

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
        if self.host_down:  # the host reads the real keyboards again
            actions.append(ToHost(tuple((EV_KEY, code, 0) for code in sorted(self.host_down))))
            self.host_down.clear()
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


#: Seconds the escape chord must be held (by the events' own timestamps).
ESCAPE_HOLD = 2.0


class EscapeChord:
    """The escape hotkey: every key of the chord held ``hold`` seconds stops the VM.

    Decided from the events' kernel timestamps and a "now" the edge passes in
    (never a clock read here): the chord counts from the event that completed
    it and fires ``hold`` seconds later, whether or not the keyboard repeats:
    the edge asks :meth:`tick` at :meth:`deadline`, and a later key event
    (autorepeat, or the release of a chord held long enough and read late)
    decides too. It fires once per press of the chord; releasing any key of it
    before the deadline starts over. Key state is per device and counted over
    devices, like the hotkey's.
    """

    def __init__(self, keys: Iterable[int], hold: float = ESCAPE_HOLD) -> None:
        self.keys = frozenset(keys)
        if not self.keys:
            raise ValueError("the escape chord needs at least one key")
        self.hold = hold
        self.held: dict[str, set[int]] = {}
        self.since: float | None = None
        self.fired = False

    def _complete(self) -> bool:
        return all(any(k in keys for keys in self.held.values()) for k in self.keys)

    def _due(self, when: float) -> bool:
        """Held long enough at ``when`` (and not fired yet): fire now."""
        # Timestamps are whole microseconds: a float difference may miss by a rounding.
        if self.since is None or self.fired or when - self.since < self.hold - 1e-6:
            return False
        self.fired = True
        return True

    def feed(self, device: str, event: Event, when: float) -> bool:
        """One event read from ``device`` at kernel time ``when``; True when the chord fires."""
        etype, code, value = event
        if etype != EV_KEY:
            return False
        if self._due(when):  # the chord was held long enough before this event
            return True
        held = self.held.setdefault(device, set())
        if value == 1:
            held.add(code)
        elif value == 0:
            held.discard(code)
        if not self._complete():
            self.since = None
            self.fired = False
            return False
        if self.since is None:
            self.since = when
        return False

    def deadline(self) -> float | None:
        """When (kernel time) the chord fires if nothing changes; None when it cannot."""
        if self.since is None or self.fired:
            return None
        return self.since + self.hold

    def tick(self, now: float) -> bool:
        """The edge's clock says ``now`` (the events' clock): True when the chord fires."""
        return self._due(now)

    def forget(self, device: str) -> None:
        """A device is gone, or lost events (SYN_DROPPED): its keys count as released."""
        self.held.pop(device, None)
        if not self._complete():
            self.since = None
            self.fired = False
