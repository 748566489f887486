"""The host half of a profile: its user exists, its files exist and QEMU's user can open them.

Parsing (handoff.profile) never looks at the host, so ``handoff argv`` works
on a machine without the disks; :func:`check_profile_on_host` is what
``handoff run`` (session preflight) runs before any change, and ``handoff
doctor`` shows as its ``profile-files`` check (:func:`check_profile_files`).
Permissions are judged by handoff.checks.access's arithmetic for the user
QEMU runs as (vm.user). Refusals are ProfileErrors naming the key.

Never: change the host (no chown, no copies: creating the OVMF vars file is
handoff.qemu.firmware_vars's), or parse profile text.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

from handoff.base.errors import HandoffError, ProfileError
from handoff.checks import Check, fail, ok
from handoff.checks.access import (
    Identity,
    UnknownUserError,
    may_access,
    may_enter,
    resolve_identity,
)
from handoff.profile import FirmwareType, Profile


def check_profile_on_host(profile: Profile) -> None:
    """The user exists, the files exist and are of the right kind, QEMU's user can open them.

    Raises :class:`handoff.base.errors.ProfileError` for the first problem.
    """
    src = str(profile.source)
    qemu_user = _qemu_user(profile)
    fw = profile.firmware
    if fw.type is FirmwareType.OVMF:
        # Left out, code comes from QEMU's firmware descriptors: the session plan
        # fills it in and preflight checks the plan's profile again.
        if fw.code is not None:
            _must_exist(src, "firmware.code", fw.code, "apt-get install ovmf")
        if fw.vars_template is not None:
            _must_exist(src, "firmware.vars_template", fw.vars_template, "apt-get install ovmf")
        elif fw.vars is not None and fw.code is not None:
            _must_exist(src, "firmware.vars", fw.vars, "set vars_template to copy it from")
    for index, disk in enumerate(profile.disks):
        key = f"disk[{index}].path"
        _must_exist(src, key, disk.path, "create the image (qemu-img create "
                    f"-f {disk.format.value} {disk.path} 64G) or correct the path")
        _check_disk_kind(src, key, disk.path)
    for index, dev in enumerate(profile.passthrough):
        if dev.romfile is not None:
            _must_exist(src, f"passthrough[{index}].romfile", dev.romfile,
                        "dump the card's ROM or correct the path")
    if qemu_user is not None and not qemu_user.is_root:
        _check_user_access(profile, qemu_user)
    for index, hook in enumerate(profile.hooks):
        _check_hook_program(src, f"hook[{index}].run[0]", hook.run[0])
    if profile.monitor.configured and shutil.which("ddcutil") is None:
        raise ProfileError(
            "found a [monitor] section, but ddcutil is not installed (not on PATH)",
            path=src, key="monitor",
            fix="apt-get install ddcutil (handoff runs it to switch the input), or remove "
            "[monitor]",
        )


def check_profile_files(profile: Profile) -> Check:
    """``handoff doctor``'s verdict on :func:`check_profile_on_host`."""
    try:
        check_profile_on_host(profile)
    except HandoffError as err:
        return fail("profile-files", err.message, err.fix or "edit the profile")
    return ok("profile-files", f"{profile.source}: every file it names exists")


def _qemu_user(profile: Profile) -> Identity | None:
    """vm.user as the kernel sees it; None when the profile names no user."""
    if profile.vm.user is None:
        return None
    try:
        return resolve_identity(profile.vm.user, os.geteuid())
    except UnknownUserError:
        raise ProfileError(
            f"found the string {json.dumps(profile.vm.user)}; expected an existing user "
            "account on this host",
            path=str(profile.source), key="vm.user",
            fix=f"create it (useradd --system --no-create-home {profile.vm.user}) or "
            "remove vm.user to run QEMU as the invoking user",
        ) from None


def _files_qemu_opens(profile: Profile) -> list[tuple[str, Path, bool]]:
    """(key, path, needs write) for every existing file QEMU itself opens."""
    files: list[tuple[str, Path, bool]] = []
    fw = profile.firmware
    if fw.type is FirmwareType.OVMF and fw.code is not None:
        files.append(("firmware.code", fw.code, False))
        if fw.vars is not None and fw.vars.exists():
            files.append(("firmware.vars", fw.vars, True))
    files += [
        (f"disk[{i}].path", disk.path, not disk.readonly) for i, disk in enumerate(profile.disks)
    ]
    files += [
        (f"passthrough[{i}].romfile", dev.romfile, False)
        for i, dev in enumerate(profile.passthrough)
        if dev.romfile is not None
    ]
    return files


def _check_user_access(profile: Profile, who: Identity) -> None:
    """QEMU runs as vm.user: it must reach and open each file itself.

    Judged from the permission bits (owner, group incl. supplementary
    groups, other) of the file and of every directory above it; ACLs are
    not read, so a file granted by an ACL alone is reported too (the fix
    names the plain-permission way).
    """
    for key, path, needs_write in _files_qemu_opens(profile):
        real = Path(os.path.realpath(path))
        for directory in reversed(real.parents):
            st = directory.stat()
            if not may_enter(st.st_mode, st.st_uid, st.st_gid, who):
                raise ProfileError(
                    f"found {json.dumps(str(path))}, but vm.user {who.name!r} cannot "
                    f"enter the directory {directory} on the way to it",
                    path=str(profile.source), key=key,
                    fix=f"chmod o+x {directory}, or move the file somewhere "
                    f"{who.name} can reach",
                )
        st = real.stat()
        for wanted, write, verb in ((True, False, "read"), (needs_write, True, "write")):
            if wanted and not may_access(st.st_mode, st.st_uid, st.st_gid, who, write=write):
                raise ProfileError(
                    f"found {json.dumps(str(path))}, but vm.user {who.name!r} (QEMU's "
                    f"user) cannot {verb} it",
                    path=str(profile.source), key=key, fix=_access_fix(who.name, path, real),
                )


def _access_fix(user: str, path: Path, real: Path) -> str:
    if real.parts[:2] == ("/", "dev"):
        return (
            f"give {user} this one device with a udev rule, e.g. in "
            "/etc/udev/rules.d/60-handoff-disk.rules: "
            f'ENV{{DM_LV_NAME}}=="{path.name}", OWNER="{user}" (group "disk" '
            "would open every disk), or remove vm.user"
        )
    return f"chown {user} {path} (or chmod it), or remove vm.user"


def _check_disk_kind(source: str, key: str, path: Path) -> None:
    """A disk is a regular file, or a block device named under /dev.

    The QEMU argv picks the block driver from the path alone (host_device
    under /dev, file elsewhere) so it stays pure; this is where the host
    confirms it. QEMU's file driver refuses a block device, and a
    directory (the seed guide's warning: a Btrfs subvolume is a file
    system, not a block device) is no disk at all.
    """
    mode = path.stat().st_mode
    shown = json.dumps(str(path))
    under_dev = path.parts[:2] == ("/", "dev")
    if stat.S_ISDIR(mode):
        raise ProfileError(
            f"found {shown}, a directory; expected a disk image file or a block device "
            "(a Btrfs subvolume is a file system, not a block device)",
            path=source, key=key,
            fix="point path at an image file inside it (qemu-img create -f raw DIR/disk.img "
            "64G) or at a block device such as an LVM volume (/dev/VG/LV)",
        )
    if stat.S_ISBLK(mode) and not under_dev:
        raise ProfileError(
            f"found {shown}, a block device outside /dev; expected block devices by their "
            "/dev name (handoff gives them to QEMU's host_device driver)",
            path=source, key=key,
            fix=f"write the /dev path, e.g. path = \"{os.path.realpath(path)}\"",
        )
    if under_dev and not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
        raise ProfileError(
            f"found {shown}, which is neither a block device nor a regular file",
            path=source, key=key,
            fix="point path at the disk's block device (ls -l /dev/VG/ or lsblk)",
        )


def _check_hook_program(source: str, key: str, program: str) -> None:
    """A hook's program: an executable path, or a name found on PATH (no shell runs it)."""
    found = shutil.which(program)
    if found is not None:
        return
    where = "is not an executable file" if os.sep in program else "is not on PATH"
    raise ProfileError(
        f"found {json.dumps(program)}; expected a program to run, but it {where}",
        path=source, key=key,
        fix="install it, give its full path (`command -v NAME`), or remove the [[hook]]; "
        'a shell line needs run = ["sh", "-c", "..."]',
    )


def _must_exist(source: str, key: str, path: Path, fix: str) -> None:
    if not path.exists():
        raise ProfileError(
            f"found {json.dumps(str(path))}; expected an existing file, but it does not exist",
            path=source, key=key, fix=fix,
        )
