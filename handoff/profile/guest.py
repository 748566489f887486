"""The guest-OS keys' rule across keys: ``firmware.secure_boot`` needs UEFI. Pure.

``vm.os``, ``vm.hyperv`` (enums) and ``firmware.secure_boot`` (a bool) are read by
the reader from their declared types (a typo gets its "did you mean"); what is
left is the one rule the reader cannot know: SeaBIOS has no Secure Boot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handoff.profile.model import Firmware, FirmwareType
from handoff.profile.reader import Reader


def check_secure_boot(r: Reader, data: Mapping[str, Any], firmware: Firmware) -> Firmware:
    """``firmware`` as parsed; refused when ``secure_boot = true`` asks SeaBIOS for it."""
    t = data.get("firmware", {})
    asked = isinstance(t, Mapping) and t.get("secure_boot") is True
    if asked and firmware.type is FirmwareType.SEABIOS:
        raise r.error(
            "firmware.secure_boot",
            'found true with type = "seabios"; expected Secure Boot only with UEFI (SeaBIOS '
            "has none)",
            'set type = "ovmf" in [firmware] (handoff picks a Secure Boot build from QEMU\'s '
            "firmware descriptors), or remove secure_boot",
        )
    return firmware
