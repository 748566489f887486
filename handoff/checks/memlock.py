"""RLIMIT_MEMLOCK against the guest's RAM: VFIO pins all of it.

The judgement is the session's own (:func:`handoff.session.memlock.check_memlock`:
guest RAM + 1 GiB, raised for the QEMU child where the process may raise
its hard limit, else refused with the limits.d lines). Doctor only feeds it
the limits of the tree it looks at: /proc/self/limits and the CapEff line
of /proc/self/status, so a fake /proc answers too.

limits.conf applies to PAM log-ins only; a systemd service sets
LimitMEMLOCK= instead (contrib/systemd/handoff@.service does).
"""

from __future__ import annotations

import resource

from handoff.base.errors import HostError
from handoff.checks import Check, DoctorEnv, fail, ok, read_text, skip
from handoff.profile import Profile
from handoff.session.memlock import can_raise_hard, required_memlock
from handoff.session.memlock import check_memlock as session_check_memlock

GIB = 1024**3
MIB = 1024**2


def parse_memlock(limits_text: str) -> tuple[int, int] | None:
    """(soft, hard) of "Max locked memory" in bytes (RLIM_INFINITY for unlimited)."""
    for line in limits_text.splitlines():
        if line.startswith("Max locked memory"):
            fields = line[len("Max locked memory") :].split()
            if len(fields) < 2:
                return None

            def value(text: str) -> int:
                return resource.RLIM_INFINITY if text == "unlimited" else int(text)

            return value(fields[0]), value(fields[1])
    return None


def raisable(env: DoctorEnv) -> bool:
    """CAP_SYS_RESOURCE in the tree's /proc/self/status; euid 0 when that is unreadable."""
    return can_raise_hard(read_text(env.host.proc / "self" / "status"), env.euid)


def _human(n: int) -> str:
    if n == resource.RLIM_INFINITY:
        return "unlimited"
    if n >= GIB:
        return f"{n / GIB:.1f} GiB"
    return f"{n // 1024} KiB"


def check_memlock(env: DoctorEnv, profile: Profile) -> Check:
    name = "memlock"
    need = required_memlock(profile)
    if need is None:
        return skip(name, "no [[passthrough]]: VFIO pins no memory")
    path = env.host.proc / "self" / "limits"
    limits = parse_memlock(read_text(path) or "")
    if limits is None:
        return skip(name, f"no 'Max locked memory' in {path}")
    soft, hard = limits
    may_raise = raisable(env)
    try:
        session_check_memlock(
            profile, env.host, getrlimit=lambda _which: (soft, hard),
            can_raise_hard=lambda: may_raise,
        )
    except HostError as err:
        return fail(name, err.message, err.fix or "raise RLIMIT_MEMLOCK")
    have = f"RLIMIT_MEMLOCK soft {_human(soft)}, hard {_human(hard)}"
    want = f"vm.memory {profile.vm.memory_mib} MiB + 1 GiB = {_human(need)}"
    if soft != resource.RLIM_INFINITY and soft < need:
        how = "may raise its hard limit" if may_raise else "may raise its soft limit"
        return ok(name, f"{have}; handoff {how} and raises it for QEMU to cover {want}")
    return ok(name, f"{have} covers {want}")
