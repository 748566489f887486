"""Session start-up cost: `handoff run` to QMP-ready against bare QEMU to QMP-ready.

Both arms start the *same* argv (the one the session builds: the profile's
QEMU, paused, QMP on an inherited socketpair end) in the same process, round
after round, interleaved so load on the machine hits both alike:

``bare``
    ``subprocess.Popen(argv, pass_fds=[fd])``, read QEMU's greeting from the
    socket, send ``qmp_capabilities``, read its answer: the least any
    program can do to get a usable monitor. Then ``quit``.

``session``
    ``Session(profile, paths, []).run()`` in-process, timed from the call to
    the moment QMP is negotiated (the ``on_qmp_ready`` hook): preflight
    (profile host checks, accelerator choice, QEMU capability probe), the
    0700 run directory and its lock, the control socket, spawn, the trio ↔
    asyncio QMP bridge. Then ``stop --force``.

``cli`` (with ``--cli``)
    ``python -m handoff run PROFILE`` as a subprocess, timed to its
    ``QMP connected`` line: adds interpreter start-up, imports and the
    capability probe, which is cached per process and so paid on every run.

The first session round pays the capability probe (cold); later rounds find
it cached (warm). Printed per arm: the median and the best round (the best
is what the machine can do; the median shows load from other work), and the
ratios session/bare (goal ≤ 1.15x for the warm session).

    .venv/bin/python bench/startup.py [--rounds 7] [--profile profiles/demo.toml] [--cli]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from handoff.host import HostPaths
from handoff.profile import Profile, load_profile
from handoff.qemu.accel import choose_accel
from handoff.session import Session, StopRequest, session_argv

REPO = Path(__file__).resolve().parent.parent


def _read_json_line(sock: socket.socket, buffer: bytearray) -> dict[str, object]:
    while b"\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("QEMU closed the monitor")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    value = json.loads(line)
    assert isinstance(value, dict)
    return value


def bare_round(profile: Profile, paths: HostPaths, accel: str) -> float:
    """Seconds from spawn to a negotiated QMP monitor, with nothing else around QEMU."""
    ours, theirs = socket.socketpair()
    argv = session_argv(profile, paths, accel, monitor_fd=theirs.fileno())
    start = time.perf_counter()
    process = subprocess.Popen(
        argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    theirs.close()
    buffer = bytearray()
    greeting = _read_json_line(ours, buffer)
    assert "QMP" in greeting
    ours.sendall(b'{"execute": "qmp_capabilities"}\n')
    while "return" not in _read_json_line(ours, buffer):
        pass
    elapsed = time.perf_counter() - start
    ours.sendall(b'{"execute": "quit"}\n')
    process.wait(timeout=30)
    ours.close()
    return elapsed


def session_round(profile: Profile, paths: HostPaths) -> float:
    """Seconds from Session.run() to QMP negotiated, then a forced stop."""
    ready: list[float] = []
    started: list[float] = []

    async def main() -> None:
        def on_ready() -> None:
            ready.append(time.perf_counter())
            session.request_stop(StopRequest("control"), force=True)

        session = Session(
            profile, paths, [], report=lambda _: None, handle_signals=False,
            on_qmp_ready=on_ready,
        )
        started.append(time.perf_counter())
        outcome = await session.run()
        assert outcome.status == 0, outcome

    trio.run(main)
    return ready[0] - started[0]


def cli_round(profile_path: Path, run_dir: Path) -> float:
    """Seconds from exec of `python -m handoff run` to its 'QMP connected' line."""
    env = {**os.environ, "HANDOFF_RUN_DIR": str(run_dir)}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "handoff", "run", str(profile_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
    )
    assert process.stdout is not None
    elapsed = None
    for line in process.stdout:
        if elapsed is None and "QMP connected" in line:
            elapsed = time.perf_counter() - start
            stop = subprocess.run(
                [sys.executable, "-m", "handoff", "stop", "--force", profile_name(profile_path)],
                env=env, capture_output=True, check=False,
            )
            assert stop.returncode == 0, stop.stderr
    process.wait(timeout=60)
    assert elapsed is not None, "the CLI never reported 'QMP connected'"
    return elapsed


def profile_name(path: Path) -> str:
    return load_profile(path).name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", type=Path, default=REPO / "profiles" / "demo.toml")
    parser.add_argument("--cli", action="store_true", help="also time the CLI as a subprocess")
    args = parser.parse_args()

    profile = load_profile(args.profile)
    with tempfile.TemporaryDirectory(prefix="handoff-bench-") as tmp:
        paths = HostPaths(run=Path(tmp) / "run")
        accel = choose_accel(profile.vm.accel, paths).accel
        bare: list[float] = []
        warm: list[float] = []
        cli: list[float] = []
        cold = session_round(profile, paths)  # pays the capability probe
        for _ in range(args.rounds):
            bare.append(bare_round(profile, paths, accel))
            warm.append(session_round(profile, paths))
            if args.cli:
                cli.append(cli_round(args.profile, paths.run))
    b, w = statistics.median(bare), statistics.median(warm)
    bmin, wmin = min(bare), min(warm)
    print(f"profile {profile.name}, accel {accel}, {args.rounds} rounds (median | best)")
    print(f"  bare qemu → QMP ready      {b * 1000:7.1f} | {bmin * 1000:6.1f} ms")
    print(f"  session (warm) → QMP ready {w * 1000:7.1f} | {wmin * 1000:6.1f} ms   "
          f"ratio {w / b:.2f}x | {wmin / bmin:.2f}x (goal <= 1.15x)")
    print(f"  session (cold, 1st run)    {cold * 1000:7.1f} ms          ratio {cold / b:.2f}x "
          "(includes the QEMU capability probe)")
    if cli:
        c, cmin = statistics.median(cli), min(cli)
        print(f"  `handoff run` CLI          {c * 1000:7.1f} | {cmin * 1000:6.1f} ms   "
              f"ratio {c / b:.2f}x | {cmin / bmin:.2f}x (interpreter + imports + probe)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
