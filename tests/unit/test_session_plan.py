"""The session plan: profile + host facts -> the complete argv and the ordered host changes.

Pure, so each plan is pinned whole: the argv QEMU runs (golden, per feature
that adds to it: plain, qmp input, virtio input, passthrough, vnc) and the
changes in the order the session makes them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from handoff.base.errors import ProfileError
from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.profile import Accelerator, load_profile, parse_profile
from handoff.session.memlock import required_memlock as memlock_module_required
from handoff.session.plan import (
    ChangeKind,
    HostChange,
    HostFacts,
    QemuOwner,
    SessionPlan,
    plan_session,
)

REPO = Path(__file__).resolve().parents[2]
RUN = Path("/run/handoff")
PATHS = HostPaths(run=RUN)
TCG = HostFacts(accel=Accelerator.TCG, accel_reason="test", supervisor_uid=0)
NOBODY = QemuOwner("nobody", 65534, 65534)
GPU = PciAddress.parse("00:06.0")
AUDIO = PciAddress.parse("00:06.1")

BASE = '[vm]\nname = "p"\nmemory = "64M"\ncpus = 1\naccel = "tcg"\n'
HEAD = [
    "qemu-system-x86_64", "-nodefaults", "-no-user-config",
    "-name", "guest=p,process=handoff-p,debug-threads=on", "-msg", "timestamp=on",
    "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "1", "-m", "64M",
    "-chardev", "socket,id=qmp,fd=3", "-mon", "chardev=qmp,mode=control",
]  # fmt: skip
NO_DISPLAY = ["-display", "none", "-vga", "none"]


def plan(extra: str = "", facts: HostFacts = TCG, **options: object) -> SessionPlan:
    profile = parse_profile(BASE + extra, Path("/vms/p.toml"))
    return plan_session(profile, facts, PATHS, **options)  # type: ignore[arg-type]


def kinds(p: SessionPlan) -> list[ChangeKind]:
    return [change.kind for change in p.changes]


# --------------------------------------------------------------------------- golden argv


def test_the_demo_profile_s_argv_is_qemu_paused_with_qmp_on_the_inherited_fd() -> None:
    demo = load_profile(REPO / "profiles" / "demo.toml")
    argv = plan_session(demo, TCG, PATHS).argv
    assert argv == (
        "qemu-system-x86_64", "-nodefaults", "-no-user-config",
        "-name", "guest=demo,process=handoff-demo,debug-threads=on", "-msg", "timestamp=on",
        "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "1", "-m", "256M",
        "-chardev", "socket,id=qmp,fd=3", "-mon", "chardev=qmp,mode=control",
        "-display", "none", "-vga", "none", "-S",
    )  # fmt: skip


def test_the_qmp_input_backend_s_monitor_is_in_the_argv() -> None:
    socket = RUN / "qemu" / "p" / "input.qmp"
    assert plan('[input]\nbackend = "qmp"\n').argv == (
        *HEAD, *NO_DISPLAY,
        "-chardev", f"socket,id=handoff-input,path={socket},server=on,wait=off",
        "-mon", "chardev=handoff-input,mode=control",
        "-S",
    )  # fmt: skip


def test_the_virtio_backend_s_proxies_are_stable_links_in_qemu_s_socket_directory() -> None:
    links = RUN / "qemu" / "p"
    p = plan('[input]\nbackend = "virtio"\n')
    assert p.argv == (
        *HEAD, *NO_DISPLAY,
        "-device", f"virtio-input-host-pci,id=handoff-keyboard,evdev={links}/keyboard.evdev",
        "-device", f"virtio-input-host-pci,id=handoff-mouse,evdev={links}/mouse.evdev",
        "-S",
    )  # fmt: skip
    assert p.paths.proxy_links == (links / "keyboard.evdev", links / "mouse.evdev")
    assert "virtio-input-host-pci" in p.devices


def test_a_passthrough_card_is_behind_its_root_port_with_both_functions() -> None:
    p = plan('[[passthrough]]\naddress = "00:06.0"\n[[passthrough]]\naddress = "00:06.1"\n')
    assert p.argv == (
        *HEAD, *NO_DISPLAY,
        "-device", "pcie-root-port,id=rp0,chassis=1,slot=1",
        "-device",
        "vfio-pci,host=0000:00:06.0,id=hostdev-0000-00-06-0,bus=rp0,addr=00.0,multifunction=on",
        "-device", "vfio-pci,host=0000:00:06.1,id=hostdev-0000-00-06-1,bus=rp0,addr=00.1",
        "-S",
    )  # fmt: skip


def test_vnc_is_a_unix_socket_in_qemu_s_socket_directory() -> None:
    p = plan('[display]\nfrontend = "vnc"\n')
    vnc = RUN / "qemu" / "p" / "vnc.sock"
    assert p.argv == (
        *HEAD, "-display", f"vnc=unix:{vnc}", "-vga", "none", "-device", "VGA,id=video0", "-S",
    )  # fmt: skip
    assert p.paths.vnc_socket == vnc


def test_the_input_trace_and_the_profile_s_own_arguments_come_last() -> None:
    p = plan(
        'extra_args = ["-device", "virtio-rng-pci"]\n[input]\nbackend = "qmp"\n',
        trace_file=Path("/tmp/trace.log"),
    )
    assert p.argv[-9:] == (
        "-mon", "chardev=handoff-input,mode=control",
        "-trace", "input_event_*", "-D", "/tmp/trace.log",
        "-S", "-device", "virtio-rng-pci",
    )  # fmt: skip


def test_the_run_s_argv_differs_from_the_printed_one_only_in_the_qmp_fd() -> None:
    p = plan('[input]\nbackend = "virtio"\n[display]\nfrontend = "vnc"\n')
    ran = p.argv_with_monitor_fd(17)
    assert [i for i, (a, b) in enumerate(zip(ran, p.argv, strict=True)) if a != b] == [
        p.argv.index("socket,id=qmp,fd=3")
    ]
    assert "socket,id=qmp,fd=17" in ran


def test_a_host_cpu_without_kvm_is_refused_by_the_plan() -> None:
    with pytest.raises(ProfileError, match="cpu_model"):
        plan('cpu_model = "host"\n')
    kvm = HostFacts(accel=Accelerator.KVM, accel_reason="test", supervisor_uid=0)
    assert "host" in plan('cpu_model = "host"\n', kvm).argv


# --------------------------------------------------------------------------- host changes


def test_a_plain_vm_changes_only_its_own_run_directories() -> None:
    p = plan()
    assert kinds(p) == [ChangeKind.CREATE_RUN_DIR, ChangeKind.CREATE_RUN_DIR]
    assert [c.target for c in p.changes] == [str(RUN / "p"), str(RUN / "qemu" / "p")]
    assert p.memlock_bytes is None


def of_kind(p: SessionPlan, kind: ChangeKind) -> tuple[HostChange, ...]:
    return tuple(change for change in p.changes if change.kind is kind)


def test_passthrough_moves_each_device_chowns_its_group_once_and_raises_memlock() -> None:
    facts = HostFacts(
        accel=Accelerator.TCG, accel_reason="test", supervisor_uid=0, qemu_owner=NOBODY,
        iommu_groups=((GPU, 7), (AUDIO, 7)),
    )
    p = plan('[[passthrough]]\naddress = "00:06.0"\n[[passthrough]]\naddress = "00:06.1"\n', facts)
    assert kinds(p)[2:] == [
        ChangeKind.DEVICE_TO_VFIO, ChangeKind.DEVICE_TO_VFIO, ChangeKind.CHOWN_NODE,
        ChangeKind.RAISE_MEMLOCK,
    ]  # fmt: skip
    moves = of_kind(p, ChangeKind.DEVICE_TO_VFIO)
    assert [m.target for m in moves] == ["0000:00:06.0", "0000:00:06.1"]
    assert all("IOMMU group 7" in m.detail for m in moves)
    (chown,) = of_kind(p, ChangeKind.CHOWN_NODE)
    assert chown.target == "/dev/vfio/7"
    assert "65534:65534 (nobody)" in chown.detail
    assert p.memlock_bytes == (64 << 20) + (1 << 30)
    assert of_kind(p, ChangeKind.RAISE_MEMLOCK)[0].detail.startswith("1088 MiB")


def test_the_memlock_the_plan_raises_is_the_one_preflight_checks() -> None:
    p = plan('[[passthrough]]\naddress = "00:06.0"\n')
    assert p.memlock_bytes == memlock_module_required(p.profile)


def test_an_unknown_group_is_named_as_such_not_guessed() -> None:
    facts = HostFacts(accel=Accelerator.TCG, accel_reason="t", supervisor_uid=0, qemu_owner=NOBODY,
                      iommu_groups=((GPU, None),))
    p = plan('[[passthrough]]\naddress = "00:06.0"\n', facts)
    assert "its IOMMU group" in of_kind(p, ChangeKind.DEVICE_TO_VFIO)[0].detail
    assert of_kind(p, ChangeKind.CHOWN_NODE)[0].target == "/dev/vfio/<group>"


def test_virtio_input_creates_chowns_and_links_the_proxies_then_grabs_after_boot() -> None:
    facts = HostFacts(accel=Accelerator.TCG, accel_reason="t", supervisor_uid=0, qemu_owner=NOBODY)
    p = plan('[input]\nbackend = "virtio"\nexclude = ["name:Yubikey"]\n', facts)
    assert kinds(p)[2:] == [
        ChangeKind.CREATE_PROXY, ChangeKind.CHOWN_NODE, ChangeKind.LINK_PROXY,
        ChangeKind.CREATE_PROXY, ChangeKind.CHOWN_NODE, ChangeKind.LINK_PROXY,
        ChangeKind.GRAB_INPUT,
    ]  # fmt: skip
    links = [c.target for c in of_kind(p, ChangeKind.LINK_PROXY)]
    assert links == [str(path) for path in p.paths.proxy_links or ()]
    (grab,) = of_kind(p, ChangeKind.GRAB_INPUT)
    assert grab.target == "every keyboard and mouse except name:Yubikey"


def test_proxy_nodes_stay_udev_s_when_qemu_runs_as_the_supervisor_s_user() -> None:
    same = HostFacts(
        accel=Accelerator.TCG, accel_reason="t", supervisor_uid=65534, qemu_owner=NOBODY
    )
    assert ChangeKind.CHOWN_NODE not in kinds(plan('[input]\nbackend = "virtio"\n', same))
    assert ChangeKind.CHOWN_NODE not in kinds(plan('[input]\nbackend = "virtio"\n'))


def test_a_gpu_and_input_profile_orders_the_changes_as_the_session_makes_them() -> None:
    p = plan('[[passthrough]]\naddress = "00:06.0"\n[input]\nbackend = "qmp"\n')
    assert kinds(p) == [
        ChangeKind.CREATE_RUN_DIR, ChangeKind.CREATE_RUN_DIR, ChangeKind.DEVICE_TO_VFIO,
        ChangeKind.RAISE_MEMLOCK, ChangeKind.GRAB_INPUT,
    ]  # fmt: skip
    assert all(line.count(": ") >= 2 for line in (c.describe() for c in p.changes))


def test_the_plan_is_frozen_and_the_same_for_the_same_inputs() -> None:
    a = plan('[input]\nbackend = "virtio"\n')
    assert a == plan('[input]\nbackend = "virtio"\n')
    with pytest.raises(AttributeError):
        a.argv = ()  # type: ignore[misc]


# --------------------------------------------------------------------------- purity, imports


def is_one_of(module: str, names: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in names)


def modules_after(program: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", program + "\nimport json, sys\n"
         "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        check=True, cwd=REPO,
    )
    return set(json.loads(done.stderr.splitlines()[-1]))


EDGES = ("trio", "evdev", "pyudev", "qemu.qmp", "handoff.session.rundir", "handoff.qemu.process",
         "handoff.qemu.accel", "handoff.pci.sysfs", "handoff.session.host_facts",
         "handoff.session.supervisor")


def test_the_plan_module_imports_no_edge_module() -> None:
    loaded = modules_after("import handoff.session.plan")
    assert "handoff.session.plan" in loaded
    assert sorted(m for m in loaded if is_one_of(m, EDGES)) == []


RESOURCE_MODULES = ("handoff.pci.resource", "handoff.journal", "handoff.input.resource",
                    "handoff.input.devices", "evdev", "pyudev")


def test_a_session_without_passthrough_or_input_imports_neither_resource() -> None:
    loaded = modules_after(
        "from pathlib import Path\n"
        "from handoff.base.host import HostPaths\n"
        "from handoff.profile import load_profile\n"
        "from handoff.session.host_facts import gather_host_facts\n"
        "from handoff.session.supervisor import Session, default_resources\n"
        "from handoff.session.plan import plan_session\n"
        "p = load_profile(Path('profiles/demo.toml'))\n"
        "plan = plan_session(p, gather_host_facts(p, HostPaths(), strict=False), HostPaths())\n"
        "assert default_resources(plan, HostPaths()) == []\n"
    )
    assert "handoff.session.supervisor" in loaded
    assert sorted(m for m in loaded if is_one_of(m, RESOURCE_MODULES)) == []


def test_only_the_resource_a_profile_uses_is_imported(tmp_path: Path) -> None:
    profile = tmp_path / "gpu.toml"
    profile.write_text(BASE + '[[passthrough]]\naddress = "00:06.0"\n')
    loaded = modules_after(
        "from pathlib import Path\n"
        "from handoff.base.host import HostPaths\n"
        "from handoff.profile import load_profile\n"
        "from handoff.session.host_facts import gather_host_facts\n"
        "from handoff.session.supervisor import default_resources\n"
        "from handoff.session.plan import plan_session\n"
        f"p = load_profile(Path({str(profile)!r}))\n"
        "plan = plan_session(p, gather_host_facts(p, HostPaths(), strict=False), HostPaths())\n"
        "assert [r.name for r in default_resources(plan, HostPaths())] == ['gpu']\n"
    )
    assert "handoff.pci.resource" in loaded
    assert sorted(m for m in loaded if is_one_of(m, ("handoff.input.resource", "evdev"))) == []
