"""The cpufreq governor of the pinned CPUs during the session, and the way back (pure).

``cpu.governor = ""`` (the default) leaves every governor alone. Otherwise
each pinned CPU with cpufreq gets the governor and its previous one is kept
for the restore. A CPU already on it is not written (and not restored).
Where cpufreq is absent (VMs, the testbed, a kernel without a driver) the
plan says so in one line and goes on: there is nothing to tune or undo.
Several CPUs may share one cpufreq policy; writing the same governor to
each of them, and the same previous one back, is harmless.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from handoff.base.errors import GovernorRefusedError
from handoff.tune.cpulist import format_cpulist
from handoff.tune.model import CpuFreq


@dataclass(frozen=True)
class GovernorPlan:
    """CPU -> governor to write now (``targets``) and to write back afterwards (``restore``)."""

    targets: Mapping[int, str]
    restore: Mapping[int, str]
    reasons: tuple[str, ...]


def _cpus(cpus: list[int]) -> str:
    return f"CPU{'s' if len(cpus) > 1 else ''} {format_cpulist(cpus)}"


def plan_governor(
    governor: str, cpus: Iterable[int], cpufreq: Mapping[int, CpuFreq]
) -> GovernorPlan:
    """The per-CPU change for ``governor`` on ``cpus``; GovernorRefusedError if not offered."""
    wanted = sorted(set(cpus))
    if not governor:
        return GovernorPlan({}, {}, ())
    with_freq = [c for c in wanted if c in cpufreq]
    without = [c for c in wanted if c not in cpufreq]
    reasons: list[str] = []
    if without:
        reasons.append(
            f"cpufreq absent on {_cpus(without)} (no cpufreq/scaling_governor): "
            f"governor {governor!r} not set there"
        )
    for cpu in with_freq:
        offered = cpufreq[cpu].available
        if governor not in offered:
            raise GovernorRefusedError(
                f"cpu.governor = {governor!r}: CPU {cpu} offers only "
                f"{', '.join(offered) or 'no governors'} (cpufreq/scaling_available_governors)",
                fix=f'set cpu.governor to one of: {", ".join(offered)}, or "" to leave it alone'
                if offered
                else 'set cpu.governor = "" to leave it alone',
            )
    change = [c for c in with_freq if cpufreq[c].governor != governor]
    if change:
        reasons.append(f"governor {governor!r} on {_cpus(change)} for the session")
    if len(change) < len(with_freq):
        same = [c for c in with_freq if c not in change]
        reasons.append(f"{_cpus(same)} already on {governor!r}")
    return GovernorPlan(
        targets={c: governor for c in change},
        restore={c: cpufreq[c].governor for c in change},
        reasons=tuple(reasons),
    )
