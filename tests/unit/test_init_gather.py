"""`handoff init`'s edge on fake trees: disks in use, CPU topology, pci.ids, input selectors.

Block devices cannot be made in a fake tree without mknod, so the stat of a
``/dev`` node is injected; everything else (mountinfo, /sys/dev/block links,
partitions, device-mapper slaves) is the kernel's layout.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import cast

import pytest

from handoff.init.choose import DiskSource, InitError, InitRequest, choose_disk
from handoff.init.facts import DiskKind, PciName
from handoff.init.gather import find_ovmf, input_fact, read_cpu, read_disk
from handoff.init.pciids import pci_names
from handoff.input.devices import DeviceInfo
from tests.unit.fakesysfs import (
    FakeHost,
    add_block_device,
    add_cpus,
    write_mountinfo,
)

DEVNUMS = {"/dev/sda": "8:0", "/dev/sda1": "8:1", "/dev/sda2": "8:2", "/dev/sdb": "8:16",
           "/dev/sdb1": "8:17", "/dev/dm-0": "254:0", "/dev/vg0/win": "254:1",
           "/dev/sdc": "8:32"}


class _Stat:
    def __init__(self, devnum: str) -> None:
        major, minor = (int(x) for x in devnum.split(":"))
        self.st_mode = stat.S_IFBLK | 0o660
        self.st_rdev = os.makedev(major, minor)


def fake_stat(path: Path) -> os.stat_result:
    if str(path) not in DEVNUMS:
        raise FileNotFoundError(path)
    return cast(os.stat_result, _Stat(DEVNUMS[str(path)]))


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    """sda (sda1 /boot, sda2 under LVM: dm-0 is /), sdb (sdb1 swap), an LV, an idle sdc."""
    host = FakeHost(tmp_path)
    add_block_device(host, "sda", "8:0")
    add_block_device(host, "sda1", "8:1", parent="sda")
    add_block_device(host, "sda2", "8:2", parent="sda")
    add_block_device(host, "dm-0", "254:0", slaves=("sda2",))
    add_block_device(host, "dm-1", "254:1", slaves=("sda2",))
    add_block_device(host, "sdb", "8:16")
    add_block_device(host, "sdb1", "8:17", parent="sdb")
    add_block_device(host, "sdc", "8:32")
    write_mountinfo(host, [("254:0", "/", "/dev/dm-0"), ("8:1", "/boot", "/dev/sda1"),
                           ("0:22", "/run", "tmpfs")])
    (host.paths.proc / "swaps").write_text(
        "Filename\tType\tSize\tUsed\tPriority\n/dev/sdb1\tpartition\t999\t0\t-2\n")
    return host


def refusal(host: FakeHost, path: str) -> InitError:
    fact = read_disk(host.paths, Path(path), stat_path=fake_stat)
    with pytest.raises(InitError) as refused:
        choose_disk(InitRequest("vm", disk=Path(path)), fact, image_exists=False)
    return refused.value


def test_the_root_file_system_s_disk_and_partition_are_refused(host: FakeHost) -> None:
    for path in ("/dev/sda", "/dev/sda2", "/dev/dm-0"):
        error = refusal(host, path)
        assert error.message == f"--disk {path}: it holds the host's root file system"
        assert error.fix is not None
        assert "--disk-size" in error.fix


def test_a_mounted_partition_and_its_disk_are_refused_naming_the_mount(host: FakeHost) -> None:
    error = refusal(host, "/dev/sda1")
    assert "mounted at /boot" in error.message
    assert error.fix is not None
    assert "umount /boot" in error.fix
    assert "mounted at [swap]" in refusal(host, "/dev/sdb").message


def test_an_idle_disk_and_an_idle_lvm_volume_are_taken_raw_with_cache_none(
    host: FakeHost,
) -> None:
    for path in ("/dev/sdc", "/dev/vg0/win"):
        fact = read_disk(host.paths, Path(path), stat_path=fake_stat)
        assert (fact.kind, fact.mounts, fact.root) == (DiskKind.BLOCK, (), False)
        choice = choose_disk(InitRequest("vm", disk=Path(path)), fact, image_exists=False)
        assert choice.source is DiskSource.BLOCK


def test_a_missing_path_and_a_directory_are_refused(host: FakeHost, tmp_path: Path) -> None:
    assert "no such file or block device" in refusal(host, "/dev/nope").message
    fact = read_disk(host.paths, tmp_path)
    assert fact.kind is DiskKind.OTHER
    with pytest.raises(InitError, match="neither a block device nor an image"):
        choose_disk(InitRequest("vm", disk=tmp_path), fact, image_exists=False)


def test_an_image_file_s_format_comes_from_its_magic(tmp_path: Path) -> None:
    qcow = tmp_path / "a.img"
    qcow.write_bytes(b"QFI\xfb" + bytes(60))
    raw = tmp_path / "b.qcow2"
    raw.write_bytes(bytes(64))
    assert read_disk(FakeHost(tmp_path / "h").paths, qcow).qcow2
    assert not read_disk(FakeHost(tmp_path / "i").paths, raw).qcow2


@pytest.mark.parametrize(
    ("size", "ok"), [("64G", True), ("500M", True), ("1T", True), ("64GiB", True),
                     ("64 gigs", False), ("0", False), ("12K", False)],
)
def test_disk_size_parses_or_is_refused(tmp_path: Path, size: str, ok: bool) -> None:
    request = InitRequest("vm", disk_size=size, image_dir=tmp_path)
    if ok:
        choice = choose_disk(request, None, image_exists=False)
        assert choice.source is DiskSource.NEW_IMAGE
        assert choice.path == tmp_path / "vm.qcow2"
    else:
        with pytest.raises(InitError, match="not a disk size"):
            choose_disk(request, None, image_exists=False)


def test_an_existing_image_is_never_overwritten(tmp_path: Path) -> None:
    request = InitRequest("vm", disk_size="64G", image_dir=tmp_path)
    with pytest.raises(InitError, match="exists already; handoff init never overwrites"):
        choose_disk(request, None, image_exists=True)


def test_cpu_topology_from_sysfs(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    add_cpus(host, cores=8, threads=2, sockets=2)
    topology = read_cpu(host.paths)
    assert (topology.logical, topology.threads_per_core, topology.sockets, topology.cores) == (
        32, 2, 2, 16)


def test_pci_ids_names_only_the_wanted_ids_and_skips_subsystems_and_classes() -> None:
    lines = ["# c", "1002  AMD", "\t67df  Ellesmere", "\t\t1002 0b37  RX 580", "10de  NVIDIA",
             "\t2206  GA102", "C 03  Display controller", "\t00  VGA compatible controller"]
    names = pci_names(lines, [(0x1002, 0x67DF), (0x10DE, 0x9999), (0x1234, 0x1111)])
    assert names == {(0x1002, 0x67DF): PciName("AMD", "Ellesmere"),
                     (0x10DE, 0x9999): PciName("NVIDIA", None)}


def test_ovmf_is_found_only_with_its_vars_template(tmp_path: Path) -> None:
    code = tmp_path / "OVMF_CODE_4M.fd"
    code.write_bytes(b"")
    assert find_ovmf([code]) is None
    (tmp_path / "OVMF_VARS_4M.fd").write_bytes(b"")
    found = find_ovmf([tmp_path / "missing.fd", code])
    assert found is not None
    assert found.vars_template == tmp_path / "OVMF_VARS_4M.fd"


def info(**fields: object) -> DeviceInfo:
    base: dict[str, object] = {"node": "/dev/input/event3", "name": "AT Translated Set 2 keyboard",
                               "by_id": (), "id_path": None, "vendor": "", "product": "",
                               "keyboard": True, "mouse": False}
    return DeviceInfo(**{**base, **fields})  # type: ignore[arg-type]


def test_input_selectors_are_the_input_layer_s_kinds_best_first() -> None:
    by_id = input_fact(info(by_id=("usb-Logitech-event-kbd",), id_path="pci-0000:00:14.0-usb"))
    assert by_id is not None
    assert by_id.selector == "by-id:usb-Logitech-event-kbd"
    path = input_fact(info(id_path="platform-i8042-serio-0"))
    assert path is not None
    assert path.selector == "path:platform-i8042-serio-0"
    usb = input_fact(info(vendor="046d", product="c52b", mouse=True))
    assert usb is not None
    assert (usb.selector, usb.kinds) == ("usb:046d:c52b", "keyboard, mouse")
    assert input_fact(info(keyboard=False)) is None  # neither keyboard nor mouse
    assert input_fact(info(name="handoff virtio keyboard")) is None  # handoff's own proxy


def test_init_finds_plain_uefi_through_qemus_firmware_descriptors(tmp_path: Path) -> None:
    """A descriptor naming installed files wins over the guessed paths (and Secure Boot
    builds are not plain UEFI)."""
    from handoff.init.gather import described_ovmf

    code, template = tmp_path / "edk2-code.fd", tmp_path / "edk2-vars.fd"
    descriptors = tmp_path / "firmware"
    descriptors.mkdir()
    (descriptors / "60-plain.json").write_text(
        '{"interface-types": ["uefi"], "mapping": {"device": "flash", "executable": '
        f'{{"filename": "{code}"}}, "nvram-template": {{"filename": "{template}"}}}}, '
        '"targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}], "features": []}'
    )
    assert described_ovmf((descriptors,)) is None  # its files are not installed
    code.write_bytes(b"")
    template.write_bytes(b"")
    found = described_ovmf((descriptors,))
    assert found is not None
    assert (found.code, found.vars_template) == (code, template)
    assert described_ovmf(()) is None
