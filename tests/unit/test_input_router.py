"""The host ⇄ guest router, as a specification: pure core, no devices needed."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import event, given, settings
from hypothesis import strategies as st

from handoff.control.protocol import Side
from handoff.input.codes import EV_KEY, EV_REL, EV_SYN, REL_X, SYN_DROPPED, SYN_REPORT
from handoff.input.router import (
    Action,
    FrameAssembler,
    Grab,
    ModeChanged,
    Resync,
    RouterCore,
    ToGuest,
    ToHost,
    Ungrab,
)
from handoff.profile import InputMode

LCTRL, RCTRL, SCROLL, A, S, D, BTN = 29, 97, 70, 30, 31, 32, 0x110
MUTE, VOLUMEUP = 113, 115


def press(code: int) -> tuple[int, int, int]:
    return (EV_KEY, code, 1)


def release(code: int) -> tuple[int, int, int]:
    return (EV_KEY, code, 0)


def guest_events(actions: list[Action]) -> list[tuple[int, int, int]]:
    return [e for a in actions if isinstance(a, ToGuest) for e in a.events]


def host_events(actions: list[Action]) -> list[tuple[int, int, int]]:
    return [e for a in actions if isinstance(a, ToHost) for e in a.events]


def guest_router(
    hotkey: tuple[int, ...] = (LCTRL, RCTRL), host_keys: tuple[int, ...] = ()
) -> RouterCore:
    core = RouterCore(hotkey, start=InputMode.GUEST, host_keys=host_keys)
    assert core.add_device("kbd") == [ModeChanged(InputMode.GUEST), Grab("kbd")]
    return core


def test_starting_in_guest_mode_waits_until_no_key_is_held() -> None:
    core = RouterCore((LCTRL, RCTRL), start=InputMode.GUEST)
    assert core.add_device("kbd", held=[A]) == []
    assert core.mode is InputMode.HOST
    assert core.frame("kbd", [release(A)]) == [ModeChanged(InputMode.GUEST), Grab("kbd")]


def test_keys_of_a_grabbed_device_reach_the_guest_and_repeats_do_not() -> None:
    core = guest_router()
    assert core.frame("kbd", [press(A)]) == [ToGuest("kbd", (press(A),))]
    assert core.frame("kbd", [(EV_KEY, A, 2)]) == []
    assert core.frame("kbd", [release(A)]) == [ToGuest("kbd", (release(A),))]


def test_both_ctrls_switch_to_host_on_release_and_the_guest_never_holds_the_chord() -> None:
    core = guest_router()
    assert guest_events(core.frame("kbd", [press(LCTRL)])) == [press(LCTRL)]
    # The chord completes: the right Ctrl is swallowed, the left one let go in the guest.
    assert core.frame("kbd", [press(RCTRL)]) == [ToGuest("kbd", (release(LCTRL),))]
    assert core.mode is InputMode.GUEST
    assert core.frame("kbd", [release(LCTRL)]) == []
    assert core.frame("kbd", [release(RCTRL)]) == [Ungrab("kbd"), ModeChanged(InputMode.HOST)]


def test_the_chord_in_host_mode_grabs_only_after_every_key_is_up() -> None:
    core = RouterCore((LCTRL, RCTRL))
    core.add_device("kbd")
    core.add_device("mouse")
    assert core.frame("kbd", [press(LCTRL)]) == []
    assert core.frame("kbd", [press(RCTRL)]) == []
    assert core.frame("mouse", [press(BTN)]) == []
    assert core.frame("kbd", [release(LCTRL), release(RCTRL)]) == []
    assert core.frame("mouse", [release(BTN)]) == [
        ModeChanged(InputMode.GUEST),
        Grab("kbd"),
        Grab("mouse"),
    ]


def test_scroll_lock_as_hotkey_never_reaches_the_guest() -> None:
    core = guest_router((SCROLL,))
    assert core.frame("kbd", [press(SCROLL)]) == []
    assert core.frame("kbd", [release(SCROLL)]) == [Ungrab("kbd"), ModeChanged(InputMode.HOST)]


def test_switching_to_host_releases_what_the_guest_still_holds() -> None:
    core = guest_router()
    core.add_device("mouse")
    core.frame("kbd", [press(A)])
    core.frame("mouse", [press(BTN)])
    actions = core.request(Side.HOST)
    assert sorted(guest_events(actions)) == sorted([release(A), release(BTN)])
    assert Ungrab("kbd") in actions
    assert Ungrab("mouse") in actions
    assert core.mode is InputMode.HOST


def test_two_devices_holding_one_key_give_the_guest_one_press_and_one_release() -> None:
    core = guest_router()
    core.add_device("kbd2")
    assert guest_events(core.frame("kbd", [press(A)])) == [press(A)]
    assert guest_events(core.frame("kbd2", [press(A)])) == []
    assert guest_events(core.frame("kbd", [release(A)])) == []
    assert guest_events(core.frame("kbd2", [release(A)])) == [release(A)]


def test_unplugging_a_device_releases_its_keys_in_the_guest() -> None:
    core = guest_router()
    core.frame("kbd", [press(A), press(S)])
    assert guest_events(core.remove_device("kbd")) == [release(A), release(S)]


def test_a_resync_after_dropped_events_releases_keys_let_go_in_the_gap() -> None:
    core = guest_router()
    core.frame("kbd", [press(A), press(S)])
    assert guest_events(core.resync("kbd", [S, D])) == [release(A)]
    # D was pressed during the gap: held (switching waits for it) but not pressed late.
    assert guest_events(core.frame("kbd", [release(D)])) == []


def test_a_refused_grab_is_retried_once_the_keys_are_up() -> None:
    core = RouterCore((LCTRL, RCTRL))
    core.add_device("kbd")
    assert core.request(Side.GUEST) == [ModeChanged(InputMode.GUEST), Grab("kbd")]
    assert core.grab_refused("kbd", [A]) == []
    assert core.frame("kbd", [release(A)]) == [Grab("kbd")]


def test_toggle_cancels_a_pending_switch() -> None:
    core = RouterCore((LCTRL, RCTRL))
    core.add_device("kbd", held=[A])
    assert core.request(Side.TOGGLE) == []
    assert core.pending is InputMode.GUEST
    assert core.request(Side.TOGGLE) == []
    assert core.frame("kbd", [release(A)]) == []
    assert core.mode is InputMode.HOST


def test_motion_reaches_the_guest_only_from_grabbed_devices() -> None:
    core = RouterCore((LCTRL, RCTRL))
    core.add_device("mouse")
    assert core.frame("mouse", [(EV_REL, REL_X, 5)]) == []
    core.request(Side.GUEST)
    assert core.frame("mouse", [(EV_REL, REL_X, 5)]) == [ToGuest("mouse", ((EV_REL, REL_X, 5),))]


def test_shutdown_releases_every_grab_and_every_guest_key() -> None:
    core = guest_router()
    core.frame("kbd", [press(A)])
    assert core.shutdown() == [
        ToGuest("kbd", (release(A),)),
        Ungrab("kbd"),
        ModeChanged(InputMode.HOST),
    ]


def test_the_assembler_drops_everything_up_to_the_report_after_syn_dropped() -> None:
    asm = FrameAssembler()
    assert asm.feed(press(A)) is None
    assert asm.feed((EV_SYN, SYN_REPORT, 0)) == [press(A)]
    asm.feed(press(S))
    assert asm.feed((EV_SYN, SYN_DROPPED, 0)) is None
    assert asm.feed(release(S)) is None
    assert asm.feed((EV_SYN, SYN_REPORT, 0)) == Resync()
    asm.feed(release(A))
    assert asm.feed((EV_SYN, SYN_REPORT, 0)) == [release(A)]


def test_host_keys_in_guest_mode_go_to_the_host_device_with_repeats_never_to_the_guest() -> None:
    core = guest_router(host_keys=(MUTE, VOLUMEUP))
    actions = core.frame("kbd", [press(MUTE), press(A)])
    assert guest_events(actions) == [press(A)]
    assert host_events(actions) == [press(MUTE)]
    assert host_events(core.frame("kbd", [(EV_KEY, MUTE, 2)])) == [(EV_KEY, MUTE, 2)]
    actions = core.frame("kbd", [release(MUTE), release(A)])
    assert guest_events(actions) == [release(A)]
    assert host_events(actions) == [release(MUTE)]


def test_in_host_mode_host_keys_are_left_alone() -> None:
    core = RouterCore((LCTRL, RCTRL), host_keys=(MUTE,))
    core.add_device("kbd")
    assert core.frame("kbd", [press(MUTE)]) == []
    assert core.frame("kbd", [release(MUTE)]) == []


def test_a_host_key_held_across_a_switch_is_released_on_the_host_device() -> None:
    core = guest_router(host_keys=(VOLUMEUP,))
    assert host_events(core.frame("kbd", [press(VOLUMEUP)])) == [press(VOLUMEUP)]
    actions = core.request(Side.HOST)
    assert host_events(actions) == [release(VOLUMEUP)]
    assert Ungrab("kbd") in actions
    # The real release now reaches the host from the real keyboard: nothing more here.
    assert core.frame("kbd", [release(VOLUMEUP)]) == []


def test_a_host_key_is_released_on_unplug_and_on_a_resync_that_lost_its_release() -> None:
    core = guest_router(host_keys=(MUTE,))
    core.frame("kbd", [press(MUTE)])
    assert host_events(core.remove_device("kbd")) == [release(MUTE)]
    core = guest_router(host_keys=(MUTE,))
    core.frame("kbd", [press(MUTE)])
    assert host_events(core.resync("kbd", [])) == [release(MUTE)]


def test_a_host_key_cannot_be_part_of_a_chord() -> None:
    import pytest

    with pytest.raises(ValueError, match="host key"):
        RouterCore((LCTRL, RCTRL), host_keys=(LCTRL,))


# --------------------------------------------------------------------------- property


@dataclass
class World:
    """The kernel, the host's view and the guest's view around one RouterCore."""

    core: RouterCore
    hotkey: tuple[int, ...]
    kernel: dict[str, set[int]] = field(default_factory=dict)
    host: dict[str, set[int]] = field(default_factory=dict)
    guest: set[int] = field(default_factory=set)
    host_keys_device: set[int] = field(default_factory=set)
    motion_in: int = 0
    motion_out: int = 0
    switches: int = 0

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ToGuest):
                for etype, code, value in action.events:
                    if etype == EV_REL:
                        self.motion_out += value
                        continue
                    assert value in (0, 1)
                    if value:
                        assert code not in self.guest, "guest got a second press"
                        self.guest.add(code)
                    else:
                        assert code in self.guest, "guest got a release without a press"
                        self.guest.discard(code)
                    assert not set(self.hotkey) <= self.guest, "the chord reached the guest"
                    assert code not in self.core.host_keys, "a host key reached the guest"
            elif isinstance(action, ToHost):
                for _, code, value in action.events:
                    assert code in self.core.host_keys, "a key that is not a host key"
                    if value == 1:
                        assert code not in self.host_keys_device, "host device: second press"
                        self.host_keys_device.add(code)
                    elif value == 0:
                        assert code in self.host_keys_device, "host device: release, no press"
                        self.host_keys_device.discard(code)
                    else:
                        assert code in self.host_keys_device, "host device: repeat, no press"
            elif isinstance(action, Grab) and self.kernel[action.device]:
                # The edge's EVIOCGKEY check after EVIOCGRAB found a key down.
                self.apply(self.core.grab_refused(action.device, self.kernel[action.device]))
            elif isinstance(action, ModeChanged):
                self.switches += 1
                if action.mode is InputMode.HOST:  # the host reads the real keyboards again
                    assert not self.host_keys_device, "the host keys device still holds a key"

    def deliver(self, device: str, events: list[tuple[int, int, int]], seen: bool = True) -> None:
        grabbed = device in self.core.grabbed
        for etype, code, value in events:
            if etype == EV_KEY:
                (self.kernel[device].add if value else self.kernel[device].discard)(code)
                if not grabbed:
                    (self.host[device].add if value else self.host[device].discard)(code)
            elif grabbed and seen:
                self.motion_in += value
        if seen:
            self.apply(self.core.frame(device, events))

    def plug(self, device: str) -> None:
        self.kernel[device] = set()
        self.host[device] = set()
        self.apply(self.core.add_device(device))


DEVICES = ("kbd", "kbd2", "mouse")
KEYS = (LCTRL, RCTRL, SCROLL, A, S, BTN, MUTE)
op = st.one_of(
    st.tuples(st.just("key"), st.sampled_from(DEVICES), st.sampled_from(KEYS)),
    st.tuples(st.just("repeat"), st.sampled_from(DEVICES), st.sampled_from(KEYS)),
    st.tuples(st.just("rel"), st.sampled_from(DEVICES), st.integers(-50, 50)),
    st.tuples(st.just("drop"), st.sampled_from(DEVICES), st.sampled_from(KEYS)),
    st.tuples(st.just("unplug"), st.sampled_from(DEVICES), st.just(0)),
    st.tuples(st.just("control"), st.sampled_from(("host", "guest", "toggle")), st.just(0)),
)


# Every interleaving is valid input (nothing filtered). Measured (3 runs): ~45 %
# of the examples switch sides at least once (event "input switched side" in
# `pytest --hypothesis-show-statistics`), so the chord and the wait for
# released keys are exercised ~180 times a run. deadline=None: tests/conftest.py.
@settings(max_examples=400)
@given(
    hotkey=st.sampled_from(((LCTRL, RCTRL), (SCROLL,), (LCTRL, A))),
    start=st.sampled_from(list(InputMode)),
    ops=st.lists(op, max_size=60),
)
def test_no_interleaving_leaves_a_key_stuck_or_leaks_the_chord_or_loses_motion(
    hotkey: tuple[int, ...], start: InputMode, ops: list[tuple[str, str, int]]
) -> None:
    world = World(RouterCore(hotkey, start, host_keys=(MUTE,)), hotkey)
    for device in DEVICES:
        world.plug(device)
    world.switches = 0
    for kind, target, arg in ops:
        if kind == "control":
            world.apply(world.core.request(Side(target)))
            continue
        device = target
        if device not in world.kernel:
            world.plug(device)  # re-plugged
        if kind == "key":
            world.deliver(device, [(EV_KEY, arg, 0 if arg in world.kernel[device] else 1)])
        elif kind == "repeat":  # the kernel's autorepeat of a held key
            if arg in world.kernel[device]:
                world.deliver(device, [(EV_KEY, arg, 2)])
        elif kind == "rel":
            world.deliver(device, [(EV_REL, REL_X, arg)])
        elif kind == "drop":  # the change is lost in an overflow; EVIOCGKEY resyncs
            flip = 0 if arg in world.kernel[device] else 1
            world.deliver(device, [(EV_KEY, arg, flip)], seen=False)
            world.apply(world.core.resync(device, world.kernel[device]))
        elif kind == "unplug":
            world.apply(world.core.remove_device(device))
            del world.kernel[device], world.host[device]
    # The person lets go of everything.
    for device in list(world.kernel):
        for code in sorted(world.kernel[device]):
            world.deliver(device, [(EV_KEY, code, 0)])
    assert world.guest == set(), "a key is stuck in the guest"
    assert all(not keys for keys in world.host.values()), "a key is stuck on the host"
    assert world.host_keys_device == set(), "a key is stuck on the host keys device"
    assert world.motion_in == world.motion_out
    assert world.core.pending is None
    if world.core.mode is InputMode.GUEST:
        assert world.core.grabbed == set(world.kernel)
    else:
        assert world.core.grabbed == set()
    event("input switched side" if world.switches else "input stayed on one side")
    world.apply(world.core.shutdown())
    assert world.core.grabbed == set()
    assert world.guest == set()
    assert world.host_keys_device == set()
