"""The files in contrib/ parse with the tools that will read them, say where they go,
and agree with the code (doctor accepts the recommended kernel command line, the
systemd stop timeout covers the session's shutdown ladder)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from handoff.checks import Verdict
from handoff.checks.cpu import read_cpuinfo
from handoff.checks.iommu import check_kernel_cmdline
from handoff.checks.nodes import HANDOFF_GROUP, UDEV_RULE_NAME
from handoff.session import ladder
from handoff.session import supervisor as session
from tests.unit.doctor_fakes import AMD_FLAGS, FakeHost
from tools.completions import OUTPUTS, handoff_cli, render_man

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
UDEV_RULE = CONTRIB / "udev" / UDEV_RULE_NAME
UNIT = CONTRIB / "systemd" / "handoff@.service"
MODPROBE = CONTRIB / "modprobe.d" / "handoff-vfio.conf"
LIMITS = CONTRIB / "limits.d" / "handoff-memlock.conf"
CMDLINE = CONTRIB / "kernel-cmdline"

GENERATED = {CONTRIB / rel for rel in OUTPUTS}
HAND_WRITTEN = sorted(
    p
    for p in CONTRIB.rglob("*")
    if p.is_file() and p not in GENERATED and p.name not in ("install.sh", "README.md")
)


def active_lines(path: Path) -> list[str]:
    """Lines that are not comments or blank."""
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_there_are_hand_written_contrib_files() -> None:
    names = {p.name for p in HAND_WRITTEN}
    assert {
        "70-handoff.rules",
        "handoff@.service",
        "handoff-vfio.conf",
        "handoff-memlock.conf",
        "grub",
        "systemd-boot.conf",
        "gentoo-kernel.config",
    } <= names


@pytest.mark.parametrize("path", HAND_WRITTEN, ids=lambda p: str(p.relative_to(CONTRIB)))
def test_each_contrib_file_starts_with_a_comment_saying_where_it_goes(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert re.match(r"# Goes (to|into) /", first), first


def test_readme_lists_every_contrib_file() -> None:
    readme = (CONTRIB / "README.md").read_text()
    for path in [*HAND_WRITTEN, *GENERATED]:
        assert str(path.relative_to(CONTRIB)) in readme, path


# ---------------------------------------------------------------- udev

_UDEV_MATCH = {"ACTION", "KERNEL", "SUBSYSTEM", "DRIVER", "KERNELS", "SUBSYSTEMS", "DRIVERS"}
_UDEV_ASSIGN = {"GROUP", "MODE", "OWNER", "OPTIONS", "TAG", "SYMLINK"}
_UDEV_PAIR = re.compile(r'\s*([A-Z]+)\s*(==|!=|\+=|:=|=)\s*"([^"]*)"\s*(?:,|$)')


def parse_udev_rule(line: str) -> list[tuple[str, str, str]]:
    """Strict: every comma-separated item is KEY OP "VALUE" with a known key and operator."""
    pairs: list[tuple[str, str, str]] = []
    pos = 0
    while pos < len(line):
        m = _UDEV_PAIR.match(line, pos)
        assert m, f"cannot parse {line[pos:]!r}"
        key, op, value = m.groups()
        if key in _UDEV_MATCH:
            assert op in ("==", "!="), f"{key} is a match key, found {op}"
        else:
            assert key in _UDEV_ASSIGN, f"unknown key {key}"
            assert op in ("=", "+=", ":="), f"{key} is an assignment, found {op}"
        pairs.append((key, op, value))
        pos = m.end()
    return pairs


def test_udev_rules_are_well_formed_and_give_the_handoff_group_each_node() -> None:
    rules = [dict((k, v) for k, _, v in parse_udev_rule(line)) for line in active_lines(UDEV_RULE)]
    by_node = {(r.get("SUBSYSTEM"), r.get("KERNEL")): r for r in rules}
    vfio = by_node[("vfio", "[0-9]*")]
    uinput = by_node[("misc", "uinput")]
    for rule in (vfio, uinput):
        assert rule["GROUP"] == HANDOFF_GROUP
        assert rule["MODE"] == "0660"
    assert uinput["OPTIONS"] == "static_node=uinput"


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("udevadm") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(
    not _can_unshare(),
    reason="real udev parsing needs root, unshare(1) and udevadm (udev 252 has no `udevadm "
    "verify`); the strict parser above still ran",
)
def test_the_real_udev_reads_the_rules_without_a_complaint(tmp_path: Path) -> None:
    """udevadm test in a private mount namespace where the only rules file is ours.

    tmpfs over every rules directory, /run and /dev (udevadm test writes
    /run/udev/data and /dev/char links: they must stay in the namespace), and
    an /etc/group that has the handoff group. udev logs every bad line as
    "<file>:<line> <complaint>".
    """
    group = tmp_path / "group"
    group.write_text(Path("/etc/group").read_text() + f"{HANDOFF_GROUP}:x:64999:\n")
    rules_dirs = [d for d in ("/usr/lib/udev/rules.d", "/lib/udev/rules.d") if Path(d).is_dir()]
    script = "\n".join(
        [
            "set -e",
            "mount --make-rprivate /",
            *[f"mount -t tmpfs none {d}" for d in [*rules_dirs, "/run", "/dev"]],
            "mkdir -p /etc/udev/rules.d && mount -t tmpfs none /etc/udev/rules.d",
            f"cp {shlex.quote(str(UDEV_RULE))} /etc/udev/rules.d/",
            f"mount --bind {shlex.quote(str(group))} /etc/group",
            "udevadm test /sys/class/mem/null 2>&1",
        ]
    )
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert f"Reading rules file: /etc/udev/rules.d/{UDEV_RULE_NAME}" in out.stdout, out
    complaints = [line for line in out.stdout.splitlines() if f"{UDEV_RULE_NAME}:" in line]
    assert complaints == []


# ---------------------------------------------------------------- systemd


def unit_values(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in active_lines(UNIT) if line.startswith(key + "=")]


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", text)
    assert m, text
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_the_unit_gives_the_shutdown_ladder_time_to_return_the_devices() -> None:
    devices, resources = 8, 2
    worst_case = (
        120.0  # vm.shutdown_timeout default
        + ladder.QUIT_TIMEOUT
        + ladder.SIGTERM_TIMEOUT
        + ladder.SIGTERM_TIMEOUT_PER_DEVICE * devices
        + ladder.SIGKILL_TIMEOUT
        + session.RELEASE_TIMEOUT * resources
    )
    (timeout,) = unit_values("TimeoutStopSec")
    assert seconds(timeout) > worst_case
    assert unit_values("KillMode") == ["mixed"]  # SIGTERM to handoff only, never to QEMU
    assert unit_values("KillSignal") == ["SIGTERM"]
    assert unit_values("ExecStopPost") == ["/usr/local/bin/handoff recover"]
    assert unit_values("ExecStart") == ["/usr/local/bin/handoff run /etc/handoff/profiles/%i.toml"]
    assert "143" in unit_values("SuccessExitStatus")[0]
    assert unit_values("LimitMEMLOCK") == ["infinity"]


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """The unit as shipped, with one substitution: /usr/local/bin/handoff (where
    install.sh links it) becomes this checkout's handoff, which verify requires to
    exist. The man page is found through MANPATH, as Documentation=man:handoff(1)."""
    handoff = shutil.which("handoff") or str(Path(sys.executable).parent / "handoff")
    assert Path(handoff).exists()
    unit = tmp_path / "handoff@demo.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/handoff", handoff))
    man1 = tmp_path / "man" / "man1"
    man1.mkdir(parents=True)
    (man1 / "handoff.1").write_text(render_man(handoff_cli(), "test"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANPATH": str(tmp_path / "man")},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "handoff@demo.service" not in result.stderr, result.stderr


# ---------------------------------------------------------------- modprobe.d


def test_modprobe_lines_are_softdeps_onto_vfio_pci_and_ids_stays_commented() -> None:
    lines = active_lines(MODPROBE)
    assert lines, "no active lines"
    for line in lines:
        assert re.fullmatch(r"softdep [a-z0-9_]+ pre: vfio-pci", line), line
    drivers = {line.split()[1] for line in lines}
    assert {"amdgpu", "radeon", "nouveau", "snd_hda_intel"} <= drivers
    text = MODPROBE.read_text()
    assert "#   options vfio-pci ids=1002:67b0,1002:aac8" in text
    assert "ids= grabs EVERY device with these ids" in text


@pytest.mark.skipif(shutil.which("modprobe") is None, reason="kmod's modprobe is not installed")
def test_kmod_reads_the_modprobe_file_without_complaint() -> None:
    result = subprocess.run(
        ["modprobe", "-C", str(MODPROBE), "--showconfig"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "ignoring" not in result.stderr, result.stderr
    assert "ERROR" not in result.stderr, result.stderr
    for line in active_lines(MODPROBE):
        assert line in result.stdout


# ---------------------------------------------------------------- limits.d


def test_limits_lines_are_pam_limits_syntax_with_ram_plus_a_gib_in_kib() -> None:
    lines = [line.split() for line in active_lines(LIMITS)]
    assert {tuple(f[:3]) for f in lines} == {
        ("@handoff", "soft", "memlock"),
        ("@handoff", "hard", "memlock"),
    }
    for fields in lines:
        assert len(fields) == 4
        assert int(fields[3]) == (16 + 1) * 1024 * 1024  # a 16 GiB guest + 1 GiB, in KiB
    assert "(16 + 1) * 1048576 = 17825792" in LIMITS.read_text()


# ---------------------------------------------------------------- kernel command lines


def grub_cmdlines(path: Path) -> list[str]:
    """Every GRUB_CMDLINE_LINUX_DEFAULT value, active or commented out."""
    values = []
    for line in path.read_text().splitlines():
        m = re.match(r"#?GRUB_CMDLINE_LINUX_DEFAULT=(.*)$", line.strip())
        if m:
            values.append(shlex.split(m.group(1))[0])
    return values


def test_the_grub_snippet_is_valid_shell() -> None:
    subprocess.run(["bash", "-n", str(CMDLINE / "grub")], check=True)
    assert len(active_lines(CMDLINE / "grub")) == 1


@pytest.mark.parametrize(
    ("vendor", "flags", "index"),
    [("GenuineIntel", "vmx", 0), ("AuthenticAMD", AMD_FLAGS, 1), ("GenuineIntel", "vmx", 2)],
)
def test_doctor_accepts_every_recommended_command_line(
    tmp_path: Path, vendor: str, flags: str, index: int
) -> None:
    """Written for the IOMMU-off first boot: doctor must not find a problem in them."""
    cmdline = grub_cmdlines(CMDLINE / "grub")[index]
    host = FakeHost(tmp_path)
    host.cpu(vendor, flags)
    host.cmdline(cmdline)
    check = check_kernel_cmdline(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.OK, (cmdline, check)
    assert "iommu=pt not set" not in check.detail


def test_the_systemd_boot_entry_has_only_loader_keys_and_the_intel_options(tmp_path: Path) -> None:
    entries = dict(line.split(None, 1) for line in active_lines(CMDLINE / "systemd-boot.conf"))
    assert set(entries) <= {"title", "linux", "initrd", "options", "version", "machine-id"}
    host = FakeHost(tmp_path)
    host.cpu()
    host.cmdline(entries["options"])
    check = check_kernel_cmdline(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.OK, check


def test_the_gentoo_fragment_is_kconfig_with_the_seeds_options() -> None:
    lines = active_lines(CMDLINE / "gentoo-kernel.config")
    for line in lines:
        assert re.fullmatch(r"CONFIG_[A-Z0-9_]+=[ym]", line), line
    options = {line.split("=")[0] for line in lines}
    assert {"CONFIG_IRQ_REMAP", "CONFIG_VFIO", "CONFIG_VFIO_PCI", "CONFIG_VFIO_PCI_VGA"} <= options
    assert {"CONFIG_INTEL_IOMMU", "CONFIG_AMD_IOMMU"} <= options


# ---------------------------------------------------------------- install.sh's interpreter


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")
@pytest.mark.parametrize("private", [True, False], ids=["private-pyenv", "public"])
def test_the_system_install_uses_an_interpreter_every_user_can_run(private: bool) -> None:
    """A python3 first on PATH in a directory only root can enter (root's pyenv) is
    not linked into /opt/handoff: the desktop user could not start `handoff` at all."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="handoff-python-") as top:
        bindir = Path(top) / "bin"
        bindir.mkdir(mode=0o755)
        (bindir / "python3").symlink_to("/usr/bin/python3.11")
        Path(top).chmod(0o700 if private else 0o755)
        env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
        chosen = subprocess.run(
            ["bash", str(CONTRIB / "install.sh"), "--which-python"], env=env,
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
        assert chosen == ("/usr/bin/python3" if private else str(bindir / "python3"))
        runs = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", chosen,
             "-c", "0"], check=False, timeout=60,
        )  # fmt: skip
        assert runs.returncode == 0
# ---------------------------------------------------------------- Looking Glass (kvmfr)


def test_the_kvmfr_files_load_the_module_with_a_size_and_give_the_node_to_one_user() -> None:
    (options,) = active_lines(CONTRIB / "modprobe.d" / "kvmfr.conf")
    assert options == "options kvmfr static_size_mb=32"
    (rule,) = active_lines(CONTRIB / "udev" / "99-kvmfr.rules")
    assert parse_udev_rule(rule) == [
        ("SUBSYSTEM", "==", "kvmfr"), ("OWNER", "=", "alice"), ("GROUP", "=", "kvm"),
        ("MODE", "=", "0660"),
    ]
    if shutil.which("modprobe") is not None:
        shown = subprocess.run(["modprobe", "-C", str(CONTRIB / "modprobe.d" / "kvmfr.conf"),
                               "--showconfig"], capture_output=True, text=True, check=True)
        assert options in shown.stdout
