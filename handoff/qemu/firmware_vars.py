"""The VM's own OVMF vars file, created from its template: a host change the session makes.

The session calls :func:`ensure_firmware_vars` once the preflight checks have
passed, just before it acquires its resources. The file is the VM's (the
guest writes its boot entries there), so it is never removed afterwards.

Beside the copy, ``<vars>.template`` records which template it came from, so
a profile that later asks for another one (Secure Boot turned on: the
template with Microsoft's keys) is refused instead of booting the old keys
silently (:func:`vars_origin_refusal`, asked by preflight and doctor).

Never: parse or validate the profile (handoff.profile has done that), or
change anything but the one vars file and its record.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

from handoff.base.errors import FirmwareError, ProfileError
from handoff.profile import FirmwareType, Profile

#: The suffix of the file beside a vars copy that names its template.
ORIGIN_SUFFIX = ".template"


def origin_record(vars_path: Path) -> Path:
    """Where the template a vars copy came from is recorded."""
    return vars_path.with_name(vars_path.name + ORIGIN_SUFFIX)


def recorded_template(vars_path: Path) -> Path | None:
    """The template ``vars_path`` was copied from, when handoff made it (else None)."""
    try:
        text = origin_record(vars_path).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return Path(text) if text else None


def vars_origin_refusal(profile: Profile) -> FirmwareError | None:
    """Why the VM's existing vars file must not be used as the profile now stands.

    ``profile`` has its firmware resolved (the plan's). A vars file handoff
    copied from one template, with the profile now naming another (Secure Boot
    turned on or off), would boot with the wrong keys: refused, nothing changed.
    """
    fw = profile.firmware
    if fw.type is not FirmwareType.OVMF or fw.vars is None or fw.vars_template is None:
        return None
    if not fw.vars.exists():
        return None
    recorded = recorded_template(fw.vars)
    if recorded is None or recorded == fw.vars_template:
        return None
    what = "with Secure Boot" if fw.secure_boot else "without Secure Boot"
    return FirmwareError(
        f"{profile.source}: firmware: the VM's vars file {fw.vars} was copied from {recorded}, "
        f"but the profile now asks for {fw.vars_template} ({what}); handoff does not replace "
        "a VM's vars file (its boot entries and UEFI settings) silently",
        fix=f"to start afresh from the new template, move the old file away (mv {fw.vars} "
        f"{fw.vars}.old) and run again (the guest's boot entries are re-created by its boot "
        f'loader or installer); to keep it, set vars_template = "{recorded}" in [firmware]',
    )


def ensure_firmware_vars(profile: Profile) -> Path | None:
    """Create the VM's OVMF vars file from its template on first use.

    Returns the vars path (None for SeaBIOS). The copy is written to a
    temporary name and renamed, so a crash never leaves a half file that
    the next boot would mistake for the VM's settings. As root, the copy
    belongs to vm.user: QEMU writes it as that user. The template's path is
    recorded beside it (:func:`origin_record`).
    """
    fw = profile.firmware
    if fw.type is not FirmwareType.OVMF or fw.vars is None:
        return None
    if fw.vars.exists():
        return fw.vars
    if fw.vars_template is None:
        raise ProfileError(
            f"found {json.dumps(str(fw.vars))}, which does not exist, and no vars_template",
            path=str(profile.source), key="firmware.vars",
            fix='add vars_template = "/usr/share/OVMF/OVMF_VARS_4M.fd"',
        )
    record = origin_record(fw.vars)
    record.write_text(f"{fw.vars_template}\n", encoding="utf-8")
    tmp = fw.vars.with_name(f".{fw.vars.name}.tmp")
    tmp.write_bytes(fw.vars_template.read_bytes())
    if profile.vm.user is not None and os.geteuid() == 0:
        account = pwd.getpwnam(profile.vm.user)
        os.chown(tmp, account.pw_uid, account.pw_gid)
    os.replace(tmp, fw.vars)
    return fw.vars
