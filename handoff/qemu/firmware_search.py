"""Read QEMU's firmware descriptors from the host (the edge of :mod:`.firmware_descriptors`).

The interop rules (QEMU's docs/interop/firmware.json): descriptors live in
``/usr/share/qemu/firmware`` (the distribution's) and ``/etc/qemu/firmware``
(the administrator's); a file in /etc replaces the one of the same name in
/usr/share (an empty one hides it), and all are taken in the order of their
file names, which is their priority. Read-only; a file that cannot be read or
parsed is skipped (debug log), as libvirt does.
"""

from __future__ import annotations

import logging
from pathlib import Path

from handoff.qemu.firmware_descriptors import FirmwareDescriptor, parse_descriptor

log = logging.getLogger(__name__)

#: Lowest priority first: a later directory's file replaces an earlier one of the same name.
DESCRIPTOR_DIRS = (Path("/usr/share/qemu/firmware"), Path("/etc/qemu/firmware"))


def read_descriptors(dirs: tuple[Path, ...] = DESCRIPTOR_DIRS) -> tuple[FirmwareDescriptor, ...]:
    """Every usable descriptor under ``dirs``, in priority order."""
    files: dict[str, Path] = {}
    for directory in dirs:
        try:
            entries = sorted(directory.glob("*.json"))
        except OSError:
            continue
        for entry in entries:
            files[entry.name] = entry
    found: list[FirmwareDescriptor] = []
    for name in sorted(files):
        path = files[name]
        try:
            text = path.read_text(encoding="utf-8")
            if not text.strip():
                continue  # an empty file in /etc hides the distribution's
            descriptor = parse_descriptor(text, str(path))
        except (OSError, ValueError) as exc:
            log.debug("skipping firmware descriptor %s: %s", path, exc)
            continue
        if descriptor is not None:
            found.append(descriptor)
    return tuple(found)
