"""Every documented profile value, run for real: `handoff run` reaches "running", Ctrl-C ends it.

Each [display], [sound], [[disk]], [[network]] and [firmware] value that
handoff/profile.py accepts and README.md / profiles/ describe is started here
with the real CLI and the real qemu-system-x86_64 (TCG, 64-128 MiB), several
values per run where one profile can hold them. A run must print the
"running" line, end on SIGINT with exit status 130, leave no QEMU and no run
directory, and print nothing on stderr. A value this host's QEMU cannot run
(its GUI and PulseAudio modules live in Debian's qemu-system-gui, which is
not installed here) must be refused by preflight with exit 2 and its clear
message: which of the two applies is read from the binary itself, so the
test stays honest on a host that has the modules.

The shipped profiles run with their host paths swapped for files made here
(qemu-img images, an ISO-like file, OVMF vars); their passthrough sections
are removed (this host has no IOMMU), KVM-only settings become TCG, and tap
networking stays tap when run as root (QEMU creates the tap itself).

Not run here: network type = "bridge" needs /etc/qemu/bridge.conf for QEMU's
setuid bridge helper and a host bridge; this test does not change /etc, so it
asserts the clear refusal instead.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from handoff.base.errors import QemuUnsupportedError
from handoff.base.host import HostPaths
from handoff.profile import parse_profile
from handoff.qemu.capabilities import bridge_acl_refusal, check_bridges, probe
from handoff.session.rundir import qemu_socket_dir
from tests.host_requirements import requires

from .conftest import QEMU, pid_gone
from .test_cli_session import RunningCli, cli_env

pytestmark = pytest.mark.qemu

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "profiles"
IS_ROOT = os.geteuid() == 0
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
#: A guest that only has to reach "running": the firmware runs, nothing boots.
RUN_LIMIT = 180.0

Check = Callable[[Path], Awaitable[None]]


@pytest.fixture
def where() -> Iterator[Path]:
    """A directory every user can enter (pytest's tmp_path is root's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="handoff-features-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def qemu_img(path: Path, fmt: str, size: str = "8M") -> Path:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True,
        stdin=subprocess.DEVNULL,
    )
    return path


def iso_like(path: Path) -> Path:
    """A file shaped like an ISO 9660 image (the CD001 volume descriptor at 32 KiB)."""
    data = bytearray(1024 * 1024)
    data[0x8001:0x8006] = b"CD001"
    path.write_bytes(bytes(data))
    return path


def vm_table(name: str, *, memory: str = "64M", user: str | None = None) -> str:
    lines = [
        "[vm]", f'name = "{name}"', f'memory = "{memory}"', "cpus = 1", 'accel = "tcg"',
        "shutdown_timeout = 0.3",
    ]
    if user is not None:
        lines.append(f'user = "{user}"')
    return "\n".join(lines) + "\n"


def tap_name() -> str:
    return f"hot{uuid.uuid4().hex[:8]}"  # QEMU (as root) creates it; gone when QEMU exits


class Cli(RunningCli):
    """RunningCli that also wakes its waiters when the process exits (a failed start)."""

    async def pump_to_exit(self) -> None:
        await self.pump()
        await self.process.wait()
        self._changed.set()


@dataclass
class Ended:
    """What a finished `handoff run` printed."""

    lines: list[str]
    stderr: str
    status: int
    qemu_pid: int | None = None


async def run_until_running(
    profile: Path, run_root: Path, during: Check | None = None
) -> Ended:
    """`handoff run PROFILE` to "running", then ``during(run_dir)``, then SIGINT."""
    env = cli_env(run_root)
    with trio.fail_after(RUN_LIMIT):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "handoff", "run", str(profile)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        cli = Cli(process, env)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cli.pump_to_exit)
                nursery.start_soon(cli.pump_stderr)
                await cli.wait_for("^handoff: running")
                name = re.search(r"handoff stop (\S+)`", cli.text())
                assert name is not None
                if during is not None:
                    await during(run_root / name[1])
                process.send_signal(signal.SIGINT)
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode is not None
    return Ended(cli.lines, cli.stderr.decode(), process.returncode, cli.qemu_pid)


async def assert_runs(profile: Path, run_root: Path, during: Check | None = None) -> Ended:
    """The whole contract of one run: running, 130 on Ctrl-C, nothing left behind."""
    ended = await run_until_running(profile, run_root, during)
    text = "\n".join(ended.lines)
    assert ended.stderr == "", ended.stderr
    assert ended.status == 130, text
    assert "ended: stopped on SIGINT; QEMU exited with status 0 (exit 130)" in text
    assert ended.qemu_pid is not None
    assert pid_gone(ended.qemu_pid), "QEMU is still running"
    left = list(run_root.iterdir())  # noqa: ASYNC240 (a finished run: nothing to wait for)
    assert not left, f"left behind: {left}"
    return ended


async def refused(profile: Path, run_root: Path) -> str:
    """`handoff run` that must refuse in preflight: exit 2, no QEMU, no traceback."""
    with trio.fail_after(RUN_LIMIT):
        done = await trio.run_process(
            [sys.executable, "-m", "handoff", "run", str(profile)], env=cli_env(run_root),
            capture_stdout=True, capture_stderr=True, check=False,
        )
    err = done.stderr.decode()
    assert done.returncode == 2, (done.stdout, err)
    assert "Traceback" not in err
    assert "QEMU started" not in done.stdout.decode()
    left = list(run_root.iterdir()) if run_root.exists() else []  # noqa: ASYNC240
    assert not left, f"left behind: {left}"
    return err


def write(where: Path, name: str, text: str) -> Path:
    path = where / f"{name}.toml"
    path.write_text(text)
    path.chmod(0o644)
    return path


# --------------------------------------------------------------------------- disks


def test_the_documented_disk_values_run_in_one_vm(where: Path) -> None:
    raw = qemu_img(where / "a.raw", "raw")
    qcow = qemu_img(where / "b.qcow2", "qcow2")
    qcow_scsi = qemu_img(where / "c.qcow2", "qcow2")
    scratch = qemu_img(where / "d.raw", "raw")
    shared = qemu_img(where / "e.raw", "raw")
    iso = iso_like(where / "install.iso")
    # format raw/qcow2, interface virtio/sata/scsi, every cache, every aio,
    # media disk/cdrom, readonly; a path relative to the profile's folder.
    text = vm_table("disks") + f"""
[[disk]]
path = "{raw}"
format = "raw"
interface = "virtio"
cache = "none"
aio = "native"

[[disk]]
path = "b.qcow2"
format = "qcow2"
interface = "sata"
cache = "writethrough"

[[disk]]
path = "{qcow_scsi}"
format = "qcow2"
interface = "scsi"
cache = "directsync"
aio = "io_uring"

[[disk]]
path = "{scratch}"
cache = "unsafe"
aio = "threads"

[[disk]]
path = "{shared}"
media = "disk"
cache = "writeback"
readonly = true

[[disk]]
path = "{iso}"
media = "cdrom"

[[disk]]
path = "{iso}"
media = "cdrom"
interface = "scsi"
"""
    assert qcow.exists()
    trio.run(assert_runs, write(where, "disks", text), where / "run")


@requires(IS_ROOT, "a loop block device needs root")
def test_a_block_device_disk_runs_on_the_host_device_driver(where: Path) -> None:
    # The seed's LVM volume is a block device under /dev: a loop device stands in.
    backing = qemu_img(where / "lv.raw", "raw")
    found = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
        check=False,
    )
    if found.returncode != 0:
        pytest.skip(f"no loop device here: {found.stderr.strip()}")
    device = found.stdout.strip()
    try:
        text = vm_table("blockdev") + f"""
[[disk]]
path = "{device}"
format = "raw"
interface = "virtio"
cache = "none"
aio = "native"
"""
        trio.run(assert_runs, write(where, "blockdev", text), where / "run")
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


# --------------------------------------------------------------------------- networks


def test_the_documented_nic_models_and_user_and_tap_networks_run(where: Path) -> None:
    tap = (
        f'[[network]]\ntype = "tap"\nifname = "{tap_name()}"\nmodel = "rtl8139"\n'
        if IS_ROOT
        else '[[network]]\ntype = "user"\nmodel = "rtl8139"\n'  # tap needs root (CAP_NET_ADMIN)
    )
    text = vm_table("nets") + f"""
[[network]]
type = "user"
model = "virtio"

[[network]]
model = "e1000e"
mac = "72:D4:35:18:07:01"

{tap}"""
    trio.run(assert_runs, write(where, "nets", text), where / "run")


def test_a_bridge_network_without_the_bridge_helpers_acl_is_refused_cleanly(where: Path) -> None:
    """QEMU's bridge helper needs /etc/qemu/bridge.conf; without it no bridge runs."""
    if Path("/etc/qemu/bridge.conf").exists():
        pytest.skip("this host has a bridge helper ACL: the refusal cannot be seen here")
    text = vm_table("bridge") + '[[network]]\ntype = "bridge"\nbridge = "hobr0"\n'
    err = trio.run(refused, write(where, "bridge", text), where / "run")
    assert "network[0].bridge" in err
    assert "/etc/qemu/bridge.conf" in err


@pytest.mark.parametrize(
    ("acl", "refusal"),
    [
        ("allow hobr0\n", None),
        ("# LAN\nallow all\n", None),
        ("allow br1\n", 'has no "allow hobr0"'),
        ("allow all\ndeny hobr0\n", "denies it"),
        ("include {inc}\n", None),
        ("include {missing}\n", "cannot read its access list"),
    ],
)
def test_the_bridge_helpers_acl_rules_are_read_as_the_helper_reads_them(
    tmp_path: Path, acl: str, refusal: str | None
) -> None:
    (tmp_path / "inc.conf").write_text("allow hobr0\n")
    conf = tmp_path / "bridge.conf"
    conf.write_text(acl.format(inc=tmp_path / "inc.conf", missing=tmp_path / "nope.conf"))
    found = bridge_acl_refusal("hobr0", conf)
    if refusal is None:
        assert found is None
    else:
        assert found is not None
        assert refusal in found


def test_a_bridge_the_acl_allows_but_the_host_lacks_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "bridge.conf"
    conf.write_text("allow hobr0\n")
    profile = parse_profile(
        vm_table("b") + '[[network]]\ntype = "bridge"\nbridge = "hobr0"\n', tmp_path / "b.toml"
    )
    paths = HostPaths(sys=tmp_path / "sys")
    with pytest.raises(QemuUnsupportedError, match="no bridge of that name"):
        check_bridges(profile, paths, acl=conf)
    (paths.sys / "class/net/hobr0/bridge").mkdir(parents=True)  # as /sys/class/net shows a bridge
    check_bridges(profile, paths, acl=conf)


# --------------------------------------------------------------------------- sound


SOUND_BACKENDS = ["none", "alsa", "pa", "pipewire", "sdl"]


@pytest.mark.parametrize("backend", SOUND_BACKENDS)
def test_every_sound_backend_runs_or_is_refused_in_preflight(where: Path, backend: str) -> None:
    driver = backend
    text = vm_table(f"snd-{backend}") + f'[sound]\nmodel = "hda"\nbackend = "{backend}"\n'
    profile = write(where, f"snd-{backend}", text)
    caps = probe(QEMU)
    if driver in caps.audio_drivers:
        trio.run(assert_runs, profile, where / "run")
        return
    err = trio.run(refused, profile, where / "run")
    listed = ", ".join(sorted(caps.audio_drivers))
    assert err.startswith(
        f'handoff: {profile}: sound.backend: found "{backend}"; this QEMU '
        f"{caps.version_text} has no {driver} audio driver (it has: {listed})\n  fix: "
    ), err


def test_sound_model_none_runs(where: Path) -> None:
    text = vm_table("snd-off") + '[sound]\nmodel = "none"\n'
    trio.run(assert_runs, write(where, "snd-off", text), where / "run")


# --------------------------------------------------------------------------- display


@pytest.mark.parametrize(
    "display",
    [
        'vga = "std"\nfrontend = "none"\ntablet = true',
        'vga = "virtio"\nfrontend = "none"',
        'vga = "qxl"\nfrontend = "none"',
        'vga = "none"\nfrontend = "none"',
        'vga = "virtio"\nfrontend = "vnc"',
    ],
    ids=["std-tablet", "virtio", "qxl", "none", "virtio-vnc"],
)
def test_every_vga_model_runs(where: Path, display: str) -> None:
    text = vm_table("vga") + f"[display]\n{display}\n"
    trio.run(assert_runs, write(where, "vga", text), where / "run")


@pytest.mark.parametrize("frontend", ["gtk", "sdl"])
def test_a_window_frontend_runs_or_is_refused_in_preflight(where: Path, frontend: str) -> None:
    text = vm_table(f"win-{frontend}") + f'[display]\nfrontend = "{frontend}"\n'
    profile = write(where, f"win-{frontend}", text)
    caps = probe(QEMU)
    if frontend not in caps.display_backends:
        err = trio.run(refused, profile, where / "run")
        listed = ", ".join(sorted(caps.display_backends))
        assert err == (
            f'handoff: {profile}: display.frontend: found "{frontend}"; this QEMU '
            f"{caps.version_text} has no {frontend} display (it has: {listed})\n"
            "  fix: apt-get install qemu-system-gui (Debian/Ubuntu ship it as a separate "
            'package), or frontend = "vnc" (a unix socket in the run directory)\n'
        )
        return
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        trio.run(assert_runs, profile, where / "run")
        return
    # The module is there but no display server: QEMU itself refuses to start.
    done = subprocess.run(
        [sys.executable, "-m", "handoff", "run", str(profile)], env=cli_env(where / "run"),
        capture_output=True, text=True, check=False, timeout=RUN_LIMIT,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("handoff: QEMU exited with status 1 before its monitor answered")


# --------------------------------------------------------------------------- VNC


def rfb_greeting(path: Path, user: str | None) -> bytes:
    """The first 12 bytes a VNC server sends, read by a process running as ``user``."""
    if user is None:
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(30)
            client.connect(str(path))
            return client.recv(12)
    account = pwd.getpwnam(user)
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.settimeout(30); s.connect(sys.argv[1])\n"
        "sys.stdout.buffer.write(s.recv(12))\n"
    )
    done = subprocess.run(
        ["/usr/bin/python3", "-c", code, str(path)], capture_output=True, check=False,
        user=account.pw_uid, group=account.pw_gid, extra_groups=[], timeout=60,
        cwd="/", env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


@pytest.mark.parametrize(
    "user",
    [None, pytest.param("nobody", marks=requires(IS_ROOT, "needs root"))],
    ids=["invoking-user", "vm-user-nobody"],
)
def test_vnc_runs_and_a_viewer_running_as_qemus_user_reads_the_rfb_greeting(
    where: Path, user: str | None
) -> None:
    # No vga given: a VNC frontend gets the emulated std VGA, not a blank screen.
    text = vm_table("vnc", user=user) + '[display]\nfrontend = "vnc"\n'
    profile = write(where, "vnc", text)
    greetings: list[bytes] = []

    async def connect(run_dir: Path) -> None:
        sock = qemu_socket_dir(HostPaths(run=run_dir.parent), run_dir.name) / "vnc.sock"
        assert sock.is_socket()
        if user is not None:
            assert sock.stat().st_uid == pwd.getpwnam(user).pw_uid  # QEMU made it as the user
        greetings.append(await trio.to_thread.run_sync(rfb_greeting, sock, user))

    trio.run(assert_runs, profile, where / "run", connect)
    assert re.fullmatch(rb"RFB 003\.00[0-9]\n", greetings[0]), greetings
    log_argv = subprocess.run(
        [sys.executable, "-m", "handoff", "argv", str(profile)], capture_output=True,
        text=True, check=True,
    ).stdout
    assert "-device VGA,id=video0" in log_argv


def test_doctor_on_a_vnc_profile_checks_qemu_without_a_traceback(where: Path) -> None:
    profile = write(where, "vncdoc", vm_table("vncdoc") + '[display]\nfrontend = "vnc"\n')
    done = subprocess.run(
        [sys.executable, "-m", "handoff", "doctor", str(profile)], capture_output=True,
        text=True, check=False, env=cli_env(where / "run"), timeout=RUN_LIMIT,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert re.search(r"^ok +qemu .*has VGA", done.stdout, re.MULTILINE), done.stdout


# --------------------------------------------------------------------------- firmware


@requires(OVMF_CODE.exists(), "OVMF is not installed (apt-get install ovmf)")
def test_ovmf_runs_from_a_template_and_from_its_own_vars(where: Path) -> None:
    templated = vm_table("uefi", memory="128M") + f"""
[firmware]
type = "ovmf"
code = "{OVMF_CODE}"
vars_template = "{OVMF_VARS}"
"""
    profile = write(where, "uefi", templated)
    trio.run(assert_runs, profile, where / "run")
    created = where / "uefi.OVMF_VARS.fd"
    assert created.read_bytes() == OVMF_VARS.read_bytes()  # copied on first use

    own = where / "own_VARS.fd"
    shutil.copyfile(OVMF_VARS, own)
    text = vm_table("uefi2", memory="128M") + f"""
[firmware]
type = "ovmf"
code = "{OVMF_CODE}"
vars = "{own}"
"""
    trio.run(assert_runs, write(where, "uefi2", text), where / "run")


def test_seabios_runs(where: Path) -> None:
    text = vm_table("bios") + '[firmware]\ntype = "seabios"\n'
    trio.run(assert_runs, write(where, "bios", text), where / "run")


# --------------------------------------------------------------------------- shipped profiles


def swapped(text: str, swaps: list[tuple[str, str]]) -> str:
    """Apply each (old, new); each old must be in the shipped file exactly once."""
    for old, new in swaps:
        assert text.count(old) == 1, f"the shipped profile changed: {old!r}"
        text = text.replace(old, new)
    return text


def without_passthrough(text: str) -> str:
    """Drop the [[passthrough]] sections: this host has no IOMMU to hand a GPU over."""
    start, end = text.index("[[passthrough]]"), text.index("\n[input]")
    return text[:start] + text[end:]


def sound_here() -> str:
    """The shipped "pa" where this QEMU has it, else alsa (the refusal is tested above)."""
    return "pa" if "pa" in probe(QEMU).audio_drivers else "alsa"


def network_here() -> str:
    if IS_ROOT:
        return f'type = "tap"\nifname = "{tap_name()}"'
    return 'type = "user"'  # a tap needs CAP_NET_ADMIN


def test_the_shipped_demo_profile_runs(where: Path) -> None:
    text = swapped((PROFILES / "demo.toml").read_text(), [
        ("shutdown_timeout = 5\n", "shutdown_timeout = 0.3\n"),
    ])
    trio.run(assert_runs, write(where, "demo", text), where / "run")


KVM_ONLY = [
    ('memory = "8G"', 'memory = "128M"'),
    ("cpus = 8", "cpus = 2"),
    ("cores = 8", "cores = 2"),
    ('accel = "kvm"', 'accel = "tcg"'),  # this host is a PVM guest: no usable KVM
    ('cpu_model = "host"\n', ""),  # "host" needs KVM
    ("shutdown_timeout = 120", "shutdown_timeout = 0.3"),
]


def test_the_shipped_seed_two_gpu_profile_runs_without_its_gpu(where: Path) -> None:
    lv = qemu_img(where / "win7-root.raw", "raw")
    text = swapped((PROFILES / "seed-two-gpu.toml").read_text(), [
        *KVM_ONLY,
        ('path = "/dev/vg-win7/win7-root"', f'path = "{lv}"'),
        ('type = "tap"\nifname = "tap0"', network_here()),
        ('backend = "pa"', f'backend = "{sound_here()}"'),
    ])
    text = without_passthrough(text)
    trio.run(assert_runs, write(where, "seed", text), where / "run")


def test_the_shipped_install_windows_profile_runs(where: Path) -> None:
    lv = qemu_img(where / "win7-root.raw", "raw")
    iso_like(where / "win7.iso")
    iso_like(where / "virtio-win-0.1.141.iso")  # the profile names it relative to itself
    caps = probe(QEMU)
    frontend = "gtk" if "gtk" in caps.display_backends and os.environ.get("DISPLAY") else "vnc"
    text = swapped((PROFILES / "install-windows.toml").read_text(), [
        *KVM_ONLY,
        ('path = "/dev/vg-win7/win7-root"', f'path = "{lv}"'),
        ('"/mnt/home/tools/system/windows/win7sp1_ultimate_x64_en_amd88usb3.iso"',
         f'"{where / "win7.iso"}"'),
        ('type = "tap"\nifname = "tap0"', network_here()),
        ('backend = "pa"', f'backend = "{sound_here()}"'),
        # The gtk window's refusal on this host is test_a_window_frontend_...
        ('frontend = "gtk"', f'frontend = "{frontend}"'),
    ])

    async def vnc_answers(run_dir: Path) -> None:
        if frontend == "vnc":
            sock = qemu_socket_dir(HostPaths(run=run_dir.parent), run_dir.name) / "vnc.sock"
            greeting = await trio.to_thread.run_sync(rfb_greeting, sock, None)
            assert greeting.startswith(b"RFB 003.00")

    trio.run(assert_runs, write(where, "install", text), where / "run", vnc_answers)
