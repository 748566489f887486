"""Why a libvirt domain's element has no place in a profile: one line each. Data.

Keyed by tag, or by ``parent/tag`` where the tag alone is ambiguous; the
importer lists every element or attribute it does not map with one of these
(or :data:`DEFAULT_REASON`), so nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping

REASONS: Mapping[str, str] = {
    "uuid": "handoff names a VM by vm.name; QEMU is given no UUID",
    "genid": "handoff gives the guest no VM generation id",
    "title": "a note for libvirt's tools; a profile keeps notes as comments",
    "description": "a note for libvirt's tools; a profile keeps notes as comments",
    "metadata": "other tools' metadata; handoff reads only its own",
    "currentMemory": "memory ballooning: handoff gives the guest all of vm.memory",
    "on_poweroff": "a handoff session ends when the guest powers off",
    "on_reboot": "a guest reboot stays inside the handoff session",
    "on_crash": "a crashed guest ends the handoff session (exit status 1)",
    "pm": "guest suspend states: handoff keeps QEMU's defaults",
    "clock": "the guest clock: handoff keeps QEMU's default (UTC, QEMU's timers)",
    "iothreads": "I/O threads: handoff runs disks in QEMU's main loop",
    "resource": "libvirt's cgroup partition: handoff runs QEMU where it is started "
    "([cpu] isolate gives it a scope of its own)",
    "seclabel": "libvirt's security driver labels: handoff runs QEMU as vm.user instead",
    "sysinfo": "SMBIOS strings: add them with vm.extra_args (-smbios)",
    "os/boot": "boot order: handoff boots the disks in the order the profile lists them",
    "os/bootmenu": "the firmware's boot menu: handoff keeps QEMU's default",
    "os/smbios": "SMBIOS mode: handoff keeps QEMU's default",
    "os/bios": "SeaBIOS options: handoff keeps QEMU's defaults",
    "features/vmport": "the VMware port: handoff keeps QEMU's default",
    "features/ioapic": "the IOAPIC model: handoff keeps QEMU's default for q35",
    "features/hyperv": "Hyper-V enlightenments: this handoff's profile has no key for them",
    "features/smm": "SMM (Secure Boot): this handoff's profile has no key for it",
    "features/pvspinlock": "paravirtual spinlocks: handoff keeps QEMU's default",
    "features/pmu": "the virtual PMU: handoff keeps QEMU's default",
    "features/vmcoreinfo": "the vmcoreinfo device: add it with vm.extra_args",
    "cpu/cache": "CPU cache passthrough: add a flag to vm.cpu_flags (e.g. l3-cache=on)",
    "cpu/numa": "guest NUMA cells: handoff gives the guest one node",
    "cputune/iothreadpin": "I/O threads: handoff runs disks in QEMU's main loop",
    "cputune/shares": "cgroup CPU weight: handoff leaves QEMU's weight alone",
    "cputune/period": "cgroup CPU bandwidth: handoff does not limit QEMU's CPU time",
    "cputune/quota": "cgroup CPU bandwidth: handoff does not limit QEMU's CPU time",
    "cputune/vcpusched": "real-time vCPU scheduling: handoff keeps the default scheduler",
    "memoryBacking/locked": "handoff raises memlock itself when a device needs it",
    "memoryBacking/nosharepages": "KSM: handoff leaves it to the host's settings",
    "memoryBacking/source": "the RAM backend: handoff picks it ([memory] hugepages)",
    "memoryBacking/access": "shared RAM: handoff picks the RAM backend itself",
    "memoryBacking/allocation": "RAM preallocation: handoff preallocates hugepages itself",
    "numatune": "NUMA placement of RAM: handoff interleaves hugepages over the host's nodes",
    "blkiotune": "cgroup I/O weights: handoff leaves QEMU's I/O alone",
    "memtune": "cgroup memory limits: handoff does not limit QEMU's memory",
    "devices/emulator": "handoff runs qemu-system-x86_64 from PATH (or `handoff run --qemu`)",
    "devices/controller": "handoff adds the controllers its devices need",
    "devices/serial": "a serial port: add it with vm.extra_args (-serial)",
    "devices/console": "a serial console: add it with vm.extra_args (-serial)",
    "devices/parallel": "a parallel port: handoff has none",
    "devices/channel": "a virtio-serial or SPICE channel: this handoff's profile has no key for it",
    "devices/memballoon": "handoff adds no balloon device (the guest keeps all of vm.memory)",
    "devices/rng": "a virtio RNG: add extra_args = [\"-device\", \"virtio-rng-pci\"]",
    "devices/watchdog": "a watchdog device: add it with vm.extra_args",
    "devices/panic": "the pvpanic device: handoff reports a guest panic from QMP's GUEST_PANICKED",
    "devices/smartcard": "smart cards: handoff has none",
    "devices/redirdev": "SPICE USB redirection: handoff has no SPICE",
    "devices/hub": "a USB hub: handoff adds the USB controller its devices need",
    "devices/shmem": "a shared-memory device other than Looking Glass's ivshmem-plain",
    "devices/filesystem": "a shared folder other than virtiofs: handoff shares with virtiofs",
    "devices/lease": "lock leases: handoff locks the VM by its run directory",
    "devices/iommu": "a guest vIOMMU: add it with vm.extra_args",
    "devices/vsock": "a vsock device: add it with vm.extra_args",
    "devices/crypto": "a crypto device: handoff has none",
    "devices/audio": "an audio backend no sound device uses",
    "devices/address": "handoff places devices on the guest's buses itself",
    "address": "handoff places devices on the guest's buses itself",
    "alias": "device aliases: handoff names QEMU's devices itself",
    "boot": "boot order: handoff boots the disks in the order the profile lists them",
    "qemu:env": "environment for QEMU: handoff starts QEMU with its own environment",
    "qemu:capabilities": "QEMU capability overrides: handoff has none",
    "qemu:deprecation": "QEMU deprecation behaviour: handoff keeps QEMU's default",
}

DEFAULT_REASON = "handoff has no setting for it"
