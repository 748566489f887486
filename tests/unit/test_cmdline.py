"""The QEMU command line: each profile feature becomes exact, modern QEMU options.

build_argv is pure, so these tests pin the argv fragment of every feature.
The shipped profiles' whole argv is kept in golden/*.argv (one argument per
line); after an intended change, regenerate them with
``HANDOFF_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_cmdline.py``
and review the diff.
"""

from __future__ import annotations

import itertools
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import pytest

from handoff.base.errors import ProfileError
from handoff.base.host import HostPaths
from handoff.profile import Accelerator, Profile, load_profile, parse_profile, profile_to_toml
from handoff.qemu.cmdline import (
    LaunchSpec,
    argv_devices,
    build_argv,
    format_argv,
    vfio_device_id,
)
from handoff.qemu.firmware_search import read_descriptors
from handoff.session.plan import HostFacts, SessionPlan, plan_session

HERE = Path(__file__).parent
REPO = HERE.parent.parent
GOLDEN = HERE / "golden"
SOURCE = Path("/vms/w.toml")
BASE = '[vm]\nname = "w"\nmemory = "1G"\n'
TCG = LaunchSpec()
KVM = LaunchSpec(accel=Accelerator.KVM)


def profile(extra: str = "", base: str = BASE) -> Profile:
    return parse_profile(base + extra, SOURCE)


def argv_of(extra: str = "", launch: LaunchSpec = TCG) -> list[str]:
    return build_argv(profile(extra), launch)


def has(argv: Sequence[str], *fragment: str) -> bool:
    """``fragment`` appears in ``argv`` as consecutive arguments."""
    n = len(fragment)
    return any(list(argv[i : i + n]) == list(fragment) for i in range(len(argv) - n + 1))


def option_values(argv: Sequence[str], flag: str) -> list[str]:
    return [value for f, value in itertools.pairwise(argv) if f == flag]


# --------------------------------------------------------------------------- base


def test_the_argv_starts_clean_with_no_defaults_and_no_user_config() -> None:
    argv = argv_of()
    assert argv[:3] == ["qemu-system-x86_64", "-nodefaults", "-no-user-config"]


def test_the_guest_and_process_are_named_after_the_profile() -> None:
    assert has(argv_of(), "-name", "guest=w,process=handoff-w,debug-threads=on")


def test_qemu_messages_carry_timestamps() -> None:
    assert has(argv_of(), "-msg", "timestamp=on")


def test_the_machine_is_q35_with_the_chosen_accelerator() -> None:
    assert has(argv_of(), "-machine", "q35,accel=tcg")
    assert has(argv_of(launch=KVM), "-machine", "q35,accel=kvm")
    assert has(argv_of().copy(), "-machine", "q35,accel=tcg")
    versioned = build_argv(profile(base=BASE + 'machine = "pc-q35-7.2"\n'), KVM)
    assert has(versioned, "-machine", "pc-q35-7.2,accel=kvm")


def test_memory_is_given_in_mib() -> None:
    assert has(argv_of(), "-m", "1024M")


def test_the_binary_comes_from_the_launch_spec() -> None:
    assert argv_of(launch=LaunchSpec(binary="/opt/qemu/bin/qemu-system-x86_64"))[0] == (
        "/opt/qemu/bin/qemu-system-x86_64"
    )


# --------------------------------------------------------------------------- cpu


def test_the_cpu_is_host_under_kvm_and_max_under_tcg() -> None:
    assert has(argv_of(launch=KVM), "-cpu", "host")
    assert has(argv_of(), "-cpu", "max")


def test_hide_hypervisor_adds_kvm_off_and_a_neutral_hyperv_vendor() -> None:
    p = profile(base=BASE + "hide_hypervisor = true\n")
    assert has(build_argv(p, KVM), "-cpu", "host,kvm=off,hv-vendor-id=handoffvm")


def test_cpu_flags_follow_the_model_once_each() -> None:
    p = profile(base=BASE + 'cpu_model = "Skylake-Client"\ncpu_flags = ["+invtsc", "kvm=off"]\n'
                'hide_hypervisor = true\n')
    assert has(
        build_argv(p, KVM), "-cpu", "Skylake-Client,kvm=off,hv-vendor-id=handoffvm,+invtsc"
    )


def test_cpu_model_host_without_kvm_is_a_profile_error_with_a_fix() -> None:
    p = profile(base=BASE + 'cpu_model = "host"\n')
    with pytest.raises(ProfileError) as caught:
        build_argv(p, TCG)
    assert caught.value.key == "vm.cpu_model"
    assert caught.value.fix is not None
    assert "remove cpu_model" in caught.value.fix


def test_smp_without_topology_is_just_the_count() -> None:
    assert has(argv_of(), "-smp", "2")


def test_smp_topology_is_spelled_out_in_full() -> None:
    p = profile(base=BASE + "cpus = 8\nsockets = 1\ncores = 8\n")
    assert has(build_argv(p, TCG), "-smp", "8,sockets=1,cores=8,threads=1")
    p = profile(base=BASE + "cpus = 8\ncores = 4\nthreads = 2\n")
    assert has(build_argv(p, TCG), "-smp", "8,sockets=1,cores=4,threads=2")


# --------------------------------------------------------------------------- firmware


def test_seabios_adds_no_firmware_options() -> None:
    argv = argv_of()
    assert "-bios" not in argv
    assert not any("pflash" in a for a in argv)


def test_ovmf_is_two_pflash_drives_code_read_only_then_vars() -> None:
    argv = argv_of(
        '[firmware]\ntype = "ovmf"\ncode = "/usr/share/OVMF/OVMF_CODE_4M.fd"\n'
        'vars_template = "/usr/share/OVMF/OVMF_VARS_4M.fd"\n'
    )
    assert has(
        argv,
        "-drive",
        "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        "-drive",
        "if=pflash,format=raw,unit=1,file=/vms/w.OVMF_VARS.fd",
    )


# --------------------------------------------------------------------------- disks


def test_a_virtio_disk_is_a_file_node_a_format_node_and_virtio_blk() -> None:
    argv = argv_of('[[disk]]\npath = "win.qcow2"\nformat = "qcow2"\n')
    assert has(
        argv,
        "-blockdev",
        "driver=file,node-name=disk0-file,filename=/vms/win.qcow2",
        "-blockdev",
        "driver=qcow2,node-name=disk0,file=disk0-file",
        "-device",
        "virtio-blk-pci,drive=disk0,id=disk0-dev,bootindex=1",
    )


def test_a_block_device_under_dev_uses_the_host_device_driver() -> None:
    argv = argv_of('[[disk]]\npath = "/dev/vg-win7/win7-root"\n')
    assert "driver=host_device,node-name=disk0-file,filename=/dev/vg-win7/win7-root" in argv


def test_cache_none_with_native_aio_is_o_direct_on_both_nodes() -> None:
    argv = argv_of('[[disk]]\npath = "/dev/vg/w"\ncache = "none"\naio = "native"\n')
    assert has(
        argv,
        "-blockdev",
        "driver=host_device,node-name=disk0-file,filename=/dev/vg/w,aio=native,cache.direct=on",
        "-blockdev",
        "driver=raw,node-name=disk0,file=disk0-file,cache.direct=on",
    )


@pytest.mark.parametrize(
    ("cache", "node_options", "device_options"),
    [
        ("writeback", "", ""),
        ("none", ",cache.direct=on", ""),
        ("writethrough", "", ",write-cache=off"),
        ("directsync", ",cache.direct=on", ",write-cache=off"),
        ("unsafe", ",cache.no-flush=on", ""),
    ],
)
def test_each_cache_mode_maps_to_blockdev_flags_and_the_device_write_cache(
    cache: str, node_options: str, device_options: str
) -> None:
    argv = argv_of(f'[[disk]]\npath = "/srv/w.raw"\ncache = "{cache}"\n')
    assert f"driver=raw,node-name=disk0,file=disk0-file{node_options}" in argv
    assert f"virtio-blk-pci,drive=disk0,id=disk0-dev,bootindex=1{device_options}" in argv


def test_io_uring_is_passed_as_the_aio_engine() -> None:
    argv = argv_of('[[disk]]\npath = "/srv/w.raw"\naio = "io_uring"\n')
    assert "driver=file,node-name=disk0-file,filename=/srv/w.raw,aio=io_uring" in argv


def test_sata_disks_and_cdroms_sit_on_the_q35_ahci_ports_in_order() -> None:
    argv = argv_of(
        '[[disk]]\npath = "/srv/w.raw"\ninterface = "sata"\n'
        '[[disk]]\npath = "/srv/win7.iso"\nmedia = "cdrom"\n'
    )
    assert "ide-hd,drive=disk0,id=disk0-dev,bus=ide.0,bootindex=1" in argv
    assert "ide-cd,drive=disk1,id=disk1-dev,bus=ide.1,bootindex=2" in argv
    assert "driver=file,node-name=disk1-file,filename=/srv/win7.iso,read-only=on" in argv
    assert "driver=raw,node-name=disk1,file=disk1-file,read-only=on" in argv


def test_a_cdrom_block_device_uses_the_host_cdrom_driver() -> None:
    argv = argv_of('[[disk]]\npath = "/dev/sr0"\nmedia = "cdrom"\n')
    assert "driver=host_cdrom,node-name=disk0-file,filename=/dev/sr0,read-only=on" in argv


def test_scsi_disks_share_one_virtio_scsi_controller() -> None:
    argv = argv_of(
        '[[disk]]\npath = "/srv/a.raw"\ninterface = "scsi"\n'
        '[[disk]]\npath = "/srv/b.iso"\ninterface = "scsi"\nmedia = "cdrom"\n'
    )
    assert option_values(argv, "-device").count("virtio-scsi-pci,id=scsi0") == 1
    assert "scsi-hd,drive=disk0,id=disk0-dev,bus=scsi0.0,bootindex=1" in argv
    assert "scsi-cd,drive=disk1,id=disk1-dev,bus=scsi0.0,bootindex=2" in argv


def test_a_comma_in_a_path_is_escaped_so_it_cannot_add_options() -> None:
    argv = argv_of('[[disk]]\npath = "/srv/a,driver=host_device.raw"\n')
    assert "driver=file,node-name=disk0-file,filename=/srv/a,,driver=host_device.raw" in argv


# --------------------------------------------------------------------------- network


def test_user_networking_with_virtio_net_pci() -> None:
    argv = argv_of("[[network]]\n")
    assert has(argv, "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0")


def test_a_tap_netdev_runs_no_scripts_and_keeps_its_mac() -> None:
    argv = argv_of(
        '[[network]]\ntype = "tap"\nifname = "tap0"\nmac = "72:d4:35:18:07:01"\n'
    )
    assert has(
        argv,
        "-netdev",
        "tap,id=net0,ifname=tap0,script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=net0,mac=72:d4:35:18:07:01",
    )


def test_a_bridge_netdev_names_the_bridge_and_models_map_to_devices() -> None:
    argv = argv_of(
        '[[network]]\ntype = "bridge"\nbridge = "br0"\nmodel = "e1000e"\n'
        '[[network]]\nmodel = "rtl8139"\n'
    )
    assert has(argv, "-netdev", "bridge,id=net0,br=br0", "-device", "e1000e,netdev=net0")
    assert has(argv, "-netdev", "user,id=net1", "-device", "rtl8139,netdev=net1")


# --------------------------------------------------------------------------- sound


def test_hda_sound_is_an_audiodev_intel_hda_and_hda_duplex() -> None:
    argv = argv_of('[sound]\nmodel = "hda"\nbackend = "pa"\n')
    assert has(
        argv,
        "-audiodev",
        "pa,id=snd0,in.latency=20000,out.latency=20000",
        "-device",
        "intel-hda,id=sound0",
        "-device",
        "hda-duplex,bus=sound0.0,audiodev=snd0",
    )
    assert "-soundhw" not in argv


def test_hda_without_a_backend_uses_the_silent_none_driver() -> None:
    assert has(argv_of('[sound]\nmodel = "hda"\n'), "-audiodev", "none,id=snd0")


def test_no_sound_model_means_no_audio_options() -> None:
    assert "-audiodev" not in argv_of()


# --------------------------------------------------------------------------- display


def test_no_display_and_no_vga_by_default() -> None:
    argv = argv_of()
    assert has(argv, "-display", "none", "-vga", "none")
    assert not [d for d in option_values(argv, "-device") if "vga" in d.lower()]


@pytest.mark.parametrize(
    ("vga", "device"), [("std", "VGA"), ("virtio", "virtio-vga"), ("qxl", "qxl-vga")]
)
def test_an_emulated_vga_is_a_device_with_the_legacy_vga_option_off(vga: str, device: str) -> None:
    argv = argv_of(f'[display]\nvga = "{vga}"\nfrontend = "gtk"\n')
    assert has(argv, "-display", "gtk", "-vga", "none", "-device", f"{device},id=video0")


def test_vnc_listens_only_on_the_unix_socket_from_the_launch_spec() -> None:
    launch = LaunchSpec(vnc_socket=Path("/run/handoff/w/vnc.sock"))
    argv = argv_of('[display]\nvga = "std"\nfrontend = "vnc"\n', launch)
    assert has(argv, "-display", "vnc=unix:/run/handoff/w/vnc.sock")
    assert "-vnc" not in argv


def test_vnc_without_a_socket_is_a_launch_spec_bug() -> None:
    with pytest.raises(ValueError, match="vnc_socket"):
        argv_of('[display]\nfrontend = "vnc"\n')


@pytest.mark.parametrize("frontend", ["vnc", "gtk", "sdl"])
def test_a_frontend_without_a_vga_gets_the_emulated_std_vga(frontend: str) -> None:
    # A window or VNC socket with no video device would only show "Display
    # output is not active".
    launch = LaunchSpec(vnc_socket=Path("/run/handoff/w/qemu/vnc.sock"))
    argv = argv_of(f'[display]\nfrontend = "{frontend}"\n', launch)
    assert has(argv, "-vga", "none", "-device", "VGA,id=video0")


def test_a_frontend_with_an_x_vga_passthrough_gets_no_emulated_vga() -> None:
    launch = LaunchSpec(vnc_socket=Path("/run/handoff/w/qemu/vnc.sock"))
    extra = '[display]\nfrontend = "vnc"\n[[passthrough]]\naddress = "01:00.0"\nx_vga = true\n'
    argv = argv_of(extra, launch)
    assert not [d for d in option_values(argv, "-device") if d.startswith("VGA")]


def test_an_explicit_vga_none_with_a_frontend_is_kept() -> None:
    launch = LaunchSpec(vnc_socket=Path("/run/handoff/w/qemu/vnc.sock"))
    explicit = profile('[display]\nvga = "none"\nfrontend = "vnc"\n')
    argv = build_argv(explicit, launch)
    assert not [d for d in option_values(argv, "-device") if d.startswith("VGA")]
    assert parse_profile(profile_to_toml(explicit), SOURCE) == explicit  # written back too


def test_the_tablet_is_a_usb_tablet_on_an_xhci_controller() -> None:
    argv = argv_of("[display]\ntablet = true\n")
    assert has(argv, "-device", "qemu-xhci,id=xhci", "-device", "usb-tablet,bus=xhci.0")
    assert "-usbdevice" not in argv


# --------------------------------------------------------------------------- passthrough


def test_a_gpu_and_its_audio_share_one_root_port_as_a_multifunction_card() -> None:
    argv = argv_of(
        '[[passthrough]]\naddress = "01:00.0"\nx_vga = true\n'
        '[[passthrough]]\naddress = "01:00.1"\n'
    )
    assert has(
        argv,
        "-device",
        "pcie-root-port,id=rp0,chassis=1,slot=1",
        "-device",
        "vfio-pci,host=0000:01:00.0,id=hostdev-0000-01-00-0,bus=rp0,addr=00.0,"
        "multifunction=on,x-vga=on",
        "-device",
        "vfio-pci,host=0000:01:00.1,id=hostdev-0000-01-00-1,bus=rp0,addr=00.1",
    )


def test_separate_cards_get_separate_root_ports() -> None:
    argv = argv_of(
        '[[passthrough]]\naddress = "01:00.0"\n[[passthrough]]\naddress = "02:00.0"\n'
    )
    assert "pcie-root-port,id=rp0,chassis=1,slot=1" in argv
    assert "pcie-root-port,id=rp1,chassis=2,slot=2" in argv
    assert "vfio-pci,host=0000:02:00.0,id=hostdev-0000-02-00-0,bus=rp1,addr=00.0" in argv


def test_a_romfile_and_explicit_multifunction_are_passed_on() -> None:
    argv = argv_of(
        '[[passthrough]]\naddress = "0000:03:00.0"\nromfile = "roms/gpu.rom"\n'
        "multifunction = true\n"
    )
    assert (
        "vfio-pci,host=0000:03:00.0,id=hostdev-0000-03-00-0,bus=rp0,addr=00.0,"
        "multifunction=on,romfile=/vms/roms/gpu.rom"
    ) in argv


def test_a_lone_non_zero_function_becomes_function_zero_in_the_guest() -> None:
    argv = argv_of('[[passthrough]]\naddress = "06:00.1"\n')
    assert "vfio-pci,host=0000:06:00.1,id=hostdev-0000-06-00-1,bus=rp0,addr=00.0" in argv


def test_passthrough_device_ids_are_stable_names_for_qmp() -> None:
    from handoff.pci.address import PciAddress

    assert vfio_device_id(PciAddress.parse("01:00.1")) == "hostdev-0000-01-00-1"


# --------------------------------------------------------------------------- launch spec


def test_qmp_over_an_inherited_fd_leaves_no_socket_path() -> None:
    argv = argv_of(launch=LaunchSpec(monitor_fd=5))
    assert has(argv, "-chardev", "socket,id=qmp,fd=5", "-mon", "chardev=qmp,mode=control")


def test_qmp_on_a_path_is_a_listening_unix_socket_that_does_not_wait() -> None:
    argv = argv_of(launch=LaunchSpec(monitor_path=Path("/run/handoff/w/qmp.sock")))
    assert has(
        argv,
        "-chardev",
        "socket,id=qmp,path=/run/handoff/w/qmp.sock,server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
    )


def test_both_monitor_kinds_at_once_is_a_launch_spec_bug() -> None:
    with pytest.raises(ValueError, match="monitor_fd or monitor_path"):
        argv_of(launch=LaunchSpec(monitor_fd=3, monitor_path=Path("/x")))


def test_no_monitor_requested_means_no_monitor() -> None:
    assert "-mon" not in argv_of()


def test_the_input_trace_goes_to_the_trace_file() -> None:
    argv = argv_of(launch=LaunchSpec(trace_file=Path("/run/handoff/w/trace.log")))
    assert has(argv, "-trace", "input_event_*", "-D", "/run/handoff/w/trace.log")


def test_start_paused_adds_dash_s() -> None:
    assert "-S" in argv_of(launch=LaunchSpec(start_paused=True))
    assert "-S" not in argv_of()


def test_resource_arguments_then_the_profiles_own_come_last() -> None:
    launch = LaunchSpec(extra_args=("-device", "virtio-input-host-pci,evdev=/dev/input/event9"))
    argv = build_argv(
        profile(base=BASE + 'extra_args = ["-device", "virtio-rng-pci"]\n'), launch
    )
    assert argv[-4:] == [
        "-device",
        "virtio-input-host-pci,evdev=/dev/input/event9",
        "-device",
        "virtio-rng-pci",
    ]


def test_no_network_port_is_ever_opened() -> None:
    everything = load_profile(REPO / "profiles" / "seed-two-gpu.toml")
    argv = build_argv(everything, LaunchSpec(accel=Accelerator.KVM, monitor_fd=3))
    assert "-vnc" not in argv
    assert "-spice" not in argv
    assert not any("tcp:" in a or "port=" in a for a in argv)


def test_format_argv_is_shell_quoted() -> None:
    argv = argv_of(launch=LaunchSpec(trace_file=Path("/tmp/t t.log")))
    line = format_argv(argv)
    assert "'input_event_*'" in line
    assert shlex.split(line) == argv


def test_argv_devices_lists_every_device_in_order() -> None:
    argv = argv_of('[display]\ntablet = true\n[sound]\nmodel = "hda"\n')
    assert argv_devices(argv) == ("intel-hda", "hda-duplex", "qemu-xhci", "usb-tablet")


def test_the_same_profile_always_gives_the_same_argv() -> None:
    seed = load_profile(REPO / "profiles" / "seed-two-gpu.toml")
    launch = LaunchSpec(accel=Accelerator.KVM, monitor_fd=3)
    assert build_argv(seed, launch) == build_argv(seed, launch)


# --------------------------------------------------------------------------- shipped profiles


def test_the_seed_profile_carries_every_option_of_the_seeds_command_line() -> None:
    seed = load_profile(REPO / "profiles" / "seed-two-gpu.toml")
    argv = build_argv(seed, LaunchSpec(accel=Accelerator.KVM, monitor_fd=3))
    assert has(argv, "-machine", "q35,accel=kvm")  # -enable-kvm
    assert has(argv, "-m", "8192M")  # -m 8192
    assert has(argv, "-cpu", "host,kvm=off,hv-vendor-id=handoffvm")  # -cpu host,kvm=off
    assert has(argv, "-smp", "8,sockets=1,cores=8,threads=1")  # -smp 8,sockets=1,cores=8
    # -drive file=/dev/vg-win7/win7-root,format=raw,if=virtio,cache=none
    assert has(
        argv,
        "-blockdev",
        "driver=host_device,node-name=disk0-file,filename=/dev/vg-win7/win7-root,"
        "aio=native,cache.direct=on",
        "-blockdev",
        "driver=raw,node-name=disk0,file=disk0-file,cache.direct=on",
        "-device",
        "virtio-blk-pci,drive=disk0,id=disk0-dev,bootindex=1",
    )
    # -soundhw hda
    assert has(argv, "-device", "intel-hda,id=sound0")
    assert has(argv, "-device", "hda-duplex,bus=sound0.0,audiodev=snd0")
    # -netdev tap,...,ifname=tap0,script=no,downscript=no -device virtio-net,...,mac=...
    assert has(
        argv,
        "-netdev",
        "tap,id=net0,ifname=tap0,script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=net0,mac=72:d4:35:18:07:01",
    )
    assert has(argv, "-device", "usb-tablet,bus=xhci.0")  # -usbdevice tablet
    assert has(argv, "-vga", "none")  # -vga none
    devices = option_values(argv, "-device")
    # -device vfio-pci,host=01:00.0,x-vga=on / -device vfio-pci,host=01:00.1
    assert any(d.startswith("vfio-pci,host=0000:01:00.0,") and "x-vga=on" in d for d in devices)
    assert any(d.startswith("vfio-pci,host=0000:01:00.1,") for d in devices)
    for removed in ("-enable-kvm", "-soundhw", "-usbdevice", "-drive"):
        assert removed not in argv


SHIPPED = sorted((REPO / "profiles").glob("*.toml"))


#: Debian 12's QEMU firmware descriptors (ovmf 2022.11), for the UEFI profiles.
DEBIAN_FIRMWARE = read_descriptors((HERE / "firmware",))


def shipped_plan(p: Profile) -> SessionPlan:
    """The session plan of a shipped profile on a host whose accelerator it asks for
    (with Debian's firmware descriptors, and a QEMU that has every Hyper-V flag)."""
    kvm = p.vm.cpu_model == "host" or p.vm.accel.value == "kvm"
    accel = Accelerator.KVM if kvm else Accelerator.TCG
    facts = HostFacts(accel=accel, accel_reason="golden", supervisor_uid=0,
                      firmware_descriptors=DEBIAN_FIRMWARE)
    return plan_session(p, facts, HostPaths(run=Path("/run/handoff")))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_profiles_argv_matches_its_golden_file(path: Path) -> None:
    p = load_profile(path)
    argv = shipped_plan(p).argv  # the whole argv `handoff run` starts (input monitor too)
    # Paths relative to the profile are absolute in the argv: make them checkout-independent.
    text = "\n".join(argv).replace(str(REPO), "$REPO") + "\n"
    golden = GOLDEN / f"{path.stem}.argv"
    if os.environ.get("HANDOFF_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}: run with HANDOFF_UPDATE_GOLDEN=1"
    assert text == golden.read_text()
