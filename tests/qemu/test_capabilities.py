"""The installed QEMU is asked what it supports, and really accepts what build_argv writes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from handoff.base.errors import QemuNotFoundError, QemuUnsupportedError
from handoff.base.host import HostPaths
from handoff.profile import Accelerator, Profile, load_profile, parse_profile
from handoff.qemu.capabilities import (
    MIN_VERSION,
    check_bridges,
    check_supported,
    probe,
)
from handoff.qemu.cmdline import LaunchSpec, argv_devices, build_argv
from handoff.qemu.firmware_vars import ensure_firmware_vars
from handoff.qemu.probe_cache import QemuCapabilities
from tests.host_requirements import missing

from .conftest import QEMU

pytestmark = pytest.mark.qemu

REPO = Path(__file__).parent.parent.parent

#: Every device build_argv can emit, for any profile.
ALL_DEVICES = {
    "virtio-blk-pci", "ide-hd", "ide-cd", "virtio-scsi-pci", "scsi-hd", "scsi-cd",
    "virtio-net-pci", "e1000e", "rtl8139", "intel-hda", "hda-duplex", "VGA", "virtio-vga",
    "qxl-vga", "qemu-xhci", "usb-tablet", "pcie-root-port", "vfio-pci",
}  # fmt: skip

#: Every feature this host's QEMU can start without host set-up (no tap, bridge or GPU).
EVERYTHING_LOCAL = """
[vm]
name = "caps"
memory = "64M"
cpus = 2
sockets = 1
cores = 2
hide_hypervisor = true
cpu_flags = ["+sse4.2"]

[firmware]
type = "ovmf"
code = "/usr/share/OVMF/OVMF_CODE_4M.fd"
vars_template = "/usr/share/OVMF/OVMF_VARS_4M.fd"

[[disk]]
path = "a.qcow2"
format = "qcow2"
interface = "sata"
cache = "writethrough"

[[disk]]
path = "b.raw"
cache = "none"
aio = "native"

[[disk]]
path = "c.iso"
media = "cdrom"
interface = "scsi"

[[disk]]
path = "d.raw"
interface = "scsi"
cache = "unsafe"

[[disk]]
path = "e.iso"
media = "cdrom"

[[network]]
mac = "52:54:00:00:00:01"

[[network]]
model = "e1000e"

[[network]]
model = "rtl8139"

[sound]
model = "hda"

[display]
vga = "std"
frontend = "vnc"
tablet = true
"""


@pytest.fixture(scope="module")
def caps() -> QemuCapabilities:
    return probe(QEMU)


def test_probe_reports_version_accelerators_backends_and_machines(caps: QemuCapabilities) -> None:
    assert caps.version >= MIN_VERSION
    assert caps.binary.is_absolute()
    assert "tcg" in caps.accelerators
    assert "none" in caps.audio_drivers
    assert {"none", "vnc"} <= caps.display_backends
    assert "q35" in caps.machines
    assert any(m.startswith("pc-q35-") for m in caps.machines)


def test_the_installed_qemu_has_every_device_build_argv_uses(caps: QemuCapabilities) -> None:
    assert caps.devices >= ALL_DEVICES


def test_probing_is_cached_per_binary(caps: QemuCapabilities) -> None:
    assert probe(QEMU) is caps


def test_a_changed_binary_is_probed_again(tmp_path: Path, caps: QemuCapabilities) -> None:
    copy = tmp_path / "qemu-system-x86_64"
    shutil.copy2(caps.binary, copy)
    first = probe(str(copy))
    assert first.binary == copy
    assert first.version == caps.version
    assert probe(str(copy)) is first
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert probe(str(copy)) is not first


def test_a_missing_binary_is_qemu_not_found_with_the_install_command() -> None:
    with pytest.raises(QemuNotFoundError) as caught:
        probe("/nonexistent/qemu-system-x86_64")
    assert caught.value.fix is not None
    assert "apt-get install qemu-system-x86" in caught.value.fix


def test_a_file_that_is_not_executable_is_qemu_not_found(tmp_path: Path) -> None:
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("not a program")
    with pytest.raises(QemuNotFoundError, match="is not executable"):
        probe(str(fake))


# --------------------------------------------------------------------------- check_supported


def check_profile(
    profile: Profile, *, accel: Accelerator = Accelerator.TCG, extra_args: tuple[str, ...] = ()
) -> QemuCapabilities:
    """What the session's preflight checks, against this host's QEMU: the argv's devices
    (with ``extra_args`` standing for devices host resources add), the bridges."""
    caps = probe(QEMU)
    launch = LaunchSpec(
        binary=QEMU, monitor_fd=3, vnc_socket=Path("/run/handoff/check/vnc.sock"),
        extra_args=extra_args,
    )
    check_supported(profile, argv_devices(build_argv(profile, launch)), caps, accel=accel)
    check_bridges(profile, HostPaths())
    return caps


def parse(text: str) -> Profile:
    return parse_profile(text, Path("/vms/w.toml"))


BASE = '[vm]\nname = "w"\nmemory = "64M"\n'


def test_the_shipped_demo_passes_the_check(caps: QemuCapabilities) -> None:
    demo = load_profile(REPO / "profiles" / "demo.toml")
    assert check_profile(demo, accel=Accelerator.TCG) is caps


def test_a_device_from_extra_args_that_qemu_lacks_names_vm_extra_args(
    caps: QemuCapabilities,
) -> None:
    profile = parse(BASE + 'extra_args = ["-device", "no-such-device,id=x"]\n')
    with pytest.raises(QemuUnsupportedError) as caught:
        check_profile(profile)
    assert "/vms/w.toml: vm.extra_args:" in caught.value.message
    assert "'no-such-device'" in caught.value.message
    assert caps.version_text in caught.value.message
    assert caught.value.fix is not None
    assert "-device help" in caught.value.fix


def test_a_device_added_by_a_host_resource_is_named_as_such() -> None:
    with pytest.raises(QemuUnsupportedError, match="host resources"):
        check_profile(parse(BASE), extra_args=("-device", "no-such-proxy"))


def test_a_device_the_profile_asks_for_is_reported_against_its_key(
    caps: QemuCapabilities,
) -> None:
    profile = parse(BASE + '[display]\nvga = "qxl"\n')
    without_qxl = dataclasses.replace(caps, devices=caps.devices - {"qxl-vga"})
    devices = argv_devices(build_argv(profile, LaunchSpec()))
    with pytest.raises(QemuUnsupportedError) as caught:
        check_supported(profile, devices, without_qxl)
    assert "display.vga" in caught.value.message
    assert caught.value.fix is not None
    assert "qemu-system-modules-spice" in caught.value.fix


def test_a_machine_this_qemu_does_not_have_is_refused() -> None:
    profile = parse(BASE + 'machine = "pc-q35-99.0"\n')
    with pytest.raises(QemuUnsupportedError) as caught:
        check_profile(profile)
    assert "vm.machine" in caught.value.message
    assert "pc-q35-99.0" in caught.value.message


def test_an_audio_backend_this_qemu_lacks_names_sound_backend(caps: QemuCapabilities) -> None:
    profile = parse(BASE + '[sound]\nmodel = "hda"\nbackend = "pa"\n')
    without_pa = dataclasses.replace(caps, audio_drivers=caps.audio_drivers - {"pa"})
    with pytest.raises(QemuUnsupportedError) as caught:
        check_supported(profile, (), without_pa)
    assert "sound.backend" in caught.value.message
    assert caught.value.fix is not None
    assert "qemu-system-gui" in caught.value.fix


def test_a_gui_display_this_qemu_lacks_names_display_frontend(caps: QemuCapabilities) -> None:
    profile = parse(BASE + '[display]\nfrontend = "gtk"\n')
    if "gtk" in caps.display_backends:
        check_supported(profile, (), caps)
        caps = dataclasses.replace(caps, display_backends=caps.display_backends - {"gtk"})
    with pytest.raises(QemuUnsupportedError) as caught:
        check_supported(profile, (), caps)
    assert "display.frontend" in caught.value.message
    assert caught.value.fix is not None
    assert "qemu-system-gui" in caught.value.fix
    assert 'frontend = "vnc"' in caught.value.fix


def test_an_accelerator_this_qemu_was_built_without_is_refused(caps: QemuCapabilities) -> None:
    tcg_only = dataclasses.replace(caps, accelerators=frozenset({"tcg"}))
    with pytest.raises(QemuUnsupportedError, match=r"vm\.accel"):
        check_supported(parse(BASE), (), tcg_only, accel=Accelerator.KVM)


def test_a_qemu_older_than_the_minimum_is_refused_with_upgrade_advice(
    caps: QemuCapabilities,
) -> None:
    old = dataclasses.replace(caps, version=(5, 2, 0))
    with pytest.raises(QemuUnsupportedError) as caught:
        check_supported(parse(BASE), (), old)
    assert "5.2.0" in caught.value.message
    assert caught.value.fix is not None
    assert "newer QEMU" in caught.value.fix


# --------------------------------------------------------------------------- the real QEMU


def qmp(sock: socket.socket, command: str) -> object:
    """One synchronous QMP command on a connected monitor (events are skipped)."""
    stream = sock.makefile("rw")
    stream.write(json.dumps({"execute": command}) + "\n")
    stream.flush()
    while True:
        reply = json.loads(stream.readline())
        if "event" not in reply:
            return reply.get("return", reply)


def test_qemu_starts_with_the_argv_of_every_local_feature(tmp_path: Path) -> None:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "a.qcow2"), "16M"], check=True
    )
    for name in ("b.raw", "c.iso", "d.raw", "e.iso"):
        with (tmp_path / name).open("wb") as f:
            f.truncate(16 * 1024 * 1024)
    profile_file = tmp_path / "caps.toml"
    profile_file.write_text(EVERYTHING_LOCAL)
    profile = load_profile(profile_file)
    if not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists():
        missing("OVMF is not installed (apt-get install ovmf)")
    check_profile(profile)
    ensure_firmware_vars(profile)
    ours, theirs = socket.socketpair()
    argv = build_argv(
        profile,
        LaunchSpec(
            monitor_fd=theirs.fileno(), vnc_socket=tmp_path / "vnc.sock", start_paused=True
        ),
    )
    log = (tmp_path / "qemu.log").open("wb")
    process = subprocess.Popen(
        argv, pass_fds=[theirs.fileno()], stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    theirs.close()
    try:
        ours.settimeout(30)
        greeting = json.loads(ours.makefile("r").readline())
        assert "QMP" in greeting
        assert qmp(ours, "qmp_capabilities") == {}
        blocks = qmp(ours, "query-block")
        assert isinstance(blocks, list)
        cache = {
            b["inserted"]["node-name"]: b["inserted"]["cache"]
            for b in blocks
            if "inserted" in b and b["inserted"]["node-name"].startswith("disk")
        }
        assert cache["disk0"]["writeback"] is False  # writethrough: no volatile cache
        assert cache["disk1"]["direct"] is True  # cache = "none"
        assert cache["disk3"]["no-flush"] is True  # unsafe
        assert (tmp_path / "vnc.sock").exists()
        qmp(ours, "quit")
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        ours.close()
        log.close()
    assert "warning" not in (tmp_path / "qemu.log").read_text().lower()


def test_qemu_accepts_the_passthrough_options_and_only_misses_the_host_device(
    tmp_path: Path,
) -> None:
    # No GPU here: QEMU must get as far as looking for the host device, which
    # proves every vfio-pci and pcie-root-port option was understood.
    profile_file = tmp_path / "pt.toml"
    profile_file.write_text(
        BASE + '[[passthrough]]\naddress = "7f:00.0"\nx_vga = true\nromfile = "gpu.rom"\n'
        '[[passthrough]]\naddress = "7f:00.1"\n'
    )
    argv = build_argv(load_profile(profile_file), LaunchSpec(start_paused=True))
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False
    )
    assert done.returncode != 0
    assert "0000:7f:00.0" in done.stderr
    assert "no such host device" in done.stderr
    assert "not found" not in done.stderr.replace("no such host device", "")
