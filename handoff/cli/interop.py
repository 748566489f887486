"""`handoff import` and `handoff export`: libvirt domains in, libvirt and KubeVirt out.

    handoff import DOMAIN.xml [--name NAME] [--output FILE|-] [--force]
    handoff import --domain NAME [...]          (reads `virsh dumpxml NAME`)
    handoff export PROFILE --libvirt  [--output FILE|-] [--force]
    handoff export PROFILE --kubevirt [--output FILE|-] [--force] [--claim N=PVC]
                                      [--device ADDRESS=VVVV:DDDD[:CLASS]]

The decisions are pure (:mod:`handoff.interop`); this module reads the
domain (a file, or virsh when it is installed), the cards' ids from sysfs,
resolves ``accel = "auto"`` the way `run` does, and writes. An imported
profile is parsed before anything is written, and what did not map is listed
on stderr, one line each. handoff itself never needs libvirt installed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from handoff.base.errors import DomainImportError, ExportError, HandoffError, InteropError, PciError
from handoff.base.host import HostPaths
from handoff.cli.init import STDOUT, resolve_target, write_file
from handoff.cli.profile_lookup import resolve_profile
from handoff.interop.kubevirt import PciIds
from handoff.pci.address import PciAddress
from handoff.profile import Accel, Accelerator, ProfileError, load_profile, parse_profile


def _virsh_dumpxml(domain: str) -> str:
    try:
        done = subprocess.run(["virsh", "dumpxml", "--inactive", domain], capture_output=True,
                              text=True, check=False, timeout=60)
    except FileNotFoundError:
        raise DomainImportError(
            "--domain needs virsh, which is not installed",
            fix="apt-get install libvirt-clients, or save the XML with `virsh dumpxml NAME > "
            "NAME.xml` where libvirt runs and import the file",
        ) from None
    if done.returncode != 0:
        raise DomainImportError(
            f"virsh dumpxml {domain} failed: {done.stderr.strip() or done.returncode}",
            fix="check the name with `virsh list --all` (and the connection: LIBVIRT_DEFAULT_URI)",
        )
    return done.stdout


def cmd_import(args: argparse.Namespace) -> int:
    from handoff.interop.domain_import import parse_domain

    if (args.xml is None) == (args.domain is None):
        raise DomainImportError("give a domain XML file or --domain NAME (one of them)",
                                fix="handoff import vm.xml, or handoff import --domain vm")
    if args.domain is not None:
        text, source = _virsh_dumpxml(args.domain), f"virsh dumpxml {args.domain}"
    else:
        try:
            text, source = Path(args.xml).read_text(encoding="utf-8"), str(args.xml)
        except OSError as exc:
            raise DomainImportError(f"cannot read {args.xml}: {exc.strerror}",
                                    fix="give the path of a domain XML file") from None
    result = parse_domain(text, source, name=args.name)
    target = resolve_target(result.name, args.output)
    if target.path is not None and target.path.exists() and not args.force:
        raise DomainImportError(f"{target.path} exists already; handoff import never overwrites "
                                "a file", fix="pass --force to replace it, or --output FILE")
    rendered = result.text()
    try:
        parse_profile(rendered, target.path or Path.cwd() / f"{result.name}.toml")
    except ProfileError as exc:
        raise DomainImportError(
            f"{source}: the imported profile does not load: {exc.message}",
            fix=exc.fix or "fix the domain and import again",
        ) from None
    for item in result.unmapped:
        print(f"handoff: not imported: {item.line()}", file=sys.stderr)
    if target.path is None:
        sys.stdout.write(rendered)
    else:
        if not target.path.parent.is_dir():
            target.path.parent.mkdir(parents=True, mode=0o755)
        write_file(target.path, rendered, force=args.force, command="handoff import",
                   error=DomainImportError)
        print(f"handoff: wrote {target.path} ({len(result.unmapped)} item(s) not imported, "
              "listed at its top)", file=sys.stderr)
    return 0


def _resolved_accel(requested: Accel) -> Accelerator:
    """vm.accel as `handoff run` resolves it on this host ("kvm" and "tcg" as they are)."""
    from handoff.qemu.accel import choose_accel

    return choose_accel(requested, HostPaths.from_environment(), strict=False).accel


def _device_ids(addresses: list[PciAddress], given: list[str]) -> dict[PciAddress, PciIds]:
    from handoff.pci.sysfs import read_device

    ids: dict[PciAddress, PciIds] = {}
    for item in given:
        where, _, value = item.partition("=")
        parts = value.split(":")
        try:
            address = PciAddress.parse(where)
            vendor, device = int(parts[0], 16), int(parts[1], 16)
            pci_class = int(parts[2], 16) << 8 if len(parts) > 2 else (
                0x030000 if address.function == 0 else 0x040300)
        except (IndexError, ValueError, PciError):
            raise ExportError(f"--device {item!r} is not ADDRESS=VVVV:DDDD[:CLASS]",
                              fix="write e.g. --device 01:00.0=10de:2206:0300 (lspci -nn shows "
                              "the ids)") from None
        ids[address] = PciIds(vendor, device, pci_class)
    paths = HostPaths.from_environment()
    for address in addresses:
        if address in ids:
            continue
        try:
            dev = read_device(paths, address)
        except PciError:
            raise ExportError(
                f"passthrough device {address} is not on this host, so its vendor:device "
                "(which names the cluster's resource) is unknown",
                fix=f"give it: --device {address}=VVVV:DDDD (lspci -nn on the GPU host)",
            ) from None
        ids[address] = PciIds(dev.vendor, dev.device, dev.class_code)
    return ids


def _claims(given: list[str], disks: int) -> dict[int, str]:
    claims: dict[int, str] = {}
    for item in given:
        index, _, name = item.partition("=")
        if not index.isdigit() or not name or int(index) >= disks:
            raise ExportError(f"--claim {item!r} is not N=PVC for one of the profile's "
                              f"{disks} disk(s)", fix="write e.g. --claim 0=win11-root")
        claims[int(index)] = name
    return claims


def cmd_export(args: argparse.Namespace) -> int:
    profile = load_profile(resolve_profile(args.profile))
    if args.kubevirt:
        from handoff.interop.kubevirt import header, manifest, to_yaml

        ids = _device_ids([dev.address for dev in profile.passthrough], args.device)
        document = manifest(profile, ids, _claims(args.claim, len(profile.disks)))
        text = to_yaml(document, header(profile, ids))
    else:
        from handoff.interop.domain_export import domain_xml

        text = domain_xml(profile, _resolved_accel(profile.vm.accel))
    if args.output in (None, STDOUT):
        sys.stdout.write(text)
        return 0
    path = Path(args.output).absolute()
    if not path.parent.is_dir():
        raise ExportError(f"{path.parent} does not exist",
                          fix=f"mkdir -p {path.parent}, or choose another --output")
    write_file(path, text, force=args.force, command="handoff export", error=ExportError)
    return 0


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("xml", metavar="DOMAIN.xml", nargs="?", default=None,
                        help="a libvirt domain's XML (virsh dumpxml NAME)")
    parser.add_argument("--domain", metavar="NAME", default=None,
                        help="read the domain NAME with `virsh dumpxml` instead of a file")
    parser.add_argument("--name", metavar="NAME", default=None,
                        help="the profile's vm.name (default: the domain's <name>)")
    parser.add_argument("--output", metavar="FILE", default=None,
                        help="write here ('-': stdout) instead of the profile directory")
    parser.add_argument("--force", action="store_true", help="replace an existing file")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profile", metavar="PROFILE", help="profile file (.toml) or name")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--libvirt", action="store_true", help="libvirt domain XML")
    kind.add_argument("--kubevirt", action="store_true",
                      help="a KubeVirt VirtualMachine manifest (YAML)")
    parser.add_argument("--output", metavar="FILE", default=None,
                        help="write here instead of stdout")
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    parser.add_argument("--claim", metavar="N=PVC", action="append", default=[],
                        help="kubevirt: the PersistentVolumeClaim of disk N "
                        "(default: NAME-diskN)")
    parser.add_argument("--device", metavar="ADDRESS=VVVV:DDDD[:CLASS]", action="append",
                        default=[], help="kubevirt: the ids of a passthrough device that is "
                        "not on this host (lspci -nn)")


__all__ = ["HandoffError", "InteropError", "add_export_arguments", "add_import_arguments",
           "cmd_export", "cmd_import"]
