"""Nothing a session starts listens on a network port: VNC and every monitor are unix sockets.

A profile with every listening part handoff can give QEMU (a VNC frontend,
the QMP input monitor, user networking) runs as ``handoff run`` runs it; the
test then reads the argv of the QEMU that really runs (``/proc/PID/cmdline``),
parses every option that can listen, and reads the kernel's socket tables
(``/proc/net/{tcp,tcp6,udp,udp6,unix}``) for the sockets QEMU holds: no TCP
listener, no bound UDP socket, and the VNC server on its unix socket.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import trio

from handoff.base.host import HostPaths
from handoff.base.run_layout import VNC_SOCKET, qemu_socket_dir
from handoff.profile import load_profile
from handoff.session.end import StopRequest
from handoff.session.supervisor import Session

PROFILE = """\
[vm]
name = "ports"
memory = "64M"
cpus = 1
accel = "tcg"
shutdown_timeout = 0.3
[[network]]
type = "user"
[display]
frontend = "vnc"
[input]
backend = "qmp"
"""

#: QEMU options whose value can make QEMU listen (or connect) on a socket.
SOCKET_OPTIONS = frozenset({
    "-vnc", "-display", "-spice", "-chardev", "-monitor", "-qmp", "-qmp-pretty", "-serial",
    "-parallel", "-gdb", "-incoming", "-netdev", "-nic", "-net", "-audiodev",
})
TCP_LISTEN = "0A"


def network_listeners(argv: list[str]) -> tuple[list[str], list[str]]:
    """(every socket-capable option as ``-flag value``, those that use the network)."""
    seen: list[str] = []
    network: list[str] = []
    for flag, value in zip(argv, [*argv[1:], ""], strict=True):
        if flag not in SOCKET_OPTIONS:
            continue
        seen.append(f"{flag} {value}")
        opts = value.split(",")
        keys = {o.partition("=")[0]: o.partition("=")[2] for o in opts[1:]}
        if flag == "-chardev":
            local = opts[0] != "socket" or (
                ("path" in keys or "fd" in keys) and not {"host", "port"} & keys.keys()
            )
            local = local and opts[0] not in ("udp", "tcp", "telnet", "websocket")
        elif flag == "-vnc":
            local = value.startswith("unix:") or value == "none"
        elif flag == "-display":
            local = not value.startswith("vnc") or "vnc=unix:" in value
        elif flag in ("-netdev", "-nic", "-net"):
            local = not re.search(r"hostfwd|guestfwd|socket|listen=|connect=|udp=", value)
        elif flag == "-spice":
            local = False
        else:  # -monitor/-qmp/-serial/-parallel/-gdb/-incoming: a backend spec
            local = not re.match(r"(tcp|telnet|udp|websocket|ws|rdma|exec):", value) and (
                not re.match(r"^:?\d+$", value)
            )
        if not local:
            network.append(f"{flag} {value}")
    return seen, network


def socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def inet_sockets(table: str) -> list[tuple[str, int]]:
    """(state, inode) of every socket in ``/proc/net/<table>``."""
    rows = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
    return [(row.split()[3], int(row.split()[9])) for row in rows if row.strip()]


def unix_paths(inodes: set[int]) -> set[str]:
    out: set[str] = set()
    for row in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = row.split()
        if len(fields) >= 8 and int(fields[6]) in inodes:
            out.add(fields[7])
    return out


@dataclass
class Observed:
    """What the running QEMU showed: its argv and the sockets it holds, by table."""

    argv: list[str] = field(default_factory=list)
    tcp: list[tuple[str, int]] = field(default_factory=list)
    udp: list[tuple[str, int]] = field(default_factory=list)
    unix: set[str] = field(default_factory=set)


def test_the_argument_parser_catches_every_network_listener_form() -> None:
    _, network = network_listeners([
        "qemu", "-vnc", ":0", "-display", "vnc=0.0.0.0:1", "-chardev",
        "socket,id=m,host=0.0.0.0,port=4444,server=on", "-qmp", "tcp:localhost:4445,server",
        "-netdev", "user,id=n,hostfwd=tcp::2222-:22", "-gdb", "tcp::1234", "-serial",
        "telnet::4446,server", "-spice", "port=5930",
    ])
    assert len(network) == 8, network


def test_a_vnc_session_listens_on_no_network_port(tmp_path: Path) -> None:
    source = tmp_path / "ports.toml"
    source.write_text(PROFILE)
    profile = load_profile(source)
    paths = HostPaths(run=tmp_path / "run")
    found = Observed()

    async def main() -> None:
        def on_ready() -> None:
            process = session._process
            assert process is not None
            pid = process.pid
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
            inodes = socket_inodes(pid)
            found.argv = argv
            found.tcp = [s for t in ("tcp", "tcp6") for s in inet_sockets(t) if s[1] in inodes]
            found.udp = [s for t in ("udp", "udp6") for s in inet_sockets(t) if s[1] in inodes]
            found.unix = unix_paths(inodes)
            session.request_stop(StopRequest("control"), force=True)

        session = Session(
            profile, paths, [], report=lambda _: None, handle_signals=False, on_qmp_ready=on_ready
        )
        outcome = await session.run()
        assert outcome.status == 0, outcome

    trio.run(main)
    seen, network = network_listeners(found.argv)
    assert network == [], network
    vnc = qemu_socket_dir(paths, "ports") / VNC_SOCKET
    # Not vacuous: the VNC server, both monitors and the NIC were among what was parsed.
    assert any(f"vnc=unix:{vnc}" in s or f"unix:{vnc}" in s for s in seen), seen
    assert sum(s.startswith("-chardev socket") for s in seen) == 2, seen
    assert any(s.startswith("-netdev user") for s in seen), seen
    assert [s for s in found.tcp if s[0] == TCP_LISTEN] == []
    assert found.udp == []
    assert str(vnc) in found.unix  # the VNC server listens there
