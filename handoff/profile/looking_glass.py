"""``[looking_glass]`` TOML → :class:`~handoff.profile.model.LookingGlass`. Pure.

Read through :meth:`handoff.profile.reader.Reader.fields` with :data:`LG_KEYS`
(enabled, hdr and device by their declared types), so every refusal names the
file, the key, the value and the fix like the other sections; then the checks
across keys. The owner's existence is a host fact (checked before a run).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from handoff.profile.model import SECTION_KEYS, LookingGlass, LookingGlassDevice, Vm
from handoff.profile.reader import Custom, FieldParser, Reader, Text, Whole, show

MAX_SIDE = 16384
MAX_SIZE_MIB = 4096
MAX_KVMFR_INDEX = 63
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")


def _size(r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> int | None:
    """size: "auto" (None), a whole number of MiB, or "64M"/"1G"."""
    from handoff.profile.parse import parse_memory  # parse.py imports this module

    if key not in t or t[key] == "auto":
        return None
    raw = t[key]
    mib = parse_memory(raw)
    if mib is None or not 1 <= mib <= MAX_SIZE_MIB:
        raise r.error(
            f"{prefix}.{key}",
            f'found {show(raw)}; expected "auto" or a size from 1M to {MAX_SIZE_MIB}M '
            '("32M", "64M", "128M")',
            'write size = "auto" (computed from width, height and hdr)',
        )
    return mib


#: The keys not read by their declared type.
LG_KEYS: Mapping[str, FieldParser] = {
    "width": Whole(64, MAX_SIDE),
    "height": Whole(64, MAX_SIDE),
    "size": Custom(_size),
    "owner": Text(_USER, expected='the desktop user who runs looking-glass-client, such as "alice"',
                  fix='write owner = "alice" (the user logged in to the desktop)'),
    "kvmfr_index": Whole(0, MAX_KVMFR_INDEX),
}


def parse_looking_glass(r: Reader, data: Mapping[str, Any], vm: Vm) -> LookingGlass:
    """The section, or its defaults (off) when absent."""
    t = r.table(data, "looking_glass")
    r.check_keys(t, "looking_glass", SECTION_KEYS["looking_glass"])
    lg = LookingGlass(**r.fields(t, "looking_glass", LookingGlass, LG_KEYS))
    if not t:
        return lg
    from handoff.desk.looking_glass import size_problem  # it imports the model

    problem = size_problem(lg)
    if problem is not None:
        raise r.error("looking_glass.size", *problem)
    if lg.enabled and lg.device is LookingGlassDevice.SHM and lg.owner is None:
        raise r.error(
            "looking_glass.owner",
            "missing; expected the desktop user who runs looking-glass-client (the shm "
            "file is made theirs, else the client gets \"Permission denied\")",
            'add owner = "alice" under [looking_glass]',
        )
    if lg.enabled and any("virtio-balloon" in arg for arg in vm.extra_args):
        raise r.error(
            "vm.extra_args",
            "found a virtio-balloon device with Looking Glass enabled; the balloon takes "
            "pages back from under the frames the guest shares",
            "remove the virtio-balloon device from vm.extra_args",
        )
    return lg
