"""KVM or TCG: use KVM only where it really works, and say why.

``/dev/kvm`` existing is not enough: a person may lack the rights to open it
(not in group ``kvm``), and on a PVM host (KVM itself running inside a
paravirtualised guest, /sys/module/kvm_pvm) KVM guests start but crawl, so
TCG is the faster choice there. The reason is printed in the session's
status output, because "why is my VM slow" starts with which accelerator
it got.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from enum import Enum

from handoff.base.errors import HostError
from handoff.base.host import HostPaths
from handoff.profile import Accel, Accelerator


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator QEMU gets, and one sentence saying why."""

    accel: Accelerator
    reason: str


def is_pvm_host(paths: HostPaths) -> bool:
    """KVM here is PVM (a guest kernel's KVM without hardware virtualisation)."""
    return (paths.sys / "module" / "kvm_pvm").exists()


class KvmProblemKind(Enum):
    """Why /dev/kvm cannot be used; each has its own fix."""

    PVM_HOST = "pvm-host"
    MISSING = "missing"
    PERMISSION = "permission"
    OTHER = "other"


@dataclass(frozen=True)
class KvmProblem:
    """What is wrong with KVM here: the kind (decides the fix) and the sentence shown."""

    kind: KvmProblemKind
    text: str

    @property
    def fix(self) -> str:
        return _FIXES[self.kind]


_FIXES = {
    KvmProblemKind.PVM_HOST:
        "run the VM on a host with hardware virtualisation (not inside a PVM guest)",
    KvmProblemKind.PERMISSION:
        "add the user to the kvm group (usermod -aG kvm USER) or run handoff as root",
    KvmProblemKind.MISSING:
        "enable VT-x/AMD-V in the firmware setup and load the module "
        "(modprobe kvm_intel or modprobe kvm_amd); `handoff doctor` checks both",
    KvmProblemKind.OTHER: "check `handoff doctor` for the KVM checks",
}


def diagnose_kvm(paths: HostPaths) -> KvmProblem | None:
    """Why KVM cannot be used on this host, or None when /dev/kvm works."""
    if is_pvm_host(paths):
        return KvmProblem(
            KvmProblemKind.PVM_HOST,
            "this is a PVM host (/sys/module/kvm_pvm exists): KVM guests run inside a "
            "paravirtualised guest and crawl",
        )
    kvm = paths.dev / "kvm"
    try:
        fd = os.open(kvm, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return KvmProblem(
            KvmProblemKind.MISSING,
            f"{kvm} does not exist (no hardware virtualisation, disabled in the firmware, "
            "or the kvm_intel/kvm_amd module is not loaded)",
        )
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return KvmProblem(
                KvmProblemKind.PERMISSION, f"{kvm} cannot be opened read-write: permission denied"
            )
        return KvmProblem(
            KvmProblemKind.OTHER, f"{kvm} cannot be opened read-write: {exc.strerror}"
        )
    os.close(fd)
    return None


def kvm_problem(paths: HostPaths) -> str | None:
    """The sentence of :func:`diagnose_kvm`, or None when /dev/kvm works."""
    problem = diagnose_kvm(paths)
    return None if problem is None else problem.text


def choose_accel(requested: Accel, paths: HostPaths, *, strict: bool = True) -> AccelChoice:
    """KVM for ``auto`` when it works, TCG otherwise; ``kvm`` refuses without it.

    Raises :class:`HostError` when the profile insists on KVM (vm.accel =
    "kvm") and this host cannot give it: silently emulating a gaming VM
    would only look like a hang. With ``strict=False`` (``handoff argv``,
    ``run --dry-run``: showing the command, not running it) the KVM request
    is kept and the reason says that a real run would refuse.
    """
    if requested is Accel.TCG:
        return AccelChoice(Accelerator.TCG, 'the profile asks for TCG (vm.accel = "tcg")')
    problem = diagnose_kvm(paths)
    if problem is None:
        return AccelChoice(Accelerator.KVM, f"{paths.dev / 'kvm'} opens read-write")
    if requested is Accel.KVM and not strict:
        return AccelChoice(
            Accelerator.KVM,
            f"the profile asks for KVM; `handoff run` would refuse here: {problem.text}",
        )
    if requested is Accel.KVM:
        raise HostError(
            f'the profile asks for KVM (vm.accel = "kvm") but {problem.text}',
            fix=problem.fix
            + '; or set vm.accel = "auto" to fall back to TCG emulation (slow)',
        )
    return AccelChoice(Accelerator.TCG, f"TCG emulation because {problem.text}")

