"""`handoff groups`' reset section: each function a VM can take, its reset methods and warnings.

The functions of the groups the planner calls passable (bridges stay with
the host and are left out), their facts read by
:mod:`handoff.pci.reset_sysfs`, judged by :mod:`handoff.pci.reset`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from handoff.base.host import HostPaths
from handoff.pci.plan import GroupVerdict, Passability
from handoff.pci.reset import Problem, ResetFacts, ResetWarning, describe, warnings
from handoff.pci.reset_sysfs import read_reset_facts

_PASSABLE = (Passability.PASSABLE, Passability.PASSABLE_WITH_CO_MEMBERS)
NO_RESET_NOTE = " (a second start of the VM needs a reboot or a bus reset)"


def reset_report(
    paths: HostPaths, loadable: Callable[[str], bool], verdicts: Sequence[GroupVerdict]
) -> list[tuple[ResetFacts, tuple[ResetWarning, ...]]]:
    found = []
    for verdict in verdicts:
        if verdict.verdict not in _PASSABLE:
            continue
        for device in verdict.members:
            if device.is_bridge:
                continue
            facts = read_reset_facts(paths, device.address, loadable)
            found.append((facts, warnings(facts)))
    return found


def render_resets(report: Sequence[tuple[ResetFacts, tuple[ResetWarning, ...]]]) -> str:
    if not report:
        return "reset: no passable group"
    lines = ["reset methods of the functions a VM can take:"]
    for facts, found in report:
        # No reset at all is said on the function's line; vendor-reset's cards get the
        # whole warning and its fix (doctor gives every warning of a profile's devices).
        second = NO_RESET_NOTE if any(w.problem is Problem.NO_RESET for w in found) else ""
        lines.append(f"  {facts.address.short:<10} {describe(facts)}{second}")
        for warning in found:
            if warning.problem is not Problem.NO_RESET:
                lines.append(f"    warning: {warning.text}")
                lines.append(f"    fix: {warning.fix}")
    return "\n".join(lines)


def resets_json(report: Sequence[tuple[ResetFacts, tuple[ResetWarning, ...]]]) -> list[Any]:
    return [
        {
            "address": str(facts.address),
            "reset_method": list(facts.methods) if facts.methods is not None else None,
            "reset": describe(facts),
            "flr": facts.flr,
            "vendor_reset": facts.family.value if facts.family else None,
            "warnings": [{"text": w.text, "fix": w.fix} for w in found],
        }
        for facts, found in report
    ]
