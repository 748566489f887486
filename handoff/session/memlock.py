"""RLIMIT_MEMLOCK for a QEMU with passthrough devices.

vfio pins every page of guest RAM for device DMA, and the kernel charges the
pinned pages to QEMU's RLIMIT_MEMLOCK (unless QEMU keeps CAP_IPC_LOCK, i.e.
runs as root). Too low a limit fails late and obscurely ("vfio_pin_pages
failed", "VFIO_MAP_DMA: -12" in QEMU's log) after the GPU has already left
the host; so preflight checks that the limit can cover guest RAM plus
1 GiB of headroom (ROMs, BARs mapped for peer-to-peer, QEMU's own pinned
buffers) and the spawner raises it for the QEMU child
(:func:`handoff.qemu.spawn.raised_memlock`), or refuses with the
limits.d line that fixes it (the amount is the session plan's
:func:`handoff.session.plan.required_memlock`). The seed guide's limits.conf lines
(``<username> soft/hard memlock 80000000``) are the same fix by hand.
"""

from __future__ import annotations

import os
import pwd
import resource
from collections.abc import Callable
from dataclasses import dataclass

from handoff.base.errors import HostError
from handoff.base.host import HostPaths
from handoff.profile import Profile
from handoff.session.plan import MEMLOCK_HEADROOM, required_memlock

__all__ = [
    "MEMLOCK_HEADROOM",
    "UNLIMITED",
    "MemlockVerdict",
    "check_memlock",
    "judge_memlock",
    "process_can_raise_hard",
    "required_memlock",
]

_MIB = 1 << 20
UNLIMITED = resource.RLIM_INFINITY


@dataclass(frozen=True)
class MemlockVerdict:
    """What the current limits allow for ``required`` bytes.

    ``raise_to`` is the limit to set for the child (None: already enough).
    """

    required: int
    soft: int
    hard: int
    raise_to: int | None


def _covers(limit: int, required: int) -> bool:
    return limit == UNLIMITED or limit >= required


def judge_memlock(
    required: int, soft: int, hard: int, *, can_raise_hard: bool, user: str
) -> MemlockVerdict:
    """Pure: is (soft, hard) enough, raisable, or a refusal with the fix.

    ``user`` is who runs handoff: QEMU inherits the supervisor's limit (even
    after dropping to vm.user), so that is whose limits.d line matters.
    """
    if _covers(soft, required):
        return MemlockVerdict(required, soft, hard, None)
    if _covers(hard, required) or can_raise_hard:
        return MemlockVerdict(required, soft, hard, required)
    kib = -(-required // 1024)
    raise HostError(
        f"RLIMIT_MEMLOCK is too low for passthrough: QEMU must lock "
        f"{required // _MIB} MiB (guest RAM + 1 GiB) but the limit is "
        f"{_text(soft)} (hard {_text(hard)}) and this process cannot raise the hard limit",
        fix=f"add `{user} hard memlock {kib}` and `{user} soft memlock {kib}` to "
        "/etc/security/limits.d/handoff-memlock.conf (KiB; or `unlimited`; "
        "contrib/limits.d/handoff-memlock.conf is a template) and log in again, or run "
        "handoff as root with CAP_SYS_RESOURCE",
    )


def _text(value: int) -> str:
    return "unlimited" if value == UNLIMITED else f"{value // _MIB} MiB"


def _who() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


CAP_SYS_RESOURCE = 24  # include/uapi/linux/capability.h


def cap_effective(status_text: str, capability: int) -> bool | None:
    """Whether /proc/PID/status's ``CapEff`` mask has ``capability``; None without one. Pure."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            try:
                return bool(int(line.split()[1], 16) & (1 << capability))
            except (IndexError, ValueError):
                return None
    return None


def can_raise_hard(status_text: str | None, euid: int) -> bool:
    """CAP_SYS_RESOURCE from a status text's CapEff; euid 0 when that is unreadable."""
    allowed = cap_effective(status_text or "", CAP_SYS_RESOURCE)
    return euid == 0 if allowed is None else allowed


def process_can_raise_hard(paths: HostPaths) -> bool:
    """This process's CAP_SYS_RESOURCE (root, in practice), from ``<proc>/self/status``."""
    try:
        text: str | None = (paths.proc / "self" / "status").read_text(encoding="ascii")
    except OSError:
        text = None
    return can_raise_hard(text, os.geteuid())


def check_memlock(
    profile: Profile,
    paths: HostPaths,
    *,
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    can_raise_hard: Callable[[], bool] | None = None,
) -> int | None:
    """Preflight: the memlock value to hand the QEMU spawner, or HostError with the fix.

    Returns None when no passthrough device is configured (nothing to raise).
    Whether the hard limit may be raised is read from ``paths``' /proc
    (``can_raise_hard`` answers instead where the caller knows). Changes
    nothing: the spawner raises the limit around the fork
    (``QemuProcess.start(memlock_bytes=...)``), so only QEMU gets it.
    """
    required = required_memlock(profile)
    if required is None:
        return None
    soft, hard = getrlimit(resource.RLIMIT_MEMLOCK)
    may_raise = can_raise_hard() if can_raise_hard is not None else process_can_raise_hard(paths)
    judge_memlock(required, soft, hard, can_raise_hard=may_raise, user=_who())
    return required
