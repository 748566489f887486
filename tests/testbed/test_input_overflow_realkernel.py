"""SYN_DROPPED on a real kernel: a burst overflows the sources' evdev buffers.

A source's evdev buffer holds 64 (keyboard) or 128 (this mouse) events. The
router reads its devices in trio tasks on the test's own thread, so while the
test writes a burst without awaiting, the router cannot read at all: a burst
of several hundred events overflows both buffers every time, not by luck of
timing. evdev then keeps only SYN_DROPPED and the newest events; the router
must ask the kernel (EVIOCGKEY) what the lost events changed, and release in
the guest what was let go during the gap. The guest is the nested QEMU's
input trace.

EVIOCGKEY also flushes the key events still queued for the reader (the state
it returns includes them), so key events behind the part of the tail already
read belong to the gap too: the end markers here are a key tap read in the
same read as the drop (keyboard) and motion (mouse), never a mouse button.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.testbed.test_input_realkernel import (
    BTN_LEFT,
    EV_KEY,
    EV_REL,
    KEY_A,
    KEY_B,
    KEY_C,
    REL_X,
    grabbed,
    held_on_host,
    parse,
    qmp_input_session,
    until,
)

pytestmark = pytest.mark.realkernel

KEY_D, KEY_E, REL_Y = 32, 18, 1
BURST = 100  # key taps (400 events) and motion frames (200 events): both buffers overflow


def frame(ui: Any, *events: tuple[int, int, int]) -> None:
    for event in events:
        ui.write(*event)
    ui.syn()


def down_in_guest(trace: list[tuple[str, str, str]]) -> set[str]:
    """What the guest holds after the trace: keys and buttons whose last event is a press."""
    last: dict[str, str] = {}
    for kind, name, value in trace:
        if kind in ("key_qcode", "btn"):
            last[name] = value
    return {name for name, value in last.items() if value == "1"}


@pytest.mark.usefixtures("udev")
async def test_a_key_let_go_inside_a_kernel_overflow_is_released_in_the_guest(
    tmp_path: Path,
) -> None:
    async with qmp_input_session(tmp_path) as session:
        keyboard, mouse, resource = session.keyboard, session.mouse, session.resource
        control, trace = session.control, session.trace
        router = resource._router
        assert router is not None

        frame(keyboard, (EV_KEY, KEY_A, 1))
        frame(keyboard, (EV_KEY, KEY_D, 1))
        frame(mouse, (EV_KEY, BTN_LEFT, 1))
        held = {("key_qcode", "a", "1"), ("key_qcode", "d", "1"), ("btn", "left", "1")}
        await until(lambda: held <= set(parse(trace)), "A, D, left button down", 60)

        # The burst: no await from here to its end, so the router reads nothing.
        frame(keyboard, (EV_KEY, KEY_A, 0))  # let go inside the overflow: lost
        frame(keyboard, (EV_KEY, KEY_C, 1))  # pressed and let go inside it: lost
        frame(keyboard, (EV_KEY, KEY_C, 0))
        for _ in range(BURST):
            frame(keyboard, (EV_KEY, KEY_B, 1))
            frame(keyboard, (EV_KEY, KEY_B, 0))
        frame(keyboard, (EV_KEY, KEY_E, 1))  # the end marker, in the kept tail
        frame(keyboard, (EV_KEY, KEY_E, 0))
        frame(mouse, (EV_KEY, BTN_LEFT, 0))  # a drag ends inside the overflow: lost
        for _ in range(BURST):
            frame(mouse, (EV_REL, REL_X, 1))
        frame(mouse, (EV_REL, REL_Y, 5))  # the end marker
        # End of the burst.

        ends = {("key_qcode", "e", "0"), ("rel", "y", "5")}
        await until(lambda: ends <= set(parse(trace)), "the burst's end in the trace", 60)
        assert router.dropped == 2, "each source's buffer overflowed once"
        events = parse(trace)
        # Host and guest agree on what is down: D only.
        assert held_on_host(keyboard) == [KEY_D]
        assert held_on_host(mouse) == []
        assert down_in_guest(events) == {"d"}
        assert set(router.core.guest_down) == {KEY_D}

        keys = [(n, v) for k, n, v in events if k == "key_qcode"]
        assert keys[:3] == [("a", "1"), ("d", "1"), ("a", "0")]  # A: released on resync
        assert keys[-2:] == [("e", "1"), ("e", "0")]
        taps = keys[3:-2]  # the B taps that survived in the kernel's tail, whole
        assert taps == [("b", "1"), ("b", "0")] * (len(taps) // 2)
        assert len(taps) < 2 * BURST  # lost, not replayed (C was never seen at all)
        buttons = [(n, v) for k, n, v in events if k == "btn"]
        assert buttons == [("left", "1"), ("left", "0")]  # left: released on resync
        assert sum(int(v) for k, n, v in events if k == "rel" and n == "x") < BURST

        frame(keyboard, (EV_KEY, KEY_D, 0))
        await until(lambda: ("key_qcode", "d", "0") in parse(trace), "D released", 60)
        assert down_in_guest(parse(trace)) == set()
        await control.dispatch({"command": "switch", "mode": "host"})


@pytest.mark.usefixtures("udev")
async def test_keys_typed_just_before_a_switch_to_the_host_reach_the_guest(
    tmp_path: Path,
) -> None:
    """A switch reads EVIOCGKEY, and the kernel flushes the key events queued for that reader."""
    async with qmp_input_session(tmp_path) as session:
        keyboard, resource = session.keyboard, session.resource
        control, trace = session.control, session.trace
        # Typed and queued; the switch runs before the router's reader gets to them.
        frame(keyboard, (EV_KEY, KEY_A, 1))
        frame(keyboard, (EV_KEY, KEY_A, 0))
        frame(keyboard, (EV_KEY, KEY_B, 1))
        reply = await control.dispatch({"command": "switch", "mode": "host"})
        assert reply == {"ok": True, "result": {"mode": "host", "pending": None}}
        assert not any(grabbed(resource).values())
        b_up = ("key_qcode", "b", "0")  # released in the guest by the switch
        await until(lambda: b_up in parse(trace), "B released in the guest", 60)
        frame(keyboard, (EV_KEY, KEY_B, 0))  # the host's now
    keys = [(n, v) for k, n, v in parse(trace) if k == "key_qcode"]
    assert keys == [("a", "1"), ("a", "0"), ("b", "1"), ("b", "0")]
