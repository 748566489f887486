"""Resetting a passthrough card: what it offers, what to warn, what a pin writes, the ladder.

Pure decisions over :class:`ResetFacts` (read by :mod:`handoff.pci.reset_sysfs`):

before the first start
    :func:`describe` names the function's reset methods (the kernel's
    ``reset_method`` list on Linux 5.15 and later; on older kernels what the
    device offers: FLR from its PCIe capability, or just a ``reset``
    attribute), and :func:`warnings` says what will go wrong: an AMD card of
    vendor-reset's list without vendor-reset loaded, or loaded but not
    selected in ``reset_method``, or a function with no reset at all (the
    second start needs a reboot or a bus reset).
a pinned ``[[passthrough]] reset``
    :func:`pin_value` is what goes into ``reset_method`` for the session, or
    a refusal (an unknown method for that device, listing the ones the
    kernel offers; a kernel without ``reset_method``).
after the VM
    :func:`next_rung` is the ladder for a card with a dead function (config
    space reads 0xffff) or a vanished one: the kernel's reset once, then
    remove + rescan of the card's functions, then the normal return; and
    :func:`give_up_fix` what to do when nothing worked.

Never reads a file: the edge passes what it read.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from handoff.base.errors import PreflightRefusedError
from handoff.pci.address import PciAddress
from handoff.pci.vendor_reset import Family, family_of

#: The kernel that added ``reset_method`` (and device_specific as a choosable method).
RESET_METHOD_KERNEL = (5, 15)
#: What a function's config space reads when it is dead (vendor id of all ones).
DEAD_VENDOR = 0xFFFF


class ResetChoice(enum.Enum):
    """``[[passthrough]] reset``: leave the kernel's order, none, or one of its method names."""

    AUTO = "auto"
    NONE = "none"
    DEVICE_SPECIFIC = "device_specific"
    ACPI = "acpi"
    FLR = "flr"
    AF_FLR = "af_flr"
    PM = "pm"
    BUS = "bus"
    CXL_BUS = "cxl_bus"


class ModuleState(enum.Enum):
    """Whether vendor-reset is loaded, can be loaded, or is not installed."""

    LOADED = "loaded"
    INSTALLED = "installed"
    MISSING = "missing"


@dataclass(frozen=True)
class ResetFacts:
    """What the host says about one function's reset.

    ``methods`` is ``reset_method``'s list (None: no such file: a kernel
    before 5.15, or a function without any reset method on a newer one);
    ``reset_file`` whether ``reset`` exists; ``flr`` whether its PCIe
    capability advertises Function Level Reset; ``kernel`` the running
    kernel's (major, minor), None when unknown.
    """

    address: PciAddress
    vendor: int
    device: int
    kernel: tuple[int, int] | None
    methods: tuple[str, ...] | None
    reset_file: bool
    flr: bool
    vendor_reset: ModuleState = ModuleState.MISSING

    @property
    def kernel_has_reset_method(self) -> bool:
        if self.kernel is None:
            return self.methods is not None
        return self.kernel >= RESET_METHOD_KERNEL

    @property
    def family(self) -> Family | None:
        return family_of(self.vendor, self.device)

    @property
    def has_reset(self) -> bool:
        """Whether the kernel can reset the function at all (a second start works)."""
        if self.methods is not None:
            return bool(self.methods)
        if self.kernel_has_reset_method:
            return False  # 5.15+ hides reset_method when the function has no method
        return self.reset_file


class Problem(enum.Enum):
    """Which reset problem a warning is about."""

    VENDOR_RESET_MISSING = "vendor-reset-missing"  # not installed, or not loaded
    NOT_DEVICE_SPECIFIC = "not-device-specific"  # loaded, but reset_method does not pick it
    NO_RESET = "no-reset"  # no reset method at all


@dataclass(frozen=True)
class ResetWarning:
    """A reset problem found before the first start, and its fix."""

    address: PciAddress
    text: str
    fix: str
    problem: Problem


def reset_method_path(address: PciAddress) -> str:
    return f"/sys/bus/pci/devices/{address}/reset_method"


def describe(facts: ResetFacts) -> str:
    """The function's reset methods as people read them (``flr bus``, ``none``...)."""
    if facts.methods is not None:
        return " ".join(facts.methods) if facts.methods else "none (reset_method is empty)"
    if facts.kernel_has_reset_method:
        return "none"
    offered = ["flr"] if facts.flr else []
    if facts.reset_file:
        offered.append("a kernel reset (this kernel has no reset_method to name it)")
    return ", ".join(offered) or "none"


def warnings(facts: ResetFacts) -> tuple[ResetWarning, ...]:
    """What will go wrong with this function's reset, said before the first start."""
    found: list[ResetWarning] = []
    short = facts.address.short
    family = facts.family
    if family is not None and facts.vendor_reset is not ModuleState.LOADED:
        installed = facts.vendor_reset is ModuleState.INSTALLED
        state = "installed but not loaded" if installed else "not installed"
        found.append(ResetWarning(
            facts.address,
            f"{short} is an AMD {family.value} card: the kernel's own resets do not bring it "
            f"back from a VM, and vendor-reset is {state}",
            ("" if installed else "install vendor-reset (https://github.com/gnif/vendor-reset, "
             "dkms), then ")
            + "load it at boot, before the card is used: echo vendor-reset > "
            "/etc/modules-load.d/vendor-reset.conf, and reboot",
            Problem.VENDOR_RESET_MISSING,
        ))
    elif (
        family is not None
        and facts.methods is not None
        and (not facts.methods or facts.methods[0] != "device_specific")
    ):
        found.append(ResetWarning(
            facts.address,
            f"{short} is an AMD {family.value} card and vendor-reset is loaded, but the "
            f"kernel resets it with {describe(facts)} first, not vendor-reset's device_specific",
            f"echo device_specific > {reset_method_path(facts.address)} (each boot; or "
            'reset = "device_specific" in its [[passthrough]])',
            Problem.NOT_DEVICE_SPECIFIC,
        ))
    if not facts.has_reset:
        found.append(ResetWarning(
            facts.address,
            f"{short} has no reset method: the VM's second start needs a reboot or a bus reset "
            "(the card keeps the state the guest left)",
            "reboot the host between two starts of the VM, or put the card in a slot whose "
            "PCIe port can reset it (its reset_method then lists bus)",
            Problem.NO_RESET,
        ))
    return tuple(found)


def pin_value(choice: ResetChoice, facts: ResetFacts, where: str) -> str | None:
    """What ``reset = choice`` writes to ``reset_method`` (None: nothing), or a refusal.

    ``where`` names the profile key for the message (``gaming.toml: passthrough[0].reset``).
    Refuses, before anything changes: a kernel without ``reset_method``; a
    method the kernel does not offer for this function (listing those it does).
    """
    if choice is ResetChoice.AUTO:
        return None
    short = facts.address.short
    if not facts.kernel_has_reset_method:
        kernel = ".".join(map(str, facts.kernel)) if facts.kernel else "this kernel"
        raise PreflightRefusedError(
            f'{where} = "{choice.value}" needs the kernel\'s reset_method (Linux 5.15 or later); '
            f"the running kernel is {kernel}",
            fix=f'remove reset from {short}\'s [[passthrough]] (or set reset = "auto"), or boot '
            "Linux 5.15 or later",
        )
    offered = facts.methods or ()
    if choice is ResetChoice.NONE:
        return "" if offered else None
    if choice.value not in offered:
        listed = " ".join(offered) or "none"
        choices = ", ".join(f'"{c}"' for c in ("auto", "none", *offered))
        raise PreflightRefusedError(
            f'{where} = "{choice.value}": the kernel offers {short} only these reset '
            f"methods: {listed} ({reset_method_path(facts.address)})",
            fix=f"set reset to one of {choices}",
        )
    return str(choice.value)


# --------------------------------------------------------------------------- after the VM


class Health(enum.Enum):
    """A function after the VM, by its config space (never the cached ``vendor`` file)."""

    ALIVE = "alive"
    DEAD = "dead"  # config space reads all ones
    GONE = "gone"  # no longer on the bus (no sysfs directory)


def health(present: bool, vendor: int | None) -> Health:
    """From the config space's vendor word (None: unreadable)."""
    if not present:
        return Health.GONE
    if vendor is None or vendor == DEAD_VENDOR:
        return Health.DEAD
    return Health.ALIVE


class Rung(enum.Enum):
    """The next step of the ladder for one card."""

    RETURN = "return"  # every function alive: the normal return
    RESET = "reset"  # the kernel's reset of the dead functions, once
    RESCAN = "rescan"  # remove the card's functions, rescan the bus
    GIVE_UP = "give up"  # nothing worked: keep the dead ones in the journal, say the fix


def next_rung(
    healths: Sequence[Health], *, can_reset: bool, reset_tried: bool, rescan_done: bool
) -> Rung:
    """The ladder: reset once, then remove + rescan once, then give up.

    ``reset_tried`` comes from the journal too (a reset journaled before a
    SIGKILL is not repeated); ``rescan_done`` only from this process: a
    rescan a killed process journaled but may not have finished is done again.
    """
    if all(h is Health.ALIVE for h in healths):
        return Rung.RETURN
    if rescan_done:
        return Rung.GIVE_UP
    if can_reset and not reset_tried:
        return Rung.RESET
    return Rung.RESCAN


def give_up_fix(vendor: int, device: int, address: PciAddress) -> str:
    """What to do for a function the ladder could not bring back."""
    fix = (
        f"reboot the host to bring {address.short} back (power it off if it still reads "
        "ffff after a reboot: some cards keep their state across a warm reboot)"
    )
    family = family_of(vendor, device)
    if family is not None:
        fix += (
            f"; for this AMD {family.value} card install vendor-reset and load it at boot so "
            "the next session can reset it (`handoff doctor PROFILE` says how)"
        )
    return fix + "; then `handoff recover`"


def cards(addresses: Sequence[PciAddress]) -> list[list[PciAddress]]:
    """Functions grouped by physical card (their slot), in address order."""
    by_slot: dict[str, list[PciAddress]] = {}
    for address in sorted(addresses):
        by_slot.setdefault(address.slot_address, []).append(address)
    return list(by_slot.values())


_PCI_STATUS = 0x06
_STATUS_CAP_LIST = 0x10
_CAPABILITY_LIST = 0x34
_CAP_ID_EXP = 0x10
_EXP_DEVCAP = 0x04
_DEVCAP_FLR = 1 << 28


def pcie_flr(config: bytes) -> bool:
    """Whether config space advertises Function Level Reset (PCIe DevCap bit 28).

    What the kernel's pcie_has_flr() reads; on kernels without
    ``reset_method`` it is how handoff tells what a function offers.
    """
    if len(config) < 0x40 or not config[_PCI_STATUS] & _STATUS_CAP_LIST:
        return False
    pointer = config[_CAPABILITY_LIST] & 0xFC
    seen: set[int] = set()
    while pointer and pointer not in seen and pointer + 8 <= len(config):
        seen.add(pointer)
        if config[pointer] == _CAP_ID_EXP:
            devcap = int.from_bytes(config[pointer + _EXP_DEVCAP : pointer + _EXP_DEVCAP + 4],
                                    "little")
            return bool(devcap & _DEVCAP_FLR)
        pointer = config[pointer + 1] & 0xFC
    return False
