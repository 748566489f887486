"""The argparse side of `handoff groups`, `detach`, `attach` and `recover`.

Each command is an ``add_<name>_arguments(parser)`` / ``cmd_<name>(args)``
pair that :mod:`handoff.cli.main` imports lazily (its ``DELEGATED`` table), over
the ``run_<name>`` functions of :mod:`handoff.pci.commands` (and
:mod:`handoff.session.recovery` for `recover`): here only the
options are parsed, the real kernel writer and the host roots chosen, and
the lines printed. No hand-off logic lives here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.pci.commands import run_attach, run_detach, run_groups
from handoff.pci.ops import KernelWriter


def _stdout(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def _addresses(texts: Sequence[str]) -> list[PciAddress]:
    return [PciAddress.parse(text) for text in texts]



def add_groups_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def cmd_groups(args: argparse.Namespace) -> int:
    return run_groups(HostPaths.from_environment(), KernelWriter(), as_json=args.json, out=_stdout)


def add_detach_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("addresses", nargs="+", metavar="ADDRESS",
                        help="PCI address (01:00.0 or 0000:01:00.0); its group moves with it")
    parser.add_argument("--allow-in-group", action="append", default=[], metavar="ADDRESS",
                        help="accept losing this host-needed co-member (storage, NIC, ...)")
    parser.add_argument("--user", default=None,
                        help="chown /dev/vfio/N to this user (the QEMU user)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")


def cmd_detach(args: argparse.Namespace) -> int:
    return trio.run(
        lambda: run_detach(
            HostPaths.from_environment(),
            KernelWriter(),
            _addresses(args.addresses),
            allow_in_group=_addresses(args.allow_in_group),
            user=args.user,
            dry_run=args.dry_run,
            out=_stdout,
        )
    )


def add_attach_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("addresses", nargs="+", metavar="ADDRESS",
                        help="a device moved by `handoff detach` (its whole group returns)")


def cmd_attach(args: argparse.Namespace) -> int:
    return trio.run(
        lambda: run_attach(
            HostPaths.from_environment(), KernelWriter(), _addresses(args.addresses), out=_stdout
        )
    )


def add_recover_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options: it reads every journal


def cmd_recover(args: argparse.Namespace) -> int:
    del args
    from handoff.session.recovery import run_recover  # every capability's recoverer

    return trio.run(lambda: run_recover(HostPaths.from_environment(), KernelWriter(), out=_stdout))
