"""The `handoff` command.

    handoff run PROFILE [--dry-run]     run the VM in the foreground
    handoff argv PROFILE                print the QEMU command line
    handoff status [PROFILE] [--json]   ask running sessions how they are
    handoff stop PROFILE [--force]      stop a session (graceful, or force)
    handoff switch PROFILE [host|guest|toggle]  move keyboard and mouse (default: toggle)
    handoff groups | detach | attach | recover | doctor   (see their --help)

PROFILE is a path to a .toml file, or a name looked up as NAME.toml in
$HANDOFF_PROFILE_DIR, ~/.config/handoff/profiles and /etc/handoff/profiles
(:mod:`handoff.cli.profile_lookup`). `status`, `stop` and `switch` also take the
bare profile name of a running session.

Start-up is part of the interface: `switch` is bound to a desktop shortcut
and `run` is a foreground command, so this module imports only the standard
library and handoff.base.errors at module level. Each command imports what it
needs; the subcommands implemented elsewhere (groups, detach, attach,
recover, doctor) are imported only when they are the command given.

Errors a person can fix never show a traceback: ``handoff: <message>`` and
``  fix: <what to do>`` on stderr, exit status 2. Exit statuses of `run`:
0 the guest powered off / stopped on request, 1 abnormal end (QEMU crashed,
guest panic, QEMU had to be killed), 2 a handoff error, 129/130/143 ended by
SIGHUP/SIGINT/SIGTERM. KeyboardInterrupt elsewhere exits 130.

Why it stays over 500 lines: the light commands (status, stop, switch) and
what `status` reads of journals left behind must not import the heavy
packages, so they live here beside the subcommand table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import termios
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from handoff.base.errors import HandoffError, SessionNotRunningError
from handoff.cli.profile_lookup import resolve_profile
from handoff.control.protocol import Command, Field, Side

if TYPE_CHECKING:  # the plan's modules load only for the commands that plan
    from handoff.session.plan import SessionPlan

__all__ = ["DELEGATED", "EXIT_ERROR", "EXIT_INTERRUPTED", "build_parser", "main"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

log = logging.getLogger("handoff")


# --------------------------------------------------------------------------- helpers


def _paths() -> Any:
    from handoff.base.host import HostPaths

    return HostPaths.from_environment()


@contextlib.contextmanager
def _terminal_restored() -> Iterator[None]:
    """Put the terminal back as it was, whatever QEMU or a crash did to it."""
    saved = None
    fd = None
    with contextlib.suppress(OSError, ValueError):
        if sys.stdin.isatty():
            fd = sys.stdin.fileno()
            saved = termios.tcgetattr(fd)
    try:
        yield
    finally:
        if saved is not None and fd is not None:
            with contextlib.suppress(OSError, termios.error):
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _setup_logging(verbosity: int) -> None:
    """Warnings by default; -v info, -vv debug. qemu.qmp's own chatter only at -vv.

    Nothing in handoff logs key events or typed text at any level.
    """
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("handoff[%(name)s] %(levelname)s: %(message)s"))
    root = logging.getLogger()
    if not root.handlers:  # an embedding program (or pytest) keeps its own handlers
        root.addHandler(handler)
    root.setLevel(level)
    # qemu.qmp logs a dropped late reply (after a cancelled command) as a
    # warning/error; that is expected here, so it is debug-only noise.
    logging.getLogger("qemu.qmp").setLevel(logging.DEBUG if verbosity >= 2 else logging.CRITICAL)


# --------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from handoff.profile import load_profile
    from handoff.session.start import preflight

    profile = load_profile(resolve_profile(args.profile))
    paths = _paths()
    if args.dry_run:
        _print_plan(preflight(profile, paths, binary=args.qemu, trace_file=args.trace_input).plan)
        return 0
    # Before trio: the preflight, the resources from its plan and, for a plan with
    # no resource, QEMU's spawn, so QEMU starts while the supervisor loads.
    from handoff.session.early import prepare

    prepared = prepare(profile, paths, binary=args.qemu, trace_file=args.trace_input)
    try:
        import trio

        from handoff.session.supervisor import Session

        session = Session(
            profile, paths, prepared.resources, binary=args.qemu,
            trace_file=args.trace_input, prepared=prepared,
        )
        outcome = trio.run(session.run)
    finally:
        prepared.close()  # QEMU and the run directory, if no session took them
    print(f"handoff: ended: {outcome.summary} (exit {outcome.status})", flush=True)
    if outcome.log_tail:
        print("handoff: last lines of QEMU's log:", file=sys.stderr)
        for line in outcome.log_tail.splitlines():
            print(f"    {line}", file=sys.stderr)
    return outcome.status


def cmd_argv(args: argparse.Namespace) -> int:
    from handoff.profile import Accelerator, load_profile
    from handoff.qemu.accel import kvm_problem
    from handoff.session.host_facts import gather_host_facts
    from handoff.session.plan import plan_session

    profile = load_profile(resolve_profile(args.profile))
    paths = _paths()
    # Showing a command changes nothing, so a KVM profile is shown as written
    # even on a host where `run` would refuse it; the reason goes to stderr.
    facts = gather_host_facts(profile, paths, strict=False, binary=args.qemu)
    if facts.accel is Accelerator.KVM and kvm_problem(paths) is not None:
        print(f"handoff: note: {facts.accel_reason}", file=sys.stderr)
    _print_plan(plan_session(profile, facts, paths, binary=args.qemu))
    return 0


def _print_plan(plan: SessionPlan) -> None:
    """The plan's argv on stdout (the command alone), its host changes on stderr."""
    from handoff.qemu.cmdline import format_argv

    print(format_argv(plan.argv), flush=True)
    for warning in plan.warnings:  # Hyper-V flags this QEMU lacks
        print(f"handoff: warning: {warning}", file=sys.stderr)
    for change in plan.changes:
        print(f"handoff: would: {change.describe()}", file=sys.stderr)


def _running_sessions() -> list[str]:
    from handoff.control.find import running_sessions

    run: Path = _paths().run
    return running_sessions(run, os.environ, os.geteuid())


def format_status(status: dict[str, Any]) -> str:
    """The human form of a session's status object."""
    lines = [
        f"{status.get('profile')}: {status.get('phase')}"
        + (" (stopping)" if status.get("stopping") and status.get("phase") == "running" else ""),
        f"  supervisor pid {status.get('pid')}, QEMU pid {status.get('qemu_pid')}",
        f"  accelerator {status.get('accel')} ({status.get('accel_reason')})",
        f"  up {_duration(float(status.get('uptime') or 0))}",
    ]
    agent = status.get("guest_agent")
    if isinstance(agent, dict):
        if agent.get("answers"):
            lines.append(f"  guest agent: answers; guest OS {agent.get('os')}")
        else:
            lines.append(f"  guest agent: does not answer ({agent.get('reason')})")
    resources = status.get("resources") or {}
    for name, detail in resources.items():
        lines.extend(_format_resource(name, detail))
    return "\n".join(lines)


def _format_resource(name: str, detail: object) -> list[str]:
    """One line of a resource's scalar fields, then one line per listed item.

    Resources report JSON (``HostResource.status``); lists of objects (the GPU's
    devices, the input's keyboards and mice) read best one per line.
    """
    if not isinstance(detail, dict) or not detail:
        return [f"  {name}"]
    scalars = []
    items: list[str] = []
    for key, value in detail.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            items.extend(f"    - {_fields(v)}" for v in value)
        elif isinstance(value, list):
            scalars.append(f"{key}={','.join(str(v) for v in value) or '-'}")
        else:
            scalars.append(f"{key}={'-' if value is None else value}")
    return [f"  {name}: {' '.join(scalars)}", *items]


def _fields(item: dict[str, Any]) -> str:
    return " ".join(f"{k}={'-' if v is None else v}" for k, v in item.items())


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{seconds:.1f}s"


def cmd_status(args: argparse.Namespace) -> int:
    from handoff.control.client import control_socket, request, session_name

    names = [session_name(args.profile)] if args.profile else _running_sessions()
    statuses: list[dict[str, Any]] = []
    for name in names:
        try:
            statuses.append(request(control_socket(name), {Field.COMMAND: Command.STATUS}))
        except SessionNotRunningError:
            if args.profile:
                raise
    if args.json:
        if args.profile:
            print(json.dumps(statuses[0], indent=2))
        else:
            print(json.dumps(statuses, indent=2))
        return 0
    if not statuses:
        print("no handoff session is running")
    else:
        print("\n".join(format_status(s) for s in statuses))
    _print_display_journals()
    if any((_paths().run / "journal").glob("*.json")):  # else status imports no PCI code
        from handoff.pci.revive import print_ladder_failures  # a card the ladder gave up on
        print_ladder_failures(_paths())
    return 0


def _print_display_journals() -> None:
    """A single-GPU host's display not brought back: what failed and the fix, at once."""
    paths = _paths()
    # The directory of handoff.display.journal, read without importing it (and the PCI
    # package): `handoff status` stays light when there is nothing to report.
    directory = paths.run / "journal" / "display"
    if not directory.is_dir() or not any(p.suffix == ".json" for p in directory.iterdir()):
        return
    from handoff.display.resource import display_failures

    for line in display_failures(paths):
        print(f"host display: {line}")


def cmd_stop(args: argparse.Namespace) -> int:
    from handoff.control.client import control_socket, request, session_name

    name = session_name(args.profile)
    result = request(
        control_socket(name), {Field.COMMAND: Command.STOP, Field.FORCE: args.force}
    )
    if args.json:
        print(json.dumps(result))
    else:
        how = "forcing QEMU to quit" if result.get(Field.FORCE) else "asking the guest to power off"
        print(f"{name}: stopping ({how}); the supervisor reports the end")
    return 0


def cmd_switch(args: argparse.Namespace) -> int:
    """``{"command": "switch", "mode": "host"|"guest"|"toggle"}`` → the input resource."""
    from handoff.control.client import control_socket, request_served, session_name

    name = session_name(args.profile)
    side = Side(args.to)
    result = request_served(
        control_socket(name), {Field.COMMAND: Command.SWITCH, Field.MODE: side.value},
        missing=f"the session {name!r} does not hand off keyboard and mouse",
        fix='set input.backend = "qmp" or "virtio" in its profile and restart it',
    )
    if args.json:
        print(json.dumps(result))
        return 0
    mode, pending = result.get(Field.MODE), result.get(Field.PENDING)
    if pending and pending != mode:
        print(f"{name}: input goes to the {pending} once every key is released "
              f"(now: {mode})")
    else:
        print(f"{name}: input goes to the {mode}")
    return 0


# --------------------------------------------------------------------------- parser

# Each delegated module, imported only when its subcommand is the one given: plain
# import statements (the layering test sees them), no importlib.
def _cli_gpu() -> ModuleType:
    from handoff.cli import gpu as cli_gpu

    return cli_gpu


def _cli_live() -> ModuleType:
    from handoff.cli import live as cli_live

    return cli_live


def _doctor() -> ModuleType:
    from handoff.cli import doctor

    return doctor


def _cli_init() -> ModuleType:
    from handoff.cli import init as cli_init

    return cli_init


def _cli_interop() -> ModuleType:
    from handoff.cli import interop as cli_interop

    return cli_interop


@dataclass(frozen=True)
class Delegated:
    """A subcommand another module implements: ``adder(parser)`` and ``handler(args)``."""

    name: str
    load: Callable[[], ModuleType]
    adder: str
    handler: str
    help: str
    description: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        getattr(self.load(), self.adder)(parser)

    def run(self, args: argparse.Namespace) -> int:
        status: int = getattr(self.load(), self.handler)(args)
        return status


def _pci(name: str, help_text: str) -> Delegated:
    return Delegated(name, _cli_gpu, f"add_{name}_arguments", f"cmd_{name}",
                     help_text, help_text[0].upper() + help_text[1:])


DELEGATED: tuple[Delegated, ...] = (
    _pci("groups", "list IOMMU groups and what a passthrough of each would take"),
    _pci("detach", "move a device (its whole IOMMU group) to vfio-pci"),
    _pci("attach", "give a device back to its host driver"),
    Delegated("recover", _cli_gpu, "add_recover_arguments", "cmd_recover",
              "put back what a killed session left: GPU, live GPU, tuning, desk, display",
              "Put back what a killed session (or an unfinished `handoff detach`) left on "
              "the host, every capability's journal in this order: devices back on their "
              "host drivers (GPU hand-off), live GPU groups whose QEMU is gone, the tuning "
              "(hugepage pools, governors, AllowedCPUs=), the desk (Looking Glass's shm file, "
              "USB nodes, the sound user's ACL entries, virtiofsd), then the host display "
              "(framebuffer, consoles, units). A journal from an earlier boot is discarded; "
              "one a running session or its QEMU still holds is left alone."),
    Delegated("gpu", _cli_live, "add_arguments", "cmd_gpu",
              "move a live GPU between host and running guest",
              "Move the live = true GPU of a running session to the host, to the guest, or "
              "toggle it, while the VM keeps running."),
    Delegated("doctor", _doctor, "add_arguments", "cmd_doctor",
              "check this host for passthrough, with fixes",
              "Check this host for GPU passthrough: each check gives a verdict and a fix."),
    Delegated("import", _cli_interop, "add_import_arguments", "cmd_import",
              "write a profile from a libvirt domain's XML",
              "Write a commented profile from a libvirt domain (virsh dumpxml, virt-manager, "
              "virt-install): every element that does not map is listed with the reason."),
    Delegated("export", _cli_interop, "add_export_arguments", "cmd_export",
              "write a profile as libvirt domain XML or a KubeVirt VirtualMachine",
              "Write the VM of PROFILE as libvirt domain XML (--libvirt) or as a KubeVirt "
              "VirtualMachine manifest (--kubevirt), for libvirt's tools or a cluster."),
    Delegated("init", _cli_init, "add_arguments", "cmd_init",
              "write a working profile from this host's hardware",
              "Write a commented profile for NAME from this host's GPU, IOMMU groups, CPUs, "
              "RAM, firmware and input devices, and say why each was chosen."),
)


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand in ``argv`` (the top-level options take no value), or None."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(arguments_for: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; completions and the man page are generated from the complete one.

    ``arguments_for``: the delegated subcommands whose arguments are added
    (importing their modules); None: all of them.
    """
    parser = argparse.ArgumentParser(
        prog="handoff",
        description="Run a GPU-passthrough VM as one foreground command: the GPU and the "
        "keyboard and mouse are handed to the guest and back.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="more log output on stderr (-vv: debug, including QMP traffic)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run a VM in the foreground until it ends",
                         description="Run the VM of PROFILE in the foreground. Ctrl-C asks the "
                         "guest to power off; a second Ctrl-C forces QEMU down.")
    run.add_argument("profile", metavar="PROFILE", help="profile file (.toml) or name")
    run.add_argument("--dry-run", "--show-command", action="store_true",
                     help="print the QEMU command line (shell-quoted) and exit")
    run.add_argument("--trace-input", metavar="FILE", type=Path, default=None,
                     help="log every input event QEMU receives to FILE (tests, benchmarks)")
    run.add_argument("--qemu", metavar="BINARY", default="qemu-system-x86_64",
                     help="the QEMU binary (default: %(default)s)")
    run.set_defaults(handler=cmd_run)

    argv = sub.add_parser("argv", help="print the QEMU command line of a profile",
                          description="Print the QEMU command line `handoff run` would use.")
    argv.add_argument("profile", metavar="PROFILE", help="profile file (.toml) or name")
    argv.add_argument("--qemu", metavar="BINARY", default="qemu-system-x86_64",
                      help="the QEMU binary (default: %(default)s)")
    argv.set_defaults(handler=cmd_argv)

    status = sub.add_parser("status", help="show running sessions",
                            description="Ask a running session (or all of them) for its state.")
    status.add_argument("profile", metavar="PROFILE", nargs="?", default=None,
                        help="profile name or file (default: every running session)")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.set_defaults(handler=cmd_status)

    stop = sub.add_parser("stop", help="stop a running session",
                          description="Ask the guest to power off (the shutdown ladder follows "
                          "if it does not); --force asks QEMU to quit right away.")
    stop.add_argument("profile", metavar="PROFILE", help="profile name or file")
    stop.add_argument("--force", action="store_true", help="skip the guest power-off")
    stop.add_argument("--json", action="store_true", help="print JSON for scripts")
    stop.set_defaults(handler=cmd_stop)

    switch = sub.add_parser("switch", help="move keyboard and mouse between host and guest",
                            description="Hand the grabbed keyboard and mouse to the guest or "
                            "back to the host (toggle when no side is given).")
    switch.add_argument("profile", metavar="PROFILE", help="profile name or file")
    switch.add_argument("to", nargs="?", choices=[t.value for t in Side],
                        default=Side.TOGGLE.value,
                        help="where input goes (default: toggle)")
    switch.add_argument("--json", action="store_true", help="print JSON for scripts")
    switch.set_defaults(handler=cmd_switch)

    for command in DELEGATED:
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        if arguments_for is None or command.name in arguments_for:
            command.add_arguments(p)
        p.set_defaults(handler=command.run)
    return parser


def _print_error(exc: HandoffError) -> None:
    print(f"handoff: {exc.message}", file=sys.stderr)
    if exc.fix:
        print(f"  fix: {exc.fix}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `handoff` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    command = _command_word(argv)
    parser = build_parser(arguments_for=() if command is None else (command,))
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        with _terminal_restored():
            status: int = args.handler(args)
    except HandoffError as exc:
        _print_error(exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("handoff: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `handoff status | head`: the reader went away; not an error.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    return status
