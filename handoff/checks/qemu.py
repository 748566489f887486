"""The QEMU binary, its version, the devices a profile needs, and OVMF.

Doctor asks the same question ``handoff run``'s preflight asks
(:mod:`handoff.qemu.capabilities`: the binary's own ``-device help``,
``-accel help``, ... answers, checked against the devices of the session
plan's argv, :mod:`handoff.session.plan`, the input backend's included), so a
missing ``vfio-pci`` or ``virtio-input-host-pci`` is reported here, with the
profile key that needs it, instead of as a launch failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from handoff.base.errors import FirmwareError, ProfileError, QemuError, TuneError
from handoff.base.host import HostPaths
from handoff.checks import Check, DoctorEnv, fail, ok, skip
from handoff.profile import Accelerator, Cpu, FirmwareType, Memory, Profile
from handoff.qemu.capabilities import (
    MIN_VERSION,
    check_bridges,
    check_supported,
    probe,
)
from handoff.qemu.firmware_descriptors import FirmwareDescriptor, choose_firmware
from handoff.qemu.firmware_search import read_descriptors
from handoff.qemu.firmware_vars import vars_origin_refusal
from handoff.qemu.probe_cache import QemuCapabilities
from handoff.session.host_facts import gather_host_facts
from handoff.session.plan import HostFacts, SessionPlan, plan_session

_INSTALL = "apt-get install qemu-system-x86 (Debian/Ubuntu), emerge app-emulation/qemu (Gentoo)"

DEFAULT_QEMU = "qemu-system-x86_64"

Prober = Callable[[str], QemuCapabilities]


def needed_devices(
    profile: Profile, accel: Accelerator = Accelerator.KVM, paths: HostPaths | None = None
) -> list[str]:
    """The ``-device`` names of the session plan's argv under ``accel``, each once.

    Raises ProfileError when the profile cannot run under ``accel``
    (``cpu_model = "host"`` without KVM)."""
    facts = HostFacts(accel=accel, accel_reason="", supervisor_uid=os.geteuid())
    return _devices(plan_session(untuned(profile), facts, paths or HostPaths()))


def untuned(profile: Profile) -> Profile:
    """The profile without [cpu]/[memory] tuning: the same ``-device`` list, no host read.

    The tuning checks (:mod:`handoff.checks.tune`) judge the tuning itself.
    """
    return replace(profile, cpu=Cpu(), memory=Memory())


def _devices(plan: SessionPlan) -> list[str]:
    return list(dict.fromkeys(plan.devices))


def _plan(profile: Profile, facts: HostFacts, paths: HostPaths) -> SessionPlan:
    try:
        return plan_session(profile, facts, paths)
    except TuneError:  # a refused tuning is the tuning checks' failure, not QEMU's
        return plan_session(untuned(profile), replace(facts, tuning=None), paths)


def check_qemu(
    env: DoctorEnv, profile: Profile | None, binary: str = DEFAULT_QEMU, prober: Prober = probe,
    *, facts: HostFacts | None = None,
) -> Check:
    """The binary, its version, and the session plan's devices (``facts``: doctor's one
    read of the host, gathered here when not given)."""
    name = "qemu"
    try:
        caps = prober(binary)
    except QemuError as err:
        return fail(name, err.message, err.fix or _INSTALL)
    detail = f"{caps.binary} {caps.version_text}, {len(caps.devices)} device types"
    if caps.version < MIN_VERSION:
        oldest = ".".join(map(str, MIN_VERSION))
        return fail(
            name,
            f"{detail}: older than {oldest}, the oldest whose options handoff uses",
            f"install a newer QEMU ({_INSTALL}, or your distribution's backports)",
        )
    if profile is None:
        return ok(name, detail)
    if facts is None:
        facts = gather_host_facts(profile, env.host, strict=False)
    accel = facts.accel
    try:
        need = _devices(_plan(profile, facts, env.host))
        check_supported(profile, need, caps, accel=accel)
        check_bridges(profile, env.host)
    except FirmwareError:
        return ok(name, f"{detail}; {accel} accelerator (firmware: see the ovmf check)")
    except (QemuError, ProfileError) as err:
        return fail(name, f"{detail}; {err.message}", err.fix or _INSTALL)
    if need:
        detail += "; has " + ", ".join(need)
    return ok(name, f"{detail}; {accel} accelerator")


# Where distributions put OVMF (edk2) for x86_64, code image first.
OVMF_CODE_CANDIDATES: tuple[Path, ...] = (
    Path("/usr/share/OVMF/OVMF_CODE_4M.fd"),
    Path("/usr/share/OVMF/OVMF_CODE.fd"),
    Path("/usr/share/edk2/ovmf/OVMF_CODE.fd"),
    Path("/usr/share/edk2/x64/OVMF_CODE.4m.fd"),
    Path("/usr/share/edk2-ovmf/x64/OVMF_CODE.fd"),
    Path("/usr/share/qemu/edk2-x86_64-code.fd"),
)


def check_ovmf(
    profile: Profile,
    candidates: tuple[Path, ...] = OVMF_CODE_CANDIDATES,
    descriptors: tuple[FirmwareDescriptor, ...] | None = None,
) -> Check:
    """OVMF code and vars files when the profile boots UEFI (most GPUs' option ROMs want it).

    Code and template left out are chosen from QEMU's firmware descriptors as
    ``run`` chooses them (Secure Boot: a build with secure-boot and enrolled
    keys); a vars file copied from another template is refused as ``run``
    refuses it. A missing code image is answered with the one this
    distribution installed, when one of the usual places has it.
    """
    name = "ovmf"
    if profile.firmware.type is not FirmwareType.OVMF:
        return skip(name, 'firmware.type = "seabios": no UEFI firmware needed')
    try:
        choice = choose_firmware(
            profile.firmware, profile.vm.machine,
            read_descriptors() if descriptors is None else descriptors,
            source=str(profile.source),
        )
    except FirmwareError as err:
        return fail(name, err.message, err.fix or "apt-get install ovmf")
    assert choice is not None
    profile = replace(profile, firmware=choice.firmware)
    refusal = vars_origin_refusal(profile)
    if refusal is not None:
        return fail(name, refusal.message, refusal.fix or "")
    fw = profile.firmware
    assert fw.code is not None
    install = "apt-get install ovmf (Debian), emerge sys-firmware/edk2-ovmf (Gentoo)"
    if not fw.code.is_file():
        found = [c for c in candidates if c.is_file()]
        fix = f'set firmware.code = "{found[0]}"' if found else install
        return fail(name, f"{profile.source}: firmware.code {fw.code} does not exist", fix)
    parts = [f"code {fw.code}"]
    if fw.vars is not None and fw.vars.is_file():
        parts.append(f"vars {fw.vars}")
    elif fw.vars_template is not None and fw.vars_template.is_file():
        parts.append(f"vars created from {fw.vars_template} on first run")
    else:
        missing = fw.vars_template or fw.vars
        return fail(
            name,
            f"{profile.source}: neither firmware.vars nor firmware.vars_template exists "
            f"({missing})",
            install + ", or fix the path",
        )
    if choice.descriptor is not None:
        parts.append(f"from {choice.descriptor.source}")
    if choice.secure_boot:
        parts.append("Secure Boot (SMM, secure pflash)")
    return ok(name, "; ".join(parts))
