"""Boot the testbed VM, run one command inside it, return its exit code and console.

The testbed is a throw-away q35 guest with an emulated Intel IOMMU and a real
Debian kernel: everything this host lacks (IOMMU groups, vfio-pci, uinput,
/dev/input, udev events) is real in it. Its root is the host's root, read-only
over 9p under a tmpfs overlay, so the guest runs the host's very Python, venv,
QEMU and udev; the checkout is mounted read-write at its own path so results
(reports, logs) come back. One boot runs one command; the guest powers off when
it ends.

Set-up is idempotent and cached outside the checkout (CI reuses the machine but
clones afresh): host packages by name, the kernel package that
``linux-image-amd64`` depends on (``apt-get download``, unpacked with
``dpkg -x``, version recorded in ``kernel.json``), and a busybox initramfs
rebuilt only when its inputs change. A cold machine needs all of it; a warm
one none.

Standard library only: it must run before the project's venv exists.

    python3 -m tests.testbed.runner [options] -- COMMAND [ARG...]
    tests/testbed/testbed.sh [options] -- COMMAND [ARG...]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.testbed import devices

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent.parent
GUEST_DIR = HERE / "guest"

#: Packages the runner needs on the host, by Debian name.
HOST_PACKAGES = ("qemu-system-x86", "busybox-static", "cpio", "kmod", "udev")
#: What the systemd boot needs besides: the guest's PID 1 is the host's systemd.
SYSTEMD_PACKAGES = ("systemd",)
#: Modules the initramfs loads to reach the 9p shares (dependencies are added).
INITRAMFS_MODULES = ("virtio_pci", "9p", "9pnet_virtio", "overlay")
#: The guest's kernel command line.
# no_timer_check: under host load, TCG can make the kernel's IO-APIC timer probe
# fail ("timer doesn't work through Interrupt-remapped IO-APIC") and panic.
KERNEL_CMDLINE = "console=ttyS0 quiet loglevel=3 intel_iommu=on panic=-1 no_timer_check"
#: Host environment variables the guest inherits (besides TESTBED_PASSENV).
PASSED_ENV = ("HOME", "LANG", "LC_ALL", "TZ", "CI", "PYTHONHASHSEED")
#: Exit code reported when the guest never wrote one (crash, timeout, mount failure).
NO_EXIT_CODE = 125
#: Seconds a QEMU gets after SIGTERM before SIGKILL.
KILL_GRACE = 5.0
#: Per-run directories older than this are removed at the next run.
RUN_DIR_MAX_AGE = 24 * 3600.0


class Init(enum.Enum):
    """What runs as PID 1 of the guest's root (TESTBED_INIT, ``--init``)."""

    #: busybox in the initramfs chroots into the root and runs stage2.sh (udevd by hand).
    CLASSIC = "classic"
    #: the initramfs switch_roots to the host's /lib/systemd/systemd; a unit runs the command.
    SYSTEMD = "systemd"


#: The systemd boot's default target and the unit that runs the command (guest/*.sh).
SYSTEMD_TARGET = "testbed.target"
SYSTEMD_SERVICE = "testbed.service"
#: Added to the kernel command line in the systemd boot.
#: virtio_gpu is kept off in it: its fbdev, registered first or not by udev's module load
#: order, decides whether the kernel keeps the dummy console fbcon can hand the terminals
#: to (the single-GPU tests unbind fbcon); without it the std VGA's bochs-drm probes first.
SYSTEMD_CMDLINE = (
    f"systemd.unit={SYSTEMD_TARGET} systemd.show_status=error module_blacklist=virtio_gpu"
)
#: The systemd boot's vCPUs: two cores of two threads (SMT siblings for CPU isolation).
SYSTEMD_SMP = 4
#: Under TCG, -cpu max is AMD-flavoured: every vCPU its own core. Intel shows the threads.
SYSTEMD_TCG_CPU = "max,vendor=GenuineIntel"
#: Units a VM without network, login or clock sync does not need (masked: -> /dev/null).
SYSTEMD_MASKED = (
    "getty.target", "getty@.service", "serial-getty@.service", "console-getty.service",
    "systemd-logind.service", "systemd-networkd.service", "systemd-networkd.socket",
    "systemd-networkd-wait-online.service", "systemd-resolved.service",
    "systemd-timesyncd.service", "timers.target", "systemd-pstore.service",
    "systemd-firstboot.service", "systemd-repart.service", "systemd-journal-flush.service",
    "systemd-random-seed.service", "systemd-update-utmp.service",
    "systemd-pcrphase.service", "systemd-pcrphase-sysinit.service",
)  # fmt: skip


class TestbedError(Exception):
    """The testbed could not be set up or booted; the message says what to do."""

    __test__ = False  # not a pytest test class


def log(message: str) -> None:
    print(f"[testbed] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- configuration


def default_cache() -> Path:
    """Outside the checkout: CI clones afresh on the same machine, the cache survives."""
    return Path(os.environ.get("TESTBED_CACHE", "/var/cache/handoff-testbed"))


def default_smp(init: Init = Init.CLASSIC) -> int:
    """The host's CPUs up to 4; the systemd boot always gets SYSTEMD_SMP (SMT topology)."""
    if init is Init.SYSTEMD:
        return SYSTEMD_SMP
    return max(1, min(os.cpu_count() or 1, 4))


def parse_init(value: str) -> Init:
    try:
        return Init(value)
    except ValueError:
        raise TestbedError(
            f"TESTBED_INIT={value!r}: use {' or '.join(m.value for m in Init)}"
        ) from None


def env_smp() -> int | None:
    value = os.environ.get("TESTBED_SMP")
    return int(value) if value else None


@dataclass(frozen=True)
class Options:
    """How one testbed run is made. Every field has an environment-variable default."""

    cache: Path = field(default_factory=default_cache)
    accel: str = field(default_factory=lambda: os.environ.get("TESTBED_ACCEL", "auto"))
    #: PID 1 of the guest's root.
    init: Init = field(
        default_factory=lambda: parse_init(os.environ.get("TESTBED_INIT") or "classic")
    )
    #: vCPUs (None: default_smp(init)).
    smp: int | None = field(default_factory=env_smp)
    memory: str = field(default_factory=lambda: os.environ.get("TESTBED_MEM", "2048M"))
    timeout: float = field(default_factory=lambda: float(os.environ.get("TESTBED_TIMEOUT", "1800")))
    #: Host directory mounted read-write at the same path in the guest (None: none).
    rw_dir: Path | None = CHECKOUT
    #: The command's working directory in the guest.
    cwd: Path = field(default_factory=Path.cwd)
    #: Extra environment for the command (on top of PATH, HOME, ... and TESTBED=1).
    env: Mapping[str, str] = field(default_factory=dict)
    #: Directories put first on the guest's PATH (the real interpreter's, not a shim).
    path_first: Sequence[str] = ()
    extra_qemu: Sequence[str] = field(
        default_factory=lambda: shlex.split(os.environ.get("TESTBED_QEMU_EXTRA", ""))
    )
    #: Copy the console to this stream as it arrives (None: only to the console file).
    echo: IO[str] | None = None
    #: Install missing host packages with apt-get (needs root).
    install: bool = field(default_factory=lambda: os.environ.get("TESTBED_NO_SETUP") != "1")
    #: Keep the per-run directory even when the command succeeded.
    keep: bool = field(default_factory=lambda: os.environ.get("TESTBED_KEEP") == "1")


# ---------------------------------------------------------------- decisions (pure)


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg"
    machine: str
    cpu: str
    reason: str


def choose_accel(requested: str, *, pvm_host: bool, kvm_opens: bool) -> Accel:
    """KVM only where it really works: on a PVM host an unmodified guest crawls.

    ``pvm_host``: /sys/module/kvm_pvm exists (the guest would run under PVM's
    paravirtual KVM, which needs a PVM-aware guest kernel). ``kvm_opens``:
    /dev/kvm can be opened read-write.
    """
    tcg = Accel("tcg", "q35,accel=tcg", "max", "")
    # intremap needs the split irqchip under KVM.
    kvm = Accel("kvm", "q35,accel=kvm,kernel-irqchip=split", "host", "")
    if requested == "tcg":
        return Accel(tcg.name, tcg.machine, tcg.cpu, "TESTBED_ACCEL=tcg")
    if requested == "kvm":
        return Accel(kvm.name, kvm.machine, kvm.cpu, "TESTBED_ACCEL=kvm")
    if requested != "auto":
        raise TestbedError(f"TESTBED_ACCEL={requested!r}: use auto, kvm or tcg")
    if pvm_host:
        return Accel(tcg.name, tcg.machine, tcg.cpu, "PVM host (/sys/module/kvm_pvm): KVM crawls")
    if not kvm_opens:
        return Accel(tcg.name, tcg.machine, tcg.cpu, "/dev/kvm does not open")
    return Accel(kvm.name, kvm.machine, kvm.cpu, "/dev/kvm opens")


def probe_accel(requested: str) -> Accel:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        kvm_opens = False
    else:
        os.close(fd)
        kvm_opens = True
    accel = choose_accel(
        requested, pvm_host=Path("/sys/module/kvm_pvm").exists(), kvm_opens=kvm_opens
    )
    cpu = os.environ.get("TESTBED_CPU")
    if cpu:
        return Accel(accel.name, accel.machine, cpu, accel.reason + f", TESTBED_CPU={cpu}")
    return accel


def accel_for(accel: Accel, init: Init, *, cpu_pinned: bool) -> Accel:
    """The systemd boot under TCG gets an Intel ``max`` CPU (SMT siblings visible)
    unless TESTBED_CPU chose one."""
    if init is not Init.SYSTEMD or accel.name != "tcg" or cpu_pinned:
        return accel
    return Accel(accel.name, accel.machine, SYSTEMD_TCG_CPU, accel.reason)


def smp_topology(smp: int, init: Init) -> str:
    """QEMU's -smp: in the systemd boot two threads per core when the count allows."""
    if init is Init.SYSTEMD and smp >= 2 and smp % 2 == 0:
        return f"{smp},sockets=1,cores={smp // 2},threads=2"
    return str(smp)


def kernel_cmdline(init: Init) -> str:
    if init is Init.SYSTEMD:
        return f"{KERNEL_CMDLINE} {SYSTEMD_CMDLINE}"
    return KERNEL_CMDLINE


@dataclass(frozen=True)
class Kernel:
    package: str  # linux-image-6.1.0-56-amd64
    version: str  # the package version, e.g. 6.1.158-1
    release: str  # uname -r: 6.1.0-56-amd64
    root: Path  # where the package is unpacked

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release


def qemu_command(
    *,
    accel: Accel,
    kernel: Kernel,
    initrd: Path,
    run_dir: Path,
    rw_dir: Path | None,
    smp: int,
    memory: str,
    extra: Sequence[str] = (),
    init: Init = Init.CLASSIC,
) -> list[str]:
    """The whole QEMU argv of one testbed boot.

    9p devices sit at fixed slots 0x10-0x13, away from the standard device set
    (devices.py), so guest PCI addresses never depend on which shares exist.
    """

    def share(tag: str, path: Path, slot: int, options: str) -> list[str]:
        return [
            "-fsdev", f"local,id={tag},path={path},{options}",
            "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag},addr={slot:02x}.0",
        ]  # fmt: skip

    argv = [
        "qemu-system-x86_64", "-nodefaults", "-no-user-config",
        "-machine", accel.machine, "-cpu", accel.cpu, "-smp", smp_topology(smp, init),
        "-m", memory,
        "-device", "intel-iommu,intremap=on,caching-mode=on",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
        "-append", kernel_cmdline(init),
        "-display", "none", "-serial", "stdio", "-no-reboot",
    ]  # fmt: skip
    argv += share("hostroot", Path("/"), 0x10, "security_model=none,readonly=on,multidevs=remap")
    argv += share("modules", kernel.modules, 0x11, "security_model=none,readonly=on")
    argv += share("tbshare", run_dir, 0x12, "security_model=passthrough")
    if rw_dir is not None:
        argv += share("rwdir", rw_dir, 0x13, "security_model=passthrough,multidevs=remap")
    argv += devices.qemu_args(std_vga=init is Init.SYSTEMD)
    argv += list(extra)
    return argv


def guest_env_script(env: Mapping[str, str], path_first: Sequence[str], host_path: str) -> str:
    """/tb/env.sh: the command's environment, shell-quoted.

    pyenv shims cost ~7 s per exec under TCG, so they are dropped from PATH and
    the real interpreter's directory goes first.
    """
    path = [p for p in path_first if p]
    path += [p for p in host_path.split(":") if p and "shims" not in p.split("/")]
    for std in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if std not in path:
            path.append(std)
    seen: dict[str, None] = dict.fromkeys(path)
    lines = [f"export PATH={shlex.quote(':'.join(seen))}"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    return "\n".join(lines) + "\n"


def command_script(cwd: Path, command: Sequence[str]) -> str:
    """/tb/command.sh: change to the caller's directory and exec the command."""
    return f"cd {shlex.quote(str(cwd))} || exit 126\nexec {shlex.join(command)}\n"


#: Where the systemd boot's overlay files go in the run share (init.sh copies them to /).
OVERLAY = "overlay"
#: Mask target: a unit linked here is masked.
MASK = "/dev/null"


def _unit(sections: Mapping[str, Sequence[str]], comment: str) -> str:
    text = f"# Written by tests/testbed/runner.py: {comment}\n"
    for name, lines in sections.items():
        text += f"\n[{name}]\n" + "".join(f"{line}\n" for line in lines)
    return text


def systemd_overlay() -> dict[str, str]:
    """Files laid over the guest's root before systemd starts: path (relative to /) -> text.

    A lean default target that wants only the command's unit; the command's
    output on the serial console; journald volatile, echoing to the console;
    emergency/rescue mode print the failed units and power off (no exit code:
    the runner reports 125 with the console), so a broken boot never waits
    for a login; no fstab entries (the initramfs mounted everything).
    """
    system = "etc/systemd/system"
    power_off_on_failure = [
        "DefaultDependencies=no",
        "SuccessAction=poweroff-force",
        "FailureAction=poweroff-force",
    ]
    failed_units = [
        "Type=oneshot",
        "ExecStart=/bin/echo TESTBED-INIT: systemd entered %N mode; the failed units:",
        "ExecStart=-/bin/systemctl --no-pager --failed",
        "StandardOutput=tty",
        "StandardError=inherit",
        "TTYPath=/dev/ttyS0",
        "TTYReset=no",
        "TTYVHangup=no",
    ]
    return {
        f"{system}/{SYSTEMD_TARGET}": _unit(
            {"Unit": [
                "Description=testbed: the basic system and the command's unit",
                "Requires=basic.target",
                "After=basic.target",
                f"Wants={SYSTEMD_SERVICE}",
                "AllowIsolate=yes",
            ]},
            "the systemd boot's default target (systemd.unit= on the kernel command line)",
        ),
        f"{system}/{SYSTEMD_SERVICE}": _unit(
            {
                "Unit": [
                    "Description=testbed: run /tb/command.sh, write its exit code to /tb/rc",
                    "After=basic.target systemd-udev-trigger.service",
                    "SuccessAction=poweroff-force",
                    "FailureAction=poweroff-force",
                ],
                "Service": [
                    # exec, not oneshot: the boot completes (is-system-running) while it runs.
                    "Type=exec",
                    "ExecStart=/bin/sh /tb/testbed-service.sh",
                    "TimeoutStartSec=infinity",
                    "StandardInput=null",
                    "StandardOutput=tty",
                    "StandardError=inherit",
                    "TTYPath=/dev/ttyS0",
                    "TTYReset=no",
                    "TTYVHangup=no",
                ],
            },
            "runs the testbed's command (the runner's -- COMMAND)",
        ),
        f"{system}/emergency.service": _unit(
            {"Unit": ["Description=testbed: emergency mode powers off", *power_off_on_failure],
             "Service": failed_units},
            "a boot that fails ends at once, with the failed units on the console",
        ),
        f"{system}/rescue.service": _unit(
            {"Unit": ["Description=testbed: rescue mode powers off", *power_off_on_failure],
             "Service": failed_units},
            "a boot that fails ends at once, with the failed units on the console",
        ),
        "etc/systemd/journald.conf.d/testbed.conf": _unit(
            {"Journal": [
                "Storage=volatile",
                "ForwardToConsole=yes",
                "TTYPath=/dev/ttyS0",
                "MaxLevelConsole=info",
            ]},
            "the journal in memory only, echoed to the serial console (console.log)",
        ),
        # Started by the single-GPU tests only (no target wants it): what a real display
        # manager does to the boot GPU, holding its DRM card node open until stopped.
        f"{system}/display-manager.service": _unit(
            {"Unit": ["Description=testbed: a stand-in display manager on the boot GPU"],
             "Service": [
                 "Type=exec",
                 "ExecStart=/bin/sh -c 'for v in /sys/bus/pci/devices/*/boot_vga; do "
                 "[ \"$$(cat $$v)\" = 1 ] || continue; for n in $${v%%/boot_vga}/drm/card*; do "
                 "exec sleep infinity < /dev/dri/$${n##*/}; done; done; exit 1'",
             ]},
            "a stand-in display manager: holds the boot GPU's /dev/dri/cardN open",
        ),
        "etc/fstab": "# testbed: the initramfs mounted every file system\n",
        "etc/hostname": "testbed\n",  # as in the classic boot, not the host's name
    }  # fmt: skip


def systemd_links() -> dict[str, str]:
    """Symlinks laid over the guest's root: path (relative to /) -> target.

    Masks (-> /dev/null) and default.target -> testbed.target, so that
    ``systemctl get-default`` names the target the boot really has.
    """
    links = {f"etc/systemd/system/{unit}": MASK for unit in SYSTEMD_MASKED}
    links["etc/systemd/system/default.target"] = SYSTEMD_TARGET
    return links


def write_overlay(root: Path, files: Mapping[str, str], links: Mapping[str, str]) -> None:
    """Lay the overlay out under ``root`` (the run share's overlay/)."""
    for relative, text in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    for relative, points_to in links.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        target.symlink_to(points_to)


# ---------------------------------------------------------------- host set-up (I/O)


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """Concurrent runs on one machine share the cache: set-up happens under a lock."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_quiet(argv: Sequence[str], **kwargs: object) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise TestbedError(
            f"`{shlex.join(argv)}` failed with exit code {result.returncode}:\n"
            f"{result.stdout}{result.stderr}".rstrip()
        )
    return str(result.stdout)


def missing_packages(names: Sequence[str]) -> list[str]:
    missing = []
    for name in names:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in result.stdout:
            missing.append(name)
    return missing


def host_packages(init: Init) -> tuple[str, ...]:
    return HOST_PACKAGES + (SYSTEMD_PACKAGES if init is Init.SYSTEMD else ())


def ensure_packages(install: bool, init: Init = Init.CLASSIC) -> None:
    missing = missing_packages(host_packages(init))
    if not missing:
        return
    if not install or os.geteuid() != 0:
        raise TestbedError(
            f"the testbed needs the Debian packages {' '.join(missing)}: "
            f"run `apt-get install {' '.join(missing)}` as root "
            "(or `bash contrib/install.sh --dev`)"
        )
    log(f"apt-get install {' '.join(missing)}")
    run_quiet(["apt-get", "update", "-qq"])
    run_quiet(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def kernel_package() -> str:
    """The versioned image package linux-image-amd64 depends on (from apt's lists)."""
    pinned = os.environ.get("TESTBED_KERNEL_PACKAGE")
    if pinned:
        return pinned

    def depends() -> str | None:
        result = subprocess.run(
            ["apt-cache", "depends", "linux-image-amd64"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        match = re.search(r"Depends: (linux-image-\d\S*)", result.stdout)
        return match[1] if match else None

    name = depends()
    if name is None:  # a fresh machine without apt lists
        run_quiet(["apt-get", "update", "-qq"])
        name = depends()
    if name is None:
        raise TestbedError(
            "apt-cache knows no linux-image-amd64: add a Debian main archive to "
            "/etc/apt/sources.list, run apt-get update, or set TESTBED_KERNEL_PACKAGE"
        )
    return name


def ensure_kernel(cache: Path) -> Kernel:
    """Download, unpack and depmod the kernel package once; record its version."""
    package = kernel_package()
    root = cache / "kernel" / package
    record = root / "kernel.json"
    if record.exists():
        facts = json.loads(record.read_text())
        return Kernel(package, facts["version"], facts["release"], root)
    log(f"fetching kernel package {package}")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        # apt-get download runs as _apt when it can; give it a directory it may write.
        os.chmod(work, 0o755)
        try:
            run_quiet(["apt-get", "download", "-q", package], cwd=work)
        except TestbedError:  # stale lists name a version the mirror no longer has
            run_quiet(["apt-get", "update", "-qq"])
            run_quiet(["apt-get", "download", "-q", package], cwd=work)
        (deb,) = work.glob(f"{package}_*.deb")
        version = run_quiet(["dpkg-deb", "-f", str(deb), "Version"]).strip()
        unpacked = work / "root"
        run_quiet(["dpkg-deb", "-x", str(deb), str(unpacked)])
        (vmlinuz,) = (unpacked / "boot").glob("vmlinuz-*")
        release = vmlinuz.name.removeprefix("vmlinuz-")
        run_quiet(["depmod", "-b", str(unpacked), release])
        shutil.rmtree(unpacked / "usr", ignore_errors=True)  # docs only
        (unpacked / "kernel.json").write_text(
            json.dumps({"package": package, "version": version, "release": release}) + "\n"
        )
        unpacked.rename(root)
    log(f"kernel {package} {version} cached in {root}")
    return Kernel(package, version, release, root)


def initramfs_inputs(kernel: Kernel) -> tuple[bytes, list[Path]]:
    """The init script and the module files the initramfs needs, in load order."""
    listing = ""
    for module in INITRAMFS_MODULES:
        listing += run_quiet(
            ["modprobe", "-d", str(kernel.root), "-S", kernel.release, "--show-depends", module]
        )
    files: dict[Path, None] = {}
    for line in listing.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "insmod":
            files[Path(words[1])] = None
    return (GUEST_DIR / "init.sh").read_bytes(), list(files)


def ensure_initramfs(cache: Path, kernel: Kernel) -> Path:
    """A busybox initramfs with the 9p/overlay modules; rebuilt when an input changes."""
    init, modules = initramfs_inputs(kernel)
    busybox = Path("/bin/busybox")
    digest = hashlib.sha256(init)
    digest.update(kernel.release.encode())
    digest.update(busybox.read_bytes())
    for module in modules:
        digest.update(module.name.encode())
    target = cache / f"initrd-{kernel.release}-{digest.hexdigest()[:16]}.gz"
    if target.exists():
        return target
    log(f"building initramfs {target.name}")
    with tempfile.TemporaryDirectory(dir=cache, prefix=".initrd-") as tmp:
        tree = Path(tmp) / "tree"
        for sub in ("bin", "mods", "proc", "sys", "dev", "share", "lower", "rw", "newroot"):
            (tree / sub).mkdir(parents=True)
        shutil.copy2(busybox, tree / "bin" / "busybox")
        for module in modules:
            shutil.copy2(module, tree / "mods" / module.name)
        (tree / "mods" / "order").write_text(
            "".join(m.name.removesuffix(".ko") + "\n" for m in modules)
        )
        (tree / "init").write_bytes(init)
        (tree / "init").chmod(0o755)
        names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
        listing = ("\n".join([".", *names]) + "\n").encode()
        archive = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=listing,
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        packed = subprocess.run(["gzip", "-1"], input=archive, capture_output=True, check=True)
        partial = Path(tmp) / "initrd.gz"
        partial.write_bytes(packed.stdout)
        partial.rename(target)
    for stale in cache.glob(f"initrd-{kernel.release}-*.gz"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


@dataclass(frozen=True)
class Prepared:
    kernel: Kernel
    initrd: Path
    seconds: float


def prepare(options: Options) -> Prepared:
    """Everything before the boot: packages, kernel, initramfs (idempotent, cached)."""
    started = time.monotonic()
    with cache_lock(options.cache):
        ensure_packages(options.install, options.init)
        kernel = ensure_kernel(options.cache)
        initrd = ensure_initramfs(options.cache, kernel)
    return Prepared(kernel, initrd, time.monotonic() - started)


# ---------------------------------------------------------------- one boot


@dataclass
class Result:
    """What one testbed run produced."""

    returncode: int
    run_dir: Path
    console_path: Path
    accel: Accel
    kernel: Kernel
    timed_out: bool
    init: Init
    setup_seconds: float
    #: QEMU start to init's "guest ready" / stage2's "running command" / poweroff.
    ready_seconds: float | None
    command_start_seconds: float | None
    vm_seconds: float
    qemu_argv: list[str]
    #: Why the boot was killed (a watchdog's sentence, or the fixed timeout's); None: it ended.
    timeout_reason: str | None = None

    @property
    def console(self) -> str:
        return self.console_path.read_text(errors="replace")

    def console_tail(self, lines: int = 60) -> str:
        return "\n".join(self.console.splitlines()[-lines:])


def new_run_dir(cache: Path) -> Path:
    runs = cache / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in runs.iterdir():
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > RUN_DIR_MAX_AGE:
                shutil.rmtree(old)
    return Path(tempfile.mkdtemp(dir=runs, prefix=time.strftime("%Y%m%dT%H%M%S-")))


def write_run_files(
    run_dir: Path, kernel: Kernel, command: Sequence[str], options: Options
) -> None:
    rw = str(options.rw_dir) if options.rw_dir is not None else ""
    # The checkout is cached loosely: nothing on the host changes it while the
    # guest runs (the host waits), and the venv's imports are 2-3x faster.
    (run_dir / "guest.conf").write_text(
        f"KVER={shlex.quote(kernel.release)}\nRW_DIR={shlex.quote(rw)}\n"
        f"RW_CACHE={shlex.quote(os.environ.get('TESTBED_RW_CACHE', 'loose'))}\n"
        f"INIT={options.init.value}\n"
    )
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    for name in os.environ.get("TESTBED_PASSENV", "").split():
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(options.env)
    env.update({"TESTBED": "1", "TESTBED_OUT": "/tb", "TERM": "dumb"})
    env["TESTBED_INIT"] = options.init.value
    (run_dir / "env.sh").write_text(
        guest_env_script(env, options.path_first, os.environ.get("PATH", ""))
    )
    (run_dir / "command.sh").write_text(command_script(options.cwd, command))
    shutil.copy2(GUEST_DIR / "stage2.sh", run_dir / "stage2.sh")
    if options.init is Init.SYSTEMD:
        shutil.copy2(GUEST_DIR / "testbed-service.sh", run_dir / "testbed-service.sh")
        write_overlay(run_dir / OVERLAY, systemd_overlay(), systemd_links())


_READY = re.compile(rb"^TESTBED: guest ready")
_RUNNING = re.compile(rb"^TESTBED: running command")


def _pump(
    stream: IO[bytes], console: IO[bytes], echo: IO[str] | None, marks: dict[str, float]
) -> None:
    """Copy QEMU's serial console to the console file (and the echo stream)."""
    with contextlib.suppress(ValueError, OSError):  # the stream closed under a late pump
        _pump_lines(stream, console, echo, marks)


def _pump_lines(
    stream: IO[bytes], console: IO[bytes], echo: IO[str] | None, marks: dict[str, float]
) -> None:
    for line in iter(stream.readline, b""):
        console.write(line)
        console.flush()
        if _READY.match(line):
            marks.setdefault("ready", time.monotonic())
        elif _RUNNING.match(line):
            marks.setdefault("running", time.monotonic())
        if echo is not None:
            echo.write(line.decode(errors="replace"))
            echo.flush()


#: Seconds between two questions to a boot's watchdog.
WATCHDOG_POLL = 1.0


def _wait(
    process: subprocess.Popen[bytes], timeout: float, watchdog: Callable[[], str | None] | None
) -> str | None:
    """Until QEMU exits (None), or why it must be stopped: the watchdog's sentence,
    or without one the fixed ``timeout`` ran out."""
    if watchdog is None:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            return f"the boot ran past TESTBED_TIMEOUT={timeout:.0f} s"
        return None
    while True:
        try:
            process.wait(WATCHDOG_POLL)
            return None
        except subprocess.TimeoutExpired:
            reason = watchdog()
            if reason is not None:
                return reason


def stop(process: subprocess.Popen[bytes]) -> None:
    """Never leave a QEMU behind: SIGTERM, a bounded wait, then SIGKILL."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(KILL_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def boot(
    command: Sequence[str],
    options: Options,
    prepared: Prepared | None = None,
    *,
    run_dir: Path | None = None,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
    watchdog: Callable[[], str | None] | None = None,
) -> Result:
    """Boot the testbed, run ``command`` in it, power off.

    Bounded by ``watchdog`` when given (asked every :data:`WATCHDOG_POLL` s: a
    sentence ends the boot, saying why; the pytest plugin's budgets follow the
    test that is running), else by the fixed ``options.timeout``.
    ``run_dir`` (default: a new one in the cache) is the guest's /tb; ``on_start``
    gets the QEMU process, so a caller in another thread can stop it.
    """
    prepared = prepared or prepare(options)
    accel = accel_for(
        probe_accel(options.accel), options.init, cpu_pinned=bool(os.environ.get("TESTBED_CPU"))
    )
    run_dir = run_dir or new_run_dir(options.cache)
    write_run_files(run_dir, prepared.kernel, command, options)
    argv = qemu_command(
        accel=accel,
        kernel=prepared.kernel,
        initrd=prepared.initrd,
        run_dir=run_dir,
        rw_dir=options.rw_dir,
        smp=options.smp or default_smp(options.init),
        memory=options.memory,
        extra=options.extra_qemu,
        init=options.init,
    )
    (run_dir / "qemu.argv").write_text(shlex.join(argv) + "\n")
    console_path = run_dir / "console.log"
    marks: dict[str, float] = {}
    started = time.monotonic()
    timed_out = False
    timeout_reason: str | None = None
    # setpriv --pdeathsig: QEMU dies with us even when we are SIGKILLed.
    with console_path.open("wb") as console:
        process = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "--", *argv],
            # The boot outlives the test that started it: it must not carry
            # that test's tag (tests/conftest.py kills what a test leaves).
            env={k: v for k, v in os.environ.items() if k != "HANDOFF_TEST_TAG"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            if on_start is not None:
                on_start(process)
            assert process.stdout is not None
            pump = threading.Thread(
                target=_pump, args=(process.stdout, console, options.echo, marks), daemon=True
            )
            pump.start()
            timeout_reason = _wait(process, options.timeout, watchdog)
            if timeout_reason is not None:
                timed_out = True
                console.write(f"\n[testbed] TIMEOUT: {timeout_reason}\n".encode())
            stop(process)
            pump.join(KILL_GRACE)
        finally:
            stop(process)
            if process.stdout is not None:  # the pump has read it to its end
                process.stdout.close()
    ended = time.monotonic()
    rc_file = run_dir / "rc"
    returncode = NO_EXIT_CODE
    if rc_file.exists():
        with contextlib.suppress(ValueError):
            returncode = int(rc_file.read_text().strip())
    return Result(
        returncode=returncode,
        run_dir=run_dir,
        console_path=console_path,
        accel=accel,
        kernel=prepared.kernel,
        timed_out=timed_out,
        init=options.init,
        setup_seconds=prepared.seconds,
        ready_seconds=marks["ready"] - started if "ready" in marks else None,
        command_start_seconds=marks["running"] - started if "running" in marks else None,
        vm_seconds=ended - started,
        qemu_argv=argv,
        timeout_reason=timeout_reason,
    )


def cleanup(result: Result, keep: bool) -> None:
    """Drop the run directory of a successful run unless asked to keep it."""
    if result.returncode == 0 and not keep:
        shutil.rmtree(result.run_dir, ignore_errors=True)


def describe(result: Result) -> str:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}s"

    return (
        f"rc={result.returncode}{' TIMEOUT' if result.timed_out else ''} "
        f"init={result.init.value} accel={result.accel.name} "
        f"kernel={result.kernel.package} {result.kernel.version} "
        f"setup={seconds(result.setup_seconds)} ready={seconds(result.ready_seconds)} "
        f"command-start={seconds(result.command_start_seconds)} vm={seconds(result.vm_seconds)}"
    )


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="testbed",
        description="Boot the real-kernel testbed VM and run one command in it as root. "
        f"Exit code: the command's, or {NO_EXIT_CODE} when the guest gave none "
        "(crash, timeout, failed mount).",
    )
    parser.add_argument("--timeout", type=float, help="seconds before the guest is killed")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"))
    parser.add_argument(
        "--init",
        choices=[mode.value for mode in Init],
        help="PID 1 of the guest: classic (busybox + stage2.sh) or systemd (TESTBED_INIT)",
    )
    parser.add_argument("--smp", type=int)
    parser.add_argument("--memory")
    parser.add_argument("--no-rw", action="store_true", help="do not mount the checkout rw")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    parser.add_argument("--quiet", action="store_true", help="do not echo the console")
    parser.add_argument("--setup-only", action="store_true", help="prepare the cache and exit")
    parser.add_argument("--show-command", action="store_true", help="print QEMU's argv too")
    parser.add_argument("command", nargs="*", help="the command to run inside the guest")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        log("run me as root: the 9p shares and apt-get need it")
        return 2
    if args.init:
        os.environ["TESTBED_INIT"] = args.init
    try:
        options = Options()
    except TestbedError as error:
        log(f"error: {error}")
        return 2
    overrides: dict[str, object] = {
        "timeout": args.timeout,
        "accel": args.accel,
        "smp": args.smp,
        "memory": args.memory,
    }
    fields = {k: v for k, v in overrides.items() if v is not None}
    if args.no_rw:
        fields["rw_dir"] = None
    if not args.quiet:
        fields["echo"] = sys.stdout
    venv = CHECKOUT / ".venv" / "bin"
    fields["path_first"] = [str(venv)] if venv.is_dir() else []
    fields["keep"] = args.keep or options.keep
    options = dataclasses.replace(options, **fields)  # type: ignore[arg-type]
    try:
        prepared = prepare(options)
        if args.setup_only:
            log(f"set-up done in {prepared.seconds:.1f}s ({prepared.kernel.package})")
            return 0
        if not args.command:
            parser.error("give a command to run inside the guest (after --)")
        result = boot(args.command, options, prepared)
    except TestbedError as error:
        log(f"error: {error}")
        return NO_EXIT_CODE
    if args.show_command:
        log(shlex.join(result.qemu_argv))
    log(describe(result) + f" console={result.console_path}")
    cleanup(result, options.keep)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
