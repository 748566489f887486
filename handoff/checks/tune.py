"""What a profile's ``[cpu]`` and ``[memory]`` tuning needs of this host (read-only).

One check per thing asked for, each a part of the same attempt the session
plan raises from (:func:`handoff.tune.plan.attempt_tuning`, on the host
facts doctor read once), so doctor shows the pinning ``handoff run`` would
apply and refuses what it would refuse:

- ``cpu-pinning``: enough online CPUs, and the map (vCPU -> host CPUs,
  emulator) with the reasons;
- ``hugepages``: the page size offered by the kernel and the CPU
  (``pdpe1gb`` for 1G), and room for the pool: the pages still missing
  against ``MemAvailable`` (the kernel can only turn free memory into pages);
- ``cpu-governor``: the governor offered by the pinned CPUs' cpufreq (absent
  cpufreq is fine: nothing to set);
- ``cpu-isolation``: systemd as PID 1 on cgroup v2.

A profile without tuning gets none of them.
"""

from __future__ import annotations

from handoff.base.errors import TuneError
from handoff.checks import Check, DoctorEnv, fail, ok, warn
from handoff.profile import Profile, guest_topology
from handoff.tune.governor import GovernorPlan
from handoff.tune.hugepages import HugepagePlan
from handoff.tune.isolation import IsolationPlan
from handoff.tune.model import HostTuning, HugepageSize, PinMode
from handoff.tune.pinning import PinPlan
from handoff.tune.plan import attempt_tuning


def check_tuning(env: DoctorEnv, profile: Profile, host: HostTuning | None = None) -> list[Check]:
    """The tuning checks for ``profile`` (none when it asks for no tuning).

    ``host`` is the tuning facts doctor gathered once for the whole report
    (read here when not given); the verdicts are the parts of the very
    attempt the session plan raises from (:func:`handoff.tune.plan.attempt_tuning`).
    """
    if not profile.tuned:
        return []
    if host is None:
        from handoff.tune.topology import read_host

        host = read_host(env.host)
    attempt = attempt_tuning(profile.cpu, profile.memory, profile.vm, host)
    checks: list[Check] = []
    if profile.cpu.pin.mode is not PinMode.NONE:
        checks.append(_pinning(profile, host, attempt.pin))
    if profile.memory.hugepages is not HugepageSize.NONE:
        checks.append(_hugepages(profile, host, attempt.hugepages))
    if profile.cpu.governor:
        checks.append(_governor(attempt.governor))
    if profile.cpu.isolate:
        checks.append(_isolation(attempt.isolation))
    return checks


def _pinning(profile: Profile, host: HostTuning, pin: PinPlan | TuneError) -> Check:
    online = len(host.topology.online)
    guest = guest_topology(profile.vm)
    if isinstance(pin, TuneError):
        return fail("cpu-pinning", f"{online} online CPUs, guest {guest.describe()}: {pin.message}",
                    pin.fix or "change cpu.pin")
    return ok(
        "cpu-pinning", f"{online} online CPUs, guest {guest.describe()}: " + "; ".join(pin.lines())
    )


def _hugepages(profile: Profile, host: HostTuning, plan: HugepagePlan | TuneError | None) -> Check:
    size = profile.memory.hugepages
    offered = ", ".join(_label(p.size_kib) for p in host.hugepages) or "none"
    if isinstance(plan, TuneError):
        return fail("hugepages", f"{plan.message} (pool sizes offered: {offered})",
                    plan.fix or 'set memory.hugepages = "none"')
    assert plan is not None
    missing_kib = _missing_kib(plan)
    available = host.mem_available_kib
    what = f"{plan.pages} x {size.label} for {profile.vm.memory_mib} MiB; " + "; ".join(
        plan.reasons[1:]
    )
    if available is not None and missing_kib > available:
        return fail(
            "hugepages",
            f"{what}: the pool needs {missing_kib // 1024} MiB more but only "
            f"{available // 1024} MiB is available (MemAvailable in /proc/meminfo)",
            f"free memory, lower vm.memory, or reserve the pages at boot: "
            f"hugepagesz={size.label} hugepages={plan.pages}",
        )
    if size is HugepageSize.SIZE_1G:
        return warn(
            "hugepages",
            f"{what}; pdpe1gb present. 1G pages raised at run time often fail on a host that "
            "has been up a while (fragmented memory): handoff refuses then, changing nothing",
            f"reserve them at boot: hugepagesz=1G hugepages={plan.pages} on the kernel "
            "command line",
        )
    room = f"; {available // 1024} MiB available" if available is not None else ""
    return ok("hugepages", f"{what}{room}")


def _missing_kib(plan: HugepagePlan) -> int:
    return sum(t.target - t.before for t in plan.targets) * plan.size.kib


def _label(kib: int) -> str:
    return f"{kib // 1048576}G" if kib % 1048576 == 0 else f"{kib // 1024}M"


def _governor(plan: GovernorPlan | TuneError) -> Check:
    if isinstance(plan, TuneError):
        return fail("cpu-governor", plan.message, plan.fix or 'set cpu.governor = ""')
    return ok("cpu-governor", "; ".join(plan.reasons) or "nothing to change")


def _isolation(plan: IsolationPlan | TuneError | None) -> Check:
    if isinstance(plan, TuneError):
        return fail("cpu-isolation", plan.message, plan.fix or "set cpu.isolate = false")
    return ok(
        "cpu-isolation",
        "systemd is PID 1 on cgroup v2: `handoff run` starts QEMU in a scope of its own "
        "(systemd-run --scope, machine.slice) and confines system.slice, user.slice and "
        "init.scope to the host's CPUs while the VM runs",
    )
