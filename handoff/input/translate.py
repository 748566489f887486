"""evdev frames → one QMP ``input-send-event`` batch each (the ``qmp`` backend's translation).

One frame (the events between two SYN_REPORTs) becomes one batch, so the
guest sees what changed together as the hardware grouped it. Autorepeat is
dropped, motion summed per axis, wheels turned into detent clicks (hi-res
values win over the kernel's derived low-res ones). Pure: must never do I/O
or log an event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from handoff.input.codes import (
    EV_KEY,
    EV_REL,
    HI_RES_PER_DETENT,
    REL_HWHEEL,
    REL_HWHEEL_HI_RES,
    REL_WHEEL,
    REL_WHEEL_HI_RES,
    REL_X,
    REL_Y,
)
from handoff.input.keymap import LINUX_TO_BUTTON, LINUX_TO_QCODE, is_button

Event = tuple[int, int, int]  # (type, code, value) as read from evdev
InputEvent = dict[str, Any]


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


def is_motion_only(batch: Sequence[InputEvent]) -> bool:
    """True when a batch is relative motion only (the queue may merge it)."""
    return all(event["type"] == "rel" for event in batch)
