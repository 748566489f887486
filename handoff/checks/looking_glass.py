"""What a profile's ``[looking_glass]`` needs of this host (read-only), for ``handoff doctor``.

- ``looking-glass-size``: the size against the resolution (the profile parser
  refuses a size that is too small; this shows the numbers);
- ``looking-glass-memory``: shm: the owner exists and /dev/shm is there;
  kvmfr: the module's device with the size (the same decision ``run`` makes);
- ``looking-glass-hotkey``: a handoff chord that is the client's escape key
  alone (ScrollLock) is grabbed before the client sees it: warn, naming ``-m``;
- ``looking-glass-input``: with an input backend, keyboard and mouse reach the
  guest through handoff's evdev forwarding, not the client's SPICE input.
"""

from __future__ import annotations

import pwd

from handoff.checks import Check, DoctorEnv, fail, ok, warn
from handoff.desk import looking_glass as lg_core
from handoff.desk.shm import read_kvmfr
from handoff.profile import InputBackend, LookingGlassDevice, Profile


def check_looking_glass(env: DoctorEnv, profile: Profile) -> list[Check]:
    """The checks for ``profile`` (none when Looking Glass is off)."""
    lg = profile.looking_glass
    if not lg.enabled:
        return []
    size = lg_core.size_mib(lg)
    checks = [ok("looking-glass-size",
                 f"{size} MiB ({'auto' if lg.size_mib is None else 'set'}); "
                 f"{lg_core.describe_need(lg)}")]
    path = lg_core.memory_path(lg, env.host.dev, profile.name)
    if lg.device is LookingGlassDevice.KVMFR:
        problem = lg_core.kvmfr_problem(lg, path, read_kvmfr(env.host, path))
        checks.append(
            fail("looking-glass-memory", problem, lg_core.kvmfr_fix(lg, lg.owner))
            if problem is not None
            else ok("looking-glass-memory", f"{path}: kvmfr, {size} MiB or more")
        )
    else:
        checks.append(_shm(env, lg.owner, path, size))
    chords = {"input.hotkey": profile.input.hotkey, "input.gpu_hotkey": profile.input.gpu_hotkey,
              "input.escape_hotkey": profile.input.escape_hotkey}
    clash = lg_core.hotkey_clash(chords) if profile.input.backend is not InputBackend.NONE else None
    if clash is not None:
        checks.append(warn(
            "looking-glass-hotkey",
            f"{clash} is {lg_core.CLIENT_ESCAPE_KEY} alone, Looking Glass's escape key: handoff "
            "takes it before the client sees it",
            f"start the client with another escape key: looking-glass-client "
            f"{lg_core.CLIENT_ESCAPE_OPTION} KEY_RIGHTCTRL, or choose another {clash}",
        ))
    else:
        checks.append(ok("looking-glass-hotkey",
                         f"no handoff chord is {lg_core.CLIENT_ESCAPE_KEY} alone (the client's "
                         f"escape key; its option {lg_core.CLIENT_ESCAPE_OPTION} changes it)"))
    if profile.input.backend is not InputBackend.NONE:
        checks.append(ok("looking-glass-input",
                         f"input.backend = {profile.input.backend.value}: keyboard and mouse "
                         "reach the guest through handoff's evdev forwarding, which replaces "
                         "the client's SPICE input (the client runs with -s)"))
    return checks


def _shm(env: DoctorEnv, owner: str | None, path: object, size: int) -> Check:
    try:
        pwd.getpwnam(owner or "")
    except KeyError:
        return fail("looking-glass-memory", f"looking_glass.owner {owner!r} does not exist",
                    "write the desktop user who runs looking-glass-client")
    shm = env.host.dev / "shm"
    if not shm.is_dir():
        return fail("looking-glass-memory", f"{shm} does not exist",
                    "mount a tmpfs there (every systemd host has one)")
    return ok("looking-glass-memory",
              f"{path}: made for {owner} ({size} MiB, mode 0660) when the VM starts")
