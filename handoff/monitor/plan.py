"""The ddcutil commands for ``[monitor]``, and the hooks that run them. Pure.

handoff does not speak DDC/CI itself: ddcutil (Debian package ``ddcutil``)
is the well-kept tool. It is run with ``--noverify`` (no read-back after
``setvcp``: many monitors answer slowly or not at all while they switch
input, which is exactly now) and a lower ``--sleep-multiplier`` (ddcutil's
DDC/CI waits, scaled: fast yet tolerant). The commands are ordinary hooks
(:class:`~handoff.profile.model.Hook`) that run before the profile's own,
so they are queued, bounded and logged like any hook.
"""

from __future__ import annotations

import re

from handoff.monitor.mccs import INPUT_SOURCES
from handoff.profile.model import Hook, HookEvent, Monitor, MonitorFollow

DDCUTIL = "ddcutil"
#: ddcutil's DDC/CI sleeps, scaled (1.0 is ddcutil's default; 0.5 is fast yet tolerant).
SLEEP_MULTIPLIER = "0.5"
#: Seconds a ddcutil run may take (a slow monitor and a retry fit).
DDC_TIMEOUT = 10.0
INPUT_SELECT = "60"
#: ``ddcutil --terse getvcp 60``: "VCP 60 SNC x0f" (SNC: simple non-continuous).
_TERSE = re.compile(r"^VCP\s+60\s+SNC\s+x([0-9a-fA-F]+)\s*$", re.MULTILINE)


def target(monitor: Monitor) -> tuple[str, ...]:
    """ddcutil's options naming the monitor: its I2C bus, or its display number."""
    if monitor.ddc_bus is not None:
        return ("--bus", str(monitor.ddc_bus))
    return ("--display", str(monitor.ddc_display))


def setvcp_argv(monitor: Monitor, value: int) -> tuple[str, ...]:
    """Switch the monitor's input to ``value`` (VCP 0x60)."""
    return (DDCUTIL, *target(monitor), "--noverify", "--sleep-multiplier", SLEEP_MULTIPLIER,
            "setvcp", INPUT_SELECT, f"0x{value:02x}")


def getvcp_argv(monitor: Monitor) -> tuple[str, ...]:
    """Read the monitor's current input (doctor ``--probe``)."""
    return (DDCUTIL, *target(monitor), "--sleep-multiplier", SLEEP_MULTIPLIER, "--terse",
            "getvcp", INPUT_SELECT)


def parse_getvcp(output: str) -> int | None:
    """The value ``ddcutil --terse getvcp 60`` printed, None when it printed none."""
    match = _TERSE.search(output)
    return int(match[1], 16) if match else None


def input_name(value: int) -> str:
    """An input value as a person reads it: its MCCS name, or the number."""
    for name, known in INPUT_SOURCES.items():
        if known == value & 0xFF:
            return f"{name} (0x{value & 0xFF:02x})"
    return f"0x{value:02x}"


def monitor_hooks(monitor: Monitor) -> tuple[Hook, ...]:
    """The hooks that switch the monitor: on input moves, or on a live GPU's."""
    if not monitor.configured:
        return ()
    to_guest, to_host = (
        (HookEvent.GUEST, HookEvent.HOST)
        if monitor.follow is MonitorFollow.INPUT
        else (HookEvent.GPU_GUEST, HookEvent.GPU_HOST)
    )
    hooks = []
    if monitor.guest_input is not None:
        hooks.append(Hook(to_guest, setvcp_argv(monitor, monitor.guest_input), DDC_TIMEOUT))
    if monitor.host_input is not None:
        hooks.append(Hook(to_host, setvcp_argv(monitor, monitor.host_input), DDC_TIMEOUT))
    return tuple(hooks)
