"""The escape hotkey: a chord held 2 s (by the events' kernel timestamps) stops the VM.

The pure core (router.EscapeChord) and the edge (InputRouter reading real
``struct input_event`` records, timestamps included, from a pipe; its
deadline task on trio's mock clock, with or without autorepeat).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from handoff.base.errors import ProfileError
from handoff.input.codes import EV_KEY, EV_SYN, INPUT_EVENT, SYN_REPORT
from handoff.input.edge import InputRouter
from handoff.input.router import EscapeChord, RouterCore
from handoff.input.translate import Event
from handoff.profile import InputMode, parse_profile

KEY_LEFTCTRL, KEY_RIGHTCTRL, KEY_END, KEY_A, KEY_SCROLLLOCK = 29, 97, 107, 30, 70
CHORD = (KEY_LEFTCTRL, KEY_RIGHTCTRL, KEY_END)


def press(chord: EscapeChord, device: str, code: int, value: int, when: float) -> bool:
    return chord.feed(device, (EV_KEY, code, value), when)


def test_the_chord_fires_once_when_held_two_seconds_by_event_time() -> None:
    chord = EscapeChord(CHORD)
    assert not press(chord, "kbd", KEY_LEFTCTRL, 1, 10.0)
    assert not press(chord, "kbd", KEY_RIGHTCTRL, 1, 10.1)
    assert not press(chord, "kbd", KEY_END, 1, 10.2)  # complete: counts from here
    assert not press(chord, "kbd", KEY_END, 2, 11.0)  # autorepeat, 0.8 s
    assert not press(chord, "kbd", KEY_END, 2, 12.19)
    assert press(chord, "kbd", KEY_END, 2, 12.2)  # 2.0 s after it was complete
    assert not press(chord, "kbd", KEY_END, 2, 13.0)  # once per press of the chord


def test_the_chord_fires_at_its_deadline_without_any_further_event() -> None:
    chord = EscapeChord(CHORD)
    assert chord.deadline() is None
    for when, code in ((10.0, KEY_LEFTCTRL), (10.1, KEY_RIGHTCTRL), (10.2, KEY_END)):
        assert not press(chord, "kbd", code, 1, when)
    assert chord.deadline() == pytest.approx(12.2)
    assert not chord.tick(12.1)
    assert chord.tick(12.2)  # 2 s after the chord completed, no repeat needed
    assert chord.deadline() is None
    assert not chord.tick(13.0)  # once per press of the chord
    assert not press(chord, "kbd", KEY_END, 0, 13.5)
    assert chord.deadline() is None  # released: nothing pending


def test_a_chord_held_long_enough_fires_on_a_release_read_late() -> None:
    # A busy supervisor reads the press and the release together, 2.5 s apart by
    # their timestamps: the chord was held long enough, so it fires.
    chord = EscapeChord(CHORD)
    for code in CHORD:
        press(chord, "kbd", code, 1, 1.0)
    assert press(chord, "kbd", KEY_END, 0, 3.5)
    short = EscapeChord(CHORD)
    for code in CHORD:
        press(short, "kbd", code, 1, 1.0)
    assert not press(short, "kbd", KEY_END, 0, 2.5)  # 1.5 s: released too soon
    assert short.deadline() is None


def test_releasing_a_key_starts_over_and_other_keys_do_not_count() -> None:
    chord = EscapeChord(CHORD)
    for code in CHORD:
        press(chord, "kbd", code, 1, 0.0)
    assert not press(chord, "kbd", KEY_END, 0, 1.5)
    assert not press(chord, "kbd", KEY_END, 1, 1.6)
    assert not press(chord, "kbd", KEY_A, 1, 3.5)  # 1.9 s since it was complete again
    assert press(chord, "kbd", KEY_A, 2, 3.6)
    other = EscapeChord(CHORD)
    assert not other.feed("kbd", (EV_SYN, SYN_REPORT, 0), 100.0)


def test_the_chord_counts_over_devices_and_a_lost_device_releases_its_keys() -> None:
    chord = EscapeChord(CHORD)
    press(chord, "left", KEY_LEFTCTRL, 1, 0.0)
    press(chord, "right", KEY_RIGHTCTRL, 1, 0.0)
    press(chord, "right", KEY_END, 1, 0.5)
    chord.forget("left")  # unplugged, or SYN_DROPPED
    assert not press(chord, "right", KEY_END, 2, 3.0)
    press(chord, "left", KEY_LEFTCTRL, 1, 3.1)
    assert press(chord, "right", KEY_END, 2, 5.2)


def record(when: float, event: Event) -> bytes:
    sec = int(when)
    return INPUT_EVENT.pack(sec, round((when - sec) * 1e6), *event)


class PipeKeyboard:
    """A device handle whose fd is a pipe carrying real input_event records."""

    name = "pipe keyboard"

    def __init__(self) -> None:
        self.fd, self.writer = os.pipe()
        os.set_blocking(self.fd, False)

    def send(self, records: Sequence[tuple[float, Event]]) -> None:
        os.write(self.writer, b"".join(record(when, event) for when, event in records))

    def grab(self) -> None:
        """Nothing to grab on a pipe."""

    def ungrab(self) -> None:
        """Nothing to let go of."""

    def active_keys(self) -> list[int]:
        return []

    def close(self) -> None:
        os.close(self.fd)


class Guest:
    def submit(self, device: str, events: Sequence[Event]) -> None:
        """Frames are not looked at here."""

    def forget(self, device: str) -> None:
        """Nothing kept per device."""


async def test_the_router_reads_the_timestamps_and_calls_the_escape_once() -> None:
    keyboard = PipeKeyboard()
    fired: list[int] = []
    router = InputRouter(
        RouterCore(frozenset({KEY_SCROLLLOCK}), InputMode.HOST), Guest(),
        escape=EscapeChord(CHORD), on_escape=lambda: fired.append(1),
    )

    def frame(when: float, code: int, value: int) -> list[tuple[float, Event]]:
        return [(when, (EV_KEY, code, value)), (when, (EV_SYN, SYN_REPORT, 0))]

    keyboard.send(frame(50.0, KEY_LEFTCTRL, 1) + frame(50.0, KEY_RIGHTCTRL, 1)
                  + frame(50.1, KEY_END, 1) + frame(51.0, KEY_END, 2))
    keyboard.send(frame(52.05, KEY_END, 2))  # 1.95 s: not yet
    async with trio.open_nursery() as nursery:
        nursery.start_soon(router.run_device, "kbd", keyboard)
        await trio.testing.wait_all_tasks_blocked()
        assert fired == []
        keyboard.send(frame(52.1, KEY_END, 2) + frame(52.2, KEY_END, 2))
        await trio.testing.wait_all_tasks_blocked()
        assert fired == [1]
        os.close(keyboard.writer)  # unplugged: the reader ends
    assert fired == [1]


def test_the_profile_key_is_checked() -> None:
    base = '[vm]\nname = "w"\nmemory = "1G"\n[input]\n'
    source = Path("/etc/handoff/w.toml")
    profile = parse_profile(
        base + 'backend = "qmp"\nescape_hotkey = ["KEY_LEFTCTRL", "KEY_RIGHTCTRL", "KEY_END"]\n',
        source,
    )
    assert profile.input.escape_hotkey == ("KEY_LEFTCTRL", "KEY_RIGHTCTRL", "KEY_END")
    with pytest.raises(ProfileError, match='expected an input backend'):
        parse_profile(base + 'escape_hotkey = ["KEY_END"]\n', source)
    with pytest.raises(ProfileError, match="expected a Linux key name"):
        parse_profile(base + 'backend = "qmp"\nescape_hotkey = ["END"]\n', source)


@pytest.mark.parametrize("repeats", [False, True], ids=["no-autorepeat", "autorepeat"])
async def test_the_deadline_task_fires_two_seconds_after_the_chord_with_or_without_repeats(
    autojump_clock: trio.testing.MockClock, repeats: bool
) -> None:
    keyboard = PipeKeyboard()
    fired: list[float] = []
    router = InputRouter(
        RouterCore(frozenset({KEY_SCROLLLOCK}), InputMode.HOST), Guest(),
        escape=EscapeChord(CHORD), on_escape=lambda: fired.append(trio.current_time()),
        now=trio.current_time,
    )

    def frame(code: int, value: int) -> list[tuple[float, Event]]:
        now = trio.current_time()
        return [(now, (EV_KEY, code, value)), (now, (EV_SYN, SYN_REPORT, 0))]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(router.run_escape)
        nursery.start_soon(router.run_device, "kbd", keyboard)
        await trio.testing.wait_all_tasks_blocked()
        keyboard.send(frame(KEY_LEFTCTRL, 1) + frame(KEY_RIGHTCTRL, 1) + frame(KEY_END, 1))
        await trio.testing.wait_all_tasks_blocked()
        completed = trio.current_time()
        for _ in range(25):  # held 2.5 s, repeating every 0.1 s or silent
            await trio.sleep(0.1)
            if repeats:
                keyboard.send(frame(KEY_END, 2))
        keyboard.send(frame(KEY_END, 0) + frame(KEY_RIGHTCTRL, 0) + frame(KEY_LEFTCTRL, 0))
        await trio.testing.wait_all_tasks_blocked()
        assert len(fired) == 1
        assert fired[0] - completed == pytest.approx(2.0, abs=0.11)
        # A second press of the chord, released after 1 s: nothing more.
        keyboard.send(frame(KEY_LEFTCTRL, 1) + frame(KEY_RIGHTCTRL, 1) + frame(KEY_END, 1))
        await trio.sleep(1.0)
        keyboard.send(frame(KEY_END, 0))
        await trio.sleep(5.0)
        assert len(fired) == 1
        nursery.cancel_scope.cancel()
    os.close(keyboard.writer)
