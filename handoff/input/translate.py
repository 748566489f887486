"""evdev frames → one QMP ``input-send-event`` batch. Pure.

A frame is what a device reports between two SYN_REPORTs: the kernel's
unit of "these changed together". QEMU's ``input-send-event`` delivers a
batch and then one sync, which is the same unit, so one frame becomes one
batch and the guest sees motion and clicks grouped as the hardware grouped
them.

Rules (QEMU's input-linux does the same where it has an opinion):
- EV_KEY value 0/1 → ``key`` (qcode) or ``btn``; value 2 (autorepeat) is
  dropped: the guest runs its own repeat, a forwarded repeat would double it.
- REL_X/REL_Y are summed per frame into one ``rel`` event per axis.
- REL_WHEEL/REL_HWHEEL become wheel-up/down/left/right press+release pairs,
  one pair per detent. Devices with hi-res wheels report REL_WHEEL_HI_RES
  (120 units per detent) *and* the kernel's derived REL_WHEEL in the same
  frame: when a frame carries hi-res values they are the truth (summed with
  the device's carried remainder) and the low-res value is ignored, so a
  detent is never counted twice and partial scrolls add up.
- Everything else (EV_MSC scancodes, LEDs, EV_ABS) is not forwarded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from handoff.input.keymap import LINUX_TO_BUTTON, LINUX_TO_QCODE, is_button

Event = tuple[int, int, int]  # (type, code, value) as read from evdev
InputEvent = dict[str, Any]

EV_SYN, EV_KEY, EV_REL = 0x00, 0x01, 0x02
SYN_REPORT, SYN_DROPPED = 0, 3
REL_X, REL_Y, REL_HWHEEL, REL_WHEEL = 0x00, 0x01, 0x06, 0x08
REL_WHEEL_HI_RES, REL_HWHEEL_HI_RES = 0x0B, 0x0C
HI_RES_PER_DETENT = 120


def key_event(qcode: str, down: bool) -> InputEvent:
    return {"type": "key", "data": {"down": down, "key": {"type": "qcode", "data": qcode}}}


def btn_event(button: str, down: bool) -> InputEvent:
    return {"type": "btn", "data": {"down": down, "button": button}}


def rel_event(axis: str, value: int) -> InputEvent:
    return {"type": "rel", "data": {"axis": axis, "value": value}}


def _detents(total: int) -> tuple[int, int]:
    """Whole detents in ``total`` hi-res units (towards zero) and the remainder."""
    whole = abs(total) // HI_RES_PER_DETENT
    detents = whole if total >= 0 else -whole
    return detents, total - detents * HI_RES_PER_DETENT


class FrameTranslator:
    """Turns frames into QMP batches; remembers each device's partial hi-res scroll."""

    def __init__(self, keymap: Mapping[int, str] = LINUX_TO_QCODE) -> None:
        self._keymap = dict(keymap)
        self._remainder: dict[tuple[str, int], int] = {}

    def forget(self, device: str) -> None:
        """Drop a device's carried scroll remainder (unplugged)."""
        for key in [k for k in self._remainder if k[0] == device]:
            del self._remainder[key]

    def translate(self, device: str, events: Iterable[Event]) -> list[InputEvent]:
        """One frame (SYN_REPORT excluded) → the events of one ``input-send-event``."""
        out: list[InputEvent] = []
        rel = {REL_X: 0, REL_Y: 0}
        lo = {REL_WHEEL: 0, REL_HWHEEL: 0}
        hi: dict[int, int] = {}
        for etype, code, value in events:
            if etype == EV_KEY:
                if value not in (0, 1):
                    continue
                if is_button(code):
                    button = LINUX_TO_BUTTON.get(code)
                    if button is not None:
                        out.append(btn_event(button, value == 1))
                else:
                    qcode = self._keymap.get(code)
                    if qcode is not None:
                        out.append(key_event(qcode, value == 1))
            elif etype == EV_REL:
                if code in rel:
                    rel[code] += value
                elif code in lo:
                    lo[code] += value
                elif code == REL_WHEEL_HI_RES:
                    hi[REL_WHEEL] = hi.get(REL_WHEEL, 0) + value
                elif code == REL_HWHEEL_HI_RES:
                    hi[REL_HWHEEL] = hi.get(REL_HWHEEL, 0) + value
        if rel[REL_X]:
            out.append(rel_event("x", rel[REL_X]))
        if rel[REL_Y]:
            out.append(rel_event("y", rel[REL_Y]))
        for axis, positive, negative in (
            (REL_WHEEL, "wheel-up", "wheel-down"),
            (REL_HWHEEL, "wheel-right", "wheel-left"),
        ):
            if axis in hi:
                carried = self._remainder.get((device, axis), 0) + hi[axis]
                detents, left = _detents(carried)
                self._remainder[(device, axis)] = left
            else:
                detents = lo[axis]
            button = positive if detents > 0 else negative
            for _ in range(abs(detents)):
                out.append(btn_event(button, True))
                out.append(btn_event(button, False))
        return out


def motion_of(batch: Sequence[InputEvent]) -> dict[str, int]:
    """Relative motion per axis in a batch (tests and the coalescer use it)."""
    totals = {"x": 0, "y": 0}
    for event in batch:
        if event["type"] == "rel":
            totals[event["data"]["axis"]] += event["data"]["value"]
    return totals


def is_motion_only(batch: Sequence[InputEvent]) -> bool:
    return all(event["type"] == "rel" for event in batch)
