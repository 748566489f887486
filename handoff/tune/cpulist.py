"""The kernel's CPU list syntax, both ways (pure).

sysfs prints CPU sets as lists of numbers and ranges, ``0-3,8,10-11``
(``%*pbl``: a run of two or more is a range); cpusets, ``taskset -c``,
``isolcpus=`` and systemd's ``AllowedCPUs=`` read the same syntax. Parsing
accepts what the kernel's ``bitmap_parselist`` accepts without its rarely
used group suffix (``0-15:2/4``), and refuses it by name instead of guessing.
"""

from __future__ import annotations

from collections.abc import Iterable

from handoff.base.errors import CpuListError

# The kernel's largest NR_CPUS (CONFIG_NR_CPUS_RANGE_END): a bound that keeps
# "0-999999999" from becoming a billion-element set.
MAX_CPU = 8191

_FIX = 'write CPU numbers and ranges separated by commas, for example "2-5,8,10-11"'


def parse_cpulist(text: str, *, what: str = "CPU list") -> frozenset[int]:
    """The CPUs ``text`` names; an empty or blank text is the empty set (sysfs's ``offline``)."""
    stripped = text.strip()
    if not stripped:
        return frozenset()
    cpus: set[int] = set()
    for item in stripped.split(","):
        cpus.update(_parse_item(item.strip(), text, what))
    return frozenset(cpus)


def _parse_item(item: str, text: str, what: str) -> range:
    if not item:
        raise CpuListError(f"{what} {text!r}: an empty item between commas", fix=_FIX)
    if ":" in item:
        raise CpuListError(
            f"{what} {text!r}: {item!r} uses the group form (a-b:used/group), "
            "which handoff does not accept",
            fix="list the CPUs themselves, for example " + '"0-1,4-5" instead of "0-7:2/4"',
        )
    first, dash, last = item.partition("-")
    start = _number(first, item, text, what)
    end = _number(last, item, text, what) if dash else start
    if end < start:
        raise CpuListError(
            f"{what} {text!r}: the range {item!r} runs backwards ({start} > {end})",
            fix=f'write it low to high: "{end}-{start}"',
        )
    return range(start, end + 1)


def _number(word: str, item: str, text: str, what: str) -> int:
    word = word.strip()
    if not word.isdecimal() or not word.isascii():
        raise CpuListError(f"{what} {text!r}: {item!r} is not a CPU number or range", fix=_FIX)
    value = int(word)
    if value > MAX_CPU:
        raise CpuListError(
            f"{what} {text!r}: CPU {value} is beyond the largest CPU number Linux supports "
            f"({MAX_CPU})",
            fix="use the numbers in /sys/devices/system/cpu/online",
        )
    return value


def format_cpulist(cpus: Iterable[int]) -> str:
    """The kernel's spelling of a CPU set: ascending, runs of two or more as ``a-b``."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)
