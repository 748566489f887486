"""The edge half of :mod:`handoff.session.plan`: read the host facts a plan needs.

Read-only: the accelerator choice, the account QEMU runs as, the IOMMU
group of each passthrough device and (for the hand-off the plan decides)
those groups' members with their drivers, and for a tuned profile the CPU topology,
hugepage pools and cpufreq state. ``strict`` is ``handoff run``'s (an
impossible KVM request or a missing ``vm.user`` refuses); ``handoff argv``
and doctor show what they can instead.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from handoff.base.errors import HandoffError, HostError, QemuError
from handoff.base.host import HostPaths, qemu_account
from handoff.pci.address import PciAddress
from handoff.profile import Accelerator, FirmwareType, Profile, SoundModel
from handoff.qemu.accel import choose_accel
from handoff.session.plan import HostFacts, QemuOwner

if TYPE_CHECKING:  # start-up: loaded by the profiles that use them
    from handoff.desk.sound import SoundServer
    from handoff.display.plan import DisplayFacts
    from handoff.live.windows import Bar
    from handoff.pci.plan import HostSnapshot
    from handoff.qemu.firmware_descriptors import FirmwareDescriptor
    from handoff.tune.model import HostTuning


def _qemu_owner(user: str | None, *, strict: bool) -> QemuOwner | None:
    if user is None:
        return None
    try:
        entry = qemu_account(user)
    except HostError:
        if strict:
            raise
        return None
    return QemuOwner(user, entry.pw_uid, entry.pw_gid)


def _iommu_groups(
    profile: Profile, paths: HostPaths
) -> tuple[tuple[PciAddress, int | None], ...]:
    if not profile.passthrough:
        return ()
    from handoff.pci.sysfs import iommu_group_of  # only a passthrough profile reads sysfs

    return tuple((p.address, iommu_group_of(paths, p.address)) for p in profile.passthrough)


def _gpu(profile: Profile, paths: HostPaths, *, live: bool = False) -> HostSnapshot | None:
    """The passthrough groups (``live``: the live = true ones) as they are, for the plan's
    hand-off; None where they cannot be read here (the resource reads them at acquire
    and says why)."""
    addresses = [p.address for p in profile.passthrough if p.live is live]
    if not addresses:
        return None
    from handoff.pci.ops import module_loadable
    from handoff.pci.snapshot import take_snapshot
    from handoff.pci.sysfs import groups_of

    try:
        return take_snapshot(paths, module_loadable, groups=groups_of(paths, addresses),
                             addresses=addresses, scan_holders=False)
    except HandoffError:
        return None


def _display(profile: Profile, paths: HostPaths) -> DisplayFacts | None:
    """The consoles, firmware framebuffers and the passthrough functions' BARs, for a
    [host_display] handover profile (the plan decides what the hand-over takes)."""
    if not profile.host_display.handover:
        return None
    from handoff.display.plan import DisplayFacts
    from handoff.display.sysfs import read_bars, read_firmware_fbs, read_vtconsoles

    bars = []
    for entry in profile.passthrough:
        try:
            bars.append((entry.address, read_bars(paths, entry.address)))
        except (HandoffError, OSError):
            continue
    return DisplayFacts(read_vtconsoles(paths), read_firmware_fbs(paths), tuple(bars))


def _tuning(profile: Profile, paths: HostPaths) -> HostTuning | None:
    if not profile.tuned:
        return None
    from handoff.tune.topology import read_host  # only a tuned profile reads the topology

    return read_host(paths)


def _live_bars(
    profile: Profile, paths: HostPaths
) -> tuple[tuple[PciAddress, tuple[Bar, ...]], ...]:
    """Each live function's BARs from sysfs ``resource`` (absent device: none)."""
    out: list[tuple[PciAddress, tuple[Bar, ...]]] = []
    if not any(entry.live for entry in profile.passthrough):
        return ()
    from handoff.live.windows import parse_resource  # only a live profile reads BARs

    for entry in profile.passthrough:
        if not entry.live:
            continue
        path = paths.sys / "bus" / "pci" / "devices" / str(entry.address) / "resource"
        try:
            out.append((entry.address, parse_resource(path.read_text(encoding="ascii"))))
        except (OSError, ValueError):
            continue
    return tuple(out)


def _qemu_properties(
    profile: Profile, binary: str, *, strict: bool
) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """The QEMU's CPU and q35 machine properties, for a profile whose guest OS needs them
    (the capability probe, cached); (None, None) otherwise or where QEMU is not there."""
    from handoff.qemu.hyperv import wants_platform

    if not wants_platform(profile):
        return None, None
    from handoff.qemu.capabilities import probe

    try:
        caps = probe(binary)
    except QemuError:
        if strict:
            raise
        return None, None
    return caps.cpu_properties, caps.machine_options


def _host_evmcs(paths: HostPaths, accel: Accelerator) -> bool:
    """hv-evmcs needs Intel KVM with nesting on (kvm_intel's ``nested`` parameter)."""
    if accel is not Accelerator.KVM:
        return False
    try:
        value = (paths.sys / "module" / "kvm_intel" / "parameters" / "nested").read_text()
    except OSError:
        return False
    return value.strip() in ("Y", "1")


def _descriptors(profile: Profile) -> tuple[FirmwareDescriptor, ...]:
    if profile.firmware.type is not FirmwareType.OVMF:
        return ()
    from handoff.qemu.firmware_search import read_descriptors

    return read_descriptors()


def gather_host_facts(
    profile: Profile, paths: HostPaths, *, strict: bool = True,
    binary: str = "qemu-system-x86_64",
) -> HostFacts:
    """The facts of this host for ``profile``; raises HostError (strict) to refuse."""
    choice = choose_accel(profile.vm.accel, paths, strict=strict)
    cpu_properties, machine_options = _qemu_properties(profile, binary, strict=strict)
    return HostFacts(
        accel=choice.accel,
        accel_reason=choice.reason,
        supervisor_uid=os.geteuid(),
        qemu_owner=_qemu_owner(profile.vm.user, strict=strict),
        iommu_groups=_iommu_groups(profile, paths),
        live_bars=_live_bars(profile, paths),
        tuning=_tuning(profile, paths),
        firmware_descriptors=_descriptors(profile),
        cpu_properties=cpu_properties,
        machine_options=machine_options,
        host_evmcs=_host_evmcs(paths, choice.accel),
        sound=_sound(profile, strict=strict),
        gpu=_gpu(profile, paths),
        live_gpu=_gpu(profile, paths, live=True),
        display=_display(profile, paths),
    )


def _sound(profile: Profile, *, strict: bool) -> SoundServer | None:
    if profile.sound.model is SoundModel.NONE:
        return None
    from handoff.desk.sound_host import read_sound_server  # only with [sound] user

    return read_sound_server(profile, strict=strict)
