"""RLIMIT_MEMLOCK against the guest's RAM: VFIO pins all of it.

With a device passed through, vfio_iommu_type1 pins every page of guest
RAM (and QEMU's own DMA buffers) and charges them to RLIMIT_MEMLOCK unless
QEMU has CAP_IPC_LOCK. A limit below RAM + 1 GiB makes QEMU fail at start
with "vfio_dma_map ... -12" (ENOMEM). The seed raised it in limits.conf;
limits.conf only applies to PAM log-ins, so a systemd service needs
LimitMEMLOCK= instead (contrib/systemd/handoff@.service sets it).

The limit is read from /proc/self/limits so a fake /proc answers too.
"""

from __future__ import annotations

from handoff.checks import Check, DoctorEnv, fail, ok, read_text, skip
from handoff.profile import Profile

GIB = 1024**3
MIB = 1024**2
HEADROOM = GIB  # QEMU's own pinned buffers, ROM BARs, the IOMMU's page tables


def required_bytes(profile: Profile) -> int:
    return profile.vm.memory_mib * MIB + HEADROOM


def parse_memlock(limits_text: str) -> tuple[int | None, int | None] | None:
    """(soft, hard) of "Max locked memory" in bytes, None for unlimited; None when absent."""
    for line in limits_text.splitlines():
        if line.startswith("Max locked memory"):
            fields = line[len("Max locked memory") :].split()
            if len(fields) < 2:
                return None

            def value(text: str) -> int | None:
                return None if text == "unlimited" else int(text)

            return value(fields[0]), value(fields[1])
    return None


def _human(n: int | None) -> str:
    if n is None:
        return "unlimited"
    if n >= GIB and n % MIB == 0:
        return f"{n / GIB:.1f} GiB"
    return f"{n // 1024} KiB"


def check_memlock(env: DoctorEnv, profile: Profile) -> Check:
    name = "memlock"
    if not profile.passthrough:
        return skip(name, "no [[passthrough]]: VFIO pins no memory")
    need = required_bytes(profile)
    path = env.host.proc / "self" / "limits"
    limits = parse_memlock(read_text(path) or "")
    if limits is None:
        return skip(name, f"no 'Max locked memory' in {path}")
    soft, hard = limits
    have = f"RLIMIT_MEMLOCK soft {_human(soft)}, hard {_human(hard)}"
    want = f"vm.memory {profile.vm.memory_mib} MiB + 1 GiB = {_human(need)}"
    user = profile.vm.user
    if env.euid == 0:
        return ok(
            name,
            f"{have}; running as root, handoff raises the limit for QEMU to cover {want}",
        )
    if hard is None or hard >= need:
        return ok(name, f"{have} covers {want}")
    kib = need // 1024
    who = user or "<your user>"
    return fail(
        name,
        f"{have} is below {want}: QEMU would fail to pin guest RAM (vfio_dma_map -12)",
        f"put '{who} hard memlock {kib}' and '{who} soft memlock {kib}' (KiB) in "
        "/etc/security/limits.d/handoff-memlock.conf (contrib/limits.d/) and log in again, "
        f"or set LimitMEMLOCK={need} in the systemd unit",
    )
