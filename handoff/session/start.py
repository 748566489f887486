"""Before a session changes anything: read the host once, plan, check, build the resources.

:func:`preflight` reads the host facts once (:func:`handoff.session.host_facts.gather_host_facts`),
plans the session from them (:func:`handoff.session.plan.plan_session`) and
checks the plan's QEMU devices against the binary; a refusal here changes
nothing. :func:`default_resources` then builds the host resources *from that
plan*, each with its own typed decision: the GPU and live hand-offs
(``plan.gpu``, ``plan.live``), the display's takeover (``plan.display``),
the input proxies (``plan.proxies``), the tuning (``plan.tune``), or the
refusal the plan reached; a resource re-reads the host at acquire only to
check (ARCHITECTURE.md, "The plan → resources contract"). ``handoff run``,
``run --dry-run`` and ``handoff argv`` all print from a
:class:`~handoff.session.plan.SessionPlan`.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from handoff.base.host import HostPaths
from handoff.checks.profile_files import check_profile_on_host
from handoff.profile import Accelerator, InputBackend, Profile, TpmType
from handoff.qemu.capabilities import check_bridges, check_supported, probe
from handoff.qemu.firmware_vars import vars_origin_refusal
from handoff.session.host_facts import gather_host_facts
from handoff.session.plan import MONITOR_FD_PLACEHOLDER, HostFacts, SessionPlan, plan_session
from handoff.session.resources import HostResource

__all__ = [
    "DRY_RUN_MONITOR_FD",
    "Preflight",
    "default_resources",
    "preflight",
    "print_line",
    "session_argv",
    "session_plan",
]

#: The fd number ``handoff argv`` / ``--dry-run`` shows for the QMP socketpair end.
DRY_RUN_MONITOR_FD = MONITOR_FD_PLACEHOLDER


@dataclass(frozen=True)
class Preflight:
    """What the read-only checks decided: the session plan they passed."""

    plan: SessionPlan

    @property
    def accel(self) -> Accelerator:
        return self.plan.facts.accel

    @property
    def accel_reason(self) -> str:
        return self.plan.facts.accel_reason


def print_line(line: str) -> None:
    """The session's status-line printer (``handoff: ...`` on stdout)."""
    print(f"handoff: {line}", flush=True)


def default_resources(
    plan: SessionPlan, paths: HostPaths, *, report: Callable[[str], None] | None = None
) -> list[HostResource]:
    """The host resources ``plan`` needs, in acquisition order, built from the plan.

    The display leaves the card before the GPU is handed off; the GPU is on
    vfio-pci before QEMU opens it; releasing in reverse gives keyboard and
    mouse back to the host first; the tuning goes last (its pool and governors
    go back first, once QEMU is gone). ``report`` is the session's status-line
    printer, for resources that report their own steps.
    """
    profile = plan.profile
    report = report or print_line
    resources: list[HostResource] = []
    hooks = None
    if profile.hooks or profile.monitor.configured:  # first: released last
        from handoff.hooks.runner import HookRunner
        from handoff.monitor.plan import monitor_hooks

        hooks = HookRunner(profile, owned=monitor_hooks(profile.monitor))
        resources.append(hooks)
    # Each resource's module (sysfs and journal code; evdev, pyudev) is imported
    # only when the profile uses it: a plain VM starts without them.
    if profile.looking_glass.enabled:  # first: a refused kvmfr device changes nothing else
        from handoff.desk.shm import LookingGlassShm

        resources.append(LookingGlassShm(profile, paths, report=report))
    if profile.usb:
        from handoff.desk.usb_host import UsbPassthrough

        resources.append(UsbPassthrough(profile, paths, report=report))
    if profile.sound.user is not None and profile.vm.user is not None:
        from handoff.desk.sound_access import SoundAccess

        resources.append(SoundAccess(profile, paths, report=report))
    if profile.shares:  # virtiofsd listens before QEMU connects
        from handoff.desk.virtiofsd import VirtiofsShares

        resources.append(VirtiofsShares(profile, paths, report=report))
    if profile.host_display.handover:
        from handoff.display.resource import DisplayHandover
        from handoff.pci.ops import KernelWriter
        from handoff.session.recovery import card_return

        resources.append(DisplayHandover(
            profile, paths, report=report, return_card=card_return(paths, KernelWriter()),
            gpu=plan.gpu, gpu_refusal=plan.gpu_refusal, planned=plan.display,
            planned_refusal=plan.display_refusal,
        ))
    if any(not p.live for p in profile.passthrough):
        from handoff.pci.resource import GpuHandoff

        resources.append(GpuHandoff(profile, paths, report=report, planned=plan.gpu,
                                    refusal=plan.gpu_refusal))
    live = None
    if any(p.live for p in profile.passthrough):
        from handoff.live.resource import LiveGpu

        live = LiveGpu(profile, paths, report=report, planned=plan.live,
                       refusal=plan.live_refusal)
        resources.append(live)
    if profile.input.backend is not InputBackend.NONE:
        from handoff.input.resource import InputHandoff

        inputs = InputHandoff(profile, paths, proxies=plan.proxies)
        resources.append(inputs)
        if live is not None and profile.input.follow_gpu:
            from handoff.live.state import LiveState

            live.on_moved = lambda state: inputs.follow_gpu(state is LiveState.IN_GUEST)
        if hooks is not None:
            inputs.on_mode = hooks.on_input_mode
        if live is not None and profile.input.gpu_hotkey:
            from functools import partial

            from handoff.control.protocol import Side

            inputs.on_gpu_hotkey = partial(live.move, Side.TOGGLE)  # `handoff gpu` toggle
    if live is not None and hooks is not None:
        live.on_moved = _gpu_hooks(live.on_moved, hooks.on_gpu_moved)
    if plan.tune is not None:
        from handoff.tune.resource import TuneResource

        resources.append(TuneResource(profile, paths, plan.tune, report=report))
    if plan.paths.tpm_socket is not None:  # last: swtpm waits for no client for long
        from handoff.tpm.resource import Swtpm

        resources.append(Swtpm(profile, paths, report=report))
    return resources


def _gpu_hooks(
    follow: Callable[[Any], Awaitable[None]] | None, fire: Callable[[bool], None]
) -> Callable[[Any], Awaitable[None]]:
    """A live GPU moved: queue the gpu-guest/gpu-host hooks, then let input follow."""
    from handoff.live.state import LiveState

    async def moved(state: Any) -> None:
        fire(state is LiveState.IN_GUEST)
        if follow is not None:
            await follow(state)

    return moved


def preflight(
    profile: Profile,
    paths: HostPaths,
    *,
    binary: str = "qemu-system-x86_64",
    trace_file: os.PathLike[str] | None = None,
) -> Preflight:
    """The read-only checks before anything changes; raises HandoffError to refuse.

    Reads the host once, plans the session from it (which refuses
    profile/accelerator combinations such as ``cpu_model = "host"`` without
    KVM, and a tuning the host cannot give) and checks every QEMU device of
    the plan's argv, the input backend's included, against the binary.
    """
    check_profile_on_host(profile)
    _check_desk(profile, paths)
    if profile.tpm.type is TpmType.EMULATED:
        from handoff.tpm.resource import require_swtpm

        require_swtpm(profile)  # the packages named before anything changes
    plan = session_plan(profile, paths, gather_host_facts(profile, paths, binary=binary),
                        binary=binary, trace_file=trace_file)
    caps = probe(binary)
    check_supported(profile, plan.devices, caps, accel=plan.facts.accel)
    check_bridges(profile, paths)
    if plan.profile.firmware != profile.firmware:  # chosen from QEMU's descriptors
        check_profile_on_host(plan.profile)
    refusal = vars_origin_refusal(plan.profile)
    if refusal is not None:
        raise refusal
    return Preflight(plan)


def _check_desk(profile: Profile, paths: HostPaths) -> None:
    """The desk's refusals before anything changes (kvmfr, owner, USB, shares)."""
    if profile.looking_glass.enabled:
        from handoff.desk.shm import LookingGlassShm

        LookingGlassShm(profile, paths).check()
    if profile.usb:
        from handoff.desk.usb_host import UsbPassthrough

        UsbPassthrough(profile, paths).check()
    if profile.shares:
        from handoff.desk.virtiofsd import VirtiofsShares

        VirtiofsShares(profile, paths).check()


def session_plan(
    profile: Profile,
    paths: HostPaths,
    facts: HostFacts,
    *,
    binary: str = "qemu-system-x86_64",
    trace_file: os.PathLike[str] | None = None,
) -> SessionPlan:
    """:func:`handoff.session.plan.plan_session` with the session's argument types."""
    trace = Path(trace_file) if trace_file is not None else None
    return plan_session(profile, facts, paths, binary=binary, trace_file=trace)


def session_argv(
    profile: Profile,
    paths: HostPaths,
    accel: Accelerator,
    *,
    binary: str = "qemu-system-x86_64",
    monitor_fd: int = DRY_RUN_MONITOR_FD,
    trace_file: os.PathLike[str] | None = None,
) -> list[str]:
    """The plan's argv under ``accel``, with QMP on ``monitor_fd`` (benchmarks, tools).

    QEMU starts paused (``-S``) so the supervisor's tasks are up before the
    guest's first instruction, and gets QMP on an inherited fd.
    """
    facts = replace(gather_host_facts(profile, paths, strict=False), accel=accel)
    plan = session_plan(profile, paths, facts, binary=binary, trace_file=trace_file)
    return list(plan.argv_with_monitor_fd(monitor_fd))
