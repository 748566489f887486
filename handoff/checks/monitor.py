"""``handoff doctor`` for ``[monitor]``: ddcutil, the i2c-dev module, the bus, and (``--probe``)
the monitor's answer.

ddcutil talks DDC/CI over /dev/i2c-N, which exist only with the kernel's
``i2c-dev`` module (``/sys/module/i2c_dev``, or ``/sys/class/i2c-dev`` when
built in). ``--probe`` runs ``ddcutil getvcp 60`` (the current input) and
compares it as ``value & 0xff`` (some monitors set high bits). Never changes
the host; never raises for a host problem.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from handoff.checks import Check, DoctorEnv, fail, ok, skip, warn
from handoff.monitor.mccs import same_input
from handoff.monitor.plan import DDC_TIMEOUT, DDCUTIL, getvcp_argv, input_name, parse_getvcp
from handoff.profile import Monitor, Profile

INSTALL_FIX = "apt-get install ddcutil (the DDC/CI tool handoff runs to switch the input)"
MODULE_FIX = (
    "modprobe i2c-dev, and load it at boot: echo i2c-dev > /etc/modules-load.d/i2c-dev.conf"
)


def check_monitor(env: DoctorEnv, profile: Profile, *, probe: bool = False) -> list[Check]:
    """One check each: ddcutil, i2c-dev, the bus's node; with ``probe`` the current input."""
    monitor = profile.monitor
    if not monitor.configured:
        return []
    ddcutil = shutil.which(DDCUTIL)
    checks = [
        ok("ddcutil", f"{ddcutil}") if ddcutil else fail(
            "ddcutil", "ddcutil is not installed (not on PATH)", INSTALL_FIX
        ),
        check_i2c_dev(env),
        check_bus(env, monitor),
    ]
    if probe:
        checks.append(probe_input(monitor) if ddcutil else skip(
            "monitor-input", "ddcutil is not installed: nothing to ask the monitor with"))
    return checks


def check_i2c_dev(env: DoctorEnv) -> Check:
    """The i2c-dev module is loaded (or built in): /dev/i2c-N exist."""
    for path in (env.host.sys / "module" / "i2c_dev", env.host.sys / "class" / "i2c-dev"):
        if path.exists():
            return ok("i2c-dev", f"{path} exists: /dev/i2c-N are there for ddcutil")
    return fail("i2c-dev", f"the i2c-dev module is not loaded ({env.host.sys}/module/i2c_dev "
                "is missing): ddcutil has no /dev/i2c-N to talk to", MODULE_FIX)


def check_bus(env: DoctorEnv, monitor: Monitor) -> Check:
    """The monitor's /dev/i2c-N exists and the supervisor may read and write it."""
    if monitor.ddc_bus is None:
        return skip("i2c-bus", f"ddc_display = {monitor.ddc_display}: ddcutil finds its bus")
    node = env.host.dev / f"i2c-{monitor.ddc_bus}"
    if not node.exists():
        return fail(
            "i2c-bus", f"{node} does not exist",
            f"check ddc_bus (`ddcutil detect` lists each monitor's /dev/i2c-N); {MODULE_FIX}",
        )
    if not _may_use(node, env.euid):
        return fail(
            "i2c-bus", f"{node} is not readable and writable for uid {env.euid}",
            "run handoff as root, or add the user to the i2c group (ddcutil's udev rule "
            "gives it /dev/i2c-N)",
        )
    return ok("i2c-bus", f"{node} is readable and writable")


def _may_use(node: Path, euid: int) -> bool:
    if euid == 0:
        return True
    return os.access(node, os.R_OK | os.W_OK)


def probe_input(monitor: Monitor) -> Check:
    """``ddcutil getvcp 60``: the monitor answers, and which input it shows."""
    argv = getvcp_argv(monitor)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=DDC_TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return fail("monitor-input", f"{' '.join(argv)}: {exc}",
                    "check the monitor's DDC/CI setting (its on-screen menu) and the bus")
    value = parse_getvcp(done.stdout)
    if done.returncode != 0 or value is None:
        said = (done.stderr or done.stdout).strip().splitlines()
        return fail(
            "monitor-input",
            f"{' '.join(argv)} did not read the input: {said[-1] if said else done.returncode}",
            "turn DDC/CI on in the monitor's menu; check ddc_bus/ddc_display (`ddcutil detect`)",
        )
    for side, wanted in (("host", monitor.host_input), ("guest", monitor.guest_input)):
        if wanted is not None and same_input(value, wanted):
            return ok("monitor-input", f"the monitor shows {input_name(value)}: the {side} "
                      "input of the profile")
    return warn(
        "monitor-input",
        f"the monitor shows {input_name(value)}, neither guest_input nor host_input",
        "check guest_input/host_input against `ddcutil capabilities` (VCP 60's values)",
    )
