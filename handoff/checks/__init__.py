"""Host checks behind ``handoff doctor``: the seed guide's host set-up, verified.

Every check is a pure-ish function over a :class:`DoctorEnv` (the kernel
roots of :class:`handoff.base.host.HostPaths` plus the few non-kernel places a
check reads: /lib/modules, the udev rule directories) returning one or more
:class:`Check` values. A check never changes the host and never raises for
a host problem: a missing file is a verdict with a fix, not an exception.
That keeps ``doctor`` useful exactly on the broken hosts it is for.

Modules, one job each: cpu (virtualization extensions, vendor), iommu
(IOMMU active, kernel command line, interrupt remapping), kernel (version,
vfio modules, vfio-pci VGA support), modprobe (modprobe.d blacklists and
vfio-pci ids), kvm (/dev/kvm, PVM hosts), access (who may open a node or
file, pure), nodes (/dev/vfio, the udev rule, uinput and /dev/input),
devices (a profile's passthrough functions, judged by the PCI engine's
planner), profile_files (a profile's user and files), memlock, qemu
(binary, version, devices, OVMF), tune (a profile's pinning, hugepages,
governor and isolation, judged by the tuning planners).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from handoff.base.host import HostPaths


class Verdict(Enum):
    """How a check came out, in increasing order of severity.

    ``skip`` means the check does not apply (no profile given, the profile
    uses no input, ...); it never raises the exit status.
    """

    OK = "ok"
    SKIP = "skip"
    WARN = "warn"
    FAIL = "fail"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Verdict.OK: 0, Verdict.SKIP: 0, Verdict.WARN: 1, Verdict.FAIL: 2}


@dataclass(frozen=True)
class Check:
    """One line of ``handoff doctor``.

    ``name`` is a stable identifier scripts can match (``iommu``,
    ``device:0000:01:00.0``); ``detail`` says what was found, naming the file
    it was read from; ``fix`` is the exact next step for warn and fail.
    """

    name: str
    verdict: Verdict
    detail: str
    fix: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "verdict": self.verdict.value,
            "detail": self.detail,
            "fix": self.fix,
        }


def ok(name: str, detail: str) -> Check:
    return Check(name, Verdict.OK, detail)


def skip(name: str, detail: str) -> Check:
    return Check(name, Verdict.SKIP, detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, Verdict.WARN, detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, Verdict.FAIL, detail, fix)


def worst(checks: Iterable[Check]) -> Verdict:
    """The most severe verdict (OK for no checks at all)."""
    result = Verdict.OK
    for check in checks:
        if check.verdict.severity > result.severity:
            result = check.verdict
    return result


DEFAULT_UDEV_RULE_DIRS: tuple[Path, ...] = (
    Path("/etc/udev/rules.d"),
    Path("/run/udev/rules.d"),
    Path("/usr/lib/udev/rules.d"),
    Path("/lib/udev/rules.d"),
    Path("/usr/local/lib/udev/rules.d"),
)


@dataclass(frozen=True)
class DoctorEnv:
    """Where the checks look, and who is asking.

    ``host`` carries the kernel roots (fake trees in tests, the testbed's
    real kernel, or the host). ``modules`` is /lib/modules (modules.dep,
    modules.builtin); ``boot`` holds the kernel's config-RELEASE;
    ``modprobe_dirs`` are kmod's configuration directories in its order;
    ``udev_rule_dirs`` are udev's rule directories in its own precedence
    order. ``euid`` is the user running doctor: root may chown device nodes
    and raise limits for QEMU, a person may not.
    """

    host: HostPaths = field(default_factory=HostPaths)
    modules: Path = Path("/lib/modules")
    udev_rule_dirs: tuple[Path, ...] = DEFAULT_UDEV_RULE_DIRS
    euid: int = 0
    boot: Path = Path("/boot")
    modprobe_dirs: tuple[Path, ...] = (
        Path("/etc/modprobe.d"),
        Path("/run/modprobe.d"),
        Path("/usr/local/lib/modprobe.d"),
        Path("/usr/lib/modprobe.d"),
        Path("/lib/modprobe.d"),
    )

    @classmethod
    def from_environment(cls) -> DoctorEnv:
        """The real host, with HANDOFF_* root overrides and HANDOFF_MODULES_ROOT."""
        return cls(
            host=HostPaths.from_environment(),
            modules=Path(os.environ.get("HANDOFF_MODULES_ROOT", "/lib/modules")),
            boot=Path(os.environ.get("HANDOFF_BOOT_ROOT", "/boot")),
            euid=os.geteuid(),
        )


def read_text(path: Path) -> str | None:
    """The file's text, or None when it is missing or unreadable (a verdict, not a crash)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
