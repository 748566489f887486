"""Profiles: a VM described in TOML, turned into typed, validated values.

A profile is the only thing a person writes. Everything downstream (the QEMU
argv, the PCI plan, the input plan) is derived from a :class:`Profile` by pure
functions, so the profile must be complete and checked before anything runs.

The TOML layout (see profiles/*.toml for commented examples)::

    [vm]          name, memory, cpus, cpu model and flags, accel, machine,
                  user (QEMU runs unprivileged), shutdown_timeout, extra_args,
                  os (windows: Hyper-V and its clock), hyperv
    [firmware]    type = "seabios" | "ovmf", code, vars, vars_template, secure_boot
    [[disk]]      path, format, interface, cache, aio, media, readonly
    [[network]]   type = "user" | "tap" | "bridge", model, mac, ifname, bridge
    [sound]       model = "hda" | "none", backend
    [display]     vga, frontend, tablet
    [[passthrough]]  address, x_vga, romfile, multifunction, allow_in_group
    [host_display] handover, stop_units
    [input]       backend, hotkey, start_in, devices, exclude, escape_hotkey
    [cpu]         pin = "none" | "auto" | ["2,8", ...], emulator, isolate, governor
    [memory]      hugepages = "none" | "2M" | "1G"
    [tpm]         type = "none" | "emulated", state
    [guest_agent] enabled

One job per module: :mod:`.model` (the frozen dataclasses and enums, and the
key table derived from them), :mod:`.parse` (TOML text → Profile, or a
ProfileError with file, key, value, expectation and fix) and :mod:`.render`
(Profile → TOML). Apart from :func:`load_profile` reading its file, nothing
here touches the host, so ``handoff argv`` works on a machine without the
disks: the host half (vm.user exists and can open its files, the files exist
and are of the right kind) is handoff.checks.profile_files, and creating the
OVMF vars copy is handoff.qemu.firmware_vars. This package must never gain either.
"""

from handoff.base.errors import ProfileError
from handoff.profile.input_section import selector_kind
from handoff.profile.model import (
    RESERVED_NAMES,
    SECTIONS,
    Accel,
    Accelerator,
    AudioBackend,
    Control,
    Cpu,
    Disk,
    DiskAio,
    DiskCache,
    DiskFormat,
    DiskInterface,
    DiskMedia,
    Display,
    DisplayFrontend,
    Firmware,
    FirmwareType,
    GuestAgent,
    GuestOs,
    Hook,
    HookEvent,
    HostDisplay,
    HyperV,
    Input,
    InputBackend,
    InputMode,
    LookingGlass,
    LookingGlassDevice,
    Memory,
    Monitor,
    MonitorFollow,
    Network,
    NetworkType,
    NicModel,
    Passthrough,
    Profile,
    Section,
    SelectorKind,
    Share,
    Sound,
    SoundModel,
    Tpm,
    TpmType,
    Usb,
    Vga,
    Vm,
    default_vga,
    guest_topology,
)
from handoff.profile.parse import (
    MAX_MEMORY_MIB,
    MIN_MEMORY_MIB,
    load_profile,
    parse_memory,
    parse_profile,
)
from handoff.profile.render import profile_to_toml

__all__ = [
    "MAX_MEMORY_MIB",
    "MIN_MEMORY_MIB",
    "RESERVED_NAMES",
    "SECTIONS",
    "Accel",
    "Accelerator",
    "AudioBackend",
    "Control",
    "Cpu",
    "Disk",
    "DiskAio",
    "DiskCache",
    "DiskFormat",
    "DiskInterface",
    "DiskMedia",
    "Display",
    "DisplayFrontend",
    "Firmware",
    "FirmwareType",
    "GuestAgent",
    "GuestOs",
    "Hook",
    "HookEvent",
    "HostDisplay",
    "HyperV",
    "Input",
    "InputBackend",
    "InputMode",
    "LookingGlass",
    "LookingGlassDevice",
    "Memory",
    "Monitor",
    "MonitorFollow",
    "Network",
    "NetworkType",
    "NicModel",
    "Passthrough",
    "Profile",
    "ProfileError",
    "Section",
    "SelectorKind",
    "Share",
    "Sound",
    "SoundModel",
    "Tpm",
    "TpmType",
    "Usb",
    "Vga",
    "Vm",
    "default_vga",
    "guest_topology",
    "load_profile",
    "parse_memory",
    "parse_profile",
    "profile_to_toml",
    "selector_kind",
]
