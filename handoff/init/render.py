"""The profile `handoff init` writes, and what it tells the terminal (pure).

The profile is commented the way profiles/seed-two-gpu.toml is: each choice
says why it was made, and what is left out is there as a commented example.
Every value written is one :func:`handoff.profile.parse_profile` accepts;
``tests/unit/test_init_render.py`` loads and round-trips it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from handoff.init import guest_os
from handoff.init.choose import (
    DiskChoice,
    DiskSource,
    GpuChoice,
    InitPlan,
    NoGpu,
)
from handoff.init.facts import InputDeviceFact, MonitorFact
from handoff.pci.rules import host_need
from handoff.profile import FirmwareType, InputBackend


def _q(value: str | Path) -> str:
    """A TOML basic string (JSON's escaping is TOML's for these characters)."""
    return json.dumps(str(value))


def _comment(text: str, width: int = 78) -> list[str]:
    """``text`` as ``# `` lines no wider than ``width``."""
    lines: list[str] = []
    line = "#"
    for word in text.split():
        if len(line) + 1 + len(word) > width and line != "#":
            lines.append(line)
            line = "#"
        line += " " + word
    lines.append(line)
    return lines


def render_profile(plan: InitPlan, profile_arg: str | None = None) -> str:
    """The whole profile text; ``profile_arg`` names it in the commands it suggests."""
    parts = [
        _header(plan, profile_arg or plan.name),
        _vm(plan),
        _tuning(plan),
        _firmware(plan),
        _disk(plan.disk, plan.guest_os),
        _network(),
        _sound(plan),
        _display(plan),
        _passthrough(plan),
        _input(plan),
        _monitors(plan.facts.monitors),
    ]
    return "\n\n".join("\n".join(p) for p in parts if p) + "\n"


def _header(plan: InitPlan, profile_arg: str) -> list[str]:
    lines = [f"# {plan.name}.toml - written by `handoff init` from this host's hardware.", "#"]
    lines += _comment("What it chose, and why (each choice is explained again at its key):")
    for label, reason in summary_rows(plan):
        lines += ["#   " + line[2:] for line in _comment(f"{label}: {reason}", 74)]
    lines += [
        "#",
        f"# Next: `handoff doctor {profile_arg}` checks this host for this VM, then",
        f"# `handoff run {profile_arg}` runs it. Every key is described in README.md",
        "# and in profiles/seed-two-gpu.toml.",
    ]
    return lines


def _vm(plan: InitPlan) -> list[str]:
    cpu = plan.cpu
    lines = ["[vm]", f"name = {_q(plan.name)}", ""]
    lines += _comment(plan.memory.reason)
    lines += [f"memory = {_q(plan.memory.text)}", ""]
    lines += _comment(plan.cpu.reason)
    lines += [
        f"cpus = {cpu.cpus}",
        f"sockets = {cpu.sockets}",
        f"cores = {cpu.cores}",
        f"threads = {cpu.threads}",
        "",
        "# accel is left to \"auto\": KVM where /dev/kvm works, else TCG emulation (slow).",
        "# A gaming VM without KVM is pointless: accel = \"kvm\" refuses to start without it.",
        "# Run QEMU as an unprivileged account (an existing user):",
        "# user = \"qemu\"",
        "",
        "# First install (Windows): hide the hypervisor from the GPU driver (NVIDIA before",
        "# 465 stopped with code 43) and give Windows time to shut down.",
        "# hide_hypervisor = true",
        "shutdown_timeout = 120",
    ]
    if plan.guest_os is not None:
        lines += guest_os.vm_lines(plan.guest_os)
    return lines


def _tuning(plan: InitPlan) -> list[str]:
    """[cpu] pin = "auto" and, where the host allows, [memory] hugepages (README
    "Performance"); `handoff doctor` shows the pinning it would use."""
    lines = _comment(
        "Each vCPU runs only on its own host CPUs, away from the core the host keeps, "
        "whole cores for the guest's SMT pairs (`handoff doctor` shows the placement); "
        "QEMU's other threads stay on the host's CPUs."
    )
    lines += ["[cpu]", 'pin = "auto"', "", *_comment(plan.memory.hugepages_reason)]
    if plan.memory.hugepages:
        return [*lines, "[memory]", 'hugepages = "2M"']
    return [*lines, "# [memory]", '# hugepages = "2M"']


def _firmware(plan: InitPlan) -> list[str]:
    if plan.guest_os is not None:
        return [*guest_os.firmware_lines(plan.guest_os), "",
                *guest_os.tpm_and_agent_lines(plan.guest_os)]
    fw = plan.firmware
    if fw.type is FirmwareType.SEABIOS:
        lines = _comment(f"Firmware: {fw.reason}.")
        return [*lines, "# [firmware]", '# type = "ovmf"',
                '# code = "/usr/share/OVMF/OVMF_CODE_4M.fd"',
                '# vars_template = "/usr/share/OVMF/OVMF_VARS_4M.fd"']
    assert fw.code is not None
    assert fw.vars_template is not None
    lines = _comment(
        "UEFI firmware (OVMF), as the distribution installed it. code is read-only; the "
        f"guest's boot entries go to its own vars file, {plan.name}.OVMF_VARS.fd next to "
        "this profile, copied from vars_template on the first run."
    )
    return [*lines, "[firmware]", 'type = "ovmf"', f"code = {_q(fw.code)}",
            f"vars_template = {_q(fw.vars_template)}"]


def _disk(disk: DiskChoice, os_choice: guest_os.OsChoice | None = None) -> list[str]:
    if os_choice is not None:
        return [*_disk(disk)[: _install_examples(disk)], *guest_os.cdrom_lines(os_choice)]
    if disk.source is DiskSource.NONE:
        return [
            "# No disk yet. Add one of these (the guest boots from the first):",
            "# an LVM volume, partition or whole disk nothing on the host mounts, as the",
            "# seed does (cache = \"none\" opens it with O_DIRECT):",
            "# [[disk]]",
            '# path = "/dev/vg0/guest"',
            '# format = "raw"',
            '# interface = "virtio"',
            '# cache = "none"',
            '# aio = "native"',
            "# or an image: qemu-img create -f qcow2 guest.qcow2 64G, then",
            "# [[disk]]",
            '# path = "guest.qcow2"',
            '# format = "qcow2"',
            "# (or run handoff init again with --disk PATH or --disk-size SIZE)",
        ]
    assert disk.path is not None
    lines = _comment(disk.reason)
    lines += ["[[disk]]", f"path = {_q(disk.path)}"]
    if disk.source is DiskSource.BLOCK:
        lines += ['format = "raw"', 'interface = "virtio"', 'cache = "none"', 'aio = "native"']
    else:
        lines += [f"format = {_q('qcow2' if disk.qcow2 else 'raw')}", 'interface = "virtio"']
    lines += [
        "# First install (Windows): the install DVD and the virtio-win driver CD:",
        "# [[disk]]",
        '# path = "/path/to/windows.iso"',
        '# media = "cdrom"',
        "# [[disk]]",
        '# path = "/path/to/virtio-win.iso"',
        '# media = "cdrom"',
    ]
    return lines


def _install_examples(disk: DiskChoice) -> int:
    """Where _disk's commented install CD-ROMs begin (--os writes real ones instead)."""
    lines = _disk(disk)
    marker = "# First install (Windows): the install DVD and the virtio-win driver CD:"
    return lines.index(marker) if marker in lines else len(lines)


def _network() -> list[str]:
    return [
        "# User-mode NAT: works everywhere, nothing to set up on the host; the guest",
        "# reaches the network, the network does not reach the guest.",
        "[[network]]",
        'type = "user"',
        'model = "virtio"',
        "# A tap interface bridged to your LAN instead (create tap0 first):",
        "# type = \"tap\"",
        "# ifname = \"tap0\"",
        '# mac = "52:54:00:12:34:56"',
    ]


def _sound(plan: InitPlan) -> list[str]:
    lines = [
        "# First install (Windows): emulated HDA sound through PulseAudio/PipeWire",
        "# (Debian: qemu-system-gui for QEMU's pa module). A passed-through GPU brings",
        "# its own HDMI audio.",
        "# [sound]",
        '# model = "hda"',
        '# backend = "pa"',
    ]
    user = plan.facts.desktop_user
    if user is not None:
        lines.append(f'# user = "{user}"  # the desktop session whose sound server plays it')
    return lines


def _display(plan: InitPlan) -> list[str]:
    if plan.guest_os is not None:
        return guest_os.display_lines(plan.guest_os, not isinstance(plan.gpu, NoGpu))
    install = [
        "# First install (before the GPU's drivers are in the guest): an emulated",
        "# card in a window, and a USB tablet so the pointer follows the window's:",
        '# vga = "std"',
        '# frontend = "gtk"',
        "# tablet = true",
    ]
    if isinstance(plan.gpu, NoGpu):
        return [
            "# No passthrough GPU: an emulated card on a VNC socket in the run directory",
            "# (qemu/vnc.sock; no network port). \"gtk\" shows a window instead (Debian:",
            "# qemu-system-gui).",
            "[display]",
            'vga = "std"',
            'frontend = "vnc"',
            "tablet = true",
        ]
    return [
        "# The guest's screen is the passed-through GPU's own output.",
        "[display]",
        'vga = "none"',
        'frontend = "none"',
        *install,
    ]


def _passthrough(plan: InitPlan) -> list[str]:
    gpu = plan.gpu
    if isinstance(gpu, NoGpu):
        return [
            "# No GPU is passed through (--gpu none). `handoff groups` shows what could be:",
            "# [[passthrough]]",
            '# address = "01:00.0"',
        ]
    lines: list[str] = []
    lines += _comment(
        f"The GPU: {gpu.reason}. Its whole IOMMU group {gpu.group} moves to vfio-pci while "
        "the VM runs and back to its drivers afterwards."
    )
    for index, device in enumerate(gpu.functions):
        if lines and index:
            lines.append("")
        lines += _function(gpu, index, device.address.short)
    return lines


def _function(gpu: GpuChoice, index: int, address: str) -> list[str]:
    device = gpu.functions[index]
    lines = [f"# {device.describe()}" + (": the GPU" if index == 0 else
             f": in IOMMU group {gpu.group} with it, so it goes too (the card's HDMI audio)"
             if device.base_class == 0x04 else f": in IOMMU group {gpu.group} with it")]
    lines += ["[[passthrough]]", f"address = {_q(address)}"]
    if index == 0 and gpu.allow_in_group:
        lost = "; ".join(f"{d.describe()}, {host_need(d)}" for d in gpu.allow_in_group)
        lines += _comment(
            f"allow_in_group: passing IOMMU group {gpu.group} also moves {lost} to vfio-pci: "
            "the host goes without it while the VM runs."
        )
        lines.append("allow_in_group = [" + ", ".join(
            _q(d.address.short) for d in gpu.allow_in_group) + "]")
    return lines


def _input(plan: InitPlan) -> list[str]:
    backend = plan.input.backend
    lines = _comment(f"Keyboard and mouse: {plan.input.reason}.")
    lines += ["[input]", f"backend = {_q(backend.value)}"]
    if backend is InputBackend.NONE:
        return [*lines, '# backend = "qmp" hands over keyboard and mouse with a hotkey']
    lines += [
        "# Both Ctrl keys together switch keyboard and mouse between host and guest",
        "# (`handoff switch` does it too). ScrollLock instead: hotkey = [\"KEY_SCROLLLOCK\"]",
        'hotkey = ["KEY_LEFTCTRL", "KEY_RIGHTCTRL"]',
        'start_in = "host"',
        "# Every keyboard and mouse is handed over (devices left out). To pick some,",
        "# paste selectors from this host's devices at the time of handoff init:",
    ]
    lines += _input_devices(plan.facts.inputs)
    lines.append('# exclude = ["name:Power Button"]')
    return lines


def _monitors(monitors: Iterable[MonitorFact] | None) -> list[str]:
    """The monitors ddcutil found, as a commented [monitor] (only when ddcutil is installed)."""
    if monitors is None:
        return []
    found = list(monitors)
    lines = _comment(
        "The monitor's input can follow keyboard and mouse (DDC/CI through ddcutil). "
        "Monitors `ddcutil detect` found on this host:"
    )
    if not found:
        lines.append("#   (none answered: turn DDC/CI on in the monitor's menu; modprobe i2c-dev)")
    lines += [f"#   ddc_bus = {m.bus}" + (f" (display {m.display})" if m.display else "")
              + f": {m.model or 'unknown model'}" for m in found]
    bus = found[0].bus if found else 5
    return [
        *lines,
        "# [monitor]",
        f"# ddc_bus = {bus}",
        '# guest_input = "DisplayPort1"   # the guest GPU\'s input (`ddcutil capabilities`)',
        '# host_input = "HDMI1"',
    ]


def _input_devices(inputs: Iterable[InputDeviceFact]) -> list[str]:
    found = list(inputs)
    if not found:
        return ["#   (none found: no keyboard or mouse, or udev could not be asked)",
                '# devices = ["by-id:usb-Logitech_USB_Receiver-event-kbd"]']
    rows = [f"#   {_q(d.selector)}  {d.kinds}: {d.name}" for d in found]
    return [*rows, f"# devices = [{_q(found[0].selector)}]"]


# --------------------------------------------------------------------------- the terminal


def summary_rows(plan: InitPlan) -> list[tuple[str, str]]:
    gpu = plan.gpu
    gpu_text = gpu.reason
    if isinstance(gpu, GpuChoice):
        gpu_text = (
            f"{gpu.gpu.describe()} with "
            + (", ".join(d.address.short for d in gpu.functions[1:]) or "nothing else")
            + f" (IOMMU group {gpu.group}): {gpu.reason}"
        )
    return [
        ("GPU", gpu_text),
        ("CPU", plan.cpu.reason),
        ("memory", plan.memory.reason),
        ("disk", plan.disk.reason),
        ("firmware", plan.firmware.reason if plan.guest_os is None
         else plan.guest_os.firmware_reason),
        ("input", plan.input.reason),
        *([("guest OS", plan.guest_os.reason)] if plan.guest_os is not None else []),
        ("network", "user-mode NAT (works everywhere); a tap example is commented"),
    ]


def render_summary(plan: InitPlan, written: str, profile_arg: str) -> list[str]:
    """What `handoff init` prints: each choice and why, notes, then the next commands."""
    lines = [f"handoff init: wrote {written}"]
    lines += [f"  {label}: {reason}" for label, reason in summary_rows(plan)]
    if isinstance(plan.gpu, GpuChoice):
        lines += [f"  note: {note}" for note in plan.gpu.notes]
        if plan.gpu.allow_in_group:
            lines.append("  warning: allow_in_group: the host goes without "
                         + ", ".join(d.describe() for d in plan.gpu.allow_in_group)
                         + " while the VM runs")
    lines.append(f"next: handoff doctor {profile_arg}")
    lines.append(f"then: handoff run {profile_arg}")
    return lines
