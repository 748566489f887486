"""``handoff doctor [PROFILE] [--json]``: is this host ready for GPU passthrough?

The seed guide's host set-up (VT-x/AMD-V, the IOMMU and its kernel command
line, interrupt remapping, vfio modules, the GPU's host driver, memlock,
/dev/vfio ownership, fbcon) turned into checks, each with a verdict and the
exact fix. Without a profile only the host is checked; with one, also its
passthrough devices (judged by the same rules ``handoff run`` applies),
memlock against its RAM, device-node access for its users, QEMU's devices
and its firmware.

Output: one line per check (``ok``, ``skip``, ``warn``, ``fail``), and a
``fix:`` line under each warning and failure; ``--json`` prints a list of
``{"name", "verdict", "detail", "fix"}`` objects instead.

Exit status, in the monitoring-plugin convention so scripts can tell
"ready", "ready with caveats" and "not ready" apart:

    0  every check is ok or skipped
    1  at least one warning, no failure (handoff can run; something is slow
       or optional: TCG instead of KVM, no iommu=pt, ...)
    2  at least one failure (``handoff run`` would refuse or fail)

A usage error (argparse) also exits 2. Doctor never changes the host.
"""

from __future__ import annotations

import argparse
import json
import sys

from handoff.base.errors import HandoffError
from handoff.checks import Check, DoctorEnv, Verdict, fail, ok, skip, worst
from handoff.checks.access import Identity, UnknownUserError, resolve_identity
from handoff.checks.cpu import check_cpu_virtualization, read_cpuinfo
from handoff.checks.iommu import check_interrupt_remapping, check_iommu, check_kernel_cmdline
from handoff.checks.kernel import check_kernel_version, check_module, check_vfio_pci_vga
from handoff.checks.kvm import check_kvm
from handoff.checks.memlock import check_memlock
from handoff.checks.modprobe import check_modprobe_config
from handoff.checks.monitor import check_monitor
from handoff.checks.nodes import (
    check_input_devices,
    check_udev_rule,
    check_uinput,
    check_vfio_nodes,
)
from handoff.checks.profile_files import check_profile_files
from handoff.checks.qemu import DEFAULT_QEMU, Prober, check_ovmf, check_qemu
from handoff.checks.tpm import check_tpm
from handoff.checks.tune import check_tuning
from handoff.cli.profile_lookup import resolve_profile
from handoff.pci.sysfs import groups_of
from handoff.profile import Profile, TpmType, load_profile
from handoff.qemu.capabilities import probe
from handoff.session.host_facts import gather_host_facts
from handoff.session.plan import HostFacts

EXIT_OK = 0
EXIT_WARN = 1
EXIT_FAIL = 2


def run_checks(
    env: DoctorEnv,
    profile: Profile | None = None,
    *,
    qemu_binary: str = DEFAULT_QEMU,
    prober: Prober = probe,
    probe_devices: bool = False,
) -> list[Check]:
    """Every check that applies, in the seed guide's order: CPU, IOMMU, kernel,
    modules, KVM, then the profile's devices, limits, nodes, QEMU and firmware."""
    cpu = read_cpuinfo(env)
    passthrough = [
        check_iommu(env, cpu),
        check_kernel_cmdline(env, cpu),
        check_interrupt_remapping(env, cpu),
        check_kernel_version(env),
        check_module(env, "vfio"),
        check_module(env, "vfio_iommu_type1"),
        check_module(env, "vfio_pci"),
        check_modprobe_config(env),
    ]
    if profile is not None and not profile.passthrough:
        passthrough = [_not_needed(c) for c in passthrough]
    checks: list[Check] = [check_cpu_virtualization(env, profile), *passthrough]
    supervisor = resolve_identity(None, env.euid)
    qemu_user: Identity = supervisor
    if profile is not None and profile.vm.user is not None:
        try:
            qemu_user = resolve_identity(profile.vm.user, env.euid)
        except UnknownUserError:
            checks.append(
                fail(
                    "vm-user",
                    f"{profile.source}: vm.user = {profile.vm.user!r} is not a user on this host",
                    f"useradd --system --no-create-home {profile.vm.user}, or remove vm.user",
                )
            )
    checks.append(check_kvm(env, cpu, qemu_user, profile))
    # The host facts a session plan reads, read once for every check that plans.
    facts = gather_host_facts(profile, env.host, strict=False) if profile is not None else None
    if profile is not None and facts is not None:
        checks.extend(_profile_checks(env, profile, supervisor, qemu_user, facts))
        checks.extend(check_monitor(env, profile, probe=probe_devices))
    checks.append(check_udev_rule(env))
    checks.append(check_qemu(env, profile, qemu_binary, prober, facts=facts))
    if profile is not None:
        checks.append(check_ovmf(profile))
        if profile.tpm.type is not TpmType.NONE:  # only a profile that asks shows the line
            checks.append(check_tpm(profile))
    return checks


def _not_needed(check: Check) -> Check:
    """A passthrough check for a profile that passes nothing through: shown, never failed."""
    if check.verdict in (Verdict.OK, Verdict.SKIP):
        return check
    return skip(
        check.name, f"not needed without [[passthrough]] ({check.verdict.value}: {check.detail})"
    )


def _profile_checks(
    env: DoctorEnv, profile: Profile, supervisor: Identity, qemu_user: Identity,
    facts: HostFacts,
) -> list[Check]:
    # Imported here: the PCI engine is only needed when a profile passes devices through.
    from handoff.checks.devices import check_passthrough_devices
    from handoff.checks.reset import check_resets

    checks: list[Check] = [check_profile_files(profile)]
    checks.extend(check_passthrough_devices(env, profile))
    checks.extend(check_resets(env, profile))
    checks.append(check_vfio_pci_vga(env, profile))
    checks.append(check_memlock(env, profile))
    groups = sorted(groups_of(env.host, (p.address for p in profile.passthrough)))
    if profile.passthrough:
        checks.append(check_vfio_nodes(env, qemu_user, groups))
    else:
        checks.append(skip("vfio-nodes", "no [[passthrough]]: /dev/vfio is not used"))
    checks.append(check_uinput(env, supervisor, profile))
    checks.append(check_input_devices(env, supervisor, profile))
    checks.extend(check_tuning(env, profile, facts.tuning))
    if profile.sound.user is not None:
        from handoff.checks.sound import check_sound_server

        checks.extend(check_sound_server(profile))
    if profile.looking_glass.enabled:
        from handoff.checks.looking_glass import check_looking_glass

        checks.extend(check_looking_glass(env, profile))
    if profile.host_display.handover:
        from handoff.checks.display import check_host_display

        checks.extend(check_host_display(env, profile))
    return checks


# --------------------------------------------------------------------------- output


def exit_status(checks: list[Check]) -> int:
    return {Verdict.FAIL: EXIT_FAIL, Verdict.WARN: EXIT_WARN}.get(worst(checks), EXIT_OK)


def render_text(checks: list[Check]) -> str:
    """``verdict  name  detail`` lines, a ``fix:`` line under warn and fail, and a summary."""
    width = max((len(c.name) for c in checks), default=0)
    lines: list[str] = []
    for check in checks:
        lines.append(f"{check.verdict.value:<4}  {check.name:<{width}}  {check.detail}")
        if check.fix and check.verdict in (Verdict.WARN, Verdict.FAIL):
            lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
    counts = {v: sum(1 for c in checks if c.verdict is v) for v in Verdict}
    summary = ", ".join(f"{counts[v]} {v.value}" for v in Verdict if counts[v])
    lines.append(f"doctor: {summary}")
    return "\n".join(lines) + "\n"


def render_json(checks: list[Check]) -> str:
    return json.dumps([c.as_json() for c in checks], indent=2) + "\n"


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``doctor`` subcommand's arguments (called by handoff.cli.main)."""
    parser.add_argument(
        "profile",
        nargs="?",
        metavar="PROFILE",
        help="also check this profile (file or name): its devices, memory limit, users, QEMU "
        "devices and firmware",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the checks as a JSON list for scripts"
    )
    parser.add_argument(
        "--probe", action="store_true",
        help="also ask devices that answer slowly: the [monitor]'s current input over DDC/CI",
    )
    parser.add_argument(
        "--qemu",
        default=DEFAULT_QEMU,
        metavar="BINARY",
        help=f"the QEMU binary to check (default: {DEFAULT_QEMU})",
    )


def cmd_doctor(args: argparse.Namespace) -> int:
    """Run the checks and print them; the exit status is the worst verdict (0/1/2).

    An unreadable or invalid profile is itself a failed check: the host
    checks still run, since that is when a person needs them most.
    """
    env = DoctorEnv.from_environment()
    profile: Profile | None = None
    early: list[Check] = []
    if args.profile is not None:
        try:
            profile = load_profile(resolve_profile(args.profile))
        except HandoffError as err:
            early.append(fail("profile", err.message, err.fix or "edit the profile"))
        else:
            early.append(ok("profile", f"{profile.source} is valid (vm {profile.name})"))
    checks = early + run_checks(env, profile, qemu_binary=args.qemu, probe_devices=args.probe)
    out = render_json(checks) if args.json else render_text(checks)
    sys.stdout.write(out)
    return exit_status(checks)
