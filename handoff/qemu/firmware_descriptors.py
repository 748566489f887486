"""QEMU's firmware descriptors → the UEFI build a profile runs. Pure.

Distributions describe their firmware builds in JSON files under
``/usr/share/qemu/firmware`` (QEMU's ``docs/interop/firmware.json``, the
format libvirt chooses firmware by): the interface (``uefi``), the code and
vars-template files, the features (``secure-boot``, ``enrolled-keys``: the
Microsoft keys are in the template, ``requires-smm``) and the machines each
build targets. handoff chooses from them instead of guessing paths:

* ``secure_boot = true``: the first build with secure-boot *and*
  enrolled-keys (Debian: ``OVMF_CODE_4M.ms.fd`` + ``OVMF_VARS_4M.ms.fd``);
  a vars template with no keys leaves the firmware in setup mode, which
  enforces nothing.
* plain OVMF: the first build without secure-boot and SMM (Debian:
  ``OVMF_CODE_4M.fd``), so turning UEFI on never turns Secure Boot on.
* an explicit ``code`` wins; its descriptor (when one describes that file)
  still says whether it needs SMM and supplies the vars template.

The edge that reads the files is :mod:`handoff.qemu.firmware_search`.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, replace
from pathlib import Path

from handoff.base.errors import FirmwareError
from handoff.profile import Firmware, FirmwareType

#: The descriptor features handoff chooses by.
SECURE_BOOT = "secure-boot"
ENROLLED_KEYS = "enrolled-keys"
REQUIRES_SMM = "requires-smm"

#: Machine aliases QEMU resolves to its newest versioned machine.
_ALIASES = {"q35": "pc-q35-", "pc": "pc-i440fx-"}
#: Machines with System Management Mode (what a requires-smm build needs).
_SMM_MACHINES = ("q35", "pc-q35-*", "pc", "pc-i440fx-*")

_INSTALL = "apt-get install ovmf (it installs the builds and their descriptors)"


@dataclass(frozen=True)
class Target:
    architecture: str
    machines: tuple[str, ...]  # glob patterns, e.g. "pc-q35-*"


@dataclass(frozen=True)
class FirmwareDescriptor:
    """One descriptor file: a flash-mapped firmware build and what it can do."""

    source: str  # the file it was read from (for messages)
    description: str
    interfaces: frozenset[str]
    code: Path
    vars_template: Path | None
    features: frozenset[str]
    targets: tuple[Target, ...]

    @property
    def secure_boot(self) -> bool:
        return SECURE_BOOT in self.features

    @property
    def enrolled_keys(self) -> bool:
        return ENROLLED_KEYS in self.features

    @property
    def requires_smm(self) -> bool:
        return REQUIRES_SMM in self.features

    def targets_machine(self, machine: str, architecture: str = "x86_64") -> bool:
        return any(
            t.architecture == architecture and machine_matches(machine, t.machines)
            for t in self.targets
        )


@dataclass(frozen=True)
class FirmwareChoice:
    """The firmware a session runs: files, and whether the machine needs SMM and secure pflash."""

    firmware: Firmware  # code and vars_template filled in
    smm: bool  # -machine smm=on (Secure Boot, or a build that requires SMM)
    secure_boot: bool  # secure pflash: only SMM code may write the vars
    descriptor: FirmwareDescriptor | None


def machine_matches(machine: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``machine`` (an alias such as "q35" too) falls under one of ``patterns``."""
    if machine in _ALIASES:
        # The alias stands for the newest versioned machine: a pattern that covers
        # every version of the family covers it.
        probe = _ALIASES[machine] + "99.99"
        return any(fnmatch.fnmatchcase(probe, p) for p in patterns)
    return any(fnmatch.fnmatchcase(machine, p) for p in patterns)


def machine_has_smm(machine: str) -> bool:
    return machine_matches(machine, _SMM_MACHINES) or machine in ("q35", "pc")


def parse_descriptor(text: str, source: str) -> FirmwareDescriptor | None:
    """The descriptor in ``text``; None for one handoff cannot use (not flash-mapped,
    memory or kernel devices, stateless builds). Raises ValueError when malformed."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 (a bad file, not a bad call)
    mapping = data.get("mapping")
    if not isinstance(mapping, dict):
        raise ValueError("no mapping")  # noqa: TRY004
    if mapping.get("device") != "flash" or mapping.get("mode", "split") != "split":
        return None
    executable = mapping.get("executable")
    if not isinstance(executable, dict) or not isinstance(executable.get("filename"), str):
        raise ValueError("mapping.executable.filename missing")  # noqa: TRY004
    if executable.get("format", "raw") != "raw":
        return None
    template = mapping.get("nvram-template")
    template_path: Path | None = None
    if isinstance(template, dict):
        if template.get("format", "raw") != "raw":
            return None
        if isinstance(template.get("filename"), str):
            template_path = Path(template["filename"])
    targets: list[Target] = []
    for target in data.get("targets", []):
        if isinstance(target, dict) and isinstance(target.get("architecture"), str):
            machines = tuple(m for m in target.get("machines", []) if isinstance(m, str))
            targets.append(Target(target["architecture"], machines))
    return FirmwareDescriptor(
        source=source,
        description=str(data.get("description", "")),
        interfaces=frozenset(i for i in data.get("interface-types", []) if isinstance(i, str)),
        code=Path(executable["filename"]),
        vars_template=template_path,
        features=frozenset(f for f in data.get("features", []) if isinstance(f, str)),
        targets=tuple(targets),
    )


def _profile_error(source: str, key: str, message: str, fix: str) -> FirmwareError:
    return FirmwareError(f"{source}: {key}: {message}", fix=fix)


def choose_firmware(
    firmware: Firmware,
    machine: str,
    descriptors: tuple[FirmwareDescriptor, ...],
    *,
    source: str = "profile",
) -> FirmwareChoice | None:
    """The UEFI build ``firmware`` runs on ``machine``, from ``descriptors`` (in
    priority order); None for SeaBIOS. Raises FirmwareError with the fix."""
    if firmware.type is not FirmwareType.OVMF:
        return None
    uefi = [
        d for d in descriptors if "uefi" in d.interfaces and d.targets_machine(machine)
    ]
    if firmware.code is not None:
        return _explicit(firmware, machine, uefi, descriptors, source)
    if firmware.secure_boot:
        fits = [d for d in uefi if d.secure_boot and d.enrolled_keys]
        if not fits:
            raise _profile_error(
                source, "firmware.secure_boot",
                f"no QEMU firmware descriptor offers UEFI with Secure Boot and enrolled keys "
                f"for machine \"{machine}\" (found {_listing(descriptors)})",
                f"{_INSTALL}; or set firmware.code and firmware.vars_template to a Secure "
                "Boot build and a vars file with Microsoft's keys enrolled",
            )
    else:
        fits = [d for d in uefi if not d.secure_boot and not d.requires_smm]
        # Not one without Secure Boot: a build without enrolled keys is in setup
        # mode and enforces nothing, which is what plain UEFI means.
        fits = fits or [d for d in uefi if not d.enrolled_keys]
        if not fits:
            raise _profile_error(
                source, "firmware.type",
                f"no QEMU firmware descriptor offers UEFI for machine \"{machine}\" "
                f"(found {_listing(descriptors)})",
                f"{_INSTALL}; or set firmware.code and firmware.vars_template",
            )
    chosen = fits[0]
    return _choice(firmware, machine, chosen, chosen.code, source)


def _explicit(
    firmware: Firmware,
    machine: str,
    uefi: list[FirmwareDescriptor],
    descriptors: tuple[FirmwareDescriptor, ...],
    source: str,
) -> FirmwareChoice:
    assert firmware.code is not None
    described = [d for d in descriptors if d.code == firmware.code]
    if not described:
        # A build no descriptor knows (the user's own): trusted as written.
        if firmware.vars is None and firmware.vars_template is None:
            raise _profile_error(
                source, "firmware.vars_template",
                f"missing; no QEMU firmware descriptor describes {firmware.code}, so handoff "
                "does not know which vars template belongs to it",
                'add vars_template = "/path/to/its_VARS.fd" (the vars file built with it)',
            )
        return FirmwareChoice(firmware, firmware.secure_boot, firmware.secure_boot, None)
    fits = [d for d in described if d in uefi]
    if not fits:
        raise _profile_error(
            source, "firmware.code",
            f"{firmware.code} is described by {described[0].source}, which does not target "
            f"machine \"{machine}\" with UEFI",
            "remove code (handoff then picks a build for the machine from QEMU's descriptors)",
        )
    chosen = fits[0]
    if firmware.secure_boot:
        with_sb = [d for d in fits if d.secure_boot]
        if not with_sb:
            raise _profile_error(
                source, "firmware.code",
                f"{firmware.code} has no Secure Boot ({chosen.source}: "
                f"\"{chosen.description}\"), yet firmware.secure_boot = true",
                "remove code (handoff then picks a Secure Boot build), or set secure_boot = "
                "false",
            )
        chosen = with_sb[0]
    return _choice(firmware, machine, chosen, firmware.code, source)


def _choice(
    firmware: Firmware, machine: str, chosen: FirmwareDescriptor, code: Path, source: str
) -> FirmwareChoice:
    smm = firmware.secure_boot or chosen.requires_smm
    if smm and not machine_has_smm(machine):
        raise _profile_error(
            source, "vm.machine",
            f"\"{machine}\" has no System Management Mode, which {code} needs "
            f"({chosen.source}: requires-smm)",
            'use machine = "q35"',
        )
    template = firmware.vars_template or chosen.vars_template
    if template is None and firmware.vars is None:
        raise _profile_error(
            source, "firmware.vars_template",
            f"missing; {chosen.source} names no nvram-template for {code}",
            'add vars_template = "/path/to/its_VARS.fd"',
        )
    resolved = replace(firmware, code=code, vars_template=template)
    return FirmwareChoice(resolved, smm, firmware.secure_boot, chosen)


def _listing(descriptors: tuple[FirmwareDescriptor, ...]) -> str:
    if not descriptors:
        return "no descriptors"
    shown = []
    for d in descriptors:
        features = ", ".join(sorted(d.features & {SECURE_BOOT, ENROLLED_KEYS})) or "no secure-boot"
        shown.append(f"{Path(d.source).name}: {features}")
    return "; ".join(shown)
