"""The VM's own OVMF vars file, created from its template: a host change the session makes.

The session calls :func:`ensure_firmware_vars` once the preflight checks have
passed, just before it acquires its resources. The file is the VM's (the
guest writes its boot entries there), so it is never removed afterwards.

Never: parse or validate the profile (handoff.profile has done that), or
change anything but the one vars file.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

from handoff.errors import ProfileError
from handoff.profile import FirmwareType, Profile


def ensure_firmware_vars(profile: Profile) -> Path | None:
    """Create the VM's OVMF vars file from its template on first use.

    Returns the vars path (None for SeaBIOS). The copy is written to a
    temporary name and renamed, so a crash never leaves a half file that
    the next boot would mistake for the VM's settings. As root, the copy
    belongs to vm.user: QEMU writes it as that user.
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
    tmp = fw.vars.with_name(f".{fw.vars.name}.tmp")
    tmp.write_bytes(fw.vars_template.read_bytes())
    if profile.vm.user is not None and os.geteuid() == 0:
        account = pwd.getpwnam(profile.vm.user)
        os.chown(tmp, account.pw_uid, account.pw_gid)
    os.replace(tmp, fw.vars)
    return fw.vars
