"""The host as `handoff init` sees it: frozen values, read once (pure declarations)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from handoff.pci.plan import HostSnapshot


@dataclass(frozen=True)
class CpuTopology:
    """The host's online logical CPUs and how they are laid out."""

    logical: int
    threads_per_core: int = 1
    sockets: int = 1

    @property
    def cores(self) -> int:
        """Physical cores (logical CPUs over SMT threads)."""
        return max(1, self.logical // self.threads_per_core)


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
class HostFacts:
    """Everything `handoff init` decides from, gathered read-only by :mod:`.gather`."""

    pci: HostSnapshot
    cpu: CpuTopology
    memory_mib: int
    ovmf: OvmfFiles | None = None
    names: Mapping[tuple[int, int], PciName] = field(default_factory=dict)
    pci_ids: Path | None = None  # the database the names came from
    inputs: tuple[InputDeviceFact, ...] = ()
    disk: DiskFact | None = None
    #: What ``ddcutil detect`` found; None when ddcutil is not installed.
    monitors: tuple[MonitorFact, ...] | None = None
