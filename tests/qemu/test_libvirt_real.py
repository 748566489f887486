"""handoff import/export against libvirt's own tools, on a libvirtd this module starts.

Domains come from virt-install (Debian's virtinst, `--print-xml` against the
libvirtd started here: libvirt's test:///default driver has no PCI node
devices for --hostdev), exports are checked by virt-xml-validate (libvirt's
schema), `virsh define`, `virsh start` (TCG) and `virsh destroy`, and
imports are compared device by device with libvirt's own translation of the
same domain (`virsh domxml-to-native qemu-argv`).
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from handoff.interop.domain_export import domain_xml
from handoff.interop.domain_import import parse_domain
from handoff.interop.reasons import DEFAULT_REASON
from handoff.profile import Accel, Accelerator, TpmType, load_profile, parse_profile
from handoff.qemu.cmdline import LaunchSpec, build_argv
from tests.conftest import TEST_TAG

pytestmark = pytest.mark.qemu

REPO = Path(__file__).parent.parent.parent
SHIPPED = sorted((REPO / "profiles").glob("*.toml"))
URI = "qemu:///system"
TOOLS = ("virsh", "virt-install", "virt-xml-validate", "/usr/sbin/libvirtd", "/usr/sbin/virtlogd")


def _missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def run(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _daemon_env() -> dict[str, str]:
    """The daemons outlive a test: they must not carry its process tag."""
    return {k: v for k, v in os.environ.items() if k != TEST_TAG}


@pytest.fixture(scope="module")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A system libvirtd (unix sockets only, no TCP) for this module; stopped after."""
    missing = _missing_tools()
    if missing or os.geteuid() != 0:
        reason = f"needs root and {', '.join(missing) or 'libvirt'} (contrib/install.sh --dev)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    started: list[Path] = []
    state = tmp_path_factory.mktemp("libvirtd")
    for daemon in ("virtlogd", "libvirtd"):
        pidfile = Path(f"/run/{daemon}.pid")
        if pidfile.exists() and Path(f"/proc/{pidfile.read_text().strip()}").exists():
            continue  # one runs already: use it, leave it
        ours = state / f"{daemon}.pid"
        done = subprocess.run([f"/usr/sbin/{daemon}", "--daemon", "--pid-file", str(ours)],
                              env=_daemon_env(), capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr
        started.append(ours)
    deadline = time.monotonic() + 120
    while run("virsh", "-c", URI, "version", timeout=60).returncode != 0:
        assert time.monotonic() < deadline, "libvirtd did not answer within 120 s"
        time.sleep(0.5)
    try:
        yield URI
    finally:
        for pidfile in reversed(started):
            if pidfile.exists():
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_libvirts_schema_accepts_every_shipped_profiles_export(
    libvirtd: str, path: Path, tmp_path: Path
) -> None:
    for accel in Accelerator:
        xml = tmp_path / f"{path.stem}-{accel.value}.xml"
        xml.write_text(domain_xml(load_profile(path), accel))
        checked = run("virt-xml-validate", str(xml), "domain")
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_libvirts_schema_accepts_looking_glass_usb_and_a_virtiofs_share(
    libvirtd: str, tmp_path: Path
) -> None:
    folder = tmp_path / "games"
    folder.mkdir()
    profile = parse_profile(
        '[vm]\nname = "desk"\nmemory = "1G"\n[looking_glass]\nenabled = true\n'
        'owner = "root"\n[[usb]]\ndevice = "046d:c52b"\n'
        f'[[share]]\npath = "{folder}"\ntag = "games"\n', tmp_path / "desk.toml")
    xml = tmp_path / "desk.xml"
    xml.write_text(domain_xml(profile, Accelerator.TCG))
    checked = run("virt-xml-validate", str(xml), "domain")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_libvirtd_defines_starts_and_destroys_the_exported_demo(
    libvirtd: str, tmp_path: Path
) -> None:
    xml = tmp_path / "demo.xml"
    exported = run(sys.executable, "-m", "handoff", "export",
                   str(REPO / "profiles" / "demo.toml"), "--libvirt", "--output", str(xml))
    assert exported.returncode == 0, exported.stderr
    name = "demo"
    run("virsh", "-c", libvirtd, "destroy", name)
    run("virsh", "-c", libvirtd, "undefine", "--nvram", name)
    try:
        defined = run("virsh", "-c", libvirtd, "define", str(xml))
        assert defined.returncode == 0, defined.stderr
        started = run("virsh", "-c", libvirtd, "start", name)
        assert started.returncode == 0, started.stderr
        state = run("virsh", "-c", libvirtd, "domstate", name)
        assert state.stdout.strip() == "running"
        argv = Path(f"/proc/{_qemu_pid(name)}/cmdline").read_bytes().split(b"\0")
        assert b"-accel" in argv or any(b"accel=" in a for a in argv)
        destroyed = run("virsh", "-c", libvirtd, "destroy", name)
        assert destroyed.returncode == 0, destroyed.stderr
        # and back: `handoff import --domain` reads what libvirt stored (virsh dumpxml)
        back = tmp_path / "back.toml"
        imported = subprocess.run(
            [sys.executable, "-m", "handoff", "import", "--domain", name, "--output", str(back)],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "LIBVIRT_DEFAULT_URI": libvirtd},
        )
        assert imported.returncode == 0, imported.stderr
        again = load_profile(back)
        assert (again.name, again.vm.memory_mib, again.vm.cpus) == ("demo", 256, 1)
        assert again.vm.accel is Accel.AUTO  # handoff's metadata survived libvirt's storage
    finally:
        run("virsh", "-c", libvirtd, "destroy", name)
        run("virsh", "-c", libvirtd, "undefine", "--nvram", name)


def _qemu_pid(name: str) -> int:
    pidfile = Path(f"/run/libvirt/qemu/{name}.pid")
    return int(pidfile.read_text().strip())


# --------------------------------------------------------------------------- import

#: Typical VFIO virt-install commands (UEFI, a PCI hostdev, vcpupin, hugepages,
#: Hyper-V, TPM, evdev input, a bridge NIC, a virtio disk and a CD-ROM).
VIRT_INSTALL: dict[str, list[str]] = {
    "windows-gpu": [
        "--memory", "4096", "--vcpus", "4,sockets=1,cores=2,threads=2",
        "--cpu", "host-passthrough", "--boot", "uefi", "--osinfo", "win10",
        "--disk", "path={disk},format=raw,bus=virtio,cache=none,io=native",
        "--cdrom", "{iso}",
        "--network", "bridge=br0,model=virtio,mac=52:54:00:aa:bb:cc",
        "--hostdev", "{hostdev}",
        "--cputune", "vcpupin0.vcpu=0,vcpupin0.cpuset=2,vcpupin1.vcpu=1,vcpupin1.cpuset=3,"
        "vcpupin2.vcpu=2,vcpupin2.cpuset=4,vcpupin3.vcpu=3,vcpupin3.cpuset=5",
        "--memorybacking", "hugepages=on",
        "--features", "hyperv.relaxed.state=on,kvm.hidden.state=on",
        "--tpm", "emulator",
        "--input", "type=evdev,source.dev=/dev/input/by-id/usb-Kbd-event-kbd,source.grab=all,"
        "source.grabToggle=ctrl-ctrl",
        "--graphics", "none",
    ],
    "linux-vnc": [
        "--memory", "2048", "--vcpus", "2", "--osinfo", "debian11",
        "--disk", "path={disk},format=raw,bus=sata", "--import", "--network", "user,model=e1000e",
        "--graphics", "vnc", "--video", "virtio", "--sound", "ich9",
    ],
}


def _first_pci_nodedev(uri: str) -> str:
    listed = run("virsh", "-c", uri, "nodedev-list", "--cap", "pci")
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.split()[-1]


def _virt_install_xml(uri: str, name: str, tmp_path: Path) -> str:
    disk = tmp_path / f"{name}.img"
    iso = tmp_path / f"{name}.iso"
    for path in (disk, iso):
        with path.open("wb") as handle:
            handle.truncate(1024 * 1024)
    values = {"disk": str(disk), "iso": str(iso), "hostdev": _first_pci_nodedev(uri)}
    args = [a.format(**values) for a in VIRT_INSTALL[name]]
    done = run("virt-install", "--connect", uri, "--print-xml", "--name", name,
               "--noautoconsole", *args)
    assert done.returncode == 0, done.stderr
    # with install media virt-install prints the install-time domain, then the final one
    return "<domain" + done.stdout.rsplit("<domain", 1)[1]


def _drivers(argv: Sequence[str]) -> Counter[str]:
    """The -device drivers of an argv, in QEMU's key=value or libvirt's JSON form."""
    found: Counter[str] = Counter()
    for flag, value in itertools.pairwise(argv):
        if flag == "-device":
            driver = json.loads(value)["driver"] if value.startswith("{") else value.split(",")[0]
            found[driver] += 1
    return found


#: Devices libvirt adds that handoff does not, and why (the import lists the
#: elements behind them as not imported).
LIBVIRT_ONLY = {
    "pcie-root-port": "libvirt adds a root port per device and spares for hot-plug; handoff "
    "one per passthrough card",
    "qemu-xhci": "libvirt's default USB controller; handoff adds one only for a tablet",
    "virtio-balloon-pci": "<memballoon>: handoff gives the guest all of vm.memory",
    "isa-serial": "<console>: not imported",
    "virtio-serial-pci": "<channel>: not imported",
    "virtio-rng-pci": "<rng>: not imported (extra_args can add it)",
    "virtserialport": "<channel> (the guest agent's): not imported",
}
#: The same device under another name: libvirt's ``ich9`` sound model is ICH9's HDA
#: controller, handoff's ``hda`` is ICH6's (the same driver in every guest).
EQUIVALENT = {"ich9-intel-hda": "intel-hda"}
#: Devices handoff adds that libvirt's translation here lacks.
HANDOFF_ONLY = {
    "pcie-root-port": "handoff's root port for the passthrough card",
    "vfio-pci": "the hostdev: this host has no IOMMU, so libvirt cannot translate it here "
    "(the export/import round trip checks it instead)",
}


@pytest.mark.parametrize("name", sorted(VIRT_INSTALL))
def test_virt_install_domains_import_with_every_left_out_element_explained_and_the_same_devices(
    libvirtd: str, name: str, tmp_path: Path
) -> None:
    text = _virt_install_xml(libvirtd, name, tmp_path)
    result = parse_domain(text, f"virt-install {name}")
    unexplained = [u.line() for u in result.unmapped if u.reason == DEFAULT_REASON]
    assert unexplained == []
    profile = parse_profile(result.text(), tmp_path / f"{name}.toml")
    launch = LaunchSpec(
        accel=Accelerator.KVM, vnc_socket=tmp_path / "v",
        tpm_socket=tmp_path / "t" if profile.tpm.type is TpmType.EMULATED else None,
        agent_socket=tmp_path / "a" if profile.guest_agent.enabled else None,
    )
    ours = _drivers(build_argv(profile, launch))
    # libvirt translates only what this host can run: no hostdev (no IOMMU), no hugetlbfs
    xml = tmp_path / f"{name}.xml"
    stripped = _without(text, "hostdev", "memoryBacking")
    xml.write_text(stripped)
    native = run("virsh", "-c", libvirtd, "domxml-to-native", "qemu-argv", str(xml))
    assert native.returncode == 0, native.stderr
    theirs = Counter({EQUIVALENT.get(d, d): n
                      for d, n in _drivers(shlex.split(native.stdout)).items()})
    for driver in set(ours) | set(theirs):
        if ours[driver] == theirs[driver]:
            continue
        if ours[driver] > theirs[driver]:
            assert driver in HANDOFF_ONLY, (driver, ours, theirs)
        else:
            assert driver in LIBVIRT_ONLY, (driver, ours, theirs)


def _without(text: str, *tags: str) -> str:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(text)
    for tag in tags:
        for parent in root.iter():
            for child in list(parent):
                if child.tag == tag:
                    parent.remove(child)
    return ET.tostring(root, encoding="unicode")
