"""The host display hand-over as the session plan decides it. Pure.

From the session's one read of the host (:class:`DisplayFacts`: the
vtconsoles, the firmware framebuffers, each passthrough function's BARs)
and the GPU hand-off the plan decided (the card: the boot GPU among the
requested display functions), the plan says what the hand-over takes: the
framebuffer consoles, the firmware framebuffer on the card, the units of
``stop_units`` (stopped only if they run then: whether a unit runs is the
resource's to read at acquire, like who holds a node). Where fbcon could not
be unbound (no other console driver), it is refused here.

The resource executes the plan's :class:`~handoff.display.model.Takeover`;
at acquire it reads the consoles and framebuffers again only to check them
(:func:`takeover_drift`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from handoff.base.errors import HandoffError, PreflightRefusedError
from handoff.display.model import (
    NO_FALLBACK,
    NO_FALLBACK_FIX,
    FirmwareFb,
    MemoryRange,
    Takeover,
    VtConsole,
    console_fallback,
    consoles_to_unbind,
    firmware_fb_on_card,
)
from handoff.pci.address import PciAddress
from handoff.pci.model import PciDevice

__all__ = ["DisplayFacts", "plan_takeover", "takeover_drift", "try_plan_takeover"]


@dataclass(frozen=True)
class DisplayFacts:
    """The display side of the host, read once (:mod:`handoff.display.sysfs`)."""

    consoles: tuple[VtConsole, ...]
    framebuffers: tuple[FirmwareFb, ...]
    bars: tuple[tuple[PciAddress, tuple[MemoryRange, ...]], ...] = ()


def choose_card(devices: Sequence[PciDevice]) -> PciDevice:
    """The card the display hand-over takes: the boot VGA among ``devices``, else the first GPU."""
    cards = [d for d in devices if d.is_display]
    card = next((d for d in cards if d.boot_vga), cards[0] if cards else None)
    if card is None:
        raise PreflightRefusedError(
            "refusing the display hand-over: no [[passthrough]] device is a GPU "
            "(display class)",
            fix="list the GPU's address in [[passthrough]] (`handoff groups`)",
        )
    return card


def plan_takeover(
    requested: Sequence[PciDevice], stop_units: Sequence[str], facts: DisplayFacts
) -> Takeover:
    """What the hand-over takes from the host, or PreflightRefusedError (nothing changed).

    ``requested``: the plan's moving functions the profile names (the card among them).
    """
    card = choose_card(requested)
    if consoles_to_unbind(facts.consoles) and not console_fallback(facts.consoles):
        raise PreflightRefusedError(f"refusing the display hand-over: {NO_FALLBACK}",
                                    fix=NO_FALLBACK_FIX)
    framebuffer = firmware_fb_on_card(
        facts.framebuffers, str(card.address), dict(facts.bars).get(card.address, ())
    )
    return Takeover(str(card.address), tuple(stop_units), consoles_to_unbind(facts.consoles),
                    framebuffer)


def try_plan_takeover(
    requested: Sequence[PciDevice], stop_units: Sequence[str], facts: DisplayFacts
) -> tuple[Takeover | None, HandoffError | None]:
    """:func:`plan_takeover`, its refusal returned instead of raised (the plan keeps it)."""
    try:
        return plan_takeover(requested, stop_units, facts), None
    except HandoffError as refusal:
        return None, refusal


def takeover_drift(planned: Takeover, consoles: Sequence[VtConsole],
                   framebuffers: Sequence[FirmwareFb]) -> list[str]:
    """What differs, in the consoles and the framebuffer the hand-over unbinds, between
    the plan's read and the host now (empty: as planned)."""
    out: list[str] = []
    now = consoles_to_unbind(consoles)
    if [c.name for c in now] != [c.name for c in planned.consoles]:
        was = ", ".join(c.name for c in planned.consoles) or "none"
        out.append(f"the framebuffer consoles bound were {was}, are "
                   f"{', '.join(c.name for c in now) or 'none'} now")
    fb = planned.framebuffer
    if fb is not None:
        again = {f.device: f for f in framebuffers}.get(fb.device)
        if again is None or again.driver != fb.driver:
            where = again.driver or "no driver" if again is not None else "gone"
            out.append(f"{fb.device} was on {fb.driver} when the session was planned, is "
                       f"{'on ' + where if again is not None else where} now")
    return out
