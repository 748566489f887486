"""`handoff init NAME`: write a working profile from this host's hardware.

The command gathers the host's facts read-only (:mod:`handoff.init.gather`),
makes every choice by pure rules (:mod:`handoff.init.choose`), renders the
commented profile (:mod:`handoff.init.render`), checks that it loads, and
only then writes: the profile (never over an existing file without
``--force``) and, for ``--disk-size``, a new qcow2 image made by qemu-img
(never over an existing one). The default profile directory is created when
missing; nothing else on the host changes.

``--gpu none`` writes a profile without passthrough (an emulated display on
a VNC socket): the way to a first VM on a host with no passable GPU.

Written to ``$HANDOFF_PROFILE_DIR/NAME.toml`` when that is set, else
``/etc/handoff/profiles/NAME.toml``; ``--output FILE`` elsewhere, ``-`` to
stdout (the summary then goes to stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from handoff.base.errors import HandoffError
from handoff.base.host import HostPaths
from handoff.cli.profile_lookup import PROFILE_DIR_ENV, SYSTEM_PROFILE_DIR
from handoff.init.choose import NO_GPU, DiskSource, InitError, InitPlan, InitRequest, plan_init
from handoff.init.facts import InitFacts
from handoff.init.guest_os import parse_init_os
from handoff.init.render import render_profile, render_summary
from handoff.profile import FirmwareType, InputBackend, parse_profile

STDOUT = "-"

Out = Callable[[str], None]
Gather = Callable[[Path | None], InitFacts]
MakeImage = Callable[[Path, int], None]


@dataclass(frozen=True)
class Target:
    """Where the profile goes: a file (``default``: the profile directory) or stdout."""

    path: Path | None  # None: stdout
    default: bool

    @property
    def image_dir(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()


def default_dir(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    return Path(environ.get(PROFILE_DIR_ENV) or SYSTEM_PROFILE_DIR)


def resolve_target(name: str, output: str | None) -> Target:
    if output == STDOUT:
        return Target(None, False)
    if output is not None:
        return Target(Path(output).absolute(), False)
    return Target(default_dir() / f"{name}.toml", True)


def qemu_img_create(path: Path, size: int) -> None:
    """``qemu-img create -f qcow2 PATH SIZE``, or an InitError with its message."""
    try:
        done = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)],
            capture_output=True, text=True, check=False,
        )
    except FileNotFoundError:
        raise InitError("--disk-size: qemu-img is not installed",
                        fix="apt-get install qemu-utils (Debian), or create the image "
                        "yourself and pass --disk PATH") from None
    if done.returncode != 0:
        raise InitError(f"--disk-size: qemu-img could not create {path}: "
                        f"{done.stderr.strip() or done.returncode}",
                        fix="check the directory is writable and has room, or pass --disk PATH")


def run_init(
    request: InitRequest,
    target: Target,
    *,
    force: bool,
    gather: Gather,
    make_image: MakeImage = qemu_img_create,
    out: Out,
) -> int:
    """Decide, check, then write; the summary goes to ``out``."""
    if target.path is not None and target.path.exists() and not force:
        raise InitError(f"{target.path} exists already; handoff init never overwrites a profile",
                        fix="pass --force to replace it, or --output FILE to write elsewhere")
    for flag, iso in (("--iso", request.iso), ("--virtio-win", request.virtio_win)):
        if iso is not None and not iso.is_file():
            raise InitError(f"{flag}: {iso} is not a file",
                            fix=f"check the path, or leave out {flag} (a commented example is "
                            "written instead)")
    request = _with_image_dir(request, target)
    image = request.image_dir / f"{request.name}.qcow2" if request.image_dir else None
    plan = plan_init(gather(request.disk), request, image_exists=bool(image and image.exists()))
    profile_arg = request.name if target.default else str(target.path or f"{request.name}.toml")
    text = render_profile(plan, profile_arg)
    source = target.path or (Path.cwd() / f"{request.name}.toml")
    parse_profile(text, source)  # a profile that does not load is never written
    if target.path is not None and not target.path.parent.is_dir():
        if not target.default:
            raise InitError(f"{target.path.parent} does not exist",
                            fix=f"mkdir -p {target.path.parent}, or choose another --output")
        target.path.parent.mkdir(parents=True, mode=0o755)
    _make_disk(plan, make_image)
    if target.path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_file(target.path, text, force=force)
    for line in render_summary(plan, str(target.path or "stdout"), profile_arg):
        out(line)
    return 0


def _with_image_dir(request: InitRequest, target: Target) -> InitRequest:
    from dataclasses import replace

    return replace(request, image_dir=target.image_dir)


def _make_disk(plan: InitPlan, make_image: MakeImage) -> None:
    disk = plan.disk
    if disk.source is DiskSource.NEW_IMAGE:
        assert disk.path is not None
        assert disk.size_bytes is not None
        make_image(disk.path, disk.size_bytes)


def write_file(
    path: Path, text: str, *, force: bool, command: str = "handoff init",
    error: type[HandoffError] = InitError,
) -> None:
    """Create ``path`` (exclusively unless ``force``); a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.init-tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        tmp.write_text(text, encoding="utf-8")
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile
    except FileExistsError:
        raise error(f"{path} exists already; {command} never overwrites a file",
                    fix="pass --force to replace it") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# --------------------------------------------------------------------------- argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME",
                        help="the VM's name (vm.name and the profile's file name)")
    parser.add_argument("--gpu", metavar="ADDRESS", default=None,
                        help="the GPU to pass through (default: the only passable one); "
                        f"'{NO_GPU}': a profile without passthrough")
    disk = parser.add_mutually_exclusive_group()
    disk.add_argument("--disk", metavar="PATH", type=Path, default=None,
                      help="an existing block device (LVM volume, partition, disk) or image")
    disk.add_argument("--disk-size", metavar="SIZE", default=None,
                      help="create a qcow2 image NAME.qcow2 of SIZE (64G) beside the profile")
    parser.add_argument("--memory", metavar="SIZE", default=None,
                        help="guest RAM (default: all but max(2 GiB, 1/4) of the host's)")
    parser.add_argument("--cpus", metavar="N", type=int, default=None,
                        help="vCPUs (default: all but one physical core)")
    parser.add_argument("--input", choices=[b.value for b in InputBackend], default="qmp",
                        help="keyboard and mouse hand-off (default: %(default)s)")
    parser.add_argument("--firmware", choices=[f.value for f in FirmwareType], default=None,
                        help="default: ovmf when installed, else seabios")
    parser.add_argument("--os", metavar="OS", dest="guest_os", default=None,
                        help="the guest: windows11, windows10 or linux (UEFI + Secure Boot, "
                        "Hyper-V for Windows, the install ISOs as CD-ROMs)")
    parser.add_argument("--iso", metavar="PATH", type=Path, default=None,
                        help="with --os: the install ISO, as a CD-ROM")
    parser.add_argument("--virtio-win", metavar="PATH", type=Path, default=None,
                        help="with --os windows*: the virtio-win driver ISO, as a CD-ROM")
    parser.add_argument("--output", metavar="FILE", default=None,
                        help=f"write here ('-': stdout) instead of {SYSTEM_PROFILE_DIR}/NAME.toml")
    parser.add_argument("--force", action="store_true", help="replace an existing profile")


def request_from(args: argparse.Namespace) -> InitRequest:
    return InitRequest(
        name=args.name,
        gpu=args.gpu,
        disk=None if args.disk is None else args.disk.absolute(),
        disk_size=args.disk_size,
        memory=args.memory,
        cpus=args.cpus,
        input=InputBackend(args.input),
        firmware=None if args.firmware is None else FirmwareType(args.firmware),
        guest_os=None if args.guest_os is None else parse_init_os(args.guest_os),
        iso=None if args.iso is None else args.iso.absolute(),
        virtio_win=None if args.virtio_win is None else args.virtio_win.absolute(),
    )


def cmd_init(args: argparse.Namespace) -> int:
    from handoff.init.gather import gather_facts
    from handoff.pci.ops import module_loadable

    paths = HostPaths.from_environment()
    target = resolve_target(args.name, args.output)
    stream = sys.stderr if target.path is None else sys.stdout

    def out(line: str) -> None:
        print(line, file=stream, flush=True)

    def gather(disk: Path | None) -> InitFacts:
        return gather_facts(paths, module_loadable, disk=disk)

    return run_init(request_from(args), target, force=args.force, gather=gather, out=out)


__all__ = ["add_arguments", "cmd_init", "run_init", "write_file"]


