"""Which CPUs the host's own tasks may use while the VM runs (pure).

With ``cpu.isolate = true`` systemd's ``AllowedCPUs=`` of system.slice,
user.slice and init.scope (every host task outside the VM) becomes the
online CPUs minus the CPUs pinned to vCPUs, and QEMU's own scope gets the
vCPUs' and emulator's CPUs.

The emulator CPUs stay available to the host. ``emulator = "auto"`` is by
definition the CPUs no vCPU uses, i.e. exactly the host's share: taking
them from the host would leave it nothing. And QEMU's main loop and I/O
threads do host-side work anyway (virtio queues, disk and USB I/O, the
interrupts of passed-through devices are handled next to them), so sharing
those CPUs with the host costs the guest no vCPU time; what isolation
protects is the vCPUs' cores. It is the split the usual libvirt hook scripts
make (``systemctl set-property --runtime -- system.slice AllowedCPUs=...`` with
the host's CPUs while the guest runs, all CPUs again at release), which leave
``<emulatorpin>`` on the host's CPUs.

QEMU itself runs in a transient scope of its own, in machine.slice (never
under a confined slice, whose cpuset would cap the scope's): the session
starts it through :func:`scope_argv` (``systemd-run --scope``), which
creates the scope with ``AllowedCPUs=`` and then execs QEMU under the same
pid, so QEMU never runs a single instruction outside it. The wrapper is part
of the argv ``handoff argv`` prints: it is what ``handoff run`` starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from handoff.base.errors import IsolationRefusedError
from handoff.tune.cpulist import format_cpulist

HOST_UNITS = ("system.slice", "user.slice", "init.scope")
#: The slice QEMU's scope goes to: the one libvirt uses for VMs; never confined.
QEMU_SLICE = "machine.slice"
SYSTEMD_RUN = "systemd-run"


def qemu_scope_unit(profile_name: str) -> str:
    """``handoff-NAME-qemu.scope`` (profile names are valid unit-name characters)."""
    return f"handoff-{profile_name}-qemu.scope"


def scope_argv(
    profile_name: str, plan: IsolationPlan, qemu_argv: tuple[str, ...], user: str | None = None
) -> tuple[str, ...]:
    """``qemu_argv`` started in QEMU's own scope with the VM's CPUs (systemd-run execs it).

    With ``vm.user``, systemd-run switches to that user after creating the
    scope (creating it needs root): ``--uid``; the supervisor's child sets the
    user's supplementary groups before it execs systemd-run.
    """
    unit = qemu_scope_unit(profile_name).removesuffix(".scope")
    wrapper = [
        SYSTEMD_RUN, "--scope", "--quiet", "--collect", f"--unit={unit}",
        f"--slice={QEMU_SLICE}", f"--property=AllowedCPUs={plan.qemu_scope}",
    ]  # fmt: skip
    if user is not None:
        wrapper.append(f"--uid={user}")
    return (*wrapper, "--", *qemu_argv)


@dataclass(frozen=True)
class IsolationPlan:
    """unit -> AllowedCPUs value for the host's units, and the VM scope's value."""

    host_cpus: frozenset[int]
    vm_cpus: frozenset[int]
    units: tuple[tuple[str, str], ...]
    qemu_scope: str
    reasons: tuple[str, ...]


def plan_isolation(
    online: frozenset[int], vcpu_cpus: frozenset[int], emulator: frozenset[int]
) -> IsolationPlan:
    """The AllowedCPUs values, or IsolationRefusedError when the host would keep no CPU."""
    if not vcpu_cpus:
        raise IsolationRefusedError(
            "cpu.isolate = true needs pinned vCPUs: with pin = none the VM may run on every "
            "CPU, so there is nothing to keep host tasks away from",
            fix='set cpu.pin = "auto" (or a list), or cpu.isolate = false',
        )
    host = online - vcpu_cpus
    if not host:
        raise IsolationRefusedError(
            f"cpu.isolate = true would leave host tasks no CPU: the vCPUs use every online CPU "
            f"({format_cpulist(online)})",
            fix='leave at least one core out of cpu.pin (pin = "auto" keeps the first one)',
        )
    value = format_cpulist(host)
    vm = vcpu_cpus | emulator
    shared = emulator & host
    reasons = [
        f"host tasks (system.slice, user.slice, init.scope) on CPUs {value}, "
        f"away from the vCPUs' CPUs {format_cpulist(vcpu_cpus)}"
    ]
    if shared:
        reasons.append(
            f"the emulator's CPUs {format_cpulist(shared)} stay with the host: QEMU's I/O "
            "threads are host-side work, the vCPUs' cores are what isolation protects"
        )
    return IsolationPlan(
        host_cpus=host,
        vm_cpus=vm,
        units=tuple((unit, value) for unit in HOST_UNITS),
        qemu_scope=format_cpulist(vm),
        reasons=tuple(reasons),
    )
