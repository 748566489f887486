"""Vendor and device names from the pci.ids database (pure parsing)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from handoff.init.facts import PciName


def pci_names(
    lines: Iterable[str], wanted: Iterable[tuple[int, int]]
) -> Mapping[tuple[int, int], PciName]:
    """Names of the ``(vendor, device)`` ids in ``wanted``, from pci.ids' lines.

    The format: ``vvvv  Vendor`` at the start of a line, ``\\tdddd  Device``
    under it, ``\\t\\tssss ssss  Subsystem`` under that; ``C cc  Class``
    blocks at the end use the same indentation and are skipped.
    """
    want = set(wanted)
    vendors = {v for v, _ in want}
    vendor_names: dict[int, str] = {}
    device_names: dict[tuple[int, int], str] = {}
    vendor: int | None = None
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("C "):
            vendor = None
            continue
        if not line.startswith("\t"):
            vendor = _id_and_name(line, vendor_names, vendors)
            continue
        if vendor is None or line.startswith("\t\t"):
            continue
        key, name = _split(line.strip())
        if key is not None and (vendor, key) in want:
            device_names[(vendor, key)] = name
    return {
        ids: PciName(vendor_names.get(ids[0]), device_names.get(ids))
        for ids in want
        if ids[0] in vendor_names or ids in device_names
    }


def _split(text: str) -> tuple[int | None, str]:
    head, _, name = text.partition("  ")
    try:
        return int(head, 16), name.strip()
    except ValueError:
        return None, ""


def _id_and_name(line: str, names: dict[int, str], wanted: set[int]) -> int | None:
    key, name = _split(line.strip())
    if key is None:
        return None
    if key in wanted:
        names[key] = name
    return key
