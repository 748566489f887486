"""A single-GPU profile's host display ([host_display] handover = true), read-only.

What the hand-over will take from the host and bring back: the card
(boot_vga), the framebuffer vtconsoles (by name), the firmware framebuffer
on the card, the units it stops (do they exist?), whether contrib's
``handoff@.service`` is installed (the way to run it), and the card's ROM
(single-GPU cards often need a ROM file: the copy the firmware ran is
shadowed once the host booted from it).
"""

from __future__ import annotations

from pathlib import Path

from handoff.base import systemctl
from handoff.base.errors import PciError
from handoff.checks import Check, DoctorEnv, fail, ok, warn
from handoff.display.model import (
    NO_FALLBACK,
    NO_FALLBACK_FIX,
    console_fallback,
    consoles_to_unbind,
    firmware_fb_on_card,
)
from handoff.display.plan import choose_card
from handoff.display.sysfs import read_bars, read_firmware_fbs, read_vtconsoles
from handoff.pci.address import PciAddress
from handoff.pci.sysfs import device_dir, read_device
from handoff.profile import Profile

#: Where systemd looks for contrib's unit (admin, package, Debian's /lib).
UNIT_DIRS = (Path("/etc/systemd/system"), Path("/usr/lib/systemd/system"),
             Path("/lib/systemd/system"))
UNIT = "handoff@.service"


def check_host_display(
    env: DoctorEnv, profile: Profile, runner: systemctl.Runner | None = None,
    unit_dirs: tuple[Path, ...] = UNIT_DIRS,
) -> list[Check]:
    if not profile.host_display.handover:
        return []
    runner = runner or systemctl.SubprocessRunner()
    entries = [p for p in profile.passthrough if not p.live]
    cards = []
    for entry in entries:
        try:
            device = read_device(env.host, entry.address)
        except PciError as err:
            return [fail("host-display", err.message, err.fix or "check the address")]
        if device.is_display:
            cards.append((entry, device))
    if not cards:
        return [fail("host-display", "handover = true but no [[passthrough]] device is a GPU",
                     "list the GPU's address in [[passthrough]] (`handoff groups`)")]
    card = choose_card([device for _, device in cards])  # the hand-over's own rule
    entry = next(e for e, device in cards if device is card)
    return [
        _boot_vga(card.address.short, card.boot_vga),
        _consoles(env),
        _framebuffer(env, str(card.address), card.address),
        _units(runner, profile.host_display.stop_units),
        _service(profile.name, unit_dirs),
        _rom(env, entry.romfile, card.address),
    ]


def _boot_vga(short: str, boot_vga: bool) -> Check:
    if boot_vga:
        return ok("host-display:boot-vga",
                  f"{short} is the boot GPU (boot_vga=1): the host's display goes with it "
                  "and comes back after the VM")
    return ok("host-display:boot-vga",
              f"{short} is not the boot GPU (boot_vga=0): handover only stops the units")


def _consoles(env: DoctorEnv) -> Check:
    consoles = read_vtconsoles(env.host)
    found = consoles_to_unbind(consoles)
    if found and not console_fallback(consoles):
        return fail("host-display:consoles", NO_FALLBACK, NO_FALLBACK_FIX)
    if not found:
        return ok("host-display:consoles", "no vtconsole is bound to a framebuffer")
    names = ", ".join(f"{c.node} ({c.name})" for c in found)
    return ok("host-display:consoles", f"unbound during the VM, bound again after: {names}")


def _framebuffer(env: DoctorEnv, card: str, address: PciAddress) -> Check:
    fb = firmware_fb_on_card(read_firmware_fbs(env.host), card, read_bars(env.host, address))
    if fb is None:
        return ok("host-display:framebuffer",
                  "no firmware framebuffer (efi-/simple-/vesa-framebuffer) is bound on the card")
    return ok("host-display:framebuffer",
              f"{fb.device} ({fb.driver}) sits on the card: unbound during the VM")


def _units(runner: systemctl.Runner, units: tuple[str, ...]) -> Check:
    if not units:
        return warn("host-display:units", "stop_units is empty: nothing is stopped",
                    'add the display manager: stop_units = ["display-manager.service"]')
    missing = [u for u in units if not systemctl.unit_exists(runner, u)]
    if missing:
        return warn("host-display:units", f"no such unit: {', '.join(missing)}",
                    "check the names with `systemctl list-units --type=service`")
    states = ", ".join(f"{u} ({'active' if systemctl.is_active(runner, u) else 'inactive'})"
                       for u in units)
    return ok("host-display:units", f"stopped before, started after: {states}")


def _service(profile: str, unit_dirs: tuple[Path, ...]) -> Check:
    found = [d / UNIT for d in unit_dirs if (d / UNIT).is_file()]
    if found:
        return ok("host-display:service",
                  f"{found[0]} is installed: `systemctl start handoff@{profile}`")
    return warn(
        "host-display:service",
        f"{UNIT} is not installed: a run from the desktop would die with it",
        "install -m 0644 contrib/systemd/handoff@.service /etc/systemd/system/ && "
        f"systemctl daemon-reload; then `systemctl start handoff@{profile}`",
    )


def _rom(env: DoctorEnv, romfile: Path | None, address: PciAddress) -> Check:
    if romfile is not None:
        if romfile.is_file():
            return ok("host-display:rom", f"romfile {romfile} is given to the guest")
        return fail("host-display:rom", f"romfile {romfile} does not exist",
                    "dump the card's ROM (see the fix without romfile) or fix the path")
    rom = device_dir(env.host, address) / "rom"
    saved = f"/etc/handoff/{address.short.replace(':', '-')}.rom"
    dump = (f"echo 1 > {rom}; cat {rom} > {saved}; echo 0 > {rom}; then "
            f'romfile = "{saved}" in its [[passthrough]] entry')
    if not rom.exists():
        return warn("host-display:rom", "the card shows no ROM in sysfs",
                    "use the card's ROM from its vendor (or a dump from another machine) "
                    "as romfile")
    return warn(
        "host-display:rom",
        f"no romfile: the guest gets the ROM the host booted from ({rom} exists), which a "
        "single-GPU card often only has in a shadowed, unusable copy",
        f"dump it once, as root, before any VM: {dump}",
    )
