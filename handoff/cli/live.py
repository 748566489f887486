"""The argparse side of `handoff gpu NAME host|guest|toggle`: the live GPU over the control socket.

The session's live GPU resource (:mod:`handoff.live.resource`) answers the
control command ``{"command": "gpu", "to": "host"|"guest"|"toggle",
"release_within": S}``; this module only parses, sends and prints. The
request waits as long as the move may take: the guest's release (bounded by
``--timeout``) plus the return to the host drivers.
"""

from __future__ import annotations

import argparse
import json

from handoff.base.errors import HandoffError
from handoff.control.protocol import Command, Field, Side
from handoff.live.guest import RELEASE_TIMEOUT

#: Seconds beyond the guest's release a move may take (vfio unbind, host driver probe).
HOST_SIDE_BUDGET = 90.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profile", metavar="NAME", help="profile name or file of a running session")
    parser.add_argument("to", nargs="?", default="toggle", choices=[s.value for s in Side],
                        help="where the live GPU goes (default: toggle)")
    parser.add_argument("--timeout", type=float, default=RELEASE_TIMEOUT, metavar="S",
                        help="seconds the guest gets to let go of the GPU (default: %(default)g)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def cmd_gpu(args: argparse.Namespace) -> int:
    from handoff.control.client import control_socket, request_served, session_name

    if args.timeout <= 0:
        raise HandoffError(f"--timeout {args.timeout:g}: expected a positive number of seconds")
    name = session_name(args.profile)
    message: dict[str, object] = {
        Field.COMMAND: Command.GPU, Field.TO: args.to, Field.RELEASE_WITHIN: args.timeout
    }
    result = request_served(
        control_socket(name), message, timeout=args.timeout + HOST_SIDE_BUDGET,
        missing=f"the session {name!r} has no live GPU",
        fix="set live = true on its [[passthrough]] entries and restart it",
    )
    if args.json:
        print(json.dumps(result))
        return 0
    where = "the host" if result.get("state") == "host" else "the guest"
    verb = "is now on" if result.get("changed") else "was already on"
    print(f"{name}: the live GPU {verb} {where}")
    return 0
