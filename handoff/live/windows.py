"""Root-port windows sized from a device's BARs (sysfs ``resource``). Pure.

A function hot-plugged behind a ``pcie-root-port`` gets its BARs mapped
inside the bridge windows the firmware gave that port at boot; the guest
cannot grow them later. So the port is created with
``pref64-reserve``/``pref32-reserve``/``mem-reserve`` (QEMU's resource
reserve capability, read by SeaBIOS and OVMF) large enough for every
function that may be plugged into it. Measured with the testbed's GPU
lookalike (a 16 MiB prefetchable BAR): without ``pref32-reserve`` Linux
in the guest said "can't assign; no space" and bochs-drm refused the
device; with 32M it worked.

The size rule: per window kind, twice the sum of the BARs that go into
it, rounded up to a power of two and to at least 1 MiB (a bridge memory
window's granularity). The doubling leaves room for the guest's own
alignment of the BARs inside the window and matches the measured 32M for
the 16 MiB BAR.

Each line of sysfs ``resource`` is ``start end flags`` in hex; lines 0-5
are the BARs, line 6 the expansion ROM (mapped in the non-prefetchable
window), later lines (bridge windows, SR-IOV) do not concern a function
plugged into a port.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Bar",
    "BarKind",
    "PortWindows",
    "parse_resource",
    "size_windows",
]

IORESOURCE_IO = 0x100
IORESOURCE_MEM = 0x200
IORESOURCE_PREFETCH = 0x2000
IORESOURCE_MEM_64 = 0x0010_0000
_ROM_LINE = 6
_MIB = 1 << 20


class BarKind(enum.Enum):
    """Which bridge window a BAR is mapped in."""

    IO = "io"
    MEM = "mem"  # non-prefetchable (and the expansion ROM)
    PREF32 = "pref32"
    PREF64 = "pref64"


@dataclass(frozen=True)
class Bar:
    index: int
    size: int
    kind: BarKind


def _kind(index: int, flags: int) -> BarKind | None:
    if index == _ROM_LINE:
        return BarKind.MEM
    if flags & IORESOURCE_IO:
        return BarKind.IO
    if not flags & IORESOURCE_MEM:
        return None
    if flags & IORESOURCE_PREFETCH:
        return BarKind.PREF64 if flags & IORESOURCE_MEM_64 else BarKind.PREF32
    return BarKind.MEM


def parse_resource(text: str) -> tuple[Bar, ...]:
    """The BARs (and ROM) a sysfs ``resource`` file lists; empty lines (size 0) skipped.

    Raises ValueError for a line that is not three hex numbers.
    """
    bars: list[Bar] = []
    for index, line in enumerate(text.splitlines()[: _ROM_LINE + 1]):
        fields = line.split()
        if len(fields) != 3:
            raise ValueError(f"resource line {index}: expected 'start end flags', got {line!r}")
        start, end, flags = (int(f, 16) for f in fields)
        if end <= start and start == 0:
            continue
        kind = _kind(index, flags)
        if kind is None:
            continue
        bars.append(Bar(index, end - start + 1, kind))
    return tuple(bars)


def _window(total: int, minimum: int) -> int:
    if total == 0:
        return 0
    size = max(minimum, 2 * total)
    return 1 << (size - 1).bit_length()


@dataclass(frozen=True)
class PortWindows:
    """The reserves one root port gets (bytes; 0: nothing asked)."""

    pref64: int = 0
    pref32: int = 0
    mem: int = 0
    io: int = 0

    def qemu_options(self) -> tuple[tuple[str, str], ...]:
        """``pcie-root-port`` properties (``pref64-reserve=16G``), only the non-zero ones."""
        out: list[tuple[str, str]] = []
        for name, value in (("pref64-reserve", self.pref64), ("pref32-reserve", self.pref32),
                            ("mem-reserve", self.mem), ("io-reserve", self.io)):
            if value:
                out.append((name, _size_text(value)))
        return tuple(out)


def _size_text(value: int) -> str:
    for suffix, unit in (("G", 1 << 30), ("M", _MIB), ("K", 1 << 10)):
        if value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)


def size_windows(bars: Iterable[Sequence[Bar]] | Iterable[tuple[Bar, ...]]) -> PortWindows:
    """The windows a port needs for every function's BARs (one sequence per function).

    32-bit prefetchable BARs can live in the 64-bit prefetchable window too,
    but the firmware places that window above 4 GiB when asked for
    pref64: the two are reserved apart, as the guest's allocator would.
    """
    totals = dict.fromkeys(BarKind, 0)
    for function in bars:
        for bar in function:
            totals[bar.kind] += bar.size
    return PortWindows(
        pref64=_window(totals[BarKind.PREF64], _MIB),
        pref32=_window(totals[BarKind.PREF32], _MIB),
        mem=_window(totals[BarKind.MEM], _MIB),
        io=_window(totals[BarKind.IO], 0x1000),
    )
