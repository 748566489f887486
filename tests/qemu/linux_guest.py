"""A small real Linux guest for tests under `handoff run`: Debian's kernel + busybox.

The kernel is the testbed's (the versioned linux-image package, fetched once
into the testbed cache by :func:`tests.testbed.runner.ensure_kernel`); the
initramfs (built by :mod:`tests.guest_initramfs`) is busybox with the virtio
console and evdev modules, Debian's qemu-guest-agent binary with its
libraries, and :data:`INIT`. The guest
reports on its serial console, one ``KEY value`` line per fact:

- ``TPMMAJOR`` (/sys/class/tpm/tpm0/tpm_version_major), ``PCR0`` (the SHA-256
  PCR 0 OVMF measured into), ``EKPUB`` (TPM2_ReadPublic of the persistent EK
  0x81010001 that swtpm_setup created, sent through /dev/tpm0);
- ``AGENT`` started (qemu-ga on org.qemu.guest_agent.0) unless the kernel
  command line says ``noagent``;
- ``POWERBUTTON`` when ACPI's power button is pressed (system_powerdown),
  after which it powers off; ``SHUTDOWN-BY-AGENT`` when qemu-ga runs
  /sbin/shutdown (guest-shutdown), after which it powers off too.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.guest_initramfs import build_initramfs
from tests.testbed.runner import cache_lock, default_cache, ensure_kernel

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /run /tmp
for m in $(cat /modules.order); do insmod /modules/$m 2>/dev/null; done
echo "TPMMAJOR $(cat /sys/class/tpm/tpm0/tpm_version_major 2>&1)"
echo "PCR0 $(cat /sys/class/tpm/tpm0/pcr-sha256/0 2>&1)"
if [ -e /dev/tpm0 ]; then
  # TPM2_ReadPublic(0x81010001): tag 8001, size 14, command 0173, the EK's handle
  exec 3<>/dev/tpm0
  printf '\200\001\000\000\000\016\000\000\001\163\201\001\000\001' >&3
  echo "EKPUB $(od -An -tx1 -v <&3 | tr -d ' \n')"
  exec 3<&-
fi
for ev in /sys/class/input/event*; do
  if [ "$(cat $ev/device/name 2>/dev/null)" = "Power Button" ]; then
    (dd if=/dev/input/${ev##*/} bs=24 count=1 2>/dev/null >/dev/null
     echo POWERBUTTON; sync; poweroff -f) &
  fi
done
if ! grep -q noagent /proc/cmdline; then
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
  done
  qemu-ga -m virtio-serial -p "$port" -t /run -f /run/qemu-ga.pid &
  echo "AGENT $port"
fi
echo GUESTREADY
while true; do sleep 1; done
"""

SHUTDOWN = """#!/bin/sh
echo "SHUTDOWN-BY-AGENT $*" > /dev/console  # qemu-ga gives its child /dev/null
sync
poweroff -f
"""

MODULES = ("virtio_pci", "virtio_console", "evdev", "button")
KERNEL_ARGS = "console=ttyS0 quiet panic=-1"
OS_RELEASE = (
    'PRETTY_NAME="handoff test guest 1.0"\nNAME="handoff-guest"\nVERSION_ID="1.0"\nID=handoff\n'
)


KEYS = ("TPMMAJOR", "PCR0", "EKPUB", "AGENT", "GUESTREADY", "POWERBUTTON", "SHUTDOWN-BY-AGENT")
FACT = re.compile(rf"({'|'.join(KEYS)})(?: (.*))?$")


def build_guest(workdir: Path) -> tuple[Path, Path]:
    """(vmlinuz, initrd) of the guest described above, in ``workdir``."""
    cache = default_cache()
    with cache_lock(cache):
        kernel = ensure_kernel(cache)
    initrd = build_initramfs(
        workdir, kernel, INIT, modules=MODULES, programs=("/usr/sbin/qemu-ga",),
        files={"sbin/shutdown": (SHUTDOWN, 0o755), "etc/os-release": (OS_RELEASE, 0o644)},
        name="guest",
    )
    return kernel.vmlinuz, initrd


def guest_facts(serial: Path) -> dict[str, str]:
    """``KEY value`` lines the guest printed so far (the last of each key)."""
    facts: dict[str, str] = {}
    try:
        text = serial.read_text(errors="replace")
    except FileNotFoundError:
        return facts
    for line in text.splitlines():
        # OVMF leaves its screen-clearing escapes in front of the first line.
        match = FACT.search(line)
        if match:
            facts[match[1]] = (match[2] or "").strip()
    return facts
