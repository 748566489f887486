"""`handoff init --os`: the guest OS's part of the profile init writes. Pure.

``--os windows11`` (and ``windows10``, ``linux``) writes what Windows 11's
installer and today's anti-cheat want and what libvirt/virt-manager give a
Windows guest: UEFI with Secure Boot (Microsoft's keys enrolled, chosen from
QEMU's firmware descriptors), ``vm.os`` (the Hyper-V enlightenments and the
Windows clock), the install ISO and the virtio-win driver ISO as CD-ROMs,
and the emulated VGA in a window for the install, with what to change once
the guest's GPU driver is in.

It also turns on TPM 2.0 (``[tpm] type = "emulated"``: swtpm, run by
handoff) and the guest agent (``[guest_agent] enabled = true``).
"""

from __future__ import annotations

import difflib
import enum
import json
from dataclasses import dataclass
from pathlib import Path

from handoff.base.errors import HandoffError


class InitOsError(HandoffError):
    """``--os`` names no guest OS handoff knows."""


class InitOs(enum.Enum):
    WINDOWS11 = "windows11"
    WINDOWS10 = "windows10"
    LINUX = "linux"

    @property
    def windows(self) -> bool:
        return self in (InitOs.WINDOWS11, InitOs.WINDOWS10)

    @property
    def label(self) -> str:
        return {"windows11": "Windows 11", "windows10": "Windows 10", "linux": "Linux"}[
            self.value
        ]


#: The sections every guest OS init writes gets besides its firmware.
TPM_AND_AGENT: tuple[tuple[str, ...], ...] = (
    ("[tpm]", 'type = "emulated"'),
    ("[guest_agent]", "enabled = true"),
)


def parse_init_os(text: str) -> InitOs:
    """``--os TEXT`` → InitOs, or one clear line with "did you mean"."""
    for member in InitOs:
        if member.value == text:
            return member
    choices = [m.value for m in InitOs]
    close = difflib.get_close_matches(text.lower(), choices, n=1, cutoff=0.5)
    fix = (f"did you mean {close[0]}? pass --os {close[0]}" if close
           else f"pass --os {choices[0]} (choices: {', '.join(choices)})")
    raise InitOsError(
        f"--os: unknown guest OS {json.dumps(text)}; expected one of {', '.join(choices)}",
        fix=fix,
    )


@dataclass(frozen=True)
class OsChoice:
    """The guest OS and its install media (absolute paths, or None: commented examples)."""

    os: InitOs
    iso: Path | None = None
    virtio_win: Path | None = None

    @property
    def firmware_reason(self) -> str:
        return ("OVMF with Secure Boot and Microsoft's keys, chosen from QEMU's firmware "
                "descriptors when the VM runs")

    @property
    def reason(self) -> str:
        extra = "Hyper-V enlightenments and the Windows clock, " if self.os.windows else ""
        return (f"--os {self.os.value}: UEFI with Secure Boot, {extra}the install ISO in a "
                "window (TPM and guest agent: commented until this handoff has them)")


def _q(value: object) -> str:
    return json.dumps(str(value))


def vm_lines(choice: OsChoice) -> list[str]:
    """The [vm] keys: os, and the Hyper-V note."""
    if not choice.os.windows:
        return [
            "",
            f"# The guest is {choice.os.label}: no Hyper-V enlightenments, the RTC in UTC.",
            'os = "linux"',
        ]
    text = (
        f"The guest is {choice.os.label}: the Hyper-V enlightenments libvirt gives Windows "
        '(hyperv = "auto": hv-relaxed, hv-vapic, hv-spinlocks, hv-vpindex, hv-runtime, '
        "hv-synic, hv-stimer, hv-reset, hv-frequencies, hv-time, hv-tlbflush, hv-ipi; each one "
        "this QEMU lacks is dropped with a warning), and the Windows clock: RTC in local time "
        "with slew, PIT lost ticks delayed, no HPET."
    )
    return ["", *[f"# {line}" for line in _wrap(text)], 'os = "windows"']


def firmware_lines(choice: OsChoice) -> list[str]:
    why = ("Windows 11's installer refuses a machine without it, and anti-cheat games ask "
           "for it" if choice.os is InitOs.WINDOWS11 else "the guest's boot chain is signed")
    text = (
        f"UEFI with Secure Boot ({why}). handoff picks the build from QEMU's firmware "
        "descriptors (/usr/share/qemu/firmware: Debian's OVMF_CODE_4M.ms.fd, with Microsoft's "
        "keys enrolled in OVMF_VARS_4M.ms.fd), turns on SMM and secure pflash, and copies the "
        "VM's own vars file next to this profile on the first run. `handoff doctor` shows the "
        "build it chose."
    )
    return [
        *[f"# {line}" for line in _wrap(text)],
        "[firmware]",
        'type = "ovmf"',
        "secure_boot = true",
    ]


def tpm_and_agent_lines(choice: OsChoice) -> list[str]:
    tpm = ("Windows 11 requires a TPM 2.0" if choice.os is InitOs.WINDOWS11
           else "a TPM 2.0 for BitLocker and measured boot")
    text = (
        f"{tpm}: swtpm emulates it, started and stopped by handoff, its state kept next to "
        "this profile (NAME.tpm). The guest agent (qemu-ga; in Windows from the virtio-win "
        "CD) gives a clean shutdown and the OS name in `handoff status`."
    )
    lines = [f"# {line}" for line in _wrap(text)]
    for section in TPM_AND_AGENT:
        lines += [*section, ""]
    return lines[:-1]


def cdrom_lines(choice: OsChoice) -> list[str]:
    """The install ISO and the virtio-win ISO as CD-ROMs after the system disk."""
    lines = [
        "",
        f"# The {choice.os.label} installer. The (empty) system disk above boots first and",
        "# falls through to it; once installed, the disk boots. Remove both CD-ROMs when",
        "# done (or keep the virtio-win one for its guest tools).",
    ]
    iso = choice.iso
    lines += ["[[disk]]", f"path = {_q(iso)}", 'media = "cdrom"'] if iso else [
        "# [[disk]]", '# path = "/path/to/install.iso"', '# media = "cdrom"']
    if not choice.os.windows:
        return lines
    lines += [
        "",
        "# The virtio-win drivers (https://fedorapeople.org/groups/virt/virtio-win/): the",
        "# installer sees no disk until you choose \"Load driver\" and browse this CD",
        "# (viostor\\w11\\amd64 for the disk, NetKVM for the network).",
    ]
    win = choice.virtio_win
    lines += ["[[disk]]", f"path = {_q(win)}", 'media = "cdrom"'] if win else [
        "# [[disk]]", '# path = "/path/to/virtio-win.iso"', '# media = "cdrom"']
    return lines


def display_lines(choice: OsChoice, has_gpu: bool) -> list[str]:
    after = (
        "After installing, once the GPU's driver is in the guest: set vga = \"none\" and "
        "frontend = \"none\" (the passed-through GPU's monitor is the screen) and tablet = "
        "false."
        if has_gpu else
        "After installing: add the GPU to pass through ([[passthrough]], `handoff groups`), "
        "then set vga = \"none\" and frontend = \"none\"."
    )
    return [
        f"# Installing {choice.os.label}: the emulated VGA in a window (Debian: qemu-system-gui;",
        "# frontend = \"vnc\" puts it on a unix socket instead), with a USB tablet so the",
        "# pointer follows the window's.",
        *[f"# {line}" for line in _wrap(after)],
        "[display]",
        'vga = "std"',
        'frontend = "gtk"',
        "tablet = true",
    ]


def _wrap(text: str, width: int = 76) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines
