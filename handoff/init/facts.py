"""The host as `handoff init` sees it: frozen values, read once (pure declarations)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from handoff.pci.plan import HostSnapshot
from handoff.tune.model import CoreKind, HostTopology


@dataclass(frozen=True)
class CpuTopology:
    """The host's online logical CPUs and how they are laid out, as init words its choice.

    A summary of :class:`handoff.tune.model.HostTopology` (the one topology
    reader, :mod:`handoff.tune.topology`): cores are counted from each CPU's
    SMT siblings, so a hybrid Intel (P-cores with SMT, E-cores without) is
    not "logical CPUs / threads of the first core".
    """

    logical: int
    threads_per_core: int = 1
    sockets: int = 1
    physical_cores: int | None = None  # counted from the siblings; None: logical / threads
    p_cores: int = 0  # hybrid Intel: the P-cores ...
    p_threads: int = 1  # ... and their threads each
    e_cores: int = 0  # ... and the E-cores (one thread each)

    @property
    def cores(self) -> int:
        """Physical cores."""
        if self.physical_cores is not None:
            return self.physical_cores
        return max(1, self.logical // self.threads_per_core)

    @property
    def hybrid(self) -> bool:
        return self.p_cores > 0 and self.e_cores > 0

    @classmethod
    def of(cls, topology: HostTopology) -> CpuTopology:
        cores = topology.cores
        p_cores = [c for c in cores if c.kind is CoreKind.PERFORMANCE]
        return cls(
            logical=len(topology.online),
            threads_per_core=max((len(c.cpus) for c in cores), default=1),
            sockets=len({c.package for c in cores}) or 1,
            physical_cores=len(cores) or None,
            p_cores=len(p_cores),
            p_threads=max((len(c.cpus) for c in p_cores), default=1),
            e_cores=sum(1 for c in cores if c.kind is CoreKind.EFFICIENCY),
        )


@dataclass(frozen=True)
class PciName:
    """Vendor and device names from the pci.ids database (None: not listed there)."""

    vendor: str | None = None
    device: str | None = None

    def text(self) -> str:
        return " ".join(part for part in (self.vendor, self.device) if part)


@dataclass(frozen=True)
class InputDeviceFact:
    """A keyboard or mouse on the host now, with the selector that names it."""

    name: str
    selector: str
    kinds: str  # "keyboard", "mouse", "keyboard, mouse" or "unclassified"


class DiskKind(enum.Enum):
    BLOCK = "block device"
    FILE = "file"
    MISSING = "missing"
    OTHER = "other"  # a directory, a socket, ...


@dataclass(frozen=True)
class DiskFact:
    """What a ``--disk PATH`` is on this host.

    ``mounts``: mount points (or ``[swap]``) that use this block device or
    one on top of it (a partition, an LVM volume, dm-crypt); ``root``: one of
    them is the root file system. ``qcow2``: a file starting with qcow2's magic.
    """

    path: Path
    kind: DiskKind
    mounts: tuple[str, ...] = ()
    root: bool = False
    qcow2: bool = False


@dataclass(frozen=True)
class OvmfFiles:
    """The distribution's OVMF code image and the vars template that goes with it."""

    code: Path
    vars_template: Path


@dataclass(frozen=True)
class MonitorFact:
    """A monitor ``ddcutil detect`` found: its display number, I2C bus and model."""

    display: int | None
    bus: int | None
    model: str


@dataclass(frozen=True)
class InitFacts:
    """Everything `handoff init` decides from, gathered read-only by :mod:`.gather`."""

    pci: HostSnapshot
    cpu: CpuTopology
    memory_mib: int
    ovmf: OvmfFiles | None = None
    names: Mapping[tuple[int, int], PciName] = field(default_factory=dict)
    pci_ids: Path | None = None  # the database the names came from
    inputs: tuple[InputDeviceFact, ...] = ()
    disk: DiskFact | None = None
    hugepage_sizes_kib: tuple[int, ...] = ()  # the page sizes the kernel offers
    mem_available_mib: int | None = None  # MemAvailable now
    #: What ``ddcutil detect`` found; None when ddcutil is not installed.
    monitors: tuple[MonitorFact, ...] | None = None
    desktop_user: str | None = None  # who owns the active graphical session ([sound] user)
