"""Single-GPU hand-over, the pure core: what is taken from the host's display, in which order.

A host whose only GPU goes to the guest first takes its own display off the
card: the units drawing on it (the display manager) are stopped, every
virtual-terminal console bound to a framebuffer (fbcon) is unbound, and the
firmware framebuffer platform device on the card (efi-framebuffer,
simple-framebuffer / simpledrm, vesa-framebuffer) is unbound. After the VM
the same steps run backwards, each one only once the one before it is
verified; the units start last, once the card's DRM node is back.

Everything here decides from values read beforehand by the edge
(:mod:`handoff.display.sysfs`) and changes nothing: no file, process or
systemd access.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: What fbcon's vtconsole is called (``/sys/class/vtconsole/vtconN/name``):
#: "(M) frame buffer device" or "(S) frame buffer device". The VGA text
#: console is "(S) VGA+", the dummy one "(S) dummy device".
FRAMEBUFFER_CONSOLE = "frame buffer device"

#: Platform drivers of firmware framebuffers (the firmware's mode, before the GPU's driver).
#: simpledrm registers itself as "simple-framebuffer" too.
FIRMWARE_FB_DRIVERS = ("efi-framebuffer", "simple-framebuffer", "vesa-framebuffer")

#: The fix when the host driver cannot take the card back.
RETURN_FIX = (
    "an AMD card with the reset bug needs the vendor-reset module "
    "(https://github.com/gnif/vendor-reset, then `handoff recover`); otherwise reboot the host "
    "(the display comes back with the boot)"
)


@dataclass(frozen=True)
class VtConsole:
    """One ``/sys/class/vtconsole/vtconN``: its directory name, its ``name`` text, ``bind``."""

    node: str  # vtcon0
    name: str  # "(M) frame buffer device"
    bound: bool

    @property
    def framebuffer(self) -> bool:
        return FRAMEBUFFER_CONSOLE in self.name


def consoles_to_unbind(consoles: Iterable[VtConsole]) -> tuple[VtConsole, ...]:
    """Every vtconsole bound to a framebuffer, found by its name, never by index."""
    return tuple(c for c in consoles if c.framebuffer and c.bound)


#: Why the kernel keeps fbcon bound when nothing can take the consoles over, and the fix.
NO_FALLBACK = (
    "the framebuffer console is the only console driver registered (no dummy or VGA "
    "console in /sys/class/vtconsole), and the kernel does not unbind a console driver "
    "without another one to hand the terminals to (the write to bind is silently ignored)"
)
NO_FALLBACK_FIX = (
    "let the GPU's own driver be the first display driver at boot (another framebuffer "
    "driver that probes first leaves fbcon alone: the kernel then drops its dummy "
    "console), or make another GPU the primary display"
)


def console_fallback(consoles: Iterable[VtConsole]) -> bool:
    """Whether another console driver (dummy, VGA text) can take the terminals from fbcon."""
    return any(not c.framebuffer for c in consoles)


def consoles_to_rebind(
    consoles: Iterable[VtConsole], unbound: Iterable[str]
) -> tuple[VtConsole, ...]:
    """The framebuffer consoles to bind again: those by the names recorded as unbound.

    Looked up by name again (a console's index may change when a driver
    re-registers); ones already bound are left as they are.
    """
    names = set(unbound)
    return tuple(c for c in consoles if c.framebuffer and c.name in names and not c.bound)


@dataclass(frozen=True)
class MemoryRange:
    """An inclusive physical address range (a BAR, a framebuffer's memory)."""

    start: int
    end: int

    def within(self, other: MemoryRange) -> bool:
        return other.start <= self.start and self.end <= other.end


@dataclass(frozen=True)
class FirmwareFb:
    """A firmware framebuffer platform device (``efi-framebuffer.0``).

    ``memory``: its framebuffer's range when the host tells it (/proc/iomem);
    ``parent``: the PCI address its sysfs device sits under (newer kernels
    parent it to the card), else None.
    """

    device: str
    driver: str | None  # bound platform driver, None when unbound
    memory: MemoryRange | None
    parent: str | None = None


def firmware_fb_on_card(
    fbs: Iterable[FirmwareFb], card: str, bars: Sequence[MemoryRange]
) -> FirmwareFb | None:
    """The bound firmware framebuffer device sitting on ``card``, if there is one.

    On the card when the kernel parents it to the card, or when its memory
    lies inside one of the card's BARs (the firmware's mode lives in the
    card's VRAM aperture).
    """
    for fb in fbs:
        if fb.driver is None:
            continue
        if fb.parent == card:
            return fb
        if fb.memory is not None and any(fb.memory.within(bar) for bar in bars):
            return fb
    return None


class DisplayStep(enum.StrEnum):
    """One step of the hand-over, journaled (write-ahead) before it is made."""

    STOP_UNITS = "stop-units"
    UNBIND_CONSOLES = "unbind-consoles"
    UNBIND_FRAMEBUFFER = "unbind-framebuffer"
    # After the VM, in this order:
    CARD_BACK = "card-back"  # the card on its host driver, its DRM node present
    REBIND_FRAMEBUFFER = "rebind-framebuffer"
    REBIND_CONSOLES = "rebind-consoles"
    START_UNITS = "start-units"


#: Each step's undo, run in reverse order of the steps made.
UNDO: dict[DisplayStep, DisplayStep] = {
    DisplayStep.STOP_UNITS: DisplayStep.START_UNITS,
    DisplayStep.UNBIND_CONSOLES: DisplayStep.REBIND_CONSOLES,
    DisplayStep.UNBIND_FRAMEBUFFER: DisplayStep.REBIND_FRAMEBUFFER,
}


@dataclass(frozen=True)
class Takeover:
    """What the hand-over takes from the host, decided before any change."""

    card: str
    units: tuple[str, ...]  # active units to stop
    consoles: tuple[VtConsole, ...]
    framebuffer: FirmwareFb | None

    def steps(self) -> tuple[DisplayStep, ...]:
        """The steps before the VM, in order; each needed one only."""
        steps: list[DisplayStep] = []
        if self.units:
            steps.append(DisplayStep.STOP_UNITS)
        if self.consoles:
            steps.append(DisplayStep.UNBIND_CONSOLES)
        if self.framebuffer is not None:
            steps.append(DisplayStep.UNBIND_FRAMEBUFFER)
        return tuple(steps)

    def render(self) -> str:
        lines = [f"host display hand-over of {self.card}:"]
        lines.append("  stop " + (", ".join(self.units) if self.units else "no unit (none active)"))
        names = ", ".join(f"{c.node} {c.name}" for c in self.consoles)
        lines.append("  unbind " + (names or "no framebuffer console (none bound)"))
        if self.framebuffer is not None:
            lines.append(f"  unbind {self.framebuffer.device} from {self.framebuffer.driver}")
        lines.append("afterwards: the card back on its driver, then the reverse, units last")
        return "\n".join(lines)


def plan_return(made: Sequence[DisplayStep], *, card_moved: bool = True) -> tuple[DisplayStep, ...]:
    """The steps after the VM for the steps ``made`` before it (write-ahead: started ones).

    The card comes back first (when it was handed over), then each made
    step is undone in reverse order: framebuffer, consoles, units last.
    """
    undo = tuple(UNDO[step] for step in reversed(made) if step in UNDO)
    return ((DisplayStep.CARD_BACK,) if card_moved else ()) + undo


@dataclass(frozen=True)
class ReturnFailure:
    """The host driver could not take the card back: what failed, and the fix."""

    device: str
    driver: str
    what: str
    reset: str  # what the reset attempt did

    def message(self) -> str:
        return (
            f"the host display was NOT restored: {self.device} did not come back on "
            f"{self.driver}: {self.what}; {self.reset}; the units stay stopped and the journal "
            "stays in place"
        )

    @property
    def fix(self) -> str:
        return RETURN_FIX

    def text(self) -> str:
        return f"{self.message()}\n  fix: {self.fix}"
