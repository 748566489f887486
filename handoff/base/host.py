"""Where the host's kernel interfaces live.

Every module that reads or changes the host goes through a :class:`HostPaths`
instead of naming /sys, /proc or /dev itself. Production uses the real
roots; unit tests point them at a fake tree that mirrors the kernel's layout,
so the very same code paths run against both (and against the testbed's real
kernel). The environment variables exist so the CLI can be run against a fake
tree too (``HANDOFF_SYSFS_ROOT=tests/... handoff groups``).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from handoff.base.errors import HostError


def default_run_root() -> Path:
    """/run/handoff for root; $XDG_RUNTIME_DIR/handoff for a person without it."""
    if os.geteuid() == 0:
        return Path("/run/handoff")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "handoff"
    return Path(f"/tmp/handoff-{os.geteuid()}")


@dataclass(frozen=True)
class HostPaths:
    """Roots of the kernel interfaces handoff reads and writes.

    ``run`` holds one 0700 directory per session (control socket, QEMU log,
    journal, lock); it lives on tmpfs so a reboot clears it, exactly like the
    device bindings it records.
    """

    sys: Path = Path("/sys")
    proc: Path = Path("/proc")
    dev: Path = Path("/dev")
    run: Path = Path("/run/handoff")
    #: logind's session state files (TYPE=, SCOPE=, UID= of each session).
    logind: Path = Path("/run/systemd/sessions")

    @classmethod
    def from_environment(cls) -> HostPaths:
        """The real roots, each overridable by HANDOFF_{SYSFS,PROC,DEV}_ROOT and HANDOFF_RUN_DIR."""
        env = os.environ
        return cls(
            sys=Path(env.get("HANDOFF_SYSFS_ROOT", "/sys")),
            proc=Path(env.get("HANDOFF_PROC_ROOT", "/proc")),
            dev=Path(env.get("HANDOFF_DEV_ROOT", "/dev")),
            run=Path(env["HANDOFF_RUN_DIR"]) if "HANDOFF_RUN_DIR" in env else default_run_root(),
        )

    def session_dir(self, profile_name: str) -> Path:
        """The run directory of one profile's session: ``<run>/<name>``."""
        return self.run / profile_name


def qemu_account(user: str) -> pwd.struct_passwd:
    """The account of ``vm.user``, the unprivileged user QEMU runs as.

    Profile preflight (``check_profile_on_host``) already refuses an unknown
    user with the profile's file and key; failing here means the account
    vanished between preflight and use, so the same fix applies.
    """
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise HostError(
            f"vm.user: the user {user!r} does not exist on this host",
            fix=f"create it (useradd --system --no-create-home {user}) or remove vm.user "
            "from the profile to run QEMU as the invoking user",
        ) from None
