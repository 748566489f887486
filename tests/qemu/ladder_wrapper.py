"""Test-only: the real qemu-system-x86_64 behind a QMP filter, for the shutdown-ladder tests.

    python ladder_wrapper.py --mode term|nothing --journal FILE -- QEMU-ARGS...

Without a ``-chardev socket,id=qmp,fd=N`` argument (the capability probes:
``-version``, ``-device help``...) it simply execs the real QEMU. With one, it
starts the real QEMU on a socketpair of its own and relays QMP between the
supervisor's fd N and that QEMU, except that

- ``system_powerdown`` is answered ``{"return": {}}`` and not forwarded
  (a guest that ignores the power button),
- ``quit`` is neither forwarded nor answered (a monitor that ignores quit),
- SIGTERM is forwarded to QEMU in mode ``term`` (QEMU exits on it, status 0)
  and ignored in mode ``nothing`` (only SIGKILL ends this "QEMU").

The supervisor sees this program's pid: the ladder's signals land here.
QEMU dies with it (PR_SET_PDEATHSIG), so a SIGKILL here ends QEMU too; when
QEMU exits this program exits with its status. Each swallowed command and
each signal is appended to the journal, one line each, as it arrives,
after a first line ``qemu pid N`` naming the real QEMU.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
from types import FrameType

QEMU = "qemu-system-x86_64"
PR_SET_PDEATHSIG = 1
_QMP_FD = re.compile(r"^(socket,id=qmp,fd=)(\d+)$")


class Journal:
    """Append-only lines, written with one unbuffered write (safe in a signal handler)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the wrapper died before prctl took effect
        os._exit(1)


def _split_messages(buffer: bytes) -> tuple[list[dict[str, object]], bytes]:
    """The complete JSON objects at the start of ``buffer``, and what is left."""
    decoder = json.JSONDecoder()
    text = buffer.decode()
    messages: list[dict[str, object]] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        try:
            message, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            return messages, text[index:].encode()
        messages.append(message)


def relay(supervisor: socket.socket, qemu: socket.socket, journal: Journal) -> None:
    """Relay QMP until QEMU hangs up, swallowing system_powerdown and quit."""
    selector = selectors.DefaultSelector()
    selector.register(supervisor, selectors.EVENT_READ, "supervisor")
    selector.register(qemu, selectors.EVENT_READ, "qemu")
    from_supervisor = b""
    from_qemu = b""
    supervisor_open = True

    def to_supervisor(data: bytes) -> None:
        if supervisor_open:
            with contextlib.suppress(OSError):  # the supervisor went away
                supervisor.sendall(data)

    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            data = sock.recv(65536)
            if key.data == "qemu":
                if not data:
                    return
                # QEMU ends every message with a newline: forward whole lines
                # only, so an injected answer never lands inside one.
                from_qemu += data
                whole, _, from_qemu = from_qemu.rpartition(b"\n")
                if whole:
                    to_supervisor(whole + b"\n")
                continue
            if not data:
                supervisor_open = False
                selector.unregister(supervisor)
                continue
            from_supervisor += data
            messages, from_supervisor = _split_messages(from_supervisor)
            for message in messages:
                command = message.get("execute")
                if command == "system_powerdown":
                    journal.write("system_powerdown")
                    answer: dict[str, object] = {"return": {}}
                    if "id" in message:
                        answer["id"] = message["id"]
                    to_supervisor(json.dumps(answer).encode() + b"\r\n")
                elif command == "quit":
                    journal.write("quit")
                else:
                    qemu.sendall(json.dumps(message).encode() + b"\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("term", "nothing"), required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("qemu_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    qemu_args: list[str] = args.qemu_args
    if qemu_args[:1] == ["--"]:
        qemu_args = qemu_args[1:]
    monitor = next((i for i, a in enumerate(qemu_args) if _QMP_FD.match(a)), None)
    if monitor is None:
        os.execvp(QEMU, [QEMU, *qemu_args])
    match = _QMP_FD.match(qemu_args[monitor])
    assert match is not None
    supervisor = socket.socket(fileno=int(match[2]))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    qemu_args[monitor] = f"{match[1]}{theirs.fileno()}"
    journal = Journal(args.journal)
    children: list[subprocess.Popen[bytes]] = []

    def on_sigterm(signum: int, _: FrameType | None) -> None:
        journal.write("SIGTERM")
        if args.mode == "term":
            for child in children:
                child.send_signal(signum)

    # Before QEMU starts: a SIGTERM is never lost (exec resets it in QEMU).
    signal.signal(signal.SIGTERM, on_sigterm)
    parent = os.getpid()
    child = subprocess.Popen(
        [QEMU, *qemu_args],
        pass_fds=[theirs.fileno()],
        preexec_fn=lambda: _die_with_parent(parent),
    )
    children.append(child)
    theirs.close()
    journal.write(f"qemu pid {child.pid}")
    relay(supervisor, ours, journal)
    status = child.wait()
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
