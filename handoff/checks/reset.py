"""A profile's passthrough functions' resets: what they offer, and what will go wrong.

The rules are :mod:`handoff.pci.reset`'s (the same :func:`warnings` a
session reports before its first start and the same :func:`pin_value`
preflight refuses with), over the facts :mod:`handoff.pci.reset_sysfs`
reads; vendor-reset's presence is judged from the modules of the tree
doctor looks at. Changes nothing.
"""

from __future__ import annotations

from handoff.base.errors import PreflightRefusedError
from handoff.checks import Check, DoctorEnv, fail, ok, warn
from handoff.checks.kernel import ModuleState, module_state
from handoff.pci.reset import describe, pin_value, warnings
from handoff.pci.reset_sysfs import read_reset_facts
from handoff.profile import Profile


def check_resets(env: DoctorEnv, profile: Profile) -> list[Check]:
    """One line per [[passthrough]] function: its reset methods, or the problem and the fix."""
    checks: list[Check] = []

    def loadable(module: str) -> bool:
        return module_state(env, module) is not ModuleState.MISSING

    for index, entry in enumerate(profile.passthrough):
        name = f"reset:{entry.address}"
        if not (env.host.sys / "bus" / "pci" / "devices" / str(entry.address)).is_dir():
            continue  # the passthrough check already says the device does not exist
        facts = read_reset_facts(env.host, entry.address, loadable)
        try:
            pin_value(entry.reset, facts, f"{profile.source}: passthrough[{index}].reset")
        except PreflightRefusedError as refused:
            checks.append(fail(name, refused.message, refused.fix or "see README: reset"))
            continue
        found = warnings(facts)
        if not found:
            pinned = "" if entry.reset.value == "auto" else f" (pinned: {entry.reset.value})"
            checks.append(ok(name, f"{entry.address.short} resets with {describe(facts)}{pinned}"))
        for warning in found:
            checks.append(warn(name, f"{warning.text} (reset methods: {describe(facts)})",
                               warning.fix))
    return checks
