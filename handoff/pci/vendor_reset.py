"""vendor-reset's device list: the AMD cards whose only working reset is its device-specific one.

AMD Polaris, Vega and Navi 1x cards do not come back from a VM through the
kernel's own resets (their FLR is missing or broken, a bus reset leaves the
GPU's firmware running): the next start fails, or the host driver cannot
bind until a reboot. The out-of-tree module vendor-reset adds a
device-specific reset for exactly these device ids; the kernel uses it only
when the module is loaded before the card is used and the card's
``reset_method`` lists ``device_specific`` (Linux 5.15 and later).

Data, kept as the source has it: the ``vendor_reset_devices[]`` table of
vendor-reset's ``src/device-db.h``, repository https://github.com/gnif/vendor-reset,
commit ca6a270487f32e07b439ffeb397c21905b69a519 (the same ids as its
``udev/99-vendor-reset.rules`` at that commit). Arcturus (Instinct MI100,
0x738c) is listed there under the Vega 20 reset and is kept so.
Pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

SOURCE = "https://github.com/gnif/vendor-reset src/device-db.h"
VERSION = "ca6a270487f32e07b439ffeb397c21905b69a519"
#: What modprobe loads, and the name under /sys/module (dashes become underscores).
MODULE = "vendor-reset"
SYSFS_MODULE = "vendor_reset"
#: PCI_VENDOR_ID_ATI, the vendor id of every entry.
VENDOR_ATI = 0x1002


class Family(enum.Enum):
    """The GPU generation a device id belongs to (the table's DEVICE_INFO name)."""

    POLARIS10 = "Polaris 10"
    POLARIS11 = "Polaris 11"
    POLARIS12 = "Polaris 12"
    VEGA10 = "Vega 10"
    VEGA20 = "Vega 20"
    NAVI10 = "Navi 10"
    NAVI12 = "Navi 12"
    NAVI14 = "Navi 14"


_TABLE: tuple[tuple[Family, tuple[int, ...]], ...] = (
    (Family.POLARIS10, (0x67C0, 0x67C1, 0x67C2, 0x67C4, 0x67C7, 0x67D0, 0x67DF, 0x67C8,
                        0x67C9, 0x67CA, 0x67CC, 0x67CF, 0x6FDF)),
    (Family.POLARIS11, (0x67E0, 0x67E3, 0x67E8, 0x67EB, 0x67EF, 0x67FF, 0x67E1, 0x67E7,
                        0x67E9)),
    (Family.POLARIS12, (0x6980, 0x6981, 0x6985, 0x6986, 0x6987, 0x6995, 0x6997, 0x699F)),
    (Family.VEGA10, (0x6860, 0x6861, 0x6862, 0x6863, 0x6864, 0x6867, 0x6868, 0x6869, 0x686A,
                     0x686B, 0x686C, 0x686D, 0x686E, 0x686F, 0x687F)),
    (Family.VEGA20, (0x66A0, 0x66A1, 0x66A2, 0x66A3, 0x66A4, 0x66A7, 0x66AF,
                     0x738C)),  # 0x738c: Arcturus (MI100), reset as Vega 20 by the source
    (Family.NAVI10, (0x7310, 0x7312, 0x7318, 0x7319, 0x731A, 0x731B, 0x731E, 0x731F, 0x1681)),
    (Family.NAVI14, (0x7340, 0x7341, 0x7347, 0x734F)),
    (Family.NAVI12, (0x7360, 0x7362)),
)  # fmt: skip

#: device id (vendor 0x1002) -> family.
DEVICES: Mapping[int, Family] = {device: family for family, ids in _TABLE for device in ids}


def family_of(vendor: int, device: int) -> Family | None:
    """The family of a card vendor-reset resets, None for every other device."""
    if vendor != VENDOR_ATI:
        return None
    return DEVICES.get(device)
