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

``cli run``
    the ``handoff`` console script (``handoff run PROFILE``) as a
    subprocess, timed from the spawn to its ``QMP connected`` line: adds
    interpreter start-up and imports. The capability probe is cached on disk
    (:mod:`handoff.qemu.probe_cache`, here in a fresh temporary
    ``$HANDOFF_CACHE_DIR``), so only the first CLI round pays it (reported
    apart as ``cli run (cold)``). Goal: ≤ 3x bare.

``python -c pass``
    the same interpreter doing nothing: the floor for any Python command.

``status`` / ``switch``
    ``handoff status NAME`` and ``handoff switch NAME`` against the session
    the ``cli run`` arm just started, timed from the spawn to the process's
    exit (its answer printed): what a desktop shortcut costs. One untimed
    ``status`` goes first, so the session is past its start-up. The demo
    profile forwards no input, so ``switch`` gets the session's
    "does not hand off keyboard and mouse" answer: the same round trip.
    Goal: ≤ 3x ``python -c pass``.

``bare + swtpm`` / ``session [tpm]``
    the TPM arm: the profile with ``[tpm] type = "emulated"`` (its state made
    once, before the rounds). ``bare + swtpm`` is the minimal script: start
    ``swtpm socket --tpm2 --terminate`` on a control socket, wait for the
    socket, then the bare arm with the session's argv (which connects to it).
    ``session [tpm]`` is ``Session`` with the swtpm resource (state checks,
    swtpm as a resource, its socket awaited). Goal: ≤ 1.2x.

The first session round pays the capability probe (cold); later rounds find
it cached (warm). Printed per arm: the median and the best round (the best
is what the machine can do; the median shows load from other work), and the
ratios (goals: warm session ≤ 1.15x bare, CLI run ≤ 3x bare, status and
switch ≤ 3x ``python -c pass``).

    .venv/bin/python bench/startup.py [--rounds 7] [--profile profiles/demo.toml] [--no-cli]
        [--no-tpm]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from handoff.base.host import HostPaths
from handoff.base.run_layout import tpm_socket_path
from handoff.profile import Accelerator, Profile, load_profile, parse_profile
from handoff.qemu.accel import choose_accel
from handoff.session.end import StopRequest
from handoff.session.plan import SessionPlan
from handoff.session.resources import HostResource
from handoff.session.supervisor import Session, default_resources, session_argv

REPO = Path(__file__).resolve().parent.parent


def quiet(_: str) -> None:
    """A session's status lines, dropped."""


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


def bare_round(
    profile: Profile, paths: HostPaths, accel: Accelerator, *, started: float | None = None
) -> float:
    """Seconds from spawn (or ``started``) to a negotiated QMP monitor, nothing else around."""
    ours, theirs = socket.socketpair()
    argv = session_argv(profile, paths, accel, monitor_fd=theirs.fileno())
    start = time.perf_counter() if started is None else started
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


def bare_tpm_round(profile: Profile, paths: HostPaths, accel: Accelerator) -> float:
    """Seconds from swtpm's spawn to QEMU's negotiated monitor: the minimal script."""
    state = profile.tpm.state
    assert state is not None
    sock = tpm_socket_path(paths, profile.name)
    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)
    start = time.perf_counter()
    swtpm = subprocess.Popen(
        ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
         "--ctrl", f"type=unixio,path={sock}", "--terminate"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while not sock.exists():
        time.sleep(0.001)
    elapsed = bare_round(profile, paths, accel, started=start)
    swtpm.wait(timeout=30)  # --terminate: gone with QEMU
    return elapsed


def session_round(
    profile: Profile,
    paths: HostPaths,
    resources: Callable[[SessionPlan], Sequence[HostResource]] | None = None,
) -> float:
    """Seconds from Session.run() to QMP negotiated, then a forced stop."""
    ready: list[float] = []
    started: list[float] = []

    async def main() -> None:
        def on_ready() -> None:
            ready.append(time.perf_counter())
            session.request_stop(StopRequest("control"), force=True)

        session = Session(
            profile, paths, resources or [], report=lambda _: None, handle_signals=False,
            on_qmp_ready=on_ready,
        )
        started.append(time.perf_counter())
        outcome = await session.run()
        assert outcome.status == 0, outcome

    trio.run(main)
    return ready[0] - started[0]


def compile_handoff() -> bool:
    """Write handoff's bytecode, as an installed handoff has it (pip compiles on install).

    An editable checkout run with ``PYTHONDONTWRITEBYTECODE`` set (CI images,
    some shells) would otherwise compile every module from source in every CLI
    round: 80-100 ms that no installed handoff pays. Existing ``.pyc`` files are
    read even with that variable set. Returns whether every module compiled.
    """
    return compileall.compile_dir(REPO / "handoff", quiet=1)


def handoff_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m handoff``."""
    script = Path(sys.executable).parent / "handoff"
    return [str(script)] if script.exists() else [sys.executable, "-m", "handoff"]


def timed_process(argv: list[str], env: dict[str, str], *, ok: tuple[int, ...] = (0,)) -> float:
    """Seconds from spawn to exit of ``argv`` (its output read and dropped)."""
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    assert done.returncode in ok, (argv, done.returncode, done.stderr)
    return elapsed


@dataclass
class CliRound:
    run: float
    status: float
    switch: float


def cli_round(profile: Profile, profile_path: Path, env: dict[str, str]) -> CliRound:
    """`handoff run` to 'QMP connected'; then status and switch against it; then stop."""
    handoff = handoff_command()
    start = time.perf_counter()
    process = subprocess.Popen(
        [*handoff, "run", str(profile_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
    )
    assert process.stdout is not None
    result = None
    for line in process.stdout:
        if result is None and "QMP connected" in line:
            run = time.perf_counter() - start
            # The first request meets a session still starting; the timed ones
            # measure the command, as a shortcut pressed later would.
            timed_process([*handoff, "status", profile.name], env)
            status = timed_process([*handoff, "status", profile.name], env)
            # exit 2: the demo forwards no input; the session answered that
            switch = timed_process([*handoff, "switch", profile.name], env, ok=(0, 2))
            timed_process([*handoff, "stop", "--force", profile.name], env)
            result = CliRound(run, status, switch)
    process.wait(timeout=60)
    assert result is not None, "the CLI never reported 'QMP connected'"
    return result


#: The `handoff run` CLI under an audit hook that stamps each step (CLOCK_MONOTONIC,
#: so comparable with the parent's spawn time): where its milliseconds go.
PHASE_DRIVER = r"""
import json, os, sys, time
marks = {"interpreter": time.perf_counter()}
STEPS = {"handoff.profile": "cli module", "handoff.session.start": "profile loaded",
         "trio": "preflight, plan, spawn", "handoff.session.supervisor": "trio"}


def hook(event, args):
    if event == "import" and args[0] in STEPS and STEPS[args[0]] not in marks:
        marks[STEPS[args[0]]] = time.perf_counter()


sys.addaudithook(hook)
import builtins
_print = builtins.print


def stamped(*args, **kwargs):
    text = " ".join(map(str, args))
    if "preflight ok" in text:
        marks["supervisor, asyncio, qemu.qmp"] = time.perf_counter()
    if "QMP connected" in text:
        marks["session to QMP connected"] = time.perf_counter()
        sys.stderr.write("PHASES " + json.dumps(marks) + "\n")
        sys.stderr.flush()
    _print(*args, **kwargs)


builtins.print = stamped
from handoff.cli.main import main

sys.exit(main(["run", sys.argv[1]]))
"""
PHASES = ("interpreter", "cli module", "profile loaded", "preflight, plan, spawn", "trio",
          "supervisor, asyncio, qemu.qmp", "session to QMP connected")


def phases_round(profile: Profile, profile_path: Path, env: dict[str, str]) -> dict[str, float]:
    """One `handoff run` with its steps stamped: seconds each step took, spawn to QMP."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", PHASE_DRIVER, str(profile_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    for text in process.stdout:
        if "QMP connected" in text:
            timed_process([*handoff_command(), "stop", "--force", profile.name], env)
    marks: dict[str, float] = {}
    for text in process.stderr:
        if text.startswith("PHASES "):
            marks = json.loads(text.removeprefix("PHASES "))
    process.wait(timeout=60)
    assert list(marks) == list(PHASES), marks
    times = [start, *marks.values()]
    return {name: times[i + 1] - times[i] for i, name in enumerate(PHASES)}


def line(label: str, values: list[float], base: list[float] | None = None,
         goal: str = "") -> str:
    """One arm: median | best in ms, and the ratios of both against ``base``."""
    med, best = statistics.median(values), min(values)
    text = f"  {label:<28} {med * 1000:7.1f} | {best * 1000:6.1f} ms"
    if base:
        text += (f"   ratio {med / statistics.median(base):.2f}x | {best / min(base):.2f}x"
                 + (f" (goal <= {goal})" if goal else ""))
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", type=Path, default=REPO / "profiles" / "demo.toml")
    parser.add_argument("--no-cli", action="store_true",
                        help="skip the subprocess arms (cli run, status, switch)")
    parser.add_argument("--no-tpm", action="store_true", help="skip the [tpm] arm")
    args = parser.parse_args()

    compiled = compile_handoff()
    profile = load_profile(args.profile)
    with tempfile.TemporaryDirectory(prefix="handoff-bench-") as tmp:
        paths = HostPaths(run=Path(tmp) / "run")
        env = {**os.environ, "HANDOFF_RUN_DIR": str(paths.run),
               "HANDOFF_CACHE_DIR": str(Path(tmp) / "cache")}
        accel = choose_accel(profile.vm.accel, paths).accel
        bare: list[float] = []
        warm: list[float] = []
        nothing: list[float] = []
        cli: list[CliRound] = []
        phases: list[dict[str, float]] = []
        cold = session_round(profile, paths)  # pays the capability probe (in memory)
        cli_cold = None if args.no_cli else cli_round(profile, args.profile, env)
        tpm = None
        bare_tpm: list[float] = []
        session_tpm: list[float] = []
        tpm_first = 0.0
        if not args.no_tpm:
            text = args.profile.read_text() + (
                f'\n[tpm]\ntype = "emulated"\nstate = "{Path(tmp) / "bench.tpm"}"\n'
            )
            tpm = parse_profile(text, args.profile)

            def swtpm_only(plan: SessionPlan) -> list[HostResource]:
                return default_resources(plan, paths, report=quiet)  # the demo: swtpm only

            tpm_first = session_round(tpm, paths, swtpm_only)
        for _ in range(args.rounds):
            bare.append(bare_round(profile, paths, accel))
            warm.append(session_round(profile, paths))
            if tpm is not None:
                bare_tpm.append(bare_tpm_round(tpm, paths, accel))
                session_tpm.append(session_round(tpm, paths, swtpm_only))
            if not args.no_cli:
                nothing.append(timed_process([sys.executable, "-c", "pass"], env))
                cli.append(cli_round(profile, args.profile, env))
                phases.append(phases_round(profile, args.profile, env))
    load = os.getloadavg()
    print(f"profile {profile.name}, accel {accel}, {args.rounds} rounds (median | best), "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, "
          f"bytecode {'compiled' if compiled else 'NOT compiled (source compiled per run)'}")
    print(line("bare qemu → QMP ready", bare))
    print(line("session (warm) → QMP ready", warm, bare, "1.15x"))
    print(line("session (1st in process)", [cold], bare)
          + "  (capability probe: read from the disk cache or run)")
    if bare_tpm:
        print(line("bare qemu + swtpm → QMP ready", bare_tpm))
        print(line("session [tpm] → QMP ready", session_tpm, bare_tpm, "1.2x"))
        print(line("session [tpm], state created", [tpm_first], bare_tpm)
              + "  (first run: swtpm_setup makes the EKs and certificates)")
    if cli_cold is not None:
        print(line("cli run → QMP ready", [c.run for c in cli], bare, "3x"))
        print(line("cli run (cold cache)", [cli_cold.run], bare)
              + "  (first run: probes QEMU, fills the cache)")
        print(line("python -c pass", nothing))
        print(line("handoff status → answer", [c.status for c in cli], nothing, "3x"))
        print(line("handoff switch → answer", [c.switch for c in cli], nothing, "3x"))
        print("  where `handoff run`'s milliseconds go (each step, spawn → QMP; median | best):")
        for name in PHASES:
            steps = [p[name] for p in phases]
            print(f"    {name:<30} {statistics.median(steps) * 1000:7.1f} | "
                  f"{min(steps) * 1000:6.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
